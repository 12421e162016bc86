"""The `maskfind` console script: generate, contact sheet, and the demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.storage import LocalObjectStore

MASKFIND = str(Path(sys.executable).with_name("maskfind"))


def _run(*args: str, home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["MASKFIND_HOME"] = str(home)
    result = subprocess.run([MASKFIND, *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_generate_writes_the_store_layout_with_tags(tmp_path: Path) -> None:
    out = _run(
        "generate",
        "--to",
        str(tmp_path / "s"),
        "--types",
        "2",
        "--count",
        "3",
        "--size",
        "64",
        home=tmp_path,
    )
    assert "wrote 6 images" in out
    store = LocalObjectStore(tmp_path / "s")
    keys = [info.key for info in store.list("labeled/")]
    images = [k for k in keys if not k.endswith(".mask.png")]
    assert len(images) == 6 and len(keys) == 12
    assert store.tags(images[0])["image_type"]


def test_generate_failures_and_production(tmp_path: Path) -> None:
    small = ("generate", "--to", str(tmp_path), "--types", "1", "--count", "2", "--size", "64")
    _run(*small, "--failures", "7", home=tmp_path)
    _run(*small, "--production", "2026-11-24", home=tmp_path)
    store = LocalObjectStore(tmp_path)
    failure = next(i.key for i in store.list("failures/") if not i.key.endswith(".mask.png"))
    assert store.tags(failure)["failed_model_version"] == "7"
    assert len(list(store.list("production/2026-11-24/"))) == 2


def test_contact_sheet_is_a_png(tmp_path: Path) -> None:
    _run("generate", "--contact-sheet", str(tmp_path / "sheet.png"), "--size", "64", home=tmp_path)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 256


def test_demo_runs_two_nights_and_makes_two_dataset_versions(tmp_path: Path) -> None:
    tiny = ("--count", "3", "--failures", "1", "--size", "64", "--epochs", "2")
    out = _run("demo", *tiny, home=tmp_path)
    assert "night 1" in out and "night 2" in out and "FAILED" not in out
    samples = Catalog(LocalObjectStore(tmp_path / "work")).read().samples
    assert samples.num_rows == 40  # 10 types x (3 labeled + 1 failure)
    versions = VersionStore(LocalObjectStore(tmp_path / "work")).list()
    assert len(versions) == 2 and versions[1]["parent"] == versions[0]["id"]
    assert "| failure | 1 | 0 | 0 |" in out  # the diff of night 2 shows the failures
    assert (tmp_path / "dagster" / "dagster.yaml").exists()
    assert "model_version=1" in out and "model_version=2" in out and "pretrained=True" in out
    assert "compat_evaluation: cells_computed=3" in out  # night 2: both directions
    rerun = _run("demo", *tiny, home=tmp_path)
    assert "new_samples=0" in rerun and "created=False" in rerun
