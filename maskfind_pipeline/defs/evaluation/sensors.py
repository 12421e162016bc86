"""A new dataset version gets the older models evaluated on it (the matrix's new column)."""

import dagster as dg

from maskfind_pipeline.defs.jobs import evaluation_job


@dg.asset_sensor(
    asset_key=dg.AssetKey("dataset_version"),
    job=evaluation_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def new_dataset_version_sensor(
    context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
) -> dg.RunRequest | dg.SkipReason:
    """A `dataset_version` materialization that published a new version requests one
    evaluation run, so the registered models are measured on it before anyone compares them
    there (the nightly job does this in its own run; this covers versions published outside
    it, e.g. by a backfill or by hand)."""
    materialization = asset_event.asset_materialization
    metadata = materialization.metadata if materialization else {}
    created, version = metadata.get("created"), metadata.get("dataset_version")
    if created is None or created.value is not True or version is None:
        return dg.SkipReason("the last dataset_version run published no new version")
    return dg.RunRequest(
        run_key=f"evaluate-{version.value}", tags={"maskfind/dataset_version": str(version.value)}
    )
