"""Tiny registered-model fixtures: a small U-Net's weights and config, no training needed."""

from __future__ import annotations

from typing import Any

from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.flows.options import TrainingOptions
from maskfind_pipeline.ml.segmentation.config import ModelConfig, ModelSpec, TrainConfig
from maskfind_pipeline.registry.records import TrainingRecord

TINY_SPEC = ModelSpec(
    encoder_name="resnet18",
    encoder_weights=None,
    input_size=64,
    decoder_channels=(32, 16, 16, 8, 8),
)
TINY_TRAIN = TrainConfig(epochs=2, batch_size=8, augment=AugmentConfig(enabled=False))


def tiny_training(model: ModelSpec = TINY_SPEC, **train: Any) -> dict[str, Any]:
    """mask_model run config for tests: a small U-Net trained from scratch on 64 px images;
    keyword arguments override `TrainConfig` fields."""
    config = TrainConfig.model_validate({**TINY_TRAIN.model_dump(), **train})
    return TrainingOptions(model=model, train=config).model_dump(mode="json")


TINY_TRAINING = tiny_training()


def nightly_config(training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run config of the nightly job for tests: tiny training, a gate that any model passes."""
    return {
        "ops": {
            "mask_model": {"config": training or TINY_TRAINING},
            "promotion": {"config": {"floor": 0.0, "tolerance": 1.0, "overall_tolerance": 1.0}},
        }
    }


TINY = ModelConfig(
    encoder_name="resnet18",
    encoder_weights=None,
    input_size=64,
    decoder_channels=(32, 16, 16, 8, 8),
    threshold=0.4,
)


def tiny_weights(seed: int = 0) -> bytes:
    import torch

    from maskfind_pipeline.ml.segmentation.model import build_model
    from maskfind_pipeline.ml.segmentation.predict import weights_to_bytes

    torch.manual_seed(seed)
    return weights_to_bytes(build_model(TINY, pretrained=False))


def tiny_record(seed: int = 0, dataset_version: str = "ds-test") -> TrainingRecord:
    return TrainingRecord(
        config=TINY,
        weights=tiny_weights(seed),
        dataset_version=dataset_version,
        params={"epochs": 2, "encoder": TINY.encoder_name},
        history=[{"train_loss": 0.9, "val_miou": 0.5}, {"train_loss": 0.7, "val_miou": 0.6}],
        metrics={"val_miou_tuned": 0.61},
        plots={"pr_curve": b"\x89PNG\r\n\x1a\n"},
        tags={"image_types_seen": "a,b", "code_version": "test", "dagster_run_id": "r"},
    )
