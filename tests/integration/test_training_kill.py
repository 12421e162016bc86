"""A training attempt SIGKILLed while training, uploading or registering, then retried as the same
training (same Dagster run): exactly one good version, `challenger` on it, the dead attempt's run
and half-uploaded LoggedModel FAILED, nothing of the dead attempt aliased or promotable.

The killed attempts run in a worker process (`tests.support.training_worker`); the retries run
here, as the retried step would: `resume` first, then (only when it returns nothing) train."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
from mlflow.entities import LoggedModelStatus, Run, ViewType

from maskfind_pipeline import synthetic
from maskfind_pipeline.defs.datasets.assets import dataset_version
from maskfind_pipeline.defs.ingest.assets import image_catalog
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.registry.attempts import resume
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION, promote
from maskfind_pipeline.registry.records import (
    ATTEMPT_NOTE_TAG,
    ATTEMPT_TAG,
    PYFUNC_FILES,
    TRAINING_KEY_TAG,
    WEIGHTS_FILE,
)
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_weights
from tests.support.training_worker import log_attempt, mask_registry, materialize_mask_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _killed(mode: str, home: Path, name: str, *, point: str) -> None:
    """One attempt in a worker process that SIGKILLs itself at `point`."""
    command = ["-m", "tests.support.training_worker", mode, str(home), name, "--die-at", point]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-3000:]


def _runs(registry: ModelRegistry, key: str) -> list[Run]:
    return list(
        registry.client.search_runs(
            [registry.experiment_id()],
            f"tags.{TRAINING_KEY_TAG} = '{key}'",
            run_view_type=ViewType.ALL,
            order_by=["attributes.start_time ASC"],
        )
    )


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """The mask model's registry under MASKFIND_HOME=tmp_path, its SQLite schema made before
    any worker opens it."""
    made = mask_registry(tmp_path)
    made.experiment_id()
    return made


def test_an_upload_killed_midway_is_failed_and_the_retry_registers_one_version(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    key = f"{uuid.uuid4()}/mask_model"
    _killed("log", tmp_path, key, point="uploading")
    (dead,) = _runs(registry, key)
    assert dead.info.status == "RUNNING" and registry.versions() == []
    (half,) = registry.client.search_logged_models([dead.info.experiment_id])
    assert half.status == LoggedModelStatus.PENDING
    stored = Path(half.artifact_location.removeprefix("file://"), PYFUNC_FILES, WEIGHTS_FILE)
    assert 0 < stored.stat().st_size < len(tiny_weights(seed=1)), "half the weights are stored"

    assert resume(registry, key, alias=CHALLENGER) is None  # nothing to keep: the retry trains
    version = log_attempt(tmp_path, key)

    (only,) = registry.versions()
    assert only.version == version and only.aliases == (CHALLENGER,)
    assert only.model_id != half.model_id and registry.download(version).weights
    dead = registry.client.get_run(dead.info.run_id)
    assert dead.info.status == "FAILED" and dead.data.tags[ATTEMPT_TAG] == "failed"
    assert "killed" in dead.data.tags[ATTEMPT_NOTE_TAG]
    half = registry.client.get_logged_model(half.model_id)
    assert half.status == LoggedModelStatus.FAILED and half.tags[ATTEMPT_TAG] == "failed"
    assert [r.info.status for r in _runs(registry, key)] == ["FAILED", "FINISHED"]


def test_mask_model_killed_after_registering_keeps_that_version_on_retry(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """The retry is the real asset, as the same Dagster run: it keeps the version, trains
    nothing (no dataset version is even published here)."""
    run_id = str(uuid.uuid4())
    _killed("log", tmp_path, f"{run_id}/mask_model", point="registered")
    (dead,) = _runs(registry, f"{run_id}/mask_model")
    (version,) = registry.versions()
    assert dead.info.status == "RUNNING" and version.aliases == ()

    retry = materialize_mask_model(tmp_path, run_id)

    assert retry.success
    metadata = retry.asset_materializations_for_node("mask_model")[0].metadata
    assert metadata["resumed"].value is True
    assert metadata["model_version"].value == version.version
    (kept,) = registry.versions()
    assert kept.version == version.version and kept.aliases == (CHALLENGER,)
    (run,) = _runs(registry, f"{run_id}/mask_model")  # no second run: nothing trained
    assert run.info.status == "FINISHED" and run.data.tags[ATTEMPT_TAG] == "resumed"
    promote(registry, kept.version, actor="test", reason="the kept version is complete")
    assert registry.get(CHAMPION).version == kept.version


def test_mask_model_killed_while_training_is_trained_once_on_retry(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """The real asset killed after its first epoch (its run RUNNING, with system metrics and no
    model), retried as the same Dagster run: the dead run FAILED, trained again, one version."""
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    synthetic.generate(
        LocalObjectStore(locations.data_uri), synthetic.DEFAULT_TYPES[:2], 6, size=64
    )
    upstream = dg.materialize(
        [image_catalog, dataset_version],
        resources=build_resources(locations),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert upstream.success
    run_id = str(uuid.uuid4())
    _killed("asset", tmp_path, run_id, point="epoch")
    (dead,) = _runs(registry, f"{run_id}/mask_model")
    assert dead.info.status == "RUNNING" and registry.versions() == []

    retry = materialize_mask_model(tmp_path, run_id)

    assert retry.success
    (version,) = registry.versions()
    assert version.aliases == (CHALLENGER,)
    assert version.tags[TRAINING_KEY_TAG] == f"{run_id}/mask_model"
    statuses = [r.info.status for r in _runs(registry, f"{run_id}/mask_model")]
    assert statuses == ["FAILED", "FINISHED"]
    (dead, _) = _runs(registry, f"{run_id}/mask_model")
    assert dead.data.tags[ATTEMPT_TAG] == "failed" and version.run_id != dead.info.run_id
