"""The Dagster UI in real headless Chromium: every asset is listed and the compatibility
matrix (table inline, heatmap behind "Show Markdown") renders on compat_evaluation's page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import nightly_config, tiny_training
from tests.support.webserver import chromium_render, dagster_webserver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed"),
]
ROOT = Path(__file__).resolve().parents[2]
TRAINING = tiny_training(epochs=1)


def test_ui_shows_assets_and_the_compat_heatmap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"MASKFIND_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    Path(env["DAGSTER_HOME"]).mkdir()
    shutil.copy(ROOT / "dagster.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    synthetic.generate(
        LocalObjectStore(tmp_path / "home" / "data"), synthetic.DEFAULT_TYPES[:2], 16, size=64
    )
    with dg.DagsterInstance.get() as instance:
        result = (
            defs()
            .resolve_job_def("nightly")
            .execute_in_process(
                run_config=nightly_config(TRAINING),
                instance=instance,
            )
        )
        assert result.success

    with dagster_webserver(ROOT / "workspace.yaml", env, tmp_path) as server:
        catalog = chromium_render(f"{server.url}/assets")
        for asset in (
            "image_catalog",
            "dataset_version",
            "mask_model",
            "compat_evaluation",
            "promotion",
            "compat_cells",
            "dataset_versions",
        ):
            assert asset in catalog, asset
        shot = tmp_path / "compat.png"
        page = chromium_render(f"{server.url}/assets/compat_evaluation", screenshot=shot)
        assert "cells_computed" in page and "heatmap" in page
        assert "matrix" in page and ">v1<" in page  # the matrix table, rendered inline
        assert shot.stat().st_size > 10_000
        if os.environ.get("MASKFIND_SAVE_SCREENSHOTS"):
            shutil.copy(shot, os.environ["MASKFIND_SAVE_SCREENSHOTS"])
