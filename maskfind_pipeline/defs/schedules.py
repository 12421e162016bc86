"""The nightly job and its schedule."""

import dagster as dg

nightly_job = dg.define_asset_job(
    "nightly",
    selection=dg.AssetSelection.assets("image_catalog", "dataset_version"),
    description="Ingest what arrived; later stages version, train, evaluate and promote.",
    tags={"maskfind/kind": "nightly"},
)

nightly_schedule = dg.ScheduleDefinition(
    job=nightly_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
