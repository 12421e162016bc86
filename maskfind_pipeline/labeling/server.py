"""An embedded Label Studio for one machine: the server from its own virtual environment
(`make label-studio` builds `.venv-label-studio`, with a migrated template database), on
loopback, with SQLite under a data folder, an administrator and an API token made without
questions, and images served from the local data store (local-files storage).

The credentials are made once per data folder (`maskfind-credentials.json`, mode 0600) and kept,
so the same token works across restarts; the pipeline's `label_studio` resource reads them when
LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV = PROJECT_ROOT / ".venv-label-studio"
TEMPLATE = "template.sqlite3"
"""A database with every migration applied, made when the environment is built: a first start
from it takes seconds instead of a minute and a half of migrations."""
CREDENTIALS = "maskfind-credentials.json"
DATABASE = "label_studio.sqlite3"


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


class LabelStudioUnavailable(RuntimeError):
    """No Label Studio environment, or the server did not start."""


@dataclass(frozen=True)
class Credentials:
    """Who the pipeline is on an embedded server."""

    url: str
    api_key: str
    email: str
    password: str

    @classmethod
    def read(cls, data_dir: Path) -> Credentials | None:
        path = data_dir / CREDENTIALS
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class RunningLabelStudio:
    """A started server: where it is, who we are on it, its process and log."""

    credentials: Credentials
    data_dir: Path
    files_root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    seconds_to_start: float

    @property
    def url(self) -> str:
        return self.credentials.url


def venv_path() -> Path:
    """MASKFIND_LABEL_STUDIO_VENV, else `.venv-label-studio` beside the project."""
    return Path(os.environ.get("MASKFIND_LABEL_STUDIO_VENV") or VENV)


@contextmanager
def label_studio(
    data_dir: Path,
    *,
    files_root: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    venv: Path | None = None,
    timeout_s: float = 240.0,
) -> Iterator[RunningLabelStudio]:
    """Run Label Studio until the block ends; `files_root` is the folder it may serve images
    from (LOCAL_FILES_DOCUMENT_ROOT: a folder above the local data store; the default of
    `LabelStudioOptions.local_files_root` is the one just above)."""
    venv = venv or venv_path()
    binary = venv / "bin" / "label-studio"
    if not binary.exists():
        raise LabelStudioUnavailable(
            f"no Label Studio at {binary}: run `make label-studio` (its own environment: its "
            "pins clash with the pipeline's)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / DATABASE).exists() and (venv / TEMPLATE).exists():
        shutil.copyfile(venv / TEMPLATE, data_dir / DATABASE)
    port = port or _free_port(host)
    url = f"http://{host}:{port}"
    credentials = _credentials(data_dir, url)
    secret = _secret(data_dir)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env |= {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files_root.resolve()),
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "DEBUG": "false",
        "SECRET_KEY": secret,
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    command = [
        str(binary),
        "start",
        "--no-browser",
        "--internal-host",
        host,
        "--port",
        str(port),
        "--username",
        credentials.email,
        "--password",
        credentials.password,
        "--user-token",
        credentials.api_key,
        "--enable-legacy-api-token",
    ]
    log_path = data_dir / "server.log"
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(process, f"{url}/health", log_path, timeout_s)
        yield RunningLabelStudio(
            credentials,
            data_dir,
            files_root.resolve(),
            process,
            log_path,
            time.monotonic() - started,
        )
    finally:
        _stop(process)


def _credentials(data_dir: Path, url: str) -> Credentials:
    """The data folder's credentials (made on its first start), at this start's address."""
    old = Credentials.read(data_dir)
    fresh = Credentials(
        url=url,
        api_key=old.api_key if old else secrets.token_hex(20),
        email=old.email if old else "maskfind@localhost",
        password=old.password if old else secrets.token_urlsafe(16),
    )
    path = data_dir / CREDENTIALS
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(json.dumps(fresh.__dict__, indent=1))
    return fresh


def _secret(data_dir: Path) -> str:
    path = data_dir / "secret_key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(40))
    return path.read_text().strip()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait(process: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioUnavailable(
                f"Label Studio exited with code {process.returncode}:\n{_tail(log)}"
            )
        try:
            with _DIRECT.open(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    _stop(process)
    raise LabelStudioUnavailable(
        f"Label Studio did not answer {url} in {timeout_s:.0f} s:\n{_tail(log)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, 15)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=15)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""
