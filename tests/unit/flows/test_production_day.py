"""Predicting a production day: masks written back, every image logged once, bad ones failed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.images import decode_image
from maskfind_pipeline.data.production import (
    PREDICTION_SCHEMA,
    PredictionLog,
    identity,
    list_day,
    mask_key_for,
)
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.flows.production import novelty_alarms
from maskfind_pipeline.ml.backends.runtimes import TorchBackend
from maskfind_pipeline.ml.novelty.fit_features import features_of
from maskfind_pipeline.ml.novelty.model import NoveltyConfig, NoveltyModel
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.serving.day import ProductionModels, predict_day
from maskfind_pipeline.storage import LocalObjectStore
from tests.conftest import s3_store
from tests.support.models import TINY, tiny_weights
from tests.support.s3server import S3Server

DAY = dt.date(2026, 11, 30)
TYPES = synthetic.DEFAULT_TYPES[:2]
OPTIONS = ProductionOptions(batch_size=4, io_workers=3, commit_every=5)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_weights(TINY, tiny_weights(seed=3), version="7")


def exact(predictor: Predictor) -> ProductionModels:
    return ProductionModels(
        champion_version=predictor.version,
        config=predictor.config,
        predict=TorchBackend("torch_fp32", predictor).predict,
        backend="torch_fp32",
    )


@pytest.fixture
def stores(tmp_path: Path) -> tuple[LocalObjectStore, LocalObjectStore]:
    data, work = LocalObjectStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    synthetic.generate_production(data, TYPES, 6, day=DAY, size=48)
    prefix = f"production/{DAY.isoformat()}/"
    data.put(prefix + "corrupt.png", b"\x89PNG\r\n\x1a\n broken", tags={"image_type": "x"})
    image = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image, "PNG")
    data.put(prefix + "untagged.png", image.getvalue())
    data.put(prefix + "notes.txt", b"not an image")
    return data, work


def test_a_day_writes_the_champions_masks_and_logs_every_image(
    stores: tuple[LocalObjectStore, LocalObjectStore], predictor: Predictor
) -> None:
    data, work = stores
    day = DAY.isoformat()
    outcome = predict_day(
        day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="r1"
    )
    log = PredictionLog(work, day).read()
    assert log.schema.equals(PREDICTION_SCHEMA)
    rows = {r["image_key"]: r for r in log.to_pylist()}
    assert len(rows) == log.num_rows == 12 + 3 == len(outcome.rows)
    failed = {k.rpartition("/")[2]: r["reason"] for k, r in rows.items() if r["status"] == "failed"}
    assert set(failed) == {"corrupt.png", "untagged.png", "notes.txt"}
    assert "image_type" in failed["untagged.png"] and "PNG" in failed["corrupt.png"]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert {r["model_version"] for r in ok} == {"7"} and all(r["grade"] is None for r in ok)
    for row in ok:
        key = str(row["image_key"])
        image = decode_image(data.get(key), image_ext=key.rpartition(".")[2]).image
        written = np.asarray(Image.open(io.BytesIO(data.get(row["mask_key"])))) != 0
        assert row["mask_key"] == mask_key_for(key)
        assert written.shape == image.shape[:2]
        np.testing.assert_array_equal(written, predictor.predict_mask(image))
        assert row["mask_fraction"] == pytest.approx(written.mean(), abs=1e-6)


def test_a_rerun_does_only_what_is_missing(
    stores: tuple[LocalObjectStore, LocalObjectStore], predictor: Predictor
) -> None:
    data, work = stores
    day = DAY.isoformat()
    first = predict_day(
        day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="r1"
    )
    again = predict_day(
        day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="r2"
    )
    retried = {str(r["image_key"]).rpartition("/")[2] for r in again.rows}
    assert retried == {"untagged.png"}, "only the retryable failure (missing tags) is retried"
    assert first.listed == again.listed == 14 and again.skipped == 13
    data.put(
        f"production/{day}/untagged.png",
        data.get(f"production/{day}/untagged.png"),
        tags={"image_type": "cam-new"},
    )
    third = predict_day(
        day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="r3"
    )
    assert [(r["image_id"], r["status"]) for r in third.rows] == [("untagged", "ok")]
    current = PredictionLog(work, day).current()
    assert current.num_rows == 15 and PredictionLog(work, day).done() == {
        (r["image_key"], r["image_etag"]) for r in current.to_pylist()
    }


def test_a_crash_between_parts_loses_nothing_and_repeats_nothing(
    stores: tuple[LocalObjectStore, LocalObjectStore],
    predictor: Predictor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, work = stores
    day = DAY.isoformat()
    appended = 0
    original = PredictionLog.append

    def dies_at_the_second_part(self, rows, *, run_id, part):  # type: ignore[no-untyped-def]
        nonlocal appended
        appended += 1
        if appended == 2:
            raise SystemExit("killed")
        original(self, rows, run_id=run_id, part=part)

    monkeypatch.setattr(PredictionLog, "append", dies_at_the_second_part)
    with pytest.raises(SystemExit):
        predict_day(
            day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="r1"
        )
    monkeypatch.undo()
    committed = PredictionLog(work, day).read().num_rows
    assert 0 < committed < 15
    predict_day(
        day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="r2"
    )
    keys = PredictionLog(work, day).read().column("image_key").to_pylist()
    assert len(keys) == len(set(keys)) == 15


@pytest.mark.integration
def test_a_day_on_s3_through_the_same_code(s3: S3Server, predictor: Predictor) -> None:
    data, work = s3_store(s3), s3_store(s3)
    synthetic.generate_production(data, TYPES, 3, day=DAY, size=40)
    data.put(f"production/{DAY}/bad.png", b"not a png", tags={"image_type": "x"})
    day = DAY.isoformat()
    outcome = predict_day(
        day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="s3"
    )
    status = {r["image_id"]: r["status"] for r in outcome.rows}
    assert status.pop("bad") == "failed" and set(status.values()) == {"ok"} and len(status) == 6
    for row in (r for r in outcome.rows if r["status"] == "ok"):
        image = decode_image(
            data.get(str(row["image_key"])), image_ext=str(row["image_key"]).rpartition(".")[2]
        ).image
        written = np.asarray(Image.open(io.BytesIO(data.get(str(row["mask_key"]))))) != 0
        np.testing.assert_array_equal(written, predictor.predict_mask(image))
    assert PredictionLog(work, day).done() == {
        identity(info) for info in data.list(f"production/{day}/")
    }
    rerun = predict_day(
        day, exact(predictor), data_store=data, work_store=work, options=OPTIONS, run_id="s3-2"
    )
    assert rerun.rows == [] and rerun.skipped == 7


def test_every_row_gets_a_novelty_score_and_the_unseen_type_raises_the_alarm(
    stores: tuple[LocalObjectStore, LocalObjectStore], predictor: Predictor
) -> None:
    data, work = stores
    day = DAY.isoformat()
    known = TYPES[0].name
    seen = [
        decode_image(data.get(info.key), image_ext=info.key.rpartition(".")[2]).image
        for info in list_day(data, day).images
        if data.tags(info.key).get("image_type") == known
    ]
    config = NoveltyConfig(min_count=3, min_share=0.5)
    features = features_of(predictor, np.stack(seen))
    novelty = NoveltyModel.fit(features, [known] * len(seen), config).calibrate(features)
    models = dataclasses.replace(exact(predictor), novelty=novelty)

    predict_day(day, models, data_store=data, work_store=work, options=OPTIONS, run_id="r1")

    rows = [r for r in PredictionLog(work, day).read().to_pylist() if r["status"] == "ok"]
    assert len(rows) == 12 and all(r["novel"] == (r["novelty"] > novelty.threshold) for r in rows)
    flagged = {t.name: sum(r["novel"] for r in rows if r["image_type"] == t.name) for t in TYPES}
    assert [a.image_type for a in novelty_alarms(rows, config)] == [TYPES[1].name], flagged
    without = [r for r in rows if r["image_type"] == known]
    assert novelty_alarms(without, config) == []


class _SameGrades:
    """A grader that gives every mask the same grade probabilities, as a calibrated grade
    model does for masks whose signals are alike."""

    version = "1"
    scorer = "entropy"

    def grade_batch(self, images, probabilities, threshold, **_):
        return np.tile([0.2, 0.3, 0.5], (len(images), 1))


def test_equal_grades_of_one_type_in_one_batch_keep_the_day_going(
    stores: tuple[LocalObjectStore, LocalObjectStore], predictor: Predictor
) -> None:
    """The gallery of the worst-graded masks kept them in a heap ordered by P(grade 3): equal
    values fell through to comparing the images' arrays, and the whole day failed."""
    data, work = stores
    models = dataclasses.replace(exact(predictor), grader=_SameGrades())
    options = OPTIONS.model_copy(update={"batch_size": 12, "gallery_per_type": 2})
    outcome = predict_day(
        DAY.isoformat(), models, data_store=data, work_store=work, options=options, run_id="r1"
    )
    ok = [r for r in outcome.rows if r["status"] == "ok"]
    assert len(ok) == 12 and {r["p_grade3"] for r in ok} == {0.5}
    assert sorted(e.image_type for e in outcome.worst) == sorted([t.name for t in TYPES] * 2)
