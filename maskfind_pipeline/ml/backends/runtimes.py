"""The backends: torch (bf16 where native, and exact float32), ONNX Runtime, OpenVINO.

Every backend uses `torch.get_num_threads()` threads, read when it is opened, so all of them
compete on the same cores. OpenVINO runs with its THROUGHPUT hint: it picks the number of
streams for those threads (2 streams of 1 thread on 2 cores) and each batch is split across
that many parallel infer requests; on 2 cores this matched one 2-thread stream (51.5 vs 51.1
images/s, ResNet-34 U-Net 256², batch 32) and on more cores several streams keep each one's
threads busy. A single image then runs on one stream's threads only: production predicts
batches. The chunks' outputs are concatenated in request order, output by output (ports
resolved by name), so every output keeps the batch's image order.

Every backend returns `base.Prediction`: the probabilities, features and flip disagreement of
one run of `base.ProbabilityModel` (the torch backends run the module, the others its export).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from maskfind_pipeline.ml.backends.base import (
    InferenceBackend,
    Prediction,
    ProbabilityModel,
    check_images,
)
from maskfind_pipeline.ml.backends.config import BackendName
from maskfind_pipeline.ml.backends.exports import INPUT_NAME, OUTPUT_NAMES, ModelExports
from maskfind_pipeline.ml.segmentation.predict import Predictor

if TYPE_CHECKING:
    from openvino import CompiledModel, ConstOutput


@dataclass(frozen=True)
class TorchBackend:
    """A `Predictor` as a backend: `ProbabilityModel` around its model, run with its device
    settings (device, memory format, autocast), which decide the precision."""

    name: str
    predictor: Predictor

    @cached_property
    def module(self) -> ProbabilityModel:
        """The predictor's model with preprocessing, sigmoid and features (shares its weights)."""
        module = ProbabilityModel(self.predictor.model, self.predictor.config)
        return module.to(self.predictor.placement.device).eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """`base.Prediction` of uint8 CPU images (B,3,S,S), one run of the module."""
        check_images(images, self.predictor.config.input_size)
        placement = self.predictor.placement
        inputs = images.to(placement.device, non_blocking=True)
        with placement.autocast():
            outputs = self.module(inputs.contiguous(memory_format=placement.memory_format))
        return Prediction(*(output.float().cpu() for output in outputs))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """`predict(images).probabilities`."""
        return self.predict(images).probabilities


class OnnxRuntimeBackend:
    """The exported ONNX file in ONNX Runtime's float32 CPU execution provider.

    Args:
        path: The ONNX file.
        size: The model's input size.
        threads: Intra-op threads (default: torch's); ops run one at a time.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, size: int, threads: int | None = None) -> None:
        import onnxruntime

        self.size = size
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        check_outputs([output.name for output in self.session.get_outputs()], path)

    def predict(self, images: torch.Tensor) -> Prediction:
        """`base.Prediction` of uint8 CPU images (B,3,S,S), one run of the graph."""
        check_images(images, self.size)
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.contiguous().numpy()})
        return Prediction(*(torch.from_numpy(out) for out in outputs))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """`predict(images).probabilities`."""
        return self.predict(images).probabilities


class OpenVinoBackend:
    """The OpenVINO IR on the CPU plugin, at the inference precision the plugin picks.

    Args:
        path: The IR's `.xml` file.
        size: The model's input size.
        threads: Threads of all streams together (default: torch's).
    """

    name = "openvino"

    def __init__(self, path: Path, size: int, threads: int | None = None) -> None:
        import openvino

        self.size = size
        threads = threads or torch.get_num_threads()
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads}
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        self.outputs = _output_ports(self.compiled, path)
        count = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.compiled.create_infer_request() for _ in range(count)]

    @property
    def precision(self) -> str:
        """The inference precision the plugin chose (e.g. bf16)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def predict(self, images: torch.Tensor) -> Prediction:
        """`base.Prediction` of uint8 CPU images (B,3,S,S): the batch split into
        consecutive chunks, one per infer request, run in parallel, outputs put back in order."""
        check_images(images, self.size)
        batch = images.contiguous().numpy()
        chunks = [c for c in np.array_split(batch, len(self.requests)) if len(c)]
        running = list(zip(self.requests, chunks, strict=False))
        for request, chunk in running:
            request.start_async({0: chunk}, share_inputs=True)
        parts: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for request, _ in running:
            request.wait()
            for part, port in zip(parts, self.outputs, strict=True):
                part.append(request.get_tensor(port).data.copy())
        return Prediction(*(torch.from_numpy(np.concatenate(part)) for part in parts))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """`predict(images).probabilities`."""
        return self.predict(images).probabilities


def check_outputs(names: Sequence[str], path: Path) -> None:
    """Refuse a graph whose outputs are not `OUTPUT_NAMES` in that order (another format).

    Raises:
        ValueError: Other outputs, e.g. a format 1 export (probabilities only).
    """
    if tuple(names) != OUTPUT_NAMES:
        raise ValueError(
            f"{path} has outputs {tuple(names)}, expected {OUTPUT_NAMES}: not an export of "
            "this format"
        )


def _output_ports(compiled: CompiledModel, path: Path) -> list[ConstOutput]:
    """The compiled model's output ports, checked to carry `OUTPUT_NAMES` in that order."""
    ports = list(compiled.outputs)
    carried = [next((n for n in OUTPUT_NAMES if n in p.get_names()), "?") for p in ports]
    check_outputs(carried, path)
    return ports


def open_backend(name: BackendName, exports: ModelExports) -> InferenceBackend:
    """The backend `name` of the model version in `exports`, exporting it first if needed.

    Raises:
        ValueError: An unknown name, or an export with other outputs.
        ImportError, RuntimeError, OSError: The runtime is missing or the export fails.
    """
    size = exports.predictor.config.input_size
    if name == "torch_fp32":
        return TorchBackend(name, exports.exact_predictor())
    if name == "torch":
        return TorchBackend(name, exports.exact_predictor().to("cpu", mixed_precision=True))
    if name == "onnxruntime":
        return OnnxRuntimeBackend(exports.onnx(), size)
    if name == "openvino":
        return OpenVinoBackend(exports.openvino(), size)
    raise ValueError(f"unknown inference backend {name!r}")


def create_backend(
    name: BackendName, predictor: Predictor, cache_dir: Path, *, weights: bytes | None = None
) -> InferenceBackend:
    """The backend `name` of `predictor`'s model version, exports cached under `cache_dir`."""
    return open_backend(name, ModelExports(predictor, cache_dir, weights))
