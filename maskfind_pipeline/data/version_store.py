"""Publishing and reading dataset versions in the work store, atomically and verified.

Layout: `datasets/<id>/manifest.parquet`, then `datasets/<id>/card.json`. Both are create-only
puts; the card is written last and is the commit point: a version without a card does not exist
for readers, and the card records the manifest's sha256, which every read verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from maskfind_pipeline.data.catalog import to_parquet
from maskfind_pipeline.data.manifest import MANIFEST_SCHEMA
from maskfind_pipeline.data.versions import Snapshot, VersionConfig, counts, version_id
from maskfind_pipeline.storage.base import ObjectExists, ObjectNotFound, ObjectStore

PREFIX = "datasets/"


class CorruptVersion(Exception):
    """A stored version whose bytes do not match what its card promises."""


class VersionNotFound(KeyError):
    """No published version with that id."""


@dataclass(frozen=True)
class Published:
    """The outcome of `publish`: the card, and whether this call created the version."""

    card: dict[str, Any]
    created: bool

    @property
    def version_id(self) -> str:
        return str(self.card["id"])


class VersionStore:
    """Dataset versions under `datasets/` in a work store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def publish(
        self, snapshot: Snapshot, *, catalog_rows: int, code_version: str = ""
    ) -> Published:
        """Write the version if it does not exist yet; an existing one is never overwritten."""
        existing = self.card_or_none(snapshot.version_id)
        if existing is not None:
            return Published(existing, created=False)
        data = to_parquet(snapshot.manifest)
        manifest_sha = self._put_manifest(snapshot, data)
        parent = self.latest()
        card = {
            "id": snapshot.version_id,
            "parent": parent["id"] if parent else None,
            "created_at": datetime.now(UTC).isoformat(),
            "manifest_sha256": manifest_sha,
            "samples": snapshot.manifest.num_rows,
            "catalog_rows": catalog_rows,
            "counts": counts(snapshot.manifest),
            "config": snapshot.config.to_dict(),
            "warnings": snapshot.warnings,
            "code_version": code_version,
        }
        try:
            self.store.put(
                self._card_key(snapshot.version_id),
                json.dumps(card, indent=2, sort_keys=True).encode(),
                create_only=True,
            )
        except ObjectExists:
            return Published(self.card(snapshot.version_id), created=False)
        return Published(card, created=True)

    def card(self, vid: str) -> dict[str, Any]:
        card = self.card_or_none(vid)
        if card is None:
            raise VersionNotFound(f"dataset version {vid} does not exist in {self.store.uri}")
        return card

    def card_or_none(self, vid: str) -> dict[str, Any] | None:
        try:
            raw = self.store.get(self._card_key(vid))
        except ObjectNotFound:
            return None
        try:
            card = json.loads(raw)
        except ValueError as exc:
            raise CorruptVersion(f"corrupt dataset version {vid}: card is not JSON") from exc
        if not isinstance(card, dict) or card.get("id") != vid:
            raise CorruptVersion(f"corrupt dataset version {vid}: card names another id")
        return card

    def manifest(self, vid: str) -> pa.Table:
        """The verified manifest: sha256 as recorded, readable, and hashing back to its id."""
        card = self.card(vid)
        try:
            data = self.store.get(self._manifest_key(vid))
        except ObjectNotFound:
            raise CorruptVersion(f"corrupt dataset version {vid}: manifest missing") from None
        if hashlib.sha256(data).hexdigest() != card["manifest_sha256"]:
            raise CorruptVersion(
                f"corrupt dataset version {vid}: manifest sha256 does not match its card"
            )
        table = pq.read_table(io.BytesIO(data)).cast(MANIFEST_SCHEMA)
        if version_id(table, VersionConfig.model_validate(card["config"])) != vid:
            raise CorruptVersion(f"corrupt dataset version {vid}: content does not hash to its id")
        return table

    def manifest_uri(self, vid: str) -> str:
        """Where the manifest of version `vid` lies (`file://...` or `s3://...`)."""
        return f"{self.store.uri.rstrip('/')}/{self._manifest_key(vid)}"

    def list(self) -> list[dict[str, Any]]:
        """Cards of every published version, oldest first."""
        cards = [
            self.card(info.key[len(PREFIX) :].split("/")[0])
            for info in self.store.list(PREFIX)
            if info.key.endswith("/card.json")
        ]
        return sorted(cards, key=lambda c: (c["created_at"], c["id"]))

    def latest(self) -> dict[str, Any] | None:
        cards = self.list()
        return cards[-1] if cards else None

    def _put_manifest(self, snapshot: Snapshot, data: bytes) -> str:
        """Create the manifest, or adopt one a crashed or concurrent writer left for this id."""
        key = self._manifest_key(snapshot.version_id)
        try:
            self.store.put(key, data, create_only=True)
            return hashlib.sha256(data).hexdigest()
        except ObjectExists:
            existing = self.store.get(key)
        try:
            table = pq.read_table(io.BytesIO(existing)).cast(MANIFEST_SCHEMA)
        except (pa.ArrowException, OSError):
            table = None
        if table is None or version_id(table, snapshot.config) != snapshot.version_id:
            raise CorruptVersion(
                f"corrupt dataset version {snapshot.version_id}: an unpublished manifest with "
                "other content is in the way; remove it to publish"
            )
        return hashlib.sha256(existing).hexdigest()

    @staticmethod
    def _card_key(vid: str) -> str:
        return f"{PREFIX}{vid}/card.json"

    @staticmethod
    def _manifest_key(vid: str) -> str:
        return f"{PREFIX}{vid}/manifest.parquet"
