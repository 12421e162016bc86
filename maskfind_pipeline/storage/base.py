"""The object-store interface shared by the local-directory and S3 implementations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass


class StoreError(Exception):
    """Base class of every error an object store raises on purpose."""


class ObjectNotFound(StoreError, KeyError):
    """The key does not exist."""


class ObjectExists(StoreError):
    """A create-only put found the key already present."""


class ObjectChanged(StoreError):
    """The object's ETag differs from the one the caller expected (replaced after listing)."""


class CorruptTransfer(StoreError):
    """The bytes received do not match the checksum the store sent (retryable)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, size in bytes and ETag (an opaque version token)."""

    key: str
    size: int
    etag: str


class ObjectStore(ABC):
    """A flat key/value store of bytes with tags: a local directory or an S3 bucket prefix.

    Keys are relative, '/'-separated paths (see `storage.keys.validate_key`).
    """

    uri: str

    @abstractmethod
    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with `prefix`, in key order, fetched page by page."""

    @abstractmethod
    def folders(self, prefix: str = "") -> list[str]:
        """The names of the "folders" directly under `prefix` (which ends with '/' or is empty),
        sorted: `folders("production/")` lists the days, without listing their objects."""

    @abstractmethod
    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        """Return the object's bytes.

        Raises:
            ObjectNotFound: no such key.
            ObjectChanged: `if_match` is given and the current ETag differs.
            CorruptTransfer: the received bytes failed the store's checksum.
        """

    def head(self, key: str, length: int, *, if_match: str | None = None) -> bytes:
        """The first `length` bytes of the object (all of it when shorter): enough to read an
        image's header before deciding to fetch the whole file. Raises as `get` does."""
        return self.get(key, if_match=if_match)[:length]

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        create_only: bool = False,
    ) -> None:
        """Write `data` under `key` atomically: readers see the old or the new object, never a part.

        Raises:
            ObjectExists: `create_only` is set and the key already exists.
        """

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write the concatenation of `chunks` under `key` as `put` does, without holding all of
        it in memory where the store can (a large generated file); replaces the key."""
        self.put(key, b"".join(chunks))

    @abstractmethod
    def tags(self, key: str) -> dict[str, str]:
        """Return the object's tags (S3 object tags, else `x-amz-meta-*`; local: sidecar JSON)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether `key` exists."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` (and its tags); a missing key is not an error."""
