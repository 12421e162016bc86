"""`latest_by` (one stable sort of two columns, one take) keeps the rows the sort-rank-group-by
version it replaced kept, in the same order."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from maskfind_pipeline.data.catalog import latest_by


def reference(table: pa.Table, key: str, order: str) -> pa.Table:
    """The implementation before: sorted copies and a group-by of the keys."""
    if table.num_rows == 0:
        return table
    ranked = table.append_column("__pos", pa.array(range(table.num_rows), pa.int64()))
    ranked = ranked.sort_by([(order, "ascending"), ("__pos", "ascending")])
    ranked = ranked.append_column("__rank", pa.array(range(ranked.num_rows), pa.int64()))
    last = ranked.group_by(key).aggregate([("__rank", "max")]).column("__rank_max")
    return ranked.take(last).sort_by(key).drop_columns(["__pos", "__rank"])


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b", "é", "B", "a/b"]), st.integers(0, 4)), max_size=40
    )
)
def test_latest_by_keeps_the_last_row_of_each_key(rows: list[tuple[str, int]]) -> None:
    base = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    table = pa.table(
        {
            "image_key": [k for k, _ in rows],
            "ingested_at": pa.array(
                [base + dt.timedelta(hours=h) for _, h in rows], pa.timestamp("us", tz="UTC")
            ),
            "row": list(range(len(rows))),
        }
    )
    assert latest_by(table, "image_key", "ingested_at").equals(
        reference(table, "image_key", "ingested_at")
    )
