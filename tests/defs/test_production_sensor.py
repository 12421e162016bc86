"""The production sensor: one run per new day, another when an open day grows, none otherwise."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from maskfind_pipeline import synthetic
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.production.sensors import production_day_sensor
from maskfind_pipeline.defs.resources import ObjectStoreResource
from maskfind_pipeline.storage import LocalObjectStore

TYPES = synthetic.DEFAULT_TYPES[:1]


def _tick(instance: dg.DagsterInstance, root: Path, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"data_store": ObjectStoreResource(uri=str(root))},
    )
    result = production_day_sensor(context)
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return result


def _requested(result: dg.SensorResult) -> list[tuple[str | None, str | None]]:
    return [(r.partition_key, r.run_key) for r in result.run_requests or []]


def test_one_run_per_new_day_and_per_growth_of_an_open_day(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    days = [dt.date(2026, 11, d) for d in (27, 28, 29, 30)]
    synthetic.generate_production(store, TYPES, 2, day=days[0], size=32)
    store.put("production/not-a-day/x.png", b"ignored")

    first = _tick(instance, tmp_path, None)
    assert _requested(first) == [("2026-11-27", "2026-11-27:2")]
    assert instance.get_dynamic_partitions(str(PRODUCTION_DAYS.name)) == ["2026-11-27"]

    quiet = _tick(instance, tmp_path, first.cursor)
    assert _requested(quiet) == []

    synthetic.generate_production(store, TYPES, 1, day=days[0], size=32, start_index=2)
    grown = _tick(instance, tmp_path, quiet.cursor)
    assert _requested(grown) == [("2026-11-27", "2026-11-27:3")]

    for day in days[1:]:
        synthetic.generate_production(store, TYPES, 1, day=day, size=32)
    later = _tick(instance, tmp_path, grown.cursor)
    assert [p for p, _ in _requested(later)] == ["2026-11-28", "2026-11-29", "2026-11-30"]

    # 2026-11-27 is no longer one of the two open days: a late image there starts nothing,
    # while one in the newest day does.
    synthetic.generate_production(store, TYPES, 1, day=days[0], size=32, start_index=3)
    synthetic.generate_production(store, TYPES, 1, day=days[-1], size=32, start_index=1)
    last = _tick(instance, tmp_path, later.cursor)
    assert _requested(last) == [("2026-11-30", "2026-11-30:2")]
    assert instance.get_dynamic_partitions(str(PRODUCTION_DAYS.name)) == [
        d.isoformat() for d in days
    ]
