"""Data-parallel training under `torchrun`: the process group, and decisions that rank 0 makes.

Every rank trains the same model on its shard of the train split (`DistributedSampler`) and
`DistributedDataParallel` averages the gradients, so the weights stay identical. Whatever steers
the loop (the time budget, an improved epoch, early stopping) must be the same everywhere or the
ranks wait on each other forever: rank 0 decides and broadcasts (`Ranks.agree`). Those small
messages go through a gloo group on the CPU even beside NCCL, so reading them never waits for
the GPU's queue.

`batch_size` is per process (torch's convention): N processes step on N x `batch_size` images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maskfind_pipeline.ml.device import Placement
from maskfind_pipeline.ml.fitting import Budget

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (`Ranks()` is a single process).

    Attributes:
        rank: this process's rank, 0 to `world_size - 1`; rank 0 validates and registers.
        world_size: how many processes train together.
        local_rank: the rank on this machine (its GPU index).
        control: the CPU (gloo) process group that carries decisions.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def agree(self, value: float) -> float:
        """Rank 0's `value`, on every rank (a bool comes back as 0.0 or 1.0)."""
        if not self.distributed:
            return float(value)
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.broadcast(tensor, src=0, group=self.control)
        return float(tensor.item())

    def agree_object(self, value: T) -> T:
        """Rank 0's picklable `value`, on every rank."""
        if not self.distributed:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of `values` over all ranks."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(tensor, group=self.control)
        return tensor.tolist()

    def gather(self, value: T) -> list[T]:
        """Every rank's picklable `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.control)
        return out

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) on every rank. Each rank updates them from
        its own batches; DDP copies rank 0's at the start of every forward, but not after the
        last one, so they must be shared before the weights are validated or kept."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def local_first(self, build: Callable[[], T]) -> T:
        """`build()` on local rank 0 first, then on the other ranks of this machine (which find
        what it built, e.g. a decoded cache, instead of building it again)."""
        if not self.distributed:
            return build()
        if self.local_rank == 0:
            result = build()
            dist.barrier(group=self.control)
            return result
        dist.barrier(group=self.control)
        return build()

    def wrap(self, model: nn.Module, placement: Placement) -> nn.Module:
        """`model` in `DistributedDataParallel` (which copies rank 0's weights to every rank),
        or `model` itself in a single process."""
        if not self.distributed:
            return model
        cuda = placement.device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[placement.device] if cuda else None)


class AgreedBudget(Budget):
    """A `Budget` whose readings are rank 0's on every rank, so all stop at the same step and
    follow the same learning-rate schedule."""

    def __init__(self, max_minutes: float | None, ranks: Ranks) -> None:
        super().__init__(max_minutes)
        self.ranks = ranks

    def progress(self, step: int, planned_steps: int) -> float:
        done = super().progress(step, planned_steps)
        return done if self.seconds is None else self.ranks.agree(done)

    def spent(self) -> bool:
        return self.seconds is not None and bool(self.ranks.agree(super().spent()))


def training_device(device: str | None, local_rank: int) -> str:
    """The device a rank trains on: its own GPU (`cuda:<local_rank>`) where the configured
    device (null: CUDA when available) is CUDA, else the CPU."""
    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return f"cuda:{local_rank}" if torch.device(chosen).type == "cuda" else chosen


@contextmanager
def process_group(
    device: str | None, env: Mapping[str, str] | None = None
) -> Iterator[tuple[Ranks, str]]:
    """Join the process group `torchrun` describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, ...): NCCL when training on CUDA, else gloo. Yields this rank and
    its training device; leaves the group at the end. Without torchrun: a single process."""
    env = os.environ if env is None else env
    rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    local = int(env.get("LOCAL_RANK", "0"))
    train_on = training_device(device, local)
    if world == 1:
        yield Ranks(), train_on
        return
    cuda = torch.device(train_on).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(train_on))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        control = dist.new_group(backend="gloo") if cuda else dist.group.WORLD
        yield Ranks(rank, world, local, control), train_on
    finally:
        dist.destroy_process_group()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (equal weights, equal digest)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_identical(ranks: Ranks, model: nn.Module) -> str:
    """The digest of this rank's weights of `model`, checked to be the same on every rank.

    Raises:
        RuntimeError: the ranks' weights differ (the data-parallel replicas drifted apart).
    """
    digests = ranks.gather(state_digest(model.state_dict()))
    if len(set(digests)) != 1:
        raise RuntimeError(f"the ranks ended with different weights: {digests}")
    return digests[ranks.rank]
