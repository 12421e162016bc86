"""A day where most images are queued: the review queue is written by streaming, one full-size
mask in memory at a time, never every mask nor the whole COCO file."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from maskfind_pipeline.data.production import PredictionLog, encode_mask
from maskfind_pipeline.data.review_queue import ReviewQueueOptions, decode_annotation
from maskfind_pipeline.flows.review_queue import queue_production_day
from maskfind_pipeline.storage import LocalObjectStore

DAY = "2026-11-30"
QUEUED, SIDE = 24, 1000  # 24 masks of 1 MB each (bool)


def test_a_mostly_queued_day_is_written_one_mask_at_a_time(tmp_path: Path) -> None:
    data, work = LocalObjectStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    rows = []
    for i in range(QUEUED):
        yy, xx = np.mgrid[:SIDE, :SIDE]
        mask = (xx - 40 * i) ** 2 + (yy - 500) ** 2 < (100 + 10 * i) ** 2  # a disc per image
        mask_key = f"predictions/{DAY}/img-{i:03d}.mask.png"
        data.put(mask_key, encode_mask(mask))
        rows.append(
            {
                "image_key": f"production/{DAY}/img-{i:03d}.png",
                "image_id": f"img-{i:03d}",
                "day": DAY,
                "status": "ok",
                "retryable": False,
                "image_type": "cam-a",
                "model_version": "3",
                "backend": "torch_fp32",
                "mask_key": mask_key,
                "grade": 3,
                "p_grade3": 0.9 - i / 100,
                "predicted_at": datetime(2026, 11, 30, tzinfo=UTC),
                "run_id": "r",
            }
        )
    PredictionLog(work, DAY).append(rows, run_id="r", part=0)

    tracemalloc.start()
    try:
        outcome = queue_production_day(DAY, ReviewQueueOptions(), data_store=data, work_store=work)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert outcome.files.size == QUEUED
    coco = json.loads(work.get(outcome.files.coco_key))
    by_id = {image["id"]: image for image in coco["images"]}
    for annotation in coco["annotations"]:
        image = by_id[annotation["image_id"]]
        key = image["file_name"].replace("production/", "predictions/").replace(".png", "")
        expected = np.asarray(_png(data.get(f"{key}.mask.png"))) != 0
        np.testing.assert_array_equal(decode_annotation(annotation), expected)
    one_mask = SIDE * SIDE  # bytes of one boolean mask
    assert peak < 6 * one_mask, f"peak {peak / 1e6:.1f} MB for {QUEUED} masks of 1 MB"


def _png(data: bytes):  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))
