"""Data expectations on a published dataset version (the asset checks' pure core)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from maskfind_pipeline.data.manifest import MANIFEST_SCHEMA


@dataclass(frozen=True)
class CheckOutcome:
    """One expectation: its name, whether it held, and why. `blocking` marks errors."""

    name: str
    passed: bool
    description: str
    blocking: bool = True
    details: dict[str, object] = field(default_factory=dict)


def check_version(manifest: pa.Table, *, catalog_failures: int) -> list[CheckOutcome]:
    """Schema, no leakage between splits, test coverage per type, failures included."""
    return [
        _schema(manifest),
        _no_leakage(manifest),
        _test_coverage(manifest),
        _failures_included(manifest, catalog_failures),
    ]


def _schema(manifest: pa.Table) -> CheckOutcome:
    ok = manifest.schema.equals(MANIFEST_SCHEMA)
    return CheckOutcome(
        "manifest_schema",
        ok,
        "manifest has the declared schema" if ok else f"schema differs: {manifest.schema}",
    )


def _no_leakage(manifest: pa.Table) -> CheckOutcome:
    splits_by_hash: dict[str, set[str]] = {}
    for digest, split in zip(
        manifest.column("image_sha256").to_pylist(),
        manifest.column("split").to_pylist(),
        strict=True,
    ):
        splits_by_hash.setdefault(digest, set()).add(split)
    leaked = [d for d, s in splits_by_hash.items() if len(s) > 1]
    duplicated = [k for k, n in Counter(manifest.column("sample_id").to_pylist()).items() if n > 1]
    ok = not leaked and not duplicated
    return CheckOutcome(
        "no_split_leakage",
        ok,
        "no content hash in two splits, no sample twice"
        if ok
        else f"{len(leaked)} hashes in several splits, {len(duplicated)} duplicated samples",
        details={"leaked": leaked[:20], "duplicated": duplicated[:20]},
    )


def _test_coverage(manifest: pa.Table) -> CheckOutcome:
    types = set(manifest.column("image_type").to_pylist())
    tested = {
        t
        for t, s in zip(
            manifest.column("image_type").to_pylist(),
            manifest.column("split").to_pylist(),
            strict=True,
        )
        if s == "test"
    }
    missing = sorted(types - tested)
    return CheckOutcome(
        "every_image_type_tested",
        not missing,
        "every image type has test samples"
        if not missing
        else f"no test samples for: {', '.join(missing)}",
        blocking=False,
        details={"missing": missing},
    )


def _failures_included(manifest: pa.Table, catalog_failures: int) -> CheckOutcome:
    included = sum(1 for s in manifest.column("source").to_pylist() if s == "failure")
    ok = catalog_failures == 0 or included > 0
    return CheckOutcome(
        "failures_included",
        ok,
        f"{included} of the catalog's {catalog_failures} failures are in the version",
        details={"included": included, "catalog_failures": catalog_failures},
    )
