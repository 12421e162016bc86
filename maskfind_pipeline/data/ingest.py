"""Incremental, concurrent, idempotent ingest of labeled images and failures into the catalog."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import (
    CATALOG_SCHEMA,
    QUARANTINE_SCHEMA,
    Catalog,
    CatalogTables,
    latest_by,
    rows_to_table,
)
from maskfind_pipeline.data.images import DEFAULT_MAX_PIXELS, InvalidImage, decode_pair
from maskfind_pipeline.data.iterate import batches
from maskfind_pipeline.data.pairing import Candidate, Pairs, Refusal, pair_listing
from maskfind_pipeline.data.tags import InvalidTags, SampleTags, parse_tags
from maskfind_pipeline.storage.base import (
    CorruptTransfer,
    ObjectChanged,
    ObjectNotFound,
    ObjectStore,
)
from maskfind_pipeline.storage.keys import InvalidKey, Source

Progress = Callable[[int, int], None]


class IngestOptions(CoreConfig):
    """How ingest reads the store: concurrency, batch and page sizes, the pixel limit."""

    max_workers: int = 16
    """Pairs fetched, decoded and hashed at the same time."""
    batch_size: int = 1000
    """Pairs per committed catalog part (a crash keeps every finished batch)."""
    page_size: int = 1000
    """Keys per listing request."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are refused before decoding."""
    sources: tuple[Source, ...] = (Source.LABELED, Source.FAILURE)
    """The prefixes to ingest."""


@dataclass
class IngestReport:
    """What one ingest run did."""

    run_id: str
    listed_pairs: int = 0
    skipped: int = 0
    new_rows: list[dict[str, object]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def new_samples(self) -> pa.Table:
        return rows_to_table(self.new_rows, CATALOG_SCHEMA)

    def counts(self) -> dict[str, int]:
        return {
            "listed_pairs": self.listed_pairs,
            "skipped_already_seen": self.skipped,
            "new_samples": len(self.new_rows),
            "quarantined": len(self.refusals),
        }


@dataclass(frozen=True, slots=True)
class _Checked:
    candidate: Candidate
    row: dict[str, object] | None = None
    refusal: Refusal | None = None


def ingest(
    store: ObjectStore,
    catalog: Catalog,
    *,
    run_id: str,
    options: IngestOptions | None = None,
    cache: ContentCache | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Add every not-yet-seen, valid pair in `store` to `catalog`; quarantine the rest.

    Work is committed batch by batch, so a store outage (which raises) keeps what was done;
    a rerun picks up the remainder and adds nothing twice.
    """
    opts = options or IngestOptions()
    tables = catalog.read(_SEEN_COLUMNS)
    listing = chain.from_iterable(
        store.list(f"{source.value}/", page_size=opts.page_size) for source in opts.sources
    )
    pairs = pair_listing(listing)
    refusals = pairs.refusals
    todo = _unseen(pairs, tables)
    listed = pairs.table.num_rows
    report = IngestReport(run_id, listed_pairs=listed, skipped=listed - len(todo))
    known = _KnownHashes(tables)
    listed_before = _quarantined(tables, refusals)
    fresh_refusals = [r for r in refusals if _refusal_identity(r) not in listed_before]
    check = _Checker(store, cache, opts.max_pixels, run_id)
    with ThreadPoolExecutor(max_workers=opts.max_workers, thread_name_prefix="ingest") as pool:
        for number, batch in enumerate(batches(todo, opts.batch_size)):
            checked = list(pool.map(check, batch))
            found = [c.refusal for c in checked if c.refusal is not None]
            rows, batch_refusals = _resolve(
                iter(checked), known.of(checked), _quarantined(tables, found)
            )
            known.add(rows)
            if number == 0:
                batch_refusals = fresh_refusals + batch_refusals
            _commit(catalog, rows, batch_refusals, run_id, number)
            report.new_rows += rows
            report.refusals += batch_refusals
            if progress:
                progress(min((number + 1) * opts.batch_size, len(todo)), len(todo))
    if not todo and fresh_refusals:
        _commit(catalog, [], fresh_refusals, run_id, 0)
        report.refusals += fresh_refusals
    catalog.compact()
    return report


class _Checker:
    """Fetch, verify and describe one candidate pair (runs in worker threads)."""

    def __init__(self, store: ObjectStore, cache: ContentCache | None, max_pixels: int, run: str):
        self.store, self.cache, self.max_pixels, self.run = store, cache, max_pixels, run

    def __call__(self, candidate: Candidate) -> _Checked:
        image_key, mask_key = candidate.image.key, candidate.mask.key
        try:
            image_bytes = self.store.get(image_key, if_match=candidate.image.etag)
            mask_bytes = self.store.get(mask_key, if_match=candidate.mask.etag)
        except (ObjectChanged, ObjectNotFound) as exc:
            return self._refuse(candidate, "fetch", f"{type(exc).__name__}: {exc}", True)
        except CorruptTransfer as exc:
            return self._refuse(candidate, "fetch", f"corrupt transfer: {exc}", True)
        except InvalidKey as exc:  # e.g. a local symlink leading out of the store's root
            return self._refuse(candidate, "fetch", str(exc), False)
        try:
            tags = parse_tags(self.store.tags(image_key))
        except (InvalidTags, ValueError) as exc:
            return self._refuse(candidate, "tags", str(exc), True)
        ext = image_key.rpartition(".")[2]
        try:
            pair = decode_pair(image_bytes, mask_bytes, image_ext=ext, max_pixels=self.max_pixels)
        except InvalidImage as exc:
            return self._refuse(candidate, "decode", str(exc), False)
        image_sha = self._digest(image_bytes)
        mask_sha = self._digest(mask_bytes)
        row = _row(candidate, tags, image_sha, mask_sha, len(image_bytes), self.run) | {
            "width": pair.image.shape[1],
            "height": pair.image.shape[0],
            "image_format": pair.image_format,
            "image_mode": pair.image_mode,
            "exif_transposed": pair.exif_transposed,
            "mask_fraction": pair.mask_fraction,
        }
        return _Checked(candidate, row=row)

    def _digest(self, data: bytes) -> str:
        return self.cache.put(data) if self.cache else hashlib.sha256(data).hexdigest()

    def _refuse(self, c: Candidate, stage: str, reason: str, retryable: bool) -> _Checked:
        return _Checked(
            c, refusal=Refusal(c.image.key, c.image.etag, c.mask.etag, stage, reason, retryable)
        )


def _row(
    c: Candidate, tags: SampleTags, image_sha: str, mask_sha: str, size: int, run: str
) -> dict[str, object]:
    return {
        "sample_id": image_sha,
        "source": "failure" if c.keys.source is Source.FAILURE else "labeled",
        "image_id": c.keys.image_id,
        "image_key": c.image.key,
        "mask_key": c.mask.key,
        "image_sha256": image_sha,
        "mask_sha256": mask_sha,
        "image_etag": c.image.etag,
        "mask_etag": c.mask.etag,
        "image_bytes": size,
        "image_type": tags.image_type,
        "camera": tags.camera,
        "product": tags.product,
        "station": tags.station,
        "captured_at": tags.captured_at,
        "failed_model_version": tags.failed_model_version,
        "reported_at": tags.reported_at,
        "tags_json": json.dumps(dict(tags.raw), sort_keys=True),
        "ingested_at": datetime.now(UTC),
        "ingest_run": run,
    }


def _resolve(
    checked: Iterator[_Checked], known: dict[str, tuple[str, str]], quarantined: set[tuple]
) -> tuple[list[dict[str, object]], list[Refusal]]:
    """Accept rows in listing order; the same image bytes under a second key are a duplicate."""
    rows: list[dict[str, object]] = []
    refusals: list[Refusal] = []
    for item in checked:
        if item.refusal is not None:
            if _refusal_identity(item.refusal) not in quarantined:
                refusals.append(item.refusal)
            continue
        assert item.row is not None
        sha, key = str(item.row["image_sha256"]), str(item.row["image_key"])
        owner = known.get(sha)
        if owner is not None and owner[0] != key:
            differs = (
                " and a different mask (conflicting labels)"
                if owner[1] != item.row["mask_sha256"]
                else ""
            )
            c = item.candidate
            refusals.append(
                Refusal(
                    key,
                    c.image.etag,
                    c.mask.etag,
                    "duplicate",
                    f"same image bytes as {owner[0]}{differs}",
                    False,
                )
            )
            continue
        known[sha] = (key, str(item.row["mask_sha256"]))
        rows.append(item.row)
    return rows, refusals


def _commit(
    catalog: Catalog, rows: list[dict[str, object]], refusals: Sequence[Refusal], run: str, n: int
) -> None:
    now = datetime.now(UTC)
    quarantine = [
        {
            "key": r.key,
            "etag": r.etag,
            "mask_etag": r.mask_etag,
            "stage": r.stage,
            "reason": r.reason,
            "retryable": r.retryable,
            "quarantined_at": now,
            "ingest_run": run,
        }
        for r in refusals
    ]
    catalog.append(
        rows_to_table(rows, CATALOG_SCHEMA),
        rows_to_table(quarantine, QUARANTINE_SCHEMA),
        run_id=run,
        batch=n,
    )


_SEEN_COLUMNS = (
    "image_key",
    "image_etag",
    "mask_etag",
    "image_sha256",
    "mask_sha256",
    "ingested_at",
)
_IDENTITY = ["image_key", "image_etag", "mask_etag"]


def _unseen(pairs: Pairs, tables: CatalogTables) -> list[Candidate]:
    """The listed pairs that need a look: neither ingested nor refused for a reason a retry
    cannot fix, matched by an Arrow anti-join (no Python set of every catalogued key); only
    those become `Candidate` objects."""
    if not pairs.table.num_rows:
        return []
    listed = pa.table(
        {
            "image_key": pairs.table.column("image_key"),
            "image_etag": pairs.table.column("image_etag"),
            "mask_etag": pairs.table.column("mask_etag"),
            "position": pa.array(np.arange(pairs.table.num_rows), pa.int64()),
        }
    )
    refused = tables.quarantine.filter(pc.invert(tables.quarantine.column("retryable")))  # pyright: ignore[reportAttributeAccessIssue]
    seen = pa.concat_tables(
        [
            tables.samples.select(_IDENTITY),
            refused.select(["key", "etag", "mask_etag"]).rename_columns(_IDENTITY),
        ]
    )
    fresh = listed.join(seen, _IDENTITY, join_type="left anti", use_threads=False)
    positions = np.sort(np.asarray(fresh.column("position")))
    return pairs.candidates(positions.tolist())


class _KnownHashes:
    """Image sha256 -> (image key, mask sha256) of the current catalog and of this run's rows,
    looked up a batch at a time (Arrow filters, not a dict of every catalogued sample)."""

    def __init__(self, tables: CatalogTables) -> None:
        columns = ["image_sha256", "image_key", "mask_sha256", "ingested_at"]
        current = latest_by(tables.samples.select(columns), "image_key", "ingested_at")
        self.current = current.select(columns[:3])
        self.added: dict[str, tuple[str, str]] = {}

    def of(self, checked: Sequence[_Checked]) -> dict[str, tuple[str, str]]:
        shas = [str(c.row["image_sha256"]) for c in checked if c.row is not None]
        wanted = pa.array(shas, pa.string())
        column = self.current.column("image_sha256")
        hits = self.current.filter(pc.is_in(column, wanted))  # pyright: ignore[reportAttributeAccessIssue]
        known = {r["image_sha256"]: (r["image_key"], r["mask_sha256"]) for r in hits.to_pylist()}
        return known | {s: self.added[s] for s in shas if s in self.added}

    def add(self, rows: Sequence[dict[str, object]]) -> None:
        for row in rows:
            self.added[str(row["image_sha256"])] = (str(row["image_key"]), str(row["mask_sha256"]))


def _quarantined(tables: CatalogTables, refusals: Sequence[Refusal]) -> set[tuple]:
    """The current quarantine identities (key, etag, mask etag, reason) of these refusals' keys."""
    if not refusals:
        return set()
    current = tables.current_quarantine()
    keys = pa.array(sorted({r.key for r in refusals}), pa.string())
    rows = current.filter(pc.is_in(current.column("key"), keys))  # pyright: ignore[reportAttributeAccessIssue]
    rows = rows.select(["key", "etag", "mask_etag", "reason"]).to_pylist()
    return {(r["key"], r["etag"], r["mask_etag"], r["reason"]) for r in rows}


def _refusal_identity(r: Refusal) -> tuple[str, str, str, str]:
    return (r.key, r.etag, r.mask_etag, r.reason)


def summarize(report: IngestReport) -> dict[str, Counter[str]]:
    """New samples per image type and per source, refusals per stage."""
    return {
        "by_image_type": Counter(str(r["image_type"]) for r in report.new_rows),
        "by_source": Counter(str(r["source"]) for r in report.new_rows),
        "refused_by_stage": Counter(r.stage for r in report.refusals),
    }
