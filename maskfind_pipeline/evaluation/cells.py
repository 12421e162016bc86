"""The evaluation matrix as a long table: one row per (model, dataset version, group).

A group is `overall`, one image type (`image_type`) or one source (`source`). Each cell (model
version x dataset version) is stored as its own create-only Parquet file, so computing a cell
is atomic and "missing cells" is a listing:

    evaluations/cells/model=<version>/dataset=<id>.parquet
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from maskfind_pipeline.data.catalog import to_parquet
from maskfind_pipeline.storage.base import ObjectExists, ObjectStore

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

    def existing(self) -> set[Cell]:
        found = set()
        for info in self.store.list(PREFIX):
            model, _, dataset = info.key[len(PREFIX) :].removesuffix(".parquet").partition("/")
            found.add(Cell(model.removeprefix("model="), dataset.removeprefix("dataset=")))
        return found

    def missing(self, wanted: Iterable[Cell]) -> list[Cell]:
        have = self.existing()
        return sorted({c for c in wanted if c not in have})

    def write(self, cell: Cell, rows: Sequence[Mapping[str, object]]) -> bool:
        """Store a computed cell; False if another run stored it first (it is kept)."""
        table = pa.Table.from_pylist(list(rows), schema=CELL_SCHEMA)
        try:
            self.store.put(cell.key, to_parquet(table), create_only=True)
        except ObjectExists:
            return False
        return True

    def read(self, cells: Iterable[Cell] | None = None) -> pa.Table:
        keys = (
            [c.key for c in cells]
            if cells is not None
            else [i.key for i in self.store.list(PREFIX) if i.key.endswith(".parquet")]
        )
        tables = [pq.read_table(io.BytesIO(self.store.get(k))).cast(CELL_SCHEMA) for k in keys]
        return pa.concat_tables(tables) if tables else CELL_SCHEMA.empty_table()
