"""Tables reach the UI as Dagster table metadata with a typed schema."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from maskfind_pipeline.defs.metadata import table
from maskfind_pipeline.evaluation.cells import CELL_SCHEMA
from maskfind_pipeline.evaluation.report import matrix_rows, type_heatmap_png, type_matrix


def test_a_table_gets_a_schema_typed_by_its_values_and_keeps_missing_cells_empty() -> None:
    rows = [
        {"image_type": "a", "n": 3, "miou": np.float64(0.91), "ok": True},
        {"image_type": "b", "n": 5, "miou": None, "ok": False, "note": "new"},
    ]
    value = table(rows)
    assert [(c.name, c.type) for c in value.schema.columns] == [
        ("image_type", "string"),
        ("n", "int"),
        ("miou", "float"),
        ("ok", "bool"),
        ("note", "string"),
    ]
    assert [r.data for r in value.records] == [
        {"image_type": "a", "n": 3, "miou": 0.91, "ok": True, "note": None},
        {"image_type": "b", "n": 5, "miou": None, "ok": False, "note": "new"},
    ]
    assert type(value.records[0].data["miou"]) is float
    assert len(table(rows, limit=1).records) == 1


def test_the_matrix_has_a_row_per_model_and_a_column_per_dataset_version() -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def cell(
        model: str, dataset: str, miou: float, minutes: int, group: str = "overall"
    ) -> dict[str, object]:
        return {
            "model_version": model,
            "dataset_version": dataset,
            "group_kind": "overall" if group == "overall" else "image_type",
            "group": group,
            "miou": miou,
            "precision": 1.0,
            "recall": 1.0,
            "n_images": 10,
            "threshold": 0.5,
            "mlflow_run_id": None,
            "evaluated_at": now + dt.timedelta(minutes=minutes),
        }

    cells = pa.Table.from_pylist(
        [
            cell("1", "ds-a", 0.9, 0),
            cell("2", "ds-a", 0.95, 1),
            cell("2", "ds-b", 0.8, 2),
            cell("10", "ds-b", 0.7, 3, group="wafer"),
            cell("2", "ds-b", 0.6, 3, group="wafer"),
            cell("2", "ds-b", 0.9, 3, group="bar"),
        ],
        schema=CELL_SCHEMA,
    )
    assert matrix_rows(cells) == [
        {"model": "v1", "ds-a": 0.9, "ds-b": None},
        {"model": "v2", "ds-a": 0.95, "ds-b": 0.8},
    ]

    types, models, values = type_matrix(cells, "ds-b")
    assert types == ["bar", "wafer"] and models == ["2", "10"], "versions sort as numbers"
    np.testing.assert_array_equal(values, [[0.9, np.nan], [0.6, 0.7]])
    assert type_heatmap_png(cells, "ds-b").startswith(b"\x89PNG")
