"""What each flow is asked to do: its options (torch- and MLflow-free, so the Dagster
definitions load fast)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import get_args

from pydantic import Field

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.evaluation.gate import GatePolicy
from maskfind_pipeline.ml.novelty.model import NoveltyConfig
from maskfind_pipeline.ml.reviewer.config import (
    ReviewerSpec,
    ReviewerTrainConfig,
    ScorerName,
)
from maskfind_pipeline.ml.segmentation.config import (
    FINE_TUNING,
    AuditConfig,
    ModelSpec,
    TrainConfig,
)
from maskfind_pipeline.serving.options import ProductionOptions  # noqa: F401 (the flows' options, defined beside the engine that reads them)


class DistributedOptions(CoreConfig):
    """Data-parallel training in several processes on this machine (torchrun, PyTorch DDP):
    NCCL with one GPU per process where training runs on CUDA, else gloo on the CPU."""

    nproc: int = Field(default=2, ge=1)
    """Training processes; each steps on `train.batch_size` images (the batch size is per
    process), so one step sees nproc x batch_size images."""

    def torchrun_command(self, module: str) -> list[str]:
        """`torchrun --standalone --nproc_per_node=<nproc> -m <module>` with this interpreter."""
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        return [*run, f"--nproc_per_node={self.nproc}", "-m", module]

    def thread_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """OMP_NUM_THREADS giving each process its share of this machine's cores (torchrun
        would set 1), unless the environment already sets it."""
        environ = os.environ if environ is None else environ
        if "OMP_NUM_THREADS" in environ:
            return {}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return {"OMP_NUM_THREADS": str(max(1, (cores or os.cpu_count() or 1) // self.nproc))}


class TrainingOptions(CoreConfig):
    """What to train on and how: the defaults are the production model."""

    dataset_version: str | None = None
    """The dataset version to train on; null: the latest."""
    model: ModelSpec = ModelSpec(tta_flip=True)
    """Architecture, encoder weights, input size, normalisation and test-time augmentation
    (left-right flip by default: README, "Quality on real photographs")."""
    train: TrainConfig = FINE_TUNING
    """Hyper-parameters, augmentation, early stopping, threshold policy, device: by default
    the fine-tuning recipe chosen on real photographs (`ml.segmentation.config.FINE_TUNING`)."""
    novelty: NoveltyConfig = NoveltyConfig()
    """The new-image-type score fitted on the trained model's features, stored beside it."""
    warm_start: bool = False
    """Start from the champion's weights when it has this architecture (encoder, decoder,
    input size, normalisation), not from the ImageNet encoder: the new model keeps what the
    champion learned and adds the new data in a short budget."""
    distributed: DistributedOptions | None = None
    """Train in several processes launched by torchrun (through Dagster Pipes, so epochs still
    stream to the run's logs); null: in the asset's own process."""


class EvaluationOptions(CoreConfig):
    """How much of the matrix to keep filled, and how to compute a cell."""

    last_n: int | None = None
    """Keep only the newest N models and dataset versions (plus champion and challenger on
    every version); null: every cell."""
    batch_size: int = 32
    """Test images per inference batch."""
    device: str | None = None
    """"cuda", "cpu" or null for CUDA when available."""
    chunk: int = Field(default=4096, ge=1)
    """Test samples per scoring chunk: a part of the scores table each, and one step of
    `test_scores`' fan-out (a celery task or a Kubernetes Job past one machine)."""


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


class ReviewerOptions(CoreConfig):
    """How the grader of production masks is trained and judged (`flows.reviewer`); the
    defaults are the production grader."""

    dataset_version: str | None = None
    """The dataset version whose images are predicted and graded; null: the latest."""
    spec: ReviewerSpec = ReviewerSpec()
    """The CNN reviewer network, its input and the IoU thresholds of the grades."""
    train: ReviewerTrainConfig = ReviewerTrainConfig(max_minutes=3.0)
    """How each CNN reviewer trains (one per fold, one more on every fold when it wins)."""
    folds: int = Field(default=3, ge=2)
    """Image-type folds of the cross-fitting: every type is held out once, by one fold mask
    model and one CNN reviewer that never see it (fewer when there are fewer types)."""
    fold_train: TrainConfig = FINE_TUNING.model_copy(update={"max_minutes": 4.0})
    """How each fold mask model trains (with the champion's architecture): the champion's
    recipe on a shorter budget, so its masks of the types it never saw fail as a champion's
    would on a new type."""
    scorers: tuple[ScorerName, ...] = get_args(ScorerName)
    """The scorers the grader is chosen from (`ml.reviewer.grading.SCORERS`); without `reviewer` and
    `combined` no CNN is trained."""
    max_images: int | None = 1200
    """Images predicted by each mask model at most (a content-hash sample), to bound time."""
    val_share: float = 0.15
    """Share of the training folds' images kept for the CNN's early stopping."""


class AuditOptions(CoreConfig):
    """Which dataset version's labels are audited, and when a label counts as suspect."""

    dataset_version: str | None = None
    """The dataset version whose labels are judged; null: the latest."""
    audit: AuditConfig = AuditConfig()
    """The suspect rule."""
