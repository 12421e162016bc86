"""The evaluation matrix as a long table: one row per (model, dataset version, group).

A group is `overall`, one image type (`image_type`) or one source (`source`). A cell (model
version x dataset version) is an aggregate of the model's per-sample scores over the version's
test split (`evaluation.scores.cell_rows`). Each computed cell is first committed as its own
create-only Parquet part, so computing a cell is atomic and a second writer loses, and the parts
are then compacted into few files (`data.parts.PartTable`), so the gate, the heatmaps and the
history read one small table, not one file per cell:

    evaluations/cells/model=<version>/dataset=<id>.parquet      (a cell not compacted yet)
    evaluations/cells/_compacted/..., evaluations/cells/_snapshots/<seq>.json
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.parts import PartTable
from maskfind_pipeline.storage.base import ObjectStore

PREFIX = "evaluations/cells/"

CELL_SCHEMA = pa.schema(
    [
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("dataset_version", pa.string(), nullable=False),
        pa.field("group_kind", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("miou", pa.float64(), nullable=False),
        pa.field("precision", pa.float64(), nullable=False),
        pa.field("recall", pa.float64(), nullable=False),
        pa.field("n_images", pa.int64(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("mlflow_run_id", pa.string()),
        pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass(frozen=True, order=True)
class Cell:
    """One (model version, dataset version) pair of the matrix."""

    model_version: str
    dataset_version: str

    @property
    def key(self) -> str:
        return f"{PREFIX}model={self.model_version}/dataset={self.dataset_version}.parquet"


class CellStore:
    """Evaluated cells in a work store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.table = PartTable(store, PREFIX, CELL_SCHEMA)

    def existing(self) -> set[Cell]:
        layout = self.table.layout()
        found = set()
        for key in layout.parts:
            model, _, dataset = key[len(PREFIX) :].removesuffix(".parquet").partition("/")
            found.add(Cell(model.removeprefix("model="), dataset.removeprefix("dataset=")))
        if layout.compacted:
            pairs = self.table.read(["model_version", "dataset_version"])
            pairs = pairs.group_by(["model_version", "dataset_version"]).aggregate([])
            found |= {Cell(r["model_version"], r["dataset_version"]) for r in pairs.to_pylist()}
        return found

    def missing(self, wanted: Iterable[Cell]) -> list[Cell]:
        have = self.existing()
        return sorted({c for c in wanted if c not in have})

    def write(self, cell: Cell, rows: Sequence[Mapping[str, object]]) -> bool:
        """Store a computed cell; False if another run stored it first (it is kept)."""
        if cell in self.existing():
            return False
        table = pa.Table.from_pylist(list(rows), schema=CELL_SCHEMA)
        name = cell.key[len(PREFIX) :].removesuffix(".parquet")
        return self.table.append(table, name)

    def read(self, cells: Iterable[Cell] | None = None) -> pa.Table:
        """The rows of `cells` (default: every cell), each cell's first write only."""
        table = _first_write(self.table.read())
        if cells is None:
            return table
        wanted = {(c.model_version, c.dataset_version) for c in cells}
        pairs = zip(
            table.column("model_version").to_pylist(),
            table.column("dataset_version").to_pylist(),
            strict=True,
        )
        return table.filter(pa.array([p in wanted for p in pairs], pa.bool_()))

    def compact(self) -> None:
        self.table.compact()


def _first_write(table: pa.Table) -> pa.Table:
    """Rows of the earliest write of each cell (a cell written again in a race counts once)."""
    if table.num_rows == 0:
        return table
    keys = ["model_version", "dataset_version"]
    ranked = table.append_column("__row", pa.array(np.arange(table.num_rows), pa.int64()))
    first = ranked.group_by(keys, use_threads=False).aggregate([("evaluated_at", "min")])
    kept = ranked.join(first, keys, use_threads=False)
    at = np.asarray(kept.column("evaluated_at")) == np.asarray(kept.column("evaluated_at_min"))
    rows = np.sort(np.asarray(kept.column("__row"))[at])
    return table.take(pa.array(rows, pa.int64()))
