"""Train the reviewer on a dataset version, judge it on image types it never saw, register it.

Training data are masks of the version's labeled images: real predictions of the champion, the
challenger and "fold" mask models trained briefly without a share of the types (their
predictions on those types are failures of the kind a new image type brings), plus degraded
true masks (`ml.reviewer_data`). The reviewer trains on all but the held-out types and is judged
on those, against the entropy and flip-disagreement baselines, on all masks and on real
predictions only. It is registered as `maskfind-reviewer` with alias `challenger`, and becomes
`champion` when its grade-3 AUC on the held-out types is not below the champion reviewer's on
the same masks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import DecodedArrays, build_decoded
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.flows.settings import ReviewerSettings
from maskfind_pipeline.flows.training import latest_version
from maskfind_pipeline.ml.predict import Predictor, weights_to_bytes
from maskfind_pipeline.ml.review_metrics import ReviewerEvaluation
from maskfind_pipeline.ml.reviewer_data import ReviewSamples, build_review_samples, split_by_type
from maskfind_pipeline.ml.reviewer_train import (
    ReviewerEpoch,
    ReviewerResult,
    evaluate_on,
    train_reviewer,
)
from maskfind_pipeline.ml.train import make_train_loaders, train
from maskfind_pipeline.registry.loading import load_model, load_reviewer
from maskfind_pipeline.registry.mlflow_registry import (
    ModelRegistry,
    RegisteredModel,
    TrainingRecord,
)
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION, promote
from maskfind_pipeline.storage.base import ObjectStore

Log = Callable[[str], None]


@dataclass(frozen=True)
class ReviewerOutcome:
    """The registered reviewer, how it was judged, and whether it became champion."""

    registered: RegisteredModel
    result: ReviewerResult
    dataset_version: str
    held_out_types: list[str]
    mask_models: list[str]
    samples: dict[str, dict[str, int]]
    unseen: ReviewerEvaluation
    unseen_real: ReviewerEvaluation
    champion_auc: float | None
    promoted: bool

    @property
    def auc_grade3(self) -> float:
        return self.unseen.scores["reviewer"].auc_grade3


def train_and_register_reviewer(
    settings: ReviewerSettings,
    *,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    registry: ModelRegistry,
    reviewers: ModelRegistry,
    tags: Mapping[str, str] | None = None,
    on_epoch: Callable[[ReviewerEpoch], None] | None = None,
    log: Log = lambda _: None,
) -> ReviewerOutcome:
    """Build graded masks, train the reviewer, judge it on held-out types, register, promote.

    Raises:
        LookupError: no dataset version, or no mask model registered yet.
    """
    vid = settings.dataset_version or latest_version(versions)
    models = _registered_mask_models(registry)
    size = models[0].config.input_size
    manifest = versions.manifest(vid)
    decoded = build_decoded(manifest, data_store, cache, decoded_root, version_id=vid, size=size)
    all_types = np.asarray(manifest.column("image_type").to_pylist(), dtype=object)
    held_out = list(settings.held_out_types) or _held_out(all_types, settings.held_out_count)
    folds = [
        _fold_model(settings, manifest, decoded, models[0], group, log)
        for group in _fold_groups(all_types, held_out, settings.fold_models)
    ]
    predictors = [m for m in models if m.config.input_size == size] + folds
    rows = _sample_rows(manifest, settings.max_images)
    types = all_types[rows]
    log(f"grading masks of {len(rows)} images by {len(predictors)} mask models")
    samples = build_review_samples(
        np.asarray(decoded.images[rows]),
        np.asarray(decoded.masks[rows]),
        types,
        predictors,
        degraded_share=settings.train.degraded_share,
        seed=settings.train.seed,
        grades=settings.spec.grades,
    )
    seen, unseen = split_by_type(samples.sample_types, held_out)
    train_part, val_part = _split_images(samples, seen, settings.val_share)
    result = train_reviewer(
        settings.spec, settings.train, train_part, val_part, on_epoch=on_epoch, progress_bar=False
    )
    judged = samples.take(unseen)
    _, evaluations = evaluate_on(result.model, settings.spec, judged)
    evaluation, real = evaluations["mix"], evaluations["real"]
    champion_auc = _champion_auc(reviewers, judged)
    record = _record(settings, vid, result, evaluation, real, samples, held_out, models, tags)
    registered = reviewers.log_training(record, alias=CHALLENGER)
    ours = evaluation.scores["reviewer"].auc_grade3
    promoted = champion_auc is None or ours >= champion_auc
    if promoted:
        evidence = [{"auc_grade3_unseen": ours, "champion_auc_grade3_unseen": champion_auc}]
        reason = "first reviewer" if champion_auc is None else "grade-3 AUC on unseen types"
        promote(
            reviewers, registered.version, actor="reviewer_model", reason=reason, evidence=evidence
        )
    return ReviewerOutcome(
        registered,
        result,
        vid,
        held_out,
        [p.version for p in predictors],
        samples.counts(settings.spec.grades),
        evaluation,
        real,
        champion_auc,
        promoted,
    )


def _registered_mask_models(registry: ModelRegistry) -> list[Predictor]:
    """The champion and the challenger (once each), the challenger first."""
    refs = [r for r in (CHALLENGER, CHAMPION) if registry.alias_or_none(r) is not None]
    if not refs:
        raise LookupError("no mask model is registered yet: materialize mask_model first")
    loaded = {}
    for ref in refs:
        predictor = load_model(registry, ref)
        loaded.setdefault(predictor.version, predictor)
    return list(loaded.values())


def _fold_groups(types: np.ndarray, held_out: list[str], folds: int) -> list[list[str]]:
    """The types each fold model never sees. The first fold model never sees the reviewer's
    held-out types, so judging on them includes failures of a model new to them; each further
    one leaves out a share of the others, so the reviewer also trains on such failures."""
    if folds < 1:
        return []
    others = sorted(set(types.tolist()) - set(held_out), key=_hash)
    groups = [others[k::folds] for k in range(folds - 1)] if len(others) > 1 else []
    return [held_out, *(g for g in groups if 0 < len(g) < len(others))]


def _fold_model(
    settings: ReviewerSettings,
    manifest: pa.Table,
    decoded: DecodedArrays,
    template: Predictor,
    held_out: list[str],
    log: Log,
) -> Predictor:
    """A mask model of `template`'s architecture trained without the `held_out` types."""
    log(f"fold model without {held_out}")
    types = manifest.column("image_type").to_pylist()
    splits = [
        "test" if t in held_out else s
        for t, s in zip(types, manifest.column("split").to_pylist(), strict=True)
    ]
    folded = manifest.set_column(
        manifest.schema.get_field_index("split"), "split", pa.array(splits, pa.string())
    )
    config = settings.fold_train
    result = train(
        template.config,
        config,
        make_train_loaders(folded, decoded, config),
        image_types=types,
        sources=manifest.column("source").to_pylist(),
        progress_bar=False,
    )
    weights = weights_to_bytes(result.model)
    name = "fold-" + "+".join(sorted(held_out))[:40]
    return Predictor.from_weights(result.config, weights, version=name)


def _sample_rows(manifest: pa.Table, limit: int | None) -> np.ndarray:
    """Up to `limit` manifest rows, a uniform sample by content hash, in manifest order."""
    ids = manifest.column("sample_id").to_pylist()
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    return np.sort(order[:limit] if limit else order)


def _held_out(types: np.ndarray, count: int) -> list[str]:
    names = sorted(set(types.tolist()), key=_hash)
    return sorted(names[: max(1, min(count, len(names) - 1))])


def _split_images(
    samples: ReviewSamples, seen: np.ndarray, val_share: float
) -> tuple[ReviewSamples, ReviewSamples]:
    """Training and validation samples of the seen types, split by image (never within one)."""
    picked = np.asarray([_hash(str(i)) % 1000 < val_share * 1000 for i in samples.image_index])
    return samples.take(seen & ~picked), samples.take(seen & picked)


def _champion_auc(reviewers: ModelRegistry, judged: ReviewSamples) -> float | None:
    """The champion reviewer's grade-3 AUC on the same held-out masks (None: no champion)."""
    if reviewers.alias_or_none(CHAMPION) is None:
        return None
    champion = load_reviewer(reviewers, CHAMPION)
    _, evaluations = evaluate_on(champion.model, champion.spec, judged)
    auc = evaluations["mix"].scores["reviewer"].auc_grade3
    return None if math.isnan(auc) else auc


def _record(
    settings: ReviewerSettings,
    vid: str,
    result: ReviewerResult,
    unseen: ReviewerEvaluation,
    real: ReviewerEvaluation,
    samples: ReviewSamples,
    held_out: list[str],
    models: list[Predictor],
    tags: Mapping[str, str] | None,
) -> TrainingRecord:
    plots = dict(result.plots)
    plots |= {f"unseen_{k}": v for k, v in unseen.plots("unseen types, all masks").items()}
    plots |= {f"unseen_real_{k}": v for k, v in real.plots("unseen types, predictions").items()}
    return TrainingRecord(
        config=settings.spec,
        weights=weights_to_bytes(result.model),
        dataset_version=vid,
        params=_params(settings, vid, result),
        history=result.history,
        metrics={**result.metrics(), **unseen.flat("unseen_"), **real.flat("unseen_real_")},
        plots=plots,
        tables={
            "unseen": unseen.rows(),
            "unseen_real": real.rows(),
            "samples": samples.counts(settings.spec.grades),
        },
        tags={
            "mask_model_version": models[0].version,
            "held_out_types": ",".join(held_out)[:4900],
            "stop_reason": result.stop_reason,
            "pretrained": str(result.pretrained).lower(),
            **(tags or {}),
        },
    )


def _params(settings: ReviewerSettings, vid: str, result: ReviewerResult) -> dict[str, Any]:
    run = {"dataset_version": vid, "device": result.device, "best_epoch": result.best_epoch}
    return settings.flat() | run


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
