"""`mask_model`: train on a dataset version, tune the threshold, register as `challenger`."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.partitions import MODEL_VERSIONS
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.ml.config import ModelConfig, TrainConfig
from maskfind_pipeline.version import code_version


class TrainingConfig(dg.Config):
    """Architecture and hyper-parameters; the defaults are the production model."""

    dataset_version: str | None = Field(None, description="Default: the latest version.")
    encoder_name: str = "resnet34"
    encoder_weights: str | None = Field("imagenet", description="null: train from scratch.")
    encoder_weights_path: str | None = None
    decoder_channels: list[int] = Field(default_factory=lambda: [256, 128, 64, 32, 16])
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])
    input_size: int = 256
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    schedule: str = "onecycle"
    loss: str = "dice_bce"
    augment: bool = True
    failure_weight: float | None = Field(None, description="Override the version's weights.")
    early_stopping_patience: int = 5
    threshold_policy: str = "max_iou"
    min_recall: float = 0.99
    num_workers: int = 0
    seed: int = 0
    max_minutes: float | None = None
    allow_scratch: bool = False

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(
            encoder_name=self.encoder_name,
            encoder_weights=self.encoder_weights,
            encoder_weights_path=self.encoder_weights_path,
            decoder_channels=tuple(self.decoder_channels),
            input_size=self.input_size,
            mean=(self.mean[0], self.mean[1], self.mean[2]),
            std=(self.std[0], self.std[1], self.std[2]),
        )

    def to_train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            schedule=self.schedule,  # type: ignore[arg-type]
            loss=self.loss,  # type: ignore[arg-type]
            augment=self.augment,
            failure_weight=self.failure_weight,
            early_stopping_patience=self.early_stopping_patience,
            threshold_policy=self.threshold_policy,  # type: ignore[arg-type]
            min_recall=self.min_recall,
            num_workers=self.num_workers,
            seed=self.seed,
            max_minutes=self.max_minutes,
            allow_scratch=self.allow_scratch,
        )


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
    from maskfind_pipeline.registry.training import train_and_register

    def on_epoch(report) -> None:
        context.log.info(
            f"epoch {report.epoch}/{report.epochs}: loss {report.train_loss:.4f}, "
            f"val mIoU {report.val_miou:.4f} ({report.images_per_second:.0f} img/s)"
        )

    outcome = train_and_register(
        versions=VersionStore(work_store.open()),
        data_store=data_store.open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        registry=mlflow.registry(),
        model_config=config.to_model_config(),
        train_config=config.to_train_config(),
        dataset_version=config.dataset_version,
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
            "image_types_seen": len(outcome.image_types),
            "val_metrics": markdown_table(result.val_metrics.rows(), limit=100),
            "history": markdown_table(result.history, limit=200),
            **{
                k: v
                for name, png in result.plots.items()
                for k, v in png_metadata(png, title=name, save_to=plots_dir / f"{name}.png").items()
            },
        },
        tags={"maskfind/model_version": model.version},
    )
