"""deploy/mlflow/run-server.sh: the command line it starts MLflow with and the auth config it
hands over, seen through a stand-in `mlflow` (the server itself runs in the integration tests)."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.server.auth.config import read_auth_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "mlflow" / "run-server.sh"
SERVER_ENV = {
    "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlflow@db.internal:5432/mlflow",
    "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg2://mlflow@db.internal:5432/mlflow_auth",
    "MLFLOW_ARTIFACTS_DESTINATION": "s3://maskfind/mlflow-artifacts",
    "MLFLOW_ALLOWED_HOSTS": "mlflow.example.com",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "0123456789abcdef",
}
STAND_IN = '#!/bin/sh\nprintf \'%s\\n\' "$@"\ncp "$MLFLOW_AUTH_CONFIG_PATH" "$CAPTURE/auth.ini"\n'


def run_script(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "mlflow").write_text(STAND_IN)
    (bin_dir / "mlflow").chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [str(SCRIPT)],
        env={**base, **env, "PATH": path, "CAPTURE": str(tmp_path), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_server_runs_with_basic_auth_postgresql_and_s3(tmp_path: Path) -> None:
    done = run_script(tmp_path, SERVER_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "server",
        *("--app-name", "basic-auth"),
        *("--backend-store-uri", SERVER_ENV["MLFLOW_BACKEND_STORE_URI"]),
        *("--artifacts-destination", SERVER_ENV["MLFLOW_ARTIFACTS_DESTINATION"]),
        "--serve-artifacts",
        *("--host", "0.0.0.0", "--port", "5000", "--workers", "4"),
        *("--allowed-hosts", "mlflow.example.com"),
    ]


def test_the_auth_config_grants_read_by_default_and_takes_the_admin_password_from_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_script(tmp_path, SERVER_ENV).returncode == 0
    rendered = tmp_path / "auth.ini"
    ini = configparser.ConfigParser()
    ini.read(rendered)
    assert "admin_password" not in ini["mlflow"]  # no password is ever written to a file
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(rendered))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-secret-store")
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    auth = read_auth_config()  # as the server reads it
    assert auth.default_permission == "READ"
    assert auth.database_uri == SERVER_ENV["MLFLOW_AUTH_DATABASE_URI"]
    assert (auth.admin_username, auth.admin_password) == ("admin", "from-the-secret-store")


def test_a_missing_store_is_named_before_anything_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in SERVER_ENV.items() if k != "MLFLOW_ARTIFACTS_DESTINATION"}
    done = run_script(tmp_path, env)
    assert done.returncode != 0
    assert "MLFLOW_ARTIFACTS_DESTINATION" in done.stderr
    assert done.stdout == ""
