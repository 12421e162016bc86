"""What every training loop here shares: optimiser and mixed-precision steps, the schedule over
a time budget, early stopping, and the fallback to random weights.

`ml.segmentation.train` (the mask model) and `ml.reviewer.train` (the reviewer) differ in their data
and their validation score; the mechanics of fitting live here once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from maskfind_pipeline.ml.device import Placement
from maskfind_pipeline.ml.weights.pretrained import PretrainedWeightsUnavailable


class Optimiser:
    """AdamW (fused on CPU and CUDA) with the device's gradient scaler and a schedule."""

    def __init__(
        self,
        parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        *,
        learning_rate: float,
        weight_decay: float,
        placement: Placement,
    ) -> None:
        self.optimizer = torch.optim.AdamW(
            parameters,
            lr=learning_rate,
            weight_decay=weight_decay,
            fused=placement.device.type in ("cpu", "cuda"),
        )
        self.scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.grad_scaler)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def schedule(self, factor: Callable[[int], float] | list[Callable[[int], float]]) -> None:
        """Multiply the learning rate by `factor(step)` from now on (one factor per parameter
        group where a list is given)."""
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, step (scaled where the device needs it), advance the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()

    @property
    def learning_rate(self) -> float:
        """The first parameter group's current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])


class Budget:
    """Training progress by steps or, where further along, by the share of a time budget spent:
    so a run the budget cuts short still warms up and anneals."""

    def __init__(self, max_minutes: float | None) -> None:
        self.started = time.monotonic()
        self.seconds = 60 * max_minutes if max_minutes else None

    def progress(self, step: int, planned_steps: int) -> float:
        done = step / max(planned_steps, 1)
        if self.seconds is None:
            return done
        return max(done, (time.monotonic() - self.started) / self.seconds)

    def spent(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.started > self.seconds


class EarlyStopping:
    """Why a run stops after an epoch: `time_budget`, `early_stopping` (`patience` epochs
    without improvement; 0 never) or nothing yet (`completed` once all epochs ran)."""

    def __init__(self, patience: int) -> None:
        self.patience, self.stale = patience, 0
        self.reason = "completed"

    def stop(self, *, improved: bool, out_of_time: bool) -> bool:
        self.stale = 0 if improved else self.stale + 1
        if out_of_time:
            self.reason = "time_budget"
        elif self.patience > 0 and self.stale >= self.patience:
            self.reason = "early_stopping"
        return self.reason != "completed"


class WeightAverage:
    """An exponential moving average of a model's weights and buffers (`AveragedModel`).

    The decay warms up as min(`decay`, (1 + n) / (10 + n)) over the first n updates, as
    TensorFlow's `ExponentialMovingAverage` does with `num_updates`: early on the average
    follows the weights closely, so a short run's average is not held back at its first steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the model."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights and buffers into the average."""
        self.updates += 1
        self.averaged.update_parameters(model)

    @torch.no_grad()
    def _average(
        self,
        averaged: Sequence[torch.Tensor],
        current: Sequence[torch.Tensor],
        _: torch.Tensor | int,
    ) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(list(averaged), list(current), 1.0 - decay)  # pyright: ignore[reportPrivateImportUsage]
            return
        for mine, theirs in zip(averaged, current, strict=True):
            mine.copy_(theirs)  # integer buffers (batch norm's num_batches_tracked): the count


def build_pretrained(
    build: Callable[[bool], nn.Module], *, pretrained: bool, allow_scratch: bool
) -> tuple[nn.Module, bool]:
    """`build(pretrained)`, or `build(False)` when no local weights exist and scratch is allowed;
    also says whether pretrained weights were loaded."""
    try:
        return build(pretrained), pretrained
    except PretrainedWeightsUnavailable:
        if not allow_scratch:
            raise
        return build(False), False


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict on the CPU (the best epoch's weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the configured learning rate at `progress` (0 = start, 1 = end).

    `onecycle` follows `torch.optim.lr_scheduler.OneCycleLR`'s defaults (cosine warm-up from
    1/25 over the first 30 %, cosine annealing to 1/250000); `cosine` anneals from 1 to 0;
    `constant` stays 1.
    """
    if schedule not in ("onecycle", "cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}")
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return _cosine(1.0, 0.0, p)
    warmup, start, end = 0.3, 1 / 25, 1 / 25 / 1e4
    if p < warmup:
        return _cosine(start, 1.0, p / warmup)
    return _cosine(1.0, end, (p - warmup) / (1 - warmup))


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2
