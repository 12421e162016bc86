"""The generalization study's pure part: type order, plan, manifest restriction, table, plot."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from PIL import Image

from maskfind_pipeline.evaluation.generalization import (
    StepOutcome,
    StudyStep,
    TypeScore,
    epochs_for,
    generalization_png,
    mean_miou,
    plan_steps,
    restrict,
    study_order,
    study_table,
)
from maskfind_pipeline.flows.generalization import StudyOptions
from maskfind_pipeline.synthetic import DEFAULT_TYPES

ORDER = ("a", "b", "c", "d")
# Test mIoU per type of each hand-made training: high on what it saw, lower elsewhere.
SCORES = {
    1: {"a": 0.9, "b": 0.5, "c": 0.3, "d": 0.4},
    2: {"a": 0.92, "b": 0.88, "c": 0.6, "d": 0.5},
    3: {"a": 0.93, "b": 0.9, "c": 0.86, "d": 0.7},
    4: {"a": 0.94, "b": 0.91, "c": 0.89, "d": 0.87},
}


def _outcome(step: StudyStep, n_images: int = 3) -> StepOutcome:
    test = {t: TypeScore(m, n_images) for t, m in SCORES[step.k].items()}
    return StepOutcome(step, "ds-1", test, epochs=7, stop_reason="time_budget", seconds=75.0)


def test_the_listed_order_comes_first_then_the_versions_other_types_by_name() -> None:
    assert study_order(["c", "zz", "a", "c"], ["a", "b", "c", "e"]) == ["c", "a", "b", "e"]
    assert study_order([], {"b": 1, "a": 2}) == ["a", "b"]


def test_step_k_trains_on_the_first_k_types_and_holds_out_the_rest() -> None:
    steps = plan_steps(ORDER, max_k=2)
    assert [s.label for s in steps] == ["k=1", "k=2", "all"]
    assert [s.key for s in steps] == ["k1", "k2", "all"]
    assert [(s.seen, s.unseen) for s in steps] == [
        (("a",), ("b", "c", "d")),
        (("a", "b"), ("c", "d")),
        (ORDER, ()),
    ]


def test_k_stops_one_type_short_of_all_and_needs_two_types() -> None:
    assert [s.label for s in plan_steps(ORDER, max_k=10)] == ["k=1", "k=2", "k=3", "all"]
    with pytest.raises(ValueError, match="two image types"):
        plan_steps(["a"], max_k=1)
    with pytest.raises(ValueError, match="max_k"):
        plan_steps(ORDER, max_k=0)


def test_restrict_keeps_the_types_asked_for_at_most_n_each_with_their_splits() -> None:
    manifest = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(7)],
            "image_type": ["a", "b", "a", "c", "a", "b", "a"],
            "split": ["train", "val", "test", "train", "val", "test", "train"],
        }
    )
    kept = restrict(manifest, ["a", "b"], per_type=2)
    assert kept.column("sample_id").to_pylist() == ["s0", "s1", "s2", "s5"]
    assert kept.column("split").to_pylist() == ["train", "val", "test", "test"]
    assert restrict(manifest, ["c"]).column("sample_id").to_pylist() == ["s3"]
    assert restrict(manifest, ["x"]).num_rows == 0


def test_every_training_gets_epochs_enough_to_see_the_same_number_of_images() -> None:
    assert [epochs_for(3000, n) for n in (42, 84, 420, 3000, 5000)] == [72, 36, 8, 1, 1]


def test_mean_miou_weighs_each_type_the_same_and_skips_types_without_test_images() -> None:
    scores = {"a": TypeScore(0.9, 10), "b": TypeScore(0.5, 1), "c": TypeScore(0.0, 0)}
    assert mean_miou(scores, ["a", "b", "c", "missing"]) == pytest.approx(0.7)
    assert mean_miou(scores, ["c"]) is None
    assert mean_miou(scores, []) is None


def test_the_table_has_one_row_per_k_then_all_with_seen_and_unseen_means() -> None:
    steps = plan_steps(ORDER, max_k=3)
    rows = study_table(_outcome(s) for s in reversed(steps))
    assert [r["step"] for r in rows] == ["k=1", "k=2", "k=3", "all"]
    assert [r["n_types_seen"] for r in rows] == [1, 2, 3, 4]
    assert [r["added_type"] for r in rows] == ["a", "b", "c", "all"]
    assert [r["seen_miou"] for r in rows] == pytest.approx([0.9, 0.9, 0.8967, 0.9025])
    assert rows[0]["unseen_miou"] == pytest.approx(0.4)
    assert rows[1]["unseen_miou"] == pytest.approx(0.55)
    assert rows[2]["unseen_miou"] == pytest.approx(0.7)
    assert rows[3]["unseen_miou"] is None
    assert [(r["n_test_seen"], r["n_test_unseen"]) for r in rows] == [
        (3, 9),
        (6, 6),
        (9, 3),
        (12, 0),
    ]
    assert rows[0]["train_minutes"] == 1.25 and rows[0]["epochs"] == 7


def test_the_plot_is_a_png_that_changes_with_the_numbers() -> None:
    rows = study_table(_outcome(s) for s in plan_steps(ORDER, max_k=3))
    png = generalization_png(rows)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 300 and image.height > 200
    lower = [{**r, "unseen_miou": 0.1} if r["step"] != "all" else r for r in rows]
    assert generalization_png(lower) != png
    no_reference = [r for r in rows if r["step"] != "all"]
    assert generalization_png(no_reference) != png


def test_the_default_order_is_the_synthetic_factorys() -> None:
    assert StudyOptions().image_types == tuple(t.name for t in DEFAULT_TYPES)
    assert StudyOptions().max_k == 5 and StudyOptions().model.input_size == 128
