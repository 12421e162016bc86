"""`maskfind demo`: the trust loop, told through Dagster runs on the embedded defaults.

1. night 1: labeled images of every image type but one (X), ingest, dataset version 1, train,
   audit the labels, evaluate, promote model 1; then the reviewer is trained against it;
2. production day 1 brings the known types and X: the champion predicts, the reviewer grades,
   the novelty alarm names X, the review queue lists what people should relabel;
3. the demo plays the people: only the queued images come back relabeled under `failures/`
   (with the generator's true masks), dropped as files or, with `labeling="label-studio"`,
   submitted as annotations of the day's Label Studio tasks and read back by `returned_labels`;
4. night 2: dataset version 2 holds them; model 2 starts from the champion (warm start), is
   evaluated against model 1 on both versions and promoted only if the gate passes; the
   reviewer is trained again against the new champion (as `champion_changed_sensor` requests
   in production), now also on the relabeled failures;
5. production day 2: new images of every type, graded again; `performance_history` shows
   each type's champion mIoU and daily rates over the two days, with its warning checks.

Everything printed is read from what the runs wrote: their materializations and checks, the
evaluation cells, the prediction logs and the review queue; beside each day's grades, the share
of masks that are truly bad (against the generator's true masks: the demo knows the truth,
production does not). `run_story` returns the same numbers, so a test can assert the story at
a tiny size.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
import numpy as np
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.data.review_queue import read_queue
from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.evaluation.gate import GatePolicy
from maskfind_pipeline.flows.options import ProductionOptions, ReviewerOptions, TrainingOptions
from maskfind_pipeline.ml.backends.config import BackendConfig
from maskfind_pipeline.ml.reviewer.config import ReviewerSpec, ReviewerTrainConfig
from maskfind_pipeline.ml.segmentation.config import FINE_TUNING, demo_model_spec
from maskfind_pipeline.storage.base import ObjectStore

if TYPE_CHECKING:
    from maskfind_pipeline.labeling.label_studio import LabelStudio

Echo = Callable[[str], None]


class DemoOptions(CoreConfig):
    """The demo's sizes and budgets; the defaults take about 4.5 minutes on 2 idle cores
    (docs/demo-transcript.md)."""

    new_type: str = "laser3d-wafer-tray-s4"
    """Image type X: missing from the labeled data, arriving on production day 1."""
    count: int = 60
    """Labeled samples per known image type."""
    production_count: int = 16
    """Production images per image type and day."""
    size: int = 128
    """Image and model input size."""
    night1_epochs: int = 9
    """Training epochs of night 1 (from the ImageNet encoder): a number of epochs, not a time
    budget, so a busy machine gives the same models, only later."""
    night2_epochs: int = 6
    """Training epochs of night 2 (warm start from the champion)."""
    night1_minutes: float = 3.0
    """A cap on night 1's training time (about 1 minute here when the machine is idle)."""
    night2_minutes: float = 2.0
    """A cap on night 2's training time (about 40 s here when idle)."""
    reviewer: ReviewerOptions = ReviewerOptions(
        spec=ReviewerSpec(input_size=64),
        train=ReviewerTrainConfig(epochs=6, max_minutes=1.0),
        folds=3,
        fold_train=FINE_TUNING.model_copy(update={"epochs": 4, "max_minutes": 1.0}),
        max_images=400,
    )
    """The grader's training (after each night's promotion, as `champion_changed_sensor` asks
    for it in production): three folds of fold mask models and CNN reviewers, small and short
    for the demo's time budget."""
    gate: GatePolicy = GatePolicy(floor=0.5, min_samples=3, tolerance=0.02)
    """The promotion gate."""
    seed: int = 0
    """Seeds the generated images."""
    labeling: Literal["files", "label-studio"] = "files"
    """How the people's corrections come back: files dropped under `failures/`, or
    annotations in Label Studio read back by `returned_labels` (docs/labeling.md)."""


@dataclass
class Night:
    """What one nightly run did, read from its materializations."""

    number: int
    success: bool
    seconds: float
    metadata: dict[str, dict[str, Any]]

    def value(self, asset: str, key: str) -> Any:
        entry = self.metadata.get(asset, {}).get(key)
        return None if entry is None else entry.value

    @property
    def refused(self) -> bool:
        """The run failed at the gate's blocking check, and only there: the challenger was
        not promoted and the champion stays (the pipeline doing its job, not a fault)."""
        return not self.success and self.value("promotion", "promoted") is False


@dataclass
class Day:
    """One production day: per image type the grade-3 and novel rates, the alarm, the queue."""

    day: str
    success: bool
    seconds: float
    by_type: dict[str, dict[str, float | int]]
    alarm_types: list[str]
    queued: list[dict[str, Any]]


@dataclass
class Story:
    """Everything the demo printed, as numbers."""

    options: DemoOptions
    nights: list[Night] = field(default_factory=list)
    days: list[Day] = field(default_factory=list)
    reviewer_version: str | None = None
    """The reviewer version production grades with: the last one its job promoted (a new
    reviewer that grades the champion's masks worse than the current one is registered, not
    promoted)."""
    reviewer_runs: list[bool] = field(default_factory=list)
    relabeled: list[str] = field(default_factory=list)
    matrix: dict[str, dict[str, float]] = field(default_factory=dict)
    """Dataset version 2's test mIoU per image type: {type: {model version: mIoU}}."""
    history_success: bool = True
    labeling_success: bool = True
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        # Night 2's gate may refuse model 2: the story goes on with the champion it kept.
        runs = [n.success or (n.number > 1 and n.refused) for n in self.nights]
        runs += [d.success for d in self.days]
        runs += self.reviewer_runs
        return all(runs) and self.history_success and self.labeling_success


def run_story(
    options: DemoOptions,
    *,
    data_store: ObjectStore,
    work_store: ObjectStore,
    instance: dg.DagsterInstance,
    run_job: Callable[..., dg.ExecuteInProcessResult],
    echo: Echo = print,
    today: dt.date | None = None,
    label_studio: LabelStudio | None = None,
) -> Story:
    """Tell the story; `run_job(name, run_config, partition_key=None)` runs a job of the
    project's definitions on `instance`. Stops early (story.ok False) when a run fails.
    `label_studio` (the server the project's `label_studio` resource reaches) is where the
    people answer when `settings.labeling` is "label-studio"."""
    started = time.perf_counter()
    story = Story(options)
    types = synthetic.DEFAULT_TYPES
    new = synthetic.ImageType.parse(options.new_type)
    known = [t for t in types if t != new]
    day2 = today or dt.date.today()
    day1 = day2 - dt.timedelta(days=1)
    echo(
        f"labeled data: {options.count} images of each of {len(known)} image types, not {new.name}"
    )
    synthetic.generate(data_store, known, options.count, size=options.size, seed=options.seed)

    if not _night(story, 1, run_job, _nightly_config(options, warm_start=False), echo):
        return _done(story, started, echo)
    _reviewer(story, run_job, echo)

    first = _production_day(story, day1, types, data_store, work_store, instance, run_job, echo)
    if not first.success:
        return _done(story, started, echo)
    keys = [str(e["image_key"]) for e in first.queued]
    if options.labeling == "label-studio":
        if label_studio is None:
            raise ValueError('labeling="label-studio" needs a Label Studio client')
        written = _people_in_label_studio(first.day, keys, data_store, label_studio, run_job, echo)
        if written is None:
            story.labeling_success = False
            return _done(story, started, echo)
        story.relabeled = written
    else:
        story.relabeled = synthetic.relabel_production(
            data_store,
            keys,
            failed_model_version=str(story.nights[0].value("promotion", "champion_after")),
            reported_at=dt.datetime.now(dt.UTC),
        )
        echo(
            f"the people: relabeled the {len(keys)} queued images (true masks, written under "
            "failures/ with their tags); nothing else"
        )

    promoted = _night(story, 2, run_job, _nightly_config(options, warm_start=True), echo)
    if not promoted and not story.nights[-1].refused:
        return _done(story, started, echo)
    story.matrix = _matrix(work_store, story)
    _print_matrix(story, new.name, echo)
    if promoted:  # a new champion: the grader follows it (`champion_changed_sensor`)
        _reviewer(story, run_job, echo)
    else:
        echo("the champion stays model 1: production day 2 runs with it and its grader")
    _production_day(story, day2, types, data_store, work_store, instance, run_job, echo)
    _print_change(story, new.name, echo)
    _history(story, run_job, echo)
    return _done(story, started, echo)


def _reviewer(story: Story, run_job: Callable[..., Any], echo: Echo) -> None:
    """Train the grader against the new champion (what `champion_changed_sensor` requests)."""
    config = {"ops": {"reviewer_model": {"config": _dump(story.options.reviewer)}}}
    start = time.perf_counter()
    result = run_job("reviewer", config)
    story.reviewer_runs.append(result.success)
    meta = _metadata(result).get("reviewer_model", {})
    if _value(meta, "promoted") is True:
        story.reviewer_version = _value(meta, "reviewer_version") or story.reviewer_version
    echo(
        f"reviewer: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'} in "
        f"{time.perf_counter() - start:.0f} s, version {_value(meta, 'reviewer_version')}, "
        f"grades with {_value(meta, 'scorer')} (grade-3 AUC {_short(_value(meta, 'auc_grade3'))} "
        f"out of fold; best free signal alone {_value(meta, 'best_free_signal')}), promoted "
        f"{_value(meta, 'promoted')}"
    )
    refused = _value(meta, "reviewer_refused")
    if refused and not str(refused).startswith("no:"):
        echo(f"  {str(refused).split(': production grades')[0]}")


def _people_in_label_studio(
    day: str,
    keys: Sequence[str],
    data_store: ObjectStore,
    client: LabelStudio,
    run_job: Callable[..., Any],
    echo: Echo,
) -> list[str] | None:
    """The day's queue out to Label Studio (`label_studio_out`), one annotation per task with
    the generator's true mask (what a person would draw), and `returned_labels` reads them back
    as failure samples (`label_studio_back`). None when a run failed."""
    import io

    from PIL import Image

    from maskfind_pipeline.labeling.label_studio import LabelStudioOptions, brush_result

    out = run_job("label_studio_out", {}, partition_key=day)
    if not out.success:
        echo(f"label_studio_tasks: run {out.run_id[:8]} FAILED")
        return None
    meta = _metadata(out).get("label_studio_tasks", {})
    echo(
        f"label_studio_tasks: run {out.run_id[:8]} succeeded, {_value(meta, 'tasks_added')} "
        f"tasks with the model's masks as predictions in {_value(meta, 'project')}"
    )
    title = f"{LabelStudioOptions().project_prefix} {day}"
    project = next(p for p in client.projects() if p["title"] == title)
    wanted = set(keys)
    for task in client.tasks(int(project["id"])):
        key = str(task["data"]["image_key"])
        if key in wanted:
            size = Image.open(io.BytesIO(data_store.get(key))).width
            client.annotate(int(task["id"]), [brush_result(synthetic.production_truth(key, size))])
    back = run_job("label_studio_back", {})
    meta = _metadata(back).get("returned_labels", {})
    echo(
        f"the people: corrected the {len(wanted)} queued masks in Label Studio (through its "
        f"API); returned_labels: run {back.run_id[:8]} "
        f"{'succeeded' if back.success else 'FAILED'}, {_value(meta, 'failures_written')} "
        "failure samples written under failures/ with their tags and annotator"
    )
    if not back.success:
        return None
    images = (info.key for info in data_store.list("failures/"))
    return sorted(k for k in images if k.endswith((".png", ".jpg", ".jpeg")) and ".mask." not in k)


def _nightly_config(options: DemoOptions, *, warm_start: bool) -> dict[str, Any]:
    minutes = options.night2_minutes if warm_start else options.night1_minutes
    epochs = options.night2_epochs if warm_start else options.night1_epochs
    # The production recipe (FINE_TUNING, with test-time flipping) at the demo's size and budget.
    training = TrainingOptions(
        model=demo_model_spec(options.size).model_copy(update={"tta_flip": True}),
        train=FINE_TUNING.model_copy(
            update={
                "epochs": epochs,
                "learning_rate": 1e-3 if warm_start else 3e-3,
                "max_minutes": minutes,
            }
        ),
        warm_start=warm_start,
    )
    return {
        "ops": {
            "mask_model": {"config": _dump(training)},
            "promotion": {"config": _dump(options.gate)},
        }
    }


def _night(
    story: Story, number: int, run_job: Callable[..., Any], config: dict, echo: Echo
) -> bool:
    start = time.perf_counter()
    result = run_job("nightly", config)
    night = Night(number, result.success, time.perf_counter() - start, _metadata(result))
    story.nights.append(night)
    state = "succeeded" if result.success else "FAILED"
    echo(f"night {number}: nightly run {result.run_id[:8]} {state} in {night.seconds:.0f} s")
    for asset, keys in _NIGHT_SUMMARY.items():
        if asset in night.metadata:
            shown = ", ".join(
                f"{k}={_short(night.value(asset, k))}" for k in keys if k in night.metadata[asset]
            )
            echo(f"  {asset}: {shown}")
    if night.value("promotion", "promoted") is False:
        reasons = str(night.value("promotion", "reasons"))
        echo("  the gate refused (a blocking check: the run fails, the champion stays):")
        echo("    " + reasons.replace("\n", "\n    "))
    return result.success


_NIGHT_SUMMARY = {
    "image_catalog": ("new_samples", "quarantined", "catalog_samples"),
    "dataset_version": ("dataset_version", "parent", "samples"),
    "mask_model": ("model_version", "val_miou", "stop_reason", "warm_start_from"),
    "label_audit": ("labels_audited", "suspects"),
    "compat_evaluation": ("cells_computed",),
    "promotion": ("candidate", "champion_before", "champion_after", "promoted"),
}


def _production_day(
    story: Story,
    day: dt.date,
    types: Sequence[synthetic.ImageType],
    data_store: ObjectStore,
    work_store: ObjectStore,
    instance: dg.DagsterInstance,
    run_job: Callable[..., dg.ExecuteInProcessResult],
    echo: Echo,
) -> Day:
    options = story.options
    synthetic.generate_production(
        data_store,
        types,
        options.production_count,
        day=day,
        size=options.size,
        seed=options.seed + len(story.days) + 1,
    )
    partition = day.isoformat()
    instance.add_dynamic_partitions("production_days", [partition])
    day_options = ProductionOptions(backend=BackendConfig(backend="torch"), batch_size=32)
    start = time.perf_counter()
    config = {"ops": {"production_predictions": {"config": _dump(day_options)}}}
    result = run_job("production", config, partition_key=partition)
    rows = PredictionLog(work_store, partition).current().to_pylist()
    truth = _true_bad(data_store, rows, options.reviewer.spec.grades.usable)
    alarms = [
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == "novelty_alarm" and not c.passed
    ]
    alarm_types = [t for c in alarms for t in str(c.metadata["image_types"].value).split(",") if t]
    queue = read_queue(work_store, f"review/production/{partition}/").to_pylist()
    entry = Day(
        partition,
        result.success,
        time.perf_counter() - start,
        _rates(rows, truth),
        alarm_types,
        queue,
    )
    story.days.append(entry)
    number = len(story.days)
    echo(
        f"production day {number} ({partition}): {len(rows)} images, {options.production_count} "
        f"per type, run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'} in "
        f"{entry.seconds:.0f} s"
    )
    echo(f"  {'image type':32s} graded 3  expected bad  truly bad  novel")
    for image_type, rates in sorted(entry.by_type.items()):
        echo(
            f"  {image_type:32s} {rates['grade_3_rate']:8.2f}  {rates['expected_bad']:12.2f}  "
            f"{rates['true_bad']:9.2f}  {rates['novel_rate']:5.2f}"
        )
    echo(f"  novelty_alarm: {', '.join(alarm_types) or 'passed (no image type is new)'}")
    reasons: dict[str, int] = {}
    for row in queue:
        for reason in row["reasons"]:
            reasons[reason] = reasons.get(reason, 0) + 1
    shown = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
    echo(f"  review_queue: {len(queue)} images ({shown or 'none'})")
    return entry


def _rates(rows: list[dict[str, Any]], truly_bad: set[str]) -> dict[str, dict[str, float | int]]:
    """Per image type: images, the share graded 3, the expected bad share (mean P(grade 3),
    calibrated), the share truly bad (IoU with the generator's true mask below `usable`) and
    the novel share."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            by_type.setdefault(str(row["image_type"]), []).append(row)
    out: dict[str, dict[str, float | int]] = {}
    for image_type, group in by_type.items():
        graded = [r for r in group if r["grade"] is not None]
        scored = [r for r in group if r["novel"] is not None]
        out[image_type] = {
            "images": len(group),
            "grade_3_rate": sum(r["grade"] == 3 for r in graded) / max(1, len(graded)),
            "expected_bad": sum(float(r["p_grade3"]) for r in graded) / max(1, len(graded)),
            "true_bad": sum(r["image_key"] in truly_bad for r in group) / len(group),
            "novel_rate": sum(bool(r["novel"]) for r in scored) / max(1, len(scored)),
        }
    return out


def _true_bad(store: ObjectStore, rows: list[dict[str, Any]], usable: float) -> set[str]:
    """The image keys whose written mask has an IoU below `usable` with the generator's true
    mask: what the grades should find (the demo knows the truth; production does not)."""
    bad = set()
    for row in rows:
        if row["status"] != "ok":
            continue
        key = str(row["image_key"])
        truth = synthetic.production_truth(key, Image.open(io.BytesIO(store.get(key))).width)
        with Image.open(io.BytesIO(store.get(str(row["mask_key"])))) as written:
            mask = np.asarray(written) != 0
        union = int((truth | mask).sum())
        if union and (truth & mask).sum() / union < usable:
            bad.add(key)
    return bad


def _matrix(work_store: ObjectStore, story: Story) -> dict[str, dict[str, float]]:
    """Test mIoU per image type on night 2's dataset version, for every model evaluated."""
    version = str(story.nights[-1].value("dataset_version", "dataset_version"))
    out: dict[str, dict[str, float]] = {}
    for row in CellStore(work_store).read().to_pylist():
        if row["dataset_version"] == version and row["group_kind"] == "image_type":
            out.setdefault(row["group"], {})[row["model_version"]] = row["miou"]
    return out


def _print_matrix(story: Story, new_type: str, echo: Echo) -> None:
    night = story.nights[-1]
    version = night.value("dataset_version", "dataset_version")
    echo(f"  test mIoU per image type on dataset version {version} (model 1 -> model 2):")
    for image_type, by_model in sorted(story.matrix.items()):
        before, after = by_model.get("1"), by_model.get("2")
        if before is None or after is None:
            continue
        mark = "   <- the new type" if image_type == new_type else ""
        echo(f"    {image_type:32s} {before:.3f} -> {after:.3f} ({after - before:+.3f}){mark}")


def _print_change(story: Story, new_type: str, echo: Echo) -> None:
    if len(story.days) < 2:
        return
    days = [d.by_type.get(new_type, {}) for d in story.days[:2]]

    def change(key: str) -> str:
        return " -> ".join(f"{d.get(key, float('nan')):.2f}" for d in days)

    echo(
        f"{new_type}, day 1 -> day 2: truly bad {change('true_bad')}; graded 3 "
        f"{change('grade_3_rate')}; expected bad (calibrated) {change('expected_bad')}; "
        f"novel {change('novel_rate')}"
    )


def _history(story: Story, run_job: Callable[..., Any], echo: Echo) -> None:
    result = run_job("history", {})
    story.history_success = result.success
    meta = _metadata(result).get("performance_history", {})
    echo(
        f"performance_history: run {result.run_id[:8]} "
        f"{'succeeded' if result.success else 'FAILED'}, champion terms "
        f"{_value(meta, 'champion_terms')}, production days {_value(meta, 'production_days')}"
    )
    for check in result.get_asset_check_evaluations():
        state = "passed" if check.passed else "WARNING"
        echo(f"  {check.check_name}: {state}: {check.description}")


def _done(story: Story, started: float, echo: Echo) -> Story:
    story.seconds = time.perf_counter() - started
    minutes, seconds = divmod(round(story.seconds), 60)
    echo(f"demo {'finished' if story.ok else 'STOPPED'} in {minutes} min {seconds:02d} s")
    return story


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    return {
        e.asset_key.to_user_string(): dict(e.materialization.metadata)
        for e in result.get_asset_materialization_events()
        if e.asset_key
    }


def _value(metadata: dict[str, Any], key: str) -> Any:
    entry = metadata.get(key)
    return None if entry is None else entry.value


def _short(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _dump(config: CoreConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")
