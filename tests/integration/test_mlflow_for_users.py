"""MLflow as its users expect, against a real tracking server: dataset versions as datasets and
run inputs, the gate's decision on the model version, system metrics on training runs."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

import pytest

from maskfind_pipeline.data.manifest import MANIFEST_SCHEMA
from maskfind_pipeline.evaluation.cells import Cell, CellStore
from maskfind_pipeline.evaluation.gate import GatePolicy
from maskfind_pipeline.flows.evaluation import log_cell_run
from maskfind_pipeline.flows.promotion import gate_and_promote
from maskfind_pipeline.registry.datasets import version_datasets
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHAMPION
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.mlflow_server import MlflowServer
from tests.support.models import tiny_record
from tests.unit.evaluation.test_gate_and_cells import _rows

pytestmark = pytest.mark.integration

VID = "ds-00112233aabbccdd"
CARD = {
    "id": VID,
    "counts": {
        "wafer": {"train": {"labeled": 14, "failure": 2}, "val": {"labeled": 3}, "test": {}},
        "tray": {"train": {"labeled": 10}, "val": {"labeled": 2}, "test": {"labeled": 5}},
    },
}
SOURCE = f"s3://work/root/datasets/{VID}/manifest.parquet"


@pytest.fixture
def registry(mlflow_tracking: MlflowServer) -> ModelRegistry:
    suffix = uuid.uuid4().hex[:8]
    return ModelRegistry(
        mlflow_tracking.tracking_uri,
        model_name=f"maskfind-users-{suffix}",
        experiment=f"maskfind-users-{suffix}",
    )


def test_a_training_run_lists_its_dataset_splits_and_its_metrics_name_the_val_split(
    registry: ModelRegistry,
) -> None:
    splits = version_datasets(CARD, SOURCE, ("train", "val"), schema=MANIFEST_SCHEMA)
    record = dataclasses.replace(tiny_record(seed=3, dataset_version=VID), datasets=splits)
    model = registry.log_training(record, alias=None)

    run = registry.client.get_run(model.run_id)
    assert run.inputs is not None
    found = {
        i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags}, i.dataset)
        for i in run.inputs.dataset_inputs
    }
    assert set(found) == {f"{VID}/train", f"{VID}/val"}
    digest, tags, train = found[f"{VID}/train"]
    assert digest == "00112233aabbccdd" and tags == {"mlflow.data.context": "train"}
    assert found[f"{VID}/val"][1] == {"mlflow.data.context": "val"}
    assert (train.source_type, json.loads(train.source)) == ("s3", {"uri": SOURCE})
    assert json.loads(train.profile or "{}") == {
        "num_rows": 26,
        "image_types": 2,
        "rows_by_source": {"failure": 2, "labeled": 24},
    }
    columns = json.loads(train.schema or "{}")["mlflow_colspec"]
    assert [c["name"] for c in columns] == MANIFEST_SCHEMA.names
    # The runs table's dataset filter (what the UI's Datasets column searches) finds the run.
    hits = registry.client.search_runs(
        [registry.experiment_id()], f"datasets.name = '{VID}/val' AND datasets.context = 'val'"
    )
    assert [r.info.run_id for r in hits] == [model.run_id]
    # The final metrics are measured on the val split: they name its dataset.
    logged = registry.client.get_logged_model(model.model_id)
    [metric] = [m for m in logged.metrics or [] if m.key == "val_miou_tuned"]
    assert (metric.dataset_name, metric.dataset_digest) == (f"{VID}/val", "00112233aabbccdd")


def test_an_evaluation_run_reads_the_test_split(registry: ModelRegistry) -> None:
    model = registry.log_training(tiny_record(seed=4, dataset_version=VID), alias=None)
    rows: list[dict[str, object]] = [
        {"group_kind": "overall", "group": "all", "miou": 0.8, "precision": 0.9, "recall": 0.7}
    ]
    [test] = version_datasets(CARD, SOURCE, ("test",))
    run_id = log_cell_run(registry, Cell(model.version, VID), rows, test)

    run = registry.client.get_run(run_id)
    assert run.inputs is not None
    [read] = run.inputs.dataset_inputs
    assert read.dataset.name == f"{VID}/test"
    assert [(t.key, t.value) for t in read.tags] == [("mlflow.data.context", "test")]
    assert json.loads(read.dataset.profile or "{}")["num_rows"] == 5
    logged = registry.client.get_logged_model(model.model_id)
    names = {(m.key, m.dataset_name) for m in logged.metrics or [] if m.run_id == run_id}
    assert ("test_miou/overall", f"{VID}/test") in names


def test_the_gate_writes_its_decision_and_evidence_on_the_version(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    cells = CellStore(LocalObjectStore(tmp_path))
    v1 = registry.log_training(tiny_record(seed=1)).version
    cells.write(Cell(v1, "ds-a"), _rows(v1, "ds-a", 0.90, {"wafer": (0.90, 10)}))
    first = gate_and_promote(registry, cells, GatePolicy(floor=0.5), actor="schedule nightly")
    assert first.promoted

    v2 = registry.log_training(tiny_record(seed=2)).version
    cells.write(Cell(v2, "ds-a"), _rows(v2, "ds-a", 0.91, {"wafer": (0.70, 10)}))
    second = gate_and_promote(registry, cells, GatePolicy(), actor="schedule nightly")
    assert not second.promoted and registry.get(CHAMPION).version == v1

    def description(version: str) -> str:
        return registry.client.get_model_version(registry.model_name, version).description or ""

    passed, refused = description(v1), description(v2)
    assert passed.startswith("**Promotion gate: passed**: promoted to champion.")
    assert "no champion (the floor applies)" in passed and "schedule nightly" in passed
    assert refused.startswith("**Promotion gate: failed**: not promoted.")
    assert f"Compared with champion v{v1}" in refused
    assert "- wafer on ds-a: 0.7000 < champion 0.9000 (delta -0.2000)" in refused
    table = [line for line in refused.splitlines() if line.startswith("| ds-a")]
    assert "| ds-a | wafer | 0.9000 | 0.7000 | -0.2000 | 10 | yes |" in table
    assert len(table) == len(second.decision.evidence)


def test_a_training_run_carries_system_metrics(registry: ModelRegistry) -> None:
    pytest.importorskip("psutil", reason="MLflow's system metrics need psutil")
    record = tiny_record(seed=5, dataset_version=VID)
    with registry.training_run(VID, {"training_key": "k"}, sampling_interval=1) as run_id:
        assert registry.client.get_run(run_id).info.status == "RUNNING"
        time.sleep(3.5)  # the training
    model = registry.log_training(record, alias=None, run_id=run_id)

    run = registry.client.get_run(model.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["training_key"] == "k"
    assert run.data.tags["code_version"] == "test"  # the record's tags, set at the end
    history = registry.client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2
    assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_a_training_that_fails_leaves_its_run_failed(registry: ModelRegistry) -> None:
    with (
        pytest.raises(RuntimeError, match="out of memory"),
        registry.training_run(VID, {}, sampling_interval=1) as run_id,
    ):
        raise RuntimeError("out of memory")
    assert registry.client.get_run(run_id).info.status == "FAILED"


def test_a_failure_after_the_training_was_logged_keeps_its_run_finished(
    registry: ModelRegistry,
) -> None:
    """The reviewer promotes inside its run's block: a failure there leaves the logged run."""
    with (
        pytest.raises(RuntimeError, match="promotion"),
        registry.training_run(VID, {}, sampling_interval=1) as run_id,
    ):
        registry.log_training(tiny_record(seed=6, dataset_version=VID), alias=None, run_id=run_id)
        raise RuntimeError("promotion failed")
    assert registry.client.get_run(run_id).info.status == "FINISHED"
