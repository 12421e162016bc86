"""A model version exported for the other runtimes, once, into a cache folder the caller gives.

The graph is `base.ProbabilityModel`: uint8 `images` (B,3,S,S) in, float32 `probabilities`
(B,1,S,S), `features` (B,D) and `flip_disagreement` (B,) out, in that order (format 3; format 1
had the probabilities only, format 2 no flip disagreement, and their entries have other keys,
so they are never loaded).

Layout: `<cache_dir>/backends/onnx-<key>/model.onnx` and `.../openvino-<key>/model.xml` (+
`model.bin`), each with a `manifest.json` (see `cache`). The ONNX key is the sha256 of the
weights' sha256 (safetensors bytes, `ml.segmentation.predict.weights_to_bytes`), the config's JSON
and the versions of the libraries that write the file (torch, onnx, onnxscript); the OpenVINO key
adds the ONNX key and OpenVINO's version, as its IR is converted from that ONNX file (about 1 s,
against 3 s for converting from torch, which also loses the static spatial dimensions).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from functools import cached_property
from pathlib import Path

import torch

from maskfind_pipeline.ml.backends.base import ProbabilityModel
from maskfind_pipeline.ml.backends.cache import cache_key, cached_entry
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes

EXPORT_FORMAT = "3"
"""Bump when `ProbabilityModel` or the export arguments change: every key changes with it.
1: probabilities only; 2: probabilities and features; 3: and the flip disagreement."""
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "features", "flip_disagreement")
"""The graph's outputs, in `ProbabilityModel`'s order (the runtimes check them on opening)."""
ONNX_FILE, OPENVINO_FILE = "model.onnx", "model.xml"


class ModelExports:
    """A predictor's model version and its exports under `cache_dir/backends`.

    Args:
        predictor: The model version (its weights and config; its device does not matter).
        cache_dir: The cache folder, e.g. beside the model version's files.
        weights: The version's safetensors bytes where the caller has them (else they are
            serialised from `predictor.model` when first needed).
    """

    def __init__(self, predictor: Predictor, cache_dir: Path, weights: bytes | None = None):
        self.predictor = predictor
        self.root = Path(cache_dir) / "backends"
        self._weights = weights

    @cached_property
    def weights(self) -> bytes:
        """The version's weights as safetensors bytes."""
        if self._weights is None:
            return weights_to_bytes(self.predictor.model)
        return self._weights

    @cached_property
    def onnx_inputs(self) -> dict[str, str]:
        """What the ONNX file depends on (its cache key's inputs)."""
        return {
            "format": EXPORT_FORMAT,
            "weights_sha256": hashlib.sha256(self.weights).hexdigest(),
            "config": self.predictor.config.to_json(),
            **_versions("torch", "onnx", "onnxscript"),
        }

    @cached_property
    def openvino_inputs(self) -> dict[str, str]:
        """What the OpenVINO IR depends on: the ONNX file it is converted from, and OpenVINO."""
        return {
            "format": EXPORT_FORMAT,
            "onnx": cache_key(self.onnx_inputs),
            **_versions("openvino"),
        }

    def exact_predictor(self) -> Predictor:
        """A fresh float32 CPU predictor of the version (the caller's model is left alone)."""
        config = self.predictor.config
        return Predictor.from_weights(config, self.weights, version=self.predictor.version)

    def onnx(self) -> Path:
        """The ONNX file (uint8 `images` (B,3,S,S) -> float32 `probabilities` (B,1,S,S),
        `features` (B,D), `flip_disagreement` (B,))."""
        entry = cached_entry(self.root, "onnx", self.onnx_inputs, self._export_onnx)
        return entry / ONNX_FILE

    def openvino(self) -> Path:
        """The OpenVINO IR's `.xml` (its weights lie beside it in `.bin`)."""
        entry = cached_entry(self.root, "openvino", self.openvino_inputs, self._convert_openvino)
        return entry / OPENVINO_FILE

    def _export_onnx(self, folder: Path) -> None:
        predictor = self.exact_predictor()
        model = ProbabilityModel(predictor.model, predictor.config).eval()
        export_onnx(model, predictor.config.input_size, folder / ONNX_FILE)

    def _convert_openvino(self, folder: Path) -> None:
        convert_to_openvino(self.onnx(), folder / OPENVINO_FILE)


def export_onnx(model: ProbabilityModel, size: int, path: Path) -> None:
    """Write `model` as one ONNX file with a dynamic batch dimension (torch's dynamo exporter),
    its outputs named `OUTPUT_NAMES`.

    The spatial size stays fixed at the model's input size `size`: that is all it is used at,
    and static shapes let the runtimes plan memory and pick kernels ahead.
    """
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def convert_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert the ONNX file to OpenVINO IR, keeping float32 weights (no fp16 compression)."""
    import openvino

    openvino.save_model(openvino.convert_model(onnx_path), xml_path, compress_to_fp16=False)


def _versions(*packages: str) -> dict[str, str]:
    return {package: importlib.metadata.version(package) for package in packages}
