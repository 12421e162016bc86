"""A production day whose process is SIGKILLed mid-day completes on a re-run: every image logged
exactly once, every mask written, nothing done twice."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.storage import LocalObjectStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 11, 30).isoformat()


def _worker(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.support.production_worker", str(root), DAY, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_killed_day_completes_on_rerun_without_duplicates(tmp_path: Path) -> None:
    data = LocalObjectStore(tmp_path / "data")
    synthetic.generate_production(
        data, synthetic.DEFAULT_TYPES[:3], 5, day=dt.date.fromisoformat(DAY), size=40
    )
    killed = _worker(tmp_path, "--die-at-part", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    log = PredictionLog(LocalObjectStore(tmp_path / "work"), DAY)
    before = log.read().num_rows
    assert before == 8, "parts 0 and 1 (4 images each) were committed before the kill"
    masks_before = {i.key for i in data.list(f"predictions/{DAY}/")}
    assert len(masks_before) > before, "the dying part's masks were written, its rows were not"

    rerun = _worker(tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert int(rerun.stdout.strip()) == 15 - before
    keys = log.read().column("image_key").to_pylist()
    assert len(keys) == len(set(keys)) == 15
    assert len(list(data.list(f"predictions/{DAY}/"))) == 15
