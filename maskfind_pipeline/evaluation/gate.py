"""The promotion gate: a candidate may replace the champion only if no image type regressed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from maskfind_pipeline.core_config import CoreConfig


class GatePolicy(CoreConfig):
    """Per-type tolerance, the minimum test images for a type to count, the no-champion floor."""

    tolerance: float = 0.01
    """How far below the champion's mIoU an image type may fall on any dataset version."""
    min_samples: int = 5
    """Test images an image type needs on a dataset version for its comparison to count."""
    overall_tolerance: float = 0.0
    """How far below the champion's overall mIoU the candidate may fall on any version."""
    floor: float = 0.8
    """With no champion yet: the overall mIoU the candidate needs on every dataset version."""


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate passes, why, and the cells that were compared."""

    passed: bool
    reasons: list[str]
    regressions: list[dict[str, object]] = field(default_factory=list)
    evidence: list[dict[str, object]] = field(default_factory=list)


def decide(
    cells: pa.Table, candidate: str, champion: str | None, policy: GatePolicy
) -> GateDecision:
    """Compare `candidate` with `champion` on every dataset version the champion was evaluated on.

    A dataset version the champion has cells on and the candidate has none blocks promotion:
    the candidate must be evaluated there first, never compared on a convenient subset.
    """
    rows = cells.to_pylist()
    cand = _index(rows, candidate)
    if not cand:
        return GateDecision(False, [f"candidate {candidate} has no evaluation cells"])
    if champion is None:
        return _floor_only(cand, policy)
    champ = _index(rows, champion)
    shared = sorted({d for d, _, _ in cand} & {d for d, _, _ in champ})
    if not shared:
        return GateDecision(
            False, [f"no dataset version has cells of both {candidate} and champion {champion}"]
        )
    unevaluated = [
        f"candidate {candidate} has no evaluation on {dataset}, where champion {champion} has "
        "one: evaluate it there first (compat_evaluation)"
        for dataset in sorted({d for d, _, _ in champ} - set(shared))
    ]
    regressions, evidence = [], []
    for (dataset, kind, group), c in sorted(cand.items()):
        o = champ.get((dataset, kind, group))
        if o is None or dataset not in shared or kind == "source":
            continue
        limit = policy.overall_tolerance if kind == "overall" else policy.tolerance
        counted = kind == "overall" or min(c["n_images"], o["n_images"]) >= policy.min_samples
        row = {
            "dataset_version": dataset,
            "group": group,
            "champion_miou": o["miou"],
            "candidate_miou": c["miou"],
            "delta": c["miou"] - o["miou"],
            "n_images": c["n_images"],
            "counted": counted,
        }
        evidence.append(row)
        if counted and c["miou"] < o["miou"] - limit - 1e-12:
            regressions.append(row)
    reasons = [
        f"{r['group']} on {r['dataset_version']}: {r['candidate_miou']:.4f} < champion "
        f"{r['champion_miou']:.4f} (delta {r['delta']:+.4f})"
        for r in regressions
    ]
    reasons += unevaluated
    passed = not regressions and not unevaluated
    return GateDecision(
        passed, reasons or ["no regression on any dataset version"], regressions, evidence
    )


def _floor_only(cand: Mapping[tuple[str, str, str], dict], policy: GatePolicy) -> GateDecision:
    evidence = [
        {"dataset_version": d, "group": g, "candidate_miou": r["miou"], "floor": policy.floor}
        for (d, k, g), r in sorted(cand.items())
        if k == "overall"
    ]
    low = [e for e in evidence if float(str(e["candidate_miou"])) < policy.floor]
    reasons = [
        f"no champion yet: overall mIoU {e['candidate_miou']:.4f} on "
        f"{e['dataset_version']} is below the floor {policy.floor}"
        for e in low
    ]
    return GateDecision(
        not low, reasons or [f"no champion yet: above the floor {policy.floor}"], low, evidence
    )


def _index(rows: list[dict], model: str) -> dict[tuple[str, str, str], dict]:
    return {
        (r["dataset_version"], r["group_kind"], r["group"]): r
        for r in rows
        if r["model_version"] == model
    }
