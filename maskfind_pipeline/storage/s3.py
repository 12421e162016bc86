"""S3 object store (AWS, MinIO or any S3 API server) through boto3."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    IncompleteReadError,
    ResponseStreamingError,
)
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from maskfind_pipeline.storage.base import (
    CorruptTransfer,
    ObjectChanged,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreError,
)
from maskfind_pipeline.storage.keys import validate_key

_BODY_ERRORS = (ResponseStreamingError, IncompleteReadError, ConnectionError)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_PRECONDITION = {"412", "PreconditionFailed"}


class StoreUnavailable(StoreError):
    """The store kept failing after every retry (throttling, 5xx, broken connections)."""


class S3ObjectStore(ObjectStore):
    """Objects under `s3://bucket/prefix`, with pinned retries and checksum-verified reads.

    botocore retries throttling and 5xx answers (`standard` mode, `max_attempts`). A body that
    fails its checksum or breaks off mid-transfer is fetched again up to `max_attempts` times
    (botocore does not retry those), then raises `CorruptTransfer` or `StoreUnavailable`.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        max_attempts: int = 5,
        max_pool_connections: int = 64,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.max_attempts = max_attempts
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region_name,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                max_pool_connections=max_pool_connections,
                connect_timeout=10,
                read_timeout=60,
            ),
        )

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": page_size},
        )
        with _translate_errors(self.uri + prefix):
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) :]
                    yield ObjectInfo(key, int(obj["Size"]), obj["ETag"].strip('"'))

    def folders(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"
        )
        start = len(self.prefix + prefix)
        with _translate_errors(self.uri + prefix):
            return sorted(
                p["Prefix"][start:].rstrip("/")
                for page in pages
                for p in page.get("CommonPrefixes", [])
            )

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        retrying = Retrying(
            retry=retry_if_exception_type((FlexibleChecksumError, *_BODY_ERRORS)),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        with _translate_errors(key):
            return retrying(self._get_once, key, if_match)

    def _get_once(self, key: str, if_match: str | None) -> bytes:
        extra = {"IfMatch": f'"{if_match}"'} if if_match else {}
        response = self.client.get_object(
            Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED", **extra
        )
        return response["Body"].read()

    def head(self, key: str, length: int, *, if_match: str | None = None) -> bytes:
        extra = {"IfMatch": f'"{if_match}"'} if if_match else {}
        extra["Range"] = f"bytes=0-{max(length, 1) - 1}"
        with _translate_errors(key):
            response = self.client.get_object(
                Bucket=self.bucket,
                Key=self._key(key),
                **extra,
            )
            return response["Body"].read()[:length]

    def put(
        self,
        key: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        create_only: bool = False,
    ) -> None:
        extra: dict[str, str] = {}
        if tags:
            extra["Tagging"] = urlencode(dict(tags))
        if create_only:
            extra["IfNoneMatch"] = "*"
        with _translate_errors(key, exists_on_precondition=True):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        """A multipart upload in parts of 8 MiB, fed from `chunks` as they come."""
        with _translate_errors(key):
            self.client.upload_fileobj(_ChunkReader(chunks), self.bucket, self._key(key))

    def tags(self, key: str) -> dict[str, str]:
        with _translate_errors(key):
            tag_set = self.client.get_object_tagging(Bucket=self.bucket, Key=self._key(key))
            tags = {t["Key"]: t["Value"] for t in tag_set.get("TagSet", [])}
            if tags:
                return tags
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return dict(head.get("Metadata", {}))

    def exists(self, key: str) -> bool:
        try:
            with _translate_errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        with _translate_errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)


class _ChunkReader(io.RawIOBase):
    """A read-only, non-seekable file over an iterable of byte strings."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self._left = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


@contextmanager
def _translate_errors(key: str, *, exists_on_precondition: bool = False) -> Iterator[None]:
    """Map botocore failures onto the store's error classes."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND or status == "404":
            raise ObjectNotFound(key) from exc
        if code in _PRECONDITION or status == "412":
            if exists_on_precondition:
                raise ObjectExists(key) from exc
            raise ObjectChanged(f"{key}: changed since it was listed") from exc
        raise StoreUnavailable(f"{key}: S3 error {code or status}: {exc}") from exc
    except FlexibleChecksumError as exc:
        raise CorruptTransfer(f"{key}: checksum mismatch on every attempt") from exc
    except (BotoCoreError, ConnectionError) as exc:
        raise StoreUnavailable(f"{key}: {type(exc).__name__}: {exc}") from exc
