"""Building a dataset version from the catalog: stable splits, weights, a content-derived id."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import model_validator

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.data.manifest import MANIFEST_SCHEMA, SPLITS

_ID_COLUMNS = ("sample_id", "mask_sha256", "split", "weight", "image_type", "source", "image_key")


class EmptyCatalog(ValueError):
    """The catalog holds nothing a dataset version could be made of."""


class VersionConfig(CoreConfig):
    """How a catalog becomes a version. Changing any field changes the version id."""

    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    """Shares of train, validation and test; a sample's split is a pure function of its hash."""
    failure_weight: float = 3.0
    """Training weight of relabeled production failures (labeled samples weigh 1)."""
    held_out_types: tuple[str, ...] = ()
    """Image types kept out of train and val (their test samples stay), for unseen-type tests."""

    @model_validator(mode="after")
    def _valid(self) -> VersionConfig:
        if any(f < 0 for f in self.fractions):
            raise ValueError(f"fractions must be three non-negative numbers, got {self.fractions}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must add up to 1, got {self.fractions}")
        if self.failure_weight <= 0:
            raise ValueError(f"failure_weight must be positive, got {self.failure_weight}")
        return self

    def to_dict(self) -> dict[str, object]:
        """JSON-able fields: what the version id hashes and the card records."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Snapshot:
    """A manifest and its id, before publishing."""

    version_id: str
    manifest: pa.Table
    config: VersionConfig
    warnings: list[str] = field(default_factory=list)


def assign_splits(sample_ids: pa.Array | pa.ChunkedArray, fractions: Sequence[float]) -> np.ndarray:
    """The split of each sample: a pure function of its content hash (first 60 bits, uniform)."""
    position = hash_positions(sample_ids)
    edges = np.cumsum(fractions)[:-1]
    return np.asarray(SPLITS, dtype=object)[np.searchsorted(edges, position, side="right")]


def hash_positions(sample_ids: pa.Array | pa.ChunkedArray, *, offset: int = 0) -> np.ndarray:
    """Map sha256 hex digests to [0, 1) by 15 hex digits (the first, or from `offset`), without
    Python objects."""
    if isinstance(sample_ids, pa.ChunkedArray):
        sample_ids = sample_ids.combine_chunks()
    offsets, data = _string_buffers(sample_ids)
    if len(sample_ids) and not np.all(np.diff(offsets) == 64):
        raise ValueError("sample ids must be sha256 hex digests (64 characters)")
    digits = data.reshape(-1, 64)[:, offset : offset + 15]
    values = _HEX[digits].astype(np.uint64)
    if (values > 15).any():
        raise ValueError("sample ids must be lowercase sha256 hex digests")
    weights = np.uint64(16) ** np.arange(14, -1, -1, dtype=np.uint64)
    return (values * weights).sum(axis=1).astype(np.float64) / float(1 << 60)


def build_snapshot(catalog: pa.Table, config: VersionConfig) -> Snapshot:
    """Turn the current catalog (one row per sample: `CatalogTables.current_samples()`) into a
    manifest with a content-derived id."""
    if catalog.num_rows == 0:
        raise EmptyCatalog("the catalog has no samples yet: ingest labeled images first")
    splits = assign_splits(catalog.column("sample_id"), config.fractions)
    is_failure = _equals(catalog.column("source"), "failure")
    weights = np.where(is_failure, config.failure_weight, 1.0).astype(np.float32)
    table = catalog.append_column("split", pa.array(splits, pa.string()))
    table = table.append_column("weight", pa.array(weights, pa.float32()))
    if config.held_out_types:
        held = np.asarray(
            pc.is_in(  # pyright: ignore[reportAttributeAccessIssue]
                table.column("image_type"), value_set=pa.array(list(config.held_out_types))
            ).fill_null(False)
        )
        table = table.filter(pa.array(~held | (splits == "test")))
    manifest = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    manifest = manifest.sort_by([("sample_id", "ascending")])
    return Snapshot(version_id(manifest, config), manifest, config, _warnings(manifest, config))


def version_id(manifest: pa.Table, config: VersionConfig) -> str:
    """`ds-` + 16 hex digits of a hash over the manifest's defining columns and the config."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in _ID_COLUMNS:
        column = manifest.column(name).combine_chunks()
        digest.update(name.encode())
        if pa.types.is_string(column.type):
            offsets, data = _string_buffers(column)
            digest.update(offsets.astype("<i8").tobytes())
            digest.update(data.tobytes())
        else:
            digest.update(column.to_numpy(zero_copy_only=False).astype("<f4").tobytes())
    return f"ds-{digest.hexdigest()[:16]}"


def counts(manifest: pa.Table) -> dict[str, dict[str, dict[str, int]]]:
    """Samples per image type x split x source."""
    groups = (
        manifest.group_by(["image_type", "split", "source"])
        .aggregate([("sample_id", "count")])
        .sort_by([("image_type", "ascending"), ("split", "ascending"), ("source", "ascending")])
    )
    nested: dict[str, dict[str, dict[str, int]]] = {}
    for row in groups.to_pylist():
        by_split = nested.setdefault(row["image_type"], {})
        by_split.setdefault(row["split"], {})[row["source"]] = row["sample_id_count"]
    return nested


def diff(parent: pa.Table | None, child: pa.Table) -> list[dict[str, object]]:
    """Samples added, removed and relabeled per image type and source, parent -> child (Arrow
    joins: no Python object per sample)."""
    keys = ["sample_id", "image_type", "source", "mask_sha256"]
    after = child.select(keys)
    before = (parent if parent is not None else child.schema.empty_table()).select(keys)
    old = before.select(["sample_id", "mask_sha256"]).rename_columns(["sample_id", "old_mask"])
    joined = after.join(old, "sample_id", join_type="left outer", use_threads=False)
    old_mask = joined.column("old_mask")
    added = np.asarray(old_mask.is_null())
    differs = pc.not_equal(joined.column("mask_sha256"), old_mask).fill_null(False)  # pyright: ignore[reportAttributeAccessIssue]
    changed = ~added & np.asarray(differs)
    removed = before.join(
        after.select(["sample_id"]), "sample_id", join_type="left anti", use_threads=False
    )
    tally: Counter[tuple[str, str, str]] = Counter()
    for change, table in (
        ("added", joined.filter(pa.array(added))),
        ("relabeled", joined.filter(pa.array(changed))),
        ("removed", removed),
    ):
        grouped = table.group_by(["image_type", "source"], use_threads=False).aggregate(
            [("sample_id", "count")]
        )
        for row in grouped.to_pylist():
            tally[(row["image_type"], row["source"], change)] += row["sample_id_count"]
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for (image_type, source, change), n in sorted(tally.items()):
        row = rows.setdefault(
            (image_type, source),
            {"image_type": image_type, "source": source, "added": 0, "removed": 0, "relabeled": 0},
        )
        row[change] = n
    return list(rows.values())


def _warnings(manifest: pa.Table, config: VersionConfig) -> list[str]:
    found = counts(manifest)
    notes = []
    for image_type, by_split in found.items():
        total = sum(sum(s.values()) for s in by_split.values())
        missing = [
            s for s in SPLITS if s not in by_split and image_type not in config.held_out_types
        ]
        if total < 3 or missing:
            notes.append(
                f"image type {image_type} has {total} sample(s)"
                + (f", none in {', '.join(missing)}" if missing else "")
            )
    if not any("labeled" in by_source for t in found.values() for by_source in t.values()):
        notes.append("no labeled samples: the version holds failures only")
    return notes


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16)


def _string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (rebased to 0) and the UTF-8 bytes of a null-free string array."""
    if array.null_count:
        raise ValueError("unexpected nulls in a defining column")
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        array.offset : array.offset + len(array) + 1
    ]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
        if len(array)
        else (np.zeros(0, dtype=np.uint8))
    )
    return offsets - offsets[0], data


def _equals(column: pa.ChunkedArray, value: str) -> np.ndarray:
    """`column == value` as booleans, compared in Arrow (no Python string per row)."""
    return np.asarray(pc.equal(column, value).fill_null(False))  # pyright: ignore[reportAttributeAccessIssue]
