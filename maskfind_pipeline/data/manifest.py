"""The schema of a dataset version's manifest: one row per sample, its split and training weight."""

from __future__ import annotations

import pyarrow as pa

SPLITS = ("train", "val", "test")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
        pa.field("image_type", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("mask_key", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("camera", pa.string()),
        pa.field("product", pa.string()),
        pa.field("station", pa.string()),
        pa.field("captured_at", pa.timestamp("us", tz="UTC")),
        pa.field("failed_model_version", pa.string()),
    ]
)
