"""Per-sample scores: one row per (model version, test sample), stored once, and the matrix's
cells computed from them.

A model's quality on a test sample does not depend on the dataset version that holds it, only on
the sample's content (its image and mask sha256): so each model scores each distinct test sample
once, and a cell (model version x dataset version) is an aggregate of that model's scores over
the version's test split. The per-image IoU is stored as `ml.metrics.iou_per_image` computed it;
mIoU is their mean in manifest order and pixel precision and recall come from the summed counts,
exactly as `ml.metrics.summarize` computes them from the same counts.

    evaluations/scores/model=<version>/<run>-<n>.parquet   (a compacted `PartTable` a model)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.parts import PartTable
from maskfind_pipeline.storage.base import ObjectStore

PREFIX = "evaluations/scores/"
KEY = ["sample_id", "mask_sha256"]

SCORE_SCHEMA = pa.schema(
    [
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string(), nullable=False),
        pa.field("tp", pa.int64(), nullable=False),
        pa.field("fp", pa.int64(), nullable=False),
        pa.field("fn", pa.int64(), nullable=False),
        pa.field("iou", pa.float64(), nullable=False),
        pa.field("precision", pa.float64(), nullable=False),
        pa.field("recall", pa.float64(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


class MissingScores(LookupError):
    """A cell was asked for before its model scored every test sample of the version."""


class ScoreStore:
    """The per-sample scores in a work store, one compacted table per model version (a model's
    scores are read without touching the others')."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def table(self, model_version: str) -> PartTable:
        return PartTable(self.store, f"{PREFIX}model={model_version}/", SCORE_SCHEMA)

    def of(self, model_version: str) -> pa.Table:
        """Every score of one model version (one row per sample content)."""
        return self.table(model_version).read()

    def append(self, scores: pa.Table, *, model_version: str, name: str) -> None:
        """Commit one chunk's scores as a create-only part."""
        if scores.num_rows:
            self.table(model_version).append(scores, name)

    def compact(self, model_versions: Sequence[str]) -> None:
        for version in model_versions:
            self.table(version).compact()


def unscored(tests: pa.Table, scores: pa.Table) -> pa.Table:
    """The rows of `tests` (distinct by content) whose content `scores` has no row for."""
    distinct = tests.group_by(KEY, use_threads=False).aggregate([]).select(KEY)
    todo = distinct.join(scores.select(KEY), KEY, join_type="left anti", use_threads=False)
    keep = todo.append_column("__todo", pa.array(np.ones(todo.num_rows, bool)))
    marked = tests.append_column("__pos", pa.array(np.arange(tests.num_rows), pa.int64()))
    joined = marked.join(keep, KEY, join_type="inner", use_threads=False).sort_by("__pos")
    first = _first_of_each(joined)
    return first.drop_columns(["__pos", "__todo"])


@dataclass(frozen=True)
class ScoreChunk:
    """One unit of scoring work: a model version and at most a chunk of manifest rows (distinct
    by content) it has not scored. Chunks are independent: any machine may score any of them."""

    model_version: str
    number: int
    rows: pa.Table

    @property
    def key(self) -> str:
        """A name of the chunk made of letters, digits and underscores (a step's mapping key)."""
        return f"v{re.sub(r'[^A-Za-z0-9]', '_', self.model_version)}_{self.number}"

    @property
    def part_name(self) -> str:
        """The scores part this chunk writes, named by its content: a chunk scored again (a
        retried step) finds its part written and adds nothing."""
        digest = hashlib.sha256(self.model_version.encode())
        for column in KEY:
            for value in self.rows.column(column).to_pylist():
                digest.update(b"\0" + str(value).encode())
        return f"chunk-{digest.hexdigest()[:32]}"


def plan_chunks(todo: Mapping[str, pa.Table], chunk: int) -> list[ScoreChunk]:
    """`todo[model]` (rows to score, as `unscored` gives them) cut into chunks of at most
    `chunk` rows, model by model, rows in their order."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, not {chunk}")
    return [
        ScoreChunk(model, number, rows.slice(start, chunk))
        for model, rows in todo.items()
        for number, start in enumerate(range(0, rows.num_rows, chunk))
    ]


def score_rows(
    model_version: str,
    sample_ids: Sequence[str],
    mask_shas: Sequence[str],
    counts: tuple[np.ndarray, np.ndarray, np.ndarray],
    ious: np.ndarray,
    threshold: float,
    evaluated_at: dt.datetime,
) -> pa.Table:
    """The scores table of one scored chunk (counts: per-image tp, fp, fn)."""
    tp, fp, fn = (np.asarray(c, np.int64) for c in counts)
    n = len(sample_ids)
    return pa.table(
        {
            "model_version": [model_version] * n,
            "sample_id": list(sample_ids),
            "mask_sha256": list(mask_shas),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "iou": np.asarray(ious, np.float64),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "threshold": np.full(n, threshold, np.float64),
            "evaluated_at": pa.array([evaluated_at] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=SCORE_SCHEMA,
    )


def cell_rows(
    scores: pa.Table, manifest: pa.Table, *, model_version: str, dataset_version: str
) -> list[dict[str, object]]:
    """The cell of `model_version` on `dataset_version`: overall, per image type and per source,
    aggregated over the model's `scores` of the version's test split (manifest order).

    Raises:
        MissingScores: a test sample of the version has no score of the model.
    """
    split = np.asarray(manifest.column("split"))
    test = manifest.filter(pa.array(split == "test")).select([*KEY, "image_type", "source"])
    test = test.append_column("__pos", pa.array(np.arange(test.num_rows), pa.int64()))
    mine = scores.filter(pa.array(np.asarray(scores.column("model_version")) == model_version))
    columns = [*KEY, "tp", "fp", "fn", "iou", "threshold"]
    joined = test.join(_first_of_each(mine.select(columns)), KEY, use_threads=False)
    joined = joined.sort_by("__pos")
    if joined.num_rows != test.num_rows or joined.column("iou").null_count:
        missing = test.num_rows - (joined.num_rows - joined.column("iou").null_count)
        raise MissingScores(
            f"model {model_version} has no score for {missing} test sample(s) of {dataset_version}"
        )
    values = {c: np.asarray(joined.column(c)) for c in ("tp", "fp", "fn", "iou")}
    threshold = float(joined.column("threshold")[0].as_py()) if joined.num_rows else float("nan")
    rows = [{"group_kind": "overall", "group": "overall", **_group(values, None)}]
    for kind in ("image_type", "source"):
        labels = np.asarray(joined.column(kind).to_pylist(), dtype=object)
        for name in sorted(set(labels.tolist())):
            rows.append({"group_kind": kind, "group": name, **_group(values, labels == name)})
    return [
        {
            **row,
            "model_version": model_version,
            "dataset_version": dataset_version,
            "threshold": threshold,
        }
        for row in rows
    ]


def _group(values: dict[str, np.ndarray], selection: np.ndarray | None) -> dict[str, object]:
    pick = (lambda a: a) if selection is None else (lambda a: a[selection])
    ious, tp, fp, fn = (pick(values[c]) for c in ("iou", "tp", "fp", "fn"))
    tp_sum, fp_sum, fn_sum = (float(a.sum()) for a in (tp, fp, fn))
    return {
        "miou": float(ious.mean()) if ious.size else float("nan"),
        "precision": _ratio_scalar(tp_sum, tp_sum + fp_sum),
        "recall": _ratio_scalar(tp_sum, tp_sum + fn_sum),
        "n_images": int(ious.size),
    }


def _ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole in float64, 1.0 where whole is 0 (`ml.metrics.ZERO_DIVISION`)."""
    out = np.ones(len(part), np.float64)
    nonzero = whole > 0
    out[nonzero] = part[nonzero].astype(np.float64) / whole[nonzero].astype(np.float64)
    return out


def _ratio_scalar(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 1.0


def _first_of_each(table: pa.Table) -> pa.Table:
    """The first row of each (sample id, mask sha256): a score written twice counts once."""
    if table.num_rows == 0:
        return table
    ranked = table.append_column("__rank", pa.array(np.arange(table.num_rows), pa.int64()))
    first = ranked.group_by(KEY, use_threads=False).aggregate([("__rank", "min")])
    rows = np.sort(np.asarray(first.column("__rank_min")))
    return table.take(pa.array(rows, pa.int64()))
