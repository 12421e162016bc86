"""Quality on real photographs (and the synthetic factory): a table of training recipes.

Runs the nightly job's code path (ingest -> dataset version with content-hash splits 70/15/15 ->
decoded cache -> `make_train_loaders` -> `train` -> threshold tuned on val -> `evaluate_loader`)
on ../shared/data/real (horses, boats; internal benchmarks only, never copied into the repo) and
on the synthetic factory, for each recipe asked for:

- **both**: trained on both photo sets (their train splits) at `--size`² for at most `--minutes`;
  val and test mIoU per set. The recipe to keep is chosen on val; test is reported.
- **left out** (`--left-out-minutes` > 0): trained on one set only; the other set's mIoU on all
  its images (an image type never seen).
- **synthetic** (`--synthetic-minutes` > 0): the demo's 10 synthetic types at 128², val and test.

Recipes are named presets over the shipped configuration (`RECIPES` below); `shipped` is the
nightly job's training as it was before this benchmark (TrainConfig() on the bundled Lite0).

    python -m bench.real_quality [--recipes shipped,finetune] [--minutes 20] [--size 256]
                                 [--left-out-minutes 0] [--synthetic-minutes 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.ingest import ingest
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.ml.segmentation.config import (
    FINE_TUNING,
    ModelConfig,
    ModelSpec,
    TrainConfig,
    demo_model_spec,
)
from maskfind_pipeline.ml.segmentation.inference import evaluate_loader, predict_probabilities
from maskfind_pipeline.ml.segmentation.threshold import tune_threshold
from maskfind_pipeline.ml.segmentation.train import make_train_loaders, train
from maskfind_pipeline.storage import LocalObjectStore

SETS = {"horse": "weizmann_horse", "boat": "sysu_shapes_boat"}


@dataclass(frozen=True)
class Recipe:
    """Overrides of the shipped `ModelSpec` (on the demo's Lite0) and `TrainConfig`."""

    description: str
    model: Mapping[str, Any]
    train: Mapping[str, Any]


BUDGET = {"epochs": 200, "batch_size": 32, "learning_rate": 3e-3, "early_stopping_patience": 0}
FINETUNE = FINE_TUNING.model_dump(exclude={"max_minutes"}, exclude_defaults=True)
"""The nightly job's default recipe (`ml.segmentation.config.FINE_TUNING`), as overrides of
TrainConfig()."""


def _without(recipe: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in recipe.items() if k not in keys}


RECIPES: dict[str, Recipe] = {
    "shipped": Recipe(
        "TrainConfig(), the nightly job's default before FINE_TUNING: 20 epochs, lr 1e-3, "
        "batch 16, early stopping after 5",
        {},
        {},
    ),
    "budget": Recipe(
        "the budget, not 20 epochs, ends training: lr 3e-3, batch 32, no early stop", {}, BUDGET
    ),
    "finetune": Recipe(
        "FINE_TUNING, the default: budget + encoder lr x0.3, encoder frozen 5 %, photo "
        "augmentation, BCE+Lovász for the last 20 %, EMA 0.99; TTA flip",
        {"tta_flip": True},
        FINETUNE,
    ),
    "ft-lowres": Recipe(
        "finetune with progressive resizing: the first half at 128²",
        {"tta_flip": True},
        {**FINETUNE, "low_res_size": 128, "low_res_share": 0.5},
    ),
    "ft-no-ema": Recipe(
        "finetune without EMA", {"tta_flip": True}, _without(FINETUNE, "ema_decay")
    ),
    "ft-no-lovasz": Recipe(
        "finetune without the Lovász stretch", {"tta_flip": True}, _without(FINETUNE, "final_loss")
    ),
    "ft-no-enc": Recipe(
        "finetune with the encoder at the full learning rate from the start",
        {"tta_flip": True},
        _without(FINETUNE, "encoder_lr_factor", "freeze_encoder"),
    ),
    "ft-shipped-aug": Recipe(
        "finetune with the shipped augmentation (flips, turns, mild affine and colour)",
        {"tta_flip": True},
        _without(FINETUNE, "augment"),
    ),
    "ft-lite2": Recipe(
        "finetune on EfficientNet-Lite2 (bundled ImageNet weights)",
        {"tta_flip": True, "encoder_name": "tu-tf_efficientnet_lite2"},
        FINETUNE,
    ),
}


def model_spec(recipe: Recipe, size: int) -> ModelSpec:
    return ModelSpec.model_validate({**demo_model_spec(size).model_dump(), **recipe.model})


def train_config(recipe: Recipe, minutes: float) -> TrainConfig:
    base = TrainConfig(max_minutes=minutes).model_dump()
    overrides = dict(recipe.train)
    if "augment" in overrides:
        overrides["augment"] = {**base["augment"], **overrides["augment"]}
    return TrainConfig.model_validate({**base, **overrides})


def load_photos(real: Path, store: LocalObjectStore) -> None:
    for image_type, folder in SETS.items():
        for image in sorted((real / folder / "images").glob("*.jpg")):
            mask = real / folder / "masks" / f"{image.stem}.png"
            store.put(
                f"labeled/{image.stem}.jpg", image.read_bytes(), tags={"image_type": image_type}
            )
            store.put(f"labeled/{image.stem}.mask.png", mask.read_bytes())


class Workspace:
    """One temporary store, cache and catalog; `manifest` of what was ingested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = LocalObjectStore(root / "data")
        self.cache = ContentCache(root / "cache")

    def manifest(self) -> pa.Table:
        catalog = Catalog(LocalObjectStore(self.root / "work"))
        report = ingest(self.store, catalog, run_id="bench", cache=self.cache)
        if report.refusals:
            print(f"  quarantined {len(report.refusals)}: {report.refusals[:3]}")
        return build_snapshot(report.new_samples, VersionConfig()).manifest

    def run(
        self, manifest: pa.Table, name: str, recipe: Recipe, size: int, minutes: float
    ) -> dict[str, Any]:
        """Train `recipe` on the train/val splits of `manifest`; val and test mIoU per type."""
        spec, tc = model_spec(recipe, size), train_config(recipe, minutes)
        decoded = build_decoded(
            manifest, self.store, self.cache, self.root / "decoded", version_id=name, size=size
        )
        columns = {
            "image_types": manifest.column("image_type").to_pylist(),
            "sources": manifest.column("source").to_pylist(),
        }
        start = time.perf_counter()
        result = train(
            spec,
            tc,
            make_train_loaders(manifest, decoded, tc),
            **columns,
            progress_bar=False,
            on_epoch=lambda r: print(f"    {r.describe()}", flush=True),
        )
        seconds = time.perf_counter() - start
        loaders = make_loaders(manifest, decoded, batch_size=32, augment=None, seed=0)
        start = time.perf_counter()
        test = evaluate_loader(result.model, result.config, loaders["test"], **columns)
        test_seconds = time.perf_counter() - start
        n_test = sum(g.n_images for g in test.by_image_type.values())
        plain = without_tta(result.model, result.config, loaders, columns)
        return {
            "epochs": len(result.history),
            "train_s": seconds,
            "steps_s": sum(h["seconds"] for h in result.history),
            "stop": result.stop_reason,
            "threshold": result.config.threshold,
            "val": {t: g.miou for t, g in result.val_metrics.by_image_type.items()},
            "test": {t: g.miou for t, g in test.by_image_type.items()},
            "test_n": {t: g.n_images for t, g in test.by_image_type.items()},
            "val_all": result.val_metrics.overall.miou,
            "test_all": test.overall.miou,
            "eval_img_s": n_test / max(test_seconds, 1e-9),
            "test_no_tta": plain,
        }


def without_tta(
    model: Any, config: ModelConfig, loaders: Mapping[str, Any], columns: Mapping[str, Any]
) -> dict[str, float] | None:
    """Test mIoU per type of the same weights predicting without test-time augmentation, at a
    threshold tuned again on val; None when `config` has none."""
    if config.tta_passes == 1:
        return None
    plain = config.model_copy(update={"tta_flip": False, "tta_scales": (1.0,)})
    val = predict_probabilities(model, plain, loaders["val"])
    threshold = tune_threshold(val.probabilities, val.masks).threshold
    plain = plain.model_copy(update={"threshold": threshold})
    test = evaluate_loader(model, plain, loaders["test"], **columns)
    return {t: g.miou for t, g in test.by_image_type.items()}


def left_out(manifest: pa.Table, trained: str) -> pa.Table:
    """`manifest` with every image of the types other than `trained` moved to test."""
    types = np.asarray(manifest.column("image_type").to_pylist(), dtype=object)
    splits = manifest.column("split").to_numpy(zero_copy_only=False)
    index = manifest.schema.get_field_index("split")
    moved = pa.array(np.where(types == trained, splits, "test"), pa.string())
    return manifest.set_column(index, manifest.schema.field("split"), moved)


def main() -> None:
    args = _parse()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
    if not args.real_dir.exists():
        raise SystemExit(f"{args.real_dir} not found: this benchmark needs ../shared/data/real")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="real-quality-") as tmp:
        photos = Workspace(Path(tmp) / "photos")
        load_photos(args.real_dir, photos.store)
        manifest = photos.manifest()
        synth: tuple[Workspace, pa.Table] | None = None
        if args.synthetic_minutes > 0:
            factory = Workspace(Path(tmp) / "synthetic")
            synthetic.generate(factory.store, synthetic.DEFAULT_TYPES, args.per_type, size=128)
            synth = (factory, factory.manifest())
        for name in names:
            recipe = RECIPES[name]
            print(f"\n== {name}: {recipe.description}", flush=True)
            row: dict[str, Any] = {"recipe": name}
            if args.minutes > 0:
                row["both"] = photos.run(manifest, f"{name}-both", recipe, args.size, args.minutes)
                _print_run("both", row["both"])
            if args.left_out_minutes > 0:
                for trained in SETS:
                    run = photos.run(
                        left_out(manifest, trained),
                        f"{name}-{trained}",
                        recipe,
                        args.size,
                        args.left_out_minutes,
                    )
                    row[f"only_{trained}"] = run
                    _print_run(f"only {trained}", run)
            if synth is not None:
                factory, synth_manifest = synth
                row["synthetic"] = factory.run(
                    synth_manifest, f"{name}-synthetic", recipe, 128, args.synthetic_minutes
                )
                _print_run("synthetic", row["synthetic"])
            rows.append(row)
    _print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _print_run(label: str, run: dict[str, Any]) -> None:
    val = " ".join(f"{t} {v:.3f}" for t, v in sorted(run["val"].items()))
    test = " ".join(f"{t} {v:.3f}" for t, v in sorted(run["test"].items()))
    if run["test_no_tta"]:
        plain = " ".join(f"{t} {v:.3f}" for t, v in sorted(run["test_no_tta"].items()))
        print(f"  {label} without TTA (threshold tuned again on val): test [{plain}]")
    print(
        f"  {label}: {run['epochs']} epochs in {run['train_s']:.0f} s ({run['stop']}; "
        f"{run['steps_s']:.0f} s in training steps, the rest validation, threshold, plots), "
        f"val [{val}] test [{test}], thr {run['threshold']:.2f}, "
        f"eval {run['eval_img_s']:.0f} img/s",
        flush=True,
    )


COLUMNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # header, run, path into the run's results
    ("epochs", "both", ("epochs",)),
    ("min", "both", ("train_s",)),
    ("val horse", "both", ("val", "horse")),
    ("val boat", "both", ("val", "boat")),
    ("test horse", "both", ("test", "horse")),
    ("test boat", "both", ("test", "boat")),
    ("no-TTA horse", "both", ("test_no_tta", "horse")),
    ("no-TTA boat", "both", ("test_no_tta", "boat")),
    ("horse unseen", "only_boat", ("test", "horse")),
    ("boat unseen", "only_horse", ("test", "boat")),
    ("synth val", "synthetic", ("val_all",)),
    ("synth test", "synthetic", ("test_all",)),
)


def _print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nLite0 U-Net (ImageNet, offline). Photos at {args.size}², trained on both sets for "
        f"<= {args.minutes} min (unseen: trained on the other set for <= "
        f"{args.left_out_minutes} min); synthetic at 128² for <= {args.synthetic_minutes} min. "
        "Val picks, test reports; 'min' is training minutes."
    )
    shown = [c for c in COLUMNS if any(_cell(row, c) is not None for row in rows)]
    print(f"{'recipe':<14}" + "".join(f" {header:>12}" for header, _, _ in shown))
    for row in rows:
        cells = []
        for column in shown:
            value = _cell(row, column)
            if value is None:
                cells.append(f" {'-':>12}")
            elif column[0] == "min":
                cells.append(f" {value / 60:>12.1f}")
            elif column[0] == "epochs":
                cells.append(f" {value:>12d}")
            else:
                cells.append(f" {value:>12.3f}")
        print(f"{row['recipe']:<14}" + "".join(cells))


def _cell(row: dict[str, Any], column: tuple[str, str, tuple[str, ...]]) -> Any:
    value: Any = row.get(column[1])
    for key in column[2]:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--real-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real"
    )
    parser.add_argument("--recipes", default="shipped")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--minutes", type=float, default=20.0, help="0: skip the run on both photo sets"
    )
    parser.add_argument("--left-out-minutes", type=float, default=0.0)
    parser.add_argument("--synthetic-minutes", type=float, default=0.0)
    parser.add_argument("--per-type", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    main()
