"""New image type alarm: leave-one-type-out AUROC of the novelty score, synthetic and real photos.

Synthetic: `--per-type` labeled samples of each of the 10 default image types at `--size`²,
ingested, versioned (content-hash splits 70/15/15) and decoded. For each type, a mask model (the
demo's offline-pretrained EfficientNet-Lite0 U-Net, `--minutes` of training) is trained on the
train split of the 9 others (their val split picks its epoch): 10 trainings. Its novelty model
is fitted on the features (`ml.novelty.features`) of those 9 types' train split, calibrated on their
val split, and judged on their test split (seen, negatives) against every image of the held-out
type (unseen, positives): AUROC, false-alarm rate at the threshold on the seen test images,
detection rate on the unseen images, and whether `day_alarms` on a day made of both names the
held-out type and nothing else.

Real photos (../shared/data/real, horses and boats): a mask model trained on one set
(`--real-minutes`), the novelty model fitted on its train split and calibrated on its val
split; its test split against every image of the other set; both directions.

Every method variant is also fitted on the features of the untrained (ImageNet-pretrained)
encoder. Features are cached with `--features CACHE.npz`: a second run reuses them (no
training) to compare methods.

    python -m bench.novelty [--per-type 100] [--size 128] [--minutes 1.0] [--real-minutes 1.5]
                            [--features CACHE.npz] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.decoded import DecodedArrays, build_decoded
from maskfind_pipeline.data.ingest import ingest
from maskfind_pipeline.data.loader import MaskDataset
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.ml.novelty.fit_features import features_of
from maskfind_pipeline.ml.novelty.model import NoveltyConfig, NoveltyModel, day_alarms
from maskfind_pipeline.ml.segmentation.config import ModelConfig, TrainConfig, demo_model_spec
from maskfind_pipeline.ml.segmentation.model import build_model
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.ml.segmentation.train import train
from maskfind_pipeline.storage import LocalObjectStore

REAL_SETS = {"horse": "weizmann_horse", "boat": "sysu_shapes_boat"}
TIMES: dict[str, float] = {}
VARIANTS: dict[str, NoveltyConfig] = {
    "mahalanobis l2 LW": NoveltyConfig(),
    "mahalanobis l2 LW q=0.99": NoveltyConfig(quantile=0.99),
    "mahalanobis raw LW": NoveltyConfig(normalise="none"),
    "mahalanobis l2 OAS": NoveltyConfig(shrinkage="oas"),
    "knn l2 k=1": NoveltyConfig(method="knn", k=1),
    "knn l2 k=5": NoveltyConfig(method="knn", k=5),
    "knn l2 k=10": NoveltyConfig(method="knn", k=10),
}
DEFAULT_VARIANT = "mahalanobis l2 LW"


@dataclass(frozen=True)
class Features:
    """Features of every image of one data set under each encoder (`pretrained`, fold names)."""

    types: np.ndarray
    splits: np.ndarray
    by_encoder: dict[str, np.ndarray]
    training: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Judged:
    """One novelty model judged on one unseen type."""

    unseen: str
    auroc: float
    false_alarms: float
    detection: float
    n_seen: int
    n_unseen: int
    named: bool
    wrongly_named: tuple[str, ...]


@contextmanager
def timed(stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    TIMES[stage] = TIMES.get(stage, 0.0) + time.perf_counter() - start


def main() -> None:
    args = _parse()
    cache = Path(args.features) if args.features else None
    sets = _load(cache) if cache is not None and cache.exists() else {}
    if sets:
        print(f"features loaded from {cache} (no training)")
    with tempfile.TemporaryDirectory(prefix="bench-novelty-") as tmp:
        if "synthetic" not in sets:
            sets["synthetic"] = _synthetic(Path(tmp) / "synthetic", args)
        if "real" not in sets and not args.skip_real:
            sets["real"] = _real(Path(tmp) / "real", args)
    if cache is not None:
        _save(cache, sets)
    with timed("novelty: fit + calibrate + score, all variants"):
        results = {name: _judge_all(features) for name, features in sets.items()}
    _report(sets, results, args)


# --- data and mask models ------------------------------------------------------------------


def _synthetic(root: Path, args: argparse.Namespace) -> Features:
    names = [t.name for t in synthetic.DEFAULT_TYPES]
    with timed("synthetic: generate, ingest, version, decode"):
        store = LocalObjectStore(root / "data")
        synthetic.generate(store, synthetic.DEFAULT_TYPES, args.per_type, size=args.size)
        types, splits, decoded = _decoded(root, store, args.size)
    counts = dict(zip(*np.unique(splits, return_counts=True), strict=True))
    print(f"synthetic: {len(types)} images, splits {counts}")
    by_encoder = {"pretrained": _pretrained_features(decoded, args.size, "synthetic")}
    training: dict[str, dict[str, float]] = {}
    for held in names:
        seen = [n for n in names if n != held]
        predictor, training[held] = _mask_model(
            decoded, types, splits, seen, args.minutes, args, "synthetic"
        )
        with timed("synthetic: features of all images, per fold"):
            by_encoder[held] = features_of(predictor, np.asarray(decoded.images), 64)
    return Features(types, splits, by_encoder, training)


def _real(root: Path, args: argparse.Namespace) -> Features:
    if not args.real_dir.exists():
        raise SystemExit(f"{args.real_dir} not found (or pass --skip-real)")
    with timed("real: ingest, version, decode"):
        store = LocalObjectStore(root / "data")
        for image_type, folder in REAL_SETS.items():
            for image in sorted((args.real_dir / folder / "images").glob("*.jpg")):
                mask = args.real_dir / folder / "masks" / f"{image.stem}.png"
                tags = {"image_type": image_type}
                store.put(f"labeled/{image.stem}.jpg", image.read_bytes(), tags=tags)
                store.put(f"labeled/{image.stem}.mask.png", mask.read_bytes())
        types, splits, decoded = _decoded(root, store, args.size)
    by_encoder = {"pretrained": _pretrained_features(decoded, args.size, "real")}
    training: dict[str, dict[str, float]] = {}
    for trained in REAL_SETS:
        unseen = next(t for t in REAL_SETS if t != trained)
        predictor, training[unseen] = _mask_model(
            decoded, types, splits, [trained], args.real_minutes, args, "real"
        )
        with timed("real: features of all images, per direction"):
            by_encoder[unseen] = features_of(predictor, np.asarray(decoded.images), 64)
    return Features(types, splits, by_encoder, training)


def _decoded(
    root: Path, store: LocalObjectStore, size: int
) -> tuple[np.ndarray, np.ndarray, DecodedArrays]:
    cache = ContentCache(root / "cache")
    catalog = Catalog(LocalObjectStore(root / "work"))
    new: pa.Table = ingest(store, catalog, run_id="novelty", cache=cache).new_samples
    manifest = build_snapshot(new, VersionConfig()).manifest
    decoded = build_decoded(manifest, store, cache, root / "decoded", version_id="nov", size=size)
    types = np.asarray(manifest.column("image_type").to_pylist(), dtype=object)
    splits = np.asarray(manifest.column("split").to_pylist(), dtype=object)
    return types, splits, decoded


def _pretrained_features(decoded: DecodedArrays, size: int, name: str) -> np.ndarray:
    with timed(f"{name}: features of the ImageNet-only encoder"):
        spec = demo_model_spec(size)
        model = build_model(spec, pretrained=True)
        predictor = Predictor(model.eval(), ModelConfig.of(spec, 0.5))
        return features_of(predictor, np.asarray(decoded.images), 64)


def _mask_model(
    decoded: DecodedArrays,
    types: np.ndarray,
    splits: np.ndarray,
    trained_on: Sequence[str],
    minutes: float,
    args: argparse.Namespace,
    stage: str,
) -> tuple[Predictor, dict[str, float]]:
    config = TrainConfig(
        epochs=200,
        batch_size=32,
        learning_rate=4e-3,
        early_stopping_patience=0,
        max_minutes=minutes,
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
    start = time.perf_counter()
    with timed(f"{stage}: mask model training ({minutes:g} min budget each)"):
        result = train(
            demo_model_spec(args.size),
            config,
            loaders,
            image_types=types.tolist(),
            sources=["labeled"] * len(types),
            progress_bar=False,
        )
    seconds = time.perf_counter() - start
    miou = result.val_metrics.overall.miou
    epochs = len(result.history)
    print(f"  mask model on {len(trained_on)} type(s): {epochs} epochs, val mIoU {miou:.3f}")
    info = {"val_miou": miou, "epochs": float(epochs), "seconds": seconds}
    return Predictor(result.model, result.config).to("cpu", mixed_precision=False), info


# --- judging ------------------------------------------------------------------------------


def _judge_all(features: Features) -> dict[tuple[str, str], list[Judged]]:
    """(variant, "trained" | "pretrained") -> one judgement per unseen type."""
    out: dict[tuple[str, str], list[Judged]] = {}
    unseen_types = [name for name in features.by_encoder if name != "pretrained"]
    for variant, config in VARIANTS.items():
        for encoder in ("trained", "pretrained"):
            out[variant, encoder] = [
                judge(
                    features.by_encoder[unseen if encoder == "trained" else "pretrained"],
                    features.types,
                    features.splits,
                    unseen,
                    config,
                )
                for unseen in unseen_types
            ]
    return out


def judge(
    features: np.ndarray, types: np.ndarray, splits: np.ndarray, unseen: str, config: NoveltyConfig
) -> Judged:
    """Fit on seen types' train split, calibrate on their val split, judge test vs unseen."""
    seen = types != unseen
    model = NoveltyModel.fit(
        features[seen & (splits == "train")], types[seen & (splits == "train")], config
    ).calibrate(features[seen & (splits == "val")])
    negatives, positives = seen & (splits == "test"), ~seen
    scores = model.scores(features)
    labels = np.r_[np.zeros(negatives.sum()), np.ones(positives.sum())]
    auroc = float(roc_auc_score(labels, np.r_[scores[negatives], scores[positives]]))
    flags = model.is_novel(scores)
    day = negatives | positives
    alarms = {a.image_type for a in day_alarms(types[day], flags[day], config)}
    return Judged(
        unseen,
        auroc,
        float(flags[negatives].mean()),
        float(flags[positives].mean()),
        int(negatives.sum()),
        int(positives.sum()),
        unseen in alarms,
        tuple(sorted(alarms - {unseen})),
    )


# --- report -------------------------------------------------------------------------------


def _report(
    sets: dict[str, Features],
    results: dict[str, dict[tuple[str, str], list[Judged]]],
    args: argparse.Namespace,
) -> None:
    default = VARIANTS[DEFAULT_VARIANT]
    print(f"\ndefault: {DEFAULT_VARIANT}: {default.model_dump()}")
    for name, features in sets.items():
        _per_type(name, features, results[name])
    print("\nmethod comparison (mean over unseen types; worst AUROC and its type)")
    print(
        f"{'data':<10} {'variant':<20} {'encoder':<10} {'AUROC':>6} {'worst':>6} "
        f"{'FAR':>6} {'detect':>6} {'named':>6} {'wrong':>5}  worst type"
    )
    for name, by_variant in results.items():
        for (variant, encoder), judged in by_variant.items():
            worst = min(judged, key=lambda j: j.auroc)
            print(
                f"{name:<10} {variant:<20} {encoder:<10} "
                f"{np.mean([j.auroc for j in judged]):6.3f} {worst.auroc:6.3f} "
                f"{np.mean([j.false_alarms for j in judged]):6.3f} "
                f"{np.mean([j.detection for j in judged]):6.3f} "
                f"{sum(j.named for j in judged):>3}/{len(judged):<2} "
                f"{sum(len(j.wrongly_named) for j in judged):5d}  {worst.unseen}"
            )
    _scoring_speed(sets["synthetic"])
    print("\ntimes (s):")
    for stage, seconds in TIMES.items():
        print(f"  {stage:<56} {seconds:7.1f}")
    print(f"  {'total':<56} {sum(TIMES.values()):7.1f}")


def _per_type(name: str, features: Features, results: dict[tuple[str, str], list[Judged]]) -> None:
    trained = results[DEFAULT_VARIANT, "trained"]
    pretrained = {j.unseen: j for j in results[DEFAULT_VARIANT, "pretrained"]}
    print(f"\n{name}: {DEFAULT_VARIANT}, unseen type vs seen types' test split")
    print(
        f"{'unseen type':<34} {'AUROC':>6} {'(ImageNet)':>10} {'FAR':>6} {'detect':>6} "
        f"{'n seen':>6} {'n new':>5} {'alarm':>5} {'wrong':>5} {'mask val':>8} {'epochs':>6}"
    )
    for j in trained:
        info = features.training.get(j.unseen, {})
        print(
            f"{j.unseen:<34} {j.auroc:6.3f} {pretrained[j.unseen].auroc:10.3f} "
            f"{j.false_alarms:6.3f} {j.detection:6.3f} {j.n_seen:6d} {j.n_unseen:5d} "
            f"{'yes' if j.named else 'NO':>5} {len(j.wrongly_named):5d} "
            f"{info.get('val_miou', float('nan')):8.3f} {info.get('epochs', 0):6.0f}"
        )
    aurocs = [j.auroc for j in trained]
    worst = min(trained, key=lambda j: j.auroc)
    print(
        f"{'mean':<34} {np.mean(aurocs):6.3f} "
        f"{np.mean([p.auroc for p in pretrained.values()]):10.3f} "
        f"{np.mean([j.false_alarms for j in trained]):6.3f} "
        f"{np.mean([j.detection for j in trained]):6.3f}   worst {worst.unseen} {worst.auroc:.3f}"
    )


def _scoring_speed(features: Features) -> None:
    x = next(v for k, v in features.by_encoder.items() if k != "pretrained")
    print(f"\nscoring {len(x)} feature vectors (D = {x.shape[1]}), fitted on all:")
    for variant in (DEFAULT_VARIANT, "knn l2 k=5"):
        model = NoveltyModel.fit(x, features.types, VARIANTS[variant])
        start = time.perf_counter()
        model.scores(x)
        seconds = time.perf_counter() - start
        tensors, meta = model.to_bytes()
        print(
            f"  {variant:<20} {len(x) / seconds:10.0f} images/s, stored "
            f"{(len(tensors) + len(meta)) / 1e6:.2f} MB"
        )


# --- feature cache ------------------------------------------------------------------------


def _save(path: Path, sets: dict[str, Features]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, f in sets.items():
        arrays[f"{name}.types"] = f.types.astype(str)
        arrays[f"{name}.splits"] = f.splits.astype(str)
        arrays[f"{name}.training"] = np.asarray(json.dumps(f.training))
        arrays |= {f"{name}.features.{k}": v for k, v in f.by_encoder.items()}
    np.savez(path, **arrays)  # pyright: ignore[reportArgumentType]


def _load(path: Path) -> dict[str, Features]:
    stored = np.load(path)
    sets = {}
    for name in sorted({key.split(".", 1)[0] for key in stored.files}):
        prefix = f"{name}.features."
        sets[name] = Features(
            stored[f"{name}.types"].astype(object),
            stored[f"{name}.splits"].astype(object),
            {k[len(prefix) :]: stored[k] for k in stored.files if k.startswith(prefix)},
            json.loads(str(stored[f"{name}.training"])),
        )
    return sets


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-type", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--real-minutes", type=float, default=1.5)
    parser.add_argument("--features", default="", help="an .npz cache of the features")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument(
        "--real-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real"
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
