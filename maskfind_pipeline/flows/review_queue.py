"""What people should relabel: a production day's review queue, and the label audit of a model.

Both write a queue table and a COCO import file (`data.review_queue`); the images come back
relabeled through the normal ingest and enter the next dataset version.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.loader import MaskDataset
from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.data.review_queue import (
    QueueFiles,
    ReviewQueueOptions,
    pick_label_suspects,
    pick_production,
    write_queue,
)
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.flows.options import AuditOptions
from maskfind_pipeline.flows.training import latest_version
from maskfind_pipeline.ml.segmentation.inference import predict_probabilities
from maskfind_pipeline.ml.segmentation.label_audit import audit
from maskfind_pipeline.ml.segmentation.predict import Predictor, to_image_size
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION
from maskfind_pipeline.storage.base import ObjectStore
from maskfind_pipeline.storage.keys import MASK_SUFFIX

Entries = list[dict[str, object]]


@dataclass(frozen=True)
class QueueOutcome:
    """The queued images (most urgent first), where they were written, what was left out."""

    entries: Entries
    files: QueueFiles
    already_relabeled: int


def queue_production_day(
    day: str, options: ReviewQueueOptions, *, data_store: ObjectStore, work_store: ObjectStore
) -> QueueOutcome:
    """Queue a production day's grade-3, sampled grade-2 and new-type images for relabeling;
    images already relabeled (`failures/<image_id>.*` exists) are not queued again."""
    rows = PredictionLog(work_store, day).current().to_pylist()
    relabeled = _relabeled_ids(data_store)
    picked = pick_production(rows, options)
    entries = [e for e in picked if e["image_id"] not in relabeled]
    masks = _Masks(data_store, {str(e["image_key"]): str(e["mask_key"]) for e in entries})
    files = write_queue(work_store, f"review/production/{day}/", entries, masks)
    return QueueOutcome(entries, files, len(picked) - len(entries))


@dataclass(frozen=True)
class AuditOutcome:
    """The audited dataset version, who judged what, how many labels were judged, suspects."""

    dataset_version: str
    judged_by: dict[str, int]
    not_judged: int
    entries: Entries
    files: QueueFiles

    @property
    def audited(self) -> int:
        return sum(self.judged_by.values())


def audit_labels(
    options: AuditOptions,
    *,
    registry: ModelRegistry,
    versions: VersionStore,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    work_store: ObjectStore,
) -> AuditOutcome:
    """Queue the labels of a dataset version that a confident model contradicts (reason
    `label_suspect`).

    Each label is judged by a model that never trained on it but trained on its image type,
    the challenger if it can be, else the champion: a model that trained on a wrong label has
    often learned it, and one new to the type is confidently wrong about it (a new type's
    relabeled failures are not suspects). A label both trained on (an old training label) is
    not judged again; it was judged when it was new; one of a type neither knows waits.
    """
    vid = options.dataset_version or latest_version(versions)
    manifest = versions.manifest(vid)
    judges = _judges(registry, versions)
    splits = manifest.column("split").to_pylist()
    ids = manifest.column("sample_id").to_pylist()
    types = manifest.column("image_type").to_pylist()
    wanted = set(options.audit.splits)
    assigned: dict[str, list[int]] = {}
    for row, (sample_id, split, image_type) in enumerate(zip(ids, splits, types, strict=True)):
        if split not in wanted:
            continue
        judge = next(
            (
                version
                for version, judge in judges.items()
                if sample_id not in judge.trained and image_type in judge.types
            ),
            None,
        )
        if judge is not None:
            assigned.setdefault(judge, []).append(row)
    table = manifest.to_pylist()
    suspects, masks = [], {}
    for version, rows in assigned.items():
        predictor = judges[version].predictor
        found = _suspects(
            predictor, manifest, np.asarray(rows), options, data_store, cache, decoded_root, vid
        )
        for row, iou, mask in found:
            suspects.append({**table[row], "label_iou": iou, "model_version": version})
            masks[str(table[row]["image_key"])] = mask
    entries = pick_label_suspects(suspects)
    files = write_queue(work_store, f"review/labels/{vid}/", entries, masks)
    judged = {v: len(rows) for v, rows in assigned.items()}
    in_scope = sum(1 for s in splits if s in wanted)
    return AuditOutcome(vid, judged, in_scope - sum(judged.values()), entries, files)


@dataclass(frozen=True)
class _Judge:
    predictor: Predictor
    trained: set[str]
    """The sample ids it trained on: their labels it may have learned, wrong or not."""
    types: set[str]
    """The image types it trained on: on another type its confidence means nothing."""


def _judges(registry: ModelRegistry, versions: VersionStore) -> dict[str, _Judge]:
    """Challenger then champion, with what each trained on."""
    judges: dict[str, _Judge] = {}
    for alias in (CHALLENGER, CHAMPION):
        model = registry.alias_or_none(alias)
        if model is None or model.version in judges:
            continue
        manifest = versions.manifest(model.tags["dataset_version"]).to_pylist()
        train = [row for row in manifest if row["split"] == "train"]
        judges[model.version] = _Judge(
            load_model(registry, model.version),
            {str(row["sample_id"]) for row in train},
            {str(row["image_type"]) for row in train},
        )
    if not judges:
        raise LookupError("no mask model is registered yet: materialize mask_model first")
    return judges


def _suspects(
    predictor: Predictor,
    manifest: pa.Table,
    rows: np.ndarray,
    options: AuditOptions,
    data_store: ObjectStore,
    cache: ContentCache,
    decoded_root: Path,
    vid: str,
) -> list[tuple[int, float, np.ndarray]]:
    """(row, IoU with the label, the model's mask at the image's size) of each suspect row."""
    config = predictor.config
    decoded = build_decoded(
        manifest, data_store, cache, decoded_root, version_id=vid, size=config.input_size
    )
    loader = DataLoader(MaskDataset(decoded, rows), batch_size=32, shuffle=False)
    predictions = predict_probabilities(predictor.model, config, loader)
    verdict = audit(predictions.probabilities, predictions.masks, options.audit)
    sizes = list(
        zip(
            manifest.column("height").to_pylist(), manifest.column("width").to_pylist(), strict=True
        )
    )
    out = []
    for i in np.flatnonzero(verdict.suspect):
        row = int(predictions.indices[i])
        probs = torch.from_numpy(predictions.probabilities[i] / 255.0)[None]
        mask = to_image_size(probs, *sizes[row]) >= config.threshold
        out.append((row, float(verdict.ious[i]), mask))
    return out


def _relabeled_ids(store: ObjectStore) -> set[str]:
    """Image ids that already came back relabeled under `failures/`."""
    names = (info.key.removeprefix("failures/") for info in store.list("failures/"))
    return {
        name.rpartition(".")[0] for name in names if "/" not in name and MASK_SUFFIX not in name
    }


def _mask(store: ObjectStore, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.get(key)))) != 0


class _Masks(Mapping[str, np.ndarray]):
    """The written masks by image key, each read from the store when asked for (a queue may
    hold thousands of full-size masks: `write_queue` takes one at a time)."""

    def __init__(self, store: ObjectStore, keys: Mapping[str, str]) -> None:
        self.store, self.mask_keys = store, keys

    def __getitem__(self, image_key: str) -> np.ndarray:
        return _mask(self.store, self.mask_keys[image_key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.mask_keys)

    def __len__(self) -> int:
        return len(self.mask_keys)
