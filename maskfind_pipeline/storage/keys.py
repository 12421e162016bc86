"""Object keys: validation and the layout of DESIGN.md's object-store contract."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
MASK_SUFFIX = ".mask.png"
TAGS_SUFFIX = ".tags.json"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidKey(ValueError):
    """A key that must never reach a filesystem path: traversal, absolute, NUL, empty segment..."""


class Source(StrEnum):
    """Where a labeled sample came from."""

    LABELED = "labeled"
    FAILURE = "failures"


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative object key, else raise `InvalidKey`."""
    problem = _key_problem(key)
    if problem:
        raise InvalidKey(f"invalid key {key!r}: {problem}")
    return key


def _key_problem(key: str) -> str | None:
    if not key:
        return "empty"
    if _CONTROL.search(key):
        return "contains a NUL or control character"
    if printable_key(key) != key:
        return "is not valid UTF-8 (a local file name in another encoding?)"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if key.startswith("/") or key.startswith("\\") or re.match(r"^[A-Za-z]:", key):
        return "absolute path"
    if "\\" in key:
        return "contains a backslash"
    if key.endswith("/"):
        return "ends with '/' (a directory marker, not an object)"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            return f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def printable_key(key: str) -> str:
    """`key` as valid UTF-8 text, for a catalog or a message: a local file name that is not
    UTF-8 is listed with surrogate escapes (PEP 383), which no Parquet column can hold; each
    becomes a visible `\\udcXX`. Valid keys come back unchanged."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class SampleKeys:
    """The keys of one labeled sample: `<prefix>/<image_id>.<ext>` and its mask."""

    source: Source
    image_id: str
    image_key: str

    @property
    def mask_key(self) -> str:
        return f"{self.source.value}/{self.image_id}{MASK_SUFFIX}"


def parse_image_key(key: str) -> SampleKeys | None:
    """Parse `<labeled|failures>/<image_id>.<png|jpg|jpeg>`; None for masks and other keys."""
    prefix, _, name = key.partition("/")
    if prefix not in (Source.LABELED, Source.FAILURE) or "/" in name:
        return None
    if name.endswith(MASK_SUFFIX) or name.endswith(TAGS_SUFFIX):
        return None
    image_id, dot, ext = name.rpartition(".")
    if not dot or not image_id or ext.lower() not in IMAGE_EXTENSIONS:
        return None
    return SampleKeys(Source(prefix), image_id, key)


def mask_image_id(key: str) -> str | None:
    """The image id of a mask key `<prefix>/<image_id>.mask.png`, else None."""
    _, _, name = key.partition("/")
    if not name.endswith(MASK_SUFFIX):
        return None
    return name[: -len(MASK_SUFFIX)] or None


def tags_sidecar_key(key: str) -> str:
    """The local store's sidecar holding the tags of `key` (`a/b.png` -> `a/b.tags.json`)."""
    stem, dot, _ = key.rpartition(".")
    return f"{stem if dot else key}{TAGS_SUFFIX}"
