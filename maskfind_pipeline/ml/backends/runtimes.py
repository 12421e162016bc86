"""The backends: torch (bf16 where native, and exact float32), ONNX Runtime, OpenVINO.

Every backend uses `torch.get_num_threads()` threads, read when it is opened, so all of them
compete on the same cores. OpenVINO runs with its THROUGHPUT hint: it picks the number of
streams for those threads (2 streams of 1 thread on 2 cores) and each batch is split across
that many parallel infer requests; on 2 cores this matched one 2-thread stream (51.5 vs 51.1
images/s, ResNet-34 U-Net 256², batch 32) and on more cores several streams keep each one's
threads busy. A single image then runs on one stream's threads only: production predicts
batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskfind_pipeline.ml.backends.base import InferenceBackend, check_images
from maskfind_pipeline.ml.backends.config import BackendName
from maskfind_pipeline.ml.backends.exports import INPUT_NAME, OUTPUT_NAME, ModelExports
from maskfind_pipeline.ml.predict import Predictor


@dataclass(frozen=True)
class TorchBackend:
    """A `Predictor` as a backend (its own device settings decide the precision)."""

    name: str
    predictor: Predictor

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.predictor.config.input_size)
        return torch.sigmoid(self.predictor.logits(images)).cpu()


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

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.size)
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images.contiguous().numpy()})
        return torch.from_numpy(out)


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
        count = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.compiled.create_infer_request() for _ in range(count)]

    @property
    def precision(self) -> str:
        """The inference precision the plugin chose (e.g. bf16)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.size)
        batch = images.contiguous().numpy()
        chunks = [c for c in np.array_split(batch, len(self.requests)) if len(c)]
        running = list(zip(self.requests, chunks, strict=False))
        for request, chunk in running:
            request.start_async({0: chunk}, share_inputs=True)
        outputs = []
        for request, _ in running:
            request.wait()
            outputs.append(request.get_output_tensor(0).data.copy())
        return torch.from_numpy(np.concatenate(outputs))


def open_backend(name: BackendName, exports: ModelExports) -> InferenceBackend:
    """The backend `name` of the model version in `exports`, exporting it first if needed.

    Raises:
        ValueError: An unknown name.
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
