"""Train the grader of production masks on a dataset version, judged as production uses it.

The masks it learns from and is judged on are real ones, of images no mask model trained on:

- `champion`: the champion's masks of the version's val and test images (every type);
- `fold`: the masks of "fold" mask models, each trained with the champion's architecture and
  recipe on all types but one fold of them, on every image of the types it never saw: what
  the champion does with a new image type;
- `failure`: every relabeled production image (`failures/<id>`, source `failure`) with the
  mask of the model version that failed on it, re-predicted: the loop's real failures;
- `degraded`: true masks degraded to a target IoU (the CNN reviewer's training only).

Image types are dealt into folds (`ml.reviewer.grading.type_folds`); every type is held out once.
Per fold, the CNN reviewer trains on the other folds' masks (fold models' and degraded ones
included) and scores this fold's, and every scorer (`ml.reviewer.grading.SCORERS`: the free
signals alone, together, the CNN, everything) is fitted and calibrated on the other folds'
**champion** masks (`champion` and `failure`: what production grades), so every score is out of
fold, on types the scorer never saw. They are compared on those masks, and the grade production
writes comes from the winner, refitted and calibrated on all of them. Where the champion's masks
are not graded both ways often enough, the fold models' masks join them (`WITH_FOLD_MODELS`). The
fold models' masks are reported apart. A CNN that does not beat the best free signal is not what
grades, and the outcome says why. The version becomes `champion` when its winner's grade-3 AUC
is not below the champion grader's on the same masks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import DecodedArrays, build_decoded
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.flows.options import ReviewerOptions
from maskfind_pipeline.flows.training import latest_version
from maskfind_pipeline.ml.novelty.fit_features import feature_predictor, features_of
from maskfind_pipeline.ml.novelty.model import NoveltyModel, from_files
from maskfind_pipeline.ml.reviewer.data import (
    ReviewerSamples,
    degraded_masks,
    predicted_masks,
)
from maskfind_pipeline.ml.reviewer.grader import GRADE_MODEL_FILE, reviewer_logit
from maskfind_pipeline.ml.reviewer.grading import (
    FLIP,
    REVIEWER,
    GradeModel,
    cross_fitted,
    fit_grade_model,
    type_folds,
    uses_reviewer,
)
from maskfind_pipeline.ml.reviewer.metrics import risk_coverage_png, roc_png
from maskfind_pipeline.ml.reviewer.model import grade_probabilities
from maskfind_pipeline.ml.reviewer.report import (
    ScorerEvaluation,
    calibration_png,
    choose_scorer,
    evaluate_scorer,
)
from maskfind_pipeline.ml.reviewer.train import ReviewerEpoch, ReviewerResult, train_reviewer
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes
from maskfind_pipeline.ml.segmentation.train import make_train_loaders, train
from maskfind_pipeline.ml.weights.pretrained import PretrainedWeightsUnavailable
from maskfind_pipeline.registry.datasets import whole_version
from maskfind_pipeline.registry.loading import load_grader
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION, promote
from maskfind_pipeline.registry.records import RegisteredModel, RegistryError, TrainingRecord
from maskfind_pipeline.storage.base import ObjectStore

Log = Callable[[str], None]
PRODUCTION_LIKE = "production_like"
"""The masks the grader is fitted, chosen and calibrated on: what production grades, the
champion's masks (of known types' val and test images, and of relabeled production failures)."""
WITH_FOLD_MODELS = "with_fold_models"
"""The fallback when the champion's masks are not graded both ways (too few grade 3 or too few
better): the fold models' masks of types they never saw join them. Measured on photographs
(docs/grading.md), choosing on those too picked scorers that separate new types rather than bad
masks: a fold model trained on one type fails on every other, the champion does not."""
MIN_PER_SIDE = 10
"""Grade-3 masks, and masks better than grade 3, the champion's must hold to decide alone."""
SUBSETS = {
    PRODUCTION_LIKE: ("champion", "failure"),
    WITH_FOLD_MODELS: ("champion", "fold", "failure"),
    "champion_known_types": ("champion",),
    "fold_models_new_types": ("fold",),
    "production_failures": ("failure",),
}
"""Each report's masks, by origin (`ReviewerSamples.origins`)."""
_NOVELTY_ROWS = 4000
"""A fold's novelty model is fitted on at most this many train images (a content-hash sample)."""


@dataclass(frozen=True)
class MaskMaker:
    """A mask model whose masks are graded, with its novelty model (None: it has none)."""

    predictor: Predictor
    novelty: NoveltyModel | None
    name: str


@dataclass(frozen=True)
class ReviewerOutcome:
    """The registered grader, how every scorer was judged, and what became of it."""

    registered: RegisteredModel
    dataset_version: str
    scorer: str
    """The scorer production grades with (the winner on production-like masks)."""
    evaluations: dict[str, dict[str, ScorerEvaluation]]
    """Per subset (`SUBSETS`), per scorer, the out-of-fold evaluation."""
    folds: dict[str, int]
    """Each image type's fold."""
    samples: dict[str, dict[str, int]]
    """Masks per origin and true grade."""
    mask_models: list[str]
    cnn_results: list[ReviewerResult]
    best_free: tuple[str, float] | None
    reviewer_refused: str
    """Why the CNN reviewer does not grade production (empty when it does)."""
    champion_auc: float | None
    promoted: bool
    plots: dict[str, bytes] = field(default_factory=dict)

    deciding: str = PRODUCTION_LIKE
    """The subset (`SUBSETS`) the grader was fitted, chosen and calibrated on."""

    @property
    def auc_grade3(self) -> float:
        """The winner's out-of-fold grade-3 AUC on the masks it was chosen on."""
        return self.winner.ranking.auc_grade3

    @property
    def winner(self) -> ScorerEvaluation:
        return self.evaluations[self.deciding][self.scorer]

    def rows(self) -> list[dict[str, Any]]:
        """One row per subset and scorer (a comparison table)."""
        return [
            {"masks": subset, **evaluation.row()}
            for subset, by_scorer in self.evaluations.items()
            for evaluation in by_scorer.values()
        ]

    def calibration_rows(self) -> list[dict[str, Any]]:
        """Per image type: the winner's expected, observed and graded bad shares."""
        return [
            {
                "image_type": t.image_type,
                "n": t.n,
                "expected_bad_share": t.expected,
                "observed_bad_share": t.observed,
                "graded_3_share": t.graded,
                "error": t.error,
            }
            for t in self.winner.by_type
        ]


def train_and_register_reviewer(
    options: ReviewerOptions,
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
    run_id: str | None = None,
) -> ReviewerOutcome:
    """Build graded masks, cross-fit and judge every scorer, register the winner, promote it;
    logged to run `run_id` (`ModelRegistry.training_run` of `reviewers`) or a new one.

    Raises:
        LookupError: no dataset version or champion mask model yet.
        ValueError: fewer than two image types (nothing can be held out).
    """
    vid = options.dataset_version or latest_version(versions)
    champion = _champion(registry)
    size = champion.predictor.config.input_size
    manifest = versions.manifest(vid)
    decoded = build_decoded(manifest, data_store, cache, decoded_root, version_id=vid, size=size)
    rows = _Rows(manifest)
    folds = type_folds(rows.types.tolist(), options.folds)
    if len(folds) < 2:
        raise ValueError(f"the grader needs >= 2 image types to hold out, got {sorted(folds)}")
    makers = _Makers(options, manifest, decoded, rows, champion, registry, log)
    samples = makers.samples(folds)
    sample_folds = np.asarray([folds[str(t)] for t in samples.sample_types], dtype=np.int64)
    rule = options.spec.grades
    grades = samples.grades(rule)
    deciding = _deciding(samples, grades)
    if deciding != PRODUCTION_LIKE:
        log(
            f"the champion's masks hold fewer than {MIN_PER_SIDE} of grade 3 or of better: "
            "the fold models' masks of new types join them for the choice"
        )
    fit_on = samples.of_origin(*SUBSETS[deciding])
    cnn_judged = any(uses_reviewer(s) for s in options.scorers)
    if _candidates(deciding, options.scorers) == (FLIP,):  # nothing fitted grades: no CNN
        kept = tuple(s for s in options.scorers if not uses_reviewer(s))
        options = options.model_copy(update={"scorers": kept})
    log(f"{len(samples)} graded masks: {samples.counts(rule)}")
    cnns, oof_logit = _cross_fit_cnn(options, samples, sample_folds, on_epoch, log)
    signals = {**samples.signals, REVIEWER: oof_logit}
    out_of_fold = {
        scorer: cross_fitted(signals, grades, sample_folds, fit_on, scorer)
        for scorer in options.scorers
    }
    evaluations = _evaluate(samples, grades, {k: v[1] for k, v in out_of_fold.items()})
    production = evaluations[deciding]
    choice = choose_scorer(production, _candidates(deciding, options.scorers))
    fallback = choice is not None and deciding != PRODUCTION_LIKE and cnn_judged
    if fallback and choice is not None and not uses_reviewer(choice.scorer):
        choice = dataclasses.replace(
            choice,
            reviewer_refused=f"too few of the champion's masks are grade 3, or better, to judge "
            f"a fitted scorer on them: production grades with {choice.scorer} (the CNN reviewer "
            "was not trained)",
        )
    if choice is None:
        counts = samples.take(fit_on).counts(rule)
        raise ValueError(
            f"no scorer can be judged: the production-like masks are all of one grade ({counts}); "
            "nothing was registered (train the mask models longer, or grade more images)"
        )
    scorer = choice.scorer
    if choice.reviewer_refused:
        log(choice.reviewer_refused)
    model = fit_grade_model(_rows_of(signals, fit_on), grades[fit_on], scorer).calibrated(
        out_of_fold[scorer][0][fit_on, 2], grades[fit_on] == 3
    )
    cnn_weights = _final_cnn(options, samples, cnns, uses_reviewer(scorer), on_epoch, log)
    outcome_plots = _plots(production, scorer)
    champion_auc = _champion_auc(reviewers, samples, signals, grades, fit_on)
    record = _record(
        options, vid, model, cnn_weights, evaluations, samples, folds, cnns, tags,
        champion, choice.reviewer_refused, outcome_plots,
    )  # fmt: skip
    read = whole_version(versions.card(vid), versions.manifest_uri(vid), schema=manifest.schema)
    record = dataclasses.replace(record, datasets=[read])  # it reads every split of the version
    registered = reviewers.log_training(record, alias=CHALLENGER, run_id=run_id)
    ours = production[scorer].ranking.auc_grade3
    promoted = champion_auc is None or ours >= champion_auc
    if promoted:
        evidence = [{f"auc_grade3_{deciding}": ours, "champion_auc_grade3": champion_auc}]
        reason = "first reviewer" if champion_auc is None else f"grade-3 AUC ({scorer})"
        promote(
            reviewers, registered.version, actor="reviewer_model", reason=reason, evidence=evidence
        )
    return ReviewerOutcome(
        registered=registered,
        dataset_version=vid,
        scorer=scorer,
        evaluations=evaluations,
        folds=folds,
        samples=samples.counts(options.spec.grades),
        mask_models=makers.names,
        cnn_results=cnns,
        best_free=choice.best_free,
        reviewer_refused=choice.reviewer_refused,
        champion_auc=champion_auc,
        promoted=promoted,
        plots=outcome_plots,
        deciding=deciding,
    )


class _Rows:
    """The manifest's columns the grader needs, as arrays."""

    def __init__(self, manifest: pa.Table) -> None:
        column = lambda name: np.asarray(manifest.column(name).to_pylist(), dtype=object)  # noqa: E731
        self.types = column("image_type")
        self.splits = column("split")
        self.sources = column("source")
        self.sample_ids = column("sample_id")
        self.failed_versions = column("failed_model_version")

    def where(self, selection: np.ndarray, limit: int | None = None) -> np.ndarray:
        """The selected rows, at most `limit` of them: a uniform sample by content hash."""
        picked = np.flatnonzero(selection)
        if limit is not None and len(picked) > limit:
            order = np.argsort(self.sample_ids[picked].astype(str), kind="stable")
            picked = np.sort(picked[order[:limit]])
        return picked


class _Makers:
    """The mask models whose masks are graded, and the graded masks they make."""

    def __init__(
        self,
        options: ReviewerOptions,
        manifest: pa.Table,
        decoded: DecodedArrays,
        rows: _Rows,
        champion: MaskMaker,
        registry: ModelRegistry,
        log: Log,
    ) -> None:
        self.options, self.manifest, self.decoded, self.rows = options, manifest, decoded, rows
        self.champion, self.registry, self.log = champion, registry, log
        self.names: list[str] = []
        self._features: dict[tuple[str, int], dict[int, np.ndarray]] = {}

    def samples(self, folds: Mapping[str, int]) -> ReviewerSamples:
        """Every graded mask (module docstring), over the images they need."""
        rows, options = self.rows, self.options
        groups = len(set(folds.values())) + 1
        per_fold = None if options.max_images is None else max(1, options.max_images // groups)
        plan: list[tuple[MaskMaker, np.ndarray, str, bool]] = []
        known = np.isin(rows.splits, ["val", "test"])
        plan.append((self.champion, rows.where(known, per_fold), "champion", False))
        for fold in sorted(set(folds.values())):
            held = [t for t, f in folds.items() if f == fold]
            maker = self._fold_maker(held)
            unseen = np.isin(rows.types, held)
            plan.append((maker, rows.where(unseen, per_fold), "fold", True))
        plan += self._failure_plan()
        used = np.unique(np.concatenate([picked for _, picked, _, _ in plan]))
        position = {row: i for i, row in enumerate(used.tolist())}
        images = np.asarray(self.decoded.images[used])
        truth = np.asarray(self.decoded.masks[used]) != 0
        parts = []
        for maker, picked, origin, unseen in plan:
            self.log(f"masks of {len(picked)} images by {maker.name} ({origin})")
            self.names.append(maker.name)
            parts.append(
                predicted_masks(
                    maker.predictor,
                    images,
                    truth,
                    name=maker.name,
                    rows=np.asarray([position[r] for r in picked.tolist()], dtype=np.int64),
                    origin=origin,
                    unseen=unseen,
                    novelty=self._novelty(maker, picked),
                )
            )
        real = sum(len(p["image_index"]) for p in parts)
        count = _degraded_count(real, options.train.degraded_share)
        if count:
            thresholds = [self.champion.predictor.config.threshold]
            parts.append(
                degraded_masks(truth, count, options.spec.grades, thresholds, options.train.seed)
            )
        return ReviewerSamples.joined(images, truth, rows.types[used], parts)

    def _fold_maker(self, held_out: list[str]) -> MaskMaker:
        """A mask model of the champion's architecture and the fold recipe, trained on the
        train split of every type but `held_out`, with a novelty model fitted the same way."""
        self.log(f"fold mask model without {held_out}")
        rows = self.rows
        splits = np.where(np.isin(rows.types, held_out), "test", rows.splits)
        folded = self.manifest.set_column(
            self.manifest.schema.get_field_index("split"), "split", pa.array(splits.tolist())
        )
        config = self.options.fold_train
        template = self.champion.predictor.config
        result = train(
            template,
            config,
            make_train_loaders(folded, self.decoded, config),
            image_types=rows.types.tolist(),
            sources=rows.sources.tolist(),
            progress_bar=False,
        )
        name = "fold-" + "+".join(sorted(held_out))[:40]
        predictor = Predictor.from_weights(
            result.config, weights_to_bytes(result.model), version=name
        )
        return MaskMaker(predictor, self._fold_novelty(predictor, splits), name)

    def _fold_novelty(self, predictor: Predictor, splits: np.ndarray) -> NoveltyModel | None:
        """The champion's novelty recipe fitted on a fold model's seen types (train split),
        calibrated on their val split."""
        reference = self.champion.novelty
        if reference is None:
            return None
        train_rows = self.rows.where(splits == "train", _NOVELTY_ROWS)
        val_rows = self.rows.where(splits == "val", _NOVELTY_ROWS)
        if len(train_rows) < 2:
            return None
        features = self._feature_rows(predictor, reference, np.concatenate([train_rows, val_rows]))
        fitted = NoveltyModel.fit(
            features[: len(train_rows)], self.rows.types[train_rows], reference.config
        )
        held = features[len(train_rows) :] if len(val_rows) else features[: len(train_rows)]
        return fitted.calibrate(held)

    def _failure_plan(self) -> list[tuple[MaskMaker, np.ndarray, str, bool]]:
        """Per model version that failed on relabeled production images: it, and those rows."""
        rows = self.rows
        failures = (rows.sources == "failure") & (rows.failed_versions != None)  # noqa: E711
        plan = []
        for version in sorted({str(v) for v in rows.failed_versions[failures]}):
            picked = np.flatnonzero(failures & (rows.failed_versions == version))
            maker = self._version_maker(version)
            if maker is not None:
                plan.append((maker, picked, "failure", False))
        return plan

    def _version_maker(self, version: str) -> MaskMaker | None:
        try:
            download = self.registry.download(version)
        except RegistryError as exc:
            self.log(f"failures of model version {version} skipped: {exc}")
            return None
        config = ModelConfig.from_json(download.config_json)
        if config.input_size != self.champion.predictor.config.input_size:
            self.log(f"failures of model version {version} skipped: it takes {config.input_size}²")
            return None
        predictor = Predictor.from_weights(config, download.weights, version=version)
        return MaskMaker(predictor, from_files(download.files), f"failed-v{version}")

    def _novelty(self, maker: MaskMaker, picked: np.ndarray) -> np.ndarray | None:
        if maker.novelty is None or not len(picked):
            return None
        return maker.novelty.scores(self._feature_rows(maker.predictor, maker.novelty, picked))

    def _feature_rows(
        self, predictor: Predictor, novelty: NoveltyModel, picked: np.ndarray
    ) -> np.ndarray:
        """The novelty features of `picked` decoded rows, as `novelty` was fitted on them:
        the ImageNet encoder's (computed once per encoder for every row) or the model's own."""
        if novelty.config.features == "imagenet":
            try:
                reference = feature_predictor(predictor.config, novelty.config)
            except PretrainedWeightsUnavailable:
                reference = None
            if reference is not None:
                key = (predictor.config.encoder_name, predictor.config.input_size)
                known = self._features.setdefault(key, {})
                missing = np.asarray([r for r in picked.tolist() if r not in known], np.int64)
                if len(missing):
                    computed = features_of(reference, self.decoded.images, rows=missing)
                    known.update(zip(missing.tolist(), computed, strict=True))
                return np.stack([known[r] for r in picked.tolist()])
        return features_of(predictor, self.decoded.images, rows=picked)


def _champion(registry: ModelRegistry) -> MaskMaker:
    if registry.alias_or_none(CHAMPION) is None:
        raise LookupError("no mask model is champion yet: materialize promotion first")
    download = registry.download(CHAMPION)
    config = ModelConfig.from_json(download.config_json)
    predictor = Predictor.from_weights(config, download.weights, version=download.model.version)
    return MaskMaker(predictor, from_files(download.files), f"champion-v{download.model.version}")


def _cross_fit_cnn(
    options: ReviewerOptions,
    samples: ReviewerSamples,
    folds: np.ndarray,
    on_epoch: Callable[[ReviewerEpoch], None] | None,
    log: Log,
) -> tuple[list[ReviewerResult], np.ndarray]:
    """Per fold, the CNN trained on the other folds' masks, and its logit of P(grade 3) for
    this fold's masks (NaN where a fold had nothing to train on)."""
    logits = np.full(len(samples), np.nan)
    results = []
    if not any(uses_reviewer(s) for s in options.scorers):
        return results, logits
    for fold in np.unique(folds):
        log(f"CNN reviewer of fold {fold}: trained without its types")
        result = _fit_cnn(options, samples, folds != fold, on_epoch)
        if result is None:
            continue
        results.append(result)
        held = folds == fold
        logits[held] = _cnn_logits(result, options, samples.take(held))
    return results, logits


def _fit_cnn(
    options: ReviewerOptions,
    samples: ReviewerSamples,
    selection: np.ndarray,
    on_epoch: Callable[[ReviewerEpoch], None] | None,
) -> ReviewerResult | None:
    """The CNN trained on the selected samples, its epoch chosen on a share of their images."""
    picked = np.asarray(
        [_hash(str(i)) % 1000 < options.val_share * 1000 for i in samples.image_index]
    )
    train_part, val_part = samples.take(selection & ~picked), samples.take(selection & picked)
    grades = train_part.grades(options.spec.grades)
    if len(val_part) < 2 or len(set(grades.tolist())) < 2:
        return None
    return train_reviewer(
        options.spec, options.train, train_part, val_part, on_epoch=on_epoch, progress_bar=False
    )


def _cnn_logits(
    result: ReviewerResult, options: ReviewerOptions, part: ReviewerSamples
) -> np.ndarray:
    probs = grade_probabilities(
        result.model, options.spec, part.sample_images(), part.probabilities, part.thresholds
    )
    return reviewer_logit(probs[:, 2])


def _final_cnn(
    options: ReviewerOptions,
    samples: ReviewerSamples,
    cnns: list[ReviewerResult],
    needed: bool,
    on_epoch: Callable[[ReviewerEpoch], None] | None,
    log: Log,
) -> bytes:
    """The CNN production runs: trained on every fold when the winner reads it; otherwise the
    first fold's (stored for the record, never run), or an untrained one with no CNN at all."""
    if needed:
        log("CNN reviewer on every fold (the winner reads it)")
        result = _fit_cnn(options, samples, np.ones(len(samples), bool), on_epoch)
        if result is not None:
            return weights_to_bytes(result.model)
    if cnns:
        return weights_to_bytes(cnns[0].model)
    from maskfind_pipeline.ml.reviewer.model import build_reviewer

    return weights_to_bytes(build_reviewer(options.spec, pretrained=False))


def _evaluate(
    samples: ReviewerSamples, grades: np.ndarray, probabilities: Mapping[str, np.ndarray]
) -> dict[str, dict[str, ScorerEvaluation]]:
    out: dict[str, dict[str, ScorerEvaluation]] = {}
    for subset, origins in SUBSETS.items():
        rows = samples.of_origin(*origins)
        if not rows.any():
            continue
        types = samples.sample_types[rows]
        out[subset] = {
            scorer: evaluate_scorer(scorer, probs[rows], grades[rows], types)
            for scorer, probs in probabilities.items()
        }
    return out


def _candidates(deciding: str, scorers: Sequence[str]) -> tuple[str, ...]:
    """The scorers the choice is made among: all of `scorers` on the champion's masks; only
    flip disagreement (where it is one of them) when the fold models' masks had to join, as
    every scorer fitted on those learns "new type" rather than "bad mask" (docs/grading.md:
    on a production day of photographs and of the synthetic factory, flip disagreement alone
    ranked the champion's masks at least as well as anything chosen that way)."""
    if deciding == WITH_FOLD_MODELS and FLIP in scorers:
        return (FLIP,)
    return tuple(scorers)


def _deciding(samples: ReviewerSamples, grades: np.ndarray) -> str:
    """`PRODUCTION_LIKE` where the champion's masks are graded both ways often enough, else
    `WITH_FOLD_MODELS`."""
    bad = grades[samples.of_origin(*SUBSETS[PRODUCTION_LIKE])] == 3
    enough = min(int(bad.sum()), int((~bad).sum())) >= MIN_PER_SIDE
    return PRODUCTION_LIKE if enough else WITH_FOLD_MODELS


def _champion_auc(
    reviewers: ModelRegistry,
    samples: ReviewerSamples,
    signals: Mapping[str, np.ndarray],
    grades: np.ndarray,
    rows: np.ndarray,
) -> float | None:
    """The champion grader's grade-3 AUC on the same masks, `rows` (None: none yet)."""
    if reviewers.alias_or_none(CHAMPION) is None:
        return None
    grader = load_grader(reviewers, CHAMPION)
    part = samples.take(rows)
    if grader.model is not None and not grader.model.uses_reviewer:
        probs = grader.model.probabilities(_rows_of(signals, rows))
    else:
        assert grader.reviewer is not None
        cnn = grade_probabilities(
            grader.reviewer.model,
            grader.reviewer.spec,
            part.sample_images(),
            part.probabilities,
            part.thresholds,
        )
        if grader.model is None:
            probs = cnn
        else:
            part_signals = {**_rows_of(signals, rows), REVIEWER: reviewer_logit(cnn[:, 2])}
            probs = grader.model.probabilities(part_signals)
    auc = evaluate_scorer("champion", probs, grades[rows], part.sample_types).ranking.auc_grade3
    return None if math.isnan(auc) else auc


def _plots(production: Mapping[str, ScorerEvaluation], scorer: str) -> dict[str, bytes]:
    rankings = {name: e.ranking for name, e in production.items()}
    return {
        "roc_grade3": roc_png(rankings, "(production-like masks, out of fold)"),
        "risk_coverage": risk_coverage_png(rankings, "(production-like masks)"),
        "calibration": calibration_png(production[scorer], "(out of fold)"),
    }


def _record(
    options: ReviewerOptions,
    vid: str,
    model: GradeModel,
    cnn_weights: bytes,
    evaluations: dict[str, dict[str, ScorerEvaluation]],
    samples: ReviewerSamples,
    folds: Mapping[str, int],
    cnns: Sequence[ReviewerResult],
    tags: Mapping[str, str] | None,
    champion: MaskMaker,
    refused: str,
    plots: Mapping[str, bytes],
) -> TrainingRecord:
    metrics = {
        f"{subset}/{key}/{scorer}": float(value)
        for subset, by_scorer in evaluations.items()
        for scorer, evaluation in by_scorer.items()
        for key, value in evaluation.row().items()
        if key not in ("scorer", "n")
    }
    history = cnns[0].history if cnns else []
    return TrainingRecord(
        config=options.spec,
        weights=cnn_weights,
        dataset_version=vid,
        params=options.flat()
        | {"dataset_version": vid, **({"device": cnns[0].device} if cnns else {})},
        history=history,
        metrics=metrics,
        plots=dict(plots),
        tables={
            "comparison": [
                {"masks": subset, **e.row()}
                for subset, by_scorer in evaluations.items()
                for e in by_scorer.values()
            ],
            "samples": samples.counts(options.spec.grades),
            "folds": dict(folds),
        },
        tags={
            "scorer": model.scorer,
            "mask_model_version": champion.predictor.version,
            "reviewer_cnn": "refused" if refused else "grades",
            "reviewer_refused": refused[:4900],
            **(tags or {}),
        },
        files={GRADE_MODEL_FILE: model.to_json().encode()},
    )


def _rows_of(signals: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(values)[rows] for name, values in signals.items()}


def _degraded_count(real: int, share: float) -> int:
    if share <= 0.0 or real == 0:
        return 0
    return round(real * min(share, 0.9) / (1.0 - min(share, 0.9)))


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
