"""Resources shared by every stage, built from `Locations` when the definitions load.

Secrets (S3 keys, the MLflow user's password, a tracking URI that carries credentials) reach the
resources as `dg.EnvVar`s: run config, the UI and the event log show the variable's name, never
its value. The MLflow user reaches MLflow through its own environment variables, never inside a
URI (`registry.credentials.mlflow_uri`): MLflow prints and quotes URIs.
"""

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import dagster as dg

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.storage import ObjectStore, open_store

if TYPE_CHECKING:
    from maskfind_pipeline.registry.mlflow_registry import ModelRegistry


class ObjectStoreResource(dg.ConfigurableResource):
    """An object store by URI: a local directory or `s3://bucket/prefix` (any S3 endpoint)."""

    uri: str
    endpoint_url: str | None = None
    max_attempts: int = 5
    aws_access_key_id: str | None = None
    """None: boto3's usual chain (environment, profile, instance role)."""
    aws_secret_access_key: str | None = None

    def open(self) -> ObjectStore:
        return open_store(
            self.uri,
            endpoint_url=self.endpoint_url,
            max_attempts=self.max_attempts,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )


class CacheResource(dg.ConfigurableResource):
    """The local content-addressed cache of object bytes."""

    root: str

    def open(self) -> ContentCache:
        return ContentCache(self.root)


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking server or store holding runs and the registered model."""

    tracking_uri: str
    registry_uri: str | None = None
    username: str | None = None
    """The MLflow server's basic-auth user (None: no auth, or MLflow's own environment lookup)."""
    password: str | None = None
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
        from maskfind_pipeline.registry.credentials import mlflow_uri
        from maskfind_pipeline.registry.mlflow_registry import ModelRegistry

        return ModelRegistry(  # the user goes to MLflow's environment, never into the URI
            mlflow_uri(self.tracking_uri, self.username, self.password),
            registry_uri=self.registry_uri,
            model_name=name,
            experiment=self.experiment,
            artifact_location=self.artifact_location,
        )


STEPS = "dagster/steps/"


class StepIO(dg.ConfigurableIOManager):
    """Values passed between steps (the chunks of a fan-out), pickled in the work store under
    `dagster/steps/<run id>/`: every executor's workers read them, where a local folder would be
    one machine's. The step that consumes the last of them drops them (`forget_steps`)."""

    store: ObjectStoreResource

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        self.store.open().put(_step_key(context.get_identifier()), pickle.dumps(obj))

    def load_input(self, context: dg.InputContext) -> object:
        upstream = context.upstream_output
        if upstream is None:
            raise ValueError(f"{context.name}: no upstream output to load")
        return pickle.loads(self.store.open().get(_step_key(upstream.get_identifier())))


def forget_steps(store: ObjectStore, run_id: str) -> None:
    """Delete what `StepIO` holds of the run `run_id`."""
    for info in list(store.list(f"{STEPS}{_safe(run_id)}/")):
        store.delete(info.key)


def _step_key(identifier: Sequence[str]) -> str:
    return STEPS + "/".join(_safe(str(part)) for part in identifier) + ".pickle"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part)


def build_resources(
    locations: Locations, env: Mapping[str, str] | None = None
) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """The resources for `locations`; secrets that are set in `env` are passed as `dg.EnvVar`s."""
    env = os.environ if env is None else env

    def secret(name: str) -> str | None:
        return dg.EnvVar(name) if env.get(name) else None  # type: ignore[return-value]

    def from_env(name: str, value: str | None) -> str | None:  # as an EnvVar if it came from `name`
        return dg.EnvVar(name) if value and env.get(name) == value else value  # type: ignore[return-value]

    def store(uri: str) -> ObjectStoreResource:
        return ObjectStoreResource(
            uri=uri,
            endpoint_url=locations.s3_endpoint_url,
            aws_access_key_id=secret("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=secret("AWS_SECRET_ACCESS_KEY"),
        )

    return {
        "step_io": StepIO(store=store(locations.work_uri)),
        "data_store": store(locations.data_uri),
        "work_store": store(locations.work_uri),
        "cache": CacheResource(root=str(locations.cache_dir)),
        "mlflow": MlflowResource(
            tracking_uri=from_env("MLFLOW_TRACKING_URI", locations.tracking_uri) or "",
            registry_uri=from_env("MLFLOW_REGISTRY_URI", locations.mlflow_registry_uri),
            username=secret("MLFLOW_TRACKING_USERNAME"),
            password=secret("MLFLOW_TRACKING_PASSWORD"),
            artifact_location=locations.artifact_location,
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(Locations.from_env()))
