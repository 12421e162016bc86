"""Compacted part tables on the local store and the S3 API: rows once, few files, old snapshots."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.parts import PartTable, to_parquet
from maskfind_pipeline.data.production import PredictionLog, failed_row
from maskfind_pipeline.flows.history import compact_day
from maskfind_pipeline.storage import ObjectStore
from maskfind_pipeline.storage.base import ObjectInfo
from tests.support.catalogs import fake_catalog

NOW = dt.datetime(2027, 3, 1, 3, tzinfo=dt.UTC)
SCHEMA = pa.schema([pa.field("k", pa.string(), nullable=False), pa.field("v", pa.int64())])


def rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {
            "k": [f"k{i}" for i in range(start, start + count)],
            "v": list(range(start, start + count)),
        },
        schema=SCHEMA,
    )


def values(table: PartTable, **options: object) -> list[int]:
    return sorted(table.read(**options).column("v").to_pylist())  # type: ignore[arg-type]


def test_compaction_keeps_every_row_once_in_few_files(store: ObjectStore) -> None:
    table = PartTable(store, "t/", SCHEMA, max_files=3)
    for night in range(10):
        for batch in range(4):
            assert table.append(rows(night * 100 + batch * 10, 10), f"part-{night}-{batch}")
        assert not table.append(rows(0, 1), f"part-{night}-0")  # create-only
        table.compact()
        assert len(table.layout().files) <= 3
    assert values(table) == sorted(n * 100 + i for n in range(10) for i in range(40))
    assert [i.key for i in store.list("t/") if "/part-" in i.key] == []


def test_a_reader_sees_each_row_once_before_during_and_after(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = PartTable(store, "t/", SCHEMA)
    for i in range(3):
        table.append(rows(i * 10, 10), f"part-{i}")
    assert values(table) == list(range(30))
    # A compaction that committed its snapshot and died before deleting the parts it covers.
    monkeypatch.setattr(store, "delete", lambda key: None)
    assert table.compact()
    monkeypatch.undo()
    assert len(store_parts(store)) == 3
    assert values(PartTable(store, "t/", SCHEMA)) == list(range(30))
    table.append(rows(30, 5), "part-3")
    assert values(PartTable(store, "t/", SCHEMA)) == list(range(35))
    assert PartTable(store, "t/", SCHEMA).compact()
    assert values(PartTable(store, "t/", SCHEMA)) == list(range(35))
    assert store_parts(store) == []


def store_parts(store: ObjectStore) -> list[str]:
    return [i.key for i in store.list("t/") if "/part-" in i.key]


def test_old_snapshots_read_as_they_were_and_expire(store: ObjectStore) -> None:
    table = PartTable(store, "t/", SCHEMA, max_files=2, keep_snapshots=3)
    for i in range(6):
        table.append(rows(i * 10, 10), f"part-{i}")
        table.compact()
    kept = table.layout().snapshots
    assert kept == (4, 5, 6)
    assert values(PartTable(store, "t/", SCHEMA), snapshot=4) == list(range(40))
    with pytest.raises(KeyError, match="no snapshot 1"):
        PartTable(store, "t/", SCHEMA).read(snapshot=1)
    named = {k for s in kept for k in table.layout(s).compacted}
    on_store = {i.key for i in store.list("t/_compacted/")}
    assert on_store == named


def test_files_written_before_compaction_existed_are_read_and_compacted(
    store: ObjectStore,
) -> None:
    store.put("cells/model=1/dataset=a.parquet", to_parquet(rows(0, 3)))
    store.put("cells/model=2/dataset=a.parquet", to_parquet(rows(3, 3)))
    table = PartTable(store, "cells/", SCHEMA)
    assert values(table) == list(range(6))
    assert table.compact() and len(table.layout().files) == 1
    assert values(PartTable(store, "cells/", SCHEMA)) == list(range(6))


def test_the_catalog_reads_one_file_per_table_after_ingest_compacts(store: ObjectStore) -> None:
    catalog = Catalog(store)
    for batch in range(5):
        part = fake_catalog(20, seed=1, start=batch * 20)
        catalog.append(part, pa.table({}).schema.empty_table(), run_id="r", batch=batch)
    assert catalog.files() == 5
    catalog.compact()
    assert catalog.files() == 1
    again = Catalog(store).read()
    assert again.samples.num_rows == 100 and again.current_samples().num_rows == 100


def test_a_compacted_production_day_reads_the_same_from_one_file(store: ObjectStore) -> None:
    day = "2027-03-01"
    log = PredictionLog(store, day)
    for part in range(4):
        rows = [
            failed_row(ObjectInfo(f"production/{day}/i{part}-{n}.png", 1, "e"), day, "bad")
            | {"model_version": "1", "backend": "torch", "predicted_at": NOW, "run_id": "r"}
            for n in range(3)
        ]
        log.append(rows, run_id="r", part=part)
    before = log.current().sort_by("image_key")
    assert compact_day(store, day)
    parquet = [i.key for i in store.list(log.prefix) if i.key.endswith(".parquet")]
    assert len(parquet) == 1
    assert PredictionLog(store, day).current().sort_by("image_key").equals(before)
    assert not compact_day(store, day)
