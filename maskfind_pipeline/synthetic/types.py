"""Image types: a camera / product / background / station combination, named `cam-prod-bg-st`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

CAMERAS = ("color2d", "laser3d", "xray", "darkfield")
PRODUCTS = ("choc_bar", "rounded_bar", "praline", "wafer")
BACKGROUNDS = ("conveyor", "tray", "plain")
_STATION = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class ImageType:
    """One kind of image: which camera looks at which product on which background, where.

    Attributes:
        camera: one of `CAMERAS`.
        product: one of `PRODUCTS`.
        background: one of `BACKGROUNDS`.
        station: a lowercase identifier such as `s1`.
    """

    camera: str
    product: str
    background: str
    station: str

    def __post_init__(self) -> None:
        for field, value, valid in (
            ("camera", self.camera, CAMERAS),
            ("product", self.product, PRODUCTS),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in valid:
                raise ValueError(f"unknown {field} {value!r}; valid: {', '.join(valid)}")
        if not _STATION.match(self.station):
            raise ValueError(f"station {self.station!r} must match [a-z0-9_]+")

    @property
    def name(self) -> str:
        """The type's name, e.g. `color2d-choc_bar-conveyor-s1`."""
        return f"{self.camera}-{self.product}-{self.background}-{self.station}"

    @classmethod
    def parse(cls, name: str) -> ImageType:
        """Inverse of `name`.

        Raises:
            ValueError: the name does not have four valid dash-separated parts.
        """
        parts = name.strip().split("-")
        if len(parts) != 4:
            raise ValueError(f"image type {name!r} is not 'camera-product-background-station'")
        return cls(*parts)


def _types(*names: str) -> tuple[ImageType, ...]:
    return tuple(ImageType.parse(n) for n in names)


DEFAULT_TYPES: tuple[ImageType, ...] = _types(
    "color2d-choc_bar-conveyor-s1",
    "laser3d-rounded_bar-conveyor-s1",
    "xray-praline-tray-s2",
    "darkfield-wafer-plain-s3",
    "color2d-praline-tray-s2",
    "laser3d-wafer-tray-s4",
    "xray-choc_bar-plain-s3",
    "darkfield-rounded_bar-conveyor-s4",
    "color2d-wafer-plain-s5",
    "xray-rounded_bar-conveyor-s5",
)

UNSEEN_TYPES: tuple[ImageType, ...] = _types(
    "color2d-rounded_bar-tray-s6",
    "laser3d-praline-plain-s6",
    "xray-wafer-tray-s7",
    "darkfield-choc_bar-tray-s7",
)


def resolve_types(spec: str | Sequence[str] | None) -> list[ImageType]:
    """Turn a user's choice of image types into a list, in order and without duplicates.

    Args:
        spec: None or "all" (`DEFAULT_TYPES`), "unseen" (`UNSEEN_TYPES`), a count such as "3"
            (the first three defaults), a comma-separated string of names, or a sequence of them.

    Raises:
        ValueError: an unknown or malformed name, or a count out of range.
    """
    if spec is None:
        return list(DEFAULT_TYPES)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ValueError(f"no image types in {spec!r}; {_valid_hint()}")
    resolved = [t for item in items for t in _resolve_item(item)]
    return list(dict.fromkeys(resolved))


def _resolve_item(item: str) -> list[ImageType]:
    if item == "all":
        return list(DEFAULT_TYPES)
    if item == "unseen":
        return list(UNSEEN_TYPES)
    if item.isdigit():
        count = int(item)
        if not 1 <= count <= len(DEFAULT_TYPES):
            raise ValueError(f"type count {count} must be between 1 and {len(DEFAULT_TYPES)}")
        return list(DEFAULT_TYPES[:count])
    try:
        return [ImageType.parse(item)]
    except ValueError as exc:
        raise ValueError(f"unknown image type {item!r} ({exc}); {_valid_hint()}") from None


def _valid_hint() -> str:
    known = ", ".join(t.name for t in DEFAULT_TYPES + UNSEEN_TYPES)
    return (
        f"use 'all', 'unseen', a count, or names such as: {known} "
        f"(any camera in {CAMERAS}, product in {PRODUCTS}, background in {BACKGROUNDS})"
    )
