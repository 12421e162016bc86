"""A production day's time to its first image: cold (nothing cached) and warm (cached).

What `flows.production.predict_production_day` does before its first image, each in a fresh process
over one cache folder: the mask model's inference backend (`configured_backend`, `auto`:
exports and timing of every candidate on the first day, the cached choice afterwards), the
reviewer CNN on the CPU (`Grader.ready`: the fastest of torch, ONNX Runtime and OpenVINO,
torch's precision included, timed on the first day, cached after; a grader whose grades read no
CNN skips this), then one image predicted and graded. Model and reviewer have random weights
(speed does not depend on them). The precision cache lives in the same folder
(`MASKFIND_PRECISION_CACHE`).

    python -m bench.first_image [--runs 3] [--demo | --encoder resnet34] [--model-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(cache: Path, encoder: str, size: int, demo: bool) -> dict[str, object]:
    """One production start in this process: seconds to the first image, and the choices."""
    import torch

    from maskfind_pipeline.ml.backends.choose import configured_backend
    from maskfind_pipeline.ml.backends.config import BackendConfig
    from maskfind_pipeline.ml.reviewer.config import ReviewerSpec
    from maskfind_pipeline.ml.reviewer.grader import Grader
    from maskfind_pipeline.ml.reviewer.model import ReviewerModel, build_reviewer
    from maskfind_pipeline.ml.segmentation.config import ModelConfig, demo_model_spec
    from maskfind_pipeline.ml.segmentation.model import build_model
    from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes

    torch.manual_seed(0)
    if demo:
        spec = demo_model_spec(size)
        config = ModelConfig.model_validate({**spec.model_dump(), "encoder_weights": None})
    else:
        config = ModelConfig(encoder_name=encoder, encoder_weights=None, input_size=size)
    weights = weights_to_bytes(build_model(config, pretrained=False))
    reviewer_spec = ReviewerSpec(encoder_weights=None)
    reviewer_weights = weights_to_bytes(build_reviewer(reviewer_spec, pretrained=False))
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)

    start = time.perf_counter()
    predictor = Predictor.from_weights(config, weights, version="bench")
    choice = configured_backend(
        BackendConfig(), predictor, cache / "backends", batch_size=32, weights=weights
    )
    chosen = time.perf_counter()
    reviewer = ReviewerModel.from_weights(reviewer_spec, reviewer_weights, version="bench")
    grader = Grader("bench", None, reviewer).ready(cache / "reviewer", batch_size=32)
    ready = time.perf_counter()
    prediction = choice.backend.predict(image)
    grader.grade_batch(image, prediction.probabilities, 0.5)
    first = time.perf_counter()
    return {
        "seconds_to_first_image": first - start,
        "backend_seconds": chosen - start,
        "reviewer_seconds": ready - chosen,
        "first_image_seconds": first - ready,
        "backend": choice.backend.name,
        "backend_cached": getattr(choice, "cached", False),
        "reviewer_runtime": grader.runtime,
        "reviewer_rates": grader.runtime_rates,
    }


def main() -> None:
    args = _parse()
    if args.child:
        result = child(Path(args.child), args.encoder, args.model_size, args.demo)
        print("RESULT " + json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-first-image-") as tmp:
        env = os.environ | {"MASKFIND_PRECISION_CACHE": str(Path(tmp) / "precision.json")}
        for run in range(args.runs):
            command = [sys.executable, "-m", "bench.first_image", "--child", tmp]
            command += ["--encoder", args.encoder, "--model-size", str(args.model_size)]
            command += ["--demo"] if args.demo else []
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            result = json.loads(line.removeprefix("RESULT "))
            kind = "cold (nothing cached)" if run == 0 else "warm (cached)"
            print(
                f"run {run + 1}, {kind}: {result['seconds_to_first_image']:.1f} s to the first "
                f"image (backend {result['backend']} {result['backend_seconds']:.1f} s, "
                f"cached: {result['backend_cached']}; reviewer "
                f"{result['reviewer_seconds']:.1f} s, {result['reviewer_runtime']} "
                f"{_rates(result['reviewer_rates'])}; first image "
                f"{result['first_image_seconds']:.2f} s)",
                flush=True,
            )


def _rates(rates: dict[str, float]) -> str:
    """The measured images/s, or "(cached)" where the choice was read back."""
    if not rates:
        return "(cached)"
    return "(" + ", ".join(f"{name} {rate:.0f}/s" for name, rate in rates.items()) + ")"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="the first is cold")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--model-size", type=int, default=256)
    parser.add_argument("--demo", action="store_true", help="the demo's model spec")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
