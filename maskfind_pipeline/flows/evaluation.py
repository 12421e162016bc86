"""Evaluate registered models on dataset versions' test splits: the compatibility matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.evaluation.cells import Cell, CellStore
from maskfind_pipeline.evaluation.planning import CellRows, MatrixPlan, fill_matrix, plan_cells
from maskfind_pipeline.evaluation.report import type_deltas
from maskfind_pipeline.flows.settings import EvaluationOptions
from maskfind_pipeline.ml.inference import evaluate_loader
from maskfind_pipeline.ml.predict import Predictor
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION
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
    """Compute every missing cell of the matrix (see `plan_cells`), log each to MLflow."""
    champion, challenger = registry.alias_or_none(CHAMPION), registry.alias_or_none(CHALLENGER)
    pinned = [m.version for m in (champion, challenger) if m is not None]
    plan = plan_cells(
        [m.version for m in registry.versions()],
        versions.list(),
        cells.existing(),
        pinned=pinned,
        last_n=options.last_n,
    )
    if on_plan:
        on_plan(plan)
    evaluate_cell = CellEvaluator(
        registry=registry,
        versions=versions,
        data_store=data_store,
        cache=cache,
        decoded_root=decoded_root,
        batch_size=options.batch_size,
        device=options.device,
    )

    def evaluate(cell: Cell) -> CellRows:
        if log:
            log(f"evaluating model v{cell.model_version} on {cell.dataset_version}")
        rows = evaluate_cell(cell)
        run_id = log_cell_run(registry, cell, rows)
        return [{**row, "mlflow_run_id": run_id} for row in rows]

    written = fill_matrix(plan, cells, evaluate, on_cell)
    table = cells.read(plan.wanted)
    deltas = (
        type_deltas(table, challenger.version, champion.version) if champion and challenger else []
    )
    return MatrixOutcome(plan, written, table, deltas)


class CellEvaluator:
    """Metrics of a model version on a dataset version's test split, one row per group.

    Each model version is downloaded once and each dataset version read once per evaluator;
    the test split is served from the version's decoded cache (the one training built at the
    same input size, so evaluation usually decodes nothing). Models run on `device` (None:
    CUDA when available) with `ml.device`'s precision rule.
    """

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        versions: VersionStore,
        data_store: ObjectStore,
        cache: ContentCache,
        decoded_root: Path,
        batch_size: int = 32,
        device: str | None = None,
    ) -> None:
        self.registry, self.versions = registry, versions
        self.data_store, self.cache, self.decoded_root = data_store, cache, decoded_root
        self.batch_size, self.device = batch_size, device
        self._predictors: dict[str, Predictor] = {}
        self._manifests: dict[str, pa.Table] = {}

    def __call__(self, cell: Cell) -> CellRows:
        predictor = self._predictor(cell.model_version)
        manifest = self._manifest(cell.dataset_version)
        config = predictor.config
        decoded = build_decoded(
            manifest,
            self.data_store,
            self.cache,
            self.decoded_root,
            version_id=cell.dataset_version,
            size=config.input_size,
        )
        loaders = make_loaders(manifest, decoded, batch_size=self.batch_size, augment=None, seed=0)
        if "test" not in loaders:
            raise ValueError(f"dataset version {cell.dataset_version} has no test samples")
        metrics = evaluate_loader(
            predictor.model,
            config,
            loaders["test"],
            image_types=manifest.column("image_type").to_pylist(),
            sources=manifest.column("source").to_pylist(),
            settings=predictor.settings,
        )
        now = datetime.now(UTC)
        return [
            {
                **row,
                "model_version": cell.model_version,
                "dataset_version": cell.dataset_version,
                "threshold": config.threshold,
                "mlflow_run_id": None,
                "evaluated_at": now,
            }
            for row in metrics.rows()
        ]

    def _predictor(self, version: str) -> Predictor:
        if version not in self._predictors:
            self._predictors[version] = load_model(self.registry, version).to(self.device)
        return self._predictors[version]

    def _manifest(self, dataset_version: str) -> pa.Table:
        if dataset_version not in self._manifests:
            self._manifests[dataset_version] = self.versions.manifest(dataset_version)
        return self._manifests[dataset_version]


def log_cell_run(registry: ModelRegistry, cell: Cell, rows: CellRows) -> str:
    """An MLflow evaluation run tagged with the model version and dataset version; its metrics
    are the model version's LoggedModel's too, measured on the dataset version."""
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
        run.info.run_id, cell.model_version, metrics, dataset_version=cell.dataset_version
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _group_name(row: dict[str, object]) -> str:
    return "overall" if row["group_kind"] == "overall" else f"{row['group_kind']}/{row['group']}"
