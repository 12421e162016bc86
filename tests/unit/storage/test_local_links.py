"""Symlinks and files that vanish in the local store: listed with a reason to refuse them, or
left out, never followed outside the root, by ingest, production and the production sensor."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.defs.production.sensors import production_day_sensor
from maskfind_pipeline.defs.resources import ObjectStoreResource
from maskfind_pipeline.storage import LocalObjectStore
from maskfind_pipeline.storage.base import ObjectNotFound
from maskfind_pipeline.storage.keys import InvalidKey
from tests.support.fswrites import record_reads
from tests.support.stores import put_pair, reasons, run_ingest

DAY = dt.date(2026, 11, 30)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(b"outside the root")
    (tmp_path / "outside" / "secret.mask.png").write_bytes(b"outside the root")
    return tmp_path / "store"


def test_links_are_listed_and_refused_and_vanished_files_left_out(root: Path) -> None:
    store = LocalObjectStore(root)
    store.put("a/inside.png", b"in")
    folder = root / "a"
    (folder / "escape.png").symlink_to(root.parent / "outside" / "secret.png")
    (folder / "dangling.png").symlink_to(root.parent / "outside" / "gone.png")
    (folder / "alias.png").symlink_to(folder / "inside.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "linked-dir").symlink_to(root.parent / "outside")
    os.mkfifo(folder / "pipe.png")
    with record_reads() as reads:
        listed = {info.key: info for info in store.list("a/")}
        assert store.get("a/alias.png", if_match=listed["a/alias.png"].etag) == b"in"
        with pytest.raises(InvalidKey, match="outside"):
            store.get("a/escape.png")
        with pytest.raises(InvalidKey, match="outside"):
            store.tags("a/escape.png")
        with pytest.raises((InvalidKey, ObjectNotFound)):
            store.get("a/dangling.png")
        with pytest.raises((InvalidKey, ObjectNotFound)):
            store.get("a/pipe.png")  # a FIFO is never opened for a blocking read
    assert set(listed) >= {"a/inside.png", "a/alias.png", "a/escape.png"}
    assert "a/pipe.png" not in listed and not any("linked-dir" in k for k in listed)
    assert not reads.outside(root), reads.outside(root)


def test_ingest_quarantines_links_out_of_the_root_and_goes_on(root: Path, tmp_path: Path) -> None:
    store = LocalObjectStore(root)
    put_pair(store, "good", seed=1)
    put_pair(store, "escape", seed=2)
    (root / "labeled" / "escape.png").unlink()
    (root / "labeled" / "escape.png").symlink_to(root.parent / "outside" / "secret.png")
    put_pair(store, "dangling", seed=3)
    (root / "labeled" / "dangling.mask.png").unlink()
    (root / "labeled" / "dangling.mask.png").symlink_to(root.parent / "outside" / "gone.png")
    with record_reads() as reads:
        report = run_ingest(store, LocalObjectStore(tmp_path / "work"))
    assert [r["image_key"] for r in report.new_rows] == ["labeled/good.png"]
    refused = reasons(report)
    assert "outside" in refused["labeled/escape.png"]
    assert "labeled/dangling.png" in refused
    assert not reads.outside(root, tmp_path / "work"), reads.outside(root)


def test_the_sensor_counts_a_day_with_links_and_vanishing_files(root: Path) -> None:
    store = LocalObjectStore(root)
    synthetic.generate_production(store, synthetic.DEFAULT_TYPES[:1], 2, day=DAY, size=32)
    folder = root / "production" / DAY.isoformat()
    (folder / "escape.png").symlink_to(root.parent / "outside" / "secret.png")
    (folder / "dangling.png").symlink_to(root.parent / "outside" / "gone.png")
    real_walk = os.walk

    def walk_then_delete(top, *args, **kwargs):  # type: ignore[no-untyped-def]
        for entry in real_walk(top, *args, **kwargs):
            if Path(entry[0]) == folder:
                os.unlink(folder / sorted(n for n in entry[2] if n.endswith(".jpg"))[0])
            yield entry

    with pytest.MonkeyPatch.context() as patch, dg.DagsterInstance.ephemeral() as instance:
        patch.setattr(os, "walk", walk_then_delete)
        context = dg.build_sensor_context(
            instance=instance,
            resources={
                "data_store": ObjectStoreResource(uri=str(root)),
                "work_store": ObjectStoreResource(uri=str(root / "work")),
            },
        )
        result = production_day_sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert [r.partition_key for r in result.run_requests or []] == [DAY.isoformat()]
