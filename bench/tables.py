"""Table formats for the catalog's shape: nightly appends in ingest-sized parts, read by every step.

Candidates, each fed the same synthetic catalog rows (bench/scale.py's generator) one night at a
time, in the same run:

- parts: create-only Parquet parts, never compacted (what the catalog was), read with pyarrow;
- duckdb: the same parts, queried out of core by DuckDB (`read_parquet` over the folder);
- compacted: `data.parts.PartTable` (the project's: parts + size-tiered compaction + snapshots);
- delta: Delta Lake (`deltalake`): an append a night, `optimize.compact()` after each, `vacuum`.

Printed per candidate: seconds spent appending (and compacting), files a full read touches at
the end, seconds to read the three columns ingest's seen filter needs, bytes on disk, and the
time of that read relative to `compacted` (the baseline, measured in the same run).

    python -m bench.tables [--nights 120] [--rows-per-night 2000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.scale import Config, night_rows, timeline
from maskfind_pipeline.data.catalog import CATALOG_SCHEMA
from maskfind_pipeline.data.parts import PartTable
from maskfind_pipeline.storage import LocalObjectStore

COLUMNS = ["image_key", "image_etag", "mask_etag"]
BATCH = 1000


def nights(count: int, per_night: int) -> list[pa.Table]:
    config = Config(months=max(1, -(-count // 28)), images_per_month=per_night * 30)
    return [night_rows(config, n).samples for n in timeline(config)[:count]]


def batches(table: pa.Table) -> list[pa.Table]:
    return [table.slice(i, BATCH) for i in range(0, table.num_rows, BATCH)]


def run_parts(root: Path, data: list[pa.Table], duck: bool) -> dict[str, float]:
    folder = root / "parts"
    folder.mkdir()
    start = time.perf_counter()
    for n, night in enumerate(data):
        for b, part in enumerate(batches(night)):
            pq.write_table(part, folder / f"part-{n:05d}-{b:03d}.parquet", compression="zstd")
    write_s = time.perf_counter() - start
    files = len(list(folder.glob("*.parquet")))
    start = time.perf_counter()
    if duck:
        import duckdb

        query = f"SELECT {', '.join(COLUMNS)} FROM read_parquet('{folder}/*.parquet')"
        relation = duckdb.sql(query)
        assert relation is not None
        rows = relation.to_arrow_table().num_rows
    else:
        rows = pq.read_table(folder, columns=COLUMNS).num_rows
    return _result(write_s, files, time.perf_counter() - start, rows, folder)


def run_compacted(root: Path, data: list[pa.Table]) -> dict[str, float]:
    table = PartTable(LocalObjectStore(root / "compacted"), "catalog/", CATALOG_SCHEMA)
    start = time.perf_counter()
    for n, night in enumerate(data):
        for b, part in enumerate(batches(night)):
            table.append(part, f"part-{n:05d}-{b:03d}")
        table.compact()
    write_s = time.perf_counter() - start
    fresh = PartTable(LocalObjectStore(root / "compacted"), "catalog/", CATALOG_SCHEMA)
    files = len(fresh.layout().files)
    start = time.perf_counter()
    rows = fresh.read(COLUMNS).num_rows
    return _result(write_s, files, time.perf_counter() - start, rows, root / "compacted")


def run_delta(root: Path, data: list[pa.Table]) -> dict[str, float]:
    from deltalake import DeltaTable, write_deltalake

    path = root / "delta"
    start = time.perf_counter()
    for night in data:
        for part in batches(night):
            write_deltalake(str(path), part, mode="append")
        table = DeltaTable(str(path))
        table.optimize.compact()
        table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    write_s = time.perf_counter() - start
    table = DeltaTable(str(path))
    files = len(table.file_uris())
    start = time.perf_counter()
    rows = table.to_pyarrow_table(columns=COLUMNS).num_rows
    return _result(write_s, files, time.perf_counter() - start, rows, path)


def _result(write_s: float, files: int, read_s: float, rows: int, path: Path) -> dict[str, float]:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"write_s": write_s, "files": files, "read_s": read_s, "rows": rows, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nights", type=int, default=120)
    parser.add_argument("--rows-per-night", type=int, default=2000)
    parser.add_argument("--formats", nargs="+", default=["parts", "duckdb", "compacted", "delta"])
    args = parser.parse_args()
    data = nights(args.nights, args.rows_per_night)
    total = sum(t.num_rows for t in data)
    candidates: dict[str, Callable[[Path], dict[str, float]]] = {
        "parts": lambda root: run_parts(root, data, duck=False),
        "duckdb": lambda root: run_parts(root, data, duck=True),
        "compacted": lambda root: run_compacted(root, data),
        "delta": lambda root: run_delta(root, data),
    }
    results = {}
    for name, run in candidates.items():
        if name not in args.formats:
            continue
        root = Path(tempfile.mkdtemp(prefix=f"bench-tables-{name}-"))
        try:
            results[name] = run(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        assert results[name]["rows"] == total, (name, results[name]["rows"], total)
    base = results["compacted"]["read_s"] if "compacted" in results else 1.0
    print(f"{len(data)} nights, {total:,} catalog rows in {BATCH}-row parts (same rows for all)")
    print(
        "| format | append (+compact) s | files read at the end "
        "| read 3 columns s | x compacted | MB on disk |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['write_s']:.1f} | {r['files']:,.0f} | {r['read_s']:.3f} | "
            f"{r['read_s'] / base:.2f} | {r['bytes'] / 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
