"""A moto S3 server in its own process, for tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from tests.support.processes import free_port, server_process

_START_TIMEOUT_S = 30.0


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
    url = f"http://{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "server.log"
        command = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
        with server_process(
            "moto server",
            command,
            health_url=f"{url}/",
            log_path=log_path,
            timeout_s=_START_TIMEOUT_S,
        ) as process:
            yield S3Server(url, process, log_path)
