"""A production day with a review queue, for the labeling tests: images of odd sizes with tags,
the model's masks, a prediction log and the queue the pipeline writes from it."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from maskfind_pipeline.data.production import PredictionLog, encode_mask
from maskfind_pipeline.data.review_queue import ReviewQueueOptions
from maskfind_pipeline.labeling.server import RunningLabelStudio, label_studio
from maskfind_pipeline.storage import ObjectStore

DAY = "2026-11-30"
SIZES = ((37, 53), (41, 30), (29, 29))
"""(height, width) of the queued images: odd, and not square."""
TAGS = {"image_type": "cam-a", "camera": "c7", "station": "s2"}


@dataclass(frozen=True)
class QueuedImage:
    image_id: str
    image_key: str
    predicted: np.ndarray
    truth: np.ndarray


def production_day_with_queue(
    data: ObjectStore,
    work: ObjectStore,
    *,
    day: str = DAY,
    sizes: Sequence[tuple[int, int]] = SIZES,
) -> list[QueuedImage]:
    """Every image graded 3 (so all are queued), the model's mask a box, the truth another."""
    from maskfind_pipeline.flows.review_queue import queue_production_day

    rng = np.random.default_rng(7)
    images, rows = [], []
    for i, (h, w) in enumerate(sizes):
        image_id = f"img-{day}-{i}"
        key = f"production/{day}/{image_id}.png"
        sink = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sink, "PNG")
        data.put(key, sink.getvalue(), tags={**TAGS, "captured_at": f"{day}T08:00:00+00:00"})
        predicted = np.zeros((h, w), bool)
        predicted[2 : h // 2, 3 : w // 2] = True
        truth = np.zeros((h, w), bool)
        truth[1 : h - 2, 2 : w - 3] = True
        truth[h // 3, :] = False  # a thin gap the model missed
        mask_key = f"predictions/{day}/{image_id}.mask.png"
        data.put(mask_key, encode_mask(predicted))
        images.append(QueuedImage(image_id, key, predicted, truth))
        rows.append(_log_row(day, image_id, key, mask_key, p3=0.9 - 0.1 * i))
    PredictionLog(work, day).append(rows, run_id="r", part=0)
    outcome = queue_production_day(day, ReviewQueueOptions(), data_store=data, work_store=work)
    assert len(outcome.entries) == len(sizes)
    return images


def _log_row(day: str, image_id: str, key: str, mask_key: str, p3: float) -> dict[str, object]:
    return {
        "image_key": key,
        "image_id": image_id,
        "day": day,
        "status": "ok",
        "retryable": False,
        "image_type": TAGS["image_type"],
        "model_version": "4",
        "backend": "torch_fp32",
        "mask_key": mask_key,
        "grade": 3,
        "p_grade3": p3,
        "novelty": 1.5,
        "novel": False,
        "predicted_at": datetime(2026, 11, 30, tzinfo=UTC),
        "run_id": "r",
    }


@contextmanager
def label_studio_server(root: Path) -> Iterator[RunningLabelStudio]:
    """Label Studio on a free loopback port, its SQLite under `root/label-studio`, serving
    images from anywhere below `root` (the tests' local stores)."""
    with label_studio(root / "label-studio", files_root=root) as server:
        yield server


def next_dataset_version(data: ObjectStore, work: ObjectStore, cache: Path) -> dict[str, dict]:
    """Ingest, publish the next dataset version; its failure samples by image id, each with its
    manifest row and the tags its catalog row recorded (annotator, annotation_id, ...)."""
    import json

    from maskfind_pipeline.data.cache import ContentCache
    from maskfind_pipeline.data.catalog import Catalog
    from maskfind_pipeline.data.ingest import IngestOptions
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.data.versions import VersionConfig
    from maskfind_pipeline.flows.datasets import publish_dataset_version
    from maskfind_pipeline.flows.ingest import ingest_catalog

    ingest_catalog(data, work, ContentCache(cache), IngestOptions(max_workers=2), run_id="night")
    version = publish_dataset_version(work, VersionConfig())
    rows = VersionStore(work).manifest(version.version_id).to_pylist()
    catalog = Catalog(work).read().samples.to_pylist()
    tags = {(r["image_key"], r["mask_sha256"]): json.loads(r["tags_json"]) for r in catalog}
    return {
        r["image_id"]: {**r, "tags": tags[(r["image_key"], r["mask_sha256"])], "version": version}
        for r in rows
        if r["source"] == "failure"
    }
