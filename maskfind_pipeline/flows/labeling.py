"""The people's half of the loop in their labeling tool: a day's review queue out to Label
Studio, finished annotations back as failure samples, and exports of CVAT or Label Studio files
imported the same way (`labeling.returns` writes and records them)."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from maskfind_pipeline.data.review_queue import read_queue
from maskfind_pipeline.labeling.exports import ExportError, read_export, read_label_studio
from maskfind_pipeline.labeling.label_studio import (
    LabelStudio,
    LabelStudioOptions,
    image_url,
    storage_path,
    task,
)
from maskfind_pipeline.labeling.returns import (
    LABELED,
    QueueIndex,
    Returned,
    ReturnReport,
    UnknownImage,
    check_size,
    record_returns,
    resolve,
)
from maskfind_pipeline.storage.base import ObjectStore

_BATCH = 100


@dataclass(frozen=True)
class SentDay:
    """A day's queue in Label Studio: its project, the tasks added now and those already there."""

    project_id: int
    project_url: str
    queued: int
    sent: int
    already_there: int


def send_to_label_studio(
    day: str,
    client: LabelStudio,
    options: LabelStudioOptions,
    *,
    data_store: ObjectStore,
    work_store: ObjectStore,
) -> SentDay:
    """Make sure every image of the day's queue is a task of the day's project (created once),
    with the model's mask as a prediction; images already there are not sent again."""
    rows = read_queue(work_store, f"review/production/{day}/").to_pylist()
    project = client.project(
        f"{options.project_prefix} {day}",
        description=f"maskfind review queue of production day {day}: correct the product mask",
    )
    pid = int(project["id"])
    folder = storage_path(data_store)
    if folder is not None:
        client.local_storage(pid, folder)
    present = {t["data"].get("image_key") for t in client.tasks(pid)}
    new = [row for row in rows if row["image_key"] not in present]
    for start in range(0, len(new), _BATCH):
        batch = [
            task(row, _mask(data_store, str(row["mask_key"])), _url(data_store, row, options), day)
            for row in new[start : start + _BATCH]
        ]
        client.import_tasks(pid, batch)
    return SentDay(pid, f"{client.url}/projects/{pid}", len(rows), len(new), len(rows) - len(new))


def collect_from_label_studio(
    client: LabelStudio,
    options: LabelStudioOptions,
    *,
    data_store: ObjectStore,
    work_store: ObjectStore,
    run_id: str,
) -> ReturnReport:
    """Read the finished annotations of every day's project and write the new ones as failure
    samples (skips and rejections recorded, not imported; nothing imported twice)."""
    emails = client.emails()

    def annotator(completed_by: object) -> str | None:
        if isinstance(completed_by, int):
            return emails.get(completed_by, f"user-{completed_by}")
        return None if completed_by is None else str(completed_by)

    answers: list[Returned] = []
    for project in client.projects():
        if str(project["title"]).startswith(f"{options.project_prefix} "):
            answers += read_label_studio(client.export(int(project["id"])), annotator)
    resolved = resolve(answers, QueueIndex.read(work_store), data_store, strict=False)
    return record_returns(
        resolved, data_store=data_store, work_store=work_store, source=client.url, run_id=run_id
    )


def import_export(
    path: str | Path,
    *,
    data_store: ObjectStore,
    work_store: ObjectStore,
    run_id: str,
    annotator: str | None = None,
) -> tuple[str, ReturnReport]:
    """Import an export file or folder (CVAT COCO 1.0, CVAT Segmentation mask 1.1, Label Studio
    JSON). Every answer is checked before anything is written.

    Raises:
        ExportError: unreadable or partial, an image no queue holds, a mask of the wrong size.
    """
    tool, answers = read_export(path)
    if annotator:
        answers = [replace(a, annotator=a.annotator or annotator) for a in answers]
    try:
        answers = resolve(answers, QueueIndex.read(work_store), data_store)
    except UnknownImage as exc:
        raise ExportError(f"{path}: {exc}") from exc
    problems = [p for a in answers if a.status == LABELED and (p := check_size(a, data_store))]
    if problems:
        raise ExportError(f"{path}: {len(problems)} answers do not fit: " + "; ".join(problems))
    report = record_returns(
        answers, data_store=data_store, work_store=work_store, source=str(path), run_id=run_id
    )
    return tool, report


def _url(store: ObjectStore, row: dict[str, object], options: LabelStudioOptions) -> str:
    return image_url(store, str(row["image_key"]), options)


def _mask(store: ObjectStore, key: str) -> np.ndarray:
    with Image.open(io.BytesIO(store.get(key))) as image:
        return np.asarray(image) != 0
