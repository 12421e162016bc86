"""The dataset versions a run read, as MLflow datasets and run inputs (`mlflow.data`).

A dataset version `ds-<16 hex>` is the MLflow dataset of that name, with the 16 hex digits (the
content hash its id is made of) as digest; one split of it is the dataset `ds-<hex>/<split>`, same
digest, logged with context `train`, `val` or `test` (the `mlflow.data.context` input tag). The
three splits are three datasets because a run keeps one input per name and digest. Its source is
the version's manifest in the work store; its profile the rows and image types (from the card);
its schema the manifest's columns. Metrics measured on a split name its dataset
(`Metric.dataset_name`, `dataset_digest`), so the MLflow UI lists them under the run's input.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json, resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.types import ColSpec, DataType, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

SPLIT_CONTEXTS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetRef:
    """A dataset version, or one split of it, that a run read or measured metrics on."""

    version: str
    split: str = ""
    """`train`, `val` or `test`; empty for the whole version."""
    source: str = ""
    """The URI of the version's manifest; without one the run logs no input for it."""
    profile: Mapping[str, Any] = field(default_factory=dict)
    schema: pa.Schema | None = None

    @property
    def name(self) -> str:
        return f"{self.version}/{self.split}" if self.split else self.version

    @property
    def digest(self) -> str:
        """The version's content hash: its id without `ds-` (MLflow keeps 36 characters)."""
        return self.version.removeprefix("ds-")[:36]

    @property
    def context(self) -> str:
        """The input's context: the split, or `train` for a whole version."""
        return self.split or "train"

    def to_input(self) -> DatasetInput:
        dataset = _VersionDataset(
            _source(self.source),
            name=self.name,
            digest=self.digest,
            schema=_schema(self.schema) if self.schema is not None else None,
            profile=dict(self.profile),
        )
        return DatasetInput(
            dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, self.context)]
        )


def version_datasets(
    card: Mapping[str, Any],
    source: str,
    splits: Sequence[str] = SPLIT_CONTEXTS,
    *,
    schema: pa.Schema | None = None,
) -> list[DatasetRef]:
    """One `DatasetRef` per split of the version a card describes (`VersionStore.card`): rows,
    image types and rows per source of that split as its profile (an empty split is left out)."""
    refs = []
    for split in splits:
        by_type = {
            image_type: sum(sources.get(split, {}).values())
            for image_type, sources in card.get("counts", {}).items()
        }
        by_source: dict[str, int] = {}
        for sources in card.get("counts", {}).values():
            for origin, n in sources.get(split, {}).items():
                by_source[origin] = by_source.get(origin, 0) + n
        rows = sum(by_type.values())
        if not rows:
            continue
        profile = {
            "num_rows": rows,
            "image_types": sum(1 for n in by_type.values() if n),
            "rows_by_source": dict(sorted(by_source.items())),
        }
        refs.append(DatasetRef(str(card["id"]), split, source, profile, schema))
    return refs


def whole_version(
    card: Mapping[str, Any], source: str, *, schema: pa.Schema | None = None
) -> DatasetRef:
    """The whole version a card describes (every split), with its rows and image types."""
    counts = card.get("counts", {})
    rows = sum(n for splits in counts.values() for by in splits.values() for n in by.values())
    profile = {"num_rows": rows, "image_types": len(counts)}
    return DatasetRef(str(card["id"]), "", source, profile, schema)


def inputs_of(refs: Sequence[DatasetRef]) -> list[DatasetInput]:
    """The run inputs of `refs` that name a source."""
    return [ref.to_input() for ref in refs if ref.source]


class _VersionDataset(MetaDataset):
    """A `MetaDataset` with a profile (MetaDataset has none)."""

    def __init__(
        self,
        source: DatasetSource,
        *,
        name: str,
        digest: str,
        schema: Schema | None,
        profile: Mapping[str, Any],
    ) -> None:
        self._profile = dict(profile)
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> Any | None:
        return self._profile or None

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        if self._profile:
            config["profile"] = json.dumps(self._profile)
        return config


def _source(uri: str) -> DatasetSource:
    """The MLflow dataset source of a URI: local files and S3 by their type, others resolved."""
    kind = {"file": "local", "s3": "s3"}.get(uri.split(":", 1)[0])
    if kind:
        return get_dataset_source_from_json(json.dumps({"uri": uri}), kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "can be interpreted in multiple ways"
        return resolve_dataset_source(uri)


def _schema(schema: pa.Schema) -> Schema:
    return Schema([ColSpec(_type(f.type), f.name, required=not f.nullable) for f in schema])


def _type(arrow: pa.DataType) -> DataType:
    if pa.types.is_boolean(arrow):
        return DataType.boolean
    if pa.types.is_integer(arrow):
        return DataType.long
    if pa.types.is_floating(arrow):
        return DataType.double if arrow.bit_width == 64 else DataType.float
    if pa.types.is_timestamp(arrow) or pa.types.is_date(arrow):
        return DataType.datetime
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return DataType.binary
    return DataType.string
