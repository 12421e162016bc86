"""A local content-addressed cache of object bytes (`<root>/<sha[:2]>/<sha>`)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


class ContentCache:
    """Bytes by sha256. Writes go to a temporary file and are renamed into place, so a reader or
    a crash never sees a partial file at a final path."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store `data` (verified against `sha256` when given) and return its digest."""
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise ValueError(f"content does not match its sha256 {sha256}")
        final = self.path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def get(self, sha256: str) -> bytes | None:
        """The cached bytes, or None when absent or when they no longer match their digest."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None
