"""Open an object store from a URI: `s3://bucket/prefix`, `file:///dir` or a plain path."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

from maskfind_pipeline.storage.base import ObjectStore
from maskfind_pipeline.storage.local import LocalObjectStore


def open_store(uri: str, **s3_options: Any) -> ObjectStore:
    """Return the store at `uri`; `s3_options` (endpoint_url, ...) apply to S3 URIs only."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from maskfind_pipeline.storage.s3 import S3ObjectStore

        if not parsed.netloc:
            raise ValueError(f"{uri!r}: an S3 URI needs a bucket (s3://bucket/prefix)")
        return S3ObjectStore(parsed.netloc, parsed.path.lstrip("/"), **s3_options)
    if parsed.scheme == "file":
        return LocalObjectStore(unquote(parsed.path))
    if parsed.scheme in ("", "local") or len(parsed.scheme) == 1:
        return LocalObjectStore(uri.removeprefix("local://"))
    raise ValueError(f"{uri!r}: unsupported store URI (use s3://bucket/prefix or a local path)")
