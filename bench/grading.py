"""Are production's grades true? The reviewer judged on a production day it never saw, beside
the free signals, on real photographs (and the synthetic factory).

For each scenario, through the project's own Dagster jobs in a temporary MASKFIND_HOME:

1. labeled images of the *known* image types are ingested; the nightly job (ingest, dataset
   version with content-hash splits, `mask_model`: the shipped recipe FINE_TUNING on the
   offline-pretrained Lite0 U-Net at `--size`² with test-time flipping, for `--train-epochs`
   (a number of epochs, not minutes, so a busy machine changes the times, not the models);
   evaluation; promotion) makes the champion;
2. the `reviewer` job trains the grader with its defaults (budgets scaled by the flags) and
   reports its own out-of-fold grade-3 AUC (`self-reported`);
3. one production day holds images no model trained on: the test split of every known type and
   every image of the *new* types; the `production` job predicts, writes masks and grades;
4. grade 3 = IoU < 0.80 of the mask production wrote with the true mask. The grade-3 ROC AUC
   of production's P(grade 3) is set beside the free signals on the same masks: production's own
   flip disagreement and novelty columns, and the mean pixel entropy of the champion's map
   (recomputed in float32). Per image type: the expected bad share (mean P(grade 3)) against
   the observed one.

Scenarios: `photos:<new set>` trains on the two other sets of ../shared/data/real and brings
`<new set>` on the production day (horse, boat, car: each in turn); `synthetic` trains on nine
factory types at 128² and brings the tenth (`laser3d-wafer-tray-s4`, the demo's X).

    python -m bench.grading [--scenarios photos:car,photos:horse,photos:boat,synthetic]
                            [--train-epochs 30] [--fold-epochs 15] [--cnn-epochs 12]
                            [--size 256] [--real ../shared/data/real] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.flows.options import ProductionOptions, ReviewerOptions, TrainingOptions
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.metrics import quantize_probabilities
from maskfind_pipeline.ml.reviewer.config import ReviewerTrainConfig
from maskfind_pipeline.ml.reviewer.grading import mask_signals
from maskfind_pipeline.ml.reviewer.metrics import safe_auc
from maskfind_pipeline.ml.reviewer.report import evaluate_scorer
from maskfind_pipeline.ml.segmentation.config import FINE_TUNING, demo_model_spec
from maskfind_pipeline.ml.segmentation.predict import model_input
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.storage import LocalObjectStore

SETS = {"horse": "weizmann_horse", "boat": "sysu_shapes_boat", "car": "sysu_shapes_car"}
NEW_SYNTHETIC = "laser3d-wafer-tray-s4"
DAY = dt.date(2026, 12, 1)
USABLE = 0.80
Pairs = dict[str, list[tuple[str, bytes, bytes]]]
"""Per image type: (image id, JPEG/PNG bytes, mask PNG bytes)."""


def main() -> None:
    args = _parse()
    results = []
    for scenario in args.scenarios.split(","):
        print(f"\n=== {scenario} ===", flush=True)
        known, new, size = _scenario(scenario, args)
        with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
            result = run_scenario(Path(tmp), known, new, size, args)
        result["scenario"] = scenario
        results.append(result)
        _print_result(result)
        if args.out:  # after each scenario: a long run cut short keeps what it measured
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, "grading.json").write_text(json.dumps(results, indent=2, default=float))
    print("\n=== summary (grade-3 ROC AUC on the production day; calibration per type) ===")
    _print_summary(results)


def _scenario(name: str, args: argparse.Namespace) -> tuple[Pairs, Pairs, int]:
    if name == "synthetic":
        pairs = _synthetic_pairs(args.synthetic_count, args.synthetic_size)
        new = {NEW_SYNTHETIC: pairs.pop(NEW_SYNTHETIC)}
        return pairs, new, args.synthetic_size
    kind, _, held = name.partition(":")
    if kind != "photos" or held not in SETS:
        raise SystemExit(f"unknown scenario {name!r}: photos:<{'|'.join(SETS)}> or synthetic")
    pairs = {t: _photos(Path(args.real) / folder) for t, folder in SETS.items()}
    return {t: p for t, p in pairs.items() if t != held}, {held: pairs[held]}, args.size


def _photos(folder: Path) -> list[tuple[str, bytes, bytes]]:
    return [
        (image.stem, image.read_bytes(), (folder / "masks" / f"{image.stem}.png").read_bytes())
        for image in sorted((folder / "images").glob("*.jpg"))
    ]


def _synthetic_pairs(count: int, size: int) -> Pairs:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalObjectStore(Path(tmp))
        synthetic.generate(store, synthetic.DEFAULT_TYPES, count, size=size, seed=7)
        pairs: Pairs = {}
        for info in store.list("labeled/"):
            if info.key.endswith(".mask.png") or info.key.endswith(".json"):
                continue
            stem = info.key.rpartition("/")[2].rsplit(".", 1)[0]
            mask = store.get(f"labeled/{stem}.mask.png")
            pairs.setdefault(store.tags(info.key)["image_type"], []).append(
                (stem, store.get(info.key), mask)
            )
    return pairs


def run_scenario(
    home: Path, known: Pairs, new: Pairs, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    os.environ["MASKFIND_HOME"] = str(home)
    locations = Locations.from_env({"MASKFIND_HOME": str(home)})
    data = LocalObjectStore(locations.data_uri)
    for image_type, pairs in known.items():
        for stem, image, mask in pairs:
            ext = "png" if image[:4] == b"\x89PNG" else "jpg"
            data.put(f"labeled/{stem}.{ext}", image, tags={"image_type": image_type})
            data.put(f"labeled/{stem}.mask.png", mask)
    instance = dg.DagsterInstance.ephemeral()
    resources = build_resources(locations)
    times: dict[str, float] = {}

    def run(name: str, config: dict[str, Any], partition: str | None = None) -> Any:
        start = time.perf_counter()
        result = (
            defs()
            .resolve_job_def(name)
            .execute_in_process(
                run_config=config, instance=instance, resources=resources, partition_key=partition
            )
        )
        times[name] = time.perf_counter() - start
        print(f"  {name}: {times[name]:.0f} s", flush=True)
        return result

    training = TrainingOptions(
        model=demo_model_spec(size).model_copy(update={"tta_flip": True}),
        train=FINE_TUNING.model_copy(
            update={"epochs": args.train_epochs, "max_minutes": args.train_minutes}
        ),
    )
    nightly = {
        "ops": {
            "mask_model": {"config": training.model_dump(mode="json")},
            "promotion": {"config": {"floor": 0.0}},
        }
    }
    run("nightly", nightly)
    reviewer_settings = ReviewerOptions(
        train=ReviewerTrainConfig(epochs=args.cnn_epochs, max_minutes=args.cnn_minutes),
        fold_train=FINE_TUNING.model_copy(
            update={"epochs": args.fold_epochs, "max_minutes": args.fold_minutes}
        ),
    )
    reviewer = run(
        "reviewer",
        {"ops": {"reviewer_model": {"config": reviewer_settings.model_dump(mode="json")}}},
    )
    meta = {
        k: v.value
        for e in reviewer.get_asset_materialization_events()
        for k, v in e.materialization.metadata.items()
    }
    truth = _production_day(data, locations, known, new)
    instance.add_dynamic_partitions("production_days", [DAY.isoformat()])
    options = ProductionOptions().model_dump(mode="json")
    run("production", {"ops": {"production_predictions": {"config": options}}}, DAY.isoformat())
    rows = [
        r
        for r in PredictionLog(LocalObjectStore(locations.work_uri), DAY.isoformat())
        .current()
        .to_pylist()
        if r["status"] == "ok"
    ]
    champion = load_model(resources["mlflow"].registry(), "champion")  # type: ignore[attr-defined]
    return _judge(rows, data, truth, champion, set(new), meta, times)


def _production_day(
    data: LocalObjectStore, locations: Locations, known: Pairs, new: Pairs
) -> dict[str, bytes]:
    """Copy the known types' test split and every new-type image into the day; their true
    masks by image key."""
    versions = VersionStore(LocalObjectStore(locations.work_uri))
    card = versions.latest()
    assert card is not None
    manifest: pa.Table = versions.manifest(str(card["id"]))
    test = {
        r["image_id"]
        for r in manifest.select(["image_id", "split"]).to_pylist()
        if r["split"] == "test"
    }
    truth: dict[str, bytes] = {}
    day = DAY.isoformat()
    for image_type, pairs in [*known.items(), *new.items()]:
        for stem, image, mask in pairs:
            if image_type in known and stem not in test:
                continue
            ext = "png" if image[:4] == b"\x89PNG" else "jpg"
            key = f"production/{day}/{stem}.{ext}"
            data.put(key, image, tags={"image_type": image_type})
            truth[key] = mask
    return truth


def _judge(
    rows: list[dict[str, Any]],
    data: LocalObjectStore,
    truth: dict[str, bytes],
    champion: Any,
    new_types: set[str],
    meta: dict[str, Any],
    times: dict[str, float],
) -> dict[str, Any]:
    ious, entropy = [], []
    for row in rows:
        written = _mask(data.get(str(row["mask_key"])))
        true = _mask(truth[str(row["image_key"])])
        union = (written | true).sum()
        ious.append((written & true).sum() / union if union else 1.0)
        image = np.asarray(Image.open(io.BytesIO(data.get(str(row["image_key"])))).convert("RGB"))
        with torch.no_grad():
            probs = torch.sigmoid(
                champion.logits(model_input(image, champion.config.input_size)[None])
            )
        maps = quantize_probabilities(probs[:, 0].numpy())
        entropy.append(float(mask_signals(maps, champion.config.threshold)["entropy"][0]))
    bad = np.asarray(ious) < USABLE
    types = np.asarray([str(r["image_type"]) for r in rows], dtype=object)
    is_new = np.isin(types, list(new_types))
    scores = {
        "production P(grade 3)": np.asarray([r["p_grade3"] for r in rows], np.float64),
        "flip disagreement": np.asarray([r["flip_disagreement"] for r in rows], np.float64),
        "novelty": np.asarray([r["novelty"] for r in rows], np.float64),
        "entropy": np.asarray(entropy),
    }
    aucs = {
        name: {
            part: safe_auc(bad[rows_], score[rows_])
            for part, rows_ in (("all", np.ones_like(bad)), ("known", ~is_new), ("new", is_new))
        }
        for name, score in scores.items()
    }
    p3 = scores["production P(grade 3)"]
    probs = np.column_stack([1 - p3, np.zeros_like(p3), p3])
    grades = np.where(bad, 3, 1)
    calibration = evaluate_scorer("production", probs, grades, types)
    graded3 = np.asarray([r["grade"] == 3 for r in rows])
    return {
        "images": len(rows),
        "bad_share": float(bad.mean()),
        "aucs": aucs,
        "self_reported_auc": meta.get("auc_grade3"),
        "scorer": meta.get("scorer"),
        "best_free_signal": meta.get("best_free_signal"),
        "reviewer_refused": meta.get("reviewer_refused"),
        "calibration": [
            {
                "type": t.image_type,
                "n": t.n,
                "expected": t.expected,
                "observed": t.observed,
                "graded_3": float(graded3[types == t.image_type].mean()),
                "new": t.image_type in new_types,
            }
            for t in calibration.by_type
        ],
        "times_s": times,
    }


def _mask(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) != 0


def _print_result(result: dict[str, Any]) -> None:
    print(f"  {result['images']} production images, {result['bad_share']:.2f} truly bad")
    print(f"  grader: {result['scorer']} (self-reported AUC {result['self_reported_auc']})")
    print(f"  best free signal (reviewer job): {result['best_free_signal']}")
    print(f"  CNN: {result['reviewer_refused']}")
    print(f"  {'score':24s} {'all':>6s} {'known':>6s} {'new':>6s}")
    for name, parts in result["aucs"].items():
        print(f"  {name:24s} " + " ".join(f"{parts[p]:6.3f}" for p in ("all", "known", "new")))
    print(f"  {'type':32s} {'n':>4s} {'expected':>9s} {'observed':>9s} {'graded 3':>9s}")
    for row in result["calibration"]:
        mark = "  (new)" if row["new"] else ""
        print(
            f"  {row['type']:32s} {row['n']:4d} {row['expected']:9.2f} {row['observed']:9.2f} "
            f"{row['graded_3']:9.2f}{mark}"
        )


def _print_summary(results: list[dict[str, Any]]) -> None:
    print(
        f"{'scenario':18s} {'grader':>18s} {'self':>6s} {'prod':>6s} {'flip':>6s} "
        f"{'novelty':>7s} {'entropy':>7s} {'max |cal err|':>13s}"
    )
    for r in results:
        aucs = r["aucs"]
        errors = [abs(c["expected"] - c["observed"]) for c in r["calibration"]]
        own = r["self_reported_auc"]
        print(
            f"{r['scenario']:18s} {r['scorer']!s:>18s} "
            f"{(own if own is not None else float('nan')):6.3f} "
            f"{aucs['production P(grade 3)']['all']:6.3f} {aucs['flip disagreement']['all']:6.3f} "
            f"{aucs['novelty']['all']:7.3f} {aucs['entropy']['all']:7.3f} {max(errors):13.2f}"
        )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scenarios", default="photos:car,photos:horse,photos:boat,synthetic")
    parser.add_argument(
        "--real", default=str(Path(__file__).parents[1].parent / "shared/data/real")
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--train-minutes", type=float, default=None)
    parser.add_argument("--train-epochs", type=int, default=30, help="the champion's epochs")
    parser.add_argument("--fold-minutes", type=float, default=None)
    parser.add_argument("--fold-epochs", type=int, default=15, help="each fold model's epochs")
    parser.add_argument("--cnn-epochs", type=int, default=12, help="each CNN reviewer's epochs")
    parser.add_argument("--cnn-minutes", type=float, default=None)
    parser.add_argument("--synthetic-count", type=int, default=60)
    parser.add_argument("--synthetic-size", type=int, default=128)
    parser.add_argument("--out", default=None)
    return parser.parse_args()


if __name__ == "__main__":
    main()
