"""Which inference backend production uses (torch-free: the Dagster definitions import it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from maskfind_pipeline.core_config import CoreConfig

BackendName = Literal["torch", "torch_fp32", "onnxruntime", "openvino"]
"""torch: the Predictor's path (bf16 autocast + channels_last where the CPU has native bf16);
torch_fp32: exact float32, the reference; onnxruntime: float32 CPU execution provider;
openvino: CPU plugin at the precision it picks (bf16 where the CPU has it)."""

DEFAULT_CANDIDATES: tuple[BackendName, ...] = ("torch", "onnxruntime", "openvino")


class BackendConfig(CoreConfig):
    """The inference backend of a model, named or chosen by measurement on this machine."""

    backend: Literal["auto", "torch", "torch_fp32", "onnxruntime", "openvino"] = "auto"
    """auto: the fastest of `candidates`, measured here; or a backend by name."""
    candidates: tuple[BackendName, ...] = Field(default=DEFAULT_CANDIDATES, min_length=1)
    """The backends `auto` measures (one that fails to load is skipped)."""
    measure_batches: int = Field(default=3, ge=1)
    """Timed batches per candidate (after one warm-up batch); the median batch time counts."""
