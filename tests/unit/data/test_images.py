"""Every row of RELIABILITY.md's "Images" table: refused with a reason, or converted by rule."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from maskfind_pipeline.data.images import InvalidImage, decode_pair
from tests.support.images import (
    encode,
    jpeg_with_orientation,
    pair_bytes,
    product_image,
    product_mask,
    text_bomb_png,
    with_png_size,
)


def test_valid_pair_decodes_to_rgb_and_boolean_mask() -> None:
    image, mask = pair_bytes()
    pair = decode_pair(image, mask, image_ext="png")
    assert pair.image.shape == (24, 32, 3) and pair.image.dtype == np.uint8
    assert pair.mask.dtype == bool and pair.mask.sum() == 12 * 16
    assert pair.mask_fraction == pytest.approx(0.25)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_image_is_refused(fmt: str, ext: str) -> None:
    data = encode(product_image(64, 64), fmt)
    with pytest.raises(InvalidImage, match=r"decode|readable"):
        decode_pair(data[: len(data) // 2], encode(product_mask(64, 64)), image_ext=ext)


def test_bit_flipped_png_header_is_refused() -> None:
    data = bytearray(encode(product_image()))
    data[20] ^= 0x10  # inside IHDR: its CRC no longer matches
    with pytest.raises(InvalidImage):
        decode_pair(bytes(data), encode(product_mask()), image_ext="png")


def test_bit_flipped_png_pixel_stream_is_refused() -> None:
    data = bytearray(encode(product_image()))
    idat = data.index(b"IDAT") + 4
    data[idat] ^= 0xFF  # the zlib header of the pixel stream
    with pytest.raises(InvalidImage):
        decode_pair(bytes(data), encode(product_mask()), image_ext="png")


def test_oversized_image_is_refused_before_decoding() -> None:
    big = with_png_size(encode(product_image()), 8000, 8000)
    with pytest.raises(InvalidImage, match="decompression bomb"):
        decode_pair(big, encode(product_mask()), image_ext="png", max_pixels=10_000_000)


def test_pillow_decompression_bomb_is_refused() -> None:
    bomb = with_png_size(encode(product_image()), 30_000, 30_000)
    with pytest.raises(InvalidImage, match="decompression bomb"):
        decode_pair(bomb, encode(product_mask()), image_ext="png", max_pixels=10**10)


def test_png_text_chunk_bomb_is_refused_for_that_reason() -> None:
    with pytest.raises(InvalidImage, match="PNG text-chunk bomb"):
        decode_pair(text_bomb_png(), encode(product_mask()), image_ext="png")


@pytest.mark.parametrize("bomb", ["text chunk", "30000x30000 header"])
def test_refusing_a_bomb_keeps_peak_memory_small(bomb: str) -> None:
    """The text chunk holds 20 MB of text, the header claims 2.7 GB of RGB pixels: neither is
    inflated. Python's allocations during the refusal stay far below both (generous bound)."""
    data = (
        text_bomb_png()
        if bomb == "text chunk"
        else with_png_size(encode(product_image()), 30_000, 30_000)
    )
    mask = encode(product_mask())
    tracemalloc.start()
    try:
        with pytest.raises(InvalidImage, match="bomb"):
            decode_pair(data, mask, image_ext="png", max_pixels=10**10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_truncated_jpeg_is_refused() -> None:
    data = encode(product_image(64, 48), "JPEG")
    with pytest.raises(InvalidImage, match="truncated"):
        decode_pair(data[: len(data) // 2], encode(product_mask(64, 48)), image_ext="jpg")


@pytest.mark.parametrize(
    "marker", [b"\xff\xc4", b"\xff\xdb", b"\xff\xc0", b"\xff\xda"], ids=["DHT", "DQT", "SOF", "SOS"]
)
def test_bit_flipped_jpeg_segment_is_refused(marker: bytes) -> None:
    """A flip in a segment's length (Huffman or quantisation table, frame or scan header) makes
    the file unreadable. A flip inside the entropy-coded pixels decodes to slightly other
    pixels: JPEG has no checksum, so the guard there is the content hash recorded at ingest
    (a changed object is a new, different sample, never a silently changed one)."""
    data = bytearray(encode(product_image(64, 48), "JPEG"))
    data[data.index(marker) + 2] ^= 0xFF
    with pytest.raises(InvalidImage, match="not a readable PNG or JPEG"):
        decode_pair(bytes(data), encode(product_mask(64, 48)), image_ext="jpg")


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "LA", "RGBA", "1", "L"])
def test_every_mode_becomes_rgb_uint8(mode: str) -> None:
    rgb = product_image()
    if mode == "I;16":
        values = np.linspace(1000, 4000, 24 * 32).reshape(24, 32).astype(np.uint16)
        img = Image.fromarray(values)  # uint16 arrays open as I;16
    else:
        img = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pair = decode_pair(encode(img, fmt), encode(product_mask()), image_ext=fmt.lower())
    assert pair.image.shape == (24, 32, 3) and pair.image.dtype == np.uint8
    assert pair.image_mode == mode
    if mode == "I;16":  # 16-bit grey levels are stretched to the full range
        assert pair.image.min() == 0 and pair.image.max() == 255


def test_exif_orientation_is_applied_before_the_size_check() -> None:
    upright = product_image(40, 20)
    rotated_mask = encode(product_mask(20, 40))
    pair = decode_pair(jpeg_with_orientation(upright, 6), rotated_mask, image_ext="jpg")
    assert pair.image.shape[:2] == (40, 20) and pair.exif_transposed
    with pytest.raises(InvalidImage, match="differs from image size"):
        decode_pair(
            jpeg_with_orientation(upright, 6), encode(product_mask(40, 20)), image_ext="jpg"
        )


def test_mask_of_another_size_is_refused_not_resized() -> None:
    with pytest.raises(InvalidImage, match="mask size 16x12 differs from image size 32x24"):
        decode_pair(encode(product_image()), encode(product_mask(16, 12)), image_ext="png")


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (0, 7)])
def test_two_valued_masks_mean_nonzero_is_product(values: tuple[int, int]) -> None:
    pair = decode_pair(
        encode(product_image()), encode(product_mask(values=values)), image_ext="png"
    )
    assert pair.mask.sum() == 12 * 16


def test_mask_that_went_through_jpeg_is_binarised_at_half_range() -> None:
    yy, xx = np.mgrid[:64, :64]
    clean = Image.fromarray(((yy - 30) ** 2 + (xx - 33) ** 2 < 400).astype(np.uint8) * 255, "L")
    jpeg_roundtrip = Image.open(__import__("io").BytesIO(encode(clean, "JPEG", quality=75)))
    assert len(np.unique(np.asarray(jpeg_roundtrip))) > 2
    pair = decode_pair(encode(product_image(64, 64)), encode(jpeg_roundtrip), image_ext="png")
    disagree = (pair.mask != (np.asarray(clean) > 0)).sum()
    assert disagree <= 4  # JPEG ringing may flip a pixel or two on the boundary


def test_mask_with_many_grey_levels_is_refused() -> None:
    ramp = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1)), "L")
    with pytest.raises(InvalidImage, match="not binary"):
        decode_pair(encode(product_image()), encode(ramp), image_ext="png")


def test_jpeg_bytes_as_mask_are_refused() -> None:
    with pytest.raises(InvalidImage, match="mask content is JPEG, expected PNG"):
        decode_pair(encode(product_image()), encode(product_mask(), "JPEG"), image_ext="png")


@pytest.mark.parametrize(
    "fmt,ext", [("PNG", "jpg"), ("JPEG", "png"), ("GIF", "png"), ("BMP", "png"), ("TIFF", "jpg")]
)
def test_wrong_extension_or_unexpected_format_is_refused(fmt: str, ext: str) -> None:
    with pytest.raises(InvalidImage):
        decode_pair(encode(product_image(), fmt), encode(product_mask()), image_ext=ext)


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode_pair(b"", encode(product_mask()), image_ext="png")
