"""Snapshot the catalog as a dataset version and check it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from maskfind_pipeline.data.catalog import CATALOG_SCHEMA, Catalog
from maskfind_pipeline.data.contact_sheet import contact_sheet_png
from maskfind_pipeline.data.manifest import MANIFEST_SCHEMA
from maskfind_pipeline.data.version_checks import CheckOutcome, check_version
from maskfind_pipeline.data.version_store import Published, VersionStore
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot, diff
from maskfind_pipeline.storage.base import ObjectStore


@dataclass(frozen=True)
class VersionOutcome:
    """The published (or already existing) version, its diff against its parent, its checks."""

    card: dict[str, Any]
    created: bool
    diff: list[dict[str, object]]
    checks: list[CheckOutcome]

    @property
    def version_id(self) -> str:
        return str(self.card["id"])


_VERSION_COLUMNS = (
    *(n for n in MANIFEST_SCHEMA.names if n in CATALOG_SCHEMA.names),
    "ingested_at",
)
"""The catalog columns a version is made of (and the order `current_samples` needs)."""


def publish_dataset_version(
    work_store: ObjectStore, config: VersionConfig, *, code_version: str = ""
) -> VersionOutcome:
    """Snapshot the current catalog; the same catalog and config never make a second version.

    Raises:
        EmptyCatalog: the catalog holds no sample.
    """
    versions = VersionStore(work_store)
    published, failures = _publish(work_store, versions, config, code_version)
    # The catalog and the snapshot are gone by now: the read-back and its parent are the only
    # whole tables this step holds at once (its peak memory).
    card = published.card
    manifest = versions.manifest(published.version_id)
    parent = versions.manifest(card["parent"]) if card["parent"] else None
    checks = [
        *check_version(manifest, catalog_failures=failures),
        CheckOutcome("manifest_checksum", True, "manifest sha256 and id verified"),
    ]
    return VersionOutcome(card, published.created, diff(parent, manifest), checks)


def _publish(
    work_store: ObjectStore, versions: VersionStore, config: VersionConfig, code_version: str
) -> tuple[Published, int]:
    """Snapshot and publish the current catalog; the version and the catalog's failures."""
    samples = Catalog(work_store).read(_VERSION_COLUMNS).current_samples()
    failures = int(pc.sum(pc.equal(samples.column("source"), "failure")).as_py() or 0)  # pyright: ignore[reportAttributeAccessIssue]
    rows = samples.num_rows
    snapshot = build_snapshot(samples, config)
    del samples
    return versions.publish(snapshot, catalog_rows=rows, code_version=code_version), failures


def added_samples_sheet(
    versions: VersionStore, data_store: ObjectStore, version_id: str, *, limit: int = 24
) -> bytes | None:
    """A contact sheet (PNG) of the samples `version_id` added to its parent, masks outlined,
    captioned with image type and source: up to `limit`, taken in turn from each image type.
    None when it added none."""
    manifest = versions.manifest(version_id)
    card = versions.card(version_id)
    columns = ["sample_id", "image_type", "source", "image_key", "mask_key"]
    if card.get("parent"):
        old = versions.manifest(card["parent"]).column("sample_id")
        added = pc.invert(pc.is_in(manifest.column("sample_id"), value_set=old))  # pyright: ignore[reportAttributeAccessIssue]
        manifest = manifest.filter(added)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in _first_per_type(manifest.select(columns), limit).to_pylist():
        by_type.setdefault(str(row["image_type"]), []).append(row)
    chosen = [rows[i] for i in range(limit) for rows in by_type.values() if i < len(rows)][:limit]
    if not chosen:
        return None
    tiles = [
        (
            f"{row['image_type'][:22]} {row['source']}",
            _decoded(data_store.get(str(row["image_key"])), rgb=True),
            _decoded(data_store.get(str(row["mask_key"])), rgb=False) > 0,
        )
        for row in chosen
    ]
    return contact_sheet_png(tiles, columns=6, tile=128)


def _first_per_type(table: pa.Table, limit: int) -> pa.Table:
    """The first `limit` rows of each image type, in table order (Arrow, no row dicts)."""
    if table.num_rows == 0:
        return table
    types = table.column("image_type").combine_chunks().dictionary_encode()
    codes = np.asarray(types.indices)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], codes[order], side="left")
    rank = np.empty(len(codes), np.int64)
    rank[order] = np.arange(len(codes)) - starts
    return table.filter(pa.array(rank < limit))


def _decoded(data: bytes, *, rgb: bool) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB") if rgb else image.convert("L"))
