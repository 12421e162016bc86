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
from maskfind_pipeline.ml.inference import predict_probabilities
from maskfind_pipeline.ml.metrics import evaluate
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


def evaluate_cell(
    cell: Cell,
    *,
    registry: ModelRegistry,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    batch_size: int = 32,
) -> list[dict[str, object]]:
    """Metrics of one model version on one dataset version's test split, one row per group."""
    model, config, weights = registry.download(cell.model_version)
    predictor = Predictor.from_weights(config, weights, version=model.version)
    manifest = versions.manifest(cell.dataset_version)
    is_test = np.asarray(manifest.column("split").to_pylist(), dtype=object) == "test"
    test = manifest.filter(pa.array(is_test))
    if test.num_rows == 0:
        raise ValueError(f"dataset version {cell.dataset_version} has no test samples")
    decoded = build_decoded(
        test,
        data_store,
        cache,
        decoded_root,
        version_id=f"{cell.dataset_version}-test",
        size=config.input_size,
    )
    loader = make_loaders(test, decoded, batch_size=batch_size, augment=None, seed=0)["test"]
    predictions = predict_probabilities(predictor.model, config, loader)
    rows = np.asarray(predictions.indices)
    types = np.asarray(test.column("image_type").to_pylist(), dtype=object)[rows]
    sources = np.asarray(test.column("source").to_pylist(), dtype=object)[rows]
    metrics = evaluate(
        predictions.probabilities,
        predictions.masks,
        config.threshold,
        image_types=list(types),
        sources=list(sources),
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
