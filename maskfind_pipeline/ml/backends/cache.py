"""Immutable cache entries: a folder per key, produced once, published atomically, verified.

An entry is produced in a temporary folder beside it and renamed into place with its manifest
(the key's inputs and each file's size and sha256), so a crash mid-export leaves only a
temporary folder that is never loaded (and is removed a day later), and of two processes
producing the same entry at once the first rename wins. Every load checks the manifest: an
entry that does not match it (torn by a power loss, truncated, edited) is discarded and
produced again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TEMPORARY_PREFIXES = (".tmp-", ".trash-")
STALE_AFTER_SECONDS = 24 * 3600


class CacheEntryError(RuntimeError):
    """A freshly produced cache entry does not match its manifest."""


def cache_key(inputs: Mapping[str, str]) -> str:
    """The sha256 of `inputs` as canonical JSON."""
    return hashlib.sha256(json.dumps(dict(inputs), sort_keys=True).encode()).hexdigest()


def cached_entry(
    root: Path, kind: str, inputs: Mapping[str, str], produce: Callable[[Path], None]
) -> Path:
    """The verified folder `root/<kind>-<cache_key(inputs)>`, produced if missing or damaged.

    Args:
        root: The cache folder (created if needed).
        kind: What the entry holds, the start of its folder name.
        inputs: Everything the entry's bytes depend on.
        produce: Writes the entry's files into the folder it is given (a temporary one).

    Raises:
        CacheEntryError: The entry does not verify even after producing it.
    """
    entry = root / f"{kind}-{cache_key(inputs)}"
    if verified(entry, inputs):
        return entry
    if entry.exists():
        _log.warning("discarding damaged cache entry %s", entry)
        _discard(entry)
    _produce(entry, inputs, produce)
    if not verified(entry, inputs):
        raise CacheEntryError(f"{entry} does not match its manifest after producing it")
    return entry


def verified(entry: Path, inputs: Mapping[str, str]) -> bool:
    """Whether `entry` has a manifest for `inputs` and every file it lists, byte for byte."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files: dict[str, dict[str, object]] = manifest["files"]
        return (
            bool(files)
            and manifest["inputs"] == dict(inputs)
            and all(_describe(entry / name) == expected for name, expected in files.items())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _produce(entry: Path, inputs: Mapping[str, str], produce: Callable[[Path], None]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(entry.parent)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        produce(temporary)
        files = {
            path.relative_to(temporary).as_posix(): _describe(path)
            for path in sorted(temporary.rglob("*"))
            if path.is_file()
        }
        manifest = {"inputs": dict(inputs), "files": files}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _publish(temporary, entry)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _publish(temporary: Path, entry: Path) -> None:
    try:
        temporary.rename(entry)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        _log.info("cache entry %s was published by another process first", entry.name)


def _describe(path: Path) -> dict[str, object]:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _discard(entry: Path) -> None:
    trash = entry.with_name(f".trash-{entry.name}-{uuid.uuid4().hex}")
    try:
        entry.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale(root: Path) -> None:
    """Remove temporary folders left by crashed processes (older than a day)."""
    cutoff = time.time() - STALE_AFTER_SECONDS
    for path in root.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.name.startswith(TEMPORARY_PREFIXES) and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


def read_choice(path: Path, inputs: Mapping[str, str]) -> dict[str, Any] | None:
    """A measured choice kept in `path` (JSON), if it was made for exactly `inputs`."""
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and data.get("inputs") == dict(inputs) else None
    except (OSError, ValueError):
        return None


def write_choice(path: Path, inputs: Mapping[str, str], **fields: object) -> None:
    """Keep a measured choice (`fields`) for `inputs` in `path`, written atomically; a failure
    only logs (the next run measures again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".choice-", dir=path.parent)
        with os.fdopen(fd, "w") as file:
            json.dump({"inputs": dict(inputs), **fields}, file, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError as exc:
        _log.warning("could not cache the choice in %s: %s", path, exc)


def library_version(package: str) -> str:
    """The installed version of `package`, or "absent"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
