"""A real `mlflow server` (SQLite backend, artifacts served by the server) in its own process."""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, server_process

# MLflow 3 starts a pool of `huey_consumer` job runners with every server (seven here, using CPU
# all session long); the pipeline submits no MLflow jobs.
NO_JOB_RUNNERS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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
            "mlflow server",
            command,
            health_url=f"{url}/health",
            log_path=log_path,
            env=NO_JOB_RUNNERS,
            timeout_s=90,
        ) as process:
            yield MlflowServer(url, process, log_path)


@dataclass(frozen=True)
class AuthMlflowServer:
    """A tracking server with `--app-name basic-auth`: `admin` is its administrator."""

    tracking_uri: str
    admin: tuple[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def auth_client(self):
        """The basic-auth app's user/permission API, as the administrator."""
        from mlflow.server.auth.client import AuthServiceClient

        return AuthServiceClient(self.tracking_uri)


@contextmanager
def mlflow_auth_server(
    *,
    backend_store_uri: str,
    auth_database_uri: str,
    artifacts_destination: str,
    admin_password: str,
    env: Mapping[str, str],
    log_dir: Path,
) -> Iterator[AuthMlflowServer]:
    """The production shape of the tracking server: basic auth (default permission READ), a
    database backend, artifacts proxied to `artifacts_destination` (e.g. `s3://bucket/mlflow`
    with the S3 credentials in `env`), only 127.0.0.1 allowed as a host."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = log_dir / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {auth_database_uri}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Checking a password is a PBKDF2 hash, on every request unless cached; a nightly run
        # makes many requests. As in deploy/mlflow.
        "auth_cache_ttl_seconds = 60\n"
    )
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        f"127.0.0.1:{port},localhost:{port}",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--serve-artifacts",
    ]
    server_env = {
        **env,
        **NO_JOB_RUNNERS,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,  # never in a file, never the default
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),  # CSRF protection of the UI
    }
    log_path = log_dir / "mlflow-auth-server.log"
    with server_process(
        "mlflow server (basic-auth)",
        command,
        health_url=f"{url}/health",
        log_path=log_path,
        env=server_env,
        timeout_s=120,
    ) as process:
        yield AuthMlflowServer(url, ("admin", admin_password), process, log_path)
