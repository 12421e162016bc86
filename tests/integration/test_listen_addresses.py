"""Servers on loopback only (RELIABILITY.md, "Servers and secrets"): `maskfind ui` (what `make ui`
runs) and every server the tests start listen on 127.0.0.1 or ::1, never on 0.0.0.0 or ::.
The listening sockets are read from /proc for the server's whole process group, workers and
code servers included, while it serves."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest

from tests.support.daemon import dagster_daemon, stop_process_group
from tests.support.mlflow_server import mlflow_auth_server
from tests.support.netproxy import FaultProxy
from tests.support.processes import free_port
from tests.support.sockets import Listener, group_listeners, listeners
from tests.support.webhook import webhook_server
from tests.support.webserver import dagster_webserver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = ROOT / "workspace.yaml"


def test_make_ui_runs_maskfind_ui_with_its_default_host() -> None:
    """`make ui` adds no `--host` (nor any other argument) to `maskfind ui`, whose default host
    test_ui_shutdown.py serves with (and finds on loopback only), nor to the Label Studio
    server it starts beside it."""
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "ui"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    launched = re.findall(r"\.venv/bin/maskfind ([^;&\n]*)", dry_run)
    assert {args.strip() for args in launched} == {"ui", "review label-studio"}, dry_run


@dataclass(frozen=True)
class Served:
    """A running server: the process group it leads (None: a server in this test process)
    and the ports it serves."""

    pgid: int | None
    ports: set[int]

    def listeners(self) -> list[Listener]:
        if self.pgid is not None:
            return group_listeners(self.pgid)
        return [s for s in listeners([os.getpid()]) if s.port in self.ports]


Launcher = Callable[[pytest.FixtureRequest, Path], AbstractContextManager[Served]]


@contextmanager
def _moto_s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    server = request.getfixturevalue("s3")
    yield Served(server.process.pid, {server.port})


@contextmanager
def _mlflow_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    server = request.getfixturevalue("mlflow_tracking")
    yield Served(server.process.pid, {_port(server.tracking_uri)})


@contextmanager
def _mlflow_auth_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    with mlflow_auth_server(
        backend_store_uri=f"sqlite:///{tmp_path}/mlflow.db",
        auth_database_uri=f"sqlite:///{tmp_path}/auth.db",
        artifacts_destination=str(tmp_path / "artifacts"),
        admin_password="a-long-admin-password-for-tests",
        env={},
        log_dir=tmp_path,
    ) as server:
        yield Served(server.process.pid, {_port(server.tracking_uri)})


@contextmanager
def _dagster_webserver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    env = _create_instance(tmp_path / "dagster")
    with dagster_webserver(WORKSPACE, env, tmp_path) as server:
        yield Served(server.process.pid, {_port(server.url)})


@contextmanager
def _dagster_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """It serves nothing: listening at all would have to be on loopback. Checked once every
    daemon has reported in (and the code location it loads is up)."""
    env = _create_instance(tmp_path / "dagster")
    log_path = tmp_path / "daemon.log"
    with (
        dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance,
        dagster_daemon(WORKSPACE, env, log_path) as daemon,
    ):
        required = set(instance.get_required_daemon_types())
        deadline = time.monotonic() + 120
        while not required <= set(instance.get_daemon_heartbeats()):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon not up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Served(daemon.pid, set())


@contextmanager
def _fault_proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    with FaultProxy("127.0.0.1", free_port()) as proxy:
        yield Served(None, {proxy.port})


@contextmanager
def _webhook(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    with webhook_server() as hook:
        yield Served(None, {_port(hook.url)})


LAUNCHERS: dict[str, Launcher] = {
    "moto-s3": _moto_s3,
    "mlflow-server": _mlflow_server,
    "mlflow-basic-auth-server": _mlflow_auth_server,
    "dagster-webserver": _dagster_webserver,
    "dagster-daemon": _dagster_daemon,
    "fault-proxy": _fault_proxy,
    "webhook": _webhook,
}


# The launchers that start a server of their own for this test alone (7-14 s each) run behind
# `slow`; the session's servers, the proxy and the webhook cost nothing extra in `make test`.
OWN_SERVER = {"mlflow-basic-auth-server", "dagster-webserver", "dagster-daemon"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in OWN_SERVER else n for n in LAUNCHERS],
)
def test_test_servers_listen_only_on_loopback(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with LAUNCHERS[name](request, tmp_path) as served:
        found = served.listeners()

    assert served.ports <= {s.port for s in found}, _show(found)
    assert [s for s in found if not s.on_loopback] == [], _show(found)


def test_a_server_on_every_address_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a process group listening on 0.0.0.0 and :: is reported."""
    script = (
        "import socket, sys, time\n"
        "for family, host in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::'),"
        " (socket.AF_INET, '127.0.0.1')):\n"
        "    s = socket.socket(family); s.bind((host, 0)); s.listen(); sys.modules[host] = s\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        found = group_listeners(process.pid)
    finally:
        stop_process_group(process, timeout_s=5)
    exposed = {s.address for s in found if not s.on_loopback}
    expected = {"0.0.0.0", "::"} if socket.has_ipv6 else {"0.0.0.0"}
    assert exposed == expected and {s.address for s in found} - exposed == {"127.0.0.1"}


def _create_instance(dagster_home: Path) -> dict[str, str]:
    """A DAGSTER_HOME holding the project's dagster.yaml, its SQLite storage created here
    (two processes creating it at once stamp its schema version twice); the server's env."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(dagster_home)):
        pass
    return {"DAGSTER_HOME": str(dagster_home), "MASKFIND_HOME": str(dagster_home.parent)}


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _show(found: list[Listener]) -> str:
    return "listening: " + ("; ".join(map(str, found)) or "nothing")
