"""The model upload dies in the middle: a fault proxy between the pipeline's MLflow client and a
real `mlflow server` (served artifacts) cuts the PUT of the weights after half of them. No
version is registered without complete weights, the run and the LoggedModel end FAILED; a cut the
client's own retry gets past leaves complete, verified weights; and `promote` refuses a version
whose stored weights were truncated afterwards.

The session's `mlflow_tracking` server (SQLite, artifacts on local disk) is used rather than one
with S3 artifacts: the cut is between the client and the server, the same for either store, and
the session server is already running (an S3-backed one takes PostgreSQL, moto and ~20 s more).
Download-side checks of altered files: tests/unit/registry/test_registry.py
(`test_altered_weights_fail_their_hash`, `test_files_beside_the_weights_come_back_verified`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.entities import LoggedModelStatus, ViewType
from mlflow.exceptions import MlflowException

from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHAMPION, promote
from maskfind_pipeline.registry.records import (
    CONFIG_FILE,
    PYFUNC_FILES,
    WEIGHTS_FILE,
    RegistryError,
    TrainingRecord,
)
from tests.support.mlflow_server import MlflowServer
from tests.support.models import TINY, tiny_record
from tests.support.netproxy import FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy(mlflow_tracking: MlflowServer) -> Iterator[FaultProxy]:
    server = urlsplit(mlflow_tracking.tracking_uri)
    assert server.hostname and server.port
    with FaultProxy(server.hostname, server.port) as running:
        yield running


@pytest.fixture(scope="module")
def record() -> TrainingRecord:
    return tiny_record(seed=1)


@pytest.fixture
def registry(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelRegistry]:
    """A model and experiment of its own, reached through the proxy; the client retries a
    failed request once, at once (MLflow's default: 7 times over minutes)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    name = f"upload-{uuid.uuid4().hex[:8]}"
    proxy.clear()
    yield ModelRegistry(proxy.endpoint_url, model_name=name, experiment=name)
    proxy.clear()


def test_an_upload_cut_midway_registers_no_version(
    registry: ModelRegistry, proxy: FaultProxy, record: TrainingRecord
) -> None:
    half = len(record.weights) // 2
    proxy.cut_request(half, times=100, path_contains=f"/{PYFUNC_FILES}/{WEIGHTS_FILE}")

    with pytest.raises(MlflowException, match=WEIGHTS_FILE):
        registry.log_training(record)

    assert proxy.faults_applied == {"cut_request": 2}  # the request and the client's one retry
    proxy.clear()
    assert registry.versions() == []
    (run,) = registry.client.search_runs([registry.experiment_id()], run_view_type=ViewType.ALL)
    assert run.info.status == "FAILED"
    (model,) = registry.client.search_logged_models([registry.experiment_id()])
    assert model.status == LoggedModelStatus.FAILED


def test_a_cut_the_client_retries_past_leaves_complete_weights(
    registry: ModelRegistry, proxy: FaultProxy, record: TrainingRecord
) -> None:
    proxy.cut_request(len(record.weights) // 2, path_contains=f"/{PYFUNC_FILES}/{WEIGHTS_FILE}")

    model = registry.log_training(record)

    assert proxy.faults_applied == {"cut_request": 1}
    assert registry.download(model.version).weights == record.weights


def test_promote_refuses_a_version_whose_stored_weights_were_truncated(
    registry: ModelRegistry, record: TrainingRecord, tmp_path: Path
) -> None:
    champion = registry.log_training(record).version
    promote(registry, champion, actor="schedule", reason="first")
    candidate = registry.log_training(record)
    truncated = tmp_path / "artifacts"
    truncated.mkdir()
    (truncated / WEIGHTS_FILE).write_bytes(record.weights[: len(record.weights) // 2])
    (truncated / CONFIG_FILE).write_text(TINY.to_json())
    registry.client.log_model_artifacts(candidate.model_id, str(truncated), PYFUNC_FILES)

    with pytest.raises(RegistryError, match=f"{WEIGHTS_FILE} do not match their sha256"):
        promote(registry, candidate.version, actor="alice", reason="looks better")

    assert registry.get(CHAMPION).version == champion
    assert "promoted_by" not in registry.get(candidate.version).tags
