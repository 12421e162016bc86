"""`production_day_sensor`: a new production day, new images in an open one, or a day whose log
says some images may succeed on another try, start a run."""

import json
import time

import dagster as dg

from maskfind_pipeline.data.production import PredictionLog, list_day, production_days
from maskfind_pipeline.defs.jobs import production_job
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.resources import ObjectStoreResource

OPEN_DAYS = 2
"""The newest days, recounted on every tick: images may still be arriving. Older days are
counted once, when their folder first appears (a late arrival there needs a manual run)."""
RETRY_AFTER_S = 600
"""A day whose last run left `retryable` rows (a store outage, tags not there yet) is requested
again this long after the last request, then twice as long after each further one..."""
MAX_RETRIES = 4
"""...at most this many times per image count; a new image resets the count."""


_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(
    job=production_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def production_day_sensor(
    context: dg.SensorEvaluationContext,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
) -> dg.SensorResult:
    """Adds each new `production/<day>/` folder as a partition and requests a run for a day whose
    image count changed since the last tick (one run per day and count: `run_key`), and again,
    with a growing delay, for a day whose log has `retryable` rows once no run of it is going."""
    store = data_store.open()
    cursor = _Cursor.parse(context.cursor)
    days = production_days(store)
    requests = []
    for day in days:
        if day in cursor.counts and day not in days[-OPEN_DAYS:]:
            continue
        count = len(list_day(store, day).images)
        if count and count != cursor.counts.get(day):
            requests.append(dg.RunRequest(run_key=f"{day}:{count}", partition_key=day))
            cursor.counts[day] = count
            cursor.retries[day] = [0, time.time()]
    requested = {str(r.partition_key) for r in requests}
    for day in sorted(set(cursor.retries) - requested):
        request = _retry(context, work_store, cursor, day)
        if request is not None:
            requests.append(request)
    known = set(context.instance.get_dynamic_partitions(str(PRODUCTION_DAYS.name)))
    new_days = sorted({str(r.partition_key) for r in requests} - known)
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor.dump(),
        dynamic_partitions_requests=[PRODUCTION_DAYS.build_add_request(new_days)],
    )


def _retry(
    context: dg.SensorEvaluationContext,
    work_store: ObjectStoreResource,
    cursor: "_Cursor",
    day: str,
) -> dg.RunRequest | None:
    """Another run of `day` when its last one left retryable rows (or none at all) and is over;
    None while one is going, before the delay, or once the day is settled or out of retries."""
    tries, last = int(cursor.retries[day][0]), cursor.retries[day][1]
    if time.time() - last < RETRY_AFTER_S * 2**tries:
        return None
    if context.instance.get_run_records(
        dg.RunsFilter(tags={"dagster/partition": day}, statuses=_ACTIVE), limit=1
    ):
        return None
    log = PredictionLog(work_store.open(), day)
    if (log.current().num_rows and not log.retryable()) or tries >= MAX_RETRIES:
        del cursor.retries[day]  # settled, or given up on: a new image starts over
        return None
    cursor.retries[day] = [tries + 1, time.time()]
    run_key = f"{day}:{cursor.counts.get(day, 0)}:retry-{tries + 1}"
    return dg.RunRequest(run_key=run_key, partition_key=day)


class _Cursor:
    """Each day's image count when last requested, and (tries, time of the last request) of the
    days whose runs have not yet been seen to leave nothing retryable."""

    def __init__(self, counts: dict[str, int], retries: dict[str, list[float]]) -> None:
        self.counts, self.retries = counts, retries

    @classmethod
    def parse(cls, text: str | None) -> "_Cursor":
        loaded = json.loads(text or "{}")
        if "counts" not in loaded:  # the cursor of the sensor before retries: counts only
            return cls(loaded, {})
        return cls(loaded["counts"], loaded["retries"])

    def dump(self) -> str:
        return json.dumps({"counts": self.counts, "retries": self.retries}, sort_keys=True)
