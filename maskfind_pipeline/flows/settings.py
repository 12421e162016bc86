"""The settings of each flow (torch- and MLflow-free, so the Dagster definitions load fast)."""

from __future__ import annotations

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.evaluation.gate import GatePolicy
from maskfind_pipeline.ml.config import ModelSpec, TrainConfig


class TrainingSettings(CoreConfig):
    """What to train on and how: the defaults are the production model."""

    dataset_version: str | None = None
    """The dataset version to train on; null: the latest."""
    model: ModelSpec = ModelSpec()
    """Architecture, encoder weights, input size and normalisation."""
    train: TrainConfig = TrainConfig()
    """Hyper-parameters, augmentation, early stopping, threshold policy, device."""


class EvaluationOptions(CoreConfig):
    """How much of the matrix to keep filled, and how to compute a cell."""

    last_n: int | None = None
    """Keep only the newest N models and dataset versions (plus champion and challenger on
    every version); null: every cell."""
    batch_size: int = 32
    """Test images per inference batch."""
    device: str | None = None
    """"cuda", "cpu" or null for CUDA when available."""


class ManualPromotion(CoreConfig):
    """Promote a version by hand: the gate still runs; `force` overrides a failed gate."""

    version: str
    """The model version to make champion."""
    reason: str
    """Why, recorded on the version."""
    requested_by: str
    """Who asks, recorded on the version."""
    force: bool = False
    """Promote even if the gate fails (recorded as forced)."""
    gate: GatePolicy = GatePolicy()
    """The gate the version is checked against."""


class RollbackRequest(CoreConfig):
    """Give `champion` back to the version it replaced."""

    reason: str
    """Why, recorded on both versions."""
    requested_by: str
    """Who asks, recorded on both versions."""
