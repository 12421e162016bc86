"""A real `mlflow server` (SQLite backend, artifacts served by the server) in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from maskfind_pipeline.testing.s3server import free_port

_START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class MlflowServer:
    """A running tracking server: `tracking_uri` is its http://127.0.0.1:PORT address."""

    tracking_uri: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def mlflow_server(root: Path | None = None) -> Iterator[MlflowServer]:
    """Run `mlflow server` on a free loopback port for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="mlflow-") as tmp:
        base = root or Path(tmp)
        port = free_port("127.0.0.1")
        log_path = Path(tmp) / "server.log"
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        cmd = [
            mlflow,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{base}/mlflow.db",
            "--artifacts-destination",
            str(base / "artifacts"),
            "--serve-artifacts",
        ]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        server = MlflowServer(f"http://127.0.0.1:{port}", process, log_path)
        try:
            _wait_ready(server)
            yield server
        finally:
            _stop(process)


def _wait_ready(server: MlflowServer) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {server.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.tracking_uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"mlflow server did not answer in {_START_TIMEOUT_S:.0f} s: "
        f"{server.log_path.read_text()[-2000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, 15)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=10)
