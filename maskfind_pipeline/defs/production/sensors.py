"""`production_day_sensor`: a new production day, or new images in an open one, start a run."""

import json

import dagster as dg

from maskfind_pipeline.data.production import list_day, production_days
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.resources import ObjectStoreResource

OPEN_DAYS = 2
"""The newest days, recounted on every tick: images may still be arriving. Older days are
counted once, when their folder first appears (a late arrival there needs a manual run)."""

production_job = dg.define_asset_job(
    "production",
    selection=dg.AssetSelection.assets("production_predictions", "review_queue"),
    description="Predict and grade one production day, and queue what people should relabel.",
    tags={"maskfind/kind": "production"},
)


@dg.sensor(
    job=production_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def production_day_sensor(
    context: dg.SensorEvaluationContext, data_store: ObjectStoreResource
) -> dg.SensorResult:
    """Adds each new `production/<day>/` folder as a partition and requests a run for a day whose
    image count changed since the last tick (one run per day and count: `run_key`)."""
    store = data_store.open()
    counts: dict[str, int] = json.loads(context.cursor or "{}")
    days = production_days(store)
    requests = []
    for day in days:
        if day in counts and day not in days[-OPEN_DAYS:]:
            continue
        count = len(list_day(store, day).images)
        if count and count != counts.get(day):
            requests.append(dg.RunRequest(run_key=f"{day}:{count}", partition_key=day))
            counts[day] = count
    known = set(context.instance.get_dynamic_partitions(str(PRODUCTION_DAYS.name)))
    new_days = sorted({str(r.partition_key) for r in requests} - known)
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(counts, sort_keys=True),
        dynamic_partitions_requests=[PRODUCTION_DAYS.build_add_request(new_days)],
    )
