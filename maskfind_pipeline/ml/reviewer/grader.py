"""What production grades a predicted mask with: a registered reviewer version's grade model
(`ml.reviewer.grading.GradeModel`) and, only where its scorer reads it, the CNN reviewer.

A version registered before grade models existed has none: its CNN's own probabilities are
the grades, as they were then.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from maskfind_pipeline.ml.metrics import quantize_probabilities
from maskfind_pipeline.ml.reviewer.grading import FLIP, NOVELTY, REVIEWER, GradeModel, mask_signals
from maskfind_pipeline.ml.reviewer.model import ReviewerModel

GRADE_MODEL_FILE = "grade_model.json"
"""The grade model's file beside the reviewer's weights in the registry."""
_CLIP = 1e-6


@dataclass
class Grader:
    """A reviewer version as production uses it.

    Attributes:
        version: the reviewer version.
        model: its grade model; None for a version registered before them.
        reviewer: the CNN, loaded only when `model` reads it (or there is no model).
        runtime_rates: the CNN's images/s in each runtime, where `ready` measured them.
    """

    version: str
    model: GradeModel | None
    reviewer: ReviewerModel | None
    runtime_rates: dict[str, float] = field(default_factory=dict)
    """The CNN's images/s in each runtime where they were measured (`on_fastest_runtime`)."""

    @property
    def scorer(self) -> str:
        """The scorer the grades come from (`ml.reviewer.grading.SCORERS`)."""
        return self.model.scorer if self.model is not None else REVIEWER

    def to(self, device: str | None = None) -> Grader:
        """This grader with its CNN (if any) on `device` with `ml.device`'s precision rules."""
        return replace(self, reviewer=self.reviewer.to(device) if self.reviewer else None)

    def ready(self, cache_dir: Path, *, batch_size: int = 32) -> Grader:
        """This grader as production runs it: its CNN (if any) on the GPU where there is one,
        else in the fastest runtime of this CPU, measured once and cached in `cache_dir`
        (`ReviewerModel.on_fastest_runtime`)."""
        if self.reviewer is None:
            return self
        if torch.cuda.is_available():
            return self.to("cuda")
        reviewer, choice = self.reviewer.on_fastest_runtime(cache_dir, batch_size=batch_size)
        return replace(self, reviewer=reviewer, runtime_rates=choice.rates)

    @property
    def runtime(self) -> str | None:
        """Where the CNN runs: a runtime's name, "torch" without one, None without a CNN."""
        if self.reviewer is None:
            return None
        return self.reviewer.runtime.name if self.reviewer.runtime else "torch"

    def grade_batch(
        self,
        images: torch.Tensor,
        probabilities: torch.Tensor,
        threshold: float,
        *,
        flip_disagreement: torch.Tensor | np.ndarray | None = None,
        novelty: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, 3) float64 P(grade 1, 2, 3) of the masks of one batch.

        Args:
            images: uint8 (B, 3, S, S), the mask model's input batch.
            probabilities: (B, 1, S, S), the mask model's output: float in [0, 1] or uint8
                round(p * 255).
            threshold: the mask model's decision threshold.
            flip_disagreement: (B,) from the inference backend; unknown (filled in by the
                grade model) when None.
            novelty: (B,) the mask model's novelty scores; unknown when None.
        """
        count = len(images)
        if self.model is None:
            assert self.reviewer is not None
            graded = self.reviewer.grade_batch(images, probabilities, threshold)
            return graded.double().cpu().numpy()
        maps = probabilities[:, 0].cpu().numpy()
        if maps.dtype != np.uint8:
            maps = quantize_probabilities(maps.astype(np.float32))
        signals = mask_signals(maps, threshold)
        signals[FLIP] = _values(flip_disagreement, count)
        signals[NOVELTY] = _values(novelty, count)
        if self.model.uses_reviewer:
            assert self.reviewer is not None
            p3 = self.reviewer.grade_batch(images, probabilities, threshold)[:, 2]
            signals[REVIEWER] = reviewer_logit(p3.double().cpu().numpy())
        return self.model.probabilities(signals)


def reviewer_logit(p3: np.ndarray) -> np.ndarray:
    """The CNN's P(grade 3) as a logit (the `reviewer` signal), clipped away from 0 and 1."""
    p = np.clip(np.asarray(p3, dtype=np.float64), _CLIP, 1 - _CLIP)
    return np.log(p) - np.log1p(-p)


def _values(values: torch.Tensor | np.ndarray | None, count: int) -> np.ndarray:
    if values is None:
        return np.full(count, np.nan)
    if isinstance(values, torch.Tensor):
        values = values.double().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(count)
