"""Steps on celery workers (dagster-celery, the RabbitMQ of this machine), switched on by
configuration alone: MASKFIND_EXECUTOR=celery with deploy/celery/executor.yaml, workers started
with deploy/celery/worker.sh. Every step runs in a worker's process, and what the run makes
equals what an in-process run of the same job makes from the same images.

What is compared: the catalog's counts, the dataset version's id and manifest hash (content
derived), and, for the nightly job, the registered model's dataset version, epochs and validation
mIoU and threshold (training is bound by epochs, not minutes, seeded, on the CPU in both runs: equal
up to float noise), the evaluation matrix and the promotion decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.celery_workers import celery_deployment, point_at, vhost_exists
from tests.support.models import nightly_config, tiny_training

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
DATASET_ASSETS = [dg.AssetKey("image_catalog"), dg.AssetKey("dataset_version")]
# Epoch-bound (2 epochs, no time budget) and on the CPU in both runs: the same arithmetic.
TRAINING = tiny_training(device="cpu")
PER_TYPE = 20  # enough for every image type to have test images (compat_evaluation needs them)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Two image types, 64 px: the labeled images both runs ingest."""
    root = tmp_path / "images"
    synthetic.generate(LocalObjectStore(root), synthetic.DEFAULT_TYPES[:2], PER_TYPE, size=64)
    return root


def test_dataset_steps_on_a_celery_worker_equal_an_in_process_run(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = in_process(tmp_path / "in-process", images, monkeypatch, DATASET_ASSETS)

    with celery_deployment(tmp_path / "celery", images, monkeypatch, ["solo"]) as deployment:
        result = deployment.execute(asset_selection=DATASET_ASSETS)
        placed = deployment.placement(result.run_id)
        made = materialized(deployment.instance, result.run_id)

    assert result.success
    assert placed == {"image_catalog": "solo", "dataset_version": "solo"}
    assert dataset_facts(made) == dataset_facts(expected)
    assert deployment.vhost == "" or not vhost_exists(deployment.vhost)


@pytest.mark.slow
@pytest.mark.timeout(600)  # 1.5 min on a quiet 2-core machine, 3.5 min beside a busy one
def test_nightly_steps_on_two_celery_workers_equal_an_in_process_run(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = nightly_config(TRAINING)
    expected = in_process(tmp_path / "in-process", images, monkeypatch, run_config=config)
    steps = set(expected["steps"])

    with celery_deployment(
        tmp_path / "celery", images, monkeypatch, ["left", "right"]
    ) as deployment:
        result = deployment.execute(run_config=config)
        placed = deployment.placement(result.run_id)
        made = materialized(deployment.instance, result.run_id)
        champion = ModelRegistry(Locations.from_env().tracking_uri).get("champion")

    assert result.success
    assert set(placed) == steps
    assert {step.split("[")[0] for step in steps} == {
        "image_catalog", "dataset_version", "mask_model", "label_audit", "test_scores.plan",
        "test_scores.score_chunk", "test_scores.collect", "compat_evaluation", "promotion",
    }  # fmt: skip
    # label_audit and test_scores' plan wait only for mask_model: one worker takes each.
    assert set(placed.values()) == {"left", "right"}, placed
    assert dataset_facts(made) == dataset_facts(expected)
    assert model_facts(made) == model_facts(expected)
    assert measured(made) == pytest.approx(measured(expected), abs=1e-3)
    assert champion.version == made["mask_model"]["model_version"] == "1"
    assert champion.tags["dataset_version"] == made["dataset_version"]["dataset_version"]


def dataset_facts(made: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    catalog, version = made["image_catalog"], made["dataset_version"]
    return {
        **{k: catalog[k] for k in ("catalog_samples", "new_samples", "quarantined")},
        **{k: version[k] for k in ("dataset_version", "manifest_sha256", "samples", "counts")},
    }


def model_facts(made: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    model = made["mask_model"]
    return {
        **{k: model[k] for k in ("model_version", "dataset_version", "best_epoch", "stop_reason")},
        "cells_computed": made["compat_evaluation"]["cells_computed"],
        "labels_audited": made["label_audit"]["labels_audited"],
        "promoted": made["promotion"]["promoted"],
        "champion_after": made["promotion"]["champion_after"],
    }


def measured(made: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Validation mIoU and threshold of the model, and every cell of the evaluation matrix."""
    cells = {
        f"{record.data['model']} on {column}": value
        for record in made["compat_evaluation"]["matrix"].records
        for column, value in record.data.items()
        if column != "model"
    }
    assert cells, made["compat_evaluation"]
    return {
        "val_miou": made["mask_model"]["val_miou"],
        "threshold": made["mask_model"]["threshold"],
    } | cells


def materialized(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """Each asset's materialization metadata in the run (values), and the run's `steps`."""
    made: dict[str, Any] = {"steps": []}
    for record in instance.all_logs(run_id):
        if record.is_dagster_event and record.get_dagster_event().is_step_start:
            made["steps"].append(record.step_key)
        if (materialization := record.asset_materialization) is not None:
            key = materialization.asset_key.to_user_string()
            made[key] = {k: v.value for k, v in materialization.metadata.items()}
    return made


def in_process(
    home: Path,
    images: Path,
    monkeypatch: pytest.MonkeyPatch,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What an in-process run of the nightly job makes from `images` under `home`."""
    point_at({"MASKFIND_HOME": str(home), "MASKFIND_DATA_URI": str(images)}, monkeypatch)
    job = defs().resolve_job_def("nightly")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=run_config, instance=instance, asset_selection=asset_selection
        )
        assert result.success
        return materialized(instance, result.run_id)
