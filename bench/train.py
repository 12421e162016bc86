"""Training throughput: the shipped loop vs. a naive loop, and vs. this machine's bf16 matmul.

Both loops train the same architecture (a ResNet-34 U-Net from scratch by default) on the same
synthetic train split at the same size and batch size, in the same run:

- shipped: `maskfind_pipeline.ml.train.train` over `make_train_loaders` (decoded memory-mapped
  cache, default augmentation), with the device rules of `ml.device` (channels_last, bf16
  autocast where the CPU has native bf16, fused AdamW, glibc allocator tuning). Whole epochs
  are timed, data loading included, validation not; the first epoch is not counted.
- naive: float32, NCHW, each pair read from the store and decoded with PIL at every step,
  `num_workers=0`, plain AdamW; one warm-up batch, then timed epochs.

The naive epochs and the matmul timings run between the shipped epochs (from `on_epoch`), so
a noisy neighbour on a shared machine hits all three alike; the best of each is reported, all
values are printed. Achieved GFLOP/s counts a training step as 3x the forward FLOPs
(`ml.model.forward_flops`) and is compared with a bf16 `torch.matmul` on the same device
(2048² on CPU, 8192² on a GPU).

On a GPU (`--device cuda`, the default where one is visible) both loops run there: the naive
one in float32 NCHW, the shipped one with bf16 autocast and channels_last.

    python -m bench.train [--samples 104] [--size 256] [--batch-size 8] [--epochs 2]
                          [--encoder resnet34] [--workers 0] [--no-augment] [--device cpu]
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
from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.ml.config import ModelConfig, TrainConfig
from maskfind_pipeline.ml.device import DeviceSettings, select_device
from maskfind_pipeline.ml.losses import make_loss
from maskfind_pipeline.ml.model import build_model, forward_flops, preprocess
from maskfind_pipeline.ml.train import EpochReport, make_train_loaders, train
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.manifests import manifest_of
from tests.support.naive import NaiveDataset

VAL_EVERY = 13


def main() -> None:
    args = _parse()
    settings = select_device(args.device)
    config = ModelConfig(encoder_name=args.encoder, encoder_weights=None, input_size=args.size)
    train_config = TrainConfig(
        epochs=args.epochs + 1,
        batch_size=args.batch_size,
        augment=AugmentConfig(enabled=not args.no_augment),
        num_workers=args.workers,
        device=str(settings.device),
    )
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        store = LocalObjectStore(Path(tmp) / "store")
        per_type = -(-args.samples // len(synthetic.DEFAULT_TYPES))
        keys = synthetic.generate(store, synthetic.DEFAULT_TYPES, per_type, size=args.source_size)
        manifest = _manifest(store, keys, args.source_size)
        decoded = build_decoded(
            manifest,
            store,
            ContentCache(Path(tmp) / "c"),
            Path(tmp) / "d",
            version_id="b",
            size=args.size,
        )
        train_rows = [r for r in manifest.to_pylist() if r["split"] == "train"]
        print(
            f"{len(train_rows)} train images at {args.size}², batch {args.batch_size}, "
            f"{config.encoder_name} U-Net from scratch, {torch.get_num_threads()} threads"
        )
        naive = NaiveLoop(config, train_config, store, train_rows, args.size, settings.device)
        rates = interleaved(config, train_config, manifest, decoded, naive, settings)
    _report(rates, 3 * forward_flops(config, args.size) / 1e9, _matmul_side(settings.device))


class NaiveLoop:
    """float32, NCHW, PIL decode from the store at every step, no workers, plain AdamW."""

    def __init__(
        self,
        config: ModelConfig,
        train_config: TrainConfig,
        store: LocalObjectStore,
        rows: list[dict[str, Any]],
        size: int,
        device: torch.device,
    ) -> None:
        torch.manual_seed(0)
        self.config, self.device = config, device
        self.model = build_model(config, pretrained=False).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train_config.learning_rate)
        self.loss_fn = make_loss(train_config.loss)
        self.loader = DataLoader(
            NaiveDataset(store, rows, size), batch_size=train_config.batch_size, shuffle=True
        )
        self.step(next(iter(self.loader)))

    def step(self, batch: dict[str, Any]) -> None:
        batch = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
        logits = self.model(preprocess(batch["image"], self.config))
        loss = self.loss_fn(logits, batch["mask"], batch["weight"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def epoch(self) -> float:
        """Images per second of one epoch."""
        start, images = time.perf_counter(), 0
        for batch in self.loader:
            self.step(batch)
            images += len(batch["image"])
        torch.get_device_module(self.device).synchronize()
        return images / (time.perf_counter() - start)


def interleaved(
    config: ModelConfig,
    train_config: TrainConfig,
    manifest: pa.Table,
    decoded: Any,
    naive: NaiveLoop,
    settings: DeviceSettings,
) -> dict[str, list[float]]:
    """Shipped epochs with a naive epoch and a matmul timing between them (noise hits all)."""
    device = settings.device
    rates: dict[str, list[float]] = {
        "shipped": [],
        "naive": [],
        "matmul": [bf16_matmul_gflops(device)],
    }

    def between(report: EpochReport) -> None:
        print(f"  shipped epoch {report.epoch}: {report.images_per_second:6.2f} images/s")
        if report.epoch > 1:
            rates["shipped"].append(report.images_per_second)
        if report.epoch < report.epochs:
            rates["naive"].append(naive.epoch())
            print(f"  naive epoch:     {rates['naive'][-1]:6.2f} images/s")
        rates["matmul"].append(bf16_matmul_gflops(device))

    print(f"shipped settings: {settings.describe()}")
    train(
        config,
        train_config,
        make_train_loaders(manifest, decoded, train_config, settings),
        image_types=manifest.column("image_type").to_pylist(),
        sources=manifest.column("source").to_pylist(),
        settings=settings,
        on_epoch=between,
        progress_bar=False,
    )
    return rates


def _report(rates: dict[str, list[float]], gflop_per_image: float, side: int) -> None:
    shipped, naive, matmul = (max(rates[k]) for k in ("shipped", "naive", "matmul"))
    print(f"\nbest of each (all: {', '.join(f'{k}={_fmt(v)}' for k, v in rates.items())})")
    print(f"naive loop    {naive:7.2f} images/s ({gflop_per_image * naive:6.0f} GFLOP/s)")
    print(f"shipped loop  {shipped:7.2f} images/s ({gflop_per_image * shipped:6.0f} GFLOP/s)")
    print(f"bf16 matmul   {matmul:7.0f} GFLOP/s ({side}x{side})")
    print(f"\nshipped / naive:                {shipped / naive:5.2f}x  (goal >= 2.3x)")
    share = 100 * gflop_per_image * shipped / matmul
    print(f"shipped GFLOP/s of bf16 matmul: {share:5.1f} %  (goal >= 70 %)")


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


def bf16_matmul_gflops(device: torch.device, repeats: int = 5) -> float:
    """Best of `repeats` timings of 10 bf16 matmuls (after a warm-up), in GFLOP/s."""
    side = _matmul_side(device)
    a = torch.randn(side, side, dtype=torch.bfloat16, device=device)
    b = torch.randn(side, side, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        torch.get_device_module(device).synchronize()
        start = time.perf_counter()
        for _ in range(10):
            torch.matmul(a, b)
        torch.get_device_module(device).synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 * 10 / best / 1e9


def _matmul_side(device: torch.device) -> int:
    return 8192 if device.type == "cuda" else 2048


def _manifest(store: LocalObjectStore, keys: list[str], side: int) -> pa.Table:
    return manifest_of(
        store, keys, size=side, split=lambda i: "val" if i % VAL_EVERY == 0 else "train"
    )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=104)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--source-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--epochs", type=int, default=2, help="timed shipped epochs")
    parser.add_argument("--workers", type=int, default=0, help="shipped loader workers")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if visible)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
