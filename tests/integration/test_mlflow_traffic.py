"""MLflow traffic of one training run's logging: requests do not grow with params and epochs."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from maskfind_pipeline.flows.options import TrainingOptions
from maskfind_pipeline.registry.datasets import version_datasets
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.records import TrainingRecord
from tests.support.mlflow_requests import counted_requests
from tests.support.mlflow_server import MlflowServer
from tests.support.models import tiny_record

pytestmark = pytest.mark.integration

EPOCH_KEYS = (
    "epoch",
    "train_loss",
    "val_miou",
    "best_val_miou",
    "improved",
    "learning_rate",
    "seconds",
    "images_per_second",
)
"""The keys of one `ml.segmentation.train.EpochReport.as_dict()`: what a training logs per epoch."""


def training_like(epochs: int, image_types: int, seed: int = 1) -> TrainingRecord:
    """A record shaped like a mask model training's (`flows.training.register`): every flat
    setting as a param, one history entry per epoch, val metrics per image type and source."""
    params = TrainingOptions().flat() | {"device": "cpu", "best_epoch": epochs - 1}
    history = [{k: float(e) / (i + 1) for i, k in enumerate(EPOCH_KEYS)} for e in range(epochs)]
    metrics = {
        "val_miou": 0.9,
        "val_precision": 0.92,
        "val_recall": 0.91,
        "val_threshold": 0.45,
        "best_epoch": float(epochs - 1),
        "novelty_threshold": 3.2,
        "novelty_val_flagged_share": 0.01,
        **{f"val_miou/image_type/t{i}": 0.8 + i / 100 for i in range(image_types)},
        **{f"val_miou/source/{s}": 0.85 for s in ("labeled", "failure")},
    }
    vid = f"ds-{uuid.uuid4().hex[:16]}"
    card = {
        "id": vid,
        "counts": {
            f"t{i}": {"train": {"labeled": 7}, "val": {"labeled": 2}} for i in range(image_types)
        },
    }
    datasets = version_datasets(card, f"s3://w/datasets/{vid}/manifest.parquet", ("train", "val"))
    record = tiny_record(seed=seed, dataset_version=vid)
    return dataclasses.replace(
        record, params=params, history=history, metrics=metrics, datasets=datasets
    )


@pytest.fixture
def registry(mlflow_tracking: MlflowServer) -> ModelRegistry:
    suffix = uuid.uuid4().hex[:8]
    return ModelRegistry(
        mlflow_tracking.tracking_uri,
        model_name=f"maskfind-traffic-{suffix}",
        experiment=f"maskfind-traffic-{suffix}",
    )


def test_logging_a_training_takes_requests_independent_of_its_size(
    registry: ModelRegistry,
) -> None:
    registry.experiment_id()  # the experiment exists before either count
    small, large = training_like(epochs=10, image_types=4), training_like(40, 24, seed=2)
    with counted_requests() as few:
        registry.log_training(small, alias=None)
    with counted_requests() as many:
        model = registry.log_training(large, alias=None)
    print(f"\nrequests, 10 epochs and 4 image types: {few.total()}: {dict(few)}")
    print(f"requests, 40 epochs and 24 image types: {many.total()}: {dict(many)}")
    # Everything arrived: every param, every epoch of the history, every final metric.
    run = registry.client.get_run(model.run_id)
    assert set(run.data.params) == {str(k) for k in large.params}
    history = registry.client.get_metric_history(model.run_id, "train_loss")
    assert [m.step for m in history] == list(range(40))
    assert run.data.metrics["val_miou/image_type/t23"] == pytest.approx(0.8 + 23 / 100)
    logged = registry.client.get_logged_model(model.model_id)
    assert {m.key for m in logged.metrics or []} == set(large.metrics)
    # Four times the epochs and six times the types cost no more requests (the first log also
    # creates the registered model).
    first = "POST /api/2.0/mlflow/registered-models/create"
    assert (few[first], many[first]) == (1, 0)
    assert many.total() == few.total() - 1
    assert many["POST /api/2.0/mlflow/runs/log-batch"] == 2  # the run's, the model's metrics
    assert many["POST /api/2.0/mlflow/runs/log-inputs"] == 1  # the train and val splits
    assert not many["POST /api/2.0/mlflow/runs/log-metric"]
    assert not many["POST /api/2.0/mlflow/runs/log-parameter"]
