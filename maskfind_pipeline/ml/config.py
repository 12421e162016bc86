"""Plain configuration of the mask model and its training (no torch import here).

`ModelConfig` is stored as JSON next to the weights of every registered model version: it is
all that is needed to rebuild the architecture and preprocess inputs, so loading a model never
unpickles code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, preprocessing and decision threshold of a mask model."""

    arch: str = "Unet"
    encoder_name: str = "resnet34"
    encoder_weights: str | None = "imagenet"
    encoder_weights_path: str | None = None
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    input_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    threshold: float = 0.5

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw: dict[str, Any] = json.loads(text)
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        for key in ("decoder_channels", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: schedule, loss, augmentation, early stopping, threshold policy.

    Attributes:
        failure_weight: training weight of `failure` samples; None uses the manifest's weights.
        early_stopping_patience: epochs without a validation mIoU gain above `min_delta`
            before stopping; 0 disables early stopping.
        schedule: the learning-rate shape over training progress (`ml.train.lr_factor`):
            progress is the share of `epochs` done or, where further along, of `max_minutes`
            spent, so a run the budget cuts short still warms up and anneals.
        max_minutes: wall-clock budget of the training epochs (final validation, threshold
            tuning and plots come on top); None for no budget.
        allow_scratch: train from random encoder weights when pretrained ones are configured
            but absent on this machine (otherwise that is an error).
        device: "cuda", "cpu" or None for CUDA when available.
        mixed_precision: bf16/fp16 autocast where the device supports it (see `ml.device`).
    """

    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    loss: Literal["dice_bce", "bce", "dice", "focal"] = "dice_bce"
    augment: bool = True
    failure_weight: float | None = None
    early_stopping_patience: int = 5
    threshold_policy: Literal["max_iou", "min_recall"] = "max_iou"
    min_recall: float = 0.99
    num_workers: int = 0
    seed: int = 0
    max_minutes: float | None = None
    min_delta: float = 1e-4
    allow_scratch: bool = False
    device: str | None = None
    mixed_precision: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
