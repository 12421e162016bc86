"""What people sent back from a labeling tool, written as `failures/` samples, and the record.

Every answer read from Label Studio (API or JSON export) or CVAT (an export file) becomes a
`Returned`: a corrected mask, or a skip, a rejection or an empty answer. `record_returns`
writes each corrected mask as the failure sample of DESIGN.md's contract, create-only:

    failures/<image_id>.<ext>         the production image's bytes, with its tags plus
                                      failed_model_version, reported_at, annotator, annotation_id
    failures/<image_id>.mask.png      the person's mask (0/255)

and appends one row per answer to the ledger in the work store (create-only Parquet parts):

    review/returns/part-<utc stamp>-<run>-<n>.parquet

The ledger is what makes it idempotent: an answer (tool + revision) already recorded is not
looked at again, and a mask equal to the one already written is not written twice. A later
revision of the same annotation (an annotation edited in Label Studio) replaces the mask and
the tags: the catalog takes it as a relabel (a new row for the key), the next dataset version
holds the new mask, and the ledger says which revision that mask (`mask_sha256`) came from. A
failure written by other means (a file drop) is never overwritten: that answer is recorded as
a conflict.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from maskfind_pipeline.data.catalog import part_name, rows_to_table, to_parquet
from maskfind_pipeline.data.production import encode_mask
from maskfind_pipeline.data.review_queue import read_queue
from maskfind_pipeline.storage.base import ObjectExists, ObjectNotFound, ObjectStore, StoreError
from maskfind_pipeline.storage.keys import MASK_SUFFIX

LEDGER_PREFIX = "review/returns/"
QUEUES_PREFIX = "review/production/"

LABELED, SKIPPED, REJECTED, EMPTY = "labeled", "skipped", "rejected", "empty"
IMPORTED, REVISED, UNCHANGED, SUPERSEDED, CONFLICT, FAILED = (
    "imported",
    "revised",
    "unchanged",
    "superseded",
    "conflict",
    "failed",
)

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run", pa.string(), nullable=False),
        pa.field("tool", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("revision", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_key", pa.string()),
        pa.field("failure_key", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("annotation_id", pa.string()),
        pa.field("annotator", pa.string()),
        pa.field("annotated_at", pa.timestamp("us", tz="UTC")),
        pa.field("failed_model_version", pa.string()),
        pa.field("mask_sha256", pa.string()),
    ]
)


@dataclass(frozen=True)
class Returned:
    """One answer for one queued image.

    `revision` identifies this state of the answer within its tool (Label Studio: annotation id
    and update time; an export file: the mask's sha256), `image_key` and `model_version` the
    production image and the model whose mask was queued, when the tool knows them (Label
    Studio's task data does; CVAT's files do not, the review queues are asked).
    """

    tool: str
    image_id: str
    status: str
    revision: str
    mask: np.ndarray | None = field(default=None, repr=False)
    annotation_id: str | None = None
    annotator: str | None = None
    annotated_at: datetime | None = None
    image_key: str | None = None
    model_version: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Queued:
    """Where a queued image lives and which model's mask was queued."""

    image_key: str
    model_version: str | None


class QueueIndex:
    """The production review queues in a work store, by image id (a later day wins)."""

    def __init__(self, entries: Mapping[str, Queued]) -> None:
        self.entries = dict(entries)

    @classmethod
    def read(cls, work_store: ObjectStore) -> QueueIndex:
        entries: dict[str, Queued] = {}
        for day in work_store.folders(QUEUES_PREFIX):
            for row in read_queue(work_store, f"{QUEUES_PREFIX}{day}/").to_pylist():
                entries[row["image_id"]] = Queued(row["image_key"], row["model_version"])
        return cls(entries)

    def get(self, image_id: str) -> Queued | None:
        return self.entries.get(image_id)


class Ledger:
    """The record of every answer read back: create-only Parquet parts under `review/returns/`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def table(self) -> pa.Table:
        tables = [
            pq.read_table(io.BytesIO(self.store.get(info.key))).cast(LEDGER_SCHEMA)
            for info in self.store.list(LEDGER_PREFIX)
            if info.key.endswith(".parquet")
        ]
        return pa.concat_tables(tables) if tables else LEDGER_SCHEMA.empty_table()

    def revisions(self) -> set[tuple[str, str]]:
        """(tool, revision) of every answer recorded, but those that failed to be written (the
        store refused: they are tried again)."""
        table = self.table().select(["tool", "revision", "status"]).to_pylist()
        return {(r["tool"], r["revision"]) for r in table if r["status"] != FAILED}

    def append(self, rows: Sequence[Mapping[str, object]], run_id: str) -> str | None:
        if not rows:
            return None
        key = LEDGER_PREFIX + part_name(run_id, 0)
        self.store.put(key, to_parquet(rows_to_table(rows, LEDGER_SCHEMA)), create_only=True)
        return key


@dataclass
class ReturnReport:
    """What `record_returns` did: one ledger row per answer looked at, and how many were
    already recorded before (not looked at again)."""

    rows: list[dict[str, object]]
    already_recorded: int
    ledger_key: str | None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[str(row["status"])] = out.get(str(row["status"]), 0) + 1
        return dict(sorted(out.items()))

    @property
    def written(self) -> list[str]:
        return [str(r["failure_key"]) for r in self.rows if r["status"] in (IMPORTED, REVISED)]


class UnknownImage(LookupError):
    """An answer for an image that no review queue holds and no failure sample describes."""


def resolve(
    returns: Iterable[Returned],
    queues: QueueIndex,
    data_store: ObjectStore,
    *,
    strict: bool = True,
) -> list[Returned]:
    """Fill in each answer's production image key and model version from the review queues
    (or, for an image relabeled before, the failure's own tags). An image id that neither
    knows raises (`strict`) or makes the answer a conflict.

    Raises:
        UnknownImage: `strict`, and an image id that neither knows.
    """
    out = []
    for item in returns:
        if item.image_key and item.model_version:
            out.append(item)
            continue
        queued = queues.get(item.image_id) or _from_failure(data_store, item.image_id)
        if queued is None:
            reason = (
                f"{item.image_id}: in no review queue under {QUEUES_PREFIX} (and no failure "
                "sample of that id): is this an export of another queue?"
            )
            if strict:
                raise UnknownImage(reason)
            out.append(replace(item, status=CONFLICT, reason=reason, mask=None))
            continue
        out.append(
            _replace(item, image_key=item.image_key or queued.image_key, model=queued.model_version)
        )
    return out


def record_returns(
    returns: Sequence[Returned],
    *,
    data_store: ObjectStore,
    work_store: ObjectStore,
    source: str,
    run_id: str,
    now: datetime | None = None,
) -> ReturnReport:
    """Write the new corrected masks as failure samples and record every new answer.

    Answers must be `resolve`d (image key known). Per image, the newest labeled answer of this
    batch is written; older ones are recorded as superseded.
    """
    now = now or datetime.now(UTC)
    ledger = Ledger(work_store)
    seen = ledger.revisions()
    fresh = [r for r in returns if (r.tool, r.revision) not in seen]
    newest: dict[str, Returned] = {}
    for item in fresh:
        if item.status == LABELED:
            old = newest.get(item.image_id)
            if old is None or _when(item) >= _when(old):
                newest[item.image_id] = item
    rows = []
    for item in fresh:
        if item.status != LABELED:
            rows.append(_row(item, source, run_id, now, item.status, item.reason))
        elif newest[item.image_id] is not item:
            rows.append(_row(item, source, run_id, now, SUPERSEDED, "a newer answer came back"))
        else:
            rows.append(_write(item, data_store, source, run_id, now))
    key = ledger.append(rows, run_id)
    return ReturnReport(rows, len(returns) - len(fresh), key)


def failure_tags(
    image_tags: Mapping[str, str], item: Returned, reported_at: datetime
) -> dict[str, str]:
    """The production image's tags plus what DESIGN.md asks of a failure and who answered."""
    tags = {
        k: v
        for k, v in image_tags.items()
        if k not in ("failed_model_version", "reported_at", "annotator", "annotation_id")
    }
    tags["failed_model_version"] = item.model_version or ""
    tags["reported_at"] = reported_at.isoformat()
    if item.annotator:
        tags["annotator"] = item.annotator
    tags["annotation_id"] = item.annotation_id or f"{item.tool}:{item.revision[:16]}"
    return {k: v for k, v in tags.items() if v}


def check_size(item: Returned, data_store: ObjectStore) -> str | None:
    """Why the answer's mask cannot be the image's (None when it fits)."""
    assert item.image_key and item.mask is not None
    try:
        with Image.open(io.BytesIO(data_store.get(item.image_key))) as image:
            width, height = image.size
    except (StoreError, OSError) as exc:
        return f"the production image {item.image_key} cannot be read: {exc}"
    if item.mask.shape != (height, width):
        h, w = item.mask.shape
        return f"the mask is {w}x{h}, the image {item.image_key} is {width}x{height}"
    return None


def _write(
    item: Returned, store: ObjectStore, source: str, run: str, now: datetime
) -> dict[str, object]:
    assert item.image_key is not None and item.mask is not None
    ext = item.image_key.rpartition(".")[2]
    image_key, mask_key = (
        f"failures/{item.image_id}.{ext}",
        f"failures/{item.image_id}{MASK_SUFFIX}",
    )
    png = encode_mask(item.mask)
    sha = hashlib.sha256(png).hexdigest()
    problem = check_size(item, store)
    if problem:
        return _row(item, source, run, now, CONFLICT, problem, image_key)
    tags = failure_tags(store.tags(item.image_key), item, item.annotated_at or now)
    try:
        if not store.exists(image_key):
            store.put(mask_key, png)  # an orphan mask from a crash is overwritten
            store.put(image_key, store.get(item.image_key), tags=tags, create_only=True)
            return _row(item, source, run, now, IMPORTED, "", image_key, sha)
        existing = store.tags(image_key)
        if "annotation_id" not in existing:
            reason = f"{image_key} exists and was not written by a labeling tool: left as it is"
            return _row(item, source, run, now, CONFLICT, reason, image_key, sha)
        if _sha(store, mask_key) == sha:
            return _row(item, source, run, now, UNCHANGED, "same mask as written", image_key, sha)
        store.put(image_key, store.get(image_key), tags=tags)
        store.put(mask_key, png)
        before = existing.get("annotation_id", "?")
        return _row(item, source, run, now, REVISED, f"replaces {before}", image_key, sha)
    except ObjectExists:
        reason = f"{image_key} appeared while writing: left as it is"
        return _row(item, source, run, now, CONFLICT, reason, image_key, sha)
    except StoreError as exc:  # e.g. S3's limit of 10 tags, an outage: tried again next run
        reason = f"the store refused {image_key}: {type(exc).__name__}: {exc}"
        return _row(item, source, run, now, FAILED, reason, image_key, sha)


def _sha(store: ObjectStore, key: str) -> str | None:
    try:
        return hashlib.sha256(store.get(key)).hexdigest()
    except ObjectNotFound:
        return None


def _row(
    item: Returned,
    source: str,
    run: str,
    now: datetime,
    status: str,
    reason: str,
    failure_key: str | None = None,
    sha: str | None = None,
) -> dict[str, object]:
    return {
        "recorded_at": now,
        "run": run,
        "tool": item.tool,
        "source": source,
        "revision": item.revision,
        "image_id": item.image_id,
        "image_key": item.image_key,
        "failure_key": failure_key,
        "status": status,
        "reason": reason or item.reason,
        "annotation_id": item.annotation_id,
        "annotator": item.annotator,
        "annotated_at": item.annotated_at,
        "failed_model_version": item.model_version,
        "mask_sha256": sha,
    }


def _from_failure(store: ObjectStore, image_id: str) -> Queued | None:
    """A failure written before by a labeling tool says where its production image came from."""
    for info in store.list(f"failures/{image_id}."):
        if info.key.endswith(MASK_SUFFIX) or info.key.endswith(".json"):
            continue
        tags = store.tags(info.key)
        if "annotation_id" in tags:
            return Queued(info.key, tags.get("failed_model_version"))
    return None


def _when(item: Returned) -> datetime:
    return item.annotated_at or datetime.min.replace(tzinfo=UTC)


def _replace(item: Returned, *, image_key: str, model: str | None) -> Returned:
    return replace(item, image_key=image_key, model_version=item.model_version or model)
