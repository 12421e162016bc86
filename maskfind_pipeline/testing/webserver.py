"""The Dagster webserver for this project in its own process, on loopback (UI tests, demos)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from maskfind_pipeline.testing.s3server import free_port

_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Webserver:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def dagster_webserver(
    workspace: Path, env: Mapping[str, str], log_dir: Path
) -> Iterator[Webserver]:
    """Run `dagster-webserver -w workspace` on a free 127.0.0.1 port for the block."""
    port = free_port("127.0.0.1")
    binary = str(Path(sys.executable).with_name("dagster-webserver"))
    log_path = log_dir / "webserver.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=workspace.parent,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait(server)
        yield server
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def _wait(server: Webserver) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"webserver exited: {server.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"webserver did not answer: {server.log_path.read_text()[-2000:]}")


def chromium_render(url: str, *, screenshot: Path | None = None, budget_ms: int = 15000) -> str:
    """The DOM of `url` after headless Chromium ran its scripts; optionally a screenshot."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--virtual-time-budget={budget_ms}",
        "--window-size=1400,1000",
    ]
    with_profile = [*flags, f"--user-data-dir={_profile_dir()}"]
    dom = subprocess.run(
        ["chromium", *with_profile, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    if screenshot is not None:
        subprocess.run(
            ["chromium", *with_profile, f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return dom


def _profile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="chromium-")
