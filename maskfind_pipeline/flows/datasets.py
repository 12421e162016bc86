"""Snapshot the catalog as a dataset version and check it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.version_checks import CheckOutcome, check_version
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot, diff
from maskfind_pipeline.storage.base import ObjectStore


@dataclass(frozen=True)
class VersionOutcome:
    """The published (or already existing) version, its diff against its parent, its checks."""

    card: dict[str, Any]
    created: bool
    diff: list[dict[str, object]]
    checks: list[CheckOutcome]

    @property
    def version_id(self) -> str:
        return str(self.card["id"])


def publish_dataset_version(
    work_store: ObjectStore, config: VersionConfig, *, code_version: str = ""
) -> VersionOutcome:
    """Snapshot the current catalog; the same catalog and config never make a second version.

    Raises:
        EmptyCatalog: the catalog holds no sample.
    """
    samples = Catalog(work_store).read().current_samples()
    versions = VersionStore(work_store)
    published = versions.publish(
        build_snapshot(samples, config), catalog_rows=samples.num_rows, code_version=code_version
    )
    card = published.card
    manifest = versions.manifest(published.version_id)
    parent = versions.manifest(card["parent"]) if card["parent"] else None
    failures = sum(1 for s in samples.column("source").to_pylist() if s == "failure")
    checks = [
        *check_version(manifest, catalog_failures=failures),
        CheckOutcome("manifest_checksum", True, "manifest sha256 and id verified"),
    ]
    return VersionOutcome(card, published.created, diff(parent, manifest), checks)
