"""Decoding and validating an image/mask pair from untrusted bytes.

Rules (documented in docs/data.md, "Ingest: what `image_catalog` accepts"):

* Images are PNG or JPEG, opened with that explicit format list; the extension must match the
  content. Masks are PNG.
* Every pixel is decoded (`load()`), so truncated or corrupt files fail here, not in training.
* Width x height above `max_pixels` is refused before decoding (decompression-bomb guard); Pillow's
  own bomb and text-chunk limits are reported the same way.
* EXIF orientation is applied to image and mask before their sizes are compared; a mask of another
  size is refused, never resized.
* Images become RGB uint8: alpha is dropped, palettes and CMYK are converted, 16-bit and float
  grey levels are stretched linearly from their own min..max to 0..255.
* Masks become boolean. A mask with exactly two values (0 and one other, e.g. 0/1 or 0/255) or a
  palette mask: product = non-zero. A mask with grey levels (e.g. one that went through JPEG):
  product = value >= half the type's maximum (128 for 8 bits); more than `max_grey_fraction` of
  pixels between 10 % and 90 % of that maximum is refused as "not binary".
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_GREY_FRACTION = 0.2
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FORMAT_BY_EXT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
_EXIF_ORIENTATION = 0x0112
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class InvalidImage(ValueError):
    """Bytes that cannot become a training sample; the message is the quarantine reason."""


@dataclass(frozen=True, slots=True)
class DecodedPair:
    """An image as RGB uint8 (H, W, 3), its boolean mask (H, W), and what was converted."""

    image: np.ndarray
    mask: np.ndarray
    image_format: str
    image_mode: str
    exif_transposed: bool

    @property
    def mask_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image as RGB uint8 (H, W, 3), and what was converted (e.g. a production image)."""

    image: np.ndarray
    image_format: str
    image_mode: str
    exif_transposed: bool


def decode_image(
    image_bytes: bytes, *, image_ext: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Decode and check an image by the same rules as a pair's; `InvalidImage` on any problem."""
    image, image_format, image_mode, transposed = _open_image(image_bytes, image_ext, max_pixels)
    return DecodedImage(to_rgb(image), image_format, image_mode, transposed)


def peek_size(head: bytes, *, image_ext: str, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) from the first bytes of an image file, without decoding a pixel.

    Raises:
        InvalidImage: the header already says the image is too large (or the wrong format).

    A PNG's size is in its first chunk; a JPEG's in its frame header, after its metadata.
    Returns None when that is not within `head` (a JPEG with more metadata than `head`, or
    not an image at all): the full decode checks it then, still before decoding a pixel.
    """
    expected = _FORMAT_BY_EXT.get(image_ext.lower())
    if expected is None:
        raise InvalidImage(f"unsupported image extension .{image_ext}")
    if len(head) >= 24 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        (width, height), found = struct.unpack(">II", head[16:24]), "PNG"
    else:
        try:
            with Image.open(io.BytesIO(head), formats=["JPEG"]) as img:
                width, height, found = img.width, img.height, img.format
        except Image.DecompressionBombError as exc:
            raise InvalidImage(f"image refused as a decompression bomb: {exc}") from None
        except Exception:
            return None
    if found != expected:
        raise InvalidImage(f"image content is {found}, expected {expected}")
    if width * height > max_pixels:
        raise InvalidImage(
            f"image refused as a decompression bomb: {width}x{height} exceeds {max_pixels} pixels"
        )
    return width, height


def decode_pair(
    image_bytes: bytes,
    mask_bytes: bytes,
    *,
    image_ext: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_grey_fraction: float = DEFAULT_MAX_GREY_FRACTION,
) -> DecodedPair:
    """Decode and check a pair; raise `InvalidImage` with a readable reason on any problem."""
    image, image_format, image_mode, transposed = _open_image(image_bytes, image_ext, max_pixels)
    mask_img, _, _, _ = _open(mask_bytes, "mask", "PNG", max_pixels)
    if image.size != mask_img.size:
        raise InvalidImage(
            f"mask size {mask_img.width}x{mask_img.height} differs from image size "
            f"{image.width}x{image.height} (after EXIF orientation)"
        )
    mask = binarise_mask(mask_img, max_grey_fraction=max_grey_fraction)
    return DecodedPair(to_rgb(image), mask, image_format, image_mode, transposed)


def _open_image(data: bytes, image_ext: str, max_pixels: int) -> tuple[Image.Image, str, str, bool]:
    expected = _FORMAT_BY_EXT.get(image_ext.lower())
    if expected is None:
        raise InvalidImage(f"unsupported image extension .{image_ext}")
    return _open(data, "image", expected, max_pixels)


def _open(
    data: bytes, what: str, expected_format: str, max_pixels: int
) -> tuple[Image.Image, str, str, bool]:
    if not data:
        raise InvalidImage(f"{what} is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"{what} refused as a decompression bomb: {exc}") from None
    except ValueError as exc:
        if "MAX_TEXT_CHUNK" in str(exc):  # Pillow: "Decompressed data too large for ..."
            raise InvalidImage(
                f"{what} refused as a PNG text-chunk bomb: a text chunk decompresses past "
                f"{PngImagePlugin.MAX_TEXT_CHUNK:,} bytes"
            ) from None
        raise InvalidImage(f"{what} is not a readable PNG or JPEG (ValueError)") from None
    except Exception as exc:
        raise InvalidImage(f"{what} is not a readable PNG or JPEG ({type(exc).__name__})") from None
    if img.format != expected_format:
        raise InvalidImage(f"{what} content is {img.format}, expected {expected_format}")
    if img.width * img.height > max_pixels:
        raise InvalidImage(
            f"{what} refused as a decompression bomb: {img.width}x{img.height} "
            f"exceeds {max_pixels} pixels"
        )
    mode = img.mode
    try:
        img.load()
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        oriented = ImageOps.exif_transpose(img) if orientation != 1 else img
    except Exception as exc:
        raise InvalidImage(f"{what} failed to decode: {type(exc).__name__}: {exc}") from None
    return oriented, str(img.format), mode, orientation != 1


def to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an RGB uint8 array by the module's documented rules."""
    if img.mode in _HIGH_DEPTH_MODES:
        grey = _stretch_to_uint8(np.asarray(img))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def binarise_mask(img: Image.Image, *, max_grey_fraction: float) -> np.ndarray:
    """Turn a decoded mask into a boolean array (see the module docstring for the rule)."""
    if img.mode == "1":
        return np.asarray(img, dtype=bool)
    if img.mode == "P":
        return np.asarray(img) != 0
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        values = np.asarray(img.convert("RGB")).max(axis=2)
    elif img.mode in ("LA", "PA"):
        values = np.asarray(img.getchannel(0))
    else:
        values = np.asarray(img)
    present = np.unique(values)
    if len(present) <= 2 and present[0] == 0:
        return values != 0
    full = 255 if values.dtype == np.uint8 else int(values.max())
    grey = ((values > 0.1 * full) & (values < 0.9 * full)).mean()
    if grey > max_grey_fraction:
        raise InvalidImage(f"mask is not binary: {grey:.1%} of pixels are grey levels")
    return values >= (full + 1) // 2


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
