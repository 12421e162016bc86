"""`load_model` / `load_reviewer` / `load_grader` ("champion" | "challenger" | version): ready
to predict or grade."""

from __future__ import annotations

from maskfind_pipeline.ml.reviewer.config import ReviewerSpec
from maskfind_pipeline.ml.reviewer.grader import GRADE_MODEL_FILE, Grader
from maskfind_pipeline.ml.reviewer.grading import GradeModel
from maskfind_pipeline.ml.reviewer.model import ReviewerModel
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.records import RegistryError


def load_model(registry: ModelRegistry, ref: str | int) -> Predictor:
    """Download, verify (sha256) and rebuild a version; aliases never fall back to latest."""
    stored = registry.download(ref)
    config = ModelConfig.from_json(stored.config_json)
    return Predictor.from_weights(config, stored.weights, version=stored.model.version)


def load_reviewer(registry: ModelRegistry, ref: str | int) -> ReviewerModel:
    """The CNN reviewer `ref` names in a reviewer registry, verified and rebuilt like a model."""
    stored = registry.download(ref)
    spec = ReviewerSpec.from_json(stored.config_json)
    return ReviewerModel.from_weights(spec, stored.weights, version=stored.model.version)


def load_grader(registry: ModelRegistry, ref: str | int) -> Grader:
    """The grader `ref` names in a reviewer registry: its grade model and, only where that
    reads it (or a version from before grade models), its CNN.

    Raises:
        RegistryError: the stored grade model does not parse.
    """
    stored = registry.download(ref)
    version = stored.model.version
    text = stored.files.get(GRADE_MODEL_FILE)
    try:
        model = GradeModel.from_json(text.decode()) if text is not None else None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise RegistryError(f"reviewer version {version}: unreadable grade model: {exc}") from None
    reviewer = None
    if model is None or model.uses_reviewer:
        spec = ReviewerSpec.from_json(stored.config_json)
        reviewer = ReviewerModel.from_weights(spec, stored.weights, version=version)
    return Grader(version, model, reviewer)
