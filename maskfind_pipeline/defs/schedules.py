"""The nightly job and its schedule."""

import dagster as dg

from maskfind_pipeline.defs.jobs import nightly_job
from maskfind_pipeline.locations import Locations


@dg.definitions
def schedules() -> dg.Definitions:
    """The nightly schedule at 02:00 in the line's time zone (`MASKFIND_TIMEZONE`, read when
    the definitions load), off until switched on."""
    nightly_schedule = dg.ScheduleDefinition(
        name="nightly_schedule",
        job=nightly_job,
        cron_schedule="0 2 * * *",
        execution_timezone=Locations.from_env().timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    # A module with a `dg.definitions` function contributes only what that function returns.
    return dg.Definitions(jobs=[nightly_job], schedules=[nightly_schedule])
