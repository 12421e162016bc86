"""A moto S3 server in its own process, for tests and benchmarks."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server.

    Attributes:
        endpoint_url: Base URL of the server, e.g. ``http://127.0.0.1:40123``.
        process: The server's process.
        log_path: File that receives the server's stdout and stderr.
    """

    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return urlsplit(self.endpoint_url).hostname or ""

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return urlsplit(self.endpoint_url).port or 80

    def client(
        self, endpoint_url: str | None = None, *, max_attempts: int = 3, **config: Any
    ) -> Any:
        """Returns a boto3 S3 client with dummy credentials.

        Args:
            endpoint_url: Where to send requests (e.g. a proxy); defaults to the server.
            max_attempts: botocore's ``retries["max_attempts"]`` in ``standard`` mode. In a
                ``Config`` it counts retries: a call is tried up to ``max_attempts + 1`` times.
            **config: Extra ``botocore.config.Config`` options; ``retries`` overrides the default.

        Returns:
            A ``botocore`` S3 client.
        """
        options: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": max_attempts}}
        options.update(config)
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            config=Config(**options),
        )


@contextmanager
def s3_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[S3Server]:
    """Runs ``python -m moto.server`` in a subprocess for the duration of the block.

    Args:
        host: Address to bind.
        port: Port to bind; 0 picks a free one.

    Yields:
        The running server.

    Raises:
        RuntimeError: If the server exits or does not answer within 30 s.
    """
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env_without_proxies(),
            )
        try:
            _wait_until_up(process, host, port, log_path)
            yield S3Server(f"http://{host}:{port}", process, log_path)
        finally:
            _stop(process)


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port on ``host`` that is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _env_without_proxies() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def _wait_until_up(process: subprocess.Popen[bytes], host: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode}:\n{_tail(log)}")
        if _answers_http(host, port):
            return
        time.sleep(0.1)
    _stop(process)
    raise RuntimeError(f"moto server did not answer on {host}:{port} in time:\n{_tail(log)}")


def _answers_http(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log: Path, nbytes: int = 4000) -> str:
    return log.read_bytes()[-nbytes:].decode(errors="replace")
