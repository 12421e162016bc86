"""The Dagster webserver for this project in its own process, on loopback (UI tests, demos);
headless Chromium to look at it (`chromium_render`) or to use it like a person (`chromium_page`)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.daemon import stop_process_group, subprocess_env
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


@contextmanager
def dagster_dev(
    workspace: Path, env: Mapping[str, str], log_dir: Path, *, timeout_s: float = 120
) -> Iterator[Webserver]:
    """`dagster dev -w workspace` on a free 127.0.0.1 port for the block, as `maskfind ui` runs
    it: the webserver, the daemon (the instance's run queue, schedules, sensors) and their code
    servers and run workers, all in one process group. Ready when `/server_info` answers; on exit
    the group gets Ctrl-C (on SIGTERM `dagster dev` and its children kept running), then SIGKILL
    for whatever is left."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("dagster")),
        *("dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)),
    ]
    log_path = log_dir / "dagster-dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workspace.parent,
            env=subprocess_env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_server_info(process, url, log_path, timeout_s)
        yield Webserver(url, process, log_path)
    finally:
        _interrupt_group(process, timeout_s=15)
        stop_process_group(process, timeout_s=5)


def _wait_for_server_info(
    process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"dagster dev exited with code {process.returncode}:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}"
            )
        try:
            with opener.open(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise RuntimeError(
        f"dagster dev did not answer {url}/server_info within {timeout_s:.0f} s:\n"
        f"{log_path.read_text(errors='replace')[-3000:]}"
    )


def _interrupt_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Ctrl-C for the whole process group, as in a terminal; wait up to `timeout_s` for it."""
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or its zombie keeps the group alive
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


class BrowserError(RuntimeError):
    """Chromium refused a DevTools command, or did not answer it in time."""


class ChromiumPage:
    """One tab of a headless Chromium, driven over the DevTools protocol on a pipe
    (`--remote-debugging-pipe`: NUL-terminated JSON messages on file descriptors 3 and 4), so
    no driver and no websocket client are needed. Clicks are real mouse events at an element's
    centre, not JavaScript `click()` calls."""

    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.process = process
        self._writer = os.fdopen(to_browser, "wb", buffering=0)
        self._reader = os.fdopen(from_browser, "rb", buffering=0)
        self._answers: dict[int, dict[str, Any]] = {}
        self._last_id = 0
        self._closed = False
        self._changed = threading.Condition()
        self._session: str | None = None
        threading.Thread(target=self._read, name="chromium-devtools", daemon=True).start()

    def _read(self) -> None:
        pending = b""
        while chunk := self._reader.read(1 << 16):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:  # an answer; events are not needed here
                    with self._changed:
                        self._answers[message["id"]] = message
                        self._changed.notify_all()
        self._reader.close()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def send(
        self, method: str, params: Mapping[str, Any] | None = None, *, timeout_s: float = 30
    ) -> dict[str, Any]:
        """One DevTools command, to the tab once it is attached (to the browser before)."""
        with self._changed:
            self._last_id += 1
            call_id = self._last_id
        message: dict[str, Any] = {"id": call_id, "method": method, "params": dict(params or {})}
        if self._session is not None:
            message["sessionId"] = self._session
        self._writer.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while call_id not in self._answers:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(f"chromium did not answer {method}")
                self._changed.wait(left)
            answer = self._answers.pop(call_id)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        """Close the command pipe (after Chromium exited; the reader closes its own at EOF)."""
        self._writer.close()

    def attach(self, width: int, height: int) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description", str(details)))
        return result["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, condition: str, *, what: str, timeout_s: float = 30) -> Any:
        """Poll a JavaScript expression until its value is truthy, and return that value
        (errors while the page loads count as false); on a timeout fail with `what` and the
        page's text."""
        probe = f"(() => {{ try {{ return ({condition}) || null; }} catch {{ return null; }} }})()"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if value := self.evaluate(probe):
                    return value
            except BrowserError:  # the page is navigating: no context to evaluate in
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}; the page says:\n"
                    f"{self.text()[:3000]}"
                )
            time.sleep(0.25)

    def click(self, element: str, *, what: str, timeout_s: float = 30) -> None:
        """Wait until the element that the JavaScript expression `element` finds is there,
        enabled and not covered (by a dialog, say), then click its centre with the mouse."""
        x, y = self.wait_for(
            f"(el => {{ if (!el || el.disabled) return null; "
            f"el.scrollIntoView({{block: 'nearest'}}); const r = el.getBoundingClientRect(); "
            f"const x = r.x + r.width / 2, y = r.y + r.height / 2; "
            f"const hit = document.elementFromPoint(x, y); "
            f"return hit && el.contains(hit) ? [x, y] : null; }})({element})",
            what=f"{what} (there, enabled and not covered)",
            timeout_s=timeout_s,
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    def press(self, key: str, code: str, key_code: int) -> None:
        """Press and release one key (e.g. "Escape", "Escape", 27)."""
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code},
            )

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def chromium_page(
    *, width: int = 1400, height: int = 1000, log_path: Path | None = None
) -> Iterator[ChromiumPage]:
    """A fresh headless Chromium (its own profile and process group) with one blank tab."""
    to_browser_read, to_browser = os.pipe()
    from_browser, from_browser_write = os.pipe()
    # Chromium reads commands on fd 3 and answers on fd 4. Above 9, the pipe ends cannot be
    # mistaken for 3 or 4 while bash moves them there.
    child_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
    child_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
    os.close(to_browser_read)
    os.close(from_browser_write)
    profile = tempfile.mkdtemp(prefix="chromium-")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-proxy-server",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
        "--remote-debugging-pipe",
        "about:blank",
    ]
    log = log_path.open("wb") if log_path is not None else None
    try:
        process = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec chromium "$@" 3<&{child_read} 4>&{child_write}',
                "chromium",
                *flags,
            ],
            pass_fds=(child_read, child_write),
            stdin=subprocess.DEVNULL,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(child_read)
        os.close(child_write)
        if log is not None:
            log.close()
    page = ChromiumPage(process, to_browser, from_browser)
    try:
        page.attach(width, height)
        yield page
    finally:
        with suppress(BrowserError, OSError):
            page.send("Browser.close", timeout_s=5)
        stop_process_group(process, timeout_s=5)
        page.close()
        shutil.rmtree(profile, ignore_errors=True)
