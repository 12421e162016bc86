"""Only one training at a time: two runs that each materialize `mask_model`, submitted through
the real run queue (`dagster job launch` + `dagster-daemon`, the project's dagster.yaml and
workspace.yaml), never run their training steps at the same time, and both succeed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.settings import Settings
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.daemon import (
    LOCATION_OVERRIDES,
    StepSpan,
    dagster_daemon,
    launch_runs,
    step_span,
    stop_process_group,
    subprocess_env,
    wait_for_runs,
)
from tests.support.models import TINY_TRAINING, nightly_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = ROOT / "workspace.yaml"
POOL = "training"
STEP = "mask_model"
# The implicit job of all assets: unlike `nightly` it has no `maskfind/kind` tag, so the nightly
# tag limit cannot be what keeps the two runs apart.
JOB = "__ASSET_JOB"


def test_two_queued_training_runs_never_train_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, log = train_twice_through_the_queue(tmp_path, monkeypatch, ROOT / "dagster.yaml")

    first, second = sorted((span for _, span in runs), key=lambda span: span.start)
    assert first.end <= second.start, (
        f"the training steps overlapped by {first.end - second.start:.1f} s: {first}, {second}"
    )
    for run, _ in runs:
        assert run.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.status, log[-4000:])
        assert "maskfind/kind" not in run.tags, run.tags  # the nightly tag limit played no part
    # Kept apart by the pool, not by chance: the second training waited for the pool's slot,
    # in its run worker (granularity `op`) or, if the daemon saw the first run start, in the queue.
    waited_in_worker = any(f"blocked by limit for pool {POOL}" in m for m in second.messages)
    waited_in_queue = f"Run {second.run_id} is blocked by global concurrency limits" in log
    assert waited_in_worker or waited_in_queue, (second, log[-4000:])


def train_twice_through_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dagster_yaml: Path
) -> tuple[list[tuple[dg.DagsterRun, StepSpan]], str]:
    """Two `mask_model` runs through the queue of a fresh instance configured by `dagster_yaml`;
    each run with the span of its training step, and the daemon's log (run workers' included)."""
    env = {"MASKFIND_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in LOCATION_OVERRIDES:
        monkeypatch.delenv(key, raising=False)
    Path(env["DAGSTER_HOME"]).mkdir()
    shutil.copy(dagster_yaml, Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    settings = Settings.from_env()
    daemon_log = tmp_path / "daemon.log"
    with (
        # The instance's SQLite storage is created here, before the daemon opens it: two
        # processes creating it at once stamp its schema version twice.
        dg.DagsterInstance.get() as instance,
        # The daemon and MLflow's schema creation mostly wait (on a code server, on SQLite):
        # start them, make the data and the upstream assets meanwhile, then submit the runs.
        dagster_daemon(WORKSPACE, env, daemon_log) as daemon,
    ):
        with _creating_mlflow_store(settings.tracking_uri, tmp_path / "mlflow-init.log"):
            synthetic.generate(
                LocalObjectStore(settings.data_uri), synthetic.DEFAULT_TYPES[:2], 8, size=64
            )
            upstream = (
                defs()
                .resolve_implicit_global_asset_job_def()
                .execute_in_process(
                    instance=instance,
                    asset_selection=[dg.AssetKey("image_catalog"), dg.AssetKey("dataset_version")],
                )
            )
            assert upstream.success

        run_ids = launch_runs(
            WORKSPACE,
            env,
            tmp_path,
            job=JOB,
            run_config={"ops": {STEP: nightly_config(TINY_TRAINING)["ops"][STEP]}},
            op_selection=[STEP],
            count=2,
        )
        runs = wait_for_runs(instance, run_ids, daemon=daemon, daemon_log=daemon_log, timeout_s=200)
        spans = [(run, step_span(instance, run.run_id, STEP)) for run in runs.values()]
        return spans, daemon_log.read_text(errors="replace")


@contextmanager
def _creating_mlflow_store(tracking_uri: str, log_path: Path) -> Iterator[None]:
    """Create the embedded MLflow store's tables during the block, so the runs do not race to."""
    Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    script = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", script, tracking_uri],
            env=subprocess_env({}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
        assert process.wait(timeout=120) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        stop_process_group(process)
