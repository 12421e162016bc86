"""The `maskfind` console script: generate, contact sheet, and the demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from maskfind_pipeline.storage import LocalObjectStore

MASKFIND = str(Path(sys.executable).with_name("maskfind"))


def _call(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["MASKFIND_HOME"] = str(home)
    return subprocess.run([MASKFIND, *args], env=env, capture_output=True, text=True, timeout=300)


def _run(*args: str, home: Path) -> str:
    result = _call(*args, home=home)
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


def test_demo_refuses_a_home_with_data_and_fresh_starts_from_an_empty_one(tmp_path: Path) -> None:
    """The story itself is asserted by tests/integration/test_demo_story.py at a tiny size; here
    the command: it never mixes the story into existing data, and --fresh clears the home."""
    kept = tmp_path / "data" / "labeled" / "mine.png"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"someone's image")
    refused = _call("demo", home=tmp_path)
    assert refused.returncode == 2 and "pass --fresh" in refused.stderr
    assert kept.read_bytes() == b"someone's image", "nothing is deleted without --fresh"

    # With no labeled images the story stops at night 1 (its dataset version has no samples).
    stopped = _call("demo", "--fresh", "--count", "0", "--size", "64", home=tmp_path)
    assert not kept.exists(), "--fresh starts from an empty home"
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "night 1: nightly run" in stopped.stdout and "FAILED" in stopped.stdout
    assert "demo STOPPED in" in stopped.stdout
    assert (tmp_path / "dagster" / "dagster.yaml").exists()


def test_ui_serves_dagster_and_the_embedded_mlflow_store_on_loopback(tmp_path: Path) -> None:
    from maskfind_pipeline.cli import ui_commands
    from maskfind_pipeline.locations import Locations

    embedded = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    dagster, mlflow = ui_commands(embedded, host="127.0.0.1", port=3001, mlflow_port=5001)
    assert dagster[0].endswith("/dg") and dagster[1:3] == ["dev", "--use-active-venv"]
    assert dagster[-4:] == ["-h", "127.0.0.1", "-p", "3001"]
    assert mlflow is not None and mlflow[1] == "ui"
    assert mlflow[mlflow.index("--backend-store-uri") + 1] == embedded.tracking_uri
    assert mlflow[-4:] == ["--host", "127.0.0.1", "--port", "5001"]
    server = Locations.from_env(
        {"MASKFIND_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5005"}
    )
    assert ui_commands(server, host="127.0.0.1", port=3001, mlflow_port=5001)[1] is None
