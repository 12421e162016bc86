"""Manual promotion and rollback, launchable from the UI's launchpad with a reason."""

import dagster as dg

from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.promotion.assets import GateConfig
from maskfind_pipeline.defs.resources import MlflowResource, ObjectStoreResource


class ManualPromotionConfig(GateConfig):
    """Promote a version by hand: the gate still runs; `force` overrides a failed gate."""

    version: str
    reason: str
    requested_by: str
    force: bool = False


class RollbackConfig(dg.Config):
    """Give `champion` back to the version it replaced."""

    reason: str
    requested_by: str


@dg.op
def promote_version(
    context: dg.OpExecutionContext,
    config: ManualPromotionConfig,
    work_store: ObjectStoreResource,
    mlflow: MlflowResource,
) -> None:
    from maskfind_pipeline.evaluation.cells import CellStore
    from maskfind_pipeline.evaluation.gate import decide
    from maskfind_pipeline.registry.promotion import CHAMPION, promote

    if not config.reason.strip():
        raise dg.Failure(description="a manual promotion needs a reason")
    registry = mlflow.registry()
    registry.get(config.version)
    champion = registry.alias_or_none(CHAMPION)
    decision = decide(
        CellStore(work_store.open()).read(),
        config.version,
        champion.version if champion else None,
        config.policy(),
    )
    if not decision.passed and not config.force:
        raise dg.Failure(
            description="gate failed: " + "; ".join(decision.reasons),
            metadata={"regressions": markdown_table(decision.regressions)},
        )
    move = promote(
        registry,
        config.version,
        actor=f"{config.requested_by} (manual)",
        reason=config.reason,
        evidence=decision.evidence,
        forced=not decision.passed,
    )
    context.log.info(
        f"champion: v{move.previous or '-'} -> v{move.champion} "
        f"({'forced past a failed gate' if not decision.passed else 'gate passed'})"
    )


@dg.op
def rollback_champion(
    context: dg.OpExecutionContext, config: RollbackConfig, mlflow: MlflowResource
) -> None:
    from maskfind_pipeline.registry.promotion import rollback

    move = rollback(
        mlflow.registry(), actor=f"{config.requested_by} (manual)", reason=config.reason
    )
    context.log.info(f"champion rolled back: v{move.previous} -> v{move.champion}")


@dg.job(description="Promote a model version to champion by hand (gate applies unless forced).")
def promote_model() -> None:
    promote_version()


@dg.job(description="Give the champion alias back to the version it replaced.")
def rollback_model() -> None:
    rollback_champion()
