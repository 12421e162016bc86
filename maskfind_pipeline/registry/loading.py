"""`load_model("champion" | "challenger" | version)`: a ready predictor from the registry."""

from __future__ import annotations

from maskfind_pipeline.ml.predict import Predictor
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry


def load_model(registry: ModelRegistry, ref: str | int) -> Predictor:
    """Download, verify (sha256) and rebuild a version; aliases never fall back to latest."""
    model, config, weights = registry.download(ref)
    return Predictor.from_weights(config, weights, version=model.version)
