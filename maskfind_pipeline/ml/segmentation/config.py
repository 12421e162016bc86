"""Plain configuration of the mask model and its training (no torch import here).

`ModelConfig` is stored as JSON next to the weights of every registered model version: it is
all that is needed to rebuild the architecture and preprocess inputs, so loading a model never
unpickles code. `ModelSpec` is the part a person chooses before training; `ModelConfig` adds the
decision threshold that training tunes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.data.augment_config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEMO_ENCODER = "tu-tf_efficientnet_lite0"
LossName = Literal["dice_bce", "bce", "dice", "focal", "lovasz", "bce_lovasz"]


class ModelSpec(CoreConfig):
    """What to build: architecture, encoder and its weights, input size, normalisation."""

    arch: str = "Unet"
    """smp architecture taking a list of decoder channels: Unet, UnetPlusPlus or MAnet."""
    encoder_name: str = "resnet34"
    """smp encoder name (`tu-<timm name>` for timm encoders)."""
    encoder_weights: str | None = "imagenet"
    """Pretrained encoder weights, read from a local source only; null trains from scratch."""
    encoder_weights_path: str | None = None
    """A local weights file (.safetensors or a plain state dict); default: the environment
    variable MASKFIND_ENCODER_WEIGHTS, then the Hugging Face cache, then bundled weights."""
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    """Decoder channels per stage; their count is the encoder depth."""
    input_size: int = 256
    """Square side, in pixels, the model sees (images are resized to it)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean of the encoder's normalisation, on [0, 1] pixels."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation of the encoder's normalisation."""
    tta_flip: bool = False
    """Test-time augmentation: average the logits with those of the left-right mirrored image
    (mirrored back). Evaluation, validation and production all predict this way; it costs one
    more forward pass per image."""
    tta_scales: tuple[float, ...] = (1.0,)
    """Test-time augmentation: predict at these scales of the input side (1.0 among them; each
    side rounded to the encoder's stride, the logits resized back) and average; each scale but
    1.0 costs a forward pass (two with `tta_flip`)."""

    @field_validator("tta_scales")
    @classmethod
    def _scales(cls, scales: tuple[float, ...]) -> tuple[float, ...]:
        if 1.0 not in scales or any(not 0.25 <= s <= 4.0 for s in scales):
            raise ValueError(f"tta_scales must hold 1.0 and lie within [0.25, 4]: {scales}")
        return scales

    @property
    def tta_passes(self) -> int:
        """Forward passes per image at prediction time (at most: scales that round to the same
        side at the model's input size are one pass)."""
        return len(set(self.tta_scales)) * (2 if self.tta_flip else 1)


def demo_model_spec(input_size: int = 256) -> ModelSpec:
    """A small U-Net on EfficientNet-Lite0, pretrained offline from a bundled ImageNet file."""
    return ModelSpec(
        encoder_name=DEMO_ENCODER,
        decoder_channels=(128, 64, 32, 16, 16),
        input_size=input_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


class ModelConfig(ModelSpec):
    """A trained model's spec and decision threshold: what is stored beside its weights."""

    threshold: float = 0.5
    """Probability at or above which a pixel is product (tuned on validation by training)."""

    @classmethod
    def of(cls, spec: ModelSpec, threshold: float) -> ModelConfig:
        """`spec` with a decision threshold."""
        return cls.model_validate({**spec.model_dump(), "threshold": threshold})


class TrainConfig(CoreConfig):
    """How to train: schedule, loss, augmentation, early stopping, threshold policy, device."""

    epochs: int = 20
    """Passes over the train split (fewer if early stopping or the time budget ends it)."""
    batch_size: int = 16
    """Images per optimisation step."""
    learning_rate: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay."""
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    """Learning-rate shape over training progress: the share of `epochs` done or, where further
    along, of `max_minutes` spent, so a run the budget cuts short still warms up and anneals."""
    loss: LossName = "dice_bce"
    """Training loss."""
    encoder_lr_factor: float = Field(default=1.0, ge=0.0)
    """The encoder's learning rate as a share of `learning_rate`: below 1, the pretrained
    encoder is fine-tuned more gently than the new decoder learns."""
    freeze_encoder: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of training progress (as the schedule counts it) with the encoder frozen (its
    learning rate 0; batch-norm statistics still adapt): the new decoder warms up on the
    pretrained features before they move."""
    low_res_size: int | None = Field(default=None, ge=32)
    """Progressive resizing: train on batches downscaled to this side (a multiple of the
    encoder's stride) for the first `low_res_share` of progress; cheaper steps, more epochs.
    Validation always runs at the model's input size. Null: never."""
    low_res_share: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of training progress at `low_res_size`."""
    final_loss: LossName | None = None
    """The loss of the last `final_loss_share` of progress (e.g. `lovasz`, a surrogate of IoU
    itself, once `loss` has found the objects); null: `loss` throughout."""
    final_loss_share: float = Field(default=0.2, ge=0.0, le=1.0)
    """Share of training progress, at the end, trained with `final_loss`."""
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Validate, keep and register an exponential moving average of the weights and batch-norm
    statistics, updated every step with this decay (its horizon is about 1 / (1 - decay)
    steps); null: the weights themselves."""
    augment: AugmentConfig = AugmentConfig()
    """Augmentation of the train split."""
    failure_weight: float | None = None
    """Training weight of `failure` samples; null uses the dataset version's weights."""
    early_stopping_patience: int = 5
    """Epochs without a validation mIoU gain above `min_delta` before stopping; 0 disables it."""
    min_delta: float = 1e-4
    """The smallest validation mIoU gain that counts as an improvement."""
    threshold_policy: Literal["max_iou", "min_recall"] = "max_iou"
    """How the decision threshold is tuned on validation: best mean IoU, or the highest
    threshold that keeps pixel recall at least `min_recall`."""
    min_recall: float = 0.99
    """The recall target of the `min_recall` policy."""
    num_workers: int = 0
    """DataLoader worker processes."""
    seed: int = 0
    """Seeds weights, shuffling and augmentation."""
    max_minutes: float | None = None
    """Wall-clock budget of the training epochs (final validation, threshold tuning and plots
    come on top); null for no budget."""
    allow_scratch: bool = False
    """Train from random encoder weights when pretrained ones are configured but absent on this
    machine (otherwise that is an error)."""
    device: str | None = None
    """"cuda", "cpu" or null for CUDA when available."""
    mixed_precision: bool = True
    """bf16/fp16 autocast where the device supports it (see `ml.device`)."""


PHOTO_AUGMENT = AugmentConfig(
    vflip_p=0.0,
    rotate90=False,
    affine_p=0.8,
    degrees=10.0,
    translate=0.1,
    scale=0.25,
    brightness=0.3,
    contrast=0.3,
    saturation=0.3,
)
"""Augmentation for photographs: left-right flips only (objects keep their up), scale and crop
jitter (zoom 0.75-1.25, shifts up to a tenth of the side) on most samples, stronger colour."""

FINE_TUNING = TrainConfig(
    epochs=200,
    batch_size=32,
    learning_rate=3e-3,
    early_stopping_patience=0,
    max_minutes=20.0,
    augment=PHOTO_AUGMENT,
    encoder_lr_factor=0.3,
    freeze_encoder=0.05,
    final_loss="bce_lovasz",
    final_loss_share=0.2,
    ema_decay=0.99,
)
"""The training recipe chosen on real photographs (`bench/real_quality.py`, README "Quality on
real photographs"): the one-cycle schedule over a 20-minute budget (no early stop, which would
cut it before it anneals), the pretrained encoder at 0.3 of the decoder's learning rate and
frozen for the first 5 %, photo augmentation, BCE + Lovász for the last 20 %, a moving average
of the weights. Progressive resizing (`low_res_size`) was measured and not kept: more epochs,
lower validation mIoU on boats. The nightly job's default (`TrainingOptions.train`)."""


class AuditConfig(CoreConfig):
    """When a training label counts as suspect (`ml.segmentation.label_audit`)."""

    max_iou: float = Field(default=0.5, ge=0.0, le=1.0)
    """The IoU of the model's confident decision with the label, on the pixels it is confident
    of, below which the label is suspect."""
    confident: float = Field(default=0.8, gt=0.5, le=1.0)
    """A pixel is confidently decided when its probability is at least this or at most 1 - it."""
    min_confident_share: float = Field(default=0.5, ge=0.0, le=1.0)
    """The share of confidently decided pixels the image needs for its label to be judged."""
    min_disagreement: float = Field(default=0.05, ge=0.0, le=1.0)
    """The share of the image where the confident decision and the label must disagree: below
    it the IoU of a small object (e.g. one cut by the border) decides nothing."""
    splits: tuple[str, ...] = ("train", "val", "test")
    """The dataset splits whose labels are audited."""
