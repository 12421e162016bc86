"""The nightly job's data steps at demo size, this tree against another (e.g. main), same run.

Two nights on the embedded defaults (local stores): the demo's synthetic factory (`--count`
images of each default type at `--size`), then as many again; each night runs what the nightly
job's data steps run: `flows.ingest.ingest_catalog`, `flows.datasets.publish_dataset_version`,
`added_samples_sheet`, and `flows.training.load_version` (the decode training does, at the
production model's input size). Each tree runs in its own process with its own PYTHONPATH,
alternating A, B, A, B (`--repeats` pairs), and the median seconds per step are printed with the
ratio B / A. Training, evaluation and the reviewer are not run (their models are the same code).

    python -m bench.data_nights --a /path/to/main --b . [--repeats 2] [--count 16] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def child(count: int, size: int) -> dict[str, float]:
    """One tree's two nights (runs in the child process; imports the tree on PYTHONPATH)."""
    from maskfind_pipeline import synthetic
    from maskfind_pipeline.data.cache import ContentCache
    from maskfind_pipeline.data.ingest import IngestOptions
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.data.versions import VersionConfig
    from maskfind_pipeline.flows.datasets import added_samples_sheet, publish_dataset_version
    from maskfind_pipeline.flows.ingest import ingest_catalog
    from maskfind_pipeline.flows.options import TrainingOptions
    from maskfind_pipeline.flows.training import load_version
    from maskfind_pipeline.storage import LocalObjectStore

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-nights-") as tmp:
        root = Path(tmp)
        data, work = LocalObjectStore(root / "data"), LocalObjectStore(root / "work")
        cache = ContentCache(root / "cache")
        options = TrainingOptions()
        for night in (1, 2):
            synthetic.generate(
                data, synthetic.DEFAULT_TYPES, count, size=size, start_index=(night - 1) * count
            )
            timed = _timer(times, f"night {night}: ")
            timed("ingest", ingest_catalog, data, work, cache, IngestOptions(), run_id=f"n{night}")
            vid = timed("dataset_version", publish_dataset_version, work, VersionConfig())
            timed("contact sheet", added_samples_sheet, VersionStore(work), data, vid.version_id)
            timed(
                "decode for training",
                load_version,
                vid.version_id,
                options,
                VersionStore(work),
                data,
                cache,
                root / "cache" / "decoded",
            )
    import maskfind_pipeline

    times["total"] = sum(times.values())
    print(f"tree: {Path(maskfind_pipeline.__file__).parents[1]}", file=sys.stderr)
    return times


def _timer(times: dict[str, float], prefix: str) -> Callable[..., Any]:
    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[prefix + name] = time.perf_counter() - start
        return out

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a", type=Path, required=True, help="baseline tree (e.g. main)")
    parser.add_argument("--b", type=Path, default=Path("."), help="tree measured against it")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.count, args.size)))
        return
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for _ in range(args.repeats):
        for label, tree in (("a", args.a), ("b", args.b)):
            # Run as a script from the tree's root: sys.path[0] is bench/, so the package
            # imported is the tree's (PYTHONPATH), not this one's.
            env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
            command = [sys.executable, str(Path(__file__).resolve()), "--child", "--a", "."]
            command += ["--count", str(args.count), "--size", str(args.size)]
            out = subprocess.run(
                command,
                env=env,
                cwd=tree.resolve(),
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
    print(f"a = {args.a}, b = {args.b}; {args.repeats} runs each, alternating; median seconds")
    print("| step | a | b | b / a |")
    print("|---|---|---|---|")
    for step in runs["a"][0]:
        a = statistics.median(r[step] for r in runs["a"])
        b = statistics.median(r[step] for r in runs["b"])
        print(f"| {step} | {a:.2f} | {b:.2f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
