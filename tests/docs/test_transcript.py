"""The demo transcript in docs/ is `bench/transcript.py`'s output, never a pasted or edited one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest

from bench.transcript import Run, page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "demo-transcript.md"
HEADER = re.compile(
    r"What `(?P<command>[^`]+)` printed on (?P<date>\d{4}-\d\d-\d\d) at commit `(?P<commit>[^`]+)`,"
    r" on\n(?P<machine>.+?) as it started\. It (?:finished|exited with status (?P<code>\d+)|"
    r"(?P<stopped>was stopped at the time limit)) "
    r"after (?P<minutes>[\d.]+) minutes\.",
    re.S,
)


def parsed(text: str) -> Run:
    """The run a transcript page describes, read back from it."""
    header = HEADER.search(text)
    assert header, "the page has no header written by bench/transcript.py"
    output = text.split("```text\n", 1)[1].rsplit("\n```", 1)[0]
    return Run(
        command=header["command"],
        started=dt.datetime.fromisoformat(header["date"]),
        seconds=float(header["minutes"]) * 60,
        exit_code=int(header["code"] or 0),
        commit=header["commit"],
        machine=header["machine"],
        output=output + "\n",
        timed_out=bool(header["stopped"]),
    )


def test_a_page_holds_every_line_and_reads_back_as_its_run() -> None:
    run = Run(
        "maskfind demo --fresh",
        dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        218.0,
        0,
        "abc1234",
        "2 cores of an AMD EPYC (x86_64), load average 0.4",
        "night 1: nightly run 893c606a succeeded in 80 s\n  laser3d  0.710 -> 0.800\n",
    )
    text = page(run)
    assert "```text\nnight 1: nightly run 893c606a succeeded in 80 s\n  laser3d" in text
    assert "It finished after 3.6 minutes." in text
    assert page(parsed(text)) == text
    pasted_note = text.replace("# Demo transcript\n", "# Demo transcript\n\nAbridged.\n")
    assert page(parsed(pasted_note)) != pasted_note
    stopped = page(dataclasses.replace(run, exit_code=-15, timed_out=True))
    assert "It was stopped at the time limit after 3.6 minutes." in stopped
    assert page(parsed(stopped)) == stopped
    with pytest.raises(AssertionError, match="no header"):
        parsed(text.replace("as it started", "then"))


@pytest.mark.skipif(not PAGE.exists(), reason="no transcript generated yet")
def test_the_committed_transcript_is_the_scripts_output() -> None:
    text = PAGE.read_text()
    assert page(parsed(text)) == text
