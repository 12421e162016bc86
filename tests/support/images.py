"""Small hand-made images, good and bad, for ingest tests (no dependency on the generator)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def product_image(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")


def product_mask(
    width: int = 32, height: int = 24, values: tuple[int, int] = (0, 255)
) -> Image.Image:
    mask = np.full((height, width), values[0], dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = values[1]
    return Image.fromarray(mask, "L")


def pair_bytes(seed: int = 0, width: int = 32, height: int = 24) -> tuple[bytes, bytes]:
    return encode(product_image(width, height, seed)), encode(product_mask(width, height))


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR of a PNG to claim another size (CRC fixed), without the pixels."""
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def text_bomb_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * 20_000_000, zip=True)
    return encode(product_image(), "PNG", pnginfo=info)


def jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)
