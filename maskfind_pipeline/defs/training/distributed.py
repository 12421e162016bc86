"""`mask_model` trained by torchrun processes, launched and heard through Dagster Pipes.

`launch` (in the asset) starts `torchrun --standalone --nproc_per_node=N -m` this module with
`dg.PipesSubprocessClient`. Every process reads the job (training options, the asset's resource
configuration, run tags) from the environment variable MASKFIND_TRAINING_JOB and trains its
rank (`flows.distributed_training`). Rank 0 alone opens Pipes: its epochs stream to the run's
logs and it reports the materialization; the other ranks never write to the Pipes channel.

Nothing heavy is imported at module level: the definitions load this module too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.options import TrainingOptions

if TYPE_CHECKING:
    from maskfind_pipeline.ml.distributed import Ranks
    from maskfind_pipeline.ml.segmentation.train import EpochReport

JOB_ENV = "MASKFIND_TRAINING_JOB"
MODULE = "maskfind_pipeline.defs.training.distributed"


def launch(
    context: dg.AssetExecutionContext,
    options: TrainingOptions,
    *,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
    tags: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Run the distributed training of `options` (its `distributed` must be set): the model
    version rank 0 registered and the metadata it reported.

    Raises:
        dagster.DagsterPipesExecutionError: a training process failed.
        dagster.Failure: rank 0 reported no model version.
    """
    assert options.distributed is not None
    command = options.distributed.torchrun_command(MODULE)
    job = {
        "options": options.model_dump(mode="json"),
        "resources": {
            "data_store": data_store.model_dump(),
            "work_store": work_store.model_dump(),
            "cache": cache.model_dump(),
            "mlflow": mlflow.model_dump(),
        },
        "tags": tags,
    }
    context.log.info(f"training in {options.distributed.nproc} processes: {' '.join(command)}")
    invocation = dg.PipesSubprocessClient().run(
        context=context,
        command=command,
        env={JOB_ENV: json.dumps(job), **options.distributed.thread_env()},
    )
    metadata = dict(
        invocation.get_materialize_result(implicit_materialization=False).metadata or {}
    )
    version = metadata.get("model_version")
    if not isinstance(version, dg.TextMetadataValue):
        raise dg.Failure(f"the training processes reported no model version: {sorted(metadata)}")
    return str(version.value), metadata


def main() -> None:
    """One torchrun process: train this rank; on rank 0, talk to Dagster through Pipes."""
    from dagster_pipes import open_dagster_pipes

    from maskfind_pipeline.ml.distributed import process_group

    job: dict[str, Any] = json.loads(os.environ[JOB_ENV])
    options = TrainingOptions.model_validate(job["options"])
    with process_group(options.train.device) as (ranks, device):
        if not ranks.is_main:
            _train(job, options, ranks, device, on_epoch=None)
            return
        with open_dagster_pipes() as pipes:
            replica = _train(job, options, ranks, device, lambda r: pipes.log.info(r.describe()))
            pipes.report_asset_materialization(metadata=replica)


def _train(
    job: dict[str, Any],
    options: TrainingOptions,
    ranks: Ranks,
    device: str,
    on_epoch: Callable[[EpochReport], None] | None,
) -> dict[str, Any]:
    """This rank's training; on rank 0 the materialization's metadata in Pipes form."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.defs.training.metadata import to_pipes, training_metadata
    from maskfind_pipeline.flows.distributed_training import train_and_register_replica

    resources = job["resources"]
    work_store = ObjectStoreResource.model_validate(resources["work_store"])
    cache = CacheResource.model_validate(resources["cache"])
    mlflow = MlflowResource.model_validate(resources["mlflow"])
    replica = train_and_register_replica(
        options,
        ranks,
        device=device,
        versions=VersionStore(work_store.open()),
        data_store=ObjectStoreResource.model_validate(resources["data_store"]).open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        open_registry=mlflow.registry,
        tags=job["tags"],
        on_epoch=on_epoch,
    )
    if replica.outcome is None:
        return {}
    metadata = training_metadata(replica.outcome, Path(cache.root).parent / "plots")
    return to_pipes(
        {**metadata, "weights_sha256": replica.weights_sha256, "nproc": ranks.world_size}
    )


if __name__ == "__main__":
    main()
