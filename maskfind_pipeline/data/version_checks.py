"""Data expectations on a published dataset version (the asset checks' pure core)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    by_hash = manifest.group_by("image_sha256", use_threads=False).aggregate(
        [("split", "count_distinct")]
    )
    leaked = by_hash.filter(pa.array(np.asarray(by_hash.column("split_count_distinct")) > 1))
    by_id = manifest.group_by("sample_id", use_threads=False).aggregate([("sample_id", "count")])
    twice = by_id.filter(pa.array(np.asarray(by_id.column("sample_id_count")) > 1))
    leaked_ids = leaked.column("image_sha256").to_pylist()
    duplicated = twice.column("sample_id").to_pylist()
    ok = not leaked_ids and not duplicated
    return CheckOutcome(
        "no_split_leakage",
        ok,
        "no content hash in two splits, no sample twice"
        if ok
        else f"{len(leaked_ids)} hashes in several splits, {len(duplicated)} duplicated samples",
        details={"leaked": leaked_ids[:20], "duplicated": duplicated[:20]},
    )


def _test_coverage(manifest: pa.Table) -> CheckOutcome:
    types = manifest.column("image_type")
    is_test = pc.equal(manifest.column("split"), "test").fill_null(False)  # pyright: ignore[reportAttributeAccessIssue]
    tested = set(types.filter(is_test).unique().to_pylist())
    missing = sorted(set(types.unique().to_pylist()) - tested)
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
    is_failure = pc.equal(manifest.column("source"), "failure")  # pyright: ignore[reportAttributeAccessIssue]
    included = int(pc.sum(is_failure).as_py() or 0)  # pyright: ignore[reportAttributeAccessIssue]
    ok = catalog_failures == 0 or included > 0
    return CheckOutcome(
        "failures_included",
        ok,
        f"{included} of the catalog's {catalog_failures} failures are in the version",
        details={"included": included, "catalog_failures": catalog_failures},
    )
