"""Quality on the synthetic demo data: validation mIoU reached within a training time budget.

Generates `--per-type` labeled samples of each default image type at `--size`², ingests them and
builds a dataset version's manifest (content-hash splits 70/15/15), trains the demo's
offline-pretrained EfficientNet-Lite0 U-Net for at most `--minutes`, and prints the best epoch's
validation mIoU (at the tuned threshold) overall and per image type, and the test mIoU of the
same model.

    python -m bench.quality [--per-type 50] [--size 128] [--minutes 3] [--lr 4e-3]
                            [--batch-size 32] [--epochs 60] [--loss dice_bce]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.ingest import ingest
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.ml.segmentation.config import TrainConfig, demo_model_spec
from maskfind_pipeline.ml.segmentation.inference import evaluate_loader
from maskfind_pipeline.ml.segmentation.train import make_train_loaders, train
from maskfind_pipeline.storage import LocalObjectStore


def main() -> None:
    args = _parse()
    config = demo_model_spec(args.size)
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        loss=args.loss,
        early_stopping_patience=0,
        max_minutes=args.minutes,
        num_workers=args.workers,
        augment=AugmentConfig(enabled=not args.no_augment),
    )
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        store = LocalObjectStore(Path(tmp) / "data")
        synthetic.generate(store, synthetic.DEFAULT_TYPES, args.per_type, size=args.size)
        cache = ContentCache(Path(tmp) / "cache")
        catalog = Catalog(LocalObjectStore(Path(tmp) / "work"))
        samples = ingest(store, catalog, run_id="quality", cache=cache).new_samples
        manifest = build_snapshot(samples, VersionConfig()).manifest
        decoded = build_decoded(
            manifest, store, cache, Path(tmp) / "decoded", version_id="quality", size=args.size
        )
        columns = {
            "image_types": manifest.column("image_type").to_pylist(),
            "sources": manifest.column("source").to_pylist(),
        }
        counts = dict(Counter(manifest.column("split").to_pylist()))
        print(f"{len(synthetic.DEFAULT_TYPES)} types x {args.per_type} at {args.size}²: {counts}")
        start = time.perf_counter()
        result = train(
            config,
            tc,
            make_train_loaders(manifest, decoded, tc),
            **columns,
            progress_bar=False,
            on_epoch=lambda r: print(
                f"  epoch {r.epoch:3d} loss {r.train_loss:.4f} val@0.5 {r.val_miou:.4f} "
                f"{r.images_per_second:5.1f} img/s"
            ),
        )
        seconds = time.perf_counter() - start
        test = make_loaders(manifest, decoded, batch_size=64, augment=None, seed=0)["test"]
        test_metrics = evaluate_loader(result.model, result.config, test, **columns)
    val = result.val_metrics
    print(
        f"\n{len(result.history)} epochs in {seconds:.0f} s ({result.stop_reason}), best epoch "
        f"{result.best_epoch}, threshold {result.config.threshold:.2f}, {result.device}"
    )
    print(f"{'image type':<28} {'val mIoU':>9} {'test mIoU':>9}")
    for name, group in sorted(val.by_image_type.items()):
        tested = test_metrics.by_image_type.get(name)
        print(f"{name:<28} {group.miou:9.4f} {tested.miou if tested else float('nan'):9.4f}")
    print(f"{'overall':<28} {val.overall.miou:9.4f} {test_metrics.overall.miou:9.4f}")
    print(f"\nvalidation mIoU {val.overall.miou:.4f} (goal >= 0.97)")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-type", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--loss", default="dice_bce")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    main()
