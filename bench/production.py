"""One production day end to end: the shipped `predict_day` against a naive per-image loop.

A day of `--images` generated images (`--size`², the ten default types) is predicted twice,
from the same local store, with the same model and reviewer (random weights: speed does not
depend on them), each run writing masks and log rows to a store of its own:

- shipped: `serving.day.predict_day` with the inference backend production would choose
  here (`--backend auto`: measured; or a name), images fetched and decoded by a thread pool
  ahead of the model, champion and reviewer on the same batch, masks written back by the pool,
  log rows committed in parts;
- naive: for each image in turn, fetch, decode (ingest's rules), predict with the exact float32
  predictor (`Predictor.probabilities`), grade with the float32 reviewer, encode and write the
  mask, then the whole log at the end.

Both do the same work per image (list -> decode -> mask -> grade -> mask written -> log row).
Printed: images/s of each and the ratio, the backend chosen, and how many masks agree.

Grading's cost: the shipped day also runs without a grader and with a grade model of the free
signals only (`signals`, what production runs when no scorer reading the CNN wins; the CNN
is then never run), beside the default run with one that reads the CNN (`combined`): the share
each adds to the ungraded day's time.

    python -m bench.production [--images 1000] [--size 256] [--demo | --encoder resnet34]
        [--model-size N] [--backend auto] [--batch-size 32] [--io-workers 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.images import decode_image
from maskfind_pipeline.data.production import (
    OK,
    PredictionLog,
    encode_mask,
    image_id_of,
    list_day,
    mask_key_for,
)
from maskfind_pipeline.data.tags import parse_tags
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.backends.choose import configured_backend
from maskfind_pipeline.ml.backends.config import BackendConfig
from maskfind_pipeline.ml.reviewer.config import ReviewerSpec
from maskfind_pipeline.ml.reviewer.grader import Grader
from maskfind_pipeline.ml.reviewer.grading import REVIEWER, SIGNALS, fit_grade_model
from maskfind_pipeline.ml.reviewer.model import ReviewerModel, build_reviewer
from maskfind_pipeline.ml.segmentation.config import ModelConfig, demo_model_spec
from maskfind_pipeline.ml.segmentation.model import build_model
from maskfind_pipeline.ml.segmentation.predict import Predictor, model_input, weights_to_bytes
from maskfind_pipeline.serving.day import ProductionModels, predict_day
from maskfind_pipeline.storage import LocalObjectStore, ObjectStore

DAY = dt.date(2026, 11, 30)


def main() -> None:
    args = _parse()
    torch.manual_seed(0)
    config = _model_config(args)
    weights = weights_to_bytes(build_model(config, pretrained=False))
    predictor = Predictor.from_weights(config, weights, version="bench")
    spec = ReviewerSpec(encoder_weights=None)
    reviewer_weights = weights_to_bytes(build_reviewer(spec, pretrained=False))
    reviewer = ReviewerModel.from_weights(spec, reviewer_weights, version="bench")
    with tempfile.TemporaryDirectory(prefix="bench-production-") as tmp:
        root = Path(tmp)
        data = LocalObjectStore(root / "data")
        per_type = -(-args.images // len(synthetic.DEFAULT_TYPES))
        synthetic.generate_production(
            data, synthetic.DEFAULT_TYPES, per_type, day=DAY, size=args.size
        )
        choice = configured_backend(
            BackendConfig.model_validate({"backend": args.backend}),
            predictor,
            root / "backends",
            batch_size=args.batch_size,
            weights=weights,
        )
        print(
            f"{len(list_day(data, DAY.isoformat()).images)} images at {args.size}², model "
            f"{config.encoder_name} at {config.input_size}², reviewer {spec.encoder_name} at "
            f"{spec.input_size}², {torch.get_num_threads()} threads"
        )
        print(
            f"backend: {choice.backend.name} (measured images/s: "
            f"{ {k: round(v, 1) for k, v in choice.rates.items()} }; skipped: {choice.skipped})"
        )
        graders = _graders(reviewer.to("cpu"))
        rates = {
            name: _shipped(data, root / name, predictor, choice, grader, args)
            for name, grader in graders.items()
        }
        naive = _naive(data, LocalObjectStore(root / "naive"), predictor, reviewer)
        agree = _agreement(root / "combined" / "shipped-data", root / "naive")
    shipped = rates["combined"]
    print(f"shipped: {shipped:.1f} images/s (graded with the CNN: combined)")
    print(f"naive:   {len(naive) / naive.seconds:.1f} images/s (per image, float32)")
    print(f"ratio:   {shipped / (len(naive) / naive.seconds):.2f}x")
    print(f"mask pixels as the naive float32 loop wrote them: {agree}")
    print(f"ungraded: {rates['ungraded']:.1f} images/s")
    for name in ("signals", "combined"):
        added = rates["ungraded"] / rates[name] - 1
        print(f"grading with {name}: {rates[name]:.1f} images/s, adds {added:.0%} to the day")


def _graders(reviewer: ReviewerModel) -> dict[str, Grader | None]:
    """No grader; a grade model of the free signals; one that reads the CNN (their weights are
    fitted to random signals: grading costs the same whatever they are)."""
    rng = np.random.default_rng(0)
    signals = {name: rng.uniform(0, 1, 300) for name in (*SIGNALS, REVIEWER)}
    grades = np.where(signals["flip_disagreement"] > 0.7, 3, 1)
    return {
        "ungraded": None,
        "signals": Grader("bench", fit_grade_model(signals, grades, "signals"), None),
        "combined": Grader("bench", fit_grade_model(signals, grades, "combined"), reviewer),
    }


def _shipped(data, root, predictor, choice, grader, args) -> float:  # type: ignore[no-untyped-def]
    written = _Mirror(data, LocalObjectStore(root / "shipped-data"))
    models = ProductionModels(
        "bench", predictor.config, choice.backend.predict, choice.backend.name, grader
    )
    options = ProductionOptions(batch_size=args.batch_size, io_workers=args.io_workers)
    outcome = predict_day(
        DAY.isoformat(),
        models,
        data_store=written,
        work_store=LocalObjectStore(root / "shipped-work"),
        options=options,
        run_id="shipped",
    )
    assert all(r["status"] == OK for r in outcome.rows), "every generated image is valid"
    return outcome.images_per_second


class _NaiveRows(list):
    seconds: float = 0.0


def _naive(data: ObjectStore, out: LocalObjectStore, predictor: Predictor, reviewer: ReviewerModel):  # type: ignore[no-untyped-def]
    day = DAY.isoformat()
    rows = _NaiveRows()
    start = time.perf_counter()
    for info in list_day(data, day).images:
        raw = data.get(info.key)
        tags = parse_tags(data.tags(info.key))
        image = decode_image(raw, image_ext=info.key.rpartition(".")[2]).image
        probabilities = predictor.probabilities(image)
        mask = probabilities >= predictor.config.threshold
        small = model_input(image, predictor.config.input_size)[None]
        small_probs = torch.sigmoid(predictor.logits(small))
        grade = reviewer.grade_batch(small, small_probs, predictor.config.threshold)[0]
        key = mask_key_for(info.key)
        out.put(key, encode_mask(mask))
        rows.append(
            {
                "image_key": info.key,
                "image_id": image_id_of(info.key),
                "day": day,
                "status": OK,
                "retryable": False,
                "image_type": tags.image_type,
                "tags_json": json.dumps(dict(tags.raw)),
                "model_version": "bench",
                "backend": "naive",
                "mask_key": key,
                "mask_fraction": float(mask.mean()),
                "grade": int(grade.argmax()) + 1,
                "predicted_at": datetime.now(UTC),
                "run_id": "naive",
            }
        )
    PredictionLog(out, day).append(rows, run_id="naive", part=0)
    rows.seconds = time.perf_counter() - start
    return rows


def _agreement(shipped: Path, naive: Path) -> str:
    """Share of mask pixels the shipped run wrote as the naive float32 loop did."""
    same = total = 0
    for path in sorted((naive / "predictions").rglob("*.mask.png")):
        ours, reference = _read_mask(shipped / path.relative_to(naive)), _read_mask(path)
        same += int((ours == reference).sum())
        total += reference.size
    return f"{same / max(total, 1):.4%} of {total} pixels"


def _read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) != 0


class _Mirror(LocalObjectStore):
    """Reads from the day's store, writes masks to its own folder (the naive loop reads the
    same unchanged day afterwards)."""

    def __init__(self, source: LocalObjectStore, target: LocalObjectStore) -> None:
        super().__init__(target.root)
        self.source = source

    def list(self, prefix: str = "", *, page_size: int = 1000):  # type: ignore[no-untyped-def]
        return self.source.list(prefix, page_size=page_size)

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        return self.source.get(key, if_match=if_match)

    def tags(self, key: str) -> dict[str, str]:
        return self.source.tags(key)


def _model_config(args: argparse.Namespace) -> ModelConfig:
    if args.demo:
        spec = demo_model_spec(args.model_size or 128)
        return ModelConfig.model_validate({**spec.model_dump(), "encoder_weights": None})
    return ModelConfig(
        encoder_name=args.encoder, encoder_weights=None, input_size=args.model_size or args.size
    )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--demo", action="store_true", help="the demo's Lite0 U-Net")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--model-size", type=int, default=None, help="the model's input side")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--io-workers", type=int, default=8)
    return parser.parse_args()


if __name__ == "__main__":
    main()
