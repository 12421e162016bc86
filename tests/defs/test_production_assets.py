"""`reviewer_model` and `production_predictions` in-process on tiny data: a reviewer is trained,
registered and promoted; a production day is predicted by the champion and graded by it."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.decoded import resize_pair
from maskfind_pipeline.data.images import decode_image
from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.metrics import quantize_probabilities
from maskfind_pipeline.ml.novelty.model import from_files
from maskfind_pipeline.ml.reviewer.config import GradeRule
from maskfind_pipeline.ml.reviewer.model import binary_mask
from maskfind_pipeline.ml.segmentation.config import demo_model_spec
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_training

DAY = dt.date(2026, 11, 30)
TYPES = synthetic.DEFAULT_TYPES[:3]
MODEL = demo_model_spec(64).model_copy(update={"decoder_channels": (64, 32, 16, 16, 8)})
"""Pretrained (offline Lite0): a few epochs give masks of every grade to learn grading from."""
REVIEWER = {
    "spec": {
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "input_size": 32,
        # A few epochs on 16 images per type: IoU bands that such masks span (the grade rule
        # is configuration; the production bands are 0.95 / 0.80).
        "grades": {"good": 0.6, "usable": 0.3},
    },
    "train": {"epochs": 2, "batch_size": 16, "allow_scratch": True},
    "folds": 2,
    "fold_train": {"epochs": 1, "batch_size": 8},
    "max_images": 30,
}


def _materialize(instance, locations, selection, run_config, partition=None):  # type: ignore[no-untyped-def]
    return _materialize_with_checks(instance, locations, selection, run_config, partition)[0]


def _materialize_with_checks(instance, locations, selection, run_config, partition=None):  # type: ignore[no-untyped-def]
    job = defs().resolve_implicit_global_asset_job_def().get_subset(asset_selection=selection)
    result = job.execute_in_process(
        run_config=run_config,
        instance=instance,
        resources=build_resources(locations),
        partition_key=partition,
        raise_on_error=True,
    )
    metadata = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key
    }
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    return metadata, checks


@pytest.mark.integration
def test_reviewer_then_a_production_day(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data = LocalObjectStore(locations.data_uri)
    synthetic.generate(data, TYPES, 16, size=64)
    instance = dg.DagsterInstance.ephemeral()
    nightly = {
        dg.AssetKey(k)
        for k in ("image_catalog", "dataset_version", "mask_model", "compat_evaluation")
    } | {dg.AssetKey("promotion")}
    _materialize(
        instance,
        locations,
        nightly,
        {
            "ops": {
                "mask_model": {"config": tiny_training(MODEL, epochs=6)},
                "promotion": {"config": {"floor": 0.0}},
            }
        },
    )
    reviewer = _materialize(
        instance,
        locations,
        {dg.AssetKey("reviewer_model")},
        {"ops": {"reviewer_model": {"config": REVIEWER}}},
    )["reviewer_model"]
    assert reviewer["reviewer_version"].value == "1" and reviewer["promoted"].value is True
    assert str(reviewer["mask_models"].value).count("fold-") == 2  # one per fold
    folds = reviewer["folds"].value
    assert isinstance(folds, dict)
    assert sorted(folds) == sorted(t.name for t in TYPES)  # every type held out, once
    assert {int(str(f)) for f in folds.values()} == {0, 1}

    synthetic.generate_production(data, TYPES, 3, day=DAY, size=40)
    data.put(f"production/{DAY}/broken.jpg", b"\xff\xd8 not a jpeg", tags={"image_type": "x"})
    instance.add_dynamic_partitions(str(PRODUCTION_DAYS.name), [DAY.isoformat()])
    options = {"backend": {"backend": "torch_fp32"}, "batch_size": 4}
    metadata, checks = _materialize_with_checks(
        instance,
        locations,
        {dg.AssetKey("production_predictions")},
        {"ops": {"production_predictions": {"config": options}}},
        partition=DAY.isoformat(),
    )
    production = metadata["production_predictions"]
    assert production["predicted_now"].value == 9 and production["failed_now"].value == 1
    assert production["reviewer_version"].value == "1"

    registry = build_resources(locations)["mlflow"].registry()  # type: ignore[attr-defined]
    champion = load_model(registry, "champion")
    novelty = from_files(registry.download("champion").files)
    assert novelty is not None and novelty.threshold is not None
    assert novelty.image_types == tuple(sorted(t.name for t in TYPES))
    rows = PredictionLog(LocalObjectStore(locations.work_uri), DAY.isoformat()).read().to_pylist()
    assert len(rows) == 10
    for row in (r for r in rows if r["status"] == "ok"):
        assert row["model_version"] == champion.version and row["reviewer_version"] == "1"
        assert row["grade"] in (1, 2, 3)
        assert row["p_grade1"] + row["p_grade2"] + row["p_grade3"] == pytest.approx(1, abs=1e-4)
        ext = str(row["image_key"]).rpartition(".")[2]
        image = decode_image(data.get(row["image_key"]), image_ext=ext).image
        written = np.asarray(Image.open(io.BytesIO(data.get(row["mask_key"])))) != 0
        np.testing.assert_array_equal(written, champion.predict_mask(image))
        assert row["novel"] == (row["novelty"] > novelty.threshold)
    assert "novelty_alarm" in checks and checks["novelty_alarm"].severity.name == "WARN"
    for row in (r for r in rows if r["status"] == "ok"):
        assert row["grade_scorer"] == reviewer["scorer"].value
        assert 0.0 <= row["flip_disagreement"] <= 1.0

    # The loop's real failures: the day's images come back relabeled; the next version holds
    # them, and the reviewer learns from the champion's masks of them, graded by the truth.
    ok = [str(r["image_key"]) for r in rows if r["status"] == "ok"]
    synthetic.relabel_production(
        data, ok, failed_model_version=champion.version, reported_at=dt.datetime.now(dt.UTC)
    )
    catalog = {dg.AssetKey("image_catalog"), dg.AssetKey("dataset_version")}
    _materialize(instance, locations, catalog, {})
    free = {**REVIEWER, "scorers": ["flip_disagreement", "entropy", "novelty", "signals"]}
    again = _materialize(  # the free scorers only: no CNN to train this time
        instance,
        locations,
        {dg.AssetKey("reviewer_model")},
        {"ops": {"reviewer_model": {"config": free}}},
    )["reviewer_model"]
    samples = {r.data["masks"]: r.data for r in _records(again["samples"])}
    expected = _true_grades(data, ok, champion)
    assert {g: samples["failure"][f"grade_{g}"] for g in (1, 2, 3)} == expected
    comparison = {
        (r.data["masks"], r.data["scorer"]): r.data for r in _records(again["comparison"])
    }
    assert ("production_failures", "flip_disagreement") in comparison
    assert ("production_like", "reviewer") not in comparison
    calibration = _records(again["calibration_by_type"])
    assert {r.data["image_type"] for r in calibration} == {t.name for t in TYPES}
    for record in calibration:  # the calibration error is computed, per type
        expected, observed = (
            float(str(record.data[k])) for k in ("expected_bad_share", "observed_bad_share")
        )
        assert record.data["error"] == pytest.approx(abs(expected - observed))


def _records(entry: object) -> list[dg.TableRecord]:
    assert isinstance(entry, dg.TableMetadataValue)
    return list(entry.records)


def _true_grades(data: LocalObjectStore, keys: list[str], champion) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """Grades of the champion's masks of relabeled images at its input size, by the test's
    grade rule, computed here from the generator's true masks."""
    rule = GradeRule.model_validate(REVIEWER["spec"]["grades"])
    counts = {1: 0, 2: 0, 3: 0}
    size = champion.config.input_size
    for key in keys:
        image = decode_image(data.get(key), image_ext=key.rpartition(".")[2]).image
        truth = synthetic.production_truth(key, image.shape[1])
        small, small_truth = resize_pair(image, truth, size)
        batch = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None]
        quantized = quantize_probabilities(torch.sigmoid(champion.logits(batch)).numpy())
        mask = binary_mask(torch.from_numpy(quantized), champion.config.threshold)[0, 0].numpy()
        truth = small_truth != 0
        union = (mask | truth).sum()
        counts[int(rule.grades(np.array([(mask & truth).sum() / union if union else 1.0]))[0])] += 1
    return counts
