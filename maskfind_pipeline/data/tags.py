"""Validation of the tags that travel with each image (DESIGN.md, "Object-store contract")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


class InvalidTags(ValueError):
    """Missing or malformed tags; the message is the quarantine reason."""


@dataclass(frozen=True, slots=True)
class SampleTags:
    """The tags ingest understands; `raw` keeps all of them, unknown ones included."""

    image_type: str
    camera: str | None
    product: str | None
    station: str | None
    failed_model_version: str | None
    captured_at: datetime | None
    reported_at: datetime | None
    raw: Mapping[str, str]


def parse_tags(tags: Mapping[str, str]) -> SampleTags:
    """Check the tags of one image: `image_type` is required, the rest optional but well-formed."""
    image_type = tags.get("image_type", "").strip()
    if not image_type:
        raise InvalidTags("missing required tag image_type")
    if not _NAME.match(image_type):
        raise InvalidTags(f"malformed tag image_type={image_type!r}")
    return SampleTags(
        image_type=image_type,
        camera=_text(tags, "camera"),
        product=_text(tags, "product"),
        station=_text(tags, "station"),
        failed_model_version=_text(tags, "failed_model_version"),
        captured_at=_time(tags, "captured_at"),
        reported_at=_time(tags, "reported_at"),
        raw=dict(tags),
    )


def _text(tags: Mapping[str, str], name: str) -> str | None:
    value = tags.get(name)
    if value is None or value == "":
        return None
    if len(value) > 256 or any(ord(c) < 32 or 0xD800 <= ord(c) < 0xE000 for c in value):
        raise InvalidTags(f"malformed tag {name}={value[:40]!r}")
    return value


def _time(tags: Mapping[str, str], name: str) -> datetime | None:
    value = tags.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise InvalidTags(f"malformed tag {name}={value[:40]!r}: not an ISO 8601 time") from None
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before the first UTC time
        raise InvalidTags(f"malformed tag {name}={value[:40]!r}: out of range in UTC") from None
