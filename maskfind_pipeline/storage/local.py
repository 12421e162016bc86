"""The embedded default object store: a local directory with the S3 layout, tags in sidecars."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from maskfind_pipeline.storage.base import (
    ObjectChanged,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
)
from maskfind_pipeline.storage.keys import TAGS_SUFFIX, InvalidKey, tags_sidecar_key, validate_key

_TMP_PREFIX = ".tmp-"


class LocalObjectStore(ObjectStore):
    """Objects are files under `root`; writes go to a temporary file, then an atomic rename/link."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        start = self.root / prefix.rpartition("/")[0] if prefix else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(_TMP_PREFIX) or name.endswith(TAGS_SUFFIX):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    stat = path.stat()
                    yield ObjectInfo(key, stat.st_size, _etag(stat))

    def folders(self, prefix: str = "") -> list[str]:
        folder = self.root / validate_key(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(_TMP_PREFIX))

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as f:
                if if_match is not None and _etag(os.fstat(f.fileno())) != if_match:
                    raise ObjectChanged(f"{key}: changed since it was listed")
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def put(
        self,
        key: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        create_only: bool = False,
    ) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Create-only writers of one folder take turns, so the one that loses the race to the
        # object never touches the winner's tags sidecar.
        with _exclusive(path.parent) if create_only else contextlib.nullcontext():
            if create_only and path.exists():
                raise ObjectExists(key)
            if tags is not None:
                self._write(self._path(tags_sidecar_key(key)), json.dumps(dict(tags)).encode())
            self._write(path, data, create_only=create_only)

    def tags(self, key: str) -> dict[str, str]:
        if not self._path(key).exists():
            raise ObjectNotFound(key)
        try:
            raw = self._path(tags_sidecar_key(key)).read_bytes()
        except FileNotFoundError:
            return {}
        try:
            parsed = json.loads(raw)
        except RecursionError:  # a ValueError, like any other malformed sidecar
            raise ValueError(f"{key}: tags sidecar is nested too deeply") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"{key}: tags sidecar is not a JSON object")
        # Tags are strings, as in S3: a null or a number is not turned into "None" or "3".
        wrong = sorted(k for k, v in parsed.items() if not isinstance(v, str))
        if wrong:
            raise ValueError(f"{key}: tags sidecar values are not strings: {wrong[:5]!r}")
        return dict(parsed)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        for path in (self._path(key), self._path(tags_sidecar_key(key))):
            path.unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        if not os.path.realpath(path).startswith(str(self.root) + os.sep):
            raise InvalidKey(f"invalid key {key!r}: resolves outside the store root")
        return path

    def _write(self, path: Path, data: bytes, *, create_only: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with tmp.open("xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ObjectExists(path.relative_to(self.root).as_posix()) from None
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on `folder` (flock), held for the block, across processes."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _etag(stat: os.stat_result) -> str:
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"
