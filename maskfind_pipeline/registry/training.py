"""Train on one dataset version and register the result: the core of the `mask_model` asset."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.ml.config import ModelConfig, TrainConfig
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.predict import weights_to_bytes
from maskfind_pipeline.ml.train import EpochReport, TrainResult, make_train_loaders, train
from maskfind_pipeline.registry.mlflow_registry import (
    ModelRegistry,
    RegisteredModel,
    TrainingRecord,
)
from maskfind_pipeline.storage.base import ObjectStore


@dataclass(frozen=True)
class TrainingOutcome:
    """The registered version and the training result behind it."""

    registered: RegisteredModel
    result: TrainResult
    dataset_version: str
    image_types: list[str]


def train_and_register(
    *,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    registry: ModelRegistry,
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset_version: str | None = None,
    tags: Mapping[str, str] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainingOutcome:
    """Train on `dataset_version` (default: the latest), register it with alias `challenger`."""
    vid = dataset_version or _latest(versions)
    manifest = versions.manifest(vid)
    decoded = build_decoded(
        manifest, data_store, cache, decoded_root, version_id=vid, size=model_config.input_size
    )
    settings = select_device(train_config.device, mixed_precision=train_config.mixed_precision)
    loaders = make_train_loaders(manifest, decoded, train_config, settings)
    image_types = manifest.column("image_type").to_pylist()
    result = train(
        model_config,
        train_config,
        loaders,
        image_types=image_types,
        sources=manifest.column("source").to_pylist(),
        settings=settings,
        on_epoch=on_epoch,
        progress=progress,
        progress_bar=progress is None,
    )
    seen = sorted(
        set(
            t
            for t, s in zip(image_types, manifest.column("split").to_pylist(), strict=True)
            if s == "train"
        )
    )
    record = TrainingRecord(
        config=result.config,
        weights=weights_to_bytes(result.model),
        dataset_version=vid,
        params=_params(model_config, train_config, vid, result),
        history=result.history,
        metrics=result.metrics(),
        plots=result.plots,
        tables={"val_metrics": result.val_metrics.rows(), "threshold_curve": _curve(result)},
        tags={
            "image_types_seen": ",".join(seen)[:4900],
            "stop_reason": result.stop_reason,
            "pretrained": str(result.pretrained).lower(),
            **(tags or {}),
        },
    )
    return TrainingOutcome(registry.log_training(record, alias="challenger"), result, vid, seen)


def _latest(versions: VersionStore) -> str:
    card = versions.latest()
    if card is None:
        raise LookupError(
            "no dataset version has been published yet: materialize dataset_version first"
        )
    return str(card["id"])


def _params(
    model: ModelConfig, config: TrainConfig, vid: str, result: TrainResult
) -> dict[str, Any]:
    params = {f"model.{k}": v for k, v in model.__dict__.items()}
    params |= {f"train.{k}": v for k, v in config.__dict__.items() if k != "extra"}
    params |= {"dataset_version": vid, "device": result.device, "best_epoch": result.best_epoch}
    return params


def _curve(result: TrainResult) -> dict[str, Any]:
    curve = result.threshold.curve
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in curve.__dict__.items()}
