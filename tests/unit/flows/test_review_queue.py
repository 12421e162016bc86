"""The review queue: grade 3, a stable sample of grade 2 and new types, with why; a COCO file
whose masks decode to the written ones; images already relabeled are not queued again."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from maskfind_pipeline.data.production import PredictionLog, encode_mask
from maskfind_pipeline.data.review_queue import (
    GRADE_2_SAMPLE,
    GRADE_3,
    NEW_TYPE,
    ReviewQueueOptions,
    decode_annotation,
    pick_production,
    read_queue,
)
from maskfind_pipeline.flows.review_queue import queue_production_day
from maskfind_pipeline.storage import LocalObjectStore

DAY = "2026-11-30"


def _row(i: int, grade: int | None, *, novel: bool = False, status: str = "ok") -> dict:
    return {
        "image_key": f"production/{DAY}/img-{i:03d}.png",
        "image_id": f"img-{i:03d}",
        "day": DAY,
        "status": status,
        "retryable": False,
        "image_type": "cam-new" if novel else "cam-a",
        "model_version": "3",
        "backend": "torch_fp32",
        "mask_key": f"predictions/{DAY}/img-{i:03d}.mask.png" if status == "ok" else None,
        "grade": grade,
        "p_grade3": {1: 0.05, 2: 0.2, 3: 0.9}.get(grade or 0),
        "novelty": 9.0 if novel else 1.0,
        "novel": novel,
        "predicted_at": datetime(2026, 11, 30, tzinfo=UTC),
        "run_id": "r",
    }


def test_the_rule_picks_grade_3_new_types_and_a_stable_sample_of_grade_2() -> None:
    rows = [_row(i, 2) for i in range(400)] + [_row(500, 3), _row(501, 1, novel=True)]
    rows.append(_row(502, None, status="failed"))
    options = ReviewQueueOptions(grade2_share=0.1)
    picked = pick_production(rows, options)
    reasons = {str(e["image_id"]): e["reasons"] for e in picked}
    assert reasons.pop("img-500") == [GRADE_3] and reasons.pop("img-501") == [NEW_TYPE]
    assert [e["image_id"] for e in picked[:2]] == ["img-501", "img-500"], "most urgent first"
    assert {tuple(r) for r in reasons.values()} == {(GRADE_2_SAMPLE,)}  # type: ignore[arg-type]
    assert 20 <= len(reasons) <= 60, "about 10 % of 400 grade-2 images"
    again = [e["image_id"] for e in pick_production(list(reversed(rows)), options)]
    assert again == [e["image_id"] for e in picked], "the sample is stable"
    none = pick_production(rows, ReviewQueueOptions(grade2_share=0.0, include_novel=False))
    assert [e["image_id"] for e in none] == ["img-500"]


def test_a_day_queue_is_written_with_its_masks_and_skips_relabeled_images(tmp_path: Path) -> None:
    data, work = LocalObjectStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    rows = [_row(1, 3), _row(2, 1, novel=True), _row(3, 1)]
    rng = np.random.default_rng(0)
    masks = {}
    for row in rows:
        masks[row["image_key"]] = rng.random((30, 40)) < 0.3
        data.put(str(row["mask_key"]), encode_mask(masks[row["image_key"]]))
    PredictionLog(work, DAY).append(rows, run_id="r", part=0)

    first = queue_production_day(DAY, ReviewQueueOptions(), data_store=data, work_store=work)
    assert [e["image_id"] for e in first.entries] == ["img-002", "img-001"]
    table = read_queue(work, f"review/production/{DAY}/").to_pylist()
    assert [r["reasons"] for r in table] == [[NEW_TYPE], [GRADE_3]]
    coco = json.loads(work.get(first.files.coco_key))
    assert [i["file_name"] for i in coco["images"]] == [e["image_key"] for e in first.entries]
    for image, annotation in zip(coco["images"], coco["annotations"], strict=True):
        np.testing.assert_array_equal(decode_annotation(annotation), masks[image["file_name"]])
        assert (image["height"], image["width"]) == (30, 40)

    data.put("failures/img-001.png", b"relabeled image")
    data.put("failures/img-001.mask.png", b"relabeled mask")
    second = queue_production_day(DAY, ReviewQueueOptions(), data_store=data, work_store=work)
    assert [e["image_id"] for e in second.entries] == ["img-002"]
    assert second.already_relabeled == 1
    assert len(read_queue(work, f"review/production/{DAY}/")) == 1
