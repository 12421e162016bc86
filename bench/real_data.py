"""Quality on real photos: train on one set, test on the other (an image type never seen).

Uses ../shared/data/real (horses, boats; internal benchmarks only, never copied into the repo).
Each direction: the training set's pairs are split by content hash into train / val / test; the
other set is all test. The demo's offline-pretrained EfficientNet-Lite0 U-Net is trained within a
time budget, its threshold tuned on val; reported: mIoU on the training type's own test split
(seen) and on every image of the other type (unseen).

    python -m bench.real_data [--size 128] [--minutes 2.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.ingest import ingest
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.ml.config import TrainConfig, demo_model_spec
from maskfind_pipeline.ml.inference import evaluate_loader
from maskfind_pipeline.ml.train import make_train_loaders, train
from maskfind_pipeline.storage import LocalObjectStore

SETS = {"horse": "weizmann_horse", "boat": "sysu_shapes_boat"}


def load_sets(real: Path, store: LocalObjectStore) -> None:
    for image_type, folder in SETS.items():
        for image in sorted((real / folder / "images").glob("*.jpg")):
            mask = real / folder / "masks" / f"{image.stem}.png"
            store.put(
                f"labeled/{image.stem}.jpg", image.read_bytes(), tags={"image_type": image_type}
            )
            store.put(f"labeled/{image.stem}.mask.png", mask.read_bytes())


def direction(catalog: pa.Table, trained: str, store, cache, root, args) -> dict[str, Any]:
    manifest = build_snapshot(catalog, VersionConfig()).manifest
    types = np.asarray(manifest.column("image_type").to_pylist(), dtype=object)
    splits = np.where(
        types == trained, manifest.column("split").to_numpy(zero_copy_only=False), "test"
    )
    manifest = manifest.set_column(
        manifest.schema.get_field_index("split"),
        manifest.schema.field("split"),
        pa.array(splits, pa.string()),
    )
    config = demo_model_spec(args.size)
    decoded = build_decoded(
        manifest, store, cache, root, version_id=f"real-{trained}", size=args.size
    )
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=32,
        learning_rate=3e-3,
        early_stopping_patience=10,
        max_minutes=args.minutes,
    )
    loaders = make_train_loaders(manifest, decoded, tc)
    start = time.perf_counter()
    result = train(
        config,
        tc,
        loaders,
        image_types=list(types),
        sources=manifest.column("source").to_pylist(),
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    test = make_loaders(manifest, decoded, batch_size=32, augment=None, seed=0)["test"]
    metrics = evaluate_loader(
        result.model,
        result.config,
        test,
        image_types=list(types),
        sources=manifest.column("source").to_pylist(),
    )
    unseen = next(t for t in SETS if t != trained)
    return {
        "trained_on": trained,
        "epochs": len(result.history),
        "train_s": seconds,
        "val_miou": result.val_metrics.overall.miou,
        "seen_test_miou": metrics.by_image_type[trained].miou,
        "seen_test_n": metrics.by_image_type[trained].n_images,
        "unseen_miou": metrics.by_image_type[unseen].miou,
        "unseen_n": metrics.by_image_type[unseen].n_images,
        "threshold": result.config.threshold,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--real-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real"
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=2.5)
    args = parser.parse_args()
    if not args.real_dir.exists():
        raise SystemExit(f"{args.real_dir} not found: this benchmark needs ../shared/data/real")
    with tempfile.TemporaryDirectory(prefix="real-") as tmp:
        store = LocalObjectStore(Path(tmp) / "data")
        load_sets(args.real_dir, store)
        cache = ContentCache(Path(tmp) / "cache")
        report = ingest(
            store, Catalog(LocalObjectStore(Path(tmp) / "work")), run_id="real", cache=cache
        )
        print(f"ingested {len(report.new_rows)} pairs, quarantined {len(report.refusals)}")
        catalog = report.new_samples
        rows = [direction(catalog, t, store, cache, Path(tmp) / "decoded", args) for t in SETS]
    print(
        f"\nEfficientNet-Lite0 U-Net (ImageNet, offline), {args.size}², "
        f"budget {args.minutes} min per direction"
    )
    print(
        f"{'trained on':>10} {'epochs':>6} {'train s':>8} {'val':>6} {'seen test':>14} "
        f"{'unseen (all)':>16} {'thr':>5}"
    )
    for r in rows:
        print(
            f"{r['trained_on']:>10} {r['epochs']:>6} {r['train_s']:>8.0f} {r['val_miou']:>6.3f} "
            f"{r['seen_test_miou']:>7.3f} (n={r['seen_test_n']:>3}) "
            f"{r['unseen_miou']:>7.3f} (n={r['unseen_n']:>3}) {r['threshold']:>5.2f}"
        )


if __name__ == "__main__":
    main()
