"""Evaluate registered models on dataset versions' test splits: the compatibility matrix."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.manifest import MANIFEST_SCHEMA
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.evaluation.cells import Cell, CellStore
from maskfind_pipeline.evaluation.members import TestMembers, update_members
from maskfind_pipeline.evaluation.planning import CellRows, MatrixPlan, fill_matrix, plan_cells
from maskfind_pipeline.evaluation.report import type_deltas
from maskfind_pipeline.evaluation.scores import (
    ScoreChunk,
    ScoreStore,
    cell_rows,
    plan_chunks,
    score_rows,
    unscored,
)
from maskfind_pipeline.flows.options import EvaluationOptions
from maskfind_pipeline.ml.metrics import iou_per_image, pixel_counts
from maskfind_pipeline.ml.segmentation.inference import predict_probabilities
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.registry.datasets import DatasetRef, version_datasets
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION
from maskfind_pipeline.registry.records import RegisteredModel
from maskfind_pipeline.storage.base import ObjectStore


@dataclass(frozen=True)
class MatrixOutcome:
    """The plan, the cells this call computed, the wanted cells' table, challenger vs champion."""

    plan: MatrixPlan
    written: list[Cell]
    table: pa.Table
    deltas: list[dict[str, object]]


def update_matrix(
    options: EvaluationOptions,
    *,
    registry: ModelRegistry,
    versions: VersionStore,
    cells: CellStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    on_plan: Callable[[MatrixPlan], None] | None = None,
    on_cell: Callable[[Cell, CellRows], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> MatrixOutcome:
    """Compute every missing cell of the matrix (see `plan_cells`), log each to MLflow.

    Each model of a missing cell first scores the distinct test samples (by content) of the
    versions it is missing on that it has not scored yet, once (`SampleScorer`); every cell is
    then an aggregate of the model's per-sample scores (`evaluation.scores.cell_rows`) over the
    version's test split as the membership table holds it (`evaluation.members`: only the
    manifests of versions new since the last run are read).
    """
    matrix = _matrix(options, registry, versions, cells)
    champion, challenger, members, plan, cards = (
        matrix.champion,
        matrix.challenger,
        matrix.members,
        matrix.plan,
        matrix.cards,
    )
    if on_plan:
        on_plan(plan)
    scores = ScoreStore(cells.store)
    scorer = SampleScorer(
        registry=registry,
        data_store=data_store,
        cache=cache,
        decoded_root=decoded_root,
        batch_size=options.batch_size,
        device=options.device,
        chunk=options.chunk,
    )
    scored: dict[str, pa.Table] = {}

    def evaluate(cell: Cell) -> CellRows:
        model = cell.model_version
        if model not in scored:
            wanted = [c.dataset_version for c in plan.missing if c.model_version == model]
            scored[model] = scorer.ensure(model, members.rows_of(wanted), scores, log=log)
        rows = cell_rows(
            scored[model],
            members.test_split(cell.dataset_version),
            model_version=model,
            dataset_version=cell.dataset_version,
        )
        now = datetime.now(UTC)
        rows = [{**row, "mlflow_run_id": None, "evaluated_at": now} for row in rows]
        run_id = log_cell_run(registry, cell, rows, _test_split(versions, cards, cell))
        return [{**row, "mlflow_run_id": run_id} for row in rows]

    written = fill_matrix(plan, cells, evaluate, on_cell)
    touched = sorted({c.model_version for c in written})
    scores.compact(touched)
    cells.compact(touched)
    table = cells.read(plan.wanted)
    deltas = (
        type_deltas(table, challenger.version, champion.version) if champion and challenger else []
    )
    return MatrixOutcome(plan, written, table, deltas)


@dataclass(frozen=True)
class _Matrix:
    champion: RegisteredModel | None
    challenger: RegisteredModel | None
    members: TestMembers
    plan: MatrixPlan
    cards: list[dict]
    """The dataset versions' cards (ids, manifests' addresses)."""


def _matrix(
    options: EvaluationOptions, registry: ModelRegistry, versions: VersionStore, cells: CellStore
) -> _Matrix:
    """The pinned models, the test membership (extended with new versions) and the plan."""
    champion, challenger = registry.alias_or_none(CHAMPION), registry.alias_or_none(CHALLENGER)
    pinned = [m.version for m in (champion, challenger) if m is not None]
    models = [m.version for m in registry.versions()]
    cards = versions.list()
    members = update_members(cells.store, versions, cards)
    recent = models[-options.last_n :] if options.last_n else models
    plan = plan_cells(
        models,
        cards,
        cells.existing({*recent, *pinned}),
        pinned=pinned,
        last_n=options.last_n,
    )
    return _Matrix(champion, challenger, members, plan, cards)


def plan_scoring(
    options: EvaluationOptions,
    *,
    registry: ModelRegistry,
    versions: VersionStore,
    cells: CellStore,
) -> tuple[MatrixPlan, list[ScoreChunk]]:
    """The scoring `update_matrix` would do, as independent chunks (`options.chunk` samples
    each): for each model with a missing cell, the distinct test samples of the versions it is
    missing on that it has not scored. Scoring every chunk (`score_chunk`, anywhere, in any
    order) and then calling `update_matrix` gives the same cells as `update_matrix` alone, which
    then scores nothing."""
    matrix = _matrix(options, registry, versions, cells)
    scores = ScoreStore(cells.store)
    todo: dict[str, pa.Table] = {}
    for cell in matrix.plan.missing:
        model = cell.model_version
        if model not in todo:
            wanted = [c.dataset_version for c in matrix.plan.missing if c.model_version == model]
            todo[model] = unscored(matrix.members.rows_of(wanted), scores.of(model))
    return matrix.plan, plan_chunks(todo, options.chunk)


def score_chunk(chunk: ScoreChunk, scorer: SampleScorer, scores: ScoreStore) -> pa.Table:
    """Score one chunk and commit its scores as a part named by the chunk's content (a chunk
    scored twice, by a retried step, is committed once)."""
    part = scorer.score(chunk.model_version, chunk.rows)
    scores.append(part, model_version=chunk.model_version, name=chunk.part_name)
    return part


class SampleScorer:
    """Scores a model version on test samples it has not scored: per-sample pixel counts and
    IoU at the model's threshold, in chunks of `chunk` samples, each chunk committed as a part
    of the scores table (a crash keeps the finished chunks; a rerun scores the rest).

    Each model version is downloaded once per scorer; the samples are served from the decoded
    store (content-addressed: what training decoded is not decoded again). Models run on
    `device` (None: CUDA when available) with `ml.device`'s precision rule.
    """

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        data_store: ObjectStore,
        cache: ContentCache,
        decoded_root: Path,
        batch_size: int = 32,
        device: str | None = None,
        chunk: int = 4096,
    ) -> None:
        self.registry = registry
        self.data_store, self.cache, self.decoded_root = data_store, cache, decoded_root
        self.batch_size, self.device, self.chunk = batch_size, device, chunk
        self._predictors: dict[str, Predictor] = {}

    def ensure(
        self,
        model_version: str,
        tests: pa.Table,
        scores: ScoreStore,
        *,
        log: Callable[[str], None] | None = None,
    ) -> pa.Table:
        """The model's scores, after scoring the rows of `tests` it has none for."""
        have = scores.of(model_version)
        todo = unscored(tests, have)
        if todo.num_rows and log:
            log(f"scoring model v{model_version} on {todo.num_rows} new test sample(s)")
        for chunk in plan_chunks({model_version: todo}, self.chunk):
            have = pa.concat_tables([have, score_chunk(chunk, self, scores)])
        return have

    def score(self, model_version: str, rows: pa.Table) -> pa.Table:
        """Per-sample scores of `model_version` on manifest `rows` (a per-sample map)."""
        predictor = self._predictor(model_version)
        config = predictor.config
        chunk = rows.set_column(
            rows.schema.get_field_index("split"), "split", pa.array(["test"] * rows.num_rows)
        )
        decoded = build_decoded(
            chunk, self.data_store, self.cache, self.decoded_root, size=config.input_size
        )
        loaders = make_loaders(chunk, decoded, batch_size=self.batch_size, augment=None, seed=0)
        predictions = predict_probabilities(
            predictor.model, config, loaders["test"], placement=predictor.placement
        )
        counts = pixel_counts(predictions.probabilities, predictions.masks, config.threshold)
        order = predictions.indices
        return score_rows(
            model_version,
            np.asarray(chunk.column("sample_id").to_pylist(), dtype=object)[order].tolist(),
            np.asarray(chunk.column("mask_sha256").to_pylist(), dtype=object)[order].tolist(),
            (counts.tp, counts.fp, counts.fn),
            iou_per_image(counts),
            config.threshold,
            datetime.now(UTC),
        )

    def _predictor(self, version: str) -> Predictor:
        if version not in self._predictors:
            self._predictors[version] = _loaded(self.registry, version, self.device)
        return self._predictors[version]


_LOADED: OrderedDict[tuple[str, str, str, str | None], Predictor] = OrderedDict()
_KEEP_LOADED = 2


def _loaded(registry: ModelRegistry, version: str, device: str | None) -> Predictor:
    """A registered version, downloaded and verified once per process for the last few asked
    for: a registered version never changes, and a worker scoring chunk after chunk of one
    model (a celery worker, a Kubernetes pod) loads it once."""
    key = (registry.tracking_uri, registry.model_name, version, device)
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    predictor = load_model(registry, version).to(device)
    _LOADED[key] = predictor
    while len(_LOADED) > _KEEP_LOADED:
        _LOADED.popitem(last=False)
    return predictor


def log_cell_run(
    registry: ModelRegistry, cell: Cell, rows: CellRows, dataset: DatasetRef | None = None
) -> str:
    """An MLflow evaluation run tagged with the model version and dataset version; its metrics
    are the model version's LoggedModel's too, measured on the dataset version's test split
    (`dataset`, its run input where it names a source)."""
    client = registry.client
    run = client.create_run(
        registry.experiment_id(),
        run_name=f"eval-v{cell.model_version}-{cell.dataset_version}",
        tags={
            "maskfind.kind": "evaluation",
            "maskfind.model_name": registry.model_name,
            "maskfind.model_version": cell.model_version,
            "dataset_version": cell.dataset_version,
        },
    )
    metrics = {
        f"test_{metric}/{_group_name(row)}": float(str(row[metric]))
        for row in rows
        for metric in ("miou", "precision", "recall")
    }
    registry.log_model_metrics(
        run.info.run_id,
        cell.model_version,
        metrics,
        dataset=dataset or DatasetRef(cell.dataset_version, "test"),
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _test_split(versions: VersionStore, cards: list[dict], cell: Cell) -> DatasetRef:
    """The test split of the cell's dataset version as an MLflow dataset (profile from its
    card)."""
    vid = cell.dataset_version
    card = next((c for c in cards if c["id"] == vid), {"id": vid})
    found = version_datasets(card, versions.manifest_uri(vid), ("test",), schema=MANIFEST_SCHEMA)
    return found[0] if found else DatasetRef(vid, "test", versions.manifest_uri(vid))


def _group_name(row: dict[str, object]) -> str:
    return "overall" if row["group_kind"] == "overall" else f"{row['group_kind']}/{row['group']}"
