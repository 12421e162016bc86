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


def counts_table(
    counts: Mapping[str, int], key: str, value: str = "count"
) -> dg.MarkdownMetadataValue:
    return markdown_table([{key: k, value: v} for k, v in sorted(counts.items())], limit=200)


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:120]
