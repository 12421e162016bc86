"""The reviewer on image types it never saw, against the entropy and flip-disagreement baselines.

Generates `--per-type` labeled samples of each default image type at `--size`², ingests them
and builds a dataset version (content-hash splits 70/15/15). Three image types (`--held-out`,
default the last three default types) are held out from everything: no mask model and not the
reviewer sees them. Mask models whose predictions are reviewed:

- `fold-7`: trained on the train split of the other 7 types (`--mask-epochs`);
- `fold-4`: trained on 4 of them (`--fold-epochs`), so that its predictions on the other 3
  seen types are real unseen-type failures among the reviewer's training samples;
- `early`: trained on the 7 types for `--early-epochs` (undertrained).

Training runs for a number of epochs, not minutes, so that a busy shared machine changes the
times, not the models.

Reviewer samples: every model's prediction of every image, plus degraded true masks
(`--degraded-share`). The reviewer trains on the 7 types' train split, picks its epoch on their
val split, and is judged on their test split (seen types) and on every image of the held-out
types (unseen), on real predictions only and on the mix. Times are wall-clock on this machine.

    python -m bench.reviewer [--per-type 80] [--size 128] [--mask-epochs 20] [--epochs 12]
                             [--degraded-share 0.5] [--samples CACHE.npz] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.decoded import DecodedArrays, build_decoded
from maskfind_pipeline.data.ingest import ingest
from maskfind_pipeline.data.loader import MaskDataset
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.ml import plots
from maskfind_pipeline.ml.config import TrainConfig, demo_model_spec
from maskfind_pipeline.ml.predict import Predictor
from maskfind_pipeline.ml.review_metrics import ReviewerEvaluation, evaluate_reviewer
from maskfind_pipeline.ml.reviewer import grade_probabilities
from maskfind_pipeline.ml.reviewer_config import GradeRule, ReviewerSpec, ReviewerTrainConfig
from maskfind_pipeline.ml.reviewer_data import ReviewSamples, build_review_samples
from maskfind_pipeline.ml.reviewer_train import train_reviewer
from maskfind_pipeline.ml.train import train
from maskfind_pipeline.storage import LocalObjectStore

TIMES: dict[str, float] = {}


def main() -> None:
    args = _parse()
    names = [t.name for t in synthetic.DEFAULT_TYPES]
    held = args.held_out.split(",") if args.held_out else names[-3:]
    seen = [n for n in names if n not in held]
    rule = GradeRule()
    cache = Path(args.samples) if args.samples else None
    if cache is not None and cache.exists():
        samples = _load_samples(cache)
        print(f"samples loaded from {cache} (mask models not retrained)")
    else:
        samples = _build_samples(args, seen, rule)
        if cache is not None:
            _save_samples(cache, samples)
    if args.train_share is not None:
        for name in ("train", "val"):
            samples[name] = _with_share(samples[name], args.train_share)
    for name, part in samples.items():
        print(f"  {name}: {part.counts(rule)}")
    spec = ReviewerSpec(input_size=args.size, pooled_stages=args.pooled_stages)
    config = ReviewerTrainConfig(
        epochs=args.epochs,
        batch_size=32,
        learning_rate=args.lr,
        max_minutes=args.reviewer_minutes or None,
        degraded_share=args.degraded_share,
        label_iou_sigma=args.label_sigma,
        early_stopping_patience=0,
    )
    with _timed("reviewer: training"):
        result = train_reviewer(
            spec,
            config,
            samples["train"],
            samples["val"],
            progress_bar=False,
            on_epoch=lambda r: print(
                f"  epoch {r.epoch:2d} loss {r.train_loss:.4f} val loss {r.val_loss:.4f} "
                f"val AUC3 {r.val_auc_grade3:.4f} {r.samples_per_second:5.1f} samples/s"
            ),
        )
    print(f"  best epoch {result.best_epoch} ({result.stop_reason}), {result.device}")
    report: dict[str, ReviewerEvaluation] = {}
    for name in ("seen-test", "unseen"):
        part = samples[name]
        with _timed(f"reviewer: grading {name} ({len(part)} masks)"):
            probs = grade_probabilities(
                result.model,
                spec,
                part.sample_images(),
                part.probabilities,
                part.thresholds,
                batch_size=64,
            )
        grades = part.grades(rule)
        real = part.is_prediction
        subsets = (("mix", np.ones(len(part), bool)), ("real", real), ("degraded", ~real))
        for label, rows in subsets:
            report[f"{name} {label}"] = _evaluate(probs[rows], grades[rows], part.take(rows))
        for model in sorted(set(part.models[real].tolist())):
            rows = part.models == model
            report[f"{name} real {model}"] = _evaluate(probs[rows], grades[rows], part.take(rows))
        if name == "unseen":
            _diagnose(probs, grades, part)
            if args.out:
                _save(Path(args.out), report["unseen mix"], report["unseen real"], result.plots)
                (Path(args.out) / "unseen_worst.png").write_bytes(_gallery(probs, grades, part))
    _print(report)
    print("\ntimes (s):")
    for stage, seconds in TIMES.items():
        print(f"  {stage:<48} {seconds:7.1f}")
    print(f"  {'total':<48} {sum(TIMES.values()):7.1f}")


def _build_samples(
    args: argparse.Namespace, seen: Sequence[str], rule: GradeRule
) -> dict[str, ReviewSamples]:
    with tempfile.TemporaryDirectory(prefix="bench-reviewer-") as tmp:
        with _timed("data: generate, ingest, version, decode"):
            types, splits, decoded = _data(Path(tmp), args)
        images, truth = np.asarray(decoded.images), np.asarray(decoded.masks) != 0
        in_seen = np.isin(types, seen)
        predictors = [
            _mask_model("fold-7", decoded, types, splits, seen, args.mask_epochs, args),
            _mask_model("fold-4", decoded, types, splits, seen[3:], args.fold_epochs, args),
            _mask_model("early", decoded, types, splits, seen, args.early_epochs, args),
        ]
        sets = {
            "train": np.flatnonzero(in_seen & (splits == "train")),
            "val": np.flatnonzero(in_seen & (splits == "val")),
            "seen-test": np.flatnonzero(in_seen & (splits == "test")),
            "unseen": np.flatnonzero(~in_seen),
        }
        samples: dict[str, ReviewSamples] = {}
        for offset, (name, rows) in enumerate(sets.items()):
            with _timed(f"samples: {name} ({len(rows)} images)"):
                samples[name] = build_review_samples(
                    images[rows],
                    truth[rows],
                    types[rows],
                    predictors,
                    degraded_share=args.degraded_share,
                    seed=offset,
                    batch_size=64,
                    grades=rule,
                )
    return samples


def _with_share(part: ReviewSamples, share: float) -> ReviewSamples:
    """All real predictions and the first degraded samples, to make `share` of the total."""
    real = np.flatnonzero(part.is_prediction)
    degraded = np.flatnonzero(~part.is_prediction)
    wanted = len(degraded) if share >= 1 else round(len(real) * share / (1 - share))
    if wanted > len(degraded):
        raise ValueError(f"the cache holds {len(degraded)} degraded samples, {wanted} wanted")
    return part.take(np.concatenate([real, degraded[:wanted]]))


def _save_samples(path: Path, samples: dict[str, ReviewSamples]) -> None:
    arrays = {
        f"{name}.{f.name}": _storable(getattr(part, f.name))
        for name, part in samples.items()
        for f in dataclasses.fields(part)
    }
    np.savez(path, **arrays)  # pyright: ignore[reportArgumentType]


def _storable(array: np.ndarray) -> np.ndarray:
    return array.astype(str) if array.dtype == object else array


def _load_samples(path: Path) -> dict[str, ReviewSamples]:
    stored = np.load(path)
    names = sorted({key.split(".", 1)[0] for key in stored.files})
    order = ["train", "val", "seen-test", "unseen"]
    loaded = {}
    for name in sorted(names, key=order.index):
        values = {}
        for f in dataclasses.fields(ReviewSamples):
            array = stored[f"{name}.{f.name}"]
            values[f.name] = array.astype(object) if array.dtype.kind == "U" else array
        loaded[name] = ReviewSamples(**values)
    return loaded


def _data(root: Path, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, DecodedArrays]:
    store = LocalObjectStore(root / "data")
    synthetic.generate(store, synthetic.DEFAULT_TYPES, args.per_type, size=args.size)
    cache = ContentCache(root / "cache")
    catalog = Catalog(LocalObjectStore(root / "work"))
    new = ingest(store, catalog, run_id="reviewer", cache=cache).new_samples
    manifest = build_snapshot(new, VersionConfig()).manifest
    decoded = build_decoded(
        manifest, store, cache, root / "decoded", version_id="reviewer", size=args.size
    )
    types = np.asarray(manifest.column("image_type").to_pylist(), dtype=object)
    splits = np.asarray(manifest.column("split").to_pylist(), dtype=object)
    return types, splits, decoded


def _mask_model(
    name: str,
    decoded: DecodedArrays,
    types: np.ndarray,
    splits: np.ndarray,
    trained_on: Sequence[str],
    epochs: int,
    args: argparse.Namespace,
) -> Predictor:
    config = TrainConfig(
        epochs=epochs,
        batch_size=32,
        learning_rate=4e-3,
        early_stopping_patience=0,
    )
    chosen = np.isin(types, list(trained_on))
    loaders = {
        split: DataLoader(
            MaskDataset(
                decoded,
                chosen & (splits == split),
                augment=AugmentConfig() if split == "train" else None,
            ),
            batch_size=32,
            shuffle=split == "train",
            generator=torch.Generator().manual_seed(0),
        )
        for split in ("train", "val")
    }
    with _timed(f"mask model {name}: training ({epochs} epochs)"):
        result = train(
            demo_model_spec(args.size),
            config,
            loaders,
            image_types=types.tolist(),
            sources=["labeled"] * len(types),
            progress_bar=False,
        )
    print(
        f"  {name}: {len(result.history)} epochs, val mIoU {result.val_metrics.overall.miou:.3f} "
        f"on {len(trained_on)} types, threshold {result.config.threshold:.2f}"
    )
    return Predictor(result.model, result.config, version=name).to("cpu")


def _evaluate(probs: np.ndarray, grades: np.ndarray, part: ReviewSamples) -> ReviewerEvaluation:
    return evaluate_reviewer(
        probs, grades, entropy=part.entropy, flip_disagreement=part.flip_disagreement
    )


def _diagnose(probs: np.ndarray, grades: np.ndarray, part: ReviewSamples) -> None:
    """Where the reviewer's ranking errs on unseen types: IoUs of the worst-ranked masks."""
    bad, good = grades == 3, grades != 3
    if not bad.any() or not good.any():
        return
    p3 = probs[:, 2]
    lowest_bad = np.argsort(p3[bad])[:8]
    highest_good = np.argsort(-p3[good])[:8]
    print("\nunseen: grade-3 masks the reviewer trusts most (P3, IoU, kind, model, type):")
    for i in np.flatnonzero(bad)[lowest_bad]:
        print(
            f"  {p3[i]:.3f} {part.ious[i]:.3f} {part.kinds[i]:<16} {part.models[i]:<7} "
            f"{part.sample_types[i]}"
        )
    print("unseen: grade-1/2 masks the reviewer distrusts most:")
    for i in np.flatnonzero(good)[highest_good]:
        print(
            f"  {p3[i]:.3f} {part.ious[i]:.3f} {part.kinds[i]:<16} {part.models[i]:<7} "
            f"{part.sample_types[i]}"
        )
    real = part.is_prediction
    for label, rows in (("real", real), ("degraded", ~real)):
        ones = rows & (grades == 1)
        print(f"unseen {label} grade-1 masks: mean P3 {p3[ones].mean():.3f} (n={ones.sum()})")
    near = real & (np.abs(part.ious - 0.8) < 0.05)
    print(
        f"real grade-3 masks with IoU within 0.05 of 0.80: {int(np.sum(near & bad))} of "
        f"{int(np.sum(real & bad))}; real grade-1/2 within 0.05: {int(np.sum(near & good))}"
    )


def _gallery(probs: np.ndarray, grades: np.ndarray, part: ReviewSamples) -> bytes:
    """Real grade-3 masks ranked most trusted, and real grade-1/2 masks ranked least trusted:
    image with the true outline (green) and the mask (magenta), and the probability map."""
    p3, real = probs[:, 2], part.is_prediction
    missed = np.flatnonzero(real & (grades == 3))
    missed = missed[np.argsort(p3[missed])[:6]]
    doubted = np.flatnonzero(real & (grades != 3))
    doubted = doubted[np.argsort(-p3[doubted])[:6]]
    rows = list(missed) + list(doubted)
    fig = Figure(figsize=(2.2 * len(rows), 4.6), layout="constrained")
    axes = fig.subplots(2, len(rows), squeeze=False)
    for column, i in enumerate(rows):
        image = part.images[part.image_index[i]]
        truth = part.true_masks[part.image_index[i]]
        axes[0, column].imshow(plots.overlay(image, truth, part.masks[i]))
        axes[1, column].imshow(part.probabilities[i], cmap="magma", vmin=0, vmax=255)
        label = "missed" if grades[i] == 3 else "doubted"
        axes[0, column].set_title(
            f"{label} P3 {p3[i]:.2f}\nIoU {part.ious[i]:.2f} {part.models[i]}\n"
            f"{part.sample_types[i][:22]}",
            fontsize=7,
        )
        for ax in axes[:, column]:
            ax.set_axis_off()
    return plots._png(fig)


def _print(report: dict[str, ReviewerEvaluation]) -> None:
    print(
        f"\n{'set':<24} {'n':>5} {'g1/g2/g3':>13} | {'AUC3 rev':>8} {'entropy':>8} {'flip':>8} |"
        f" {'AURC rev':>8} {'entropy':>8} {'flip':>8} {'optimal':>8} | {'macro':>6} {'acc':>5}"
    )
    for name, ev in report.items():
        s = ev.scores
        counts = "/".join(str(ev.grade_counts[g]) for g in (1, 2, 3))
        print(
            f"{name:<24} {ev.n:5d} {counts:>13} | {s['reviewer'].auc_grade3:8.4f} "
            f"{s['entropy'].auc_grade3:8.4f} {s['flip_disagreement'].auc_grade3:8.4f} | "
            f"{s['reviewer'].aurc:8.4f} {s['entropy'].aurc:8.4f} "
            f"{s['flip_disagreement'].aurc:8.4f} {s['reviewer'].aurc_optimal:8.4f} | "
            f"{ev.macro_auc:6.3f} {ev.accuracy:5.3f}"
        )
    print("(flip: on real predictions only, n = the real rows; AUC3 = ROC AUC of grade 3 vs rest)")


def _save(
    out: Path, mix: ReviewerEvaluation, real: ReviewerEvaluation, training: dict[str, bytes]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for label, ev in (("mix", mix), ("real", real)):
        for key, png in ev.plots(f"(unseen types, {label})").items():
            (out / f"unseen_{label}_{key}.png").write_bytes(png)
    for key, png in training.items():
        (out / f"{key}.png").write_bytes(png)


class _timed:
    def __init__(self, stage: str) -> None:
        self.stage = stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        TIMES[self.stage] = time.perf_counter() - self.start


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-type", type=int, default=80)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--held-out", default="", help="comma-separated type names")
    parser.add_argument("--mask-epochs", type=int, default=20)
    parser.add_argument("--fold-epochs", type=int, default=10)
    parser.add_argument("--early-epochs", type=int, default=1)
    parser.add_argument("--reviewer-minutes", type=float, default=0.0, help="0: no budget")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--degraded-share", type=float, default=0.5)
    parser.add_argument("--pooled-stages", type=int, default=1)
    parser.add_argument("--label-sigma", type=float, default=0.0)
    parser.add_argument("--samples", default="", help="an .npz cache of the samples")
    parser.add_argument(
        "--train-share", type=float, default=None, help="degraded share of train/val (from cache)"
    )
    parser.add_argument("--out", default="")
    return parser.parse_args()


if __name__ == "__main__":
    main()
