"""Training throughput: the shipped loop vs. a naive loop, and vs. this machine's bf16 matmul.

Both loops train the same architecture (a ResNet-34 U-Net from scratch by default) on the same
synthetic train split at the same size and batch size, in the same run:

- shipped: `maskfind_pipeline.ml.segmentation.train.train` over `make_train_loaders` (decoded
  memory-mapped cache, default augmentation), with the device rules of `ml.device` (channels_last,
  bf16 autocast where the CPU has native bf16, fused AdamW, glibc allocator tuning). Whole epochs
  are timed, data loading included, validation not; the first epoch is not counted.
- naive: float32, NCHW, each pair read from the store and decoded with PIL at every step,
  `num_workers=0`, plain AdamW; one warm-up batch, then timed epochs.

The naive epochs and the matmul timings run between the shipped epochs (from `on_epoch`), so
a noisy neighbour on a shared machine hits all three alike; the best of each is reported, all
values are printed. Achieved GFLOP/s counts a training step as 3x the forward FLOPs
(`ml.segmentation.model.forward_flops`) and is compared with a bf16 `torch.matmul` on the same
device (2048² on CPU, 8192² on a GPU).

On a GPU (`--device cuda`, the default where one is visible) both loops run there: the naive
one in float32 NCHW, the shipped one with bf16 autocast and channels_last, augmenting whole
batches on the GPU (`AugmentConfig.where="auto"`; per sample in the loader on the CPU).

`--where sample,batch` compares where the shipped loop augments instead (`AugmentConfig.where`:
per sample in the loader, or whole batches on the training device), without the naive loop:

- the data path alone: an epoch of the train loader, copied to the device (and augmented there
  in `batch` mode), with no model: the most images/s that augmentation lets training reach;
- training (not with `--data-only`): whole shipped runs of 1 + `--epochs` epochs per mode (the
  first not counted).

Modes alternate, `--repeats` rounds of each, so a noisy neighbour hits all alike; the best and
the median of each mode are reported with every value, as ratios to the first mode's.

`--precision float32,bfloat16,auto` compares the shipped loop's precisions instead, without
the naive loop: float32 (channels_last), bfloat16 autocast (channels_last) and `auto`, what
training picks (`ml.precision`: timed on the model where the CPU claims bfloat16, cached);
whole shipped runs of 1 + `--epochs` epochs each (the first not counted), alternating,
`--repeats` rounds. Printed: images/s of each and auto / max(float32, bfloat16) (goal >= 0.9).

    python -m bench.train [--samples 104] [--size 256] [--batch-size 8] [--epochs 2]
                          [--encoder resnet34] [--workers 0] [--no-augment] [--device cpu]
                          [--where auto | --where sample,batch [--repeats 3] [--data-only]]
                          [--precision float32,bfloat16,auto [--repeats 3]]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
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
from maskfind_pipeline.data.decoded import DecodedArrays, build_decoded
from maskfind_pipeline.data.loader import MaskBatches
from maskfind_pipeline.ml.device import Placement, select_device
from maskfind_pipeline.ml.segmentation.batch_augment import BatchAugment
from maskfind_pipeline.ml.segmentation.config import ModelConfig, TrainConfig
from maskfind_pipeline.ml.segmentation.losses import make_loss
from maskfind_pipeline.ml.segmentation.model import build_model, forward_flops, preprocess
from maskfind_pipeline.ml.segmentation.train import EpochReport, make_train_loaders, train
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.manifests import manifest_of
from tests.support.naive import NaiveDataset

VAL_EVERY = 13


def main() -> None:
    args = _parse()
    placement = select_device(args.device)
    config = ModelConfig(encoder_name=args.encoder, encoder_weights=None, input_size=args.size)
    modes = args.where.split(",")
    train_config = TrainConfig(
        epochs=args.epochs + 1,
        batch_size=args.batch_size,
        augment=AugmentConfig(enabled=not args.no_augment, where=modes[0]),
        num_workers=args.workers,
        device=str(placement.device),
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
            f"{config.encoder_name} U-Net from scratch, {torch.get_num_threads()} threads, "
            f"{args.workers} workers"
        )
        if args.precision:
            compare_precisions(
                args.precision.split(","), config, train_config, manifest, decoded, args
            )
            return
        if len(modes) > 1:
            compare_modes(modes, config, train_config, manifest, decoded, placement, args)
            return
        naive = NaiveLoop(config, train_config, store, train_rows, args.size, placement.device)
        rates = interleaved(config, train_config, manifest, decoded, naive, placement)
    _report(rates, 3 * forward_flops(config, args.size) / 1e9, _matmul_side(placement.device))


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
    placement: Placement,
) -> dict[str, list[float]]:
    """Shipped epochs with a naive epoch and a matmul timing between them (noise hits all)."""
    device = placement.device
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

    result = _train(config, train_config, manifest, decoded, placement, on_epoch=between)
    print(f"shipped settings: {result.device}")
    return rates


def compare_modes(
    modes: list[str],
    config: ModelConfig,
    train_config: TrainConfig,
    manifest: pa.Table,
    decoded: DecodedArrays,
    placement: Placement,
    args: argparse.Namespace,
) -> None:
    """The data path alone, then training, per `AugmentConfig.where` mode (module docstring)."""
    data = data_path_rates(modes, train_config, manifest, decoded, placement, args.repeats)
    _report_modes("data path alone (loader + copy + augmentation)", data)
    if args.data_only:
        return
    rates = modes_interleaved(
        modes, config, train_config, manifest, decoded, placement, args.repeats
    )
    matmul = max(rates.pop("matmul"))
    gflop_per_image = 3 * forward_flops(config, args.size) / 1e9
    _report_modes("training (shipped loop)", rates, gflop_per_image, matmul)


def precision_settings(name: str, device: str | None) -> Placement:
    """The shipped loop's settings in precision `name`: `float32`, `bfloat16` (autocast, the
    CPU's rule for depthwise convolutions) or `auto` (`select_device`, timed where it must)."""
    placement = select_device(device)
    if name == "auto":
        return placement
    dtype = torch.bfloat16 if name == "bfloat16" else None
    note = (("precision_source", "forced by the bench"),)
    return dataclasses.replace(
        placement,
        autocast_dtype=dtype,
        grad_scaler=False,
        channels_last=True,
        needs_measurement=False,
        precision_note=note,
    )


def compare_precisions(
    names: list[str],
    config: ModelConfig,
    train_config: TrainConfig,
    manifest: pa.Table,
    decoded: DecodedArrays,
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """Shipped runs per precision, alternating (`--repeats` rounds); the best epoch of each
    counts (module docstring)."""
    rates: dict[str, list[float]] = {name: [] for name in names}
    chosen: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in names:
            placement = precision_settings(name, args.device)

            def timed(report: EpochReport, name: str = name) -> None:
                if report.epoch > 1:
                    rates[name].append(report.images_per_second)
                    print(f"  {name:8}: {report.images_per_second:8.2f} images/s", flush=True)

            result = _train(config, train_config, manifest, decoded, placement, on_epoch=timed)
            chosen[name] = result.device["precision"] + (
                "" if result.device["channels_last"] == "true" else " (contiguous)"
            )
    print(f"\nbest of each (all: {', '.join(f'{k}={_fmt(v)}' for k, v in rates.items())})")
    for name in names:
        print(f"{name:8}  {max(rates[name]):8.2f} images/s  (trained in {chosen[name]})")
    if {"float32", "bfloat16", "auto"} <= set(names):
        best = max(max(rates["float32"]), max(rates["bfloat16"]))
        ratio = max(rates["auto"]) / best
        print(f"auto / max(float32, bfloat16): {ratio:5.2f}  (goal >= 0.9)")
    return rates


def data_path_rates(
    modes: list[str],
    train_config: TrainConfig,
    manifest: pa.Table,
    decoded: DecodedArrays,
    placement: Placement,
    repeats: int,
) -> dict[str, list[float]]:
    """Images/s of train-loader epochs copied to the device and augmented, no model; modes
    alternate (one warm-up epoch each first: worker start-up)."""
    paths = {mode: DataPath(train_config, mode, manifest, decoded, placement) for mode in modes}
    for path in paths.values():
        path.epoch()
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, path in paths.items():
            rates[mode].append(path.epoch())
            print(f"  data path, {mode:6}: {rates[mode][-1]:8.1f} images/s")
    return rates


class DataPath:
    """The shipped train loader of one `AugmentConfig.where` mode, and what the loop does with
    a batch before the model: the copy to the device and, for `MaskBatches`, augmentation."""

    def __init__(
        self,
        train_config: TrainConfig,
        mode: str,
        manifest: pa.Table,
        decoded: DecodedArrays,
        placement: Placement,
    ) -> None:
        config = _with_where(train_config, mode)
        self.loader = make_train_loaders(manifest, decoded, config, placement)["train"]
        self.device = placement.device
        dataset = self.loader.dataset
        augment = dataset.device_augment if isinstance(dataset, MaskBatches) else None
        self.augment = BatchAugment(augment, config.seed) if augment else None

    def epoch(self) -> float:
        """Images per second of one epoch."""
        start, images = time.perf_counter(), 0
        for batch in self.loader:
            image = batch["image"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            if self.augment is not None:
                image, mask = self.augment(image, mask)
            images += len(image)
        torch.get_device_module(self.device).synchronize()
        return images / (time.perf_counter() - start)


def modes_interleaved(
    modes: list[str],
    config: ModelConfig,
    train_config: TrainConfig,
    manifest: pa.Table,
    decoded: DecodedArrays,
    placement: Placement,
    repeats: int,
) -> dict[str, list[float]]:
    """Shipped runs per mode, alternating; a matmul timing after each run."""
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    rates["matmul"] = [bf16_matmul_gflops(placement.device)]
    for _ in range(repeats):
        for mode in modes:

            def timed(report: EpochReport, mode: str = mode) -> None:
                if report.epoch > 1:
                    rates[mode].append(report.images_per_second)
                    print(f"  training,  {mode:6}: {report.images_per_second:8.1f} images/s")

            mode_config = _with_where(train_config, mode)
            _train(config, mode_config, manifest, decoded, placement, on_epoch=timed)
            rates["matmul"].append(bf16_matmul_gflops(placement.device))
    return rates


def _with_where(train_config: TrainConfig, mode: str) -> TrainConfig:
    augment = train_config.augment.model_copy(update={"where": mode})
    return train_config.model_copy(update={"augment": augment})


def _report_modes(
    title: str,
    rates: dict[str, list[float]],
    gflop_per_image: float | None = None,
    matmul: float | None = None,
) -> None:
    """Best and median images/s per mode, as ratios to the first mode's."""
    base = next(iter(rates.values()))
    print(f"\n{title} (all: {', '.join(f'{k}={_fmt(v)}' for k, v in rates.items())})")
    for mode, values in rates.items():
        best, median = max(values), statistics.median(values)
        line = (
            f"{mode:6}  best {best:8.1f} images/s ({best / max(base):5.2f}x)  "
            f"median {median:8.1f} ({median / statistics.median(base):5.2f}x)"
        )
        if gflop_per_image is not None and matmul is not None:
            line += f"  best {100 * gflop_per_image * best / matmul:5.1f} % of bf16 matmul"
        print(line)
    if matmul is not None:
        print(f"bf16 matmul {matmul:8.0f} GFLOP/s")


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
    parser.add_argument(
        "--where",
        default="auto",
        help="AugmentConfig.where of the shipped loop; several (sample,batch) compare them",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of a --where or --precision comparison"
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="compare the shipped loop's precisions, e.g. float32,bfloat16,auto",
    )
    parser.add_argument("--data-only", action="store_true", help="compare the data path only")
    return parser.parse_args()


def _train(config, train_config, manifest, decoded, placement, *, on_epoch):
    """One shipped-loop training on the decoded version, reporting each epoch to `on_epoch`."""
    return train(
        config,
        train_config,
        make_train_loaders(manifest, decoded, train_config, placement),
        image_types=manifest.column("image_type").to_pylist(),
        sources=manifest.column("source").to_pylist(),
        placement=placement,
        on_epoch=on_epoch,
        progress_bar=False,
    )


if __name__ == "__main__":
    main()
