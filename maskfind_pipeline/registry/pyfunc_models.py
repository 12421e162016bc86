"""The registry's models as MLflow pyfunc models, for `mlflow models serve` and
`mlflow.pyfunc.load_model("models:/maskfind-unet@champion")`.

Each version is saved as a *model from code* (`save_pyfunc`): its `python_model` is a code file
in `registry/pyfunc_code/` that only calls `mlflow.models.set_model` on a class below; its
weights, config and further files are the pyfunc's artifacts (`artifacts/weights.safetensors`,
`artifacts/config.json`, ...), and `load_context` checks the weights' sha256, rebuilds the
network from the JSON and reads the tensors with safetensors. Nothing is pickled.

Both take and return one row per image, images as PNG or JPEG file bytes in binary columns
(base64 strings in a REST request's `dataframe_split` or `dataframe_records`, and in the answer):

- mask model: input `image`; output `mask` (a 0/255 greyscale PNG of the image's size, what
  production writes as `<id>.mask.png`) and `mask_fraction`; with the parameter
  `probabilities: true` also `probabilities` (a greyscale PNG of round(p * 255)).
- reviewer: input `image`, `probabilities` (that PNG, the image's size) and `threshold` (the mask
  model's), optionally the mask model's `flip_disagreement` and `novelty` of the image (unknown
  when left out); output `grade` (1, 2 or 3) and `p_grade1`, `p_grade2`, `p_grade3`, from the
  version's grade model (`ml.reviewer.grader`). Production grades at the mask model's input size:
  send image and map at that size for its numbers.

The per-row work is `ml.encoded`'s, so a served mask equals `load_model(...).predict_mask`'s.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.ml.encoded import each_row, grade_outputs, mask_outputs, png
from maskfind_pipeline.ml.reviewer.config import ReviewerSpec
from maskfind_pipeline.ml.reviewer.grader import GRADE_MODEL_FILE, Grader
from maskfind_pipeline.ml.reviewer.grading import GradeModel
from maskfind_pipeline.ml.reviewer.model import ReviewerModel
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.registry.records import CONFIG_FILE, WEIGHTS_FILE

WEIGHTS = "weights"
CONFIG = "config"
WEIGHTS_SHA256 = "weights_sha256"
"""The `model_config` key holding the weights' sha256, checked before they are read."""
CODE = Path(__file__).with_name("pyfunc_code")
MASK_COLUMNS = ["mask", "mask_fraction"]
GRADE_COLUMNS = ["grade", "p_grade1", "p_grade2", "p_grade3"]
GRADE_SIGNALS = ("flip_disagreement", "novelty")
"""The reviewer's optional inputs: signals only the mask model's production pass has."""
REQUIREMENTS = (
    "maskfind_pipeline",
    "mlflow",
    "torch",
    "segmentation-models-pytorch",
    "safetensors",
    "pillow",
    "numpy",
    "pandas",
)


class AlteredWeights(ValueError):
    """A logged model's weights whose sha256 is not the one recorded when it was logged."""


def save_pyfunc(
    path: Path,
    *,
    config: CoreConfig,
    files: Mapping[str, bytes],
    model: Model | None = None,
) -> None:
    """Save a mask model (`ModelConfig`) or reviewer (`ReviewerSpec`) as a pyfunc model from
    code at `path`, a folder that must not exist yet.

    Args:
        config: the model's config; `config.json` is its JSON.
        files: the weights (`WEIGHTS_FILE`) and any further files to keep beside them, by
            file name.
        model: the MLmodel to fill (e.g. one naming its LoggedModel and run).
    """
    reviewer = isinstance(config, ReviewerSpec)
    weights = files[WEIGHTS_FILE]
    with tempfile.TemporaryDirectory() as tmp:
        named = {**files, CONFIG_FILE: config.to_json().encode()}
        for name, data in named.items():
            Path(tmp, name).write_bytes(data)
        artifacts = {_artifact_name(name): str(Path(tmp, name)) for name in named}
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(CODE / ("reviewer_model.py" if reviewer else "mask_model.py")),
            artifacts=artifacts,
            model_config={WEIGHTS_SHA256: hashlib.sha256(weights).hexdigest()},
            signature=reviewer_signature() if reviewer else mask_signature(),
            input_example=reviewer_example() if reviewer else mask_example(),
            pip_requirements=requirements(),
            mlflow_model=model,
        )


def _artifact_name(file_name: str) -> str:
    return {WEIGHTS_FILE: WEIGHTS, CONFIG_FILE: CONFIG}.get(file_name, file_name)


def requirements() -> list[str]:
    """The served model's pip requirements: this package and what it predicts with, pinned to
    the versions installed here (written down, never inferred by loading the model)."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def mask_signature() -> ModelSignature:
    """Input `image` bytes; output `mask` PNG bytes, `mask_fraction`, optional `probabilities`."""
    return ModelSignature(
        inputs=_schema(ColSpec(DataType.binary, "image")),
        outputs=_schema(
            ColSpec(DataType.binary, "mask"),
            ColSpec(DataType.double, "mask_fraction"),
            ColSpec(DataType.binary, "probabilities", required=False),
        ),
        params=ParamSchema([ParamSpec("probabilities", DataType.boolean, False)]),
    )


def reviewer_signature() -> ModelSignature:
    """Input `image` and `probabilities` bytes and `threshold`; output the grade and its odds."""
    return ModelSignature(
        inputs=_schema(
            ColSpec(DataType.binary, "image"),
            ColSpec(DataType.binary, "probabilities"),
            ColSpec(DataType.double, "threshold"),
            *(ColSpec(DataType.double, name, required=False) for name in GRADE_SIGNALS),
        ),
        outputs=_schema(
            ColSpec(DataType.long, "grade"),
            *(ColSpec(DataType.double, name) for name in GRADE_COLUMNS[1:]),
        ),
    )


def _schema(*columns: ColSpec) -> Schema:
    specs: list[ColSpec | TensorSpec] = list(columns)
    return Schema(specs)


def example_image(height: int = 24, width: int = 32) -> np.ndarray:
    """A small RGB image, a bright square on a dark ground: the logged input examples' image."""
    pixels = np.full((height, width, 3), 40, dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 200
    return pixels


def mask_example() -> pd.DataFrame:
    return pd.DataFrame({"image": [png(example_image())]})


def reviewer_example() -> pd.DataFrame:
    image = example_image()
    probabilities = np.where(image[..., 0] > 100, 230, 10).astype(np.uint8)
    return pd.DataFrame(
        {"image": [png(image)], "probabilities": [png(probabilities)], "threshold": [0.5]}
    )


def _verified_weights(context: PythonModelContext) -> bytes:
    weights = Path(context.artifacts[WEIGHTS]).read_bytes()
    expected = (context.model_config or {}).get(WEIGHTS_SHA256)
    found = hashlib.sha256(weights).hexdigest()
    if expected and found != expected:
        raise AlteredWeights(f"weights sha256 {found[:12]}… is not the logged {expected[:12]}…")
    return weights


def _config_json(context: PythonModelContext) -> str:
    return Path(context.artifacts[CONFIG]).read_text()


class MaskPyfunc(PythonModel):
    """A registered mask model version: image bytes in, mask PNG out (see the module doc)."""

    def load_context(self, context: PythonModelContext) -> None:
        config = ModelConfig.from_json(_config_json(context))
        self.predictor = Predictor.from_weights(config, _verified_weights(context))

    def predict(  # pyright: ignore[reportIncompatibleMethodOverride] (the base has no types)
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        with_probabilities = bool((params or {}).get("probabilities", False))
        rows = each_row(
            model_input["image"],
            lambda data: mask_outputs(self.predictor, data, probabilities=with_probabilities),
        )
        columns = MASK_COLUMNS + ["probabilities"] * with_probabilities
        return pd.DataFrame(rows, columns=columns)


class ReviewerPyfunc(PythonModel):
    """A registered reviewer version: image, probability map and threshold in, grade out."""

    def load_context(self, context: PythonModelContext) -> None:
        spec = ReviewerSpec.from_json(_config_json(context))
        reviewer = ReviewerModel.from_weights(spec, _verified_weights(context))
        path = context.artifacts.get(GRADE_MODEL_FILE)
        model = GradeModel.from_json(Path(path).read_text()) if path else None
        self.grader = Grader("", model, reviewer)

    def predict(  # pyright: ignore[reportIncompatibleMethodOverride] (the base has no types)
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        unknown = pd.Series(np.nan, index=model_input.index)
        columns = [model_input[name] for name in ("image", "probabilities", "threshold")]
        columns += [
            model_input[name] if name in model_input.columns else unknown for name in GRADE_SIGNALS
        ]
        rows = each_row(zip(*columns, strict=True), lambda row: grade_outputs(self.grader, *row))
        return pd.DataFrame(rows, columns=GRADE_COLUMNS)
