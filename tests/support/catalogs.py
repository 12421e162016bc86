"""Catalog tables without images, for tests and the dataset-version benchmark."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from maskfind_pipeline.data.catalog import CATALOG_SCHEMA


def fake_catalog(
    n: int,
    *,
    image_types: Sequence[str] = ("cam-a", "cam-b", "cam-c"),
    failure_fraction: float = 0.0,
    seed: int = 0,
    start: int = 0,
) -> pa.Table:
    """`n` catalog rows (indices `start`..) with unique hashes; a pure function of the args."""
    rng = np.random.default_rng(seed)
    index = np.arange(start, start + n)
    ids = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in index]
    failure = rng.random(n) < failure_fraction
    source = np.where(failure, "failure", "labeled")
    prefix = np.where(failure, "failures", "labeled")
    names = [f"img{i:08d}" for i in index]
    types = np.asarray(image_types, dtype=object)[rng.integers(0, len(image_types), n)]
    now = datetime(2026, 11, 1, tzinfo=UTC)
    columns = {
        "sample_id": ids,
        "source": source,
        "image_id": names,
        "image_key": [f"{p}/{name}.png" for p, name in zip(prefix, names, strict=True)],
        "mask_key": [f"{p}/{name}.mask.png" for p, name in zip(prefix, names, strict=True)],
        "image_sha256": ids,
        "mask_sha256": [hashlib.sha256(s.encode()).hexdigest() for s in ids],
        "image_etag": names,
        "mask_etag": names,
        "image_bytes": np.full(n, 1000),
        "width": np.full(n, 256, dtype=np.int32),
        "height": np.full(n, 256, dtype=np.int32),
        "image_format": np.full(n, "PNG"),
        "image_mode": np.full(n, "RGB"),
        "exif_transposed": np.zeros(n, dtype=bool),
        "mask_fraction": np.full(n, 0.1, dtype=np.float32),
        "image_type": types,
        "camera": types,
        "product": np.full(n, "bar"),
        "station": np.full(n, "s1"),
        "captured_at": np.full(n, now),
        "failed_model_version": [("1" if f else None) for f in failure],
        "reported_at": [(now if f else None) for f in failure],
        "tags_json": np.full(n, "{}"),
        "ingested_at": np.full(n, now),
        "ingest_run": np.full(n, "fake"),
    }
    return pa.table(
        {
            name: pa.array(columns[name], type=CATALOG_SCHEMA.field(name).type)
            for name in CATALOG_SCHEMA.names
        },
        schema=CATALOG_SCHEMA,
    )
