"""An append-only table of create-only Parquet parts that compacts itself into few files.

Writers add parts (`<prefix><name>.parquet`, create-only, so a crash leaves whole parts or
nothing). Compaction merges the parts into one compacted file and commits a snapshot, a
create-only JSON under `<prefix>_snapshots/<seq>.json` naming the table's compacted files and
the parts they cover; the covered parts are deleted after the commit. A reader takes the newest
snapshot's files plus every part it does not cover, so it sees each row once whether it runs
before, during or after a compaction. Compacted files are tiered by size (as an LSM tree): the
new file is merged with the newest ones while they are not more than `ratio` times larger, so a
table of N nights' rows is about log_ratio(N) files and each row is rewritten that many times,
and past `max_files` files the newest ones are merged regardless. The last `keep_snapshots`
snapshots and their files are kept, so the table as it was at any of them can be read again
(`read(snapshot=...)`).

Any `.parquet` key under the prefix that is not a compacted file counts as a part, so tables
written before compaction existed (one file per batch or per cell) are read and compacted as
they are.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from maskfind_pipeline.storage.base import ObjectExists, ObjectNotFound, ObjectStore

SNAPSHOTS = "_snapshots/"
COMPACTED = "_compacted/"


@dataclass(frozen=True)
class Layout:
    """What one listing of the prefix found: the newest snapshot and the uncovered parts."""

    seq: int
    compacted: tuple[str, ...]
    rows: tuple[int, ...]
    covers: frozenset[str]
    parts: tuple[str, ...]
    snapshots: tuple[int, ...]
    stale: tuple[str, ...] = ()
    """Parts a committed snapshot covers that are still there (its compaction died)."""

    @property
    def files(self) -> list[str]:
        return [*self.compacted, *self.parts]


class PartTable:
    """Parquet parts under `prefix` in a store, read as one table of `schema` (see module)."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        schema: pa.Schema,
        *,
        max_files: int = 24,
        keep_snapshots: int = 7,
        ratio: int = 4,
    ) -> None:
        self.store, self.prefix, self.schema = store, prefix, schema
        self.max_files, self.keep_snapshots, self.ratio = max_files, keep_snapshots, ratio
        self._cache: dict[tuple[str, tuple[str, ...] | None], pa.Table] = {}  # files never change

    def append(self, table: pa.Table, name: str) -> bool:
        """Write `table` as the part `<prefix><name>.parquet`; False if that part exists."""
        try:
            data = to_parquet(table.cast(self.schema))
            self.store.put(self._part_key(name), data, create_only=True)
        except ObjectExists:
            return False
        return True

    def layout(self, snapshot: int | None = None) -> Layout:
        """The files a read takes now (or at `snapshot`: its compacted files only)."""
        parts, snapshots = [], []
        for info in self.store.list(self.prefix):
            rest = info.key[len(self.prefix) :]
            if rest.startswith(SNAPSHOTS) and rest.endswith(".json"):
                snapshots.append(int(rest[len(SNAPSHOTS) : -len(".json")]))
            elif rest.endswith(".parquet") and not rest.startswith(COMPACTED):
                parts.append(info.key)
        snapshots.sort()
        seq = snapshot if snapshot is not None else (snapshots[-1] if snapshots else 0)
        if seq and seq not in snapshots:
            raise KeyError(f"{self.prefix}: no snapshot {seq} (kept: {snapshots})")
        doc = json.loads(self.store.get(self._snapshot_key(seq))) if seq else {}
        covers = frozenset(doc.get("covers", ()))
        live = () if snapshot is not None else tuple(p for p in parts if p not in covers)
        stale = tuple(p for p in parts if p in covers)
        files = tuple(doc.get("files", ()))
        rows = tuple(doc.get("rows", [0] * len(files)))
        return Layout(seq, files, rows, covers, live, tuple(snapshots), stale)

    def read(
        self, columns: Sequence[str] | None = None, *, snapshot: int | None = None
    ) -> pa.Table:
        """Every row, each once (a part deleted by a concurrent compaction is re-listed)."""
        for attempt in range(3):
            layout = self.layout(snapshot)
            try:
                tables = [self._read(key, columns) for key in layout.files]
            except ObjectNotFound:
                if attempt == 2:
                    raise
                continue
            schema = self._schema(columns)
            return pa.concat_tables(tables) if tables else schema.empty_table()
        raise AssertionError("unreachable")

    def compact(self, *, min_parts: int = 1) -> bool:
        """Merge the uncovered parts (and, past `max_files`, every compacted file) into one
        compacted file and commit a snapshot; False when there was too little to do or another
        compaction committed first."""
        layout = self.layout()
        if len(layout.parts) < min_parts or not layout.parts:
            return False
        merged = pa.concat_tables([self._read(k, None) for k in layout.parts])
        sources = set(layout.parts)
        files, rows = list(layout.compacted), list(layout.rows)
        while files and (rows[-1] <= self.ratio * merged.num_rows or len(files) >= self.max_files):
            sources.add(files[-1])
            merged = pa.concat_tables([self._read(files.pop(), None), merged])
            rows.pop()
        seq = layout.seq + 1
        key = f"{self.prefix}{COMPACTED}{seq:010d}-{uuid.uuid4().hex[:8]}.parquet"
        self.store.put(key, to_parquet(merged), create_only=True)
        covers = sorted(layout.covers | set(layout.parts))
        doc = {
            "seq": seq,
            "files": [*files, key],
            "rows": [*rows, merged.num_rows],
            "covers": covers,
        }
        try:
            self.store.put(self._snapshot_key(seq), json.dumps(doc).encode(), create_only=True)
        except ObjectExists:  # another compaction won: ours covers nothing
            self.store.delete(key)
            return False
        for part in (*layout.parts, *layout.stale):
            self.store.delete(part)
        # What was merged is read from the new file from now on (already in memory).
        self._cache = {k: t for k, t in self._cache.items() if k[0] not in sources}
        self._cache[(key, None)] = merged.combine_chunks()
        self._expire(seq, layout.snapshots)
        return True

    def _expire(self, newest: int, older: Sequence[int]) -> None:
        """Drop snapshots past the last `keep_snapshots`, and files only they named."""
        expired = [s for s in older if s <= newest - self.keep_snapshots]
        if not expired:
            return
        kept = [s for s in (*older, newest) if s not in expired]
        named: set[str] = set()
        for s in kept:
            named |= set(json.loads(self.store.get(self._snapshot_key(s))).get("files", ()))
        for s in expired:
            doc = json.loads(self.store.get(self._snapshot_key(s)))
            self.store.delete(self._snapshot_key(s))
            for key in doc.get("files", ()):
                if key not in named:
                    self.store.delete(key)

    def _read(self, key: str, columns: Sequence[str] | None) -> pa.Table:
        """One file's rows (only `columns` are decoded), cast to the table's schema."""
        wanted = tuple(columns) if columns is not None else None
        if (key, wanted) not in self._cache:
            data = io.BytesIO(self.store.get(key))
            table = pq.read_table(data, columns=list(wanted) if wanted else None)
            self._cache[(key, wanted)] = table.cast(self._schema(columns))
        return self._cache[(key, wanted)]

    def _schema(self, columns: Sequence[str] | None) -> pa.Schema:
        if columns is None:
            return self.schema
        return pa.schema([self.schema.field(c) for c in columns])

    def _part_key(self, name: str) -> str:
        return f"{self.prefix}{name}.parquet"

    def _snapshot_key(self, seq: int) -> str:
        return f"{self.prefix}{SNAPSHOTS}{seq:010d}.json"


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
