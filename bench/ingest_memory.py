"""Peak RSS and time of the ingest or dataset_version step at one catalog size, two checkouts on
the same data.

Builds the catalog of `bench.scale` up to night N - 1 at `--images-per-month` (rows only, as
`bench.scale` does), then runs night N's step (`bench.scale`'s measured steps: `--step ingest`,
the real `flows.ingest.ingest_catalog` on the whole listing so far, fetch + decode replaced by the
rows they give; `--step version`, the `dataset_version` asset's work on the catalog with night N
appended, last night's version as its parent) once per checkout, each in a fresh process on its
own copy of the work store, in alternation, `--repeats` times:

    python -m bench.ingest_memory --a /work/main --b . --night 31 [--step ingest|version]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq

from bench.scale import (
    LISTING_DIR,
    Catalog,
    Config,
    IngestOptions,
    LocalObjectStore,
    bulk_append,
    listing_path,
    night_rows,
    publish_parent,
    timeline,
)


def build(config: Config, root: Path, night: int, step: str = "ingest") -> int:
    """Listing files of nights 1..`night`, the catalog of nights 1..`night` - 1 (for `version`:
    and a version of it published, then night `night` appended); its rows before tonight."""
    (root / LISTING_DIR).mkdir(parents=True, exist_ok=True)
    writer = Catalog(LocalObjectStore(root / "work"))
    rows = 0
    for n in timeline(config)[:night]:
        tonight = night_rows(config, n)
        pq.write_table(tonight.listing, listing_path(root, n.index))
        if n.index < night:
            bulk_append(writer, tonight, IngestOptions().batch_size, n.run_id)
            Catalog(LocalObjectStore(root / "work")).compact()
            rows += tonight.samples.num_rows
        elif step == "version":
            publish_parent(root)
            bulk_append(writer, tonight, IngestOptions().batch_size, n.run_id)
            Catalog(LocalObjectStore(root / "work")).compact()
    return rows


def run(
    checkout: Path, config: Config, base: Path, night: int, scratch: Path, step: str = "ingest"
) -> dict:
    """Night `night`'s `step` by `checkout`'s code on a copy of `base`, in a fresh process."""
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(base / "work", scratch / "work")
    (scratch / LISTING_DIR).symlink_to(base / LISTING_DIR)
    spec = json.dumps(
        {"config": asdict(config), "root": str(scratch), "night": night, "step": step}
    )
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--child", spec],
        check=True,
        capture_output=True,
        text=True,
        cwd=checkout,
        env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout a (before)")
    parser.add_argument("--b", type=Path, default=Path("."), help="checkout b (after)")
    parser.add_argument("--night", type=int, default=31)
    parser.add_argument("--images-per-month", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--step", choices=("ingest", "version"), default="ingest")
    args = parser.parse_args()
    config = Config(images_per_month=args.images_per_month, measure_months=())
    with tempfile.TemporaryDirectory(prefix="bench-ingest-memory-") as tmp:
        base = Path(tmp) / "base"
        rows = build(config, base, args.night, args.step)
        print(f"catalog before night {args.night}: {rows:,} rows", file=sys.stderr)
        got: dict[str, list[dict]] = {"a": [], "b": []}
        for _ in range(args.repeats):
            for name in ("a", "b"):
                checkout = getattr(args, name).resolve()
                scratch = Path(tmp) / name
                got[name].append(run(checkout, config, base, args.night, scratch, args.step))
                last = got[name][-1]
                print(
                    f"{name}: {last['peak_rss_mb']:,.0f} MB, {last['total_s']:.1f} s",
                    file=sys.stderr,
                )
    print(f"{args.step}, night {args.night}: median of {args.repeats} run(s) per checkout")
    print("| checkout | catalog rows before | what it did | peak RSS MB | total s |")
    print("|---|---|---|---|---|")
    for name in ("a", "b"):
        runs = got[name]
        did = (
            f"{runs[0]['listed_keys']:,} keys listed, {runs[0]['new_samples']:,} new"
            if args.step == "ingest"
            else f"{runs[0]['manifest_rows']:,} manifest rows"
        )
        print(
            f"| {name} ({getattr(args, name)}) | {rows:,} | {did} | "
            f"{statistics.median(r['peak_rss_mb'] for r in runs):,.0f} | "
            f"{statistics.median(r['total_s'] for r in runs):.1f} |"
        )


if __name__ == "__main__":
    main()
