"""The production sensor: one run per new day, another when an open day grows, again after a
delay while its log has retryable rows, none otherwise."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.production import PredictionLog, failed_row
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.production import sensors
from maskfind_pipeline.defs.production.sensors import production_day_sensor
from maskfind_pipeline.defs.resources import ObjectStoreResource
from maskfind_pipeline.storage import LocalObjectStore

TYPES = synthetic.DEFAULT_TYPES[:1]


def _tick(instance: dg.DagsterInstance, root: Path, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "data_store": ObjectStoreResource(uri=str(root)),
            "work_store": ObjectStoreResource(uri=str(root / "work")),
        },
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


def _log(root: Path, day: str, *, retryable: bool, run_id: str) -> None:
    """A run's log rows of the day: every image failed, retryable or not."""
    data, log = LocalObjectStore(root), PredictionLog(LocalObjectStore(root / "work"), day)
    rows = [
        failed_row(
            info,
            day,
            "StoreUnavailable: 503",
            retryable=retryable,
            model_version="1",
            backend="torch",
            run_id=run_id,
            predicted_at=dt.datetime.now(dt.UTC),
        )
        for info in data.list(f"production/{day}/")
    ]
    log.append(rows, run_id=run_id, part=0)


def _later(cursor: str | None, seconds: float) -> str:
    """The cursor as it would be `seconds` later: its requests that much older."""
    loaded = json.loads(cursor or "{}")
    for entry in loaded["retries"].values():
        entry[1] -= seconds
    return json.dumps(loaded)


def test_a_day_with_retryable_rows_is_requested_again_until_it_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sensors, "MAX_RETRIES", 2)
    store, day = LocalObjectStore(tmp_path), "2026-11-27"
    instance = dg.DagsterInstance.ephemeral()
    synthetic.generate_production(store, TYPES, 2, day=dt.date(2026, 11, 27), size=32)
    first = _tick(instance, tmp_path, None)
    assert _requested(first) == [(day, f"{day}:2")]
    _log(tmp_path, day, retryable=True, run_id="r1")  # a store outage during that run

    too_soon = _tick(instance, tmp_path, first.cursor)
    assert _requested(too_soon) == []
    retried = _tick(instance, tmp_path, _later(too_soon.cursor, sensors.RETRY_AFTER_S))
    assert _requested(retried) == [(day, f"{day}:2:retry-1")]

    # The delay doubles; a run of the day still going holds the next request back.
    assert _requested(_tick(instance, tmp_path, _later(retried.cursor, 1.5 * 600))) == []
    going = dg.DagsterRun(
        job_name="production",
        run_id="going",
        tags={"dagster/partition": day},
        status=dg.DagsterRunStatus.STARTED,
    )
    instance.add_run(going)
    later = _later(retried.cursor, 2 * sensors.RETRY_AFTER_S)
    assert _requested(_tick(instance, tmp_path, later)) == []
    instance.report_run_failed(going)
    again = _tick(instance, tmp_path, later)
    assert _requested(again) == [(day, f"{day}:2:retry-2")]
    # MAX_RETRIES (2 here) spent: the day is left alone...
    given_up = _tick(instance, tmp_path, _later(again.cursor, 100 * sensors.RETRY_AFTER_S))
    assert _requested(given_up) == [] and json.loads(given_up.cursor or "")["retries"] == {}

    # ...until an image arrives: a new request, and retries start over; a day whose last run
    # left nothing retryable is settled.
    synthetic.generate_production(
        store, TYPES, 1, day=dt.date(2026, 11, 27), size=32, start_index=2
    )
    grown = _tick(instance, tmp_path, given_up.cursor)
    assert _requested(grown) == [(day, f"{day}:3")]
    _log(tmp_path, day, retryable=False, run_id="r3")
    settled = _tick(instance, tmp_path, _later(grown.cursor, 100 * sensors.RETRY_AFTER_S))
    assert _requested(settled) == [] and json.loads(settled.cursor or "")["retries"] == {}
