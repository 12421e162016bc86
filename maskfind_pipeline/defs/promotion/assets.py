"""`promotion`: move alias `champion` to the challenger only when the gate passes."""

import dagster as dg

from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.resources import MlflowResource, ObjectStoreResource
from maskfind_pipeline.evaluation.gate import GatePolicy


class GateConfig(dg.Config):
    """The gate: per-type tolerance, minimum test images per type, floor without a champion."""

    tolerance: float = 0.01
    min_samples: int = 5
    overall_tolerance: float = 0.0
    floor: float = 0.8

    def policy(self) -> GatePolicy:
        return GatePolicy(self.tolerance, self.min_samples, self.overall_tolerance, self.floor)


@dg.asset(
    group_name="promotion",
    deps=["compat_evaluation"],
    check_specs=[dg.AssetCheckSpec("gate_passed", asset="promotion")],
)
def promotion(
    context: dg.AssetExecutionContext,
    config: GateConfig,
    work_store: ObjectStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Compare the challenger with the champion on every dataset version and image type; promote
    it only if nothing regressed (with no champion yet, an absolute floor applies)."""
    from maskfind_pipeline.evaluation.cells import CellStore
    from maskfind_pipeline.evaluation.gate import decide
    from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION, promote

    registry = mlflow.registry()
    candidate = registry.get(CHALLENGER).version
    champion = registry.alias_or_none(CHAMPION)
    before = champion.version if champion else None
    if before == candidate:
        decision_passed, reasons, regressions, evidence = True, ["already champion"], [], []
    else:
        decision = decide(CellStore(work_store.open()).read(), candidate, before, config.policy())
        decision_passed, reasons = decision.passed, decision.reasons
        regressions, evidence = decision.regressions, decision.evidence
        if decision.passed:
            promote(
                registry, candidate, actor=_actor(context), reason="gate passed", evidence=evidence
            )
    after = registry.alias_or_none(CHAMPION)
    return dg.MaterializeResult(
        metadata={
            "candidate": candidate,
            "champion_before": before or "none",
            "champion_after": after.version if after else "none",
            "promoted": bool(after and after.version == candidate and before != candidate),
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons)),
            "regressions": markdown_table(regressions, limit=200),
            "evidence": markdown_table(evidence, limit=200),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="gate_passed",
                passed=decision_passed,
                severity=dg.AssetCheckSeverity.WARN,
                description="; ".join(reasons)[:1000],
            )
        ],
    )


def _actor(context: dg.AssetExecutionContext) -> str:
    schedule = context.run.tags.get("dagster/schedule_name")
    return f"schedule {schedule}" if schedule else f"dagster run {context.run.run_id}"
