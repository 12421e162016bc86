"""Run `maskfind demo --fresh` and write what it prints to docs/demo-transcript.md.

The docs show one demo transcript, and it is this script's output, never a pasted one. The demo
runs in a fresh process with MASKFIND_HOME in a temporary folder (the checkout's `.maskfind` is
left alone); the page records the command, the date, the commit, the CPU and its core count, and
every line the demo printed, unabridged.

    python -m bench.transcript [--out docs/demo-transcript.md] [--count N] [--size N]
                               [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "demo-transcript.md"


@dataclass(frozen=True)
class Run:
    """One demo run: what was run, where, and what it printed."""

    command: str
    started: dt.datetime
    seconds: float
    exit_code: int
    commit: str
    machine: str
    output: str
    timed_out: bool = False
    """Stopped at the script's `--timeout` before the demo ended."""


def page(run: Run) -> str:
    """The Markdown page for one demo run."""
    outcome = "finished" if run.exit_code == 0 else f"exited with status {run.exit_code}"
    if run.timed_out:
        outcome = "was stopped at the time limit"
    lines = [
        "# Demo transcript",
        "",
        f"What `{run.command}` printed on {run.started:%Y-%m-%d} at commit `{run.commit}`, on",
        f"{run.machine} as it started. It {outcome} after {run.seconds / 60:.1f} minutes.",
        "This page is written by `python -m bench.transcript`, which runs the demo in a",
        "temporary `MASKFIND_HOME`; run it again to replace the page. [The demo](demo.md) says",
        "what each line means; with other work on the same cores, training may reach its time",
        "cap before its epochs.",
        "`a -> b` reads before -> after; the line says which two (model 1 -> model 2 on the",
        "same test images, or day 1 -> day 2 of production).",
        "",
        "```text",
        run.output.rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(lines)


def machine() -> str:
    """CPU model, core count and load, e.g. "2 cores of an AMD EPYC (x86_64), load average 0.3"."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]  # other work on the same cores slows the demo's training
    return f"{os.cpu_count()} cores of an {model} ({platform.machine()}), load average {load:.1f}"


def commit() -> str:
    """The checkout's short commit, with `+changes` when the tree is not clean."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head or 'unknown'}{'+changes' if dirty else ''}"


def run_demo(extra: list[str], timeout: float | None = None) -> Run:
    """`maskfind demo --fresh [extra]` in a temporary MASKFIND_HOME, its output captured and
    echoed line by line. The demo runs in its own process group, ended with this process (a
    `timeout` or Ctrl-C leaves no demo behind) or after `timeout` seconds (the page then shows
    what it printed until then)."""
    shown = " ".join(["maskfind demo --fresh", *extra])
    with tempfile.TemporaryDirectory(prefix="maskfind-transcript-") as home:
        env = {**os.environ, "MASKFIND_HOME": home, "PYTHONPATH": str(ROOT)}
        env.pop("DAGSTER_HOME", None)
        code = "from maskfind_pipeline.cli import main; main()"
        ran, where = commit(), machine()  # as the run starts
        started = dt.datetime.now(dt.UTC)
        start = time.perf_counter()
        lines: list[str] = []
        demo = subprocess.Popen(
            [sys.executable, "-c", code, "demo", "--fresh", *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # progress bars and library warnings
            text=True,
            start_new_session=True,
        )
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        limit = threading.Timer(timeout, _end, (demo,)) if timeout else None
        if limit is not None:
            limit.start()
        try:
            assert demo.stdout is not None
            for line in demo.stdout:
                lines.append(line)
                print(line, end="", flush=True)
            code = demo.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if limit is not None:
                limit.cancel()
            _end(demo)
        seconds = time.perf_counter() - start
    output = "".join(lines).replace(home, "$MASKFIND_HOME")  # a temporary folder, gone now
    timed_out = timeout is not None and seconds >= timeout
    return Run(shown, started, seconds, code, ran, where, output, timed_out)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _end(demo: subprocess.Popen[str]) -> None:
    """Stop the demo's process group if anything of it is still running."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(demo.pid, sig)
        except ProcessLookupError:
            return
        try:
            demo.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the demo and write its transcript page.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--count", type=int, help="labeled samples per known image type")
    parser.add_argument("--size", type=int, help="image and model input size")
    parser.add_argument(
        "--timeout", type=float, help="seconds; stop the demo then and write what it printed"
    )
    args = parser.parse_args(argv)
    extra = [f"--{name}={value}" for name in ("count", "size") if (value := getattr(args, name))]
    run = run_demo(extra, args.timeout)
    args.out.write_text(page(run))
    print(f"wrote {args.out} (exit status {run.exit_code})")
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
