"""The reviewer's evaluation against scikit-learn and hand-computed risk-coverage."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from maskfind_pipeline.ml.reviewer.metrics import (
    evaluate_reviewer,
    optimal_aurc,
    risk_coverage,
    score_evaluation,
)

PNG = b"\x89PNG\r\n\x1a\n"


def random_case(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grades = rng.integers(1, 4, size=n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[grades - 1]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    entropy = rng.random(n) + 0.3 * (grades == 3)
    return probs, grades, entropy


def test_aucs_and_confusion_agree_with_scikit_learn() -> None:
    probs, grades, entropy = random_case()
    flip = np.where(np.arange(len(grades)) % 4 == 0, np.nan, entropy[::-1])
    ev = evaluate_reviewer(probs, grades, entropy=entropy, flip_disagreement=flip)
    bad = grades == 3
    assert ev.scores["reviewer"].auc_grade3 == pytest.approx(roc_auc_score(bad, probs[:, 2]))
    assert ev.scores["entropy"].auc_grade3 == pytest.approx(roc_auc_score(bad, entropy))
    assert ev.scores["entropy"].auc_imperfect == pytest.approx(roc_auc_score(grades >= 2, entropy))
    finite = ~np.isnan(flip)
    assert ev.scores["flip_disagreement"].n == finite.sum()
    assert ev.scores["flip_disagreement"].auc_grade3 == pytest.approx(
        roc_auc_score(bad[finite], flip[finite])
    )
    macro = roc_auc_score(grades, probs, multi_class="ovr", average="macro")
    assert ev.macro_auc == pytest.approx(macro)
    predicted = probs.argmax(axis=1) + 1
    assert ev.confusion == confusion_matrix(grades, predicted, labels=[1, 2, 3]).tolist()
    assert ev.accuracy == pytest.approx(np.mean(predicted == grades))
    assert ev.grade_counts == {g: int(np.sum(grades == g)) for g in (1, 2, 3)}


def test_risk_coverage_by_hand() -> None:
    score = np.array([0.4, 0.1, 0.3, 0.2])
    bad = np.array([True, False, False, True])
    # Accepted in score order 0.1 (good), 0.2 (bad), 0.3 (good), 0.4 (bad).
    coverage, risk = risk_coverage(score, bad)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 2 / 4])
    evaluation = score_evaluation("s", score, np.where(bad, 3, 1))
    assert evaluation.aurc == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert evaluation.aurc_optimal == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    assert optimal_aurc(bad) == evaluation.aurc_optimal


def test_tied_scores_count_at_their_expected_risk() -> None:
    _, risk = risk_coverage(np.array([0.5, 0.5, 0.9]), np.array([True, False, True]))
    np.testing.assert_allclose(risk, [0.5, 0.5, 2 / 3])


def test_a_perfect_ranking_reaches_the_optimal_aurc_and_auc_one() -> None:
    grades = np.array([1, 2, 3, 1, 3, 2])
    probs = np.eye(3)[grades - 1] * 0.9 + 0.1 / 3
    ev = evaluate_reviewer(probs, grades, entropy=-probs[:, 2], flip_disagreement=probs[:, 2])
    reviewer = ev.scores["reviewer"]
    assert reviewer.auc_grade3 == 1.0 and ev.macro_auc == 1.0
    assert reviewer.aurc == pytest.approx(reviewer.aurc_optimal)
    assert ev.scores["entropy"].auc_grade3 == 0.0
    assert ev.scores["entropy"].aurc > reviewer.aurc


def test_missing_grades_give_nan_not_errors() -> None:
    probs = np.full((4, 3), 1 / 3)
    ev = evaluate_reviewer(
        probs, np.array([1, 1, 2, 2]), entropy=np.zeros(4), flip_disagreement=np.full(4, np.nan)
    )
    assert np.isnan(ev.scores["reviewer"].auc_grade3)
    assert np.isnan(ev.auc_by_grade[3]) and ev.macro_auc == pytest.approx(0.5)
    assert ev.scores["flip_disagreement"].n == 0
    assert ev.scores["reviewer"].aurc == 0.0


def test_rows_flat_and_plots() -> None:
    probs, grades, entropy = random_case(60)
    ev = evaluate_reviewer(probs, grades, entropy=entropy, flip_disagreement=entropy)
    assert [row["score"] for row in ev.rows()] == ["reviewer", "entropy", "flip_disagreement"]
    flat = ev.flat("test_")
    assert flat["test_auc_grade3/reviewer"] == ev.scores["reviewer"].auc_grade3
    assert {"test_macro_auc", "test_aurc/entropy", "test_n_grade3"} <= flat.keys()
    plots = ev.plots("unit")
    assert set(plots) == {"roc_grade3", "risk_coverage", "confusion"}
    assert all(png.startswith(PNG) for png in plots.values())


def test_misaligned_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="grade probabilities"):
        evaluate_reviewer(
            np.ones((3, 2)), np.array([1, 2, 3]), entropy=np.zeros(3), flip_disagreement=np.zeros(3)
        )
    with pytest.raises(ValueError, match="grades must be"):
        evaluate_reviewer(
            np.ones((2, 3)), np.array([0, 2]), entropy=np.zeros(2), flip_disagreement=np.zeros(2)
        )
