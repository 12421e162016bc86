"""Which cells the model x dataset-version matrix should hold, and filling in the missing ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from maskfind_pipeline.evaluation.cells import Cell, CellStore

CellRows = list[dict[str, object]]


@dataclass(frozen=True)
class MatrixPlan:
    """Which cells the matrix should have now, and which of them are missing."""

    models: list[str]
    datasets: list[str]
    wanted: list[Cell]
    missing: list[Cell]


def plan_cells(
    models: Sequence[str],
    cards: Sequence[Mapping[str, object]],
    existing: Iterable[Cell],
    *,
    pinned: Iterable[str] = (),
    last_n: int | None = None,
) -> MatrixPlan:
    """The cells wanted now and those of them not computed yet.

    Every `pinned` model (the champion and the challenger) is wanted on every dataset version,
    because the promotion gate compares them on every version the champion was evaluated on.
    The other models are wanted on the last `last_n` dataset versions and only the last `last_n`
    of them (all when `last_n` is None). So a new model is evaluated on the older dataset
    versions and a new dataset version with the older models, and a run that died half-way is
    completed by the next. Dataset versions without test samples are left out.

    Args:
        models: registered model versions, oldest first.
        cards: dataset version cards, oldest first.
        existing: the cells already computed.
        pinned: model versions wanted on every dataset version.
        last_n: how many of the newest models and dataset versions the rest of the matrix keeps.
    """
    datasets = [str(card["id"]) for card in cards if _has_test_samples(card)]
    recent_models = list(models[-last_n:] if last_n else models)
    recent_datasets = datasets[-last_n:] if last_n else datasets
    pinned = set(pinned)
    wanted = {Cell(m, d) for m in recent_models for d in recent_datasets}
    wanted |= {Cell(m, d) for m in pinned for d in datasets}
    have = set(existing)
    return MatrixPlan(
        models=sorted(set(recent_models) | pinned, key=int),
        datasets=sorted({c.dataset_version for c in wanted}, key=datasets.index),
        wanted=sorted(wanted),
        missing=sorted(wanted - have),
    )


def fill_matrix(
    plan: MatrixPlan,
    cells: CellStore,
    compute: Callable[[Cell], CellRows],
    on_cell: Callable[[Cell, CellRows], None] | None = None,
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


def _has_test_samples(card: Mapping[str, object]) -> bool:
    counts = card.get("counts", {})
    assert isinstance(counts, dict)
    return any(sum(by_split.get("test", {}).values()) for by_split in counts.values())
