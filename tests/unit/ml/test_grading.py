"""The grader's core: signals of a mask, the fitted and calibrated grade model, cross-fitting
by image type, the choice of scorer and the reviewer refused when a free signal beats it."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
import torch

from maskfind_pipeline.ml.reviewer.grader import Grader, reviewer_logit
from maskfind_pipeline.ml.reviewer.grading import (
    FLIP,
    NOVELTY,
    REVIEWER,
    SIGNALS,
    GradeModel,
    cross_fitted,
    fit_grade_model,
    grades_of,
    mask_signals,
    type_folds,
)
from maskfind_pipeline.ml.reviewer.report import auc_standard_error, choose_scorer, evaluate_scorer


def _signals(count: int, seed: int, *, informative: str = FLIP) -> tuple[dict, np.ndarray]:
    """Signals of `count` masks whose grade 3 follows `informative` (plus noise); grades 1
    and 2 split the rest by `mask_fraction`."""
    rng = np.random.default_rng(seed)
    signals = {name: rng.uniform(0, 1, count) for name in SIGNALS}
    signals[NOVELTY] = rng.gamma(2.0, 1.0, count)
    bad = signals[informative] + rng.normal(0, 0.15, count) > 0.7
    grades = np.where(bad, 3, np.where(signals["mask_fraction"] > 0.5, 1, 2))
    return signals, grades


def test_mask_signals_of_known_maps() -> None:
    maps = np.zeros((3, 8, 8), np.uint8)
    maps[0] = 128  # p ~ 0.5 everywhere: one bit, all uncertain, one whole mask
    maps[1, 2:4, 2:4] = 255  # one 2 x 2 square
    maps[1, 5:7, 5:7] = 255  # and another
    signals = mask_signals(maps, 0.5)
    assert signals["entropy"][0] == pytest.approx(1.0, abs=1e-3)
    assert signals["entropy"][1] == pytest.approx(0.0, abs=1e-5)
    assert signals["uncertain_share"].tolist() == [1.0, 0.0, 0.0]
    assert signals["mask_fraction"].tolist() == [1.0, 8 / 64, 0.0]
    assert signals["components"].tolist() == [1.0, 2.0, 0.0]
    # Every pixel of a 2 x 2 square touches the background: 8 boundary pixels / sqrt(8).
    assert signals["boundary"][1] == pytest.approx(8 / np.sqrt(8))
    # The mask is `p >= threshold` in float32, as the reviewer's input builds it.
    assert mask_signals(np.full((1, 2, 2), 128, np.uint8), 128 / 255)["mask_fraction"][0] == 1.0


def test_a_fitted_model_ranks_by_the_informative_signal_and_survives_json() -> None:
    signals, grades = _signals(400, 0)
    model = fit_grade_model(signals, grades, "signals")
    test, truth = _signals(400, 1)
    probs = model.probabilities(test)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert evaluate_scorer("signals", probs, truth, np.full(400, "t")).ranking.auc_grade3 > 0.9
    again = GradeModel.from_json(model.to_json())
    np.testing.assert_allclose(again.probabilities(test), probs)
    assert not model.uses_reviewer and again.features == model.features


def test_missing_signals_are_filled_and_unknown_ones_refused() -> None:
    signals, grades = _signals(200, 0)
    model = fit_grade_model(signals, grades, "signals")
    unknown = {**signals, FLIP: np.full(200, np.nan), NOVELTY: np.full(200, np.nan)}
    assert np.isfinite(model.probabilities(unknown)).all()
    with pytest.raises(KeyError, match="reviewer"):
        fit_grade_model({**signals, REVIEWER: signals[FLIP]}, grades, "combined").probabilities(
            signals
        )


def test_one_signal_keeps_its_direction() -> None:
    """A handful of masks where more disagreement happens to mean better masks must not teach
    the flip scorer that disagreement is good: it is flattened to the base rate."""
    signals, grades = _signals(60, 3)
    backwards = {**signals, FLIP: 1.0 - signals[FLIP]}
    model = fit_grade_model(backwards, grades, FLIP)
    p3 = model.raw_probabilities(backwards)[:, 2]
    assert np.ptp(p3) == pytest.approx(0.0) and p3[0] == pytest.approx((grades == 3).mean())
    forwards = fit_grade_model(signals, grades, FLIP).raw_probabilities(signals)[:, 2]
    assert np.all(np.diff(forwards[np.argsort(signals[FLIP])]) > 0)  # the signal's own order


def test_platt_scaling_matches_the_observed_bad_share() -> None:
    signals, grades = _signals(600, 0)
    model = fit_grade_model(signals, grades, "signals")
    # Shift what the model sees: the uncalibrated rates drift, Platt scaling on held-out
    # predictions brings the expected bad share back to the observed one.
    shifted, truth = _signals(600, 5)
    shifted = {**shifted, "mask_fraction": shifted["mask_fraction"] * 0.1}
    raw = model.raw_probabilities(shifted)
    calibrated = model.calibrated(raw[:, 2], truth == 3)
    expected = calibrated.probabilities(shifted)[:, 2].mean()
    assert expected == pytest.approx((truth == 3).mean(), abs=0.02)
    # Strictly monotone: the ranking (and so the AUC) is the raw model's.
    order = np.argsort(raw[:, 2])
    assert np.all(np.diff(calibrated.probabilities(shifted)[order, 2]) >= 0)


def test_grades_follow_the_probability_of_grade_three_first() -> None:
    probs = np.array([[0.45, 0.05, 0.5], [0.2, 0.3, 0.49], [0.6, 0.39, 0.01], [0.1, 0.1, 0.8]])
    assert grades_of(probs).tolist() == [3, 2, 1, 3]


def test_type_folds_hold_every_type_out_exactly_once() -> None:
    types = [f"type-{i}" for i in range(7)]
    folds = type_folds(types * 3, 3)
    assert sorted(folds) == sorted(types)
    assert sorted(set(folds.values())) == [0, 1, 2]
    assert sorted(type_folds(["a", "b"], 5).values()) == [0, 1]  # no more folds than types
    # A new type moves few others: most keep their fold.
    grown = type_folds([*types, "type-new"], 3)
    assert sum(grown[t] == folds[t] for t in types) >= 4


def test_cross_fitting_never_uses_a_folds_own_grades() -> None:
    signals, grades = _signals(300, 0)
    folds = np.arange(300) % 3
    fit_on = np.ones(300, bool)
    raw, calibrated = cross_fitted(signals, grades, folds, fit_on, "signals")
    assert np.isfinite(raw).all() and np.isfinite(calibrated).all()
    changed = grades.copy()
    changed[folds == 1] = np.where(grades[folds == 1] == 3, 1, 3)
    raw_again, _ = cross_fitted(signals, changed, folds, fit_on, "signals")
    np.testing.assert_allclose(raw_again[folds == 1], raw[folds == 1])
    assert not np.allclose(raw_again[folds == 0], raw[folds == 0])


def test_a_fold_whose_others_hold_one_grade_gets_their_base_rate() -> None:
    signals, grades = _signals(300, 0)
    folds = np.arange(300) % 3
    grades[folds != 0] = 3  # folds 1 and 2: only bad masks; fold 0 keeps its mix
    raw, calibrated = cross_fitted(signals, grades, folds, np.ones(300, bool), "signals")
    assert np.isfinite(raw).all() and np.isfinite(calibrated).all()
    assert raw[folds == 0, 2] == pytest.approx((200 + 0.5) / 201)  # 200 of 200 bad, smoothed
    assert len(np.unique(raw[folds == 1, 2])) > 1  # fitted on fold 0's mix: a real ranking


def test_a_reviewer_worse_than_flip_disagreement_is_refused() -> None:
    signals, grades = _signals(300, 0)
    types = np.full(300, "t")
    rng = np.random.default_rng(9)
    poor = {**signals, REVIEWER: rng.normal(size=300)}  # a CNN that knows nothing
    evaluations = {
        name: evaluate_scorer(
            name, fit_grade_model(poor, grades, name).probabilities(poor), grades, types
        )
        for name in (FLIP, "entropy", "novelty", REVIEWER)
    }
    choice = choose_scorer(evaluations, [FLIP, "entropy", "novelty", REVIEWER])
    assert choice is not None and choice.scorer == FLIP
    assert choice.best_free is not None and choice.best_free[0] == FLIP
    assert "does not beat flip_disagreement" in choice.reviewer_refused
    good = {**signals, REVIEWER: 5.0 * (grades == 3) + rng.normal(0, 0.1, 300)}
    evaluations[REVIEWER] = evaluate_scorer(
        REVIEWER, fit_grade_model(good, grades, REVIEWER).probabilities(good), grades, types
    )
    choice = choose_scorer(evaluations, [FLIP, "entropy", "novelty", REVIEWER])
    assert choice is not None and choice.scorer == REVIEWER and choice.reviewer_refused == ""


def test_calibration_error_is_computed_per_type() -> None:
    grades = np.array([3, 3, 1, 1, 3, 1, 1, 1])
    types = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    probs = np.array([[0.5, 0.0, 0.5]] * 4 + [[0.9, 0.0, 0.1]] * 4)
    evaluation = evaluate_scorer("x", probs, grades, types)
    by_type = {t.image_type: t for t in evaluation.by_type}
    assert by_type["a"].expected == pytest.approx(0.5) and by_type["a"].observed == 0.5
    assert by_type["b"].expected == pytest.approx(0.1) and by_type["b"].observed == 0.25
    assert by_type["a"].graded == 1.0 and by_type["b"].graded == 0.0
    assert evaluation.max_type_error == pytest.approx(0.15)


class _CountingReviewer:
    """Stands in for the CNN; counts its batches."""

    version = "cnn"

    def __init__(self) -> None:
        self.calls = 0

    def grade_batch(self, images, probabilities, threshold):  # type: ignore[no-untyped-def]
        self.calls += 1
        return torch.tensor([[0.1, 0.1, 0.8]] * len(images))

    def to(self, device=None):  # type: ignore[no-untyped-def]
        return self


def test_the_grader_runs_the_cnn_only_when_its_scorer_reads_it() -> None:
    signals, grades = _signals(200, 0)
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    probabilities = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    flip = torch.tensor([0.0, 0.1, 0.5, 0.9])
    cnn = _CountingReviewer()
    free = Grader("1", fit_grade_model(signals, grades, "signals"), cnn)  # type: ignore[arg-type]
    graded = free.grade_batch(images, probabilities, 0.5, flip_disagreement=flip)
    assert cnn.calls == 0 and graded.shape == (4, 3)
    maps = np.rint(probabilities[:, 0].numpy() * 255).astype(np.uint8)
    expected = {**mask_signals(maps, 0.5), FLIP: flip.double().numpy(), NOVELTY: np.full(4, np.nan)}
    np.testing.assert_allclose(graded, free.model.probabilities(expected))  # type: ignore[union-attr]
    combined = {**signals, REVIEWER: signals[FLIP]}
    reads = Grader("2", fit_grade_model(combined, grades, "combined"), cnn)  # type: ignore[arg-type]
    reads.grade_batch(images, probabilities, 0.5, flip_disagreement=flip)
    assert cnn.calls == 1
    np.testing.assert_allclose(reviewer_logit(np.array([0.5])), 0.0)


def _scores(auc_like: float, grades: np.ndarray, seed: int) -> np.ndarray:
    """(N, 3) probabilities whose P(grade 3) separates grade 3 by about `auc_like`."""
    rng = np.random.default_rng(seed)
    shift = np.sqrt(2) * NormalDist().inv_cdf(auc_like)  # binormal: AUC = Phi(shift / sqrt 2)
    p3 = 1 / (1 + np.exp(-(rng.normal(size=len(grades)) + shift * (grades == 3))))
    return np.column_stack([1 - p3, np.zeros_like(p3), p3])


def test_the_auc_standard_error_is_hanley_and_mcneils_and_matches_a_bootstrap() -> None:
    grades = np.array([3] * 50 + [1] * 50)
    types = np.full(100, "t")
    evaluation = evaluate_scorer("x", _scores(0.8, grades, 1), grades, types)
    auc = evaluation.ranking.auc_grade3
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    expected = np.sqrt((auc * (1 - auc) + 49 * (q1 - auc**2) + 49 * (q2 - auc**2)) / 2500)
    assert auc_standard_error(evaluation) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    probs = _scores(0.8, grades, 1)
    boot = []
    for _ in range(300):
        rows = rng.integers(0, 100, 100)
        if len(set(grades[rows])) == 2:
            boot.append(evaluate_scorer("x", probs[rows], grades[rows], types[rows]))
    spread = np.std([b.ranking.auc_grade3 for b in boot])
    assert auc_standard_error(evaluation) == pytest.approx(spread, rel=0.25)
    one_class = evaluate_scorer("x", probs[:50], grades[:50], types[:50])
    assert auc_standard_error(one_class) == np.inf


def test_a_scorer_better_by_less_than_a_standard_error_loses_to_the_simpler_one() -> None:
    """On few masks a CNN that fits them a little better is noise: the free signal grades."""
    grades = np.array([3] * 20 + [1] * 80)
    types = np.full(100, "t")
    flip = evaluate_scorer(FLIP, _scores(0.80, grades, 2), grades, types)
    cnn = evaluate_scorer(REVIEWER, _scores(0.84, grades, 3), grades, types)
    margin = auc_standard_error(cnn)
    assert 0 < cnn.ranking.auc_grade3 - flip.ranking.auc_grade3 < margin
    choice = choose_scorer({FLIP: flip, REVIEWER: cnn}, [FLIP, REVIEWER])
    assert choice is not None and choice.scorer == FLIP
    assert "by more than one standard error" in choice.reviewer_refused

    far = evaluate_scorer(REVIEWER, _scores(0.99, grades, 4), grades, types)
    assert far.ranking.auc_grade3 - flip.ranking.auc_grade3 > auc_standard_error(far)
    choice = choose_scorer({FLIP: flip, REVIEWER: far}, [FLIP, REVIEWER])
    assert choice is not None and choice.scorer == REVIEWER and choice.reviewer_refused == ""
