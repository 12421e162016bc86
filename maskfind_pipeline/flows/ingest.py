"""Ingest what arrived under labeled/ and failures/ into the catalog."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.ingest import IngestOptions, IngestReport, Progress, ingest, summarize
from maskfind_pipeline.storage.base import ObjectStore


@dataclass(frozen=True)
class IngestOutcome:
    """What one ingest did, and the catalog's current samples after it (`_OUTCOME_COLUMNS`)."""

    report: IngestReport
    samples: pa.Table
    summary: dict[str, Counter[str]]


def ingest_catalog(
    data_store: ObjectStore,
    work_store: ObjectStore,
    cache: ContentCache,
    options: IngestOptions,
    *,
    run_id: str,
    progress: Progress | None = None,
) -> IngestOutcome:
    """Validate, hash and catalog every pair not seen before; quarantine what fails."""
    catalog = Catalog(work_store)
    report = ingest(
        data_store, catalog, run_id=run_id, options=options, cache=cache, progress=progress
    )
    current = catalog.read(_OUTCOME_COLUMNS).current_samples()
    return IngestOutcome(report, current, summarize(report))


_OUTCOME_COLUMNS = ("sample_id", "image_key", "image_type", "source", "ingested_at")
"""The columns of the current samples an ingest reports (counts per image type and source)."""
