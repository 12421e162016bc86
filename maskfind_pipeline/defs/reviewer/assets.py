"""`reviewer_model`: the classifier that grades each predicted mask 1 / 2 / 3."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.settings import ReviewerSettings
from maskfind_pipeline.version import code_version


class ReviewerConfig(run_config_for(ReviewerSettings)):
    """The reviewer network, its training data and how it is judged
    (`flows.settings.ReviewerSettings`)."""


@dg.asset(
    group_name="production",
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
    """A reviewer trained on real and degraded masks of a dataset version's images, judged on
    image types it never saw against two baselines, registered as `maskfind-reviewer`
    (alias `challenger`; `champion` when not worse than the current one on the same masks)."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.flows.reviewer import train_and_register_reviewer

    def on_epoch(epoch) -> None:
        context.log.info(
            f"reviewer epoch {epoch.epoch}/{epoch.epochs}: loss {epoch.train_loss:.4f}, "
            f"val AUC grade 3 {epoch.val_auc_grade3:.4f}"
        )

    outcome = train_and_register_reviewer(
        core_of(config, ReviewerSettings),
        versions=VersionStore(work_store.open()),
        data_store=data_store.open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        registry=mlflow.registry(),
        reviewers=mlflow.reviewers(),
        tags={"code_version": code_version(), "dagster_run_id": context.run.run_id},
        on_epoch=on_epoch,
        log=context.log.info,
    )
    version = outcome.registered.version
    plots_dir = Path(cache.root).parent / "plots" / f"reviewer-v{version}"
    plots = outcome.unseen.plots("unseen types, all masks")
    return dg.MaterializeResult(
        metadata={
            "reviewer_version": version,
            "dataset_version": outcome.dataset_version,
            "auc_grade3_unseen": outcome.auc_grade3,
            "auc_grade3_unseen_real": outcome.unseen_real.scores["reviewer"].auc_grade3,
            "macro_auc_unseen": outcome.unseen.macro_auc,
            "champion_auc_grade3_unseen": outcome.champion_auc,
            "promoted": outcome.promoted,
            "held_out_types": ", ".join(outcome.held_out_types),
            "mask_models": ", ".join(outcome.mask_models),
            "unseen_all_masks": markdown_table(outcome.unseen.rows()),
            "unseen_real_predictions": markdown_table(outcome.unseen_real.rows()),
            "confusion_unseen": markdown_table(
                [
                    {"true": g + 1, "pred_1": r[0], "pred_2": r[1], "pred_3": r[2]}
                    for g, r in enumerate(outcome.unseen.confusion)
                ]
            ),
            "samples": markdown_table(
                [{"kind": k, **counts} for k, counts in sorted(outcome.samples.items())]
            ),
            **{
                k: v
                for name, png in plots.items()
                for k, v in png_metadata(png, title=name, save_to=plots_dir / f"{name}.png").items()
            },
        },
        tags={"maskfind/reviewer_version": version},
    )
