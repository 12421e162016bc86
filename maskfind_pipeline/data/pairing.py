"""Turn a listing of the labeled and failure prefixes into image/mask pairs and refusals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskfind_pipeline.storage.base import ObjectInfo
from maskfind_pipeline.storage.keys import (
    MASK_SUFFIX,
    InvalidKey,
    SampleKeys,
    Source,
    mask_image_id,
    parse_image_key,
    printable_key,
    validate_key,
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A listed image and its mask, with the ETags seen at listing time."""

    keys: SampleKeys
    image: ObjectInfo
    mask: ObjectInfo

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.image.key, self.image.etag, self.mask.etag)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An object that cannot become a sample, with why and whether a later run may retry it."""

    key: str
    etag: str
    mask_etag: str
    stage: str
    reason: str
    retryable: bool


@dataclass(frozen=True)
class Pairs:
    """A listing paired: one Arrow row per image/mask pair (`PAIR_SCHEMA`, ordered by source
    and image id), and the refusals. Only the pairs asked for become `Candidate` objects."""

    table: pa.Table
    refusals: list[Refusal]

    def candidates(self, positions: Sequence[int] | None = None) -> list[Candidate]:
        """The pairs at `positions` (all when None) as candidates, in that order."""
        rows = self.table if positions is None else self.table.take(pa.array(positions, pa.int64()))
        out = []
        for r in rows.to_pylist():
            keys = parse_image_key(r["image_key"])
            assert keys is not None
            out.append(
                Candidate(
                    keys,
                    ObjectInfo(r["image_key"], r["image_size"], r["image_etag"]),
                    ObjectInfo(r["mask_key"], r["mask_size"], r["mask_etag"]),
                )
            )
        return out


PAIR_SCHEMA = pa.schema(
    [
        ("image_key", pa.string()),
        ("image_size", pa.int64()),
        ("image_etag", pa.string()),
        ("mask_key", pa.string()),
        ("mask_size", pa.int64()),
        ("mask_etag", pa.string()),
    ]
)
_LISTED = pa.schema(
    [
        ("stem", pa.string()),
        ("key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("seq", pa.int64()),
    ]
)


def pair_objects(listing: Iterable[ObjectInfo]) -> tuple[list[Candidate], list[Refusal]]:
    """Match `<id>.<png|jpg>` with `<id>.mask.png` per source; refuse everything else."""
    pairs = pair_listing(listing)
    return pairs.candidates(), pairs.refusals


def pair_listing(listing: Iterable[ObjectInfo], *, page: int = 8192) -> Pairs:
    """`pair_objects` in bounded Python memory: the listing is read once, key by key, into
    Arrow columns (`page` keys at a time), and images meet their masks in an Arrow join on
    `<source>/<image id>`, not in dicts of objects. Refusals (few) stay objects.

    Order, as `pair_objects` always gave it: pairs by source and image id; refusals of keys
    first (listing order), then of pairing (several images of one id, an image without a mask)
    by source and image id, then masks without an image (listing order)."""
    images, masks = _Columns(page), _Columns(page)
    refusals: list[Refusal] = []
    for seq, info in enumerate(listing):
        refusal = _classify(info, seq, images, masks)
        if refusal:
            refusals.append(refusal)
    image_rows = images.table()
    image_rows = image_rows.take(
        pc.sort_indices(image_rows, sort_keys=[("stem", "ascending"), ("seq", "ascending")])  # pyright: ignore[reportAttributeAccessIssue]
    )
    mask_rows = masks.table()
    image_stems = image_rows.column("stem").combine_chunks()
    mask_stems = mask_rows.column("stem").combine_chunks()
    shared = _runs_of_equal(image_stems)  # several images of one id
    single = image_rows.filter(pa.array(~shared))
    at = pc.index_in(single.column("stem"), value_set=mask_stems)  # pyright: ignore[reportAttributeAccessIssue]
    has_mask = pc.is_valid(at)  # pyright: ignore[reportAttributeAccessIssue]
    paired, mask_of = single.filter(has_mask), mask_rows.take(at.filter(has_mask))
    table = pa.table(
        [
            paired.column("key"),
            paired.column("size"),
            paired.column("etag"),
            mask_of.column("key"),
            mask_of.column("size"),
            mask_of.column("etag"),
        ],
        schema=PAIR_SCHEMA,
    )
    pairing: list[tuple[str, int, Refusal]] = []
    by_stem: dict[str, list[str]] = {}
    for r in image_rows.filter(pa.array(shared)).to_pylist():
        by_stem.setdefault(r["stem"], []).append(r["key"])
        pairing.append((r["stem"], r["seq"], _refuse_row(r, "pair", "")))
    pairing = [
        (
            stem,
            seq,
            replace(refusal, reason=f"several images share one id: {', '.join(by_stem[stem])}"),
        )
        for stem, seq, refusal in pairing
    ]
    for r in single.filter(pc.invert(has_mask)).to_pylist():  # pyright: ignore[reportAttributeAccessIssue]
        reason = f"image has no mask {r['stem']}{MASK_SUFFIX}"
        pairing.append((r["stem"], r["seq"], _refuse_row(r, "pair", reason, True)))
    refusals += [refusal for _, _, refusal in sorted(pairing, key=lambda t: (t[0], t[1]))]
    orphan = pc.invert(pc.is_in(mask_stems, value_set=image_stems))  # pyright: ignore[reportAttributeAccessIssue]
    orphans = mask_rows.filter(orphan).sort_by("seq")
    refusals += [_refuse_row(r, "pair", "mask has no image", True) for r in orphans.to_pylist()]
    return Pairs(table, refusals)


def _runs_of_equal(sorted_values: pa.Array) -> np.ndarray:
    """Whether each value of a sorted array has an equal neighbour."""
    n = len(sorted_values)
    shared = np.zeros(n, bool)
    if n > 1:
        same = np.asarray(
            pc.equal(sorted_values.slice(1), sorted_values.slice(0, n - 1)).fill_null(False)  # pyright: ignore[reportAttributeAccessIssue]
        )
        shared[1:] |= same
        shared[:-1] |= same
    return shared


class _Columns:
    """Listed objects gathered into Arrow record batches of `page` rows."""

    def __init__(self, page: int) -> None:
        self.page = page
        self.batches: list[pa.RecordBatch] = []
        self.rows: list[list[object]] = [[] for _ in _LISTED.names]

    def add(self, stem: str, info: ObjectInfo, seq: int) -> None:
        for column, value in zip(
            self.rows, (stem, info.key, info.size, info.etag, seq), strict=True
        ):
            column.append(value)
        if len(self.rows[0]) >= self.page:
            self._flush()

    def table(self) -> pa.Table:
        """Everything gathered, handed over (the gatherer keeps nothing)."""
        self._flush()
        batches, self.batches = self.batches, []
        return pa.Table.from_batches(batches, schema=_LISTED)

    def _flush(self) -> None:
        if self.rows[0]:
            self.batches.append(pa.record_batch(self.rows, schema=_LISTED))
            self.rows = [[] for _ in _LISTED.names]


def _classify(info: ObjectInfo, seq: int, images: _Columns, masks: _Columns) -> Refusal | None:
    try:
        validate_key(info.key)
    except InvalidKey as exc:
        return _refuse(info, "key", str(exc))
    if info.size == 0:
        return _refuse(info, "key", "object is empty (0 bytes)")
    parsed = parse_image_key(info.key)
    if parsed is not None:
        images.add(f"{parsed.source.value}/{parsed.image_id}", info, seq)
        return None
    image_id = mask_image_id(info.key)
    source = info.key.partition("/")[0]
    if image_id is not None and "/" not in info.key[len(source) + 1 :]:
        masks.add(f"{Source(source).value}/{image_id}", info, seq)
        return None
    return _refuse(
        info,
        "key",
        "unexpected key: expected <id>.png|jpg|jpeg or <id>.mask.png directly "
        "under labeled/ or failures/",
    )


def _refuse_row(
    row: dict[str, object], stage: str, reason: str, retryable: bool = False
) -> Refusal:
    return Refusal(str(row["key"]), str(row["etag"]), "", stage, reason, retryable)


def _refuse(info: ObjectInfo, stage: str, reason: str, retryable: bool = False) -> Refusal:
    # A key refused as invalid may not be UTF-8; the quarantine must still be able to hold it.
    return Refusal(printable_key(info.key), info.etag, "", stage, reason, retryable)
