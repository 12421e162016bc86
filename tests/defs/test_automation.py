"""The automation around the loop: a new dataset version requests its evaluation, a failed run
is explained in one message, and the schedules follow the line's time zone."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

from maskfind_pipeline.defs.evaluation.sensors import new_dataset_version_sensor
from maskfind_pipeline.defs.monitoring.sensors import run_failure_sensor
from maskfind_pipeline.locations import Locations


def _version(instance: dg.DagsterInstance, vid: str, *, created: bool) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "dataset_version", metadata={"dataset_version": vid, "created": created}
        )
    )


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list[str], str | None]:
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    results = list(new_dataset_version_sensor(context))  # pyright: ignore[reportArgumentType]
    return [str(r.run_key) for r in results if isinstance(r, dg.RunRequest)], context.cursor


def test_a_new_dataset_version_requests_one_evaluation_run() -> None:
    instance = dg.DagsterInstance.ephemeral()
    _version(instance, "ds-1", created=True)
    runs, cursor = _tick(instance, None)
    assert runs == ["evaluate-ds-1"]
    assert _tick(instance, cursor)[0] == []
    _version(instance, "ds-1", created=False)  # the same catalog again: no new version
    runs, cursor = _tick(instance, cursor)
    assert runs == []
    _version(instance, "ds-2", created=True)
    assert _tick(instance, cursor)[0] == ["evaluate-ds-2"]


@dg.op
def train_until_it_breaks() -> None:
    raise RuntimeError("CUDA out of memory while training")


@dg.job(tags={"maskfind/kind": "nightly"})
def broken_nightly() -> None:
    train_until_it_breaks()


def test_a_failed_run_is_explained_with_its_failed_step(capsys: pytest.CaptureFixture[str]) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = broken_nightly.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=failure,
    ).for_run_failure()
    run_failure_sensor(context)  # pyright: ignore[reportCallIssue]
    logged = capsys.readouterr().err
    assert f"nightly run {result.run_id} (broken_nightly) failed" in logged
    assert "step train_until_it_breaks:" in logged and "CUDA out of memory" in logged


def test_the_schedules_run_in_the_configured_time_zone() -> None:
    code = (
        "from maskfind_pipeline.definitions import defs; "
        "print(sorted((s.name, s.execution_timezone) for s in defs().schedules))"
    )
    env = {"MASKFIND_TIMEZONE": "Europe/Berlin", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(
        [
            ("history_schedule", "Europe/Berlin"),
            ("nightly_schedule", "Europe/Berlin"),
            ("returned_labels_schedule", "Europe/Berlin"),
        ]
    )
    with pytest.raises(ValueError, match="not an IANA time zone"):
        Locations.from_env({"MASKFIND_TIMEZONE": "Mars/Olympus"})
