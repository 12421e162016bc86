"""Dataset-version build time and peak memory at 100k and 1M catalog rows (rows only).

Each size runs in its own process that reads the catalog from Parquet (as the asset does), so
that its peak RSS is its own. Measured: building the
snapshot (splits, weights, content id), publishing it (Parquet manifest + card, create-only) to
a local work store, and reading it back verified (sha256 + id). The baseline is the 100k run of
the same code in the same invocation; the printed scaling factor is time(1M) / time(100k).

    python -m bench.dataset [--sizes 100000 1000000]

The loader half of the benchmark (cached loader vs PIL decode on every access) is
bench/loader.py; `make bench` runs both.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def make_catalog(rows: int, path: str) -> None:
    import pyarrow.parquet as pq

    from tests.support.catalogs import fake_catalog

    types = [f"t{i}" for i in range(40)]
    pq.write_table(fake_catalog(rows, failure_fraction=0.05, image_types=types), path)


def measure(path: str) -> dict[str, float]:
    import pyarrow.parquet as pq

    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
    from maskfind_pipeline.storage import LocalObjectStore

    catalog = pq.read_table(path)
    rows = catalog.num_rows
    with tempfile.TemporaryDirectory() as tmp:
        versions = VersionStore(LocalObjectStore(tmp))
        start = time.perf_counter()
        snapshot = build_snapshot(catalog, VersionConfig())
        built = time.perf_counter()
        published = versions.publish(snapshot, catalog_rows=rows)
        written = time.perf_counter()
        assert versions.manifest(published.version_id).num_rows == rows
        done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": rows,
        "build_s": built - start,
        "publish_s": written - built,
        "verify_s": done - written,
        "total_s": done - start,
        "peak_rss_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--make", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_catalog(int(args.make[0]), args.make[1])
        return
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.sizes:
            path = f"{tmp}/catalog-{rows}.parquet"
            subprocess.run([sys.executable, __file__, "--make", str(rows), path], check=True)
            out = subprocess.run(
                [sys.executable, __file__, "--child", path],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{'rows':>10} {'build s':>8} {'publish s':>9} {'verify s':>8} {'total s':>8} "
        f"{'peak RSS MB':>11}"
    )
    for r in results:
        print(
            f"{r['rows']:>10,} {r['build_s']:>8.2f} {r['publish_s']:>9.2f} "
            f"{r['verify_s']:>8.2f} {r['total_s']:>8.2f} {r['peak_rss_mb']:>11.0f}"
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(
            f"scaling: {last['rows'] / first['rows']:.0f}x rows -> "
            f"{last['total_s'] / first['total_s']:.1f}x time, "
            f"{last['peak_rss_mb'] / first['peak_rss_mb']:.1f}x peak RSS"
        )


if __name__ == "__main__":
    main()
