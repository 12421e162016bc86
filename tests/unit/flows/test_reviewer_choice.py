"""Which masks the grader is fitted, chosen and calibrated on: the champion's, as production
grades them; the fold models' join only where the champion's are not graded both ways."""

from __future__ import annotations

import numpy as np

from maskfind_pipeline.flows.reviewer import (
    MIN_PER_SIDE,
    PRODUCTION_LIKE,
    SUBSETS,
    WITH_FOLD_MODELS,
    _candidates,
    _deciding,
)


class _Samples:
    """`ReviewerSamples.of_origin` over a list of origins."""

    def __init__(self, origins: list[str]) -> None:
        self.origins = np.asarray(origins)

    def of_origin(self, *names: str) -> np.ndarray:
        return np.isin(self.origins, names)


def _case(champion: list[int], fold: list[int], failure: tuple[int, ...] = ()) -> str:
    origins = ["champion"] * len(champion) + ["fold"] * len(fold) + ["failure"] * len(failure)
    grades = np.asarray([*champion, *fold, *failure])
    return _deciding(_Samples(origins), grades)  # type: ignore[arg-type]


def test_the_champions_masks_decide_when_graded_both_ways() -> None:
    n = MIN_PER_SIDE
    assert _case([3] * n + [1] * n, [3] * 50) == PRODUCTION_LIKE
    assert SUBSETS[PRODUCTION_LIKE] == ("champion", "failure")  # no fold model's mask


def test_relabeled_failures_count_as_the_champions_masks() -> None:
    n = MIN_PER_SIDE
    assert _case([1] * n, [3] * 50, failure=(3,) * n) == PRODUCTION_LIKE


def test_too_few_bad_or_good_champion_masks_bring_in_the_fold_models() -> None:
    n = MIN_PER_SIDE
    assert _case([3] * (n - 1) + [2] * 100, [3] * 50) == WITH_FOLD_MODELS
    assert _case([3] * 100 + [1] * (n - 1), [1] * 50) == WITH_FOLD_MODELS
    assert set(SUBSETS[WITH_FOLD_MODELS]) == {"champion", "fold", "failure"}


def test_with_the_fold_models_masks_only_flip_disagreement_is_a_candidate() -> None:
    scorers = ("flip_disagreement", "entropy", "novelty", "reviewer", "signals", "combined")
    assert _candidates(PRODUCTION_LIKE, scorers) == scorers
    assert _candidates(WITH_FOLD_MODELS, scorers) == ("flip_disagreement",)
    assert _candidates(WITH_FOLD_MODELS, ("entropy", "signals")) == ("entropy", "signals")
