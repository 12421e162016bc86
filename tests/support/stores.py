"""Helpers to fill a store with pairs and run ingest into a fresh work store."""

from __future__ import annotations

from collections.abc import Mapping

from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.ingest import IngestOptions, IngestReport, ingest
from maskfind_pipeline.storage import LocalObjectStore, ObjectStore
from tests.support.images import pair_bytes


def put_pair(
    store: ObjectStore,
    image_id: str,
    *,
    source: str = "labeled",
    ext: str = "png",
    seed: int = 0,
    image: bytes | None = None,
    mask: bytes | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    default_image, default_mask = pair_bytes(seed)
    key = f"{source}/{image_id}.{ext}"
    store.put(
        key,
        default_image if image is None else image,
        tags={"image_type": "cam-a"} if tags is None else tags,
    )
    store.put(f"{source}/{image_id}.mask.png", default_mask if mask is None else mask)
    return key


def run_ingest(
    data: ObjectStore, work: ObjectStore, run_id: str = "run-1", **options: object
) -> IngestReport:
    return ingest(data, Catalog(work), run_id=run_id, options=IngestOptions(**options))  # type: ignore[arg-type]


def reasons(report: IngestReport) -> dict[str, str]:
    return {r.key: r.reason for r in report.refusals}


def work_store(tmp_path_factory) -> LocalObjectStore:  # type: ignore[no-untyped-def]
    return LocalObjectStore(tmp_path_factory.mktemp("work"))
