"""A hung run ends at its maximum runtime: the real `dagster-daemon` with the project's dagster.yaml
(run monitoring's limits made tiny) stops a run whose step never returns, says why in the run's
event log, and leaves no step process behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.support.daemon import (
    LOCATION_OVERRIDES,
    dagster_daemon,
    launch_runs,
    run_span,
    wait_for_runs,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MAX_RUNTIME_S = 2


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """DAGSTER_HOME with the project's dagster.yaml, its run monitoring polling every second and
    stopping runs after MAX_RUNTIME_S."""
    options = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    monitoring = options["run_monitoring"]
    assert monitoring["enabled"] and monitoring["max_runtime_seconds"] > 0, monitoring
    monitoring.update(max_runtime_seconds=MAX_RUNTIME_S, poll_interval_seconds=1)
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(options))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for key in LOCATION_OVERRIDES:
        monkeypatch.delenv(key, raising=False)
    yield home


def test_a_hung_run_is_stopped_at_its_max_runtime_and_leaves_no_step_process(
    dagster_home: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace.yaml"
    location = {
        "relative_path": str(ROOT / "tests/support/hung_job.py"),
        "working_directory": str(ROOT),
    }
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_file": location}]}))
    env = {"DAGSTER_HOME": str(dagster_home)}
    pid_file = tmp_path / "step.pid"
    daemon_log = tmp_path / "daemon.log"
    with (
        dg.DagsterInstance.get() as instance,  # the storage, made before the daemon opens it
        dagster_daemon(workspace, env, daemon_log) as daemon,
    ):
        (run_id,) = launch_runs(
            workspace,
            env,
            tmp_path,
            job="hung",
            run_config={"ops": {"hang": {"config": {"pid_file": str(pid_file)}}}},
            op_selection=["hang"],
            count=1,
        )
        run = wait_for_runs(
            instance, [run_id], daemon=daemon, daemon_log=daemon_log, timeout_s=120
        )[run_id]
        step_pid = int(pid_file.read_text())
        messages = [_message(record) for record in instance.all_logs(run_id)]
        span = run_span(instance, run_id)
        step_left = _alive(step_pid, within_s=10)  # while the daemon and its code server live

    assert run.status == dg.DagsterRunStatus.FAILURE, (run.status, messages)
    log = "\n".join(messages)
    assert f"RUN_CANCELING: Canceling due to exceeding maximum runtime of {MAX_RUNTIME_S}" in log
    assert f"RUN_FAILURE: Exceeded maximum runtime of {MAX_RUNTIME_S} seconds" in log, log
    assert MAX_RUNTIME_S <= span.end - span.start < MAX_RUNTIME_S + 15, span
    assert not step_left, "the hung step process outlived its run"


def _message(record: dg.EventLogEntry) -> str:
    event = record.dagster_event
    return f"{event.event_type.name if event else 'log'}: {record.message}"


def _alive(pid: int, *, within_s: float) -> bool:
    """Whether process `pid` still exists after waiting up to `within_s` for it to go."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True
