"""The generalization study: which image types each training sees, its table and its plot.

A study trains on the first k image types of an order (k = 1..K) and once on all of them, and
tests every model on the test split of every type: the mean IoU on the types it trained on
(seen) and on the others (unseen). Adding types closes the gap between the two; the training on
all types is the reference. Pure: no torch, no Dagster (matplotlib only inside the plot).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

ALL = "all"

Row = dict[str, str | int | float | None]
"""One row of the study's table: plain values."""


@dataclass(frozen=True)
class StudyStep:
    """One training of the study: the image types it trains on and those it never sees."""

    seen: tuple[str, ...]
    unseen: tuple[str, ...]

    @property
    def k(self) -> int:
        return len(self.seen)

    @property
    def is_all(self) -> bool:
        return not self.unseen

    @property
    def label(self) -> str:
        """`k=1`, `k=2`, ... or `all`."""
        return ALL if self.is_all else f"k={self.k}"

    @property
    def key(self) -> str:
        """The label as an identifier (`k1`, `all`), e.g. a Dagster mapping key."""
        return ALL if self.is_all else f"k{self.k}"


@dataclass(frozen=True)
class TypeScore:
    """A model's test mIoU on one image type, and how many test images it rests on."""

    miou: float
    n_images: int


@dataclass(frozen=True)
class StepOutcome:
    """What one training of the study gave: per image type test scores, training facts."""

    step: StudyStep
    dataset_version: str
    test: Mapping[str, TypeScore]
    epochs: int
    stop_reason: str
    seconds: float


def study_order(listed: Sequence[str], available: Iterable[str]) -> list[str]:
    """The order image types join training: the listed ones the dataset version has, in their
    order, then its other types by name (so a study runs on whatever the version holds)."""
    present = set(available)
    first = [t for t in dict.fromkeys(listed) if t in present]
    return first + sorted(present - set(first))


def plan_steps(order: Sequence[str], max_k: int) -> list[StudyStep]:
    """Trainings on the first k types for k = 1..max_k (at most all types but one), then one on
    every type.

    Raises:
        ValueError: fewer than two image types, or `max_k` below 1.
    """
    if len(order) < 2:
        raise ValueError(f"a generalization study needs two image types or more, got {order}")
    if max_k < 1:
        raise ValueError(f"max_k must be at least 1, got {max_k}")
    types = tuple(order)
    steps = [StudyStep(types[:k], types[k:]) for k in range(1, min(max_k, len(types) - 1) + 1)]
    return [*steps, StudyStep(types, ())]


def restrict(
    manifest: pa.Table, image_types: Iterable[str], per_type: int | None = None
) -> pa.Table:
    """The manifest's rows of these image types, at most `per_type` of each (the first in the
    manifest's order, i.e. by content hash); rows keep their split and their order."""
    wanted = set(image_types)
    taken: Counter[str] = Counter()
    keep = []
    for row, image_type in enumerate(manifest.column("image_type").to_pylist()):
        if image_type in wanted and (per_type is None or taken[image_type] < per_type):
            taken[image_type] += 1
            keep.append(row)
    return manifest.take(pa.array(keep, pa.int64()))


def epochs_for(images_seen: int, train_images: int) -> int:
    """Epochs over `train_images` images that show a training at least `images_seen` images."""
    return max(1, math.ceil(images_seen / max(1, train_images)))


def mean_miou(scores: Mapping[str, TypeScore], image_types: Iterable[str]) -> float | None:
    """The mean over these image types of each one's test mIoU (each type weighs the same);
    types without test images are left out; None when none is left."""
    values = [scores[t].miou for t in image_types if t in scores and scores[t].n_images > 0]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def study_table(outcomes: Iterable[StepOutcome]) -> list[Row]:
    """One row per training, k ascending, `all` last."""
    rows = []
    for outcome in sorted(outcomes, key=lambda o: (o.step.is_all, o.step.k)):
        step, test = outcome.step, outcome.test
        row: Row = {
            "step": step.label,
            "n_types_seen": step.k,
            "added_type": ALL if step.is_all else step.seen[-1],
            "seen_miou": _rounded(mean_miou(test, step.seen)),
            "unseen_miou": _rounded(mean_miou(test, step.unseen)),
            "n_test_seen": sum(test[t].n_images for t in step.seen if t in test),
            "n_test_unseen": sum(test[t].n_images for t in step.unseen if t in test),
            "epochs": outcome.epochs,
            "stop_reason": outcome.stop_reason,
            "train_minutes": round(outcome.seconds / 60.0, 2),
        }
        rows.append(row)
    return rows


def generalization_png(rows: Sequence[Mapping[str, object]]) -> bytes:
    """Test mIoU against the number of image types trained on, seen and unseen, with the
    training on every type as a dotted horizontal line (rows of `study_table`)."""
    from matplotlib.figure import Figure

    steps = [r for r in rows if r["step"] != ALL]
    reference = next((r for r in rows if r["step"] == ALL), None)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for column, label, colour in (
        ("seen_miou", "seen image types", "tab:blue"),
        ("unseen_miou", "unseen image types", "tab:orange"),
    ):
        points = [(r["n_types_seen"], r[column]) for r in steps if r[column] is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", color=colour, label=label)
    if reference is not None and reference["seen_miou"] is not None:
        ax.axhline(
            float(str(reference["seen_miou"])),
            linestyle=":",
            color="black",
            label=f"trained on all {reference['n_types_seen']} types",
        )
    ax.set_xticks([int(str(r["n_types_seen"])) for r in steps])
    ax.set(
        title="generalization: training on k image types",
        xlabel="k: image types in training",
        ylabel="test mIoU (mean over image types)",
    )
    ax.set_ylim(top=1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
