"""Plain configuration of the reviewer model and its training (no torch import here).

The reviewer grades a predicted mask: 1 the mask is right, 2 imperfect but usable downstream,
3 untrustworthy. `ReviewerSpec` is stored as JSON beside the reviewer's weights: it is all that
is needed to rebuild the network, prepare its input and read its grades back as IoU bands.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.ml.segmentation.config import DEMO_ENCODER

GRADES = (1, 2, 3)

FLIP = "flip_disagreement"
ENTROPY = "entropy"
NOVELTY = "novelty"
REVIEWER = "reviewer"
SHAPE_SIGNALS = ("mask_fraction", "uncertain_share", "boundary", "components")
FREE_SIGNALS = (FLIP, ENTROPY, NOVELTY)
"""The signals a user gets without training anything: one more pass, the map, the novelty."""
SIGNALS = (*FREE_SIGNALS, *SHAPE_SIGNALS)
ScorerName = Literal["flip_disagreement", "entropy", "novelty", "reviewer", "signals", "combined"]
SCORERS: dict[str, tuple[str, ...]] = {
    FLIP: (FLIP,),
    ENTROPY: (ENTROPY,),
    NOVELTY: (NOVELTY,),
    REVIEWER: (REVIEWER,),
    "signals": SIGNALS,
    "combined": (*SIGNALS, REVIEWER),
}
"""Every scorer the grader is chosen from (`ml.reviewer.grading`), by name: the signals it reads, in
order of cost (the cheaper wins a tie)."""


class GradeRule(CoreConfig):
    """How a mask's IoU with the true mask becomes a grade."""

    good: float = 0.95
    """IoU at or above which a mask is right (grade 1)."""
    usable: float = 0.80
    """IoU at or above which a mask is imperfect but usable (grade 2); below it, grade 3."""

    @model_validator(mode="after")
    def _ordered(self) -> GradeRule:
        if not 0.0 < self.usable <= self.good <= 1.0:
            raise ValueError(f"need 0 < usable <= good <= 1, got {self.usable}, {self.good}")
        return self

    def grades(self, ious: np.ndarray) -> np.ndarray:
        """Grade 1, 2 or 3 (int64) of each IoU; NaN IoUs are refused."""
        values = np.asarray(ious, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError("an IoU is NaN")
        return np.where(values >= self.good, 1, np.where(values >= self.usable, 2, 3)).astype(
            np.int64
        )

    def band(self, grade: int) -> tuple[float, float]:
        """The IoU interval [low, high) of `grade` (grade 1's high end is 1.0, inclusive)."""
        bands = {1: (self.good, 1.0), 2: (self.usable, self.good), 3: (0.0, self.usable)}
        return bands[grade]


class ReviewerSpec(CoreConfig):
    """What to build: encoder and its weights, input size, normalisation, grade thresholds."""

    encoder_name: str = DEMO_ENCODER
    """smp encoder name (`tu-<timm name>` for timm encoders); its first convolution is widened
    to 5 input channels (image RGB, probability, binary mask)."""
    encoder_weights: str | None = "imagenet"
    """Pretrained 3-channel encoder weights, read from a local source only (see
    `ml.weights.pretrained`); null trains from scratch."""
    encoder_weights_path: str | None = None
    """A local weights file of the 3-channel encoder; default: the environment variable
    MASKFIND_ENCODER_WEIGHTS, then the Hugging Face cache, then bundled weights."""
    input_size: int = 128
    """Square side, in pixels, the reviewer sees (its inputs are resized to it)."""
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel mean of the image channels' normalisation, on [0, 1] pixels."""
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel standard deviation of the image channels' normalisation."""
    pooled_stages: int = Field(default=1, ge=1, le=5)
    """How many of the encoder's deepest feature maps are pooled (average and max) into the
    head: 1 the deepest only; more adds finer, shallower ones."""
    dropout: float = 0.2
    """Dropout before the linear head."""
    grades: GradeRule = GradeRule()
    """The IoU thresholds the grades stand for."""


class ReviewerTrainConfig(CoreConfig):
    """How to train the reviewer: data mix, schedule, class balance, device."""

    epochs: int = 12
    """Passes over the training samples (fewer if early stopping or the time budget ends it)."""
    batch_size: int = 32
    """Samples per optimisation step."""
    learning_rate: float = 2e-3
    """Peak learning rate of AdamW (one-cycle over epochs or the time budget)."""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay."""
    degraded_share: float = 0.5
    """Share of degraded true masks among the training samples (the rest are real predictions
    of mask models); the caller passes it to `build_review_samples`."""
    class_weighting: Literal["balanced", "none"] = "balanced"
    """Cross-entropy class weights: `balanced` weighs each grade by n / (3 n_grade) in the
    training samples, `none` weighs all alike."""
    label_smoothing: float = 0.05
    """Cross-entropy label smoothing (grades near an IoU threshold are close calls)."""
    label_iou_sigma: float = 0.0
    """Soft grade targets: each sample's target is the chance that its IoU, blurred by a
    normal error of this standard deviation, falls in each grade's band (0: one-hot grades),
    so masks close to a threshold count as part one grade, part the next."""
    augment: bool = True
    """Random flips, transposition and image brightness/contrast during training."""
    early_stopping_patience: int = 4
    """Epochs without a better validation score before stopping; 0 disables it."""
    max_minutes: float | None = None
    """Wall-clock budget of the training epochs; null for no budget."""
    seed: int = 0
    """Seeds weights, shuffling, augmentation (and, passed on, degradations)."""
    allow_scratch: bool = False
    """Train from random encoder weights when pretrained ones are configured but absent."""
    device: str | None = None
    """"cuda", "cpu" or null for CUDA when available."""
    mixed_precision: bool = True
    """bf16/fp16 autocast where the device supports it (see `ml.device`)."""

    @model_validator(mode="after")
    def _share(self) -> ReviewerTrainConfig:
        if not 0.0 <= self.degraded_share <= 1.0:
            raise ValueError(f"degraded_share must lie in [0, 1], got {self.degraded_share}")
        return self
