"""Object stores: one interface (`ObjectStore`), a local-directory and an S3 implementation."""

from maskfind_pipeline.storage.base import (
    CorruptTransfer,
    ObjectChanged,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreError,
)
from maskfind_pipeline.storage.factory import open_store
from maskfind_pipeline.storage.keys import InvalidKey, validate_key
from maskfind_pipeline.storage.local import LocalObjectStore

__all__ = [
    "CorruptTransfer",
    "InvalidKey",
    "LocalObjectStore",
    "ObjectChanged",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "StoreError",
    "open_store",
    "validate_key",
]
