"""Production days: the unlabeled images of a day, their predicted masks, and the day's log.

Layout (DESIGN.md): images `production/<YYYY-MM-DD>/<image_id>.<png|jpg|jpeg>` with the usual
tags, predicted masks written back as `predictions/<YYYY-MM-DD>/<image_id>.mask.png` (the data
store, original size, 0/255), and each day's log in the work store as create-only Parquet parts:

    predictions/<YYYY-MM-DD>/part-<utc stamp>-<run>-<n>.parquet

Two images of one id (`a.png` and `a.jpg`) never share a mask: a PNG whose id has no dot keeps
`<image_id>.mask.png`, any other image's mask is `<file name>.mask.png` (`a.jpg.mask.png`).

A log row is the commit point of one image: its mask is written before the row. An image is
known by its key and ETag: a re-run skips the images whose current version has a final row
(`ok`, or `failed` for good), so a file replaced since (a half upload completed) is predicted
again; a crash keeps every committed part and a mask without a row (left by the crash) is simply
written again.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from maskfind_pipeline.data.catalog import latest_by, part_name, rows_to_table, to_parquet
from maskfind_pipeline.storage.base import ObjectInfo, ObjectStore
from maskfind_pipeline.storage.keys import (
    IMAGE_EXTENSIONS,
    MASK_SUFFIX,
    TAGS_SUFFIX,
    InvalidKey,
    printable_key,
    validate_key,
)

PRODUCTION = "production/"
PREDICTIONS = "predictions/"
OK, FAILED = "ok", "failed"

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("day", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("retryable", pa.bool_(), nullable=False),
        pa.field("image_sha256", pa.string()),
        pa.field("image_etag", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("image_type", pa.string()),
        pa.field("camera", pa.string()),
        pa.field("product", pa.string()),
        pa.field("station", pa.string()),
        pa.field("captured_at", pa.timestamp("us", tz="UTC")),
        pa.field("tags_json", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("reviewer_version", pa.string()),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("mask_key", pa.string()),
        pa.field("mask_fraction", pa.float32()),
        pa.field("probability_mean", pa.float32()),
        pa.field("uncertain_share", pa.float32()),
        pa.field("grade", pa.int8()),
        pa.field("p_grade1", pa.float32()),
        pa.field("p_grade2", pa.float32()),
        pa.field("p_grade3", pa.float32()),
        pa.field("novelty", pa.float32()),
        pa.field("novel", pa.bool_()),
        pa.field("predicted_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("grade_scorer", pa.string()),
        pa.field("flip_disagreement", pa.float32()),
    ]
)
"""Columns added later are nullable and last: parts written before them read as null there."""


@dataclass(frozen=True)
class DayListing:
    """A day's objects: image keys to predict, and keys that cannot be images (with why)."""

    images: list[ObjectInfo]
    unsupported: list[tuple[ObjectInfo, str]]


def parse_day(text: str) -> dt.date:
    """A production day from `YYYY-MM-DD`; ValueError for anything else."""
    day = dt.date.fromisoformat(text)
    if day.isoformat() != text:
        raise ValueError(f"not a YYYY-MM-DD day: {text!r}")
    return day


def production_days(store: ObjectStore) -> list[str]:
    """The days that have a `production/<YYYY-MM-DD>/` folder, oldest first."""
    days = []
    for name in store.folders(PRODUCTION):
        try:
            days.append(parse_day(name).isoformat())
        except ValueError:
            continue
    return days


def list_day(store: ObjectStore, day: str) -> DayListing:
    """The objects directly under `production/<day>/`: images, and keys that are not images."""
    prefix = f"{PRODUCTION}{parse_day(day).isoformat()}/"
    images, unsupported = [], []
    for info in store.list(prefix):
        name = info.key[len(prefix) :]
        if name.endswith(TAGS_SUFFIX):
            continue
        stem, dot, ext = name.rpartition(".")
        if "/" in name:
            unsupported.append((info, "nested below the day's folder"))
        elif name.endswith(MASK_SUFFIX) or not dot or not stem:
            unsupported.append((info, "not an image key (<id>.png, .jpg or .jpeg)"))
        elif ext.lower() not in IMAGE_EXTENSIONS:
            # quoted printable: a local name that is not UTF-8 must not break the log's Parquet
            unsupported.append((info, f"unsupported image extension .{printable_key(ext)}"))
        else:
            images.append(info)
    return DayListing(images, unsupported)


def image_id_of(key: str) -> str:
    """`production/<day>/<image_id>.<ext>` -> `<image_id>`."""
    return key.rpartition("/")[2].rpartition(".")[0] or key.rpartition("/")[2]


def mask_key_for(image_key: str) -> str:
    """Where the mask of `production/<day>/<name>` is written: `predictions/<day>/<id>.mask.png`
    for a PNG whose id has no dot, `predictions/<day>/<name>.mask.png` for any other image (so
    no two images share a mask).

    Raises:
        InvalidKey: the mask's key would be no valid key (e.g. a segment past the limit).
    """
    folder, _, name = image_key.removeprefix(PRODUCTION).rpartition("/")
    stem, _, ext = name.rpartition(".")
    base = stem if ext == "png" and stem and "." not in stem else name
    key = f"{PREDICTIONS}{folder}/{base}{MASK_SUFFIX}"
    try:
        return validate_key(key)
    except InvalidKey as exc:
        raise InvalidKey(f"the mask key would be invalid: {exc}") from None


def encode_mask(mask: np.ndarray) -> bytes:
    """A boolean mask (H, W) as a 0/255 greyscale PNG."""
    sink = io.BytesIO()  # 0/255 as uint8 at once: one byte a pixel, no wider temporary
    Image.fromarray(np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255)).save(sink, "PNG")
    return sink.getvalue()


class PredictionLog:
    """One production day's log in a work store: create-only Parquet parts, read as one table."""

    def __init__(self, store: ObjectStore, day: str) -> None:
        self.store, self.day = store, parse_day(day).isoformat()
        self.prefix = f"{PREDICTIONS}{self.day}/"

    def read(self) -> pa.Table:
        """Every row ever logged for the day (a retried image has several)."""
        parts = [
            _conformed(pq.read_table(io.BytesIO(self.store.get(info.key))))
            for info in self.store.list(self.prefix)
            if info.key.endswith(".parquet")
        ]
        return pa.concat_tables(parts) if parts else PREDICTION_SCHEMA.empty_table()

    def current(self) -> pa.Table:
        """The latest row of each image key."""
        return latest_by(self.read(), "image_key", "predicted_at")

    def done(self) -> set[tuple[str, str | None]]:
        """(image key, ETag) of the images that need no more work: predicted, or failed for a
        reason a retry keeps; a later version of the file (another ETag) is not done."""
        rows = self.current().select(["image_key", "image_etag", "retryable"]).to_pylist()
        return {(r["image_key"], r["image_etag"]) for r in rows if not r["retryable"]}

    def retryable(self) -> int:
        """How many images' latest rows say a later run may succeed (e.g. a store outage)."""
        return sum(bool(r) for r in self.current().column("retryable").to_pylist())

    def append(self, rows: Sequence[Mapping[str, object]], *, run_id: str, part: int) -> None:
        """Commit rows as one new create-only part (nothing for no rows)."""
        if not rows:
            return
        key = self.prefix + part_name(run_id, part)
        self.store.put(key, to_parquet(rows_to_table(rows, PREDICTION_SCHEMA)), create_only=True)


def _conformed(table: pa.Table) -> pa.Table:
    """A stored part in `PREDICTION_SCHEMA`, nullable columns it predates filled with nulls."""
    for field in PREDICTION_SCHEMA:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)


def failed_row(
    info: ObjectInfo, day: str, reason: str, *, retryable: bool = False, **fields: object
) -> dict[str, object]:
    """The log row of an image that could not be predicted (a key that is not UTF-8 is logged
    with its undecodable bytes escaped, `storage.keys.printable_key`)."""
    key = identity(info)[0]
    return {
        "image_key": key,
        "image_id": image_id_of(key),
        "day": day,
        "status": FAILED,
        "reason": reason,
        "retryable": retryable,
        "image_etag": info.etag,
        **fields,
    }


def identity(info: ObjectInfo) -> tuple[str, str | None]:
    """What a log row knows an image by: its key as the log holds it, and its ETag."""
    return printable_key(info.key), info.etag


def summary(rows: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """Per image type: images, failures, and the count and share of each grade."""
    table: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = table.setdefault(str(row.get("image_type") or "(unknown)"), {})
        entry["images"] = entry.get("images", 0) + 1
        column = "failed" if row["status"] != OK else f"grade_{row['grade'] or 'none'}"
        entry[column] = entry.get(column, 0) + 1
    out = []
    for image_type, counts in sorted(table.items()):
        graded = sum(counts.get(f"grade_{g}", 0) for g in (1, 2, 3))
        grade3 = counts.get("grade_3", 0)
        out.append(
            {
                "image_type": image_type,
                "images": counts["images"],
                "failed": counts.get("failed", 0),
                **{f"grade_{g}": counts.get(f"grade_{g}", 0) for g in (1, 2, 3)},
                "grade_3_rate": round(grade3 / graded, 4) if graded else None,
            }
        )
    return out


def grade_3_rate(rows: Iterable[Mapping[str, object]]) -> float | None:
    """Share of grade 3 among the graded images (None when none is graded)."""
    grades = [row["grade"] for row in rows if row["status"] == OK and row["grade"] is not None]
    return sum(g == 3 for g in grades) / len(grades) if grades else None
