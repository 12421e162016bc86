"""The nightly job and its schedule."""

import dagster as dg

nightly_job = dg.define_asset_job(
    "nightly",
    selection=dg.AssetSelection.assets(
        "image_catalog",
        "dataset_version",
        "mask_model",
        "label_audit",
        "compat_evaluation",
        "promotion",
    ),
    description="Ingest, version the dataset, train, audit the labels, evaluate both "
    "directions, gate, promote.",
    tags={"maskfind/kind": "nightly"},
)

nightly_schedule = dg.ScheduleDefinition(
    job=nightly_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
