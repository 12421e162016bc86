"""Which test samples each dataset version holds, for every version at once, in one small table.

Versions are ordered (oldest first, as `VersionStore.list()` orders them) and numbered by that
order. A test sample's content (sample id, mask sha256, image type, source) enters a version and
stays in the next ones until it is relabeled or dropped, so its membership is a run of consecutive
version numbers: one row `[first, last]` per run. Version k's test split is the rows with
first <= k <= last, in sample id order (a manifest's order), so a cell of any version is computed
without reading its manifest again, and the table grows with the test samples, not with nights.

The table is rewritten whole (one create-only Parquet a version, named by its sequence) when new
versions are added; only their manifests are read. Versions already in the table are checked
against the object listing (the manifest's ETag as incorporated): a manifest that changed or went
missing is read again through `VersionStore.manifest`, which names it as corrupt.

    evaluations/test_members/<seq>.parquet, evaluations/test_members/<seq>.json
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maskfind_pipeline.data.parts import to_parquet
from maskfind_pipeline.data.version_store import PREFIX as DATASETS
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.storage.base import ObjectExists, ObjectStore

PREFIX = "evaluations/test_members/"
CONTENT = ["sample_id", "mask_sha256", "image_type", "source"]
CARRIED = ["image_key", "mask_key", "image_sha256"]

MEMBER_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string(), nullable=False),
        pa.field("image_type", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("mask_key", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("first", pa.int32(), nullable=False),
        pa.field("last", pa.int32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class TestMembers:
    """The membership table and the versions it covers (`ids[k]` is version number k)."""

    table: pa.Table
    ids: tuple[str, ...]

    def number(self, vid: str) -> int:
        return self.ids.index(vid)

    def rows_of(self, vids: Sequence[str]) -> pa.Table:
        """Test rows (distinct content) of any of `vids`, manifest-like, for scoring."""
        wanted = np.zeros(len(self.ids) + 1, np.int32)
        for vid in vids:
            wanted[self.number(vid)] = 1
        reach = np.concatenate([[0], np.cumsum(wanted)])
        first = np.asarray(self.table.column("first"))
        last = np.asarray(self.table.column("last"))
        hit = reach[last + 1] - reach[first] > 0
        rows = self.table.filter(pa.array(hit)).drop_columns(["first", "last"])
        n = rows.num_rows
        return rows.append_column("split", pa.array(["test"] * n, pa.string())).append_column(
            "weight", pa.array(np.ones(n, np.float32))
        )

    def test_split(self, vid: str) -> pa.Table:
        """Version `vid`'s test split: sample id, mask sha256, image type, source, split, in
        sample id order (as its manifest holds them)."""
        k = self.number(vid)
        first = np.asarray(self.table.column("first"))
        last = np.asarray(self.table.column("last"))
        rows = self.table.filter(pa.array((first <= k) & (k <= last))).select(CONTENT)
        return rows.append_column("split", pa.array(["test"] * rows.num_rows, pa.string()))


def update_members(
    work: ObjectStore, versions: VersionStore, cards: Sequence[Mapping]
) -> TestMembers:
    """The membership of every version in `cards` (oldest first), reading only the manifests of
    versions not in the stored table yet (see the module docstring).

    Raises:
        CorruptVersion: a version's manifest changed or went missing (named).
    """
    ids = [str(c["id"]) for c in cards]
    stored, doc = _latest(work)
    covered = list(doc.get("ids", []))
    etags = {i.key: i.etag for i in work.list(DATASETS) if i.key.endswith("/manifest.parquet")}
    recorded = doc.get("etags", {})
    for vid in covered:
        if etags.get(_manifest_key(vid)) != recorded.get(vid):
            versions.manifest(vid)  # raises CorruptVersion naming it, or proves it unchanged
    if covered != ids[: len(covered)]:  # versions reordered or removed: start over
        stored, covered, recorded = MEMBER_SCHEMA.empty_table(), [], {}
    table = stored
    for k in range(len(covered), len(ids)):
        table = _extend(table, versions.manifest(ids[k]), k)
        recorded = {**recorded, ids[k]: etags.get(_manifest_key(ids[k]))}
    if len(ids) > len(covered):
        _store(work, table, ids, recorded, int(doc.get("seq", 0)) + 1)
    return TestMembers(table, tuple(ids))


def _extend(members: pa.Table, manifest: pa.Table, k: int) -> pa.Table:
    """Add version k: runs that were open at k - 1 and hold a test row of it run on to k."""
    split = np.asarray(manifest.column("split"))
    test = manifest.filter(pa.array(split == "test")).select([*CONTENT, *CARRIED])
    last = np.asarray(members.column("last"))
    open_now = members.filter(pa.array(last == k - 1)) if members.num_rows else members
    marked = open_now.append_column("__row", pa.array(np.flatnonzero(last == k - 1), pa.int64()))
    cont = marked.select([*CONTENT, "__row"]).join(
        test.select(CONTENT), CONTENT, join_type="inner", use_threads=False
    )
    continuing = np.asarray(cont.column("__row"), np.int64)
    new_last = last.copy()
    new_last[continuing] = k
    updated = members.set_column(
        members.schema.get_field_index("last"), "last", pa.array(new_last, pa.int32())
    )
    fresh = test.join(open_now.select(CONTENT), CONTENT, join_type="left anti", use_threads=False)
    n = fresh.num_rows
    fresh = fresh.append_column("first", pa.array(np.full(n, k), pa.int32()))
    fresh = fresh.append_column("last", pa.array(np.full(n, k), pa.int32()))
    merged = pa.concat_tables(
        [updated.cast(MEMBER_SCHEMA), fresh.select(MEMBER_SCHEMA.names).cast(MEMBER_SCHEMA)]
    )
    return merged.sort_by([("sample_id", "ascending"), ("first", "ascending")])


def _latest(work: ObjectStore) -> tuple[pa.Table, dict]:
    seqs = sorted(
        int(i.key[len(PREFIX) : -len(".json")])
        for i in work.list(PREFIX)
        if i.key.endswith(".json")
    )
    if not seqs:
        return MEMBER_SCHEMA.empty_table(), {}
    doc = json.loads(work.get(f"{PREFIX}{seqs[-1]:010d}.json"))
    table = pq.read_table(io.BytesIO(work.get(doc["file"]))).cast(MEMBER_SCHEMA)
    return table, doc


def _store(work: ObjectStore, table: pa.Table, ids: list[str], etags: dict, seq: int) -> None:
    key = f"{PREFIX}{seq:010d}.parquet"
    doc = {"seq": seq, "file": key, "ids": ids, "etags": etags}
    try:
        work.put(key, to_parquet(table), create_only=True)
        work.put(f"{PREFIX}{seq:010d}.json", json.dumps(doc).encode(), create_only=True)
    except ObjectExists:  # a concurrent run stored the same versions first
        return
    for info in work.list(PREFIX):  # keep the newest two
        number = int(info.key[len(PREFIX) :].split(".")[0])
        if number < seq - 1:
            work.delete(info.key)


def _manifest_key(vid: str) -> str:
    return f"{DATASETS}{vid}/manifest.parquet"
