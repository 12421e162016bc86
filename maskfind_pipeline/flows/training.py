"""Train on one dataset version and register the result with alias `challenger`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import DecodedArrays, build_decoded, fit_to_budget
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.data.versions import counts
from maskfind_pipeline.flows.options import TrainingOptions
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.novelty.fit_features import fit_novelty
from maskfind_pipeline.ml.novelty.model import NoveltyModel, to_files
from maskfind_pipeline.ml.segmentation.config import ModelConfig, ModelSpec
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes
from maskfind_pipeline.ml.segmentation.train import (
    EpochReport,
    TrainResult,
    make_train_loaders,
    train,
)
from maskfind_pipeline.registry.attempts import resume
from maskfind_pipeline.registry.datasets import DatasetRef, version_datasets
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION
from maskfind_pipeline.registry.records import RegisteredModel, TrainingRecord
from maskfind_pipeline.storage.base import ObjectStore


@dataclass(frozen=True)
class TrainingOutcome:
    """The registered version and the training result behind it."""

    registered: RegisteredModel
    result: TrainResult
    dataset_version: str
    image_types: list[str]
    novelty: NoveltyModel

    def summary(self) -> dict[str, str | int | float | bool | None]:
        """The scalars a materialization shows: version, run, dataset, threshold, metrics."""
        result, model = self.result, self.registered
        overall = result.val_metrics.overall
        return {
            "model_version": model.version,
            "mlflow_run_id": model.run_id,
            "dataset_version": self.dataset_version,
            "threshold": result.config.threshold,
            "val_miou": overall.miou,
            "val_precision": overall.precision,
            "val_recall": overall.recall,
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "pretrained": result.pretrained,
            "precision": result.device.get("precision", ""),
            "precision_source": result.device.get("precision_source", ""),
            "warm_start_from": model.tags.get("warm_start_from") or "none",
            "image_types_seen": len(self.image_types),
            "novelty_threshold": self.novelty.threshold,
            "novelty": self.novelty.config.method,
        }


@dataclass(frozen=True)
class VersionData:
    """A dataset version's manifest and its decoded arrays at the model's input size."""

    version: str
    manifest: pa.Table
    decoded: DecodedArrays
    train_share: float = 1.0
    """The share of the version's train split trained on (below 1 past the decoded budget)."""
    source: str = ""
    """Where the version's manifest lies (`VersionStore.manifest_uri`)."""

    def column(self, name: str) -> list[Any]:
        return self.manifest.column(name).to_pylist()


def train_and_register(
    options: TrainingOptions,
    *,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    registry: ModelRegistry,
    tags: Mapping[str, str] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainingOutcome:
    """Train on `options.dataset_version` (default: the latest), register it as `challenger`.

    Raises:
        LookupError: no dataset version has been published yet.
    """
    vid = options.dataset_version or latest_version(versions)
    # The run exists from the start: the machine's load while decoding and training is on it
    # (MLflow system metrics); a failure marks it FAILED.
    with registry.training_run(vid, tags or {}) as run_id:
        data = load_version(vid, options, versions, data_store, cache, decoded_root)
        config = options.train
        device = select_device(config.device, mixed_precision=config.mixed_precision)
        start = warm_start(registry, options.model) if options.warm_start else None
        result = train(
            options.model,
            config,
            make_train_loaders(data.manifest, data.decoded, config, device),
            image_types=data.column("image_type"),
            sources=data.column("source"),
            placement=device,
            on_epoch=on_epoch,
            progress=progress,
            progress_bar=progress is None,
            initial_state=start.model.state_dict() if start else None,
        )
    return register(options, data, result, registry, start, tags, run_id=run_id)


def resume_training(registry: ModelRegistry, training_key: str) -> RegisteredModel | None:
    """What earlier attempts at training `training_key` left (a retry's first step): the version
    one of them registered before it was killed, verified and `challenger`; None when the
    training must run, every earlier attempt marked failed (`registry.attempts`)."""
    return resume(registry, training_key, alias=CHALLENGER)


def load_version(
    vid: str,
    options: TrainingOptions,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
) -> VersionData:
    """The manifest of dataset version `vid`, decoded at the model's input size (each sample's
    pixels decoded once, shared with earlier versions). A version whose pixels do not fit the
    decoded store's budget is trained on its val rows and a content-hash share of its train
    rows (`data.decoded.fit_to_budget`; the share is logged as tag `train_share`)."""
    fitted = fit_to_budget(versions.manifest(vid), options.model.input_size)
    decoded = build_decoded(
        fitted.manifest,
        data_store,
        cache,
        decoded_root,
        version_id=vid,
        size=options.model.input_size,
    )
    return VersionData(
        vid, fitted.manifest, decoded, fitted.train_share, versions.manifest_uri(vid)
    )


def register(
    options: TrainingOptions,
    data: VersionData,
    result: TrainResult,
    registry: ModelRegistry,
    start: Predictor | None,
    tags: Mapping[str, str] | None,
    *,
    run_id: str | None = None,
) -> TrainingOutcome:
    """Fit the novelty score on the trained model, log the run (`run_id`, from
    `ModelRegistry.training_run`, or a new one) and register it as `challenger`."""
    vid, image_types, splits = data.version, data.column("image_type"), data.column("split")
    seen = sorted({t for t, s in zip(image_types, splits, strict=True) if s == "train"})
    weights = weights_to_bytes(result.model)
    novelty = fit_novelty(
        Predictor.from_weights(result.config, weights),
        data.decoded.images,
        image_types,
        splits,
        options.novelty,
    )
    record = TrainingRecord(
        config=result.config,
        weights=weights,
        dataset_version=vid,
        params=_params(options, vid, result),
        history=result.history,
        metrics={**result.metrics(), **_novelty_metrics(novelty)},
        files=to_files(novelty),
        datasets=_datasets(data),
        plots=result.plots,
        tables={"val_metrics": result.val_metrics.rows(), "threshold_curve": _curve(result)},
        tags={
            "image_types_seen": ",".join(seen)[:4900],
            "stop_reason": result.stop_reason,
            "pretrained": str(result.pretrained).lower(),
            "precision": result.device.get("precision", ""),
            "precision_source": result.device.get("precision_source", ""),
            "warm_start_from": start.version if start else "",
            **({"train_share": f"{data.train_share:.4f}"} if data.train_share < 1 else {}),
            **(tags or {}),
        },
    )
    registered = registry.log_training(record, alias=CHALLENGER, run_id=run_id)
    return TrainingOutcome(registered, result, vid, seen, novelty)


def warm_start(registry: ModelRegistry, spec: ModelSpec) -> Predictor | None:
    """The champion, when there is one with the architecture of `spec` (any threshold)."""
    champion = registry.alias_or_none(CHAMPION)
    if champion is None:
        return None
    stored = registry.download(champion.version)
    config = ModelConfig.from_json(stored.config_json)
    same = config.model_dump(exclude={"threshold"}) == spec.model_dump(exclude={"threshold"})
    return (
        Predictor.from_weights(config, stored.weights, version=champion.version) if same else None
    )


def latest_version(versions: VersionStore) -> str:
    """The id of the newest dataset version; LookupError when there is none."""
    card = versions.latest()
    if card is None:
        raise LookupError(
            "no dataset version has been published yet: materialize dataset_version first"
        )
    return str(card["id"])


def _params(options: TrainingOptions, vid: str, result: TrainResult) -> dict[str, Any]:
    """Flat MLflow params: `model.<field>`, `train.<field>`, `train.augment.<field>`, ..."""
    run = {"dataset_version": vid, "device": result.device, "best_epoch": result.best_epoch}
    return options.flat() | run


def _datasets(data: VersionData) -> list[DatasetRef]:
    """The train and val splits trained and validated on (rows as trained: past the decoded
    budget, the train split's share), as MLflow dataset inputs."""
    card = {"id": data.version, "counts": counts(data.manifest)}
    return version_datasets(card, data.source, ("train", "val"), schema=data.manifest.schema)


def _novelty_metrics(novelty: NoveltyModel) -> dict[str, float]:
    assert novelty.threshold is not None
    share = novelty.info["val_flagged"] / max(1, novelty.info["n_val"])
    return {"novelty_threshold": novelty.threshold, "novelty_val_flagged_share": share}


def _curve(result: TrainResult) -> dict[str, Any]:
    curve = result.threshold.curve
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in curve.__dict__.items()}
