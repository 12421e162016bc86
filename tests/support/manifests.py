"""Manifests for generated pairs, without ingest: for training tests and benchmarks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pyarrow as pa

from maskfind_pipeline.data.manifest import MANIFEST_SCHEMA
from maskfind_pipeline.storage.base import ObjectStore
from maskfind_pipeline.storage.keys import MASK_SUFFIX


def manifest_of(
    store: ObjectStore,
    image_keys: Sequence[str],
    *,
    size: int,
    split: Callable[[int], str] = lambda i: "train",
    failure: Callable[[int], bool] = lambda i: False,
    failure_weight: float = 3.0,
) -> pa.Table:
    """One manifest row per generated image key (`<prefix>/<type>-<seed>-<index>.<ext>`).

    `split(i)` and `failure(i)` choose the split and the source of the i-th key.
    """
    rows = []
    for i, key in enumerate(image_keys):
        mask_key = key.rpartition(".")[0] + MASK_SUFFIX
        sha = hashlib.sha256(store.get(key)).hexdigest()
        name = key.split("/")[-1].rpartition(".")[0]
        rows.append(
            {
                "sample_id": sha,
                "source": "failure" if failure(i) else "labeled",
                "split": split(i),
                "weight": failure_weight if failure(i) else 1.0,
                "image_type": name.rsplit("-", 2)[0],
                "image_id": name,
                "image_key": key,
                "mask_key": mask_key,
                "image_sha256": sha,
                "mask_sha256": hashlib.sha256(store.get(mask_key)).hexdigest(),
                "width": size,
                "height": size,
            }
        )
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
