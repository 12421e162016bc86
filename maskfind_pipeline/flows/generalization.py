"""The generalization study: train on the first k image types of a dataset version, test on all.

`plan_study` reads which image types the dataset version holds and plans the trainings
(`evaluation.generalization.plan_steps`); `run_study_step` does one of them: the version's rows
of the seen types (splits kept) train a model with `ml.segmentation.train.train`, and
`ml.segmentation.inference` evaluates it on the test split of every type. Nothing is registered:
study models are thrown away. torch is imported inside the functions that train and test, so the
options load with the definitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import Field

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import DecodedArrays, build_decoded, manifest_fingerprint
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.evaluation.generalization import (
    StepOutcome,
    StudyStep,
    TypeScore,
    epochs_for,
    plan_steps,
    restrict,
    study_order,
)
from maskfind_pipeline.ml.segmentation.config import ModelSpec, TrainConfig, demo_model_spec
from maskfind_pipeline.storage.base import ObjectStore
from maskfind_pipeline.synthetic import DEFAULT_TYPES

if TYPE_CHECKING:
    from maskfind_pipeline.ml.segmentation.predict import Predictor
    from maskfind_pipeline.ml.segmentation.train import EpochReport


class StudyOptions(CoreConfig):
    """What the generalization study trains and tests; the defaults take about 7 minutes on
    2 CPU cores with 60 images of each of the 10 synthetic image types at 128 px."""

    dataset_version: str | None = None
    """The dataset version studied; null: the latest."""
    image_types: tuple[str, ...] = tuple(t.name for t in DEFAULT_TYPES)
    """The order image types join training (k = 1 trains on the first). Listed types the
    version lacks are skipped; its types not listed follow the listed ones, by name."""
    max_k: int = Field(default=5, ge=1)
    """Trainings on the first k types for k = 1..max_k (at most all types but one), plus one
    on every type: the reference."""
    images_per_type: int | None = Field(default=60, ge=1)
    """Images of each type used at most (the first by content hash; splits kept); null: all."""
    images_seen: int | None = Field(default=3000, ge=1)
    """Training images each training sees: its epochs are this over the size of its train
    split, rounded up, so every k gets the same compute and the result does not depend on the
    machine's load; null: `train.epochs`. `train.max_minutes` still caps each training."""
    model: ModelSpec = demo_model_spec(128)
    """The architecture every training of the study builds."""
    train: TrainConfig = TrainConfig(
        epochs=30,
        batch_size=32,
        learning_rate=3e-3,
        early_stopping_patience=10,
        max_minutes=3.0,
    )
    """The hyper-parameters and time cap of each training (`seed` seeds every one of them)."""


@dataclass(frozen=True)
class StudyTask:
    """One training of a study, as the plan hands it to whoever runs it."""

    options: StudyOptions
    dataset_version: str
    order: tuple[str, ...]
    step: StudyStep


def plan_study(options: StudyOptions, versions: VersionStore) -> list[StudyTask]:
    """One task per training (k = 1..max_k, then all types) on the options' dataset version.

    Raises:
        LookupError: no dataset version has been published yet.
        VersionNotFound: the named dataset version does not exist.
        ValueError: the version holds fewer than two image types.
    """
    card = versions.card(options.dataset_version) if options.dataset_version else versions.latest()
    if card is None:
        raise LookupError(
            "no dataset version has been published yet: materialize dataset_version first"
        )
    order = tuple(study_order(options.image_types, card["counts"]))
    return [
        StudyTask(options, str(card["id"]), order, step)
        for step in plan_steps(order, options.max_k)
    ]


def run_study_step(
    task: StudyTask,
    *,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> StepOutcome:
    """Train on the task's seen types (train and val splits), test on every type's test split."""
    from maskfind_pipeline.ml.device import select_device
    from maskfind_pipeline.ml.segmentation.predict import Predictor
    from maskfind_pipeline.ml.segmentation.train import make_train_loaders, train

    options = task.options
    studied = restrict(versions.manifest(task.dataset_version), task.order, options.images_per_type)
    seen = restrict(studied, task.step.seen)

    def decoded(manifest: pa.Table) -> DecodedArrays:
        return _decoded(manifest, task, data_store, cache, decoded_root)

    config = _train_config(options, seen)
    device = select_device(config.device, mixed_precision=config.mixed_precision)
    start = time.perf_counter()
    result = train(
        options.model,
        config,
        make_train_loaders(seen, decoded(seen), config, device),
        image_types=seen.column("image_type").to_pylist(),
        sources=seen.column("source").to_pylist(),
        placement=device,
        on_epoch=on_epoch,
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    predictor = Predictor(result.model, result.config).to(
        config.device, mixed_precision=config.mixed_precision
    )
    return StepOutcome(
        step=task.step,
        dataset_version=task.dataset_version,
        test=_test_scores(predictor, studied, decoded(studied)),
        epochs=len(result.history),
        stop_reason=result.stop_reason,
        seconds=seconds,
    )


def _train_config(options: StudyOptions, seen: pa.Table) -> TrainConfig:
    """`options.train`, with the epochs that show it `images_seen` training images."""
    if options.images_seen is None:
        return options.train
    train_images = seen.column("split").to_pylist().count("train")
    epochs = epochs_for(options.images_seen, train_images)
    return options.train.model_copy(update={"epochs": epochs})


def _test_scores(
    predictor: Predictor, manifest: pa.Table, decoded: DecodedArrays
) -> dict[str, TypeScore]:
    """The predictor's test mIoU on each image type of the manifest
    (`ml.segmentation.inference`)."""
    from maskfind_pipeline.data.loader import make_loaders
    from maskfind_pipeline.ml.segmentation.inference import evaluate_loader

    loaders = make_loaders(manifest, decoded, batch_size=32, augment=None, seed=0)
    if "test" not in loaders:
        raise ValueError("the studied part of the dataset version has no test samples")
    metrics = evaluate_loader(
        predictor.model,
        predictor.config,
        loaders["test"],
        image_types=manifest.column("image_type").to_pylist(),
        sources=manifest.column("source").to_pylist(),
        placement=predictor.placement,
    )
    return {t: TypeScore(m.miou, m.n_images) for t, m in metrics.by_image_type.items()}


def _decoded(
    manifest: pa.Table, task: StudyTask, store: ObjectStore, cache: ContentCache, root: Path
) -> DecodedArrays:
    """The decoded cache of a part of a version, named by its content (never the version's)."""
    size = task.options.model.input_size
    name = f"{task.dataset_version}-study-{manifest_fingerprint(manifest, size)[:12]}"
    return build_decoded(manifest, store, cache, root, version_id=name, size=size)
