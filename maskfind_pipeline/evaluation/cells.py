"""The evaluation matrix as a long table: one row per (model, dataset version, group).

A group is `overall`, one image type (`image_type`) or one source (`source`). A cell (model
version x dataset version) is an aggregate of the model's per-sample scores over the version's
test split (`evaluation.scores.cell_rows`). Each computed cell is first committed as its own
create-only Parquet part, so computing a cell is atomic and a second writer loses, and each
model's parts are then compacted into few files (`data.parts.PartTable`), so the gate and the
history read the few files of the models they compare, not one file per cell:

    evaluations/cells/model=<version>/dataset=<id>.parquet      (a cell not compacted yet)
    evaluations/cells/model=<version>/_compacted/..., .../_snapshots/<seq>.json
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
    """Evaluated cells in a work store: one compacted table per model version."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def table(self, model_version: str) -> PartTable:
        return PartTable(self.store, f"{PREFIX}model={model_version}/", CELL_SCHEMA)

    def models(self) -> list[str]:
        """Every model version with a cell."""
        return [f.removeprefix("model=") for f in self.store.folders(PREFIX) if "=" in f]

    def existing(self, models: Iterable[str] | None = None) -> set[Cell]:
        """The cells stored (of `models` only, when given: one listing and snapshot each)."""
        found = set()
        for model in self.models() if models is None else models:
            layout = self.table(model).layout()
            for key in (*layout.parts, *layout.covers):
                name = key.rpartition("/")[2].removesuffix(".parquet")
                if name.startswith("dataset="):
                    found.add(Cell(model, name.removeprefix("dataset=")))
        return found

    def missing(self, wanted: Iterable[Cell]) -> list[Cell]:
        wanted = set(wanted)
        have = self.existing({c.model_version for c in wanted})
        return sorted(wanted - have)

    def write(self, cell: Cell, rows: Sequence[Mapping[str, object]]) -> bool:
        """Store a computed cell; False if another run stored it first (it is kept)."""
        if cell in self.existing([cell.model_version]):
            return False
        table = pa.Table.from_pylist(list(rows), schema=CELL_SCHEMA)
        return self.table(cell.model_version).append(table, f"dataset={cell.dataset_version}")

    def read(
        self, cells: Iterable[Cell] | None = None, *, models: Iterable[str] | None = None
    ) -> pa.Table:
        """The rows of `cells`, else of every cell of `models`, else of every cell; each cell's
        first write only."""
        wanted = None if cells is None else {(c.model_version, c.dataset_version) for c in cells}
        if wanted is not None:
            models = sorted({m for m, _ in wanted})
        tables = [self.table(m).read() for m in (self.models() if models is None else models)]
        table = _first_write(pa.concat_tables(tables)) if tables else CELL_SCHEMA.empty_table()
        if wanted is None:
            return table
        pairs = zip(
            table.column("model_version").to_pylist(),
            table.column("dataset_version").to_pylist(),
            strict=True,
        )
        return table.filter(pa.array([p in wanted for p in pairs], pa.bool_()))

    def compact(self, models: Iterable[str] | None = None) -> None:
        for model in self.models() if models is None else models:
            self.table(model).compact()


def _first_write(table: pa.Table) -> pa.Table:
    """Rows of the earliest write of each cell (a cell written again in a race counts once)."""
    if table.num_rows == 0:
        return table
    keys = ["model_version", "dataset_version"]
    ranked = table.append_column("__row", pa.array(np.arange(table.num_rows), pa.int64()))
    first = ranked.group_by(keys, use_threads=False).aggregate([("evaluated_at", "min")])
    kept = ranked.join(first, keys, join_type="inner", use_threads=False)
    at = np.asarray(kept.column("evaluated_at")) == np.asarray(kept.column("evaluated_at_min"))
    rows = np.sort(np.asarray(kept.column("__row"))[at])
    return table.take(pa.array(rows, pa.int64()))
