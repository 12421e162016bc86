"""What people should relabel: the review queue's rows, and its import file for a labeling tool.

A queue is a Parquet table (one row per image, with why it was queued) and a COCO JSON file with
the image and the model's mask as a pre-annotation (run-length encoded by pycocotools), which
CVAT imports as "COCO 1.0" (Label Studio's COCO import reads polygons only: its tasks come from
`labeling.label_studio`, with the mask as a brush prediction). Both are written to the work
store, replaced whole on every run (the queue is a pure function of its inputs):

    review/production/<YYYY-MM-DD>/queue.parquet, coco.json    (production_predictions' day)
    review/labels/model-<version>/queue.parquet, coco.json     (label_audit of a mask model)

Relabeled masks come back through the normal ingest (`labeling` writes them from Label Studio
and from CVAT or Label Studio exports; docs/labeling.md): a production image as
`failures/<image_id>.<ext>` + `failures/<image_id>.mask.png`, tagged with its original
`image_type` (and camera, product, station) plus `failed_model_version` and `reported_at`; a
suspect training label as a new `labeled/<image_id>.mask.png` (a relabel supersedes the old row).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as coco_mask

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.data.catalog import rows_to_table, to_parquet
from maskfind_pipeline.storage.base import ObjectNotFound, ObjectStore

GRADE_3, GRADE_2_SAMPLE, NEW_TYPE, LABEL_SUSPECT = (
    "grade_3",
    "grade_2_sample",
    "new_image_type",
    "label_suspect",
)

QUEUE_SCHEMA = pa.schema(
    [
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_type", pa.string()),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("priority", pa.float32(), nullable=False),
        pa.field("mask_key", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("grade", pa.int8()),
        pa.field("p_grade3", pa.float32()),
        pa.field("novelty", pa.float32()),
        pa.field("label_iou", pa.float32()),
        pa.field("queued_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


class ReviewQueueOptions(CoreConfig):
    """Which production images are queued for relabeling."""

    grade2_share: float = 0.1
    """Share of grade-2 images queued at random (by a hash of the key), to keep the reviewer
    honest about the middle grade."""
    include_grade3: bool = True
    """Queue every grade-3 image."""
    include_novel: bool = True
    """Queue every image flagged as a new image type."""


@dataclass(frozen=True)
class QueueFiles:
    """Where a queue was written, and how many images it holds."""

    table_key: str
    coco_key: str
    size: int


def pick_production(
    rows: Iterable[Mapping[str, object]], options: ReviewQueueOptions
) -> list[dict[str, object]]:
    """Queue rows (most urgent first) for a day's current log rows: grade 3, a sample of
    grade 2, new image types; failed images are not queued (they have no mask)."""
    queued = []
    for row in rows:
        if row["status"] != "ok":
            continue
        reasons = _reasons(row, options)
        if reasons:
            queued.append(_entry(row, reasons))
    return sorted(queued, key=lambda e: (-float(str(e["priority"])), str(e["image_key"])))


def pick_label_suspects(rows: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """Queue rows for suspect labels (`image_key`, `image_id`, `image_type`, `mask_key`,
    `label_iou`, `model_version` of the judge), lowest IoU with the confident prediction
    first."""
    entries = [
        {
            **{k: row[k] for k in ("image_key", "image_id", "image_type", "mask_key")},
            "reasons": [LABEL_SUSPECT],
            "priority": 1.0 - float(str(row["label_iou"])),
            "model_version": row["model_version"],
            "grade": None,
            "p_grade3": None,
            "novelty": None,
            "label_iou": row["label_iou"],
            "queued_at": datetime.now(UTC),
        }
        for row in rows
    ]
    return sorted(entries, key=lambda e: (-float(str(e["priority"])), str(e["image_key"])))


def write_queue(
    work_store: ObjectStore,
    prefix: str,
    entries: Sequence[Mapping[str, object]],
    masks: Mapping[str, np.ndarray],
) -> QueueFiles:
    """Write the queue table and its COCO import file (masks keyed by image key, looked up one
    at a time: `masks` may load each on access) under `prefix` (e.g.
    `review/production/2026-11-30/`), replacing an older queue. The COCO file is streamed to
    the store: one full-size mask in memory at a time, never the whole file."""
    table_key, coco_key = f"{prefix}queue.parquet", f"{prefix}coco.json"
    work_store.put(table_key, to_parquet(rows_to_table(entries, QUEUE_SCHEMA)))
    work_store.put_chunks(coco_key, coco_chunks(entries, masks))
    return QueueFiles(table_key, coco_key, len(entries))


def read_queue(work_store: ObjectStore, prefix: str) -> pa.Table:
    """A written queue table (empty when none was written)."""
    try:
        data = work_store.get(f"{prefix}queue.parquet")
    except ObjectNotFound:
        return QUEUE_SCHEMA.empty_table()
    return pq.read_table(io.BytesIO(data)).cast(QUEUE_SCHEMA)


def coco_import(
    entries: Sequence[Mapping[str, object]], masks: Mapping[str, np.ndarray]
) -> dict[str, object]:
    """A COCO instance-segmentation file: one image per queued image (`file_name` = its key in
    the data store), its mask as one "product" annotation in compressed RLE, the reasons and
    scores as attributes."""
    images, annotations = [], []
    for number, entry in enumerate(entries, start=1):
        image, annotation = _coco_entry(number, entry, masks[str(entry["image_key"])])
        images.append(image)
        annotations.append(annotation)
    return {"info": _COCO_INFO, "images": images, "annotations": annotations, **_COCO_TAIL}


def coco_chunks(
    entries: Sequence[Mapping[str, object]], masks: Mapping[str, np.ndarray]
) -> Iterator[bytes]:
    """`coco_import`'s file as JSON text in pieces: each mask is looked up, encoded and let go
    in turn (annotations come before images, which are small and kept until the end)."""
    images = []
    yield b'{"info": ' + json.dumps(_COCO_INFO).encode() + b', "annotations": ['
    for number, entry in enumerate(entries, start=1):
        image, annotation = _coco_entry(number, entry, masks[str(entry["image_key"])])
        images.append(image)
        yield (b",\n" if number > 1 else b"\n") + json.dumps(annotation).encode()
    yield b'], "images": ' + json.dumps(images, indent=1).encode()
    yield b', "categories": ' + json.dumps(_COCO_TAIL["categories"]).encode() + b"}\n"


_COCO_INFO = {"description": "maskfind review queue: the model's masks as pre-annotations"}
_COCO_TAIL = {"categories": [{"id": 1, "name": "product", "supercategory": "product"}]}


def _coco_entry(
    number: int, entry: Mapping[str, object], full_mask: np.ndarray
) -> tuple[dict[str, object], dict[str, object]]:
    """The COCO image and annotation of one queued image."""
    key = str(entry["image_key"])
    mask = np.asarray(full_mask, dtype=np.uint8)
    height, width = mask.shape
    image = {"id": number, "file_name": key, "width": width, "height": height}
    rle = coco_mask.encode(np.asfortranarray(mask))
    annotation = {
        "id": number,
        "image_id": number,
        "category_id": 1,
        "segmentation": {"size": [height, width], "counts": _text(rle["counts"])},
        "area": float(coco_mask.area(rle)),
        "bbox": [float(v) for v in coco_mask.toBbox(rle)],
        "iscrowd": 1,
        "attributes": {
            k: _json(entry.get(k))
            for k in ("reasons", "grade", "p_grade3", "novelty", "label_iou", "model_version")
        },
    }
    return image, annotation


def decode_annotation(annotation: Mapping[str, object]) -> np.ndarray:
    """The boolean mask of one COCO annotation written by `coco_import`."""
    segmentation = annotation["segmentation"]
    assert isinstance(segmentation, Mapping)
    rle = {"size": segmentation["size"], "counts": str(segmentation["counts"]).encode()}
    return coco_mask.decode(rle).astype(bool)  # pyright: ignore[reportArgumentType]


def _reasons(row: Mapping[str, object], options: ReviewQueueOptions) -> list[str]:
    reasons = []
    if options.include_grade3 and row.get("grade") == 3:
        reasons.append(GRADE_3)
    if row.get("grade") == 2 and _sampled(str(row["image_key"]), options.grade2_share):
        reasons.append(GRADE_2_SAMPLE)
    if options.include_novel and row.get("novel") is True:
        reasons.append(NEW_TYPE)
    return reasons


def _entry(row: Mapping[str, object], reasons: list[str]) -> dict[str, object]:
    p3 = row.get("p_grade3")
    novelty = row.get("novelty")
    priority = max(float(str(p3)) if p3 is not None else 0.0, 1.0 if NEW_TYPE in reasons else 0.0)
    return {
        "image_key": row["image_key"],
        "image_id": row["image_id"],
        "image_type": row.get("image_type"),
        "reasons": reasons,
        "priority": priority,
        "mask_key": row.get("mask_key"),
        "model_version": row.get("model_version"),
        "grade": row.get("grade"),
        "p_grade3": p3,
        "novelty": novelty,
        "label_iou": None,
        "queued_at": datetime.now(UTC),
    }


def _sampled(key: str, share: float) -> bool:
    """A stable pseudo-random draw: the same key is always in or out of the sample."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return digest / 2**64 < share


_ATTRIBUTES = ("reasons", "grade", "p_grade3", "novelty", "label_iou", "model_version")


def _text(counts: str | bytes) -> str:
    return counts.decode() if isinstance(counts, bytes) else counts


def _json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return value
