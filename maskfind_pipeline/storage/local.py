"""The embedded default object store: a local directory with the S3 layout, tags in sidecars."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping
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
MAX_TAGS_BYTES = 64 * 1024
"""A tags sidecar larger than this is refused unread (S3 itself allows 10 tags of 256 chars)."""


class LocalObjectStore(ObjectStore):
    """Objects are files under `root`; writes go to a temporary file, then an atomic rename/link.

    Only regular files are objects. A symlink is listed with its own (lstat) size and ETag, and
    reading it is refused when it leads outside the root (`InvalidKey`) or nowhere
    (`ObjectNotFound`); nothing outside the root is read. A file that disappears while the
    folder is listed is left out; symlinked folders, FIFOs and devices are never listed.
    """

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
                    info = self._listed(path, key)
                    if info is not None:
                        yield info

    def _listed(self, path: Path, key: str) -> ObjectInfo | None:
        """The object at `path`; None for what is not one (gone meanwhile, not a file)."""
        try:
            found = path.lstat()
            if stat.S_ISLNK(found.st_mode) and self._inside(path):
                found = path.stat()  # a link within the root: the file it leads to
        except OSError:  # renamed or deleted since the folder was read, or a dangling link
            return None
        if not (stat.S_ISREG(found.st_mode) or stat.S_ISLNK(found.st_mode)):
            return None
        return ObjectInfo(key, found.st_size, _etag(found))

    def _inside(self, path: Path) -> bool:
        return os.path.realpath(path).startswith(str(self.root) + os.sep)

    def folders(self, prefix: str = "") -> list[str]:
        folder = self.root / validate_key(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(_TMP_PREFIX))

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        with self._open(key, if_match) as f:
            return f.read()

    def head(self, key: str, length: int, *, if_match: str | None = None) -> bytes:
        with self._open(key, if_match) as f:
            return f.read(length)

    @contextlib.contextmanager
    def _open(self, key: str, if_match: str | None) -> Iterator[io.BufferedReader]:
        """The regular file of `key`, opened for reading (never blocks on a FIFO)."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with os.fdopen(fd, "rb") as f:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                raise ObjectNotFound(f"{key}: not a regular file")
            if if_match is not None and _etag(found) != if_match:
                raise ObjectChanged(f"{key}: changed since it was listed")
            yield f

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

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        self._write(self._path(key), chunks)

    def tags(self, key: str) -> dict[str, str]:
        if not self._path(key).exists():
            raise ObjectNotFound(key)
        try:
            with self._open(tags_sidecar_key(key), None) as f:
                raw = f.read(MAX_TAGS_BYTES + 1)
        except ObjectNotFound:
            return {}
        if len(raw) > MAX_TAGS_BYTES:
            raise ValueError(f"{key}: tags sidecar is larger than {MAX_TAGS_BYTES} bytes")
        try:
            parsed = json.loads(raw)
        except RecursionError:  # a ValueError, like any other malformed sidecar
            raise ValueError(f"{key}: tags sidecar is nested too deeply") from None
        except ValueError as exc:  # not JSON, or not UTF-8
            raise ValueError(f"{key}: tags sidecar is not JSON: {exc}") from None
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

    def _write(
        self, path: Path, data: bytes | Iterable[bytes], *, create_only: bool = False
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with tmp.open("xb") as f:
                for chunk in (data,) if isinstance(data, bytes) else data:
                    f.write(chunk)
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
