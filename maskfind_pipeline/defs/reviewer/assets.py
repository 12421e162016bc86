"""`reviewer_model`: the classifier that grades each predicted mask 1 / 2 / 3."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.options import ReviewerOptions
from maskfind_pipeline.version import code_version


class ReviewerConfig(run_config_for(ReviewerOptions)):
    """The reviewer network, its training data and how it is judged
    (`flows.options.ReviewerOptions`)."""


@dg.asset(
    group_name="production",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["promotion"],
    kinds={"pytorch", "mlflow"},
    pool="training",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=60),
)
def reviewer_model(
    context: dg.AssetExecutionContext,
    config: ReviewerConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The grader of production masks: every scorer (the free signals, the CNN reviewer,
    their combinations) cross-fitted by image type and judged out of fold on the champion's
    masks of unseen images and fold models' masks of unseen types; the winner, calibrated,
    registered as `maskfind-reviewer` (`challenger`; `champion` when not worse than the
    current one on the same masks)."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.flows.reviewer import train_and_register_reviewer
    from maskfind_pipeline.flows.training import latest_version

    def on_epoch(epoch) -> None:
        context.log.info(
            f"reviewer epoch {epoch.epoch}/{epoch.epochs}: loss {epoch.train_loss:.4f}, "
            f"val AUC grade 3 {epoch.val_auc_grade3:.4f}"
        )

    options, versions = core_of(config, ReviewerOptions), VersionStore(work_store.open())
    vid = options.dataset_version or latest_version(versions)
    reviewers = mlflow.reviewers()
    tags = {"code_version": code_version(), "dagster_run_id": context.run.run_id}
    # The run exists from the start: MLflow system metrics sampled into it while it trains.
    with reviewers.training_run(vid, tags) as run_id:
        outcome = train_and_register_reviewer(
            options.model_copy(update={"dataset_version": vid}),
            versions=versions,
            data_store=data_store.open(),
            cache=cache.open(),
            decoded_root=Path(cache.root) / "decoded",
            registry=mlflow.registry(),
            reviewers=reviewers,
            tags=tags,
            on_epoch=on_epoch,
            log=context.log.info,
            run_id=run_id,
        )
    version = outcome.registered.version
    plots_dir = Path(cache.root).parent / "plots" / f"reviewer-v{version}"
    winner = outcome.winner
    return dg.MaterializeResult(
        metadata={
            "reviewer_version": version,
            "dataset_version": outcome.dataset_version,
            "scorer": outcome.scorer,
            "auc_grade3": winner.ranking.auc_grade3,
            "max_type_calibration_error": winner.max_type_error,
            "best_free_signal": (
                f"{outcome.best_free[0]} ({outcome.best_free[1]:.4f})" if outcome.best_free else ""
            ),
            "reviewer_refused": outcome.reviewer_refused or "no: the winner reads the CNN",
            "champion_auc_grade3": outcome.champion_auc,
            "promoted": outcome.promoted,
            "folds": dg.MetadataValue.json(outcome.folds),
            "mask_models": ", ".join(outcome.mask_models),
            "comparison": table(outcome.rows()),
            "calibration_by_type": table(outcome.calibration_rows()),
            "samples": table(
                [{"masks": k, **counts} for k, counts in sorted(outcome.samples.items())]
            ),
            **{
                k: v
                for name, png in outcome.plots.items()
                for k, v in png_metadata(png, title=name, save_to=plots_dir / f"{name}.png").items()
            },
        },
        tags={"maskfind/reviewer_version": version},
    )
