"""The reviewer CNN through the fastest runtime on this machine: torch (in the precision
`ml.precision` measured), ONNX Runtime or OpenVINO.

Only the network runs in the runtime: its input (`model.reviewer_inputs`, five float32 channels
at the reviewer's input size) is computed in torch for every runtime alike, and every runtime
returns the three grade logits. The export and the choice are cached like the mask model's
(`ml.backends`): the ONNX file and the OpenVINO IR under `<cache>/reviewer-onnx-<key>/` and
`<cache>/reviewer-openvino-<key>/` (immutable, verified entries, `ml.backends.cache`), the choice
in `<cache>/reviewer-choice-<key>.json`, keyed by the machine (`ml.precision.machine_identity`),
the reviewer's weights and spec, the batch size and the libraries' versions. So a production day
after the first opens the chosen runtime alone.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from maskfind_pipeline.ml.backends.cache import (
    cache_key,
    cached_entry,
    library_version,
    read_choice,
    write_choice,
)
from maskfind_pipeline.ml.backends.choose import open_candidates, rates_in_rounds
from maskfind_pipeline.ml.device import Placement

_log = logging.getLogger(__name__)

EXPORT_FORMAT = "1"
"""Bump when the exported graph or the export arguments change: every key changes with it."""
INPUT_NAME, OUTPUT_NAME = "inputs", "logits"
RUNTIMES = ("torch", "onnxruntime", "openvino")
Clock = Callable[[], float]


class ReviewerRuntime(Protocol):
    """The reviewer network in one runtime: float32 CPU inputs (B, 5, R, R) in, float32 CPU
    grade logits (B, 3) out."""

    @property
    def name(self) -> str: ...

    def logits(self, inputs: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TorchRuntime:
    """The network in torch with its placement (device, memory format, autocast)."""

    model: nn.Module
    placement: Placement
    name: str = "torch"

    @torch.inference_mode()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        placement = self.placement
        inputs = inputs.to(placement.device).contiguous(memory_format=placement.memory_format)
        with placement.autocast():
            return self.model(inputs).float().cpu()


class OnnxRuntime:
    """The exported network in ONNX Runtime's float32 CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.float().contiguous().numpy()
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(np.asarray(out))


class OpenVinoRuntime:
    """The network's OpenVINO IR on the CPU plugin (one infer request, latency hint: grading
    runs once per production batch, beside the mask model)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino

        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        }
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: inputs.float().contiguous().numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


class ReviewerExports:
    """A reviewer version's network exported, once per weights, spec and library versions.

    Args:
        model: the network (float32 weights; left alone: a copy is exported).
        spec_json: the reviewer's spec as JSON (part of the key).
        input_size: the reviewer's input size R.
        cache_dir: the folder the entries live in.
    """

    def __init__(self, model: nn.Module, spec_json: str, input_size: int, cache_dir: Path):
        self.model, self.size, self.root = model, input_size, Path(cache_dir)
        state = {k: v.detach().float().cpu().numpy().tobytes() for k, v in _state(model).items()}
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key])
        self.onnx_inputs = {
            "format": EXPORT_FORMAT,
            "weights_sha256": digest.hexdigest(),
            "spec": spec_json,
            **_versions("torch", "onnx", "onnxscript"),
        }
        self.openvino_inputs = {
            "format": EXPORT_FORMAT,
            "onnx": cache_key(self.onnx_inputs),
            **_versions("openvino"),
        }

    def onnx(self) -> Path:
        return cached_entry(self.root, "reviewer-onnx", self.onnx_inputs, self._export) / (
            "reviewer.onnx"
        )

    def openvino(self) -> Path:
        entry = cached_entry(self.root, "reviewer-openvino", self.openvino_inputs, self._convert)
        return entry / "reviewer.xml"

    def _export(self, folder: Path) -> None:
        import copy

        model = copy.deepcopy(self.model).float().cpu().eval()
        model = model.to(memory_format=torch.contiguous_format)  # pyright: ignore[reportCallIssue]
        example = torch.zeros(2, 5, self.size, self.size)
        torch.onnx.export(
            model,
            (example,),
            str(folder / "reviewer.onnx"),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )

    def _convert(self, folder: Path) -> None:
        import openvino

        model = openvino.convert_model(self.onnx())
        openvino.save_model(model, folder / "reviewer.xml", compress_to_fp16=False)


Opener = Callable[[str], ReviewerRuntime]


@dataclass(frozen=True)
class RuntimeChoice:
    """The chosen runtime, the images/s measured for each candidate, why a candidate was
    skipped, and whether the choice is an earlier run's."""

    runtime: ReviewerRuntime
    rates: dict[str, float]
    skipped: dict[str, str]
    cached: bool = False


def choose_runtime(
    opener: Opener,
    inputs_key: dict[str, str],
    cache_dir: Path,
    *,
    input_size: int,
    candidates: Sequence[str] = RUNTIMES,
    batch_size: int = 32,
    batches: int = 3,
    clock: Clock = time.perf_counter,
) -> RuntimeChoice:
    """The fastest of `candidates`, measured once per `inputs_key` (machine, weights, batch
    size, versions) and read from `cache_dir` afterwards. A candidate that fails to open or
    run is skipped with its reason; a cached choice that no longer opens is measured again.
    Rounds of one batch per candidate, the median counting (a neighbour's burst of load hits
    every candidate alike)."""
    key = {**inputs_key, "candidates": ",".join(candidates), "batch_size": str(batch_size)}
    path = Path(cache_dir) / f"reviewer-choice-{cache_key(key)}.json"
    cached = read_choice(path, key)
    if cached is not None:
        try:
            rates = {str(k): float(v) for k, v in cached["rates"].items()}
            return RuntimeChoice(opener(str(cached["runtime"])), rates, {}, cached=True)
        except Exception as exc:  # a runtime uninstalled since, a damaged file: measure again
            _log.warning("cached reviewer runtime does not open (%s): measuring", exc)
    sample = torch.randn(batch_size, 5, input_size, input_size, generator=torch.Generator())
    runtimes, skipped = open_candidates(
        opener, lambda runtime: runtime.logits(sample), candidates, "reviewer runtime"
    )
    if not runtimes:
        raise RuntimeError(f"no reviewer runtime works: {skipped}")
    rates = rates_in_rounds(
        runtimes, lambda runtime: runtime.logits(sample), batch_size, batches, clock
    )
    best = max(rates, key=rates.__getitem__)
    _log.info("reviewer runtime %s chosen; images/s %s", best, rates)
    write_choice(path, key, runtime=best, rates=rates)
    return RuntimeChoice(runtimes[best], rates, skipped)


def machine_key() -> dict[str, str]:
    """The machine part of a choice's key (`ml.precision.machine_identity`) and the runtimes'
    versions."""
    from maskfind_pipeline.ml.precision import machine_identity

    return {
        **machine_identity(),
        **{f"version.{p}": library_version(p) for p in ("torch", "onnxruntime", "openvino")},
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def _versions(*packages: str) -> dict[str, str]:
    return {package: library_version(package) for package in packages}
