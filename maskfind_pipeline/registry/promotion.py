"""Moving the `champion` alias: gated promotion, manual promotion with a reason, rollback.

Every move is recorded on the model versions involved (tags): when, by whom or what, why, the
previous champion, and the evidence the gate compared. Versions are never deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.records import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"
_MAX_TAG = 4900


@dataclass(frozen=True)
class AliasMove:
    """The outcome of a promotion or rollback."""

    champion: str
    previous: str | None
    actor: str
    reason: str


def promote(
    registry: ModelRegistry,
    candidate: str,
    *,
    actor: str,
    reason: str,
    evidence: Sequence[dict[str, object]] = (),
    forced: bool = False,
) -> AliasMove:
    """Make `candidate` the champion after verifying its weights' sha256; never a version from
    a failed training attempt (`registry.attempts`).

    The record (previous champion, who, why, evidence) is written before the alias moves, so a
    crash between the two leaves either the old champion in place or a new one that can be
    rolled back; `promoted_at` is written last and marks a completed move.
    """
    failed = registry.get(candidate).failed_attempt
    if failed:
        raise RegistryError(
            f"{registry.model_name} version {candidate} is from a failed training attempt "
            f"({failed}): it is never promoted"
        )
    registry.download(candidate)
    current = registry.alias_or_none(CHAMPION)
    previous = current.version if current else None
    if previous == str(candidate):
        return AliasMove(str(candidate), previous, actor, "already champion")
    registry.tag_version(
        str(candidate),
        {
            "previous_champion": previous or "",
            "promoted_by": actor,
            "promotion_reason": reason,
            "promotion_forced": str(forced).lower(),
            "gate_evidence": json.dumps(list(evidence), default=str)[:_MAX_TAG],
        },
    )
    registry.set_alias(CHAMPION, str(candidate))
    registry.tag_version(str(candidate), {"promoted_at": datetime.now(UTC).isoformat()})
    return AliasMove(str(candidate), previous, actor, reason)


def rollback(registry: ModelRegistry, *, actor: str, reason: str) -> AliasMove:
    """Give `champion` back to the version it replaced; a clear error when there is none.

    As in `promote`, who and why are recorded before the alias moves, the time after it.
    """
    current = registry.get(CHAMPION)
    previous = current.tags.get("previous_champion", "")
    if not previous:
        raise RegistryError(
            f"champion v{current.version} replaced no earlier champion: nothing to roll back to"
        )
    registry.download(previous)
    registry.tag_version(current.version, {"rolled_back_by": actor, "rollback_reason": reason})
    registry.set_alias(CHAMPION, previous)
    now = datetime.now(UTC).isoformat()
    registry.tag_version(current.version, {"rolled_back_at": now})
    registry.tag_version(previous, {"restored_at": now, "restored_by": actor})
    return AliasMove(previous, current.version, actor, reason)
