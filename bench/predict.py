"""Inference throughput: the shipped `Predictor` path vs. plain float32 NCHW, same device and run.

Both run the same ResNet-34 U-Net (random weights) on the same uint8 batches already on the
device, so only the forward pass is timed:

- plain: float32, NCHW (`model(preprocess(images))` under `torch.no_grad`);
- shipped: `Predictor.to(device).logits` (autocast to bf16 where the device has it,
  channels_last), i.e. what evaluation and production inference use.

The two alternate `--rounds` times; the best round of each is reported.

    python -m bench.predict [--size 256] [--batch-size 32] [--batches 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from maskfind_pipeline.ml.config import ModelConfig
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.model import build_model, preprocess
from maskfind_pipeline.ml.predict import Predictor, weights_to_bytes


def main() -> None:
    args = _parse()
    device = select_device(args.device).device
    config = ModelConfig(encoder_name=args.encoder, encoder_weights=None, input_size=args.size)
    torch.manual_seed(0)
    model = build_model(config, pretrained=False).eval()
    shipped = Predictor.from_weights(config, weights_to_bytes(model)).to(str(device))
    plain = model.to(device)
    images = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8)
    images = images.to(device)

    @torch.no_grad()
    def run_plain() -> torch.Tensor:
        return plain(preprocess(images, config))

    agreement = _agreement(run_plain(), shipped.logits(images))
    rates: dict[str, list[float]] = {"plain": [], "shipped": []}
    for _ in range(args.rounds):
        rates["plain"].append(_rate(run_plain, args, device))
        rates["shipped"].append(_rate(lambda: shipped.logits(images), args, device))
    best = {k: max(v) for k, v in rates.items()}
    print(
        f"{config.encoder_name} U-Net, {args.size}², batch {args.batch_size}, "
        f"{shipped.settings.describe()}"
    )
    for name, values in rates.items():
        print(f"{name:8} best {best[name]:9.1f} images/s  (all: {[round(v, 1) for v in values]})")
    print(f"mask agreement at 0 logit (plain vs shipped): {agreement:.4%}")
    print(f"\nshipped / plain: {best['shipped'] / best['plain']:.2f}x")


def _rate(
    forward: Callable[[], torch.Tensor], args: argparse.Namespace, device: torch.device
) -> float:
    forward()
    torch.get_device_module(device).synchronize()
    start = time.perf_counter()
    for _ in range(args.batches):
        forward()
    torch.get_device_module(device).synchronize()
    return args.batches * args.batch_size / (time.perf_counter() - start)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a > 0) == (b > 0)).float().mean())


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if visible)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
