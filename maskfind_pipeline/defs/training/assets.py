"""`mask_model`: train on a dataset version, tune the threshold, register as `challenger`."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import markdown_table, table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.partitions import MODEL_VERSIONS
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.settings import TrainingSettings
from maskfind_pipeline.version import code_version


class TrainingConfig(run_config_for(TrainingSettings)):
    """Dataset version, architecture and hyper-parameters (`flows.settings.TrainingSettings`);
    the defaults are the production model."""


@dg.asset(
    group_name="training",
    deps=["dataset_version"],
    kinds={"pytorch", "mlflow"},
    pool="training",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=60),
)
def mask_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """A U-Net trained on a dataset version, its threshold tuned on validation, registered in
    MLflow with alias `challenger`."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.flows.training import train_and_register

    def on_epoch(report) -> None:
        context.log.info(
            f"epoch {report.epoch}/{report.epochs}: loss {report.train_loss:.4f}, "
            f"val mIoU {report.val_miou:.4f} ({report.images_per_second:.0f} img/s)"
        )

    outcome = train_and_register(
        core_of(config, TrainingSettings),
        versions=VersionStore(work_store.open()),
        data_store=data_store.open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        registry=mlflow.registry(),
        on_epoch=on_epoch,
        tags={"code_version": code_version(), "dagster_run_id": context.run.run_id},
    )
    result, model = outcome.result, outcome.registered
    context.instance.add_dynamic_partitions(str(MODEL_VERSIONS.name), [model.version])
    plots_dir = Path(cache.root).parent / "plots" / f"model-v{model.version}"
    return dg.MaterializeResult(
        metadata={
            "model_version": model.version,
            "mlflow_run_id": model.run_id,
            "dataset_version": outcome.dataset_version,
            "threshold": result.config.threshold,
            "val_miou": result.val_metrics.overall.miou,
            "val_precision": result.val_metrics.overall.precision,
            "val_recall": result.val_metrics.overall.recall,
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "pretrained": result.pretrained,
            "warm_start_from": model.tags.get("warm_start_from") or "none",
            "image_types_seen": len(outcome.image_types),
            "novelty_threshold": outcome.novelty.threshold,
            "novelty": outcome.novelty.config.method,
            "val_metrics": table(result.val_metrics.rows(), limit=100),
            "history": markdown_table(result.history, limit=200),
            **{
                k: v
                for name, png in result.plots.items()
                for k, v in png_metadata(png, title=name, save_to=plots_dir / f"{name}.png").items()
            },
        },
        tags={"maskfind/model_version": model.version},
    )
