"""The test-membership table: every version's test split from one table, manifests read once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from maskfind_pipeline.data.version_store import CorruptVersion, VersionStore
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.evaluation.members import update_members
from maskfind_pipeline.storage import LocalObjectStore, ObjectStore
from tests.support.catalogs import fake_catalog


def publish(store: ObjectStore, catalog: pa.Table) -> str:
    snapshot = build_snapshot(catalog, VersionConfig())
    return VersionStore(store).publish(snapshot, catalog_rows=catalog.num_rows).version_id


def relabel(catalog: pa.Table, rows: list[int]) -> pa.Table:
    masks = catalog.column("mask_sha256").to_pylist()
    for i in rows:
        masks[i] = f"{i:064x}"
    return catalog.set_column(
        catalog.schema.get_field_index("mask_sha256"), "mask_sha256", pa.array(masks)
    )


def test_every_version_s_test_split_comes_from_one_table(store: ObjectStore, monkeypatch) -> None:
    versions = VersionStore(store)
    first = fake_catalog(120, seed=3)
    grown = pa.concat_tables([first, fake_catalog(80, seed=3, start=120)])
    ids = [
        publish(store, first),
        publish(store, grown),
        publish(store, relabel(grown, list(range(0, 200, 9)))),
    ]
    members = update_members(store, versions, versions.list())
    for vid in ids:
        manifest = versions.manifest(vid)
        test = manifest.filter(pa.array(np.asarray(manifest.column("split")) == "test"))
        expected = test.select(["sample_id", "mask_sha256", "image_type", "source"])
        assert members.test_split(vid).select(expected.column_names).equals(expected)
    distinct = members.rows_of(ids)
    assert distinct.num_rows == members.table.num_rows  # the relabeled ones twice
    assert members.rows_of(ids[:1]).num_rows == members.test_split(ids[0]).num_rows

    read: list[str] = []
    original = VersionStore.manifest
    monkeypatch.setattr(
        VersionStore, "manifest", lambda self, vid: read.append(vid) or original(self, vid)
    )
    again = update_members(store, versions, versions.list())
    assert read == [] and again.table.equals(members.table)
    fourth = publish(store, pa.concat_tables([grown, fake_catalog(10, seed=3, start=200)]))
    update_members(store, versions, versions.list())
    assert read == [fourth]  # only the new version's manifest


def test_a_manifest_changed_after_it_was_counted_is_named(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    versions = VersionStore(store)
    vid = publish(store, fake_catalog(60, seed=1))
    update_members(store, versions, versions.list())
    key = f"datasets/{vid}/manifest.parquet"
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 1
    store.put(key, bytes(data))
    with pytest.raises(CorruptVersion, match=vid):
        update_members(store, versions, versions.list())
