"""Celery workers for tests: a RabbitMQ vhost of the test's own on this machine's broker, and
workers started as an operator would, with deploy/celery/worker.sh, each in its own process group.

The vhost is made and deleted with `rabbitmqctl` (local, needs root or the broker's Erlang
cookie). Where that is refused, the test shares the default vhost and only its queue is its own:
`isolated_broker` deletes that queue afterwards instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

from tests.support.daemon import LOCATION_OVERRIDES, stop_process_group, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = ROOT / "deploy" / "celery" / "worker.sh"
EXECUTOR_YAML = ROOT / "deploy" / "celery" / "executor.yaml"
HOST, PORT, USER, PASSWORD = "127.0.0.1", 5672, "guest", "guest"


def rabbitmq_reachable(timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=timeout_s):
            return True
    except OSError:
        return False


def broker_url(vhost: str) -> str:
    return f"pyamqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{vhost}"


@contextmanager
def isolated_broker(queue: str) -> Iterator[str]:
    """The broker URL of a fresh vhost for the block, deleted after with all it holds; without
    `rabbitmqctl`, the default vhost's, with `queue` deleted after."""
    vhost = f"maskfind_celery_{uuid.uuid4().hex[:12]}"
    if not _rabbitmqctl("add_vhost", vhost):
        try:
            yield broker_url("/")
        finally:
            _delete_queue(broker_url("/"), queue)
        return
    try:
        if not _rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*"):
            raise RuntimeError(f"rabbitmqctl could not give {USER} the vhost {vhost}")
        yield broker_url(vhost)
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@contextmanager
def broker_with_password(password: str) -> Iterator[str]:
    """The broker URL of a fresh user with `password` and a fresh vhost of its own, both deleted
    after: a broker password no other test knows, to look for where it must not be. Needs
    `rabbitmqctl` (skips without it)."""
    token = uuid.uuid4().hex[:12]
    user, vhost = f"maskfind_user_{token}", f"maskfind_celery_{token}"
    if not _rabbitmqctl("add_vhost", vhost):
        pytest.skip("rabbitmqctl cannot add a vhost here")
    try:
        if not (
            _rabbitmqctl("add_user", user, password)
            and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        ):
            raise RuntimeError(f"rabbitmqctl could not make the user {user}")
        yield f"pyamqp://{user}:{password}@{HOST}:{PORT}/{vhost}"
    finally:
        _rabbitmqctl("delete_user", user)
        _rabbitmqctl("delete_vhost", vhost)


def vhost_exists(vhost: str) -> bool:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60
    )
    return vhost in listing.stdout.split()


def _rabbitmqctl(*args: str) -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60)
    return done.returncode == 0


def _delete_queue(url: str, queue: str) -> None:
    from kombu.connection import Connection

    with Connection(url) as connection:
        connection.default_channel.queue_delete(queue)


@dataclass(frozen=True)
class CeleryWorker:
    """One `deploy/celery/worker.sh` process group: the worker and its pool processes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def owns(self, pid: int) -> bool:
        """Whether `pid` is a live process of this worker (its process group)."""
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline: float) -> None:
        """Until the worker consumes its queue (it logs `<name>@<host> ready.`)."""
        ready = re.compile(rf"\b{re.escape(self.name)}@\S+ ready\.")
        while not ready.search(self.log()):
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                why = "was not ready in time" if code is None else f"exited with {code}"
                raise AssertionError(f"celery worker {self.name} {why}:\n{self.log()[-4000:]}")
            time.sleep(0.2)


@contextmanager
def celery_workers(
    names: Sequence[str], env: Mapping[str, str], log_dir: Path, *, ready_timeout_s: float = 90
) -> Iterator[list[CeleryWorker]]:
    """One worker per name (one pool process each), ready when the block starts, stopped after.

    `env` is what the operator sets on a worker machine: DAGSTER_HOME, MASKFIND_* and
    MASKFIND_CELERY_BROKER. The script finds `python` and `dagster-celery` of this venv on PATH.
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with ExitStack() as stack:
        workers = []
        for name in names:
            log_path = log_dir / f"celery-{name}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [str(WORKER_SCRIPT), name, "--concurrency", "1", "--without-mingle"],
                    cwd=ROOT,
                    env=subprocess_env({**env, "PATH": path}),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            stack.callback(stop_process_group, process)
            workers.append(CeleryWorker(name, process, log_path))
        deadline = time.monotonic() + ready_timeout_s
        for worker in workers:
            worker.wait_ready(deadline)
        yield workers


class CeleryDeployment:
    """A persistent Dagster instance, celery workers, and the nightly job as an operator
    launches it, with the celery executor chosen by the environment."""

    def __init__(
        self, instance: dg.DagsterInstance, workers: Sequence[CeleryWorker], vhost: str
    ) -> None:
        self.instance = instance
        self.workers = workers
        self.vhost = vhost

    def execute(self, job_name: str = "nightly", **options: Any) -> dg.ExecutionResult:
        """Run the job `job_name`, steps by the executor the definitions load with (this process
        only orchestrates). The definitions are loaded afresh: Dagster keeps the last job it
        reconstructed, loaded with an earlier test's environment."""
        ReconstructableJob.get_definition.cache_clear()
        ReconstructableJob.get_repository_definition.cache_clear()
        repository = ReconstructableRepository.for_module(
            "maskfind_pipeline.definitions", "defs", working_directory=str(ROOT)
        )
        job = repository.get_reconstructable_job(job_name)
        return dg.execute_job(job, self.instance, **options)

    def placement(self, run_id: str) -> dict[str, str]:
        """Which worker ran each step, by the process that reported the step's start; while the
        workers live, so their processes can be told apart."""
        placed = {}
        for record in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
            pid = record.get_dagster_event().pid
            owner = [w.name for w in self.workers if pid is not None and w.owns(pid)]
            placed[str(record.step_key)] = owner[0] if owner else f"pid {pid}, no worker's"
        return placed


@contextmanager
def celery_deployment(
    home: Path, images: Path, monkeypatch: pytest.MonkeyPatch, workers: Sequence[str]
) -> Iterator[CeleryDeployment]:
    """The deployment of deploy/celery on a vhost of its own (or, without rabbitmqctl, a queue
    of its own), on a fresh instance with the project's dagster.yaml; all removed after."""
    if not rabbitmq_reachable():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    queue = f"maskfind-test-{uuid.uuid4().hex[:8]}"
    with isolated_broker(queue) as broker:
        env = {
            "MASKFIND_HOME": str(home),
            "MASKFIND_DATA_URI": str(images),
            "DAGSTER_HOME": str(home / "dagster"),
            "MASKFIND_EXECUTOR": "celery",
            "MASKFIND_EXECUTOR_CONFIG": str(executor_config(home, queue)),
            "MASKFIND_CELERY_BROKER": broker,
        }
        point_at(env, monkeypatch)
        (home / "dagster").mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
        # The instance's SQLite storage is created here, before the workers open it.
        with (
            dg.DagsterInstance.get() as instance,
            celery_workers(workers, env, home) as started,
        ):
            yield CeleryDeployment(instance, started, vhost=broker.rsplit("/", 1)[1])


def executor_config(home: Path, queue: str) -> Path:
    """deploy/celery/executor.yaml with a queue of this test's own, written under `home`."""
    home.mkdir(parents=True)
    path = home / "executor.yaml"
    document = yaml.safe_load(EXECUTOR_YAML.read_text())
    document["execution"]["config"]["config_source"]["task_default_queue"] = queue
    path.write_text(yaml.safe_dump(document))
    return path


def point_at(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment: `env`, no other location override, the default executor
    unless `env` names one."""
    for key in (*LOCATION_OVERRIDES, "MASKFIND_EXECUTOR", "MASKFIND_EXECUTOR_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
