"""`mask_model`: train on a dataset version, tune the threshold, register as `challenger`."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.partitions import MODEL_VERSIONS
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.defs.training.distributed import launch
from maskfind_pipeline.defs.training.metadata import resumed_metadata, training_metadata
from maskfind_pipeline.flows.options import TrainingOptions
from maskfind_pipeline.version import code_version


class MaskModelConfig(run_config_for(TrainingOptions)):
    """Dataset version, architecture and hyper-parameters (`flows.options.TrainingOptions`);
    the defaults are the production model."""


@dg.asset(
    group_name="training",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["dataset_version"],
    kinds={"pytorch", "mlflow"},
    pool="training",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=60),
)
def mask_model(
    context: dg.AssetExecutionContext,
    config: MaskModelConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """A U-Net trained on a dataset version, its threshold tuned on validation, registered in
    MLflow with alias `challenger`; in several torchrun processes when `distributed` is set.

    A retry (of the step, or of its run) first settles what a killed attempt left: the version it
    registered is kept rather than trained again, its dead runs are marked failed."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.flows.training import resume_training, train_and_register
    from maskfind_pipeline.registry.records import TRAINING_KEY_TAG

    options = core_of(config, TrainingOptions)
    key = f"{context.run.root_run_id or context.run.run_id}/{context.asset_key.to_user_string()}"
    tags = {
        "code_version": code_version(),
        "dagster_run_id": context.run.run_id,
        TRAINING_KEY_TAG: key,
    }
    registry = mlflow.registry()
    resumed = resume_training(registry, key)
    if resumed is not None:
        context.log.warning(
            f"an earlier attempt at this training registered version {resumed.version} "
            "before it died: kept, not trained again"
        )
        version, metadata = resumed.version, resumed_metadata(resumed)
    elif options.distributed is not None:
        version, metadata = launch(
            context,
            options,
            data_store=data_store,
            work_store=work_store,
            cache=cache,
            mlflow=mlflow,
            tags=tags,
        )
    else:
        outcome = train_and_register(
            options,
            versions=VersionStore(work_store.open()),
            data_store=data_store.open(),
            cache=cache.open(),
            decoded_root=Path(cache.root) / "decoded",
            registry=registry,
            on_epoch=lambda report: context.log.info(report.describe()),
            tags=tags,
        )
        metadata = training_metadata(outcome, Path(cache.root).parent / "plots")
        version = outcome.registered.version
    context.instance.add_dynamic_partitions(str(MODEL_VERSIONS.name), [version])
    return dg.MaterializeResult(metadata=metadata, tags={"maskfind/model_version": version})
