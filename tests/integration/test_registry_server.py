"""The registry against a real MLflow tracking server: register, alias, reload identically."""

from __future__ import annotations

import uuid

import pytest
import torch

from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHAMPION, promote, rollback
from maskfind_pipeline.registry.records import RegistryError
from tests.support.mlflow_server import MlflowServer
from tests.support.models import TINY, tiny_record

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(mlflow_tracking: MlflowServer) -> ModelRegistry:
    suffix = uuid.uuid4().hex[:8]
    return ModelRegistry(
        mlflow_tracking.tracking_uri,
        model_name=f"maskfind-unet-{suffix}",
        experiment=f"maskfind-{suffix}",
    )


def test_register_and_reload_through_the_server(registry: ModelRegistry) -> None:
    record = tiny_record(seed=7, dataset_version="ds-server")
    model = registry.log_training(record)
    assert registry.get("challenger").version == model.version
    artifact_uri = registry.client.get_run(model.run_id).info.artifact_uri or ""
    assert artifact_uri.startswith("mlflow-artifacts:")
    images = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    expected = Predictor.from_weights(TINY, record.weights).logits(images)
    assert torch.equal(load_model(registry, "challenger").logits(images), expected)


def test_promotion_and_rollback_through_the_server(registry: ModelRegistry) -> None:
    v1 = registry.log_training(tiny_record(seed=1)).version
    v2 = registry.log_training(tiny_record(seed=2)).version
    promote(registry, v1, actor="schedule", reason="first")
    promote(registry, v2, actor="alice", reason="second")
    assert rollback(registry, actor="bob", reason="regression on line 2").champion == v1
    assert registry.get(CHAMPION).version == v1
    registry.client.delete_model_version(registry.model_name, v1)
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        load_model(registry, CHAMPION)
