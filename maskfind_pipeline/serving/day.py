"""Predict one production day: the champion's mask for every new image, graded by the reviewer.

Images are fetched, decoded (ingest's rules) and resized by a thread pool ahead of the model; the
champion (through the chosen inference backend) and the reviewer run on the same batch; masks
are encoded and written back by the same pool while the next batch computes; log rows are
committed every `commit_every` images, each after its mask is written. A bad image gets a
`failed` row with the reason and never stops the day; a re-run does only what is missing.

Memory is bounded by `ProductionOptions`, not by the day: a file is refused by its listed size
and its header before it is fetched whole, the pixels being decoded at once and the mask pixels
waiting to be written each have a budget, and only the model-size input of an image is kept
ahead of the model.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from maskfind_pipeline.data.images import InvalidImage, decode_image, peek_size
from maskfind_pipeline.data.iterate import batches
from maskfind_pipeline.data.production import (
    OK,
    PredictionLog,
    encode_mask,
    failed_row,
    identity,
    image_id_of,
    list_day,
    mask_key_for,
)
from maskfind_pipeline.data.tags import InvalidTags, SampleTags, parse_tags
from maskfind_pipeline.ml.backends.base import Prediction
from maskfind_pipeline.ml.novelty.model import NoveltyModel
from maskfind_pipeline.ml.reviewer.grading import grades_of
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.predict import model_input, to_image_size
from maskfind_pipeline.serving.options import ProductionOptions
from maskfind_pipeline.storage.base import ObjectInfo, ObjectStore, StoreError
from maskfind_pipeline.storage.keys import InvalidKey, validate_key

T = TypeVar("T")
R = TypeVar("R")
UNCERTAIN = (0.1, 0.9)
"""A pixel whose probability lies strictly between these is counted as uncertain."""

Progress = Callable[[int, int], None]
Row = dict[str, object]
Pending = tuple[Row, "Future[None] | None"]
"""A log row and the write of its mask (None for a failed image: nothing to write)."""


class Grader(Protocol):
    """The grader as production uses it (`ml.reviewer.grader.Grader`)."""

    @property
    def version(self) -> str: ...

    @property
    def scorer(self) -> str:
        """The scorer the grades come from (`ml.reviewer.grading.SCORERS`)."""
        ...

    def grade_batch(
        self,
        images: torch.Tensor,
        probabilities: torch.Tensor,
        threshold: float,
        *,
        flip_disagreement: torch.Tensor | np.ndarray | None = None,
        novelty: np.ndarray | None = None,
    ) -> np.ndarray:
        """P(grade 1, 2, 3) (B, 3) of the masks of the mask model's input batch."""
        ...


@dataclass(frozen=True)
class ProductionModels:
    """What predicts a day: the champion through an inference backend, and the reviewer."""

    champion_version: str
    config: ModelConfig
    predict: Callable[[torch.Tensor], Prediction]
    """uint8 (B,3,S,S) at the model's input size -> float32 probabilities (B,1,S,S) and
    features (B,D) (an inference backend's `predict`)."""
    backend: str
    grader: Grader | None = None
    """The champion grader (None before any is registered: rows get no grade)."""
    novelty: NoveltyModel | None = None
    """The champion's new-image-type score (None for a version registered without one)."""
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    """The novelty features (B,D) of the batch when they are not the prediction's own (the
    ImageNet encoder's, `NoveltyConfig.features`)."""


@dataclass(frozen=True)
class Example:
    """A predicted mask at the model's size, for the gallery of the worst-graded ones."""

    image_type: str
    p_grade3: float
    image: np.ndarray
    probabilities: np.ndarray
    key: str


@dataclass
class DayOutcome:
    """What one run did to a day: its new log rows, what it skipped, how fast it went."""

    day: str
    listed: int
    skipped: int
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    worst: list[Example] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return len(self.rows) / self.seconds if self.seconds else 0.0


HEADER_BYTES = 64 * 1024
"""Bytes read first from a file larger than this: enough for a PNG's or most JPEGs' size."""


@dataclass(frozen=True)
class _Loaded:
    """An image ready for the model: its model-size input and what its row needs (the decoded
    full-size pixels are not kept)."""

    info: ObjectInfo
    height: int
    width: int
    model_input: torch.Tensor
    sha256: str
    tags: SampleTags
    mask_key: str


class _Refused(Exception):
    """Why one image cannot be predicted, and whether a later run may succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


class _Budget:
    """At most `limit` units (pixels) held at once by all threads; one request larger than the
    limit waits until it can hold the whole budget alone."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = max(1, limit), 0
        self._free = threading.Condition()

    def acquire(self, amount: int) -> int:
        amount = min(max(1, amount), self.limit)
        with self._free:
            self._free.wait_for(lambda: self.held + amount <= self.limit)
            self.held += amount
        return amount

    def release(self, amount: int) -> None:
        with self._free:
            self.held -= amount
            self._free.notify_all()


def predict_day(
    day: str,
    models: ProductionModels,
    *,
    data_store: ObjectStore,
    work_store: ObjectStore,
    options: ProductionOptions,
    run_id: str,
    progress: Progress | None = None,
) -> DayOutcome:
    """Predict, grade, write back and log every image of `day` that has no final log row."""
    started = time.perf_counter()
    log = PredictionLog(work_store, day)
    listing, done = list_day(data_store, day), log.done()
    todo = [info for info in listing.images if identity(info) not in done]
    outcome = DayOutcome(day, len(listing.images), len(listing.images) - len(todo))
    run = _DayWork(day, models, data_store, options, run_id)
    committer = _Committer(log, run_id, options.commit_every)
    unsupported = [(i, r) for i, r in listing.unsupported if identity(i) not in done]
    committer.add([(run.failed(info, reason), None) for info, reason in unsupported])
    with ThreadPoolExecutor(options.io_workers, thread_name_prefix="production") as pool:
        loaded = _ahead(pool, lambda info: run.load(info), todo, 2 * options.batch_size)
        for batch in batches(loaded, options.batch_size):
            committer.add(run.predict(batch, pool))
            if progress:
                progress(run.count, len(todo))
        committer.flush()
    outcome.rows = committer.rows
    outcome.worst = run.worst()
    outcome.seconds = time.perf_counter() - started
    return outcome


class _DayWork:
    """The per-image work of one run: load, predict and grade a batch, build the rows."""

    def __init__(
        self,
        day: str,
        models: ProductionModels,
        store: ObjectStore,
        options: ProductionOptions,
        run_id: str,
    ) -> None:
        self.day, self.models, self.store, self.options = day, models, store, options
        self.common: Row = {
            "model_version": models.champion_version,
            "reviewer_version": models.grader.version if models.grader else None,
            "grade_scorer": models.grader.scorer if models.grader else None,
            "backend": models.backend,
            "run_id": run_id,
        }
        self.count = 0
        self._sequence = itertools.count()
        self._worst: dict[str, list[tuple[float, int, Example]]] = {}
        self.decoding = _Budget(options.max_decoding_pixels)
        self.unwritten = _Budget(options.max_unwritten_mask_pixels)

    def load(self, info: ObjectInfo) -> _Loaded | Row:
        """Fetch, check and resize one image; a failed row on any problem: one file never
        stops the day."""
        try:
            return self._load(info)
        except _Refused as exc:
            return self.failed(info, str(exc), retryable=exc.retryable)
        except (InvalidImage, InvalidKey) as exc:
            return self.failed(info, str(exc))
        except StoreError as exc:
            return self.failed(info, f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:  # anything else about this one file: logged, the day goes on
            return self.failed(info, f"unexpected {type(exc).__name__}: {exc}", retryable=True)

    def _load(self, info: ObjectInfo) -> _Loaded:
        validate_key(info.key)  # e.g. a local name that is not UTF-8: no log row could hold it
        key, ext = mask_key_for(info.key), info.key.rpartition(".")[2]
        tags = self._tags(info)
        limit = self.options.max_pixels
        if info.size > self.options.max_image_bytes:
            raise _Refused(
                f"file of {info.size:,} bytes exceeds max_image_bytes "
                f"{self.options.max_image_bytes:,}",
                retryable=False,
            )
        data = None if info.size > HEADER_BYTES else self.store.get(info.key, if_match=info.etag)
        head = data if data is not None else self.store.head(info.key, HEADER_BYTES)
        size = peek_size(head, image_ext=ext, max_pixels=limit)  # a huge one is never fetched
        held = self.decoding.acquire(size[0] * size[1] if size else limit)
        try:
            if data is None:
                data = self.store.get(info.key, if_match=info.etag)
            image = decode_image(data, image_ext=ext, max_pixels=limit).image
            resized = model_input(image, self.models.config.input_size)
            height, width = image.shape[:2]
            del image
        finally:
            self.decoding.release(held)
        return _Loaded(info, height, width, resized, hashlib.sha256(data).hexdigest(), tags, key)

    def _tags(self, info: ObjectInfo) -> SampleTags:
        try:
            return parse_tags(self.store.tags(info.key))
        except (StoreError, InvalidKey):  # the store's own failure, or a link leading outside
            raise
        except (InvalidTags, ValueError) as exc:  # tags may be fixed without a new upload
            raise _Refused(f"tags: {exc}", retryable=True) from None

    def predict(self, batch: list[_Loaded | Row], pool: ThreadPoolExecutor) -> list[Pending]:
        """The rows and mask writes of one batch; failed loads pass through as rows."""
        self.count += len(batch)
        loaded = [item for item in batch if isinstance(item, _Loaded)]
        pending: list[Pending] = [(item, None) for item in batch if not isinstance(item, _Loaded)]
        if not loaded:
            return pending
        images = torch.stack([item.model_input for item in loaded])
        prediction = self.models.predict(images)
        probabilities = prediction.probabilities.float().cpu()
        features = self.models.features(images) if self.models.features else prediction.features
        novelty = _novelty_fields(self.models.novelty, features, len(loaded))
        grader, threshold = self.models.grader, self.models.config.threshold
        grades = (
            grader.grade_batch(
                images,
                probabilities,
                threshold,
                flip_disagreement=prediction.flip_disagreement,
                novelty=np.asarray([n["novelty"] for n in novelty], dtype=np.float64),
            )
            if grader
            else None
        )
        for i, item in enumerate(loaded):
            grade = grades[i] if grades is not None else None
            flip = float(prediction.flip_disagreement[i])
            pending.append(self._image(item, probabilities[i], grade, novelty[i], flip, pool))
            if grade is not None:
                self._remember(item, probabilities[i], float(grade[2]))
        return pending

    def _image(
        self,
        item: _Loaded,
        probabilities: torch.Tensor,
        grade: np.ndarray | None,
        novelty: dict[str, Any],
        flip_disagreement: float,
        pool: ThreadPoolExecutor,
    ) -> Pending:
        height, width, key = item.height, item.width, item.mask_key
        full = to_image_size(probabilities, height, width)
        mask = full >= self.models.config.threshold
        write = self._write(pool, key, mask)
        tags = item.tags
        row: Row = {
            **self.common,
            "image_key": item.info.key,
            "image_id": image_id_of(item.info.key),
            "day": self.day,
            "status": OK,
            "retryable": False,
            "image_sha256": item.sha256,
            "image_etag": item.info.etag,
            "width": width,
            "height": height,
            "image_type": tags.image_type,
            "camera": tags.camera,
            "product": tags.product,
            "station": tags.station,
            "captured_at": tags.captured_at,
            "tags_json": json.dumps(dict(tags.raw), sort_keys=True),
            "mask_key": key,
            "mask_fraction": float(mask.mean()),
            "probability_mean": float(full.mean()),
            "uncertain_share": float(((full > UNCERTAIN[0]) & (full < UNCERTAIN[1])).mean()),
            "predicted_at": datetime.now(UTC),
            "flip_disagreement": flip_disagreement,
            **_grade_fields(grade),
            **novelty,
        }
        return row, write

    def _write(self, pool: ThreadPoolExecutor, key: str, mask: np.ndarray) -> Future[None]:
        """Encode and write `mask` on the pool, once the masks waiting to be written leave
        room for it (their pixels are bounded by `max_unwritten_mask_pixels`)."""
        held = self.unwritten.acquire(mask.size)

        def write() -> None:
            try:
                self.store.put(key, encode_mask(mask))
            finally:
                self.unwritten.release(held)

        return pool.submit(write)

    def failed(self, info: ObjectInfo, reason: str, *, retryable: bool = False) -> Row:
        now = datetime.now(UTC)
        return failed_row(
            info, self.day, reason, retryable=retryable, predicted_at=now, **self.common
        )

    def _remember(self, item: _Loaded, probabilities: torch.Tensor, p_grade3: float) -> None:
        worst = self._worst.setdefault(item.tags.image_type, [])
        example = Example(
            item.tags.image_type,
            p_grade3,
            item.model_input.permute(1, 2, 0).numpy(),
            probabilities[0].numpy(),
            item.info.key,
        )
        # The sequence number breaks ties of P(grade 3) (a calibrated grader gives many images
        # the same value) before the tuple comparison reaches the examples' arrays.
        entry = (p_grade3, next(self._sequence), example)
        if len(worst) < self.options.gallery_per_type:
            heapq.heappush(worst, entry)
        else:
            heapq.heappushpop(worst, entry)

    def worst(self) -> list[Example]:
        return [
            e
            for t in sorted(self._worst)
            for _, _, e in sorted(self._worst[t], key=lambda w: w[:2], reverse=True)
        ]


class _Committer:
    """Commits rows as log parts of about `every` rows, each after its images' masks are written."""

    def __init__(self, log: PredictionLog, run_id: str, every: int) -> None:
        self.log, self.run_id, self.every = log, run_id, max(1, every)
        self.pending: list[Pending] = []
        self.rows: list[Row] = []
        self.parts = 0

    def add(self, pending: list[Pending]) -> None:
        self.pending += pending
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        rows = [_written(row, write) for row, write in self.pending]
        self.log.append(rows, run_id=self.run_id, part=self.parts)
        self.parts += 1
        self.rows += rows
        self.pending = []


def _written(row: Row, write: Future[None] | None) -> Row:
    """The row once its mask is written; a failed write makes it a retryable failure."""
    if write is None:
        return row
    try:
        write.result()
    except Exception as exc:  # a store outage, or anything else: the image is tried again
        reason = f"mask write failed: {type(exc).__name__}: {exc}"
        return {**row, "status": "failed", "reason": reason, "retryable": True}
    return row


def _grade_fields(grade: np.ndarray | None) -> dict[str, Any]:
    """The grade (`ml.reviewer.grading.grades_of`) and the grade probabilities of one image's
    row."""
    if grade is None:
        return {"grade": None, "p_grade1": None, "p_grade2": None, "p_grade3": None}
    return {
        "grade": int(grades_of(grade[None])[0]),
        **{f"p_grade{g}": float(grade[g - 1]) for g in (1, 2, 3)},
    }


def _novelty_fields(
    novelty: NoveltyModel | None, features: torch.Tensor, count: int
) -> list[dict[str, Any]]:
    """The `novelty` score and `novel` flag of each image of a batch (None without a model)."""
    if novelty is None:
        return [{"novelty": None, "novel": None}] * count
    scores = novelty.scores(features.float().cpu().numpy())
    flags = novelty.is_novel(scores)
    return [{"novelty": float(s), "novel": bool(f)} for s, f in zip(scores, flags, strict=True)]


def _ahead(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], depth: int
) -> Iterator[R]:
    """`fn` over `items` on `pool`, in order, with at most `depth` results computed ahead."""
    queue: deque[Future[R]] = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) > depth:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()
