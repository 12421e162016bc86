"""Golden outputs: a stored model version must keep producing its stored logits, directly and
after a round trip through the registry. A failure means model building or preprocessing
changed; regenerate with tests/golden/make_golden.py only if that change is intended."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.records import TrainingRecord

GOLDEN = Path(__file__).resolve().parents[2] / "golden"


@pytest.fixture(scope="module")
def golden() -> tuple[ModelConfig, bytes, dict[str, torch.Tensor]]:
    config = ModelConfig.from_json((GOLDEN / "model.json").read_text())
    return config, (GOLDEN / "model.safetensors").read_bytes(), load_file(GOLDEN / "io.safetensors")


def test_stored_weights_give_the_stored_logits(golden) -> None:
    config, weights, io = golden
    logits = Predictor.from_weights(config, weights).logits(io["images"])
    torch.testing.assert_close(logits, io["logits"], rtol=1e-4, atol=1e-4)
    assert config.threshold == 0.42


def test_a_registered_version_loads_to_the_same_logits(golden, tmp_path: Path) -> None:
    config, weights, io = golden
    registry = ModelRegistry(
        f"sqlite:///{tmp_path}/mlflow.db",
        model_name="golden",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    record = TrainingRecord(
        config=config,
        weights=weights,
        dataset_version="ds-golden",
        params={},
        history=[],
        metrics={},
    )
    version = registry.log_training(record).version
    logits = load_model(registry, version).logits(io["images"])
    torch.testing.assert_close(logits, io["logits"], rtol=1e-4, atol=1e-4)
