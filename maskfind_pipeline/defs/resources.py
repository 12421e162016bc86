"""Resources shared by every stage, built from `Settings` when the definitions load."""

from typing import TYPE_CHECKING

import dagster as dg

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.settings import Settings
from maskfind_pipeline.storage import ObjectStore, open_store

if TYPE_CHECKING:
    from maskfind_pipeline.registry.mlflow_registry import ModelRegistry


class ObjectStoreResource(dg.ConfigurableResource):
    """An object store by URI: a local directory or `s3://bucket/prefix` (any S3 endpoint)."""

    uri: str
    endpoint_url: str | None = None
    max_attempts: int = 5

    def open(self) -> ObjectStore:
        return open_store(self.uri, endpoint_url=self.endpoint_url, max_attempts=self.max_attempts)


class CacheResource(dg.ConfigurableResource):
    """The local content-addressed cache of object bytes."""

    root: str

    def open(self) -> ContentCache:
        return ContentCache(self.root)


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking server or store holding runs and the registered model."""

    tracking_uri: str
    registry_uri: str | None = None
    artifact_location: str | None = None
    model_name: str = "maskfind-unet"
    reviewer_name: str = "maskfind-reviewer"
    experiment: str = "maskfind"

    def registry(self) -> "ModelRegistry":
        """The mask model's registered versions."""
        return self._registry(self.model_name)

    def reviewers(self) -> "ModelRegistry":
        """The reviewer's registered versions."""
        return self._registry(self.reviewer_name)

    def _registry(self, name: str) -> "ModelRegistry":
        from maskfind_pipeline.registry.mlflow_registry import ModelRegistry

        return ModelRegistry(
            self.tracking_uri,
            registry_uri=self.registry_uri,
            model_name=name,
            experiment=self.experiment,
            artifact_location=self.artifact_location,
        )


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "data_store": ObjectStoreResource(
            uri=settings.data_uri, endpoint_url=settings.s3_endpoint_url
        ),
        "work_store": ObjectStoreResource(
            uri=settings.work_uri, endpoint_url=settings.s3_endpoint_url
        ),
        "cache": CacheResource(root=str(settings.cache_dir)),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri,
            registry_uri=settings.mlflow_registry_uri,
            artifact_location=settings.artifact_location,
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(Settings.from_env()))
