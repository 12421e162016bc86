"""Publishing survives a kill at any step and a concurrent writer (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.storage import LocalObjectStore
from tests.conftest import new_bucket
from tests.support.catalogs import fake_catalog
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _worker(uri: str, rows: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.publish_worker", uri, str(rows), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )


@pytest.mark.parametrize("step", ["before_manifest", "mid_manifest", "after_manifest"])
def test_kill_at_any_step_leaves_old_versions_intact_and_rerun_gives_the_same_id(
    tmp_path: Path, step: str
) -> None:
    store = LocalObjectStore(tmp_path)
    versions = VersionStore(store)
    old = versions.publish(build_snapshot(fake_catalog(50), VersionConfig()), catalog_rows=50)
    expected = build_snapshot(fake_catalog(80), VersionConfig()).version_id

    crashed = _worker(str(tmp_path), 80, "--crash", step)
    crashed.wait(timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.read() if crashed.stderr else ""

    assert [c["id"] for c in versions.list()] == [old.version_id]
    assert versions.manifest(old.version_id).num_rows == 50
    assert versions.card_or_none(expected) is None

    rerun = _worker(str(tmp_path), 80)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert out.split() == ["created", expected]
    assert versions.manifest(expected).num_rows == 80
    assert versions.card(expected)["parent"] == old.version_id


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writers_of_the_same_version_exactly_one_creates(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    extra: list[str] = []
    uri = str(tmp_path)
    if where == "s3":
        server: S3Server = request.getfixturevalue("s3")
        uri = f"s3://{new_bucket(server)}/work"
        extra = ["--endpoint-url", server.endpoint_url]
    start_at = f"{time.time() + 4:.3f}"
    workers = [_worker(uri, 3000, "--start-at", start_at, *extra) for _ in range(2)]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        outputs.append(out.split())
    assert sorted(o[0] for o in outputs) == ["created", "exists"]
    assert outputs[0][1] == outputs[1][1]
