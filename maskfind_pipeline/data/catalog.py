"""The image catalog: one Parquet row per unique sample, plus the quarantine of what was refused.

Both tables are append-only sets of Parquet parts in the work store, one part per ingest batch,
written create-only, so a crash leaves whole parts or nothing, and compacted after each ingest
into few files (`data.parts.PartTable`), so a step reads a handful of files, not one per batch:

    catalog/samples/part-<utc stamp>-<run>-<n>.parquet
    catalog/quarantine/part-<utc stamp>-<run>-<n>.parquet
    catalog/<table>/_compacted/..., catalog/<table>/_snapshots/<seq>.json

A later row for the same image key supersedes an earlier one (a relabel); `current_samples`
gives that view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskfind_pipeline.data.parts import PartTable, to_parquet
from maskfind_pipeline.storage.base import ObjectStore

__all__ = ["Catalog", "CatalogTables", "latest_by", "part_name", "rows_to_table", "to_parquet"]

SAMPLES_PREFIX = "catalog/samples/"
QUARANTINE_PREFIX = "catalog/quarantine/"

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("mask_key", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string(), nullable=False),
        pa.field("image_etag", pa.string(), nullable=False),
        pa.field("mask_etag", pa.string(), nullable=False),
        pa.field("image_bytes", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("image_mode", pa.string(), nullable=False),
        pa.field("exif_transposed", pa.bool_(), nullable=False),
        pa.field("mask_fraction", pa.float32(), nullable=False),
        pa.field("image_type", pa.string(), nullable=False),
        pa.field("camera", pa.string()),
        pa.field("product", pa.string()),
        pa.field("station", pa.string()),
        pa.field("captured_at", pa.timestamp("us", tz="UTC")),
        pa.field("failed_model_version", pa.string()),
        pa.field("reported_at", pa.timestamp("us", tz="UTC")),
        pa.field("tags_json", pa.string(), nullable=False),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ingest_run", pa.string(), nullable=False),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("etag", pa.string(), nullable=False),
        pa.field("mask_etag", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("retryable", pa.bool_(), nullable=False),
        pa.field("quarantined_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ingest_run", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class CatalogTables:
    """Everything ingested so far: all sample rows (history included) and all quarantine rows."""

    samples: pa.Table
    quarantine: pa.Table

    def current_samples(self) -> pa.Table:
        """The latest row of each image key (a relabel supersedes the older mask)."""
        return latest_by(self.samples, "image_key", "ingested_at")

    def current_quarantine(self) -> pa.Table:
        """The latest quarantine row of each key."""
        return latest_by(self.quarantine, "key", "quarantined_at")


class Catalog:
    """Reads, appends and compacts the catalog's Parquet parts in a work store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.samples = PartTable(store, SAMPLES_PREFIX, CATALOG_SCHEMA)
        self.quarantine = PartTable(store, QUARANTINE_PREFIX, QUARANTINE_SCHEMA)

    def read(self, columns: Sequence[str] | None = None) -> CatalogTables:
        """Both tables (only `columns` of the samples when given)."""
        return CatalogTables(self.samples.read(columns), self.quarantine.read())

    def append(self, samples: pa.Table, quarantine: pa.Table, *, run_id: str, batch: int) -> None:
        """Write one batch's rows as new create-only parts (empty tables write nothing)."""
        name = part_name(run_id, batch).removesuffix(".parquet")
        for table, rows in ((self.samples, samples), (self.quarantine, quarantine)):
            if rows.num_rows:
                table.append(rows, name)

    def compact(self) -> None:
        """Merge the parts written since the last compaction (`PartTable.compact`)."""
        self.samples.compact()
        self.quarantine.compact()

    def files(self) -> int:
        """Files a full read takes now."""
        return len(self.samples.layout().files) + len(self.quarantine.layout().files)


def latest_by(table: pa.Table, key: str, order: str) -> pa.Table:
    """Keep the last row (by `order`, then position) of each value of `key`, ordered by `key`.

    One stable sort of the two columns and one take of the rows kept: no sorted copy of the
    whole table, no hash table of the keys (the catalog's steps hold the table once)."""
    if table.num_rows == 0:
        return table
    by = pc.sort_indices(  # pyright: ignore[reportAttributeAccessIssue]
        table.select([key, order]), sort_keys=[(key, "ascending"), (order, "ascending")]
    )
    keys = table.column(key).take(by).combine_chunks()
    n = len(keys)
    last = np.ones(n, bool)
    if n > 1:
        same = pc.equal(keys.slice(1), keys.slice(0, n - 1)).fill_null(False)  # pyright: ignore[reportAttributeAccessIssue]
        last[:-1] = ~np.asarray(same)
    return table.take(by.filter(pa.array(last)))


def part_name(run_id: str, number: int) -> str:
    """`part-<utc stamp>-<run>-<n>.parquet`: parts sort by time, never collide across runs."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"part-{stamp}-{_safe(run_id)}-{number:05d}.parquet"


def rows_to_table(rows: Sequence[Mapping[str, object]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40] or "run"
