"""The Dagster webserver for this project in its own process, on loopback (UI tests, demos)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, server_process


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
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("dagster-webserver")),
        "-w",
        str(workspace),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    log_path = log_dir / "webserver.log"
    with server_process(
        "dagster-webserver",
        command,
        health_url=f"{url}/server_info",
        log_path=log_path,
        env=env,
        cwd=workspace.parent,
        timeout_s=120,
    ) as process:
        yield Webserver(url, process, log_path)


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
    with_profile = [*flags, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]
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
