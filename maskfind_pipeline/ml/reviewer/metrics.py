"""How well the reviewer flags bad masks, against two baselines from the probability map alone.

Scores, each "higher = more likely untrustworthy":

- `reviewer`: P(grade 3);
- `entropy`: the mean binary entropy of the probability map (bits per pixel);
- `flip_disagreement`: 1 - IoU of the mask with the mask predicted on the mirrored image
  (undefined, NaN, for degraded masks: no model made them).

For each score: ROC AUC of grade 3 vs the rest (`auc_grade3`), ROC AUC of grade 2 or 3 vs grade
1 (`auc_imperfect`), and the risk-coverage curve. **Risk-coverage**: masks are accepted most
confident first (confidence = minus the score, so 1 - P(grade 3) for the reviewer); at coverage
k/n the risk is the share of grade-3 masks among the k accepted ones, i.e. untrustworthy masks
let through without review. `aurc` is the mean risk over k = 1..n (ties in the score count at
their expected risk under a random order); `aurc_optimal` that of a perfect ranking (all
grade-3 masks last), the same for every score; lower is better. Each score is judged on the rows
where it is finite (`n`). For the reviewer alone: one-vs-rest AUC per grade and their macro mean,
and the confusion matrix of its most probable grade. Metrics come from scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from maskfind_pipeline.ml.plots import _png
from maskfind_pipeline.ml.reviewer.config import GRADES

REVIEWER = "reviewer"
ENTROPY = "entropy"
FLIP = "flip_disagreement"
_COLOURS = {REVIEWER: "tab:red", ENTROPY: "tab:blue", FLIP: "tab:green"}
_CURVE_POINTS = 200


@dataclass(frozen=True)
class ScoreEvaluation:
    """How one score ranks masks (see the module docstring).

    Attributes:
        name: `reviewer`, `entropy` or `flip_disagreement`.
        n: rows where the score is finite.
        auc_grade3: ROC AUC of grade 3 vs the rest (NaN with one class only).
        auc_imperfect: ROC AUC of grades 2 and 3 vs grade 1.
        aurc: area under the risk-coverage curve (lower is better).
        aurc_optimal: the AURC of a perfect ranking of the same rows.
        roc: (false positive rates, true positive rates) of grade 3 vs the rest.
        risk_coverage: (coverages, risks), thinned to at most ~200 points.
    """

    name: str
    n: int
    auc_grade3: float
    auc_imperfect: float
    aurc: float
    aurc_optimal: float
    roc: tuple[list[float], list[float]]
    risk_coverage: tuple[list[float], list[float]]

    def scalars(self) -> dict[str, float]:
        return {
            "n": float(self.n),
            "auc_grade3": self.auc_grade3,
            "auc_imperfect": self.auc_imperfect,
            "aurc": self.aurc,
            "aurc_optimal": self.aurc_optimal,
        }


@dataclass(frozen=True)
class ReviewerEvaluation:
    """The reviewer and both baselines on one set of graded masks.

    Attributes:
        n: masks judged.
        grade_counts: masks per true grade.
        scores: per score name, its `ScoreEvaluation`.
        auc_by_grade: the reviewer's one-vs-rest ROC AUC of each grade (NaN if absent).
        macro_auc: their mean over the grades present.
        confusion: counts, rows true grade 1..3, columns the reviewer's most probable grade.
    """

    n: int
    grade_counts: dict[int, int]
    scores: dict[str, ScoreEvaluation]
    auc_by_grade: dict[int, float]
    macro_auc: float
    confusion: list[list[int]]

    @property
    def accuracy(self) -> float:
        matrix = np.asarray(self.confusion)
        return float(np.trace(matrix) / max(matrix.sum(), 1))

    def rows(self) -> list[dict[str, object]]:
        """One row per score: its name and scalars (a table for metadata)."""
        return [{"score": name, **s.scalars()} for name, s in self.scores.items()]

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Scalars for a metrics log: `auc_grade3/reviewer`, ..., `macro_auc`, `accuracy`."""
        out = {
            f"{prefix}{key}/{name}": value
            for name, score in self.scores.items()
            for key, value in score.scalars().items()
        }
        out.update({f"{prefix}auc_grade{g}_vs_rest": v for g, v in self.auc_by_grade.items()})
        out.update({f"{prefix}n_grade{g}": float(c) for g, c in self.grade_counts.items()})
        out[f"{prefix}macro_auc"] = self.macro_auc
        out[f"{prefix}accuracy"] = self.accuracy
        return out

    def plots(self, title: str = "") -> dict[str, bytes]:
        """PNG bytes: `roc_grade3`, `risk_coverage`, `confusion`."""
        return {
            "roc_grade3": roc_png(self.scores, title),
            "risk_coverage": risk_coverage_png(self.scores, title),
            "confusion": confusion_png(self.confusion, title),
        }


def evaluate_reviewer(
    grade_probs: np.ndarray,
    true_grades: np.ndarray,
    *,
    entropy: np.ndarray,
    flip_disagreement: np.ndarray,
) -> ReviewerEvaluation:
    """Judge the reviewer's grade probabilities and both baselines against the true grades.

    Args:
        grade_probs: (N, 3) P(grade 1), P(grade 2), P(grade 3).
        true_grades: (N,) grades 1..3 from the IoU.
        entropy: (N,) the entropy baseline.
        flip_disagreement: (N,) the flip baseline, NaN where undefined.
    """
    probs = np.asarray(grade_probs, dtype=np.float64)
    grades = np.asarray(true_grades, dtype=np.int64)
    if probs.shape != (len(grades), len(GRADES)):
        raise ValueError(f"grade probabilities {probs.shape} for {len(grades)} grades")
    if not np.isin(grades, GRADES).all():
        raise ValueError(f"grades must be in {GRADES}")
    scores = {
        REVIEWER: probs[:, 2],
        ENTROPY: np.asarray(entropy, np.float64),
        FLIP: np.asarray(flip_disagreement, np.float64),
    }
    by_grade = {g: safe_auc(grades == g, probs[:, g - 1]) for g in GRADES}
    present = [v for v in by_grade.values() if not math.isnan(v)]
    predicted = np.argmax(probs, axis=1) + 1
    return ReviewerEvaluation(
        n=len(grades),
        grade_counts={g: int(np.sum(grades == g)) for g in GRADES},
        scores={name: score_evaluation(name, s, grades) for name, s in scores.items()},
        auc_by_grade=by_grade,
        macro_auc=float(np.mean(present)) if present else float("nan"),
        confusion=confusion_matrix(grades, predicted, labels=list(GRADES)).tolist(),
    )


def score_evaluation(name: str, score: np.ndarray, grades: np.ndarray) -> ScoreEvaluation:
    """AUCs and risk-coverage of one score (higher = worse) on its finite rows."""
    if score.shape != grades.shape:
        raise ValueError(f"{name}: {score.shape} scores for {grades.shape} grades")
    finite = np.isfinite(score)
    values, bad = score[finite], grades[finite] == 3
    coverage, risk = risk_coverage(values, bad)
    roc = ([0.0, 1.0], [0.0, 1.0])
    if 0 < bad.sum() < bad.size:
        fpr, tpr, _ = roc_curve(bad, values)
        roc = (fpr.tolist(), tpr.tolist())
    keep = _thin(len(coverage))
    return ScoreEvaluation(
        name=name,
        n=int(values.size),
        auc_grade3=safe_auc(bad, values),
        auc_imperfect=safe_auc(grades[finite] >= 2, values),
        aurc=float(risk.mean()) if risk.size else float("nan"),
        aurc_optimal=optimal_aurc(bad),
        roc=roc,
        risk_coverage=(coverage[keep].tolist(), risk[keep].tolist()),
    )


def safe_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """sklearn's ROC AUC, NaN when only one class is present."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def risk_coverage(score: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n and risk (share of `bad` among the k lowest scores) for k = 1..n.

    Rows of equal score are accepted together in an unknown order: within such a group the
    count of bad rows grows linearly (its expectation under a random order).
    """
    n = len(score)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(score, kind="stable")
    ranked, ranked_bad = score[order], bad[order].astype(np.float64)
    _, starts, sizes = np.unique(ranked, return_index=True, return_counts=True)
    group_bad = np.add.reduceat(ranked_bad, starts)
    before = np.concatenate(([0.0], np.cumsum(group_bad)[:-1]))
    group = np.repeat(np.arange(len(starts)), sizes)
    within = np.arange(n) - starts[group] + 1
    expected_bad = before[group] + within * group_bad[group] / sizes[group]
    accepted = np.arange(1, n + 1)
    return accepted / n, expected_bad / accepted


def optimal_aurc(bad: np.ndarray) -> float:
    """AURC of the perfect ranking: every bad row accepted last."""
    n = len(bad)
    if n == 0:
        return float("nan")
    accepted = np.arange(1, n + 1)
    good = n - int(np.sum(bad))
    return float(np.mean(np.maximum(accepted - good, 0) / accepted))


def _thin(count: int) -> np.ndarray:
    if count <= _CURVE_POINTS:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, _CURVE_POINTS).round().astype(np.int64))


def roc_png(scores: Mapping[str, ScoreEvaluation], title: str = "") -> bytes:
    """ROC curves of grade 3 vs the rest, one per score, AUC in the legend."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for name, score in scores.items():
        fpr, tpr = score.roc
        label = f"{name} AUC {score.auc_grade3:.4f} (n={score.n})"
        ax.plot(fpr, tpr, label=label, color=_COLOURS.get(name))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(f"grade 3 vs rest {title}".strip())
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def risk_coverage_png(scores: Mapping[str, ScoreEvaluation], title: str = "") -> bytes:
    """Risk (share of grade 3 among accepted masks) against coverage, one curve per score."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for name, score in scores.items():
        coverage, risk = score.risk_coverage
        label = f"{name} AURC {score.aurc:.4f} (n={score.n})"
        ax.plot(coverage, risk, label=label, color=_COLOURS.get(name))
    optimal = next(iter(scores.values()), None)
    if optimal is not None:
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.plot([], [], " ", label=f"optimal AURC {optimal.aurc_optimal:.4f}")
    ax.set(xlabel="coverage (share of masks accepted)", ylabel="risk (grade 3 among accepted)")
    ax.set_title(f"risk-coverage {title}".strip())
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def confusion_png(confusion: list[list[int]], title: str = "") -> bytes:
    """The reviewer's confusion matrix: true grade (rows) x most probable grade (columns)."""
    matrix = np.asarray(confusion)
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.subplots()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, col] > 0.5 else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=10, color=colour)
    ticks = list(range(len(GRADES)))
    ax.set_xticks(ticks, [str(g) for g in GRADES])
    ax.set_yticks(ticks, [str(g) for g in GRADES])
    ax.set(xlabel="reviewer's grade", ylabel="true grade")
    ax.set_title(f"confusion {title}".strip())
    return _png(fig)
