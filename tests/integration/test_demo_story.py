"""The demo's story at a tiny size, through the same Dagster jobs: the new image type is
flagged on day 1, only the queued images come back relabeled, night 2's model is better on it
and promoted, and day 2's grade-3 rate on it falls."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.production import PredictionLog, mask_key_for
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.demo import DemoOptions, run_story
from maskfind_pipeline.evaluation.gate import GatePolicy
from maskfind_pipeline.flows.options import ReviewerOptions
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.reviewer.config import ReviewerSpec, ReviewerTrainConfig
from maskfind_pipeline.ml.segmentation.config import FINE_TUNING
from maskfind_pipeline.storage import LocalObjectStore

# At 64 px with 40 images per type a type has about 6 test images, so one image moves its mIoU
# by up to 0.15: the demo's gate tolerance (0.02, for 9+ well-predicted test images) would
# refuse on noise here. The story's mechanics are what this test checks; the demo's own gate
# is the one `make demo` prints.
TINY = DemoOptions(
    count=40,
    production_count=20,
    size=64,
    night1_epochs=16,
    night2_epochs=16,
    night1_minutes=0.4,
    night2_minutes=0.4,
    gate=GatePolicy(floor=0.3, min_samples=3, tolerance=0.1),
    reviewer=ReviewerOptions(
        spec=ReviewerSpec(input_size=32),
        train=ReviewerTrainConfig(epochs=3),
        folds=2,
        fold_train=FINE_TUNING.model_copy(update={"epochs": 6, "max_minutes": 0.4}),
        max_images=200,
    ),
)


@pytest.mark.integration
@pytest.mark.slow  # ~2 min on 2 idle cores; each step has its own test in `make test`
def test_the_story_at_a_tiny_size(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data, work = LocalObjectStore(locations.data_uri), LocalObjectStore(locations.work_uri)
    instance = dg.DagsterInstance.ephemeral()
    resources = build_resources(locations)
    printed: list[str] = []

    def run_job(name: str, config: dict[str, Any], *, partition_key: str | None = None):  # type: ignore[no-untyped-def]
        job = defs().resolve_job_def(name)
        return job.execute_in_process(
            run_config=config,
            instance=instance,
            resources=resources,
            partition_key=partition_key,
            raise_on_error=False,
        )

    story = run_story(
        TINY,
        data_store=data,
        work_store=work,
        instance=instance,
        run_job=run_job,
        echo=printed.append,
        today=dt.date(2026, 12, 2),
    )
    text = "\n".join(printed)
    assert story.ok, text
    new = TINY.new_type
    first, second = story.days

    # Alarms come most novel first; at this size the threshold is calibrated on ~6 validation
    # images per type, so a known type may cross the alarm's minimum too.
    assert first.alarm_types[0] == new, text
    others = max(rates["novel_rate"] for t, rates in first.by_type.items() if t != new)
    assert first.by_type[new]["novel_rate"] > others, text

    queued = {str(e["image_id"]) for e in first.queued}
    assert any(new in image_id for image_id in queued), text
    failures = {i.key.rpartition("/")[2].split(".")[0] for i in data.list("failures/")}
    assert failures == queued, "only the queued images come back relabeled"
    assert sorted(story.relabeled) == sorted(
        k for k in (i.key for i in data.list("failures/")) if not k.endswith(".mask.png")
    )

    assert story.nights[1].value("dataset_version", "samples") > story.nights[0].value(
        "dataset_version", "samples"
    )
    assert story.matrix[new]["2"] > story.matrix[new]["1"] + 0.1, text
    assert story.nights[1].value("promotion", "promoted") is True, text
    assert story.nights[1].value("promotion", "champion_after") == "2"
    # Production day 2 on X is better in truth: the champion's masks against the generator's
    # true masks. (The grade-3 rate is printed, not asserted: the tiny reviewer, about 0.7
    # grade-3 AUC and blind to X on day 1, is too noisy a judge at this size.)
    truth = [_true_miou(data, day.day, new, tmp_path / f"truth-{day.day}") for day in story.days]
    assert truth[1] > truth[0] + 0.1, (truth, text)
    assert second.by_type[new]["novel_rate"] < first.by_type[new]["novel_rate"], text
    assert "demo finished in" in text
    # The grader is trained again after night 2, on the relabeled failures too, and day 2 is
    # graded by the reviewer champion: the new one where it graded the champion's masks at
    # least as well, else the one before.
    assert story.reviewer_runs == [True, True], text
    assert {r["reviewer_version"] for r in _rows(work, second.day)} == {story.reviewer_version}


def _rows(work: LocalObjectStore, day: str) -> list[dict[str, Any]]:
    return [r for r in PredictionLog(work, day).current().to_pylist() if r["status"] == "ok"]


def _true_miou(data: LocalObjectStore, day: str, image_type: str, scratch: Path) -> float:
    """Mean IoU of the masks production wrote for `image_type` on `day` against the true
    masks, which the generator renders again (`relabel_production`, into a scratch store)."""
    truth = LocalObjectStore(scratch)
    keys = [
        i.key for i in data.list(f"production/{day}/") if Path(i.key).name.startswith(image_type)
    ]
    for key in keys:
        truth.put(key, data.get(key), tags=data.tags(key))
    synthetic.relabel_production(
        truth, keys, failed_model_version="-", reported_at=dt.datetime.now(dt.UTC)
    )
    ious = []
    for key in keys:
        image_id = Path(key).stem
        true = _mask(truth.get(f"failures/{image_id}.mask.png"))
        predicted = _mask(data.get(mask_key_for(key)))
        union = (true | predicted).sum()
        ious.append((true & predicted).sum() / union if union else 1.0)
    assert ious, f"no {image_type} images on {day}"
    return float(np.mean(ious))


def _mask(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))) > 0
