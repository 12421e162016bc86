"""Quality on the synthetic demo data: validation mIoU reached within a training time budget.

Generates `--per-type` labeled samples of each default image type at `--size`², splits them by
content hash as a dataset version does (70/15/15), trains the demo's offline-pretrained
EfficientNet-Lite0 U-Net for at most `--minutes`, and prints the best epoch's validation mIoU
(at the tuned threshold) overall and per image type, and the test mIoU of the same model.

    python bench/quality.py [--per-type 50] [--size 128] [--minutes 3] [--lr 4e-3]
                            [--batch-size 32] [--epochs 60] [--loss dice_bce]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.versions import assign_splits
from maskfind_pipeline.ml.config import TrainConfig
from maskfind_pipeline.ml.inference import predict_probabilities
from maskfind_pipeline.ml.metrics import evaluate
from maskfind_pipeline.ml.model import demo_model_config
from maskfind_pipeline.ml.train import make_train_loaders, train
from maskfind_pipeline.storage import LocalObjectStore
from maskfind_pipeline.testing.manifests import manifest_of


def main() -> None:
    args = _parse()
    config = replace(demo_model_config(), input_size=args.size)
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        loss=args.loss,
        early_stopping_patience=0,
        max_minutes=args.minutes,
        num_workers=args.workers,
        augment=not args.no_augment,
    )
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        store = LocalObjectStore(Path(tmp) / "store")
        keys = synthetic.generate(store, synthetic.DEFAULT_TYPES, args.per_type, size=args.size)
        manifest = manifest_of(store, keys, size=args.size)
        splits = assign_splits(manifest.column("sample_id"), (0.70, 0.15, 0.15))
        field = manifest.schema.get_field_index("split")
        manifest = manifest.set_column(field, "split", pa.array(splits, pa.string()))
        decoded = build_decoded(
            manifest,
            store,
            ContentCache(Path(tmp) / "c"),
            Path(tmp) / "d",
            version_id="q",
            size=args.size,
        )
        types = manifest.column("image_type").to_pylist()
        sources = manifest.column("source").to_pylist()
        counts = {s: int((splits == s).sum()) for s in ("train", "val", "test")}
        print(f"{len(synthetic.DEFAULT_TYPES)} types x {args.per_type} at {args.size}²: {counts}")
        start = time.perf_counter()
        result = train(
            config,
            tc,
            make_train_loaders(manifest, decoded, tc),
            image_types=types,
            sources=sources,
            progress_bar=False,
            on_epoch=lambda r: print(
                f"  epoch {r.epoch:3d} loss {r.train_loss:.4f} val@0.5 {r.val_miou:.4f} "
                f"{r.images_per_second:5.1f} img/s"
            ),
        )
        seconds = time.perf_counter() - start
        test = make_loaders(manifest, decoded, batch_size=64, augment=None, seed=0)["test"]
        predictions = predict_probabilities(result.model, result.config, test)
        rows = np.asarray(predictions.indices)
        test_metrics = evaluate(
            predictions.probabilities,
            predictions.masks,
            result.config.threshold,
            image_types=[types[i] for i in rows],
            sources=[sources[i] for i in rows],
        )
    val = result.val_metrics
    print(
        f"\n{len(result.history)} epochs in {seconds:.0f} s ({result.stop_reason}), best epoch "
        f"{result.best_epoch}, threshold {result.config.threshold:.2f}, {result.device}"
    )
    print(f"{'image type':<28} {'val mIoU':>9} {'test mIoU':>9}")
    for name, group in sorted(val.by_image_type.items()):
        print(f"{name:<28} {group.miou:9.4f} {test_metrics.by_image_type[name].miou:9.4f}")
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
