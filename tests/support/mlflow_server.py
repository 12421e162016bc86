"""A real `mlflow server` (SQLite backend, artifacts served by the server) in its own process."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, server_process


@dataclass(frozen=True)
class MlflowServer:
    """A running tracking server: `tracking_uri` is its http://127.0.0.1:PORT address."""

    tracking_uri: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def mlflow_server(root: Path | None = None) -> Iterator[MlflowServer]:
    """Run `mlflow server` on a free loopback port for the duration of the block (~16 s start)."""
    with tempfile.TemporaryDirectory(prefix="mlflow-") as tmp:
        base, port = root or Path(tmp), free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            str(Path(sys.executable).with_name("mlflow")),
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
        log_path = Path(tmp) / "server.log"
        with server_process(
            "mlflow server", command, health_url=f"{url}/health", log_path=log_path, timeout_s=90
        ) as process:
            yield MlflowServer(url, process, log_path)
