"""Label Studio's brush RLE: masks of odd sizes come back pixel for pixel; streams with literal
chunks (as the frontend writes them) decode; damaged streams are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from maskfind_pipeline.labeling import brush


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (37, 53), (101, 67), (257, 129)])
@pytest.mark.parametrize("kind", ["noise", "box", "empty", "full"])
def test_round_trip_is_pixel_identical_on_odd_sizes(shape: tuple[int, int], kind: str) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = {
        "noise": rng.random(shape) < 0.5,
        "box": np.pad(np.ones((shape[0] // 2, shape[1] // 2), bool), 1)[: shape[0], : shape[1]],
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
    }[kind]
    mask = np.resize(mask, shape)
    rle = brush.encode(mask)
    assert all(0 <= v <= 255 for v in rle)
    np.testing.assert_array_equal(brush.decode(rle, *shape), mask)


def test_a_run_longer_than_65536_values_round_trips() -> None:
    mask = np.zeros((300, 301), bool)  # 361,200 equal values in one run
    mask[-1, -1] = True
    np.testing.assert_array_equal(brush.decode(brush.encode(mask), 300, 301), mask)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_any_mask_round_trips(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(brush.decode(brush.encode(mask), *mask.shape), mask)


def _stream(count: int, chunks: list[tuple[int, int, int, list[int]]]) -> list[int]:
    """A hand-written stream: (repeat, size index, count - 1, values) chunks, word size 8."""
    bits = f"{count:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in brush.RUN_SIZES)
    for repeat, index, n, values in chunks:
        bits += f"{repeat:01b}{index:02b}" + format(n, f"0{brush.RUN_SIZES[index]}b")
        bits += "".join(f"{v:08b}" for v in values)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_literal_chunks_as_the_frontend_writes_them_decode() -> None:
    # A 1x3 image: a green opaque pixel, a transparent one, a half-transparent one.
    pixels = [0, 255, 0, 255, 0, 0, 0, 0, 0, 255, 0, 100]
    rle = _stream(12, [(0, 1, 11, pixels)])
    np.testing.assert_array_equal(brush.decode_values(rle), pixels)
    np.testing.assert_array_equal(brush.decode(rle, 1, 3), [[True, False, False]])
    mixed = _stream(8, [(1, 0, 3, [255]), (0, 0, 3, [1, 2, 3, 255])])
    np.testing.assert_array_equal(brush.decode(mixed, 1, 2), [[True, True]])


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        (_stream(12, [(1, 0, 7, [255])]), "truncated"),  # states 12 values, holds 8
        (_stream(4, [(1, 1, 9, [255])]), "past the 4 values"),
        ([1, 2, 300, 4, 5, 6, 7, 8], "0-255"),
        ("not a list", "list of byte values"),
    ],
)
def test_damaged_streams_are_refused(rle: object, message: str) -> None:
    with pytest.raises(brush.BrushError, match=message):
        brush.decode(rle, 3, 1)  # type: ignore[arg-type]


def test_a_stream_of_another_image_size_is_refused() -> None:
    rle = brush.encode(np.ones((4, 5), bool))
    with pytest.raises(brush.BrushError, match="holds 80 values, an image of 5x5 needs 100"):
        brush.decode(rle, 5, 5)
    with pytest.raises(brush.BrushError, match="2-D"):
        brush.encode(np.ones((2, 2, 2), bool))
