"""`maskfind ui` (what `make ui` runs) serves on loopback only (RELIABILITY.md, "Servers and
secrets": every listening socket of its process group, read from /proc, is on 127.0.0.1 or ::1),
and stopped by SIGTERM (a service manager, `kill`) stops what it started: `dg dev` with its
webserver, daemon and code servers, and the MLflow UI, and exits only after them, also when it
was started with SIGINT ignored (what `nohup ... &` does: before the fix dg dev and dagster dev
inherited that, ignored the SIGINT they stop on, and the test waited 120 s). One server for both
checks: it takes 15-20 s to come up here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tests.support.daemon import stop_process_group, subprocess_env
from tests.support.processes import free_port
from tests.support.sockets import group_listeners

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]


def test_maskfind_ui_serves_on_loopback_only_and_sigterm_stops_all_it_started(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home / "dagster")):
        pass  # its SQLite storage, before the webserver and the daemon race to create it
    env = {"MASKFIND_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    port, mlflow_port = free_port(), free_port()
    maskfind = str(Path(sys.executable).with_name("maskfind"))
    log_path = tmp_path / "maskfind-ui.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [maskfind, "ui", "--port", str(port), "--mlflow-port", str(mlflow_port)],
            cwd=ROOT,
            env=subprocess_env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # as `nohup maskfind ui &` or a background shell starts it: SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", process, log_path)
        _wait_for(f"http://127.0.0.1:{mlflow_port}/health", process, log_path)
        found = group_listeners(process.pid)
        shown = "listening: " + "; ".join(map(str, found))
        assert {port, mlflow_port} <= {s.port for s in found}, shown
        assert [s for s in found if not s.on_loopback] == [], shown

        started = descendants(process.pid)
        commands = " ".join(_command(pid) for pid in started)
        assert "dagster_webserver" in commands and "dagster._daemon" in commands, commands
        assert "mlflow" in commands, commands

        process.send_signal(signal.SIGTERM)  # to `maskfind ui` alone, not its group
        code = process.wait(timeout=120)
        left = [pid for pid in started if _alive(pid)]
        assert left == [], (
            [_command(pid) for pid in left],
            log_path.read_text(errors="replace")[-3000:],
        )
        assert code == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        stop_process_group(process, timeout_s=5)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"<{pid} gone>"


def _wait_for(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer:\n{log_path.read_text(errors='replace')[-3000:]}")
