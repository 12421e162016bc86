"""Gated promotion of the challenger, promotion and rollback by hand."""

from __future__ import annotations

from dataclasses import dataclass

from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.evaluation.gate import GateDecision, GatePolicy, decide
from maskfind_pipeline.flows.settings import ManualPromotion
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION, AliasMove, promote


class PromotionRefused(Exception):
    """A manual promotion the gate refused (and `force` was not set)."""

    def __init__(self, decision: GateDecision) -> None:
        super().__init__("gate failed: " + "; ".join(decision.reasons))
        self.decision = decision


@dataclass(frozen=True)
class PromotionOutcome:
    """The gate's decision on the challenger and the champion before and after."""

    candidate: str
    champion_before: str | None
    champion_after: str | None
    decision: GateDecision

    @property
    def promoted(self) -> bool:
        return self.champion_after == self.candidate != self.champion_before


def gate_and_promote(
    registry: ModelRegistry, cells: CellStore, policy: GatePolicy, *, actor: str
) -> PromotionOutcome:
    """Promote the challenger only if the gate passes against the champion's cells; never one
    from a failed training attempt (`registry.attempts`)."""
    challenger = registry.get(CHALLENGER)
    candidate = challenger.version
    champion = registry.alias_or_none(CHAMPION)
    before = champion.version if champion else None
    if before == candidate:
        return PromotionOutcome(candidate, before, before, GateDecision(True, ["already champion"]))
    failed = challenger.failed_attempt
    decision = (
        GateDecision(False, [f"candidate {candidate} is from a failed training attempt: {failed}"])
        if failed
        else decide(
            cells.read(models=[m for m in (candidate, before) if m]), candidate, before, policy
        )
    )
    if decision.passed:
        promote(registry, candidate, actor=actor, reason="gate passed", evidence=decision.evidence)
    after = registry.alias_or_none(CHAMPION)
    return PromotionOutcome(candidate, before, after.version if after else None, decision)


def promote_by_hand(
    registry: ModelRegistry, cells: CellStore, request: ManualPromotion
) -> tuple[AliasMove, GateDecision]:
    """Promote `request.version`; the gate applies unless `force` is set.

    Raises:
        ValueError: the request has no reason.
        RegistryError: the version does not exist, or is from a failed training attempt.
        PromotionRefused: the gate failed and `force` is not set.
    """
    if not request.reason.strip():
        raise ValueError("a manual promotion needs a reason")
    registry.get(request.version)
    champion = registry.alias_or_none(CHAMPION)
    before = champion.version if champion else None
    compared = cells.read(models=[m for m in (request.version, before) if m])
    decision = decide(compared, request.version, before, request.gate)
    if not decision.passed and not request.force:
        raise PromotionRefused(decision)
    move = promote(
        registry,
        request.version,
        actor=f"{request.requested_by} (manual)",
        reason=request.reason,
        evidence=decision.evidence,
        forced=not decision.passed,
    )
    return move, decision
