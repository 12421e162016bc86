"""The history job, its daily schedule, and the sensor that turns failing checks into alerts."""

import os

import dagster as dg

from maskfind_pipeline.alerts import WEBHOOK_ENV, send_alert
from maskfind_pipeline.defs.jobs import history_job
from maskfind_pipeline.evaluation.history import alert_message
from maskfind_pipeline.locations import Locations


@dg.definitions
def history_schedules() -> dg.Definitions:
    """`history` daily at 06:00 in the line's time zone (`MASKFIND_TIMEZONE`), off by default."""
    schedule = dg.ScheduleDefinition(
        name="history_schedule",
        job=history_job,
        cron_schedule="0 6 * * *",
        execution_timezone=Locations.from_env().timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    # A module with a `dg.definitions` function contributes only what that function returns.
    return dg.Definitions(jobs=[history_job], schedules=[schedule], sensors=[history_alert_sensor])


@dg.asset_sensor(
    asset_key=dg.AssetKey("performance_history"),
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def history_alert_sensor(
    context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
) -> dg.SkipReason:
    """Each new `performance_history` materialization with failing checks sends one alert: a
    warning in the sensor's log, and a Slack message when `MASKFIND_SLACK_WEBHOOK` is set."""
    materialization = asset_event.asset_materialization
    entry = materialization.metadata.get("failing_checks") if materialization else None
    stored = entry.value if entry is not None else None
    failing = [c for c in stored if isinstance(c, dict)] if isinstance(stored, list) else []
    if not failing:
        return dg.SkipReason("every history check passes")
    text = alert_message(failing, run=asset_event.run_id)
    posted = send_alert(text, webhook_url=os.environ.get(WEBHOOK_ENV), warn=context.log.warning)
    names = ", ".join(str(c["check"]) for c in failing)
    return dg.SkipReason(f"alerted ({'Slack and log' if posted else 'log'}): {names}")
