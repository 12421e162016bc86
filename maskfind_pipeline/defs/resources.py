"""Resources shared by every stage, built from `Settings` when the definitions load."""

import dagster as dg

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.settings import Settings
from maskfind_pipeline.storage import ObjectStore, open_store


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


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "data_store": ObjectStoreResource(
            uri=settings.data_uri, endpoint_url=settings.s3_endpoint_url
        ),
        "work_store": ObjectStoreResource(
            uri=settings.work_uri, endpoint_url=settings.s3_endpoint_url
        ),
        "cache": CacheResource(root=str(settings.cache_dir)),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(Settings.from_env()))
