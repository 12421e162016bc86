"""The reviewer follows the champion: a promotion that moved `champion` starts its training."""

import dagster as dg

from maskfind_pipeline.defs.jobs import reviewer_job


@dg.asset_sensor(
    asset_key=dg.AssetKey("promotion"),
    job=reviewer_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def champion_changed_sensor(
    context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
) -> dg.RunRequest | dg.SkipReason:
    """A `promotion` materialization that promoted a new champion requests one reviewer run."""
    materialization = asset_event.asset_materialization
    metadata = materialization.metadata if materialization else {}
    promoted = metadata.get("promoted")
    if promoted is None or promoted.value is not True:
        return dg.SkipReason("the last promotion kept the champion")
    champion = metadata["champion_after"].value
    return dg.RunRequest(run_key=f"champion-{champion}", tags={"maskfind/champion": str(champion)})
