"""The run queue of the real instance (`dagster job launch` + `dagster-daemon`, the project's
dagster.yaml and workspace.yaml): only one training at a time (pool `training`), only one nightly
run at a time (tag limit `maskfind/kind: nightly`), only one run of a production day at a time
(tag limit `dagster/partition`, per value). One daemon and instance serve the module."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.daemon import (
    LOCATION_OVERRIDES,
    dagster_daemon,
    launch_runs,
    run_span,
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
NIGHTLY = ("maskfind/kind", "nightly")


@dataclass(frozen=True)
class RunQueue:
    """A fresh instance (DAGSTER_HOME with the project's dagster.yaml) and its running daemon,
    with synthetic data ingested and a dataset version published."""

    tmp: Path
    env: Mapping[str, str]
    instance: dg.DagsterInstance
    daemon: subprocess.Popen[bytes]
    daemon_log: Path

    def run_twice(
        self,
        name: str,
        job: str,
        run_config: Mapping[str, object],
        op_selection: Sequence[str],
        tags: Sequence[Mapping[str, str]] = (),
    ) -> list[dg.DagsterRun]:
        """Submit two identical runs (or one per `tags`) at once and wait for all to finish."""
        log_dir = self.tmp / name
        log_dir.mkdir()
        run_ids = launch_runs(
            WORKSPACE,
            self.env,
            log_dir,
            job=job,
            run_config=run_config,
            op_selection=op_selection,
            count=max(2, len(tags)),
            tags=tags,
        )
        runs = wait_for_runs(
            self.instance, run_ids, daemon=self.daemon, daemon_log=self.daemon_log, timeout_s=200
        )
        return list(runs.values())

    def log(self) -> str:
        """The daemon's log, its run workers' included."""
        return self.daemon_log.read_text(errors="replace")


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunQueue]:
    tmp = tmp_path_factory.mktemp("run-queue")
    env = {"MASKFIND_HOME": str(tmp / "home"), "DAGSTER_HOME": str(tmp / "dagster")}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for key in LOCATION_OVERRIDES:
            monkeypatch.delenv(key, raising=False)
        Path(env["DAGSTER_HOME"]).mkdir()
        instance_yaml = Path(env["DAGSTER_HOME"]) / "dagster.yaml"
        shutil.copy(ROOT / "dagster.yaml", instance_yaml)
        # The daemon looks at the queue every second instead of every 5 (Dagster's default): the
        # limits under test are the project's, only the waits between runs are shorter.
        with instance_yaml.open("a") as file:
            file.write("\nrun_queue:\n  dequeue_interval_seconds: 1\n")
        locations = Locations.from_env()
        daemon_log = tmp / "daemon.log"
        with (
            # The instance's SQLite storage is created here, before the daemon opens it: two
            # processes creating it at once stamp its schema version twice.
            dg.DagsterInstance.get() as instance,
            # The daemon and MLflow's schema creation mostly wait (on a code server, on SQLite):
            # start them, make the data and the upstream assets meanwhile.
            dagster_daemon(WORKSPACE, env, daemon_log) as daemon,
        ):
            with _creating_mlflow_store(locations.tracking_uri, tmp / "mlflow-init.log"):
                synthetic.generate(
                    LocalObjectStore(locations.data_uri), synthetic.DEFAULT_TYPES[:2], 8, size=64
                )
                upstream = (
                    defs()
                    .resolve_implicit_global_asset_job_def()
                    .execute_in_process(
                        instance=instance,
                        asset_selection=[
                            dg.AssetKey("image_catalog"),
                            dg.AssetKey("dataset_version"),
                        ],
                    )
                )
                assert upstream.success
            yield RunQueue(tmp, env, instance, daemon, daemon_log)


def test_two_queued_training_runs_never_train_at_the_same_time(queue: RunQueue) -> None:
    runs = queue.run_twice(
        "training",
        JOB,
        run_config={"ops": {STEP: nightly_config(TINY_TRAINING)["ops"][STEP]}},
        op_selection=[STEP],
    )
    log = queue.log()

    spans = [step_span(queue.instance, run.run_id, STEP) for run in runs]
    first, second = sorted(spans, key=lambda span: span.start)
    assert first.end <= second.start, (
        f"the training steps overlapped by {first.end - second.start:.1f} s: {first}, {second}"
    )
    for run in runs:
        assert run.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.status, log[-4000:])
        assert NIGHTLY[0] not in run.tags, run.tags  # the nightly tag limit played no part
    # Kept apart by the pool, not by chance: the second training waited for the pool's slot,
    # in its run worker (granularity `op`) or, if the daemon saw the first run start, in the queue.
    waited_in_worker = any(f"blocked by limit for pool {POOL}" in m for m in second.messages)
    waited_in_queue = f"Run {second.run_id} is blocked by global concurrency limits" in log
    assert waited_in_worker or waited_in_queue, (second, log[-4000:])


def test_the_projects_instance_runs_one_nightly_run_at_a_time(tmp_path: Path) -> None:
    """The limit the slow test below watches at work, read from the project's dagster.yaml."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.get_concurrency_config().run_queue_config
    assert limits is not None and limits.max_concurrent_runs > 1
    nightly_limit = {"key": NIGHTLY[0], "value": NIGHTLY[1], "limit": 1}
    assert nightly_limit in limits.tag_concurrency_limits


# Slow (about 16 s): the tag-limit machinery is exercised in make test by the production-day
# test below (a limit per partition value); this one watches the nightly limit hold two runs apart.
@pytest.mark.slow
def test_two_nightly_runs_submitted_together_run_one_after_the_other(queue: RunQueue) -> None:
    limits = queue.instance.get_concurrency_config().run_queue_config
    assert limits is not None and limits.max_concurrent_runs > 1  # room for both runs...
    nightly_limit = {"key": NIGHTLY[0], "value": NIGHTLY[1], "limit": 1}
    assert nightly_limit in limits.tag_concurrency_limits  # ...but for the nightly tag limit

    # `image_catalog` alone: cheap, and in no pool.
    assert defs().resolve_assets_def("image_catalog").op.pool is None
    runs = queue.run_twice("nightly", "nightly", run_config={}, op_selection=["image_catalog"])
    log = queue.log()

    spans = [run_span(queue.instance, run.run_id) for run in runs]
    first, second = sorted(spans, key=lambda span: span.start)
    for run in runs:
        assert run.job_name == "nightly" and run.tags.get(NIGHTLY[0]) == NIGHTLY[1], run.tags
        assert run.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.status, log[-4000:])
    assert first.succeeded and second.succeeded
    assert first.end <= second.start, (
        f"the nightly runs overlapped by {first.end - second.start:.1f} s: {first}, {second}"
    )
    # The second run was queued before the first ended, and the daemon took it from the queue
    # only once the first had ended. Room for 4 runs, `image_catalog` in no pool, and no "blocked
    # by global concurrency limits" line for it: the nightly tag limit held it back. (Dagster logs
    # no line per run for a tag limit, only for pools.)
    assert second.enqueued < first.end, f"the second run came after the first ended: {first}"
    assert second.dequeued >= first.end, (first, second, log[-4000:])
    assert f"Run {second.run_id} is blocked by global concurrency limits" not in log


def test_runs_of_one_production_day_run_one_after_the_other(queue: RunQueue) -> None:
    """Two runs of one day never side by side (tag `dagster/partition`, one per value); a run
    of another day is not held back by them."""
    day, other = "2026-11-30", "2026-11-29"
    queue.instance.add_dynamic_partitions("production_days", [day, other])
    # `review_queue` alone: it reads the day's (empty) log, no champion needed, in no pool.
    days = [{"dagster/partition": d} for d in (day, day, other)]
    runs = queue.run_twice("production", "production", {}, ["review_queue"], tags=days)
    log = queue.log()

    for run in runs:
        assert run.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.status, log[-4000:])
    spans = {run.run_id: run_span(queue.instance, run.run_id) for run in runs}
    same = sorted(
        (spans[r.run_id] for r in runs if r.tags["dagster/partition"] == day),
        key=lambda span: span.start,
    )
    (elsewhere,) = [spans[r.run_id] for r in runs if r.tags["dagster/partition"] == other]
    first, second = same
    assert second.enqueued < first.end, f"the second run came after the first ended: {first}"
    assert second.dequeued >= first.end, (first, second, log[-4000:])
    assert elsewhere.dequeued < first.end, (first, elsewhere)  # another day: not held back


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
