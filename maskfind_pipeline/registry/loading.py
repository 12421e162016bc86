"""`load_model` / `load_reviewer` ("champion" | "challenger" | version): ready to predict."""

from __future__ import annotations

from maskfind_pipeline.ml.config import ModelConfig
from maskfind_pipeline.ml.predict import Predictor
from maskfind_pipeline.ml.reviewer import Reviewer
from maskfind_pipeline.ml.reviewer_config import ReviewerSpec
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry


def load_model(registry: ModelRegistry, ref: str | int) -> Predictor:
    """Download, verify (sha256) and rebuild a version; aliases never fall back to latest."""
    model, config, weights = registry.download(ref)
    return Predictor.from_weights(ModelConfig.from_json(config), weights, version=model.version)


def load_reviewer(registry: ModelRegistry, ref: str | int) -> Reviewer:
    """The reviewer `ref` names in a reviewer registry, verified and rebuilt like a model."""
    model, spec, weights = registry.download(ref)
    return Reviewer.from_weights(ReviewerSpec.from_json(spec), weights, version=model.version)
