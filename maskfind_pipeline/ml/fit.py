"""The one fit loop: every model here (the mask model, its fold models, the reviewer CNN) trains
through `Fit`.

`Fit` owns the mechanics: the precision and memory format (`place`, timed by `ml.precision`
where the CPU claims bfloat16), the data-parallel wrapper (`ml.distributed.Ranks`), the
optimiser with its gradient scaler, the weights' moving average, the time budget, early
stopping, the progress bar and the per-epoch callback. A model's trainer supplies what differs:
how a batch becomes a loss, and how an epoch is validated (which says whether it improved).
The building blocks live in `ml.fitting`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from maskfind_pipeline.ml.device import Placement
from maskfind_pipeline.ml.distributed import AgreedBudget, Ranks
from maskfind_pipeline.ml.fitting import Budget, EarlyStopping, Optimiser, WeightAverage
from maskfind_pipeline.ml.precision import settle

B = TypeVar("B")


def place(
    placement: Placement,
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int,
    ranks: Ranks | None = None,
) -> tuple[Placement, nn.Module]:
    """The training settings for `model` (precision timed on it where the CPU claims bfloat16;
    with several processes rank 0 times and every rank takes its decision) and the model on
    them (moved in place)."""
    ranks = ranks or Ranks()
    if ranks.is_main:
        placement = settle(placement, model, input_shape, batch_size=batch_size, training=True)
    placement = ranks.agree_object(placement)
    return placement, placement.prepare(model)


class Fit:
    """The mutable mechanics of one training run (of one rank, with several processes).

    Args:
        model: the model, already `place`d.
        placement: its device, precision and memory format.
        parameters: what the optimiser steps (parameters or parameter groups).
        learning_rate, weight_decay: AdamW's.
        max_minutes: the time budget of the training epochs (None: none).
        patience: early stopping's (0: never).
        ema_decay: keep a moving average of the weights (what is validated and kept).
        ranks: the data-parallel processes (default one).
    """

    def __init__(
        self,
        model: nn.Module,
        placement: Placement,
        *,
        parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        learning_rate: float,
        weight_decay: float,
        max_minutes: float | None,
        patience: int,
        ema_decay: float | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.model, self.placement = model, placement
        self.ranks = ranks or Ranks()
        self.net = self.ranks.wrap(model, placement)
        self.optimiser = Optimiser(
            parameters, learning_rate=learning_rate, weight_decay=weight_decay, placement=placement
        )
        self.ema = WeightAverage(model, ema_decay) if ema_decay is not None else None
        self.budget = (
            AgreedBudget(max_minutes, self.ranks) if self.ranks.distributed else Budget(max_minutes)
        )
        self.stopping = EarlyStopping(patience)
        self.steps = 0

    @property
    def evaluated(self) -> nn.Module:
        """What is validated and kept: the weights' moving average where configured."""
        return self.model if self.ema is None else self.ema.module

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """One optimiser step on `loss` (computed in float32 from the autocast forward pass),
        then the moving average; the detached loss."""
        loss = self.optimiser.step(loss)
        if self.ema is not None:
            self.ema.update(self.model)
        self.steps += 1
        return loss

    def run(
        self,
        epochs: int,
        train_epoch: Callable[[int], tuple[float, int, bool]],
        end_epoch: Callable[[int, float, int, float], bool],
    ) -> None:
        """Epochs 1..`epochs`: `train_epoch(epoch)` gives the mean loss, the samples seen and
        whether the budget ran out; `end_epoch(epoch, loss, seen, seconds)` validates and says
        whether the epoch improved. Stops early by `EarlyStopping` (`stopping.reason`)."""
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            loss, seen, out_of_time = train_epoch(epoch)
            improved = end_epoch(epoch, loss, seen, time.perf_counter() - start)
            if self.stopping.stop(improved=improved, out_of_time=out_of_time):
                return

    def epoch(
        self,
        batches: Iterable[B],
        step: Callable[[B], tuple[torch.Tensor, int]],
        *,
        desc: str,
        total: int | None = None,
        progress_bar: bool = True,
        after_batch: Callable[[int], None] | None = None,
        empty: str | None = None,
    ) -> tuple[float, int, bool]:
        """One training epoch: `step(batch)` gives a batch's mean loss and its size; the budget
        is checked after every batch. Returns the mean loss and the samples seen (over all
        ranks) and whether the budget ran out.

        Args:
            batches: the epoch's batches.
            step: trains on one batch (e.g. forward, loss, `self.step`).
            desc, total, progress_bar: the tqdm bar's.
            after_batch: called with the 1-based batch number after each batch.
            empty: raise ValueError with this message where no batch came.
        """
        self.model.train()
        # The loss sum stays on the device: reading it every step would stall a GPU's queue.
        summed = torch.zeros((), device=self.placement.device)
        seen = 0
        bar = tqdm(batches, desc=desc, total=total, disable=not progress_bar, leave=False)
        for number, batch in enumerate(bar, start=1):
            loss, count = step(batch)
            summed += loss * count
            seen += count
            if after_batch is not None:
                after_batch(number)
            if self.budget.spent():
                return (*self._totals(summed, seen), True)
        if seen == 0 and empty is not None:
            raise ValueError(empty)
        return (*self._totals(summed, seen), False)

    def _totals(self, summed: torch.Tensor, seen: int) -> tuple[float, int]:
        """The mean loss and the samples of an epoch, over all ranks."""
        if self.ranks.distributed:
            total, counted = self.ranks.sum([float(summed), seen])
            return total / max(counted, 1), int(counted)
        return float(summed) / max(seen, 1), seen
