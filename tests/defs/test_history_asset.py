"""`performance_history` in-process on a hand-made work store and registry, and its alert sensor."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.history.sensors import history_alert_sensor
from maskfind_pipeline.defs.resources import MlflowResource, build_resources
from maskfind_pipeline.evaluation.cells import Cell, CellStore
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.registry.promotion import promote
from maskfind_pipeline.registry.records import TrainingRecord
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY
from tests.support.webhook import webhook_server
from tests.unit.evaluation.test_gate_and_cells import _rows

NOW = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)


def _record(weights: bytes) -> TrainingRecord:
    return TrainingRecord(TINY, weights, "ds-a", params={}, history=[], metrics={})


def _log_row(day: str, n: int, image_type: str, grade: int) -> dict[str, object]:
    return {
        "image_key": f"production/{day}/{image_type}-{n}.png",
        "image_id": f"{image_type}-{n}",
        "day": day,
        "status": "ok",
        "retryable": False,
        "image_type": image_type,
        "model_version": "2",
        "backend": "torch",
        "grade": grade,
        "novel": n == 0,
        "predicted_at": NOW,
        "run_id": "r",
    }


def _day(day: str, image_type: str, graded: int, grade3: int) -> list[dict[str, object]]:
    return [_log_row(day, n, image_type, 3 if n < grade3 else 1) for n in range(graded)]


@pytest.fixture(autouse=True)
def no_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASKFIND_SLACK_WEBHOOK", raising=False)


@pytest.fixture(scope="module")
def locations(tmp_path_factory: pytest.TempPathFactory) -> Locations:
    """Two champions (v2 worse on wafer), cells for both, two production days (board bad)."""
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path_factory.mktemp("home"))})
    mlflow = build_resources(locations)["mlflow"]
    assert isinstance(mlflow, MlflowResource)
    registry = mlflow.registry()
    for seed in (b"1", b"2"):
        version = registry.log_training(_record(seed)).version
        promote(registry, version, actor="test", reason="test")
    work = LocalObjectStore(locations.work_uri)
    cells = CellStore(work)
    for version, wafer in (("1", 0.9), ("2", 0.8)):
        groups = {"wafer": (wafer, 10), "board": (0.8, 10)}
        cells.write(Cell(version, "ds-a"), _rows(version, "ds-a", 0.85, groups))
    PredictionLog(work, "2026-03-01").append(_day("2026-03-01", "board", 30, 0), run_id="a", part=0)
    newest = _day("2026-03-02", "board", 30, 12) + _day("2026-03-02", "wafer", 30, 1)
    PredictionLog(work, "2026-03-02").append(newest, run_id="b", part=0)
    return locations


def _materialize(locations: Locations, instance: dg.DagsterInstance, config: dict) -> tuple:
    job = (
        defs()
        .resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey("performance_history")})
    )
    result = job.execute_in_process(
        run_config={"ops": {"performance_history": {"config": config}}},
        instance=instance,
        resources=build_resources(locations),
    )
    (event,) = result.get_asset_materialization_events()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    return event.materialization.metadata, checks


def test_history_tables_plots_and_failing_checks_name_the_image_types(locations: Locations) -> None:
    metadata, checks = _materialize(locations, dg.DagsterInstance.ephemeral(), {})

    assert metadata["champion"].value == "2" and metadata["champion_terms"].value == 2
    assert metadata["production_days"].value == 2
    miou = str(metadata["champion_miou"].value)
    assert "| 1 | promoted | wafer | 0.9 | ds-a |" in miou
    assert "| 2 | promoted | wafer | 0.8 | ds-a |" in miou
    assert "| 2026-03-02 | board | 30 | 0 | 30 | 18 | 0 | 12 | 30 | 1 | 0.4 |" in str(
        metadata["production_daily"].value
    )
    for name in ("champion_miou", "grade3_rate", "novelty_rate"):
        path = Path(str(metadata[f"history_{name}_path"].value))
        assert path.name == f"history-{name.replace('_', '-')}.png"
        assert path.parent == locations.cache_dir.parent / "plots"
        assert path.read_bytes().startswith(b"\x89PNG")

    miou_check, grade3 = checks["miou_not_below_best"], checks["grade3_rate_below_limit"]
    assert not miou_check.passed and miou_check.severity == dg.AssetCheckSeverity.WARN
    assert "wafer" in str(miou_check.description) and "board" not in str(miou_check.description)
    assert miou_check.metadata["image_types"].value == "wafer"
    assert not grade3.passed and grade3.severity == dg.AssetCheckSeverity.WARN
    assert "board 40% of 30" in str(grade3.description) and "wafer" not in str(grade3.description)
    failing = metadata["failing_checks"].value
    assert [(c["check"], c["image_types"]) for c in failing] == [
        ("miou_not_below_best", ["wafer"]),
        ("grade3_rate_below_limit", ["board"]),
    ]


def test_looser_limits_pass_both_checks_from_the_run_config(locations: Locations) -> None:
    config = {"max_miou_drop": 0.2, "max_grade3_rate": 0.5, "production_days": 1}
    metadata, checks = _materialize(locations, dg.DagsterInstance.ephemeral(), config)
    assert all(c.passed for c in checks.values()) and len(checks) == 2
    assert metadata["failing_checks"].value == []
    assert metadata["production_days"].value == 1
    assert "2026-03-01" not in str(metadata["production_daily"].value)


def _tick(instance: dg.DagsterInstance, cursor: str | None = None) -> tuple[list, str | None]:
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return list(history_alert_sensor(context)), context.cursor  # pyright: ignore[reportArgumentType]


def test_the_sensor_posts_one_alert_per_failing_materialization_to_the_webhook(
    locations: Locations, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    _materialize(locations, instance, {})
    with webhook_server() as hook:
        monkeypatch.setenv("MASKFIND_SLACK_WEBHOOK", hook.url)
        (result,), cursor = _tick(instance)
        (again,), _ = _tick(instance, cursor)  # the same materialization alerts once
    assert isinstance(result, dg.SkipReason) and "Slack and log" in str(result.skip_message)
    assert "No new materialization" in str(again.skip_message)
    (body,) = hook.bodies
    text = str(body["text"])
    assert "miou_not_below_best" in text and "wafer" in text
    assert "grade3_rate_below_limit" in text and "board 40% of 30" in text

    _materialize(locations, instance, {"max_miou_drop": 0.2, "max_grade3_rate": 0.5})
    (result,), _ = _tick(instance, cursor)
    assert "every history check passes" in str(result.skip_message)


def test_without_a_webhook_the_sensor_alerts_in_its_log(
    locations: Locations, capfd: pytest.CaptureFixture[str]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    _materialize(locations, instance, {})
    capfd.readouterr()
    (result,), _ = _tick(instance)
    assert "alerted (log)" in str(result.skip_message)
    logged = capfd.readouterr().err
    assert "WARNING - :warning: performance_history" in logged
    assert "grade3_rate_below_limit" in logged
