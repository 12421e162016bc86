"""`load_model` / `load_reviewer` ("champion" | "challenger" | version): ready to predict."""

from __future__ import annotations

from maskfind_pipeline.ml.config import ModelConfig
from maskfind_pipeline.ml.predict import Predictor
from maskfind_pipeline.ml.reviewer import Reviewer
from maskfind_pipeline.ml.reviewer_config import ReviewerSpec
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry


def load_model(registry: ModelRegistry, ref: str | int) -> Predictor:
    """Download, verify (sha256) and rebuild a version; aliases never fall back to latest."""
    stored = registry.download(ref)
    config = ModelConfig.from_json(stored.config_json)
    return Predictor.from_weights(config, stored.weights, version=stored.model.version)


def load_reviewer(registry: ModelRegistry, ref: str | int) -> Reviewer:
    """The reviewer `ref` names in a reviewer registry, verified and rebuilt like a model."""
    stored = registry.download(ref)
    spec = ReviewerSpec.from_json(stored.config_json)
    return Reviewer.from_weights(spec, stored.weights, version=stored.model.version)
