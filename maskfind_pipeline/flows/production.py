"""Predict one production day with the champion: resolve the champion, its grader and novelty
model once, pick the inference backend by measurement, run the day (`serving.day.predict_day`:
prefetch, batches, mask writes and log commits) and report what predicted it and how.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from maskfind_pipeline.data.production import OK, PredictionLog
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.backends.choose import configured_backend
from maskfind_pipeline.ml.novelty.fit_features import encoder_features, feature_predictor
from maskfind_pipeline.ml.novelty.model import DayAlarm, NoveltyConfig, day_alarms, from_files
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.registry.loading import load_grader
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHAMPION
from maskfind_pipeline.serving.day import DayOutcome, ProductionModels, Progress, Row, predict_day
from maskfind_pipeline.storage.base import ObjectStore


class NoChampion(LookupError):
    """Production needs a champion and there is none yet."""


@dataclass(frozen=True)
class DayReport:
    """A run over a production day: what it did, the day's log, what predicted it and how."""

    outcome: DayOutcome
    day_rows: list[Row]
    champion_version: str
    reviewer_version: str | None
    backend: str
    backend_speeds: list[dict[str, object]]
    threshold: float
    alarms: list[DayAlarm] = field(default_factory=list)
    """Image types with many images above the novelty threshold that day."""
    reviewer_runtime: str | None = None
    """Where the reviewer CNN ran (None when the grades read no CNN)."""
    reviewer_speeds: list[dict[str, object]] = field(default_factory=list)


def predict_production_day(
    day: str,
    options: ProductionOptions,
    *,
    registry: ModelRegistry,
    reviewers: ModelRegistry,
    data_store: ObjectStore,
    work_store: ObjectStore,
    cache_root: Path,
    run_id: str,
    progress: Progress | None = None,
) -> DayReport:
    """Resolve the champion and the reviewer once, pick the backend, predict the day.

    Raises:
        NoChampion: no model has been promoted yet.
    """
    champion = registry.alias_or_none(CHAMPION)
    if champion is None:
        raise NoChampion(
            f"registered model {registry.model_name!r} has no champion yet: promote a model "
            "first (the nightly job's promotion, or the promote_model job)"
        )
    download = registry.download(champion.version)
    config = ModelConfig.from_json(download.config_json)
    predictor = Predictor.from_weights(config, download.weights, version=champion.version)
    choice = configured_backend(
        options.backend,
        predictor,
        cache_root / "backends",
        batch_size=options.batch_size,
        weights=download.weights,
    )
    grader = (
        load_grader(reviewers, CHAMPION).ready(
            cache_root / "reviewer", batch_size=options.batch_size
        )
        if reviewers.alias_or_none(CHAMPION)
        else None
    )
    novelty = from_files(download.files)
    reference = feature_predictor(config, novelty.config) if novelty else None
    models = ProductionModels(
        champion.version,
        config,
        choice.backend.predict,
        choice.backend.name,
        grader,
        novelty,
        partial(encoder_features, reference) if reference else None,
    )
    outcome = predict_day(
        day,
        models,
        data_store=data_store,
        work_store=work_store,
        options=options,
        run_id=run_id,
        progress=progress,
    )
    speeds = [{"backend": k, "images_per_second": round(v, 1)} for k, v in choice.rates.items()]
    speeds += [{"backend": k, "skipped": why} for k, why in choice.skipped.items()]
    day_rows = PredictionLog(work_store, day).current().to_pylist()
    return DayReport(
        outcome,
        day_rows,
        champion.version,
        grader.version if grader else None,
        choice.backend.name,
        speeds,
        config.threshold,
        novelty_alarms(day_rows, novelty.config) if novelty else [],
        grader.runtime if grader else None,
        [
            {"runtime": k, "images_per_second": round(v, 1)}
            for k, v in (grader.runtime_rates if grader else {}).items()
        ],
    )


def novelty_alarms(rows: Iterable[Row], config: NoveltyConfig) -> list[DayAlarm]:
    """`ml.novelty.model.day_alarms` over a day's log rows that have a novelty flag."""
    scored = [r for r in rows if r["status"] == OK and r.get("novel") is not None]
    types = [str(r.get("image_type") or "(unknown)") for r in scored]
    return day_alarms(types, np.array([bool(r["novel"]) for r in scored], dtype=bool), config)
