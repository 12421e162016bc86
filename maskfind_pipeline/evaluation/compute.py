"""Compute matrix cells: a registered model version on a dataset version's test split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.evaluation.cells import Cell, CellStore
from maskfind_pipeline.ml.inference import evaluate_loader
from maskfind_pipeline.ml.predict import Predictor
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION
from maskfind_pipeline.storage.base import ObjectStore


@dataclass(frozen=True)
class MatrixPlan:
    """Which cells the matrix should have now, and which of them are missing."""

    models: list[str]
    datasets: list[str]
    wanted: list[Cell]
    missing: list[Cell]


def plan_cells(
    registry: ModelRegistry, versions: VersionStore, cells: CellStore, *, last_n: int | None
) -> MatrixPlan:
    """Every (model, dataset version) cell among the last N models (plus champion and
    challenger) and the last N dataset versions; `missing` are those not computed yet.

    So a new model is evaluated on the older dataset versions, and a new dataset version with
    the older models; a run that died half-way is completed by the next one. Dataset versions
    without test samples have nothing to evaluate and are left out.
    """
    models = [m.version for m in registry.versions()]
    datasets = [str(card["id"]) for card in versions.list() if _has_test_samples(card)]
    recent = set(models[-last_n:] if last_n else models)
    recent |= {
        a.version
        for a in (registry.alias_or_none(CHAMPION), registry.alias_or_none(CHALLENGER))
        if a is not None
    }
    considered = datasets[-last_n:] if last_n else datasets
    wanted = sorted(Cell(m, d) for m in recent for d in considered)
    return MatrixPlan(sorted(recent, key=int), considered, wanted, cells.missing(wanted))


def _has_test_samples(card: dict[str, object]) -> bool:
    counts = card.get("counts", {})
    assert isinstance(counts, dict)
    return any(sum(by_split.get("test", {}).values()) for by_split in counts.values())


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

    def __call__(self, cell: Cell) -> list[dict[str, object]]:
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
            model, config, weights = self.registry.download(version)
            predictor = Predictor.from_weights(config, weights, version=model.version)
            self._predictors[version] = predictor.to(self.device)
        return self._predictors[version]

    def _manifest(self, dataset_version: str) -> pa.Table:
        if dataset_version not in self._manifests:
            self._manifests[dataset_version] = self.versions.manifest(dataset_version)
        return self._manifests[dataset_version]


def log_cell_run(registry: ModelRegistry, cell: Cell, rows: list[dict[str, object]]) -> str:
    """An MLflow evaluation run tagged with the model version and dataset version."""
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
    for row in rows:
        name = (
            "overall" if row["group_kind"] == "overall" else f"{row['group_kind']}/{row['group']}"
        )
        for metric in ("miou", "precision", "recall"):
            value = float(str(row[metric]))
            if np.isfinite(value):
                client.log_metric(run.info.run_id, f"test_{metric}/{name}", value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def fill_matrix(
    plan: MatrixPlan,
    cells: CellStore,
    compute: Callable[[Cell], list[dict[str, object]]],
    on_cell: Callable[[Cell, list[dict[str, object]]], None] | None = None,
) -> list[Cell]:
    """Compute and store every missing cell (each write is create-only); return those written."""
    written = []
    for cell in plan.missing:
        rows = compute(cell)
        if cells.write(cell, rows):
            written.append(cell)
            if on_cell:
                on_cell(cell, rows)
    return written
