"""Gated promotion of the challenger, promotion and rollback by hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.evaluation.gate import GateDecision, GatePolicy, decide
from maskfind_pipeline.flows.options import ManualPromotion
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION, AliasMove, promote
from maskfind_pipeline.registry.records import MAX_DESCRIPTION


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
    outcome = PromotionOutcome(candidate, before, after.version if after else None, decision)
    verdict = "promoted to champion" if outcome.promoted else "not promoted"
    registry.describe_version(candidate, gate_report(decision, before, verdict, actor=actor))
    return outcome


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
    actor = f"{request.requested_by} (manual)"
    if not decision.passed and not request.force:
        verdict = f"not promoted (manual request: {request.reason})"
        registry.describe_version(
            request.version, gate_report(decision, before, verdict, actor=actor)
        )
        raise PromotionRefused(decision)
    move = promote(
        registry,
        request.version,
        actor=actor,
        reason=request.reason,
        evidence=decision.evidence,
        forced=not decision.passed,
    )
    forced = "; forced past the gate" if not decision.passed else ""
    verdict = f"promoted to champion (manual request: {request.reason}{forced})"
    registry.describe_version(request.version, gate_report(decision, before, verdict, actor=actor))
    return move, decision


def gate_report(decision: GateDecision, champion: str | None, verdict: str, *, actor: str) -> str:
    """The gate's decision and its evidence as a model version's description (Markdown): the
    verdict, who asked and when, the reasons, and the compared cells as a table (as many rows as
    MLflow's 5,000 characters hold; the `promotion` asset's metadata has them all)."""
    against = f"champion v{champion}" if champion else "no champion (the floor applies)"
    head = [
        f"**Promotion gate: {'passed' if decision.passed else 'failed'}**: {verdict}.",
        "",
        f"Compared with {against} by {actor}, {datetime.now(UTC).isoformat(timespec='seconds')}.",
        "",
        *(f"- {reason}" for reason in decision.reasons),
        "",
    ]
    rows = decision.evidence
    if not rows:
        return "\n".join(head)
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    budget = MAX_DESCRIPTION - len("\n".join(head)) - 200
    shown = 0
    for row in rows:
        line = "| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |"
        if sum(len(x) + 1 for x in lines) + len(line) > budget:
            break
        lines.append(line)
        shown += 1
    if shown < len(rows):
        lines += ["", f"{len(rows) - shown} more rows: the `promotion` asset's `evidence`."]
    return "\n".join([*head, *lines])


def _cell(column: str, value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:+.4f}" if column == "delta" else f"{value:.4f}"
    return str(value)
