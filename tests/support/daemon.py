"""The Dagster daemon and the run queue for tests: submit runs as the CLI does, wait for them,
read back when their steps ran.

Runs go through the instance's real `QueuedRunCoordinator`: `dagster job launch` creates each
run from the code location and calls `instance.submit_run`, which only enqueues it; the
`dagster-daemon` then dequeues runs within the instance's concurrency limits and starts a run
worker per run. Every process is started in its own process group and stopped with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import dagster as dg

# The environment variables that point the code location somewhere other than MASKFIND_HOME.
LOCATION_OVERRIDES = (
    "MASKFIND_DATA_URI",
    "MASKFIND_WORK_URI",
    "MASKFIND_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
)
FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}


def subprocess_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without proxies or location overrides, plus `env`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k not in LOCATION_OVERRIDES
    }
    return {**base, **env}


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM the process group of `process` (started with `start_new_session`), SIGKILL what is
    left of it after `timeout_s`. Unlike `processes.stop_group` this also reaches the group when
    its leader has already exited: a crashed daemon leaves its code server and run workers."""
    if not _signal_group(process.pid, signal.SIGTERM):
        process.wait()
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or its zombie keeps the group alive
        if not _signal_group(process.pid, 0):
            break
        time.sleep(0.2)
    else:
        _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout_s)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextmanager
def dagster_daemon(
    workspace: Path, env: Mapping[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run -w workspace` for the block; its code servers and run workers are
    its children, in its process group, and stop with it. Run workers log to `log_path` too."""
    with log_path.open("wb") as log:
        process = _spawn(
            [_tool("dagster-daemon"), "run", "-w", str(workspace)], workspace, env, log
        )
    try:
        yield process
    finally:
        stop_process_group(process)


def _spawn(
    command: Sequence[str], workspace: Path, env: Mapping[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """`command` in the workspace's folder, in a process group of its own, output to `log`."""
    return subprocess.Popen(
        list(command),
        cwd=workspace.parent,
        env=subprocess_env(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def launch_runs(
    workspace: Path,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    job: str,
    run_config: Mapping[str, object],
    op_selection: Sequence[str],
    count: int,
    timeout_s: float = 120,
    tags: Sequence[Mapping[str, str]] = (),
) -> list[str]:
    """Submit `count` identical runs with `dagster job launch` (all at once); their run ids.
    `tags[i]`, where given, are the tags of the i-th run (e.g. `dagster/partition`).

    The CLI loads the code location like the UI does and calls `instance.submit_run`, so with
    the queued run coordinator each run is QUEUED and waits for the daemon.
    """
    run_ids = [str(uuid.uuid4()) for _ in range(count)]
    with ExitStack() as stack:
        launched = []
        for index, run_id in enumerate(run_ids):
            log_path = log_dir / f"launch-{index}.log"
            log = stack.enter_context(log_path.open("wb"))
            command = [
                _tool("dagster"),
                *("job", "launch", "-w", str(workspace), "-j", job),
                *("-o", ",".join(op_selection), "--run-id", run_id),
                *("--config-json", json.dumps(run_config)),
                *(("--tags", json.dumps(tags[index])) if index < len(tags) else ()),
            ]
            process = _spawn(command, workspace, env, log)
            stack.callback(stop_process_group, process)
            launched.append((process, log_path))
        deadline = time.monotonic() + timeout_s
        for process, log_path in launched:
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                raise RuntimeError(
                    f"dagster job launch exited with {code}:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
    return run_ids


def wait_for_runs(
    instance: dg.DagsterInstance,
    run_ids: Sequence[str],
    *,
    daemon: subprocess.Popen[bytes],
    daemon_log: Path,
    timeout_s: float,
) -> dict[str, dg.DagsterRun]:
    """Poll until every run has finished; fail with the daemon's log on a timeout or its exit."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = {run_id: instance.get_run_by_id(run_id) for run_id in run_ids}
        if all(run is not None and run.status in FINISHED for run in runs.values()):
            return {run_id: run for run_id, run in runs.items() if run is not None}
        status = {run_id: run.status.value if run else None for run_id, run in runs.items()}
        if daemon.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {daemon.returncode}" if daemon.poll() is not None else "timed out"
            raise AssertionError(
                f"daemon {why}; runs {status}:\n{daemon_log.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.5)


@dataclass(frozen=True)
class StepSpan:
    """When one step of one run started and finished (event log timestamps, seconds)."""

    run_id: str
    step_key: str
    start: float
    end: float
    succeeded: bool
    messages: tuple[str, ...]  # the step's engine events, e.g. "Step blocked by limit for pool x"


def step_span(instance: dg.DagsterInstance, run_id: str, step_key: str) -> StepSpan:
    start = end = None
    succeeded = False
    messages: list[str] = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or record.step_key != step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            start = record.timestamp
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            end = record.timestamp
            succeeded = event.event_type == dg.DagsterEventType.STEP_SUCCESS
        elif event.event_type == dg.DagsterEventType.ENGINE_EVENT:
            messages.append(record.user_message)
    if start is None or end is None:
        raise AssertionError(f"run {run_id} has no complete span for step {step_key}")
    return StepSpan(run_id, step_key, start, end, succeeded, tuple(messages))


@dataclass(frozen=True)
class RunSpan:
    """When one run was queued (RUN_ENQUEUED), taken from the queue by the daemon (RUN_STARTING,
    just before it launches the run worker), started in its worker (RUN_START) and finished
    (event log timestamps, seconds); `succeeded` when it ended with RUN_SUCCESS."""

    run_id: str
    enqueued: float
    dequeued: float
    start: float
    end: float
    succeeded: bool


def run_span(instance: dg.DagsterInstance, run_id: str) -> RunSpan:
    times: dict[dg.DagsterEventType, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type in _RUN_EVENTS:
            times.setdefault(event.event_type, record.timestamp)
    ended = [times[kind] for kind in _RUN_ENDS if kind in times]
    missing = [kind.value for kind in _RUN_EVENTS[:3] if kind not in times]
    if missing or not ended:
        raise AssertionError(f"run {run_id} lacks events {missing or 'RUN_SUCCESS/FAILURE'}")
    return RunSpan(
        run_id,
        enqueued=times[dg.DagsterEventType.RUN_ENQUEUED],
        dequeued=times[dg.DagsterEventType.RUN_STARTING],
        start=times[dg.DagsterEventType.RUN_START],
        end=min(ended),
        succeeded=dg.DagsterEventType.RUN_SUCCESS in times,
    )


_RUN_ENDS = (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE)
_RUN_EVENTS = (
    dg.DagsterEventType.RUN_ENQUEUED,
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
    *_RUN_ENDS,
)
