"""`promotion`: move alias `champion` to the challenger only when the gate passes."""

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import table
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.resources import MlflowResource, ObjectStoreResource
from maskfind_pipeline.evaluation.gate import GatePolicy


class GateConfig(run_config_for(GatePolicy)):
    """The gate (`evaluation.gate.GatePolicy`): per-type tolerance, minimum test images per
    type, floor without a champion."""


@dg.asset(
    group_name="promotion",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["compat_evaluation"],
    # Blocking: a refused challenger fails the step (the champion stays), so nothing downstream
    # of a failed gate runs in the same run, and declarative automation waits for a pass
    # (`AutomationCondition.all_deps_blocking_checks_passed()` on production and the reviewer).
    check_specs=[
        dg.AssetCheckSpec(
            "gate_passed",
            asset="promotion",
            blocking=True,
            description="The challenger regressed on no image type of any dataset version "
            "(with no champion: it reaches the floor).",
        )
    ],
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
    from maskfind_pipeline.flows.promotion import gate_and_promote

    outcome = gate_and_promote(
        mlflow.registry(),
        CellStore(work_store.open()),
        core_of(config, GatePolicy),
        actor=_actor(context),
    )
    decision = outcome.decision
    return dg.MaterializeResult(
        metadata={
            "candidate": outcome.candidate,
            "champion_before": outcome.champion_before or "none",
            "champion_after": outcome.champion_after or "none",
            "promoted": outcome.promoted,
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
            "regressions": table(decision.regressions),
            "evidence": table(decision.evidence),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="gate_passed",
                passed=decision.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description="; ".join(decision.reasons)[:1000],
            )
        ],
    )


def _actor(context: dg.AssetExecutionContext) -> str:
    schedule = context.run.tags.get("dagster/schedule_name")
    return f"schedule {schedule}" if schedule else f"dagster run {context.run.run_id}"
