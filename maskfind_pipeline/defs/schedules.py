"""The nightly job and its schedule."""

import dagster as dg

from maskfind_pipeline.settings import Settings

nightly_job = dg.define_asset_job(
    "nightly",
    selection=dg.AssetSelection.assets(
        "image_catalog",
        "dataset_version",
        "mask_model",
        "label_audit",
        "test_scores",
        "compat_evaluation",
        "promotion",
    ),
    description="Ingest, version the dataset, train, audit the labels, evaluate both "
    "directions, gate, promote.",
    tags={"maskfind/kind": "nightly"},
)


@dg.definitions
def schedules() -> dg.Definitions:
    """The nightly schedule at 02:00 in the line's time zone (`MASKFIND_TIMEZONE`, read when
    the definitions load), off until switched on."""
    nightly_schedule = dg.ScheduleDefinition(
        name="nightly_schedule",
        job=nightly_job,
        cron_schedule="0 2 * * *",
        execution_timezone=Settings.from_env().timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    # A module with a `dg.definitions` function contributes only what that function returns.
    return dg.Definitions(jobs=[nightly_job], schedules=[nightly_schedule])
