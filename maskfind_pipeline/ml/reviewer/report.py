"""How well each scorer grades a set of masks: ranking (grade-3 ROC AUC, risk-coverage) and
calibration (expected vs observed share of grade 3, per image type), with plots.

Every scorer is judged on the same masks with its out-of-fold, calibrated P(grade 3)
(`ml.reviewer.grading.cross_fitted`). Calibration: for each image type, the **expected** bad share
is the mean P(grade 3) of its masks, the **observed** one the share of its masks that really are
grade 3, and the **graded** one the share graded 3 (`ml.reviewer.grading.grades_of`); the error is
|expected - observed|. `ece` is the expected calibration error over ten equal-width bins of P(grade
3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from maskfind_pipeline.ml.plots import _png
from maskfind_pipeline.ml.reviewer.grading import FREE_SIGNALS, SCORERS, grades_of, uses_reviewer
from maskfind_pipeline.ml.reviewer.metrics import ScoreEvaluation, score_evaluation

_BINS = 10


@dataclass(frozen=True)
class TypeCalibration:
    """One image type's expected, observed and graded share of grade-3 masks."""

    image_type: str
    n: int
    expected: float
    observed: float
    graded: float

    @property
    def error(self) -> float:
        return abs(self.expected - self.observed)


@dataclass(frozen=True)
class ScorerEvaluation:
    """One scorer on one set of masks: its ranking and its calibration."""

    ranking: ScoreEvaluation
    ece: float
    by_type: tuple[TypeCalibration, ...]

    @property
    def max_type_error(self) -> float:
        """The largest |expected - observed| bad share over the image types (NaN if none)."""
        return max((t.error for t in self.by_type), default=float("nan"))

    def row(self) -> dict[str, float | int | str]:
        return {
            "scorer": self.ranking.name,
            "n": self.ranking.n,
            "auc_grade3": self.ranking.auc_grade3,
            "aurc": self.ranking.aurc,
            "aurc_optimal": self.ranking.aurc_optimal,
            "ece": self.ece,
            "max_type_calibration_error": self.max_type_error,
        }


def evaluate_scorer(
    name: str, probabilities: np.ndarray, grades: np.ndarray, image_types: np.ndarray
) -> ScorerEvaluation:
    """Judge (N, 3) calibrated grade probabilities against true grades, on the rows where
    they are finite."""
    probs = np.asarray(probabilities, dtype=np.float64)
    grades = np.asarray(grades, dtype=np.int64)
    types = np.asarray(image_types, dtype=object)
    finite = np.isfinite(probs).all(axis=1)
    probs, grades, types = probs[finite], grades[finite], types[finite]
    p3, bad = probs[:, 2], grades == 3
    graded = grades_of(probs) == 3 if len(probs) else np.zeros(0, bool)
    by_type = tuple(
        TypeCalibration(
            str(t),
            int((types == t).sum()),
            float(p3[types == t].mean()),
            float(bad[types == t].mean()),
            float(graded[types == t].mean()),
        )
        for t in sorted(set(types.tolist()))
    )
    ranking = score_evaluation(name, p3, grades)
    return ScorerEvaluation(ranking, expected_calibration_error(p3, bad), by_type)


def expected_calibration_error(p3: np.ndarray, bad: np.ndarray, bins: int = _BINS) -> float:
    """Sum over equal-width bins of P(grade 3) of (bin share) x |mean P - observed share|."""
    if not len(p3):
        return float("nan")
    which = np.minimum((np.asarray(p3) * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in np.unique(which):
        rows = which == b
        total += rows.mean() * abs(float(p3[rows].mean()) - float(bad[rows].mean()))
    return total


def best(
    evaluations: Mapping[str, ScorerEvaluation], among: Sequence[str]
) -> tuple[str, float] | None:
    """The scorer of `among` with the highest grade-3 AUC (the earlier one on a tie), and that
    AUC; None when none of them has one."""
    scored = [
        (evaluations[n].ranking.auc_grade3, -i, n)
        for i, n in enumerate(among)
        if n in evaluations and not math.isnan(evaluations[n].ranking.auc_grade3)
    ]
    if not scored:
        return None
    auc, _, name = max(scored)
    return name, auc


@dataclass(frozen=True)
class Choice:
    """The scorer production grades with, and what it was chosen over.

    Attributes:
        scorer: the winner: the simplest scorer within one standard error of the highest
            out-of-fold grade-3 AUC.
        auc: its AUC.
        best_free: the best free signal alone (`FREE_SIGNALS`) and its AUC, if any was judged.
        reviewer_refused: why no scorer that reads the CNN reviewer grades (empty when the
            winner reads it, or none was judged).
    """

    scorer: str
    auc: float
    best_free: tuple[str, float] | None
    reviewer_refused: str


def choose_scorer(
    evaluations: Mapping[str, ScorerEvaluation], scorers: Sequence[str]
) -> Choice | None:
    """The simplest of `scorers` whose grade-3 AUC is within one standard error of the best
    one's on the same masks (the one-standard-error rule: one free signal before several, free
    signals before the CNN), so a scorer that only fits a small sample better does not win;
    a CNN reviewer that does not beat it is refused with the numbers. None: nothing judged."""
    winner = best(evaluations, scorers)
    if winner is None:
        return None
    top, top_auc = winner
    margin = auc_standard_error(evaluations[top])
    judged = [s for s in scorers if s in evaluations and not math.isnan(_auc(evaluations[s]))]
    simplest = sorted(judged, key=lambda s: (uses_reviewer(s), len(SCORERS[s])))
    name = next(s for s in simplest if _auc(evaluations[s]) >= top_auc - margin)
    auc = _auc(evaluations[name])
    best_free = best(evaluations, [s for s in scorers if s in FREE_SIGNALS])
    cnn = best(evaluations, [s for s in scorers if uses_reviewer(s)])
    refused = ""
    if cnn is not None and not uses_reviewer(name):
        free = ""
        if best_free:
            free = f"; the best free signal alone: {best_free[0]} ({best_free[1]:.3f})"
        refused = (
            f"the CNN reviewer ({cnn[0]}: grade-3 AUC {cnn[1]:.3f}, out of fold) does not beat "
            f"{name} ({auc:.3f}) by more than one standard error ({margin:.3f}){free}: "
            f"production grades with {name}, calibrated"
        )
    return Choice(name, auc, best_free, refused)


def auc_standard_error(evaluation: ScorerEvaluation) -> float:
    """The standard error of a grade-3 ROC AUC (Hanley & McNeil, 1982), from the AUC and the
    numbers of grade-3 and better masks it was measured on; infinite with one class only."""
    auc = _auc(evaluation)
    bad = round(sum(t.observed * t.n for t in evaluation.by_type))
    good = sum(t.n for t in evaluation.by_type) - bad
    if bad == 0 or good == 0 or math.isnan(auc):
        return math.inf
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (bad - 1) * (q1 - auc**2) + (good - 1) * (q2 - auc**2)
    return math.sqrt(max(variance, 0.0) / (bad * good))


def _auc(evaluation: ScorerEvaluation) -> float:
    return evaluation.ranking.auc_grade3


def calibration_png(evaluation: ScorerEvaluation, title: str = "") -> bytes:
    """Per image type: the expected bad share (mean P(grade 3)) against the observed one, the
    diagonal and a band of +-0.10 around it."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.fill_between([0, 1], [-0.1, 0.9], [0.1, 1.1], color="tab:green", alpha=0.12)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for entry in evaluation.by_type:
        ax.scatter(entry.observed, entry.expected, s=12 + 2 * math.sqrt(entry.n))
        ax.annotate(entry.image_type[:24], (entry.observed, entry.expected), fontsize=6)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.set(xlabel="observed share of grade 3", ylabel="expected (mean P(grade 3))")
    name = evaluation.ranking.name
    ax.set_title(f"calibration per image type: {name} {title}".strip(), fontsize=9)
    return _png(fig)
