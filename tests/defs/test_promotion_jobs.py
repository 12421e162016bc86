"""The manual promote and rollback jobs, as launched from the UI's launchpad."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from maskfind_pipeline.definitions import defs
from maskfind_pipeline.evaluation.cells import Cell, CellStore
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_record
from tests.unit.evaluation.test_gate_and_cells import _rows


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Locations:
    monkeypatch.setenv("MASKFIND_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Locations.from_env()


def _registry(locations: Locations) -> ModelRegistry:
    return ModelRegistry(locations.tracking_uri, artifact_location=locations.artifact_location)


def _launch(job: str, config: Mapping[str, object]) -> bool:
    result = (
        defs()
        .resolve_job_def(job)
        .execute_in_process(
            run_config={"ops": {next(iter(_OPS[job])): {"config": config}}}, raise_on_error=False
        )
    )
    return result.success


_OPS = {"promote_model": ["promote_version"], "rollback_model": ["rollback_champion"]}


def test_manual_promotion_respects_the_gate_unless_forced_and_rollback_restores(
    home: Locations,
) -> None:
    registry = _registry(home)
    v1 = registry.log_training(tiny_record(seed=1)).version
    v2 = registry.log_training(tiny_record(seed=2)).version
    cells = CellStore(LocalObjectStore(home.work_uri))
    cells.write(Cell(v1, "ds-a"), _rows(v1, "ds-a", 0.90, {"wafer": (0.90, 10)}))
    cells.write(Cell(v2, "ds-a"), _rows(v2, "ds-a", 0.80, {"wafer": (0.70, 10)}))

    assert _launch(
        "promote_model",
        {"version": v1, "reason": "first", "requested_by": "ana", "gate": {"floor": 0.5}},
    )
    assert registry.get("champion").version == v1

    blocked = {"version": v2, "reason": "try", "requested_by": "ana"}
    assert not _launch("promote_model", blocked)
    assert registry.get("champion").version == v1

    assert _launch("promote_model", {**blocked, "force": True, "reason": "line 4 needs it"})
    champion = registry.get("champion")
    assert champion.version == v2 and champion.tags["promotion_forced"] == "true"
    assert champion.tags["promoted_by"] == "ana (manual)"
    described = registry.client.get_model_version(registry.model_name, v2).description or ""
    assert described.startswith(
        "**Promotion gate: failed**: promoted to champion (manual request: line 4 needs it; "
        "forced past the gate)."
    )
    assert "- wafer on ds-a: 0.7000 < champion 0.9000 (delta -0.2000)" in described

    assert _launch("rollback_model", {"reason": "too many grade 3", "requested_by": "bo"})
    assert registry.get("champion").version == v1
    assert registry.get(v2).tags["rollback_reason"] == "too many grade 3"


def test_manual_promotion_of_a_missing_version_fails_clearly(home: Locations) -> None:
    registry = _registry(home)
    registry.log_training(tiny_record(seed=1))
    assert not _launch("promote_model", {"version": "42", "reason": "x", "requested_by": "ana"})
    assert registry.alias_or_none("champion") is None
