"""Where and in which precision to train: device, autocast, memory format, seeding.

The rule for mixed precision:

- CUDA: autocast to bfloat16 where the GPU supports it (Ampere and newer), else float16 with a
  `GradScaler`; channels_last and pinned host memory.
- CPU: float32 where oneDNN reports no bfloat16 at all. Where it reports bfloat16, the choice
  awaits a measurement (`Placement.needs_measurement`): oneDNN says "supported" on every
  AVX-512 CPU, also where it only emulates bfloat16 (no AVX512-BF16 or AMX), and emulated it is
  two to three times slower than float32. `ml.precision.settle` then times a few steps of the
  actual model in float32 and bfloat16, with and without channels_last, and keeps the fastest
  (cached per machine and model shape). With native bfloat16, convolutions run several times
  faster than in float32 (about 3x for a ResNet-34 U-Net on 2 Zen 5 cores). Until settled, the
  settings say bfloat16 and channels_last (the old rule).

Losses are computed in float32 outside the autocast region either way. On such a CPU, depthwise
convolutions (EfficientNet's) still compute in float32: oneDNN's bfloat16 depthwise backward is
3-8x slower than its float32 one, and keeping them in float32 makes a Lite0 U-Net train about
28 % faster (`Placement.prepare`).

On CPU, `tune_cpu_allocator` also keeps glibc from returning every freed activation buffer to
the kernel: without it each training step maps, faults in and unmaps hundreds of megabytes
(about 5 % of a step on 2 cores).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Placement:
    """How tensors and the model are placed and in which precision the forward pass runs.

    Attributes:
        device: where the model and batches live.
        autocast_dtype: the autocast precision, or None for float32 throughout.
        grad_scaler: whether float16 training needs a `torch.amp.GradScaler`.
        channels_last: whether model and inputs use the channels_last memory format.
        pin_memory: whether loaders should pin host batches (fast copies to a GPU).
        needs_measurement: the precision and memory format are to be timed on the model
            (`ml.precision.settle`): a CPU that claims bfloat16.
        precision_note: how the precision was decided (`describe` adds it), once settled.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None
    grad_scaler: bool
    channels_last: bool
    pin_memory: bool
    needs_measurement: bool = False
    precision_note: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` on this device and memory format, with the CPU bfloat16 rule for depthwise
        convolutions (module docstring) applied where it holds. Moves the model in place."""
        model = model.to(self.device, memory_format=self.memory_format)  # pyright: ignore[reportCallIssue]
        if self.device.type == "cpu" and self.autocast_dtype is torch.bfloat16:
            depthwise_in_float32(model)
        return model

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast context of these settings (a no-op for float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> dict[str, str]:
        """A JSON-able summary, e.g. for run parameters."""
        precision = "float32" if self.autocast_dtype is None else str(self.autocast_dtype)
        return {
            "device": str(self.device),
            "precision": precision.removeprefix("torch."),
            "channels_last": str(self.channels_last).lower(),
            "threads": str(torch.get_num_threads()),
            **dict(self.precision_note),
        }


def select_device(device: str | None = None, *, mixed_precision: bool = True) -> Placement:
    """Choose the training device and precision (see the module docstring for the rule).

    Args:
        device: "cuda", "cpu" or a full device string; None picks CUDA when available.
        mixed_precision: False forces float32 everywhere.
    """
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if chosen.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        dtype = (torch.bfloat16 if bf16 else torch.float16) if mixed_precision else None
        return Placement(chosen, dtype, dtype is torch.float16, True, True)
    if mixed_precision and cpu_has_native_bf16():
        return Placement(chosen, torch.bfloat16, False, True, False, needs_measurement=True)
    note = (("precision_source", "float32 requested" if not mixed_precision else "no bf16"),)
    return Placement(chosen, None, False, True, False, precision_note=note)


def depthwise_in_float32(model: nn.Module) -> int:
    """Make every depthwise convolution of `model` compute in float32 under autocast.

    Each such module's class is swapped for a subclass whose forward leaves the autocast region
    (parameters, state-dict keys and results without autocast stay the same). Returns how many
    modules were changed; calling it again changes none.
    """
    changed = 0
    for module in model.modules():
        depthwise = isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels
        if depthwise and not isinstance(module, _Float32Forward):
            module.__class__ = _float32_class(type(module))  # pyright: ignore[reportAttributeAccessIssue]
            changed += 1
    return changed


class _Float32Forward:
    """Marks a module class made by `_float32_class`."""


@functools.cache
def _float32_class(cls: type[nn.Module]) -> type[nn.Module]:
    def forward(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(inputs.device.type, enabled=False):
            return cls.forward(self, inputs.float())

    return type(f"Float32{cls.__name__}", (cls, _Float32Forward), {"forward": forward})


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN reports bfloat16 support on this CPU: native (AVX512-BF16 or AMX) or
    emulated (AVX-512 alone); only a timing tells the two apart (`ml.precision`)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 1 << 30


def tune_cpu_allocator() -> bool:
    """Let glibc reuse large freed blocks instead of unmapping them (process-wide, idempotent).

    Sets `M_MMAP_THRESHOLD` to its maximum (32 MiB: smaller blocks come from the heap) and
    `M_TRIM_THRESHOLD` to 1 GiB (freed heap is kept for the next step). Returns False where
    the C library is not glibc (nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (all devices).

    Args:
        seed: the seed.
        deterministic: also ask torch for deterministic kernels (slower; warns where none exist)
            and turn cuDNN autotuning off.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
