"""Manual promotion and rollback, launchable from the UI's launchpad with a reason."""

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.resources import MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.options import ManualPromotion, RollbackRequest


class ManualPromotionConfig(run_config_for(ManualPromotion)):
    """Promote a version by hand (`flows.options.ManualPromotion`): the gate still runs;
    `force` overrides a failed gate."""


class RollbackConfig(run_config_for(RollbackRequest)):
    """Give `champion` back to the version it replaced (`flows.options.RollbackRequest`)."""


@dg.op
def promote_version(
    context: dg.OpExecutionContext,
    config: ManualPromotionConfig,
    work_store: ObjectStoreResource,
    mlflow: MlflowResource,
) -> None:
    from maskfind_pipeline.evaluation.cells import CellStore
    from maskfind_pipeline.flows.promotion import PromotionRefused, promote_by_hand

    try:
        move, decision = promote_by_hand(
            mlflow.registry(), CellStore(work_store.open()), core_of(config, ManualPromotion)
        )
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from exc
    except PromotionRefused as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={"regressions": markdown_table(exc.decision.regressions)},
        ) from exc
    context.log.info(
        f"champion: v{move.previous or '-'} -> v{move.champion} "
        f"({'forced past a failed gate' if not decision.passed else 'gate passed'})"
    )


@dg.op
def rollback_champion(
    context: dg.OpExecutionContext, config: RollbackConfig, mlflow: MlflowResource
) -> None:
    from maskfind_pipeline.registry.promotion import rollback

    request = core_of(config, RollbackRequest)
    move = rollback(
        mlflow.registry(), actor=f"{request.requested_by} (manual)", reason=request.reason
    )
    context.log.info(f"champion rolled back: v{move.previous} -> v{move.champion}")


@dg.job(description="Promote a model version to champion by hand (gate applies unless forced).")
def promote_model() -> None:
    promote_version()


@dg.job(description="Give the champion alias back to the version it replaced.")
def rollback_model() -> None:
    rollback_champion()
