"""Grades from signals: the calibrated model that turns what is known about a mask into
P(grade 1 / 2 / 3), and the signals themselves (no torch here).

What is known about a predicted mask, one number each ("signals"; higher = more suspect for
the first three):

- `flip_disagreement`: 1 - IoU of the masks of the plain and the mirrored forward pass
  (`ml.segmentation.tta.flip_disagreement`; every inference backend returns it);
- `entropy`: mean binary entropy (bits per pixel) of the probability map;
- `novelty`: the mask model's new-image-type score of the image (`ml.novelty.model`);
- `mask_fraction`, `uncertain_share` (pixels with 0.1 < p < 0.9), `boundary` (mask pixels
  with a background 4-neighbour per square root of the mask's area) and `components`
  (connected parts of the mask): the mask's size and shape;
- `reviewer`: the logit of the CNN reviewer's P(grade 3) (`ml.reviewer.model`), where there is one.

A **scorer** is a named subset of them (`SCORERS`): each free signal alone, all free signals
together (`signals`), the CNN alone (`reviewer`) or everything (`combined`). A `GradeModel`
is a scorer fitted to graded masks: logistic regressions (scikit-learn) of grade 3 vs the
rest and of grade 1 vs 2 over the scorer's signals (fixed monotone transforms, missing
values filled with the training median, standardised), then Platt scaling of P(grade 3)
fitted on held-out predictions (`calibrated`): strictly monotone, so it keeps the ranking and
only moves the rates. It is stored as JSON (no pickle) and needs numpy only to grade.

Grade rule: 3 where the calibrated P(grade 3) >= 0.5 (more likely untrustworthy than not),
else the likelier of 1 and 2.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression

from maskfind_pipeline.ml.reviewer.config import (
    ENTROPY,
    FLIP,
    FREE_SIGNALS,
    GRADES,
    NOVELTY,
    REVIEWER,
    SCORERS,
    SHAPE_SIGNALS,
    SIGNALS,
)

__all__ = ["ENTROPY", "FLIP", "FREE_SIGNALS", "NOVELTY", "REVIEWER", "SCORERS", "SIGNALS"]

UNCERTAIN = (0.1, 0.9)
"""A pixel whose probability lies strictly between these is uncertain."""
FORMAT = 1
_LOG_SIGNALS = frozenset({NOVELTY, "boundary", "components"})
"""Non-negative signals with long tails, fed to the regression as log(1 + x)."""
_LOGIT_CLIP = 1e-6


def uses_reviewer(scorer: str) -> bool:
    """Whether `scorer` needs the CNN reviewer's output."""
    return REVIEWER in SCORERS[scorer]


def mask_signals(
    probabilities: np.ndarray, thresholds: float | np.ndarray
) -> dict[str, np.ndarray]:
    """The map- and shape-signals (N,) float64 of uint8 probability maps round(p * 255)
    (N, S, S) and the thresholds that made their masks (one, or one per map): `entropy`,
    `mask_fraction`, `uncertain_share`, `boundary`, `components`.

    The mask is `p >= threshold` in float32, as `ml.reviewer.model.binary_mask` takes it.
    """
    maps = np.asarray(probabilities)
    if maps.dtype != np.uint8 or maps.ndim != 3:
        raise ValueError(f"expected uint8 maps (N, S, S), got {maps.dtype} {maps.shape}")
    cuts = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (len(maps),))
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    clipped = np.clip(levels.astype(np.float64), 1e-7, 1 - 1e-7)
    bits = -(clipped * np.log2(clipped) + (1 - clipped) * np.log2(1 - clipped))
    uncertain = (levels > UNCERTAIN[0]) & (levels < UNCERTAIN[1])
    out = {name: np.empty(len(maps)) for name in (ENTROPY, *SHAPE_SIGNALS)}
    for i, probs in enumerate(maps):
        mask = (levels >= cuts[i])[probs]
        area = int(mask.sum())
        inner = np.asarray(ndimage.binary_erosion(mask, border_value=0), dtype=bool)
        out[ENTROPY][i] = float(bits[probs].mean())
        out["mask_fraction"][i] = area / mask.size
        out["uncertain_share"][i] = float(uncertain[probs].mean())
        out["boundary"][i] = float((mask & ~inner).sum()) / math.sqrt(max(area, 1))
        _, parts = ndimage.label(mask)  # pyright: ignore[reportGeneralTypeIssues]
        out["components"][i] = float(parts)
    return out


@dataclass(frozen=True)
class GradeModel:
    """A fitted scorer: P(grade 1, 2, 3) of masks from their signals (module docstring).

    Two logistic regressions over the standardised, transformed signals: one of grade 3 vs
    the rest (`bad_*`), one of grade 1 vs grade 2 among the rest (`good_*`); P(grade 3) then
    goes through Platt scaling (`calibration`).

    Attributes:
        scorer: its name in `SCORERS`.
        features: the signals it reads, in order.
        fill: per feature, the (transformed) value standing in for a missing one.
        mean, scale: the standardisation of the transformed features.
        bad_coef, bad_intercept: the grade-3 regression.
        good_coef, good_intercept: the grade-1-among-1-and-2 regression.
        calibration: Platt scaling (a, b) of P(grade 3): sigmoid(a * logit(p) + b); (1, 0)
            leaves it as it is.
        info: what it was fitted on (counts), for the record.
    """

    scorer: str
    features: tuple[str, ...]
    fill: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    bad_coef: np.ndarray
    bad_intercept: float
    good_coef: np.ndarray
    good_intercept: float
    calibration: tuple[float, float] = (1.0, 0.0)
    info: Mapping[str, Any] | None = None

    @property
    def uses_reviewer(self) -> bool:
        return REVIEWER in self.features

    def raw_probabilities(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, 3) P(grade 1, 2, 3) of the regressions, before calibration."""
        x = (self._matrix(signals) - self.mean) / self.scale
        p3 = _sigmoid(x @ self.bad_coef + self.bad_intercept)
        p1_of_rest = _sigmoid(x @ self.good_coef + self.good_intercept)
        return np.column_stack([(1 - p3) * p1_of_rest, (1 - p3) * (1 - p1_of_rest), p3])

    def probabilities(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, 3) calibrated P(grade 1, 2, 3); rows sum to 1."""
        return calibrate(self.raw_probabilities(signals), self.calibration)

    def grades(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """Grade 1, 2 or 3 of each mask (`grades_of` its calibrated probabilities)."""
        return grades_of(self.probabilities(signals))

    def calibrated(self, raw_p3: np.ndarray, bad: np.ndarray) -> GradeModel:
        """This model with Platt scaling fitted on held-out raw P(grade 3) and whether each
        of those masks really was grade 3."""
        return replace(self, calibration=fit_platt(raw_p3, bad))

    def _matrix(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        missing = [f for f in self.features if f not in signals]
        if missing:
            raise KeyError(f"scorer {self.scorer!r} needs the signals {missing}")
        x = transformed(signals, self.features)
        return np.where(np.isfinite(x), x, self.fill)

    def to_json(self) -> str:
        """Stable JSON of everything needed to grade."""
        arrays = ("fill", "mean", "scale", "bad_coef", "good_coef")
        return json.dumps(
            {
                "format": FORMAT,
                "scorer": self.scorer,
                "features": list(self.features),
                **{name: getattr(self, name).tolist() for name in arrays},
                "bad_intercept": self.bad_intercept,
                "good_intercept": self.good_intercept,
                "calibration": list(self.calibration),
                "info": dict(self.info or {}),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> GradeModel:
        """Read `to_json`'s output.

        Raises:
            ValueError: another format, or arrays that do not fit its features.
        """
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"grade model format {raw.get('format')!r}, expected {FORMAT}")
        features = tuple(raw["features"])
        names = ("fill", "mean", "scale", "bad_coef", "good_coef")
        arrays = {k: np.asarray(raw[k], dtype=np.float64) for k in names}
        if any(a.shape != (len(features),) for a in arrays.values()):
            raise ValueError(f"grade model arrays do not fit its {len(features)} features")
        a, b = (float(v) for v in raw["calibration"])
        return cls(
            scorer=str(raw["scorer"]),
            features=features,
            bad_intercept=float(raw["bad_intercept"]),
            good_intercept=float(raw["good_intercept"]),
            calibration=(a, b),
            info=raw.get("info") or {},
            **arrays,
        )


def transformed(signals: Mapping[str, np.ndarray], features: Sequence[str]) -> np.ndarray:
    """(N, F) float64: each feature's signal, long-tailed ones as log(1 + max(x, 0))."""
    columns = []
    for name in features:
        values = np.asarray(signals[name], dtype=np.float64)
        columns.append(np.log1p(np.maximum(values, 0.0)) if name in _LOG_SIGNALS else values)
    return np.stack(columns, axis=1) if columns else np.zeros((0, 0))


def fit_grade_model(
    signals: Mapping[str, np.ndarray], grades: np.ndarray, scorer: str, *, c: float = 1.0
) -> GradeModel:
    """Fit `scorer` to graded masks (uncalibrated: see `GradeModel.calibrated`).

    A scorer of one signal keeps its known direction: more of it never means less likely
    grade 3 (a fit that says otherwise, e.g. from a handful of masks, is flattened to the
    base rate), so its ranking is the signal's own.

    Args:
        signals: per signal name, (N,) values (NaN where unknown).
        grades: (N,) true grades 1..3.
        scorer: a name in `SCORERS`.
        c: inverse L2 regularisation strength of the regressions.

    Raises:
        ValueError: no masks of grade 3, or only such masks.
    """
    features = SCORERS[scorer]
    grades = np.asarray(grades, dtype=np.int64)
    bad = grades == 3
    if not bad.any() or bad.all():
        raise ValueError(f"{scorer}: need graded masks with and without grade 3, got {len(grades)}")
    x = transformed(signals, features)
    fill = np.array([_median(column) for column in x.T])
    x = np.where(np.isfinite(x), x, fill)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (x - mean) / scale
    bad_coef, bad_intercept = _binary_fit(z, bad, c)
    if len(features) == 1 and bad_coef[0] < 0:
        bad_coef, bad_intercept = np.zeros(1), float(_logit(np.array([bad.mean()]))[0])
    good_coef, good_intercept = _binary_fit(z[~bad], grades[~bad] == 1, c)
    counts = {f"n_grade{g}": int((grades == g).sum()) for g in GRADES}
    return GradeModel(
        scorer, features, fill, mean, scale, bad_coef, bad_intercept, good_coef, good_intercept,
        info=counts,
    )  # fmt: skip


def _binary_fit(x: np.ndarray, positive: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Logistic regression coefficients and intercept of `positive` on `x`; with one class
    only, none and the (clipped) log-odds of that class."""
    if positive.all() or not positive.any():
        return np.zeros(x.shape[1]), float(_logit(np.array([float(positive.mean())]))[0])
    regression = LogisticRegression(C=c, max_iter=2000)
    regression.fit(x, positive)
    coef, intercept = np.asarray(regression.coef_), np.asarray(regression.intercept_)
    return coef[0].astype(np.float64), float(intercept[0])


def fit_platt(raw_p3: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    """Platt scaling (a, b): P(bad) = sigmoid(a * logit(p) + b), fitted by logistic regression
    on held-out raw probabilities; (1, 0) when one class is missing. `a` is kept positive so
    the ranking never flips."""
    p = np.asarray(raw_p3, dtype=np.float64)
    y = np.asarray(bad, dtype=bool)
    keep = np.isfinite(p)
    p, y = p[keep], y[keep]
    if y.all() or not y.any():
        return (1.0, 0.0)
    regression = LogisticRegression(C=100.0, max_iter=1000)
    regression.fit(_logit(p)[:, None], y)
    a = float(np.asarray(regression.coef_)[0, 0])
    b = float(np.asarray(regression.intercept_)[0])
    return (a, b) if a > 0 else (1.0, 0.0)


def calibrate(raw: np.ndarray, calibration: tuple[float, float]) -> np.ndarray:
    """(N, 3) probabilities with P(grade 3) Platt-scaled and P(grade 1), P(grade 2) rescaled
    to fill the rest in their own proportion."""
    raw = np.asarray(raw, dtype=np.float64)
    a, b = calibration
    p3 = _sigmoid(a * _logit(raw[:, 2]) + b)
    rest = raw[:, :2].sum(axis=1, keepdims=True)
    share = np.where(rest > 0, raw[:, :2] / np.where(rest > 0, rest, 1.0), 0.5)
    return np.column_stack([share * (1.0 - p3)[:, None], p3])


def grades_of(probabilities: np.ndarray) -> np.ndarray:
    """Grade 3 where P(grade 3) >= 0.5, else 1 or 2, whichever is likelier (int64 (N,))."""
    probs = np.asarray(probabilities, dtype=np.float64)
    return np.where(probs[:, 2] >= 0.5, 3, np.where(probs[:, 0] >= probs[:, 1], 1, 2)).astype(
        np.int64
    )


def type_folds(image_types: Sequence[str], count: int) -> dict[str, int]:
    """Each image type's fold 0..K-1, K = min(count, number of types): types ordered by a
    hash of their names and dealt round-robin, so every type is held out exactly once and a
    new type moves few others."""
    names = sorted(set(image_types), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    folds = max(1, min(count, len(names)))
    return {name: position % folds for position, name in enumerate(names)}


def cross_fitted(
    signals: Mapping[str, np.ndarray],
    grades: np.ndarray,
    folds: np.ndarray,
    fit_on: np.ndarray,
    scorer: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of `scorer`: every sample is predicted by a model fitted on
    the `fit_on` samples of the other folds, then calibrated by Platt scaling fitted on the
    other folds' out-of-fold predictions (so calibration is judged out of fold too).

    A fold whose other folds hold no grade 3, or only grade 3, cannot fit `scorer`: its
    samples get those folds' (smoothed) grade shares, all it can know.

    Returns:
        (raw, calibrated): (N, 3) each.
    """
    grades = np.asarray(grades, dtype=np.int64)
    folds = np.asarray(folds, dtype=np.int64)
    fit_on = np.asarray(fit_on, dtype=bool)
    raw = np.full((len(grades), len(GRADES)), np.nan)
    for fold in np.unique(folds):
        train = fit_on & (folds != fold)
        try:
            model = fit_grade_model(_rows(signals, train), grades[train], scorer)
        except ValueError:
            raw[folds == fold] = base_rates(grades[train])
            continue
        rows = folds == fold
        raw[rows] = model.raw_probabilities(_rows(signals, rows))
    calibrated = np.full_like(raw, np.nan)
    bad = grades == 3
    for fold in np.unique(folds):
        others = fit_on & (folds != fold) & np.isfinite(raw[:, 2])
        rows = (folds == fold) & np.isfinite(raw[:, 2])
        if rows.any():
            platt = fit_platt(raw[others, 2], bad[others])
            calibrated[rows] = calibrate(raw[rows], platt)
    return raw, calibrated


def base_rates(grades: np.ndarray) -> np.ndarray:
    """(3,) P(grade 1, 2, 3) of a mask known only to come from where `grades` came from, with
    add-one-half smoothing (so no grade is certain, and no grades at all is a coin flip)."""
    counts = np.array([(grades == g).sum() for g in GRADES], dtype=np.float64)
    p3 = (counts[2] + 0.5) / (counts.sum() + 1)
    p1_of_rest = (counts[0] + 0.5) / (counts[:2].sum() + 1)
    return np.array([(1 - p3) * p1_of_rest, (1 - p3) * (1 - p1_of_rest), p3])


def _rows(signals: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(values)[rows] for name, values in signals.items()}


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else 0.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)
