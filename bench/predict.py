"""Inference throughput of every backend (`ml.backends`) on the same model and batches, one run.

One model with random weights (ResNet-34 U-Net by default, `--encoder NAME`, or `--demo`: the
demo's EfficientNet-Lite0 U-Net) predicts the same uint8 batches through each backend's
`predict`, what production runs; each returns float32 probabilities and image features
(`ml.novelty.features`) on the CPU from one forward pass, so a row times preprocessing, the forward
pass, the sigmoid and the features:

- torch_fp32: the exact float32 predictor, the reference of every ratio and agreement;
- torch: the shipped `Predictor.to(device)` path (bf16 autocast where the device has it,
  channels_last);
- onnxruntime: the exported ONNX file, float32 CPU execution provider;
- openvino: the IR converted from it, CPU plugin at the precision it picks (bf16 here).

Exports go to a temporary cache (or `--cache`, then reused) and their time is printed. All
backends use `--threads` threads (default: torch's). They alternate `--rounds` times, each
round a warm-up batch then `--batches` timed ones; the best round counts. Agreement is the
share of mask pixels equal to torch_fp32's at threshold 0.5, with the mean and largest
absolute probability difference (random weights saturate many pixels at 0 or 1, so these
agreements are higher than a trained model's would be near its threshold: the unit tests hold
every backend to >= 99 % at the median probability of a small unsaturated model). Feature
agreement (`feat err`) is the largest absolute difference in an image's features from
torch_fp32's relative to that image's largest feature, over the batch (the unit tests' measure).
Last, what `choose_backend` (production's `auto`) picks with its own shorter measurement.

`--tta-flip`: the model predicts with test-time flipping (`ModelSpec.tta_flip`) on every
backend, and one more row, `fp32_no_tta`, runs the same weights without it: its `vs fp32` is
what the flip costs.

`--device cuda`: only the two torch rows, on the GPU (the other runtimes run on the CPU here),
timed with the host-device copies of input and output.

    python -m bench.predict [--encoder resnet34 | --demo] [--size 256] [--batch-size 32]
        [--batches 5] [--rounds 3] [--threads N] [--device cpu] [--cache DIR] [--tta-flip]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from maskfind_pipeline.ml.backends.base import InferenceBackend
from maskfind_pipeline.ml.backends.choose import choose_backend, synthetic_batch
from maskfind_pipeline.ml.backends.config import BackendName
from maskfind_pipeline.ml.backends.exports import ModelExports
from maskfind_pipeline.ml.backends.runtimes import OpenVinoBackend, TorchBackend, open_backend
from maskfind_pipeline.ml.device import cpu_has_native_bf16
from maskfind_pipeline.ml.segmentation.config import ModelConfig, demo_model_spec
from maskfind_pipeline.ml.segmentation.model import build_model
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes

BACKENDS: tuple[BackendName, ...] = ("torch_fp32", "torch", "onnxruntime", "openvino")


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    config = _config(args)
    torch.manual_seed(0)
    predictor = Predictor.from_weights(
        config, weights_to_bytes(build_model(config, pretrained=False))
    )
    with tempfile.TemporaryDirectory() as scratch:
        exports = ModelExports(predictor, Path(args.cache or scratch))
        backends, notes = _open(exports, args.device)
        images = synthetic_batch(args.batch_size, config.input_size)
        rates = _measure(backends, images, args)
        print(_heading(config, args, notes))
        print(_table(backends, images, rates))
        if args.device in (None, "cpu"):
            _print_auto(predictor, exports, args)


def _config(args: argparse.Namespace) -> ModelConfig:
    spec = demo_model_spec(args.size) if args.demo else None
    fields = spec.model_dump() if spec else {"encoder_name": args.encoder, "input_size": args.size}
    return ModelConfig.model_validate(
        {**fields, "encoder_weights": None, "tta_flip": args.tta_flip}
    )


def _open(
    exports: ModelExports, device: str | None
) -> tuple[dict[str, InferenceBackend], list[str]]:
    """The backends to compare, and notes: export times, OpenVINO's settings, skipped ones."""
    if device not in (None, "cpu"):
        exact = exports.exact_predictor()
        fp32 = TorchBackend("torch_fp32", exact.to(device, mixed_precision=False))
        shipped = TorchBackend("torch", exports.exact_predictor().to(device))
        return {"torch_fp32": fp32, "torch": shipped}, [f"{device}: onnxruntime, openvino skipped"]
    notes = [f"bf16 native: {cpu_has_native_bf16()}"]
    for kind in ("onnx", "openvino"):
        start = time.perf_counter()
        getattr(exports, kind)()
        notes.append(f"{kind} export {time.perf_counter() - start:.1f} s")
    backends: dict[str, InferenceBackend] = {}
    for name in BACKENDS:
        try:
            backends[name] = open_backend(name, exports)
        except Exception as exc:  # a missing runtime only removes its row
            notes.append(f"{name} skipped: {type(exc).__name__}: {exc}")
    if exports.predictor.config.tta_flip:  # the same weights without test-time flipping
        exact = exports.exact_predictor()
        plain = replace(exact, config=exact.config.model_copy(update={"tta_flip": False}))
        backends["fp32_no_tta"] = TorchBackend("fp32_no_tta", plain)
    openvino = backends.get("openvino")
    if isinstance(openvino, OpenVinoBackend):
        notes.append(f"openvino {openvino.precision}, {len(openvino.requests)} streams")
    return backends, notes


def _measure(
    backends: dict[str, InferenceBackend], images: torch.Tensor, args: argparse.Namespace
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            backend.predict(images)
            start = time.perf_counter()
            for _ in range(args.batches):
                backend.predict(images)
            rates[name].append(args.batches * len(images) / (time.perf_counter() - start))
    return rates


def _heading(config: ModelConfig, args: argparse.Namespace, notes: list[str]) -> str:
    return (
        f"{config.encoder_name} U-Net, {config.input_size}², batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.device or 'cpu'}; " + "; ".join(notes)
    )


def _table(
    backends: dict[str, InferenceBackend], images: torch.Tensor, rates: dict[str, list[float]]
) -> str:
    reference = backends["torch_fp32"].predict(images)
    lines = [
        f"{'backend':12} {'images/s':>9} {'vs fp32':>8} {'agree@0.5':>10} "
        f"{'mean |dp|':>10} {'max |dp|':>9} {'feat err':>9}  rounds"
    ]
    for name, backend in backends.items():
        probabilities, features, _ = backend.predict(images)
        difference = (probabilities - reference.probabilities).abs()
        best = max(rates[name])
        lines.append(
            f"{name:12} {best:9.1f} {best / max(rates['torch_fp32']):7.2f}x "
            f"{_agreement(probabilities, reference.probabilities):10.2%} "
            f"{float(difference.mean()):10.5f} {float(difference.max()):9.5f} "
            f"{_feature_error(features, reference.features):9.1e}  "
            f"{[round(r, 1) for r in rates[name]]}"
        )
    fastest = max(rates, key=lambda name: max(rates[name]))
    return "\n".join([*lines, f"fastest here: {fastest}"])


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a >= 0.5) == (b >= 0.5)).float().mean())


def _feature_error(features: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest |features - reference| of an image relative to its largest |reference|."""
    scale = reference.abs().amax(dim=1)
    return float(((features - reference).abs().amax(dim=1) / scale).max())


def _print_auto(predictor: Predictor, exports: ModelExports, args: argparse.Namespace) -> None:
    choice = choose_backend(
        predictor, exports.root.parent, batch_size=args.batch_size, weights=exports.weights
    )
    rates = {name: round(rate, 1) for name, rate in choice.rates.items()}
    print(f"auto (choose_backend) picks {choice.backend.name}: {rates} {choice.skipped or ''}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--demo", action="store_true", help="the demo's Lite0 U-Net")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--device", default=None, help="cpu (default) or cuda: torch rows only")
    parser.add_argument("--cache", default=None, help="export cache (default: temporary)")
    parser.add_argument(
        "--tta-flip",
        action="store_true",
        help="predict with test-time flipping; adds fp32_no_tta, the same weights without it",
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
