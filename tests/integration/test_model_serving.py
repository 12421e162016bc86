"""`mlflow models serve` of the champion, through a real tracking server: a REST request with a
PNG gets the mask `load_model` predicts, a request with a broken image a 400 naming why."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.artifacts import download_artifacts
from PIL import Image

from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from tests.support.mlflow_server import MlflowServer
from tests.support.models import TINY, tiny_record
from tests.support.processes import free_port, server_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~26-33 s: the server imports torch

BIN = Path(sys.executable).parent
IMAGE = np.random.default_rng(3).integers(0, 256, (45, 60, 3), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(pixels).save(sink, "PNG")
    return sink.getvalue()


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_answers_a_rest_request_with_the_mask(
    mlflow_tracking: MlflowServer, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    registry = ModelRegistry(
        mlflow_tracking.tracking_uri,
        model_name=f"maskfind-unet-{suffix}",
        experiment=f"maskfind-{suffix}",
    )
    record = tiny_record(seed=21)
    probabilities = Predictor.from_weights(TINY, record.weights).probabilities(IMAGE)
    config = TINY.model_copy(update={"threshold": float(np.median(probabilities))})
    model = registry.log_training(dataclasses.replace(record, config=config), alias="champion")
    location = registry.client.get_logged_model(model.model_id).artifact_location
    logged_example = download_artifacts(
        f"{location}/serving_input_example.json",
        dst_path=str(tmp_path),
        tracking_uri=registry.tracking_uri,
    )

    port = free_port()
    command = [
        *(str(BIN / "mlflow"), "models", "serve", "--env-manager", "local"),
        *("-m", f"models:/{registry.model_name}@champion"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    env = {
        "MLFLOW_TRACKING_URI": mlflow_tracking.tracking_uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # uvicorn, as in the venv
    }
    started = time.monotonic()
    with server_process(
        "mlflow models serve",
        command,
        health_url=f"http://127.0.0.1:{port}/ping",
        log_path=tmp_path / "serve.log",
        env=env,
        cwd=tmp_path,
        timeout_s=180,
    ):
        print(f"mlflow models serve ready in {time.monotonic() - started:.1f} s")
        url = f"http://127.0.0.1:{port}/invocations"
        image = base64.b64encode(png(IMAGE)).decode()
        status, answer = post(url, {"dataframe_split": {"columns": ["image"], "data": [[image]]}})
        assert status == 200, answer
        [row] = answer["predictions"]
        example_status, example = post(url, json.loads(Path(logged_example).read_text()))
        bad_status, bad = post(
            url, {"dataframe_records": [{"image": base64.b64encode(b"not an image").decode()}]}
        )

    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["mask"]))))
    expected = load_model(registry, "champion").predict_mask(IMAGE)
    assert mask.shape == IMAGE.shape[:2] and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask > 0, expected)
    assert row["mask_fraction"] == pytest.approx(expected.mean())
    assert example_status == 200 and len(example["predictions"]) == 1, example
    assert bad_status == 400 and "not a readable PNG or JPEG" in json.dumps(bad), bad
