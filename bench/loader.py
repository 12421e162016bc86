"""Loader throughput: the decoded, memory-mapped cache vs. decoding with PIL on every access.

Both loaders serve the same train split at the same size and batch size, with the same
DataLoader settings, in the same run: the cached one reads `build_decoded`'s memory maps, the
naive one reads image and mask bytes from the local store and decodes and resizes them on
every access. Also printed: the one-off build time of the cache, the time to reopen it, and the
cached loader with the default training augmentation (`AugmentConfig(enabled=True)`).

    python -m bench.loader [--samples 500] [--source-size 512] [--size 256] [--passes 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.loader import AugmentConfig, make_loaders
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.manifests import manifest_of
from tests.support.naive import NaiveDataset


def main() -> None:
    args = _parse()
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        store = LocalObjectStore(Path(tmp) / "store")
        per_type = -(-args.samples // len(synthetic.DEFAULT_TYPES))
        start = time.perf_counter()
        keys = synthetic.generate(
            store, synthetic.DEFAULT_TYPES, per_type, size=args.source_size, seed=1
        )
        manifest = _manifest(store, keys, args.source_size)
        print(f"generated {len(keys)} pairs at {args.source_size}² in {_since(start):.1f} s")
        rates = _measure_all(store, manifest, Path(tmp), args)
    _report(rates, args.workers)


def _measure_all(
    store: LocalObjectStore, manifest: pa.Table, tmp: Path, args: argparse.Namespace
) -> dict[str, float]:
    cache, root = ContentCache(tmp / "content"), tmp / "decoded"

    def build() -> Any:
        return build_decoded(manifest, store, cache, root, version_id="bench", size=args.size)

    start = time.perf_counter()
    decoded = build()
    print(f"one-off build of the decoded cache: {_since(start):.2f} s ({len(decoded)} samples)")
    start = time.perf_counter()
    build()
    print(f"reopening the built cache:          {_since(start) * 1000:.1f} ms")
    train_rows = [r for r in manifest.to_pylist() if r["split"] == "train"]
    print(f"train split: {len(train_rows)} samples at {args.size}², batch {args.batch_size}")
    rates: dict[str, float] = {}
    for workers in args.workers:
        naive = _naive_loader(store, train_rows, args, workers)
        for augment, label in ((None, "cached"), (AugmentConfig(enabled=True), "cached+augment")):
            cached = make_loaders(
                manifest,
                decoded,
                batch_size=args.batch_size,
                num_workers=workers,
                augment=augment,
                seed=0,
            )["train"]
            rates[f"{label} w={workers}"] = _rate(
                f"{label}, {workers} workers", cached, args.passes
            )
        rates[f"naive w={workers}"] = _rate(f"naive PIL, {workers} workers", naive, 1)
    return rates


def _naive_loader(
    store: LocalObjectStore, rows: list[dict[str, Any]], args: argparse.Namespace, workers: int
) -> DataLoader[dict[str, Any]]:
    return DataLoader(
        NaiveDataset(store, rows, args.size),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=workers > 0,
    )


def _rate(label: str, loader: DataLoader[dict[str, Any]], passes: int) -> float:
    _one_pass(loader)
    start = time.perf_counter()
    images = sum(_one_pass(loader) for _ in range(passes))
    seconds = time.perf_counter() - start
    print(f"  {label:<28} {images:>6} images {seconds:>7.2f} s {images / seconds:>9.0f} images/s")
    return images / seconds


def _one_pass(loader: DataLoader[dict[str, Any]]) -> int:
    return sum(int(batch["image"].shape[0]) for batch in loader)


def _manifest(store: LocalObjectStore, keys: list[str], side: int) -> pa.Table:
    return manifest_of(
        store, keys, size=side, split=lambda i: {0: "val", 1: "test"}.get(i % 10, "train")
    )


def _report(rates: dict[str, float], workers: list[int]) -> None:
    print("\nratios (same run, cached / naive):")
    for w in workers:
        cached, naive = rates[f"cached w={w}"], rates[f"naive w={w}"]
        print(f"  {w} workers: {cached / naive:6.1f}x ({cached:.0f} vs {naive:.0f} images/s)")


def _since(start: float) -> float:
    return time.perf_counter() - start


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    return parser.parse_args()


if __name__ == "__main__":
    main()
