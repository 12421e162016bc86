"""Label Studio's brush masks: its run-length encoding (thi.ng's `rle-pack`), in numpy.

A brush result holds the RGBA pixels of the mask layer, flattened row by row, packed as a bit
stream: a 32-bit value count, a 5-bit word size minus one, four 4-bit run-length field sizes
minus one, then chunks of `1 repeat-flag bit, 2 size-index bits, count-1, value(s)`, padded to
whole bytes. `encode` writes exactly the bytes of label-studio-sdk's `converter.brush.mask2rle`
(a mask in all four channels; checked against it in the tests), and `decode` reads any stream
the Label Studio frontend writes (literal and repeated chunks, any sizes). The SDK's own code
walks the bits one Python character at a time; this one is numpy and costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WORD_SIZE = 8
RUN_SIZES = (3, 4, 8, 16)
_LONGEST = 2**16


class BrushError(ValueError):
    """A brush result that is not a well-formed Label Studio RLE of the stated size."""


def encode(mask: np.ndarray) -> list[int]:
    """The Label Studio RLE (a list of byte values) of a 2-D mask: non-zero is the product."""
    if mask.ndim != 2:
        raise BrushError(f"a mask is 2-D, got shape {mask.shape}")
    values = np.repeat(np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8).ravel(), 4)
    return _pack(values)


def decode(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The boolean mask of a brush result of an image `height` x `width`: pixels whose alpha is
    at least half opaque (the frontend paints opaque pixels; SDK encodings use 255)."""
    rgba = decode_values(rle)
    if rgba.size != height * width * 4:
        raise BrushError(
            f"the RLE holds {rgba.size} values, an image of {width}x{height} needs "
            f"{height * width * 4}"
        )
    return rgba.reshape(height, width, 4)[:, :, 3] >= 128


def decode_values(rle: Sequence[int]) -> np.ndarray:
    """The flat values a Label Studio RLE holds (uint8)."""
    try:
        data = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise BrushError(f"an RLE is a list of byte values: {exc}") from None
    if data.ndim != 1 or data.size < 8 or data.min() < 0 or data.max() > 255:
        raise BrushError("an RLE is a list of at least 8 byte values (0-255)")
    bits = _Bits(np.unpackbits(data.astype(np.uint8)))
    count = bits.read(32)
    word = bits.read(5) + 1
    if word > 8:
        raise BrushError(f"word size {word} bits: a brush mask has 8-bit values")
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeat = bits.read(1)
        end = i + 1 + bits.read(sizes[bits.read(2)])
        if end > count:
            raise BrushError(f"a run ends at value {end}, past the {count} values stated")
        if repeat:
            out[i:end] = bits.read(word)
        else:
            out[i:end] = bits.read_many(end - i, word)
        i = end
    return out


def _pack(values: np.ndarray) -> list[int]:
    """The SDK's chunking: a lone value is a literal of one; a run of n > 1 is one repeat chunk
    with the smallest size that holds n - 1 (3, 4 or 8 bits), or, above 256, chunks of 65,536
    and a 16-bit remainder; padded with 1-8 zero bits as the SDK pads."""
    n = values.size
    if n == 0:
        raise BrushError("an empty mask has no RLE")
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), n - 1)
    lengths = np.diff(np.append(-1, ends))
    run_values = values[ends].astype(np.int64)
    long = lengths > 256
    full = np.where(long, (lengths - 1) // _LONGEST, 0)  # whole 65,536 chunks before the rest
    rest = lengths - full * _LONGEST
    chunk_run = np.repeat(np.arange(lengths.size), full + 1)
    first = np.cumsum(full + 1) - (full + 1)
    counts = np.full(chunk_run.size, _LONGEST, dtype=np.int64)
    counts[first + full] = rest
    chunk_long = long[chunk_run]
    index = np.select([chunk_long, counts <= 8, counts <= 16], [3, 0, 1], default=2).astype(
        np.int64
    )
    field = np.asarray(RUN_SIZES, dtype=np.int64)[index]
    flag = (lengths[chunk_run] > 1).astype(np.int64)
    width = 1 + 2 + field + WORD_SIZE
    code = (
        (flag << (2 + field + WORD_SIZE))
        | (index << (field + WORD_SIZE))
        | ((counts - 1) << WORD_SIZE)
        | run_values[chunk_run]
    )
    header = (n << 21) | ((WORD_SIZE - 1) << 16)
    for position, size in enumerate(RUN_SIZES):
        header |= (size - 1) << (12 - 4 * position)
    head = (header >> np.arange(52, -1, -1, dtype=np.int64)) & 1
    bits = np.concatenate([head.astype(np.uint8), _to_bits(code, width)])
    padded = np.concatenate([bits, np.zeros(8 - bits.size % 8, dtype=np.uint8)])
    return np.packbits(padded).tolist()


def _to_bits(codes: np.ndarray, widths: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Concatenate each code's low `width` bits, most significant first (block by block, so a
    noisy megapixel mask needs megabytes, not gigabytes)."""
    parts = []
    for start in range(0, codes.size, block):
        c, w = codes[start : start + block], widths[start : start + block]
        shifts = w[:, None] - 1 - np.arange(int(w.max()))[None, :]
        valid = shifts >= 0
        parts.append(((c[:, None] >> np.where(valid, shifts, 0)) & 1)[valid].astype(np.uint8))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


class _Bits:
    """A cursor over a bit stream: fields are read from its text ('0'/'1', parsed in C by
    `int(..., 2)`), literal blocks from the numpy array."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits, self.text, self.at = bits, (bits + 48).tobytes().decode(), 0

    def read(self, size: int) -> int:
        self._advance(size)
        return int(self.text[self.at - size : self.at], 2)

    def read_many(self, count: int, size: int) -> np.ndarray:
        self._advance(count * size)
        chunk = self.bits[self.at - count * size : self.at].reshape(count, size)
        return np.packbits(chunk, axis=1, bitorder="big")[:, 0] >> (8 - size)

    def _advance(self, size: int) -> None:
        if self.at + size > self.bits.size:
            raise BrushError("the RLE ends in the middle of a run (truncated)")
        self.at += size
