"""Small helpers that turn tables and counters into Dagster metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg


def markdown_table(
    rows: Sequence[Mapping[str, object]], limit: int = 20
) -> dg.MarkdownMetadataValue:
    """The first `limit` rows as a markdown table (all rows share the first row's columns)."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more rows_")
    return dg.MetadataValue.md("\n".join(lines))


def table(rows: Sequence[Mapping[str, object]], limit: int = 200) -> dg.TableMetadataValue:
    """The first `limit` rows as Dagster table metadata (the UI renders it natively, sortable),
    with a schema: each column typed by its values (int, float, bool, else string)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    schema = dg.TableSchema(
        columns=[dg.TableColumn(c, _column_type([row.get(c) for row in rows])) for c in columns]
    )
    records = [dg.TableRecord({c: _value(row.get(c)) for c in columns}) for row in rows[:limit]]
    return dg.MetadataValue.table(records, schema=schema)


def _column_type(values: Sequence[object]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def _value(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()  # type: ignore[no-any-return, union-attr]
    return str(value)


def counts_table(
    counts: Mapping[str, int], key: str, value: str = "count"
) -> dg.MarkdownMetadataValue:
    return markdown_table([{key: k, value: v} for k, v in sorted(counts.items())], limit=200)


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:120]
