"""`label_studio_tasks` (a day's queue out to Label Studio) and `returned_labels` (finished
annotations back as failure samples), the sensor and schedule that run them, and the
`label_studio` resource."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.jobs import labeling_back_job, labeling_out_job
from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.resources import ObjectStoreResource
from maskfind_pipeline.labeling.label_studio import LabelStudio, LabelStudioOptions
from maskfind_pipeline.locations import Locations


class LabelStudioResource(dg.ConfigurableResource):
    """A Label Studio server: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, else the embedded one
    that `maskfind review label-studio` (and `make ui`) runs under `<home>/label-studio`."""

    url: str | None = None
    api_key: str | None = None
    embedded_dir: str | None = None
    """The embedded server's data folder: its credentials file is read when `url` is unset."""

    def client(self) -> LabelStudio:
        from maskfind_pipeline.labeling.server import Credentials

        if self.url and self.api_key:
            return LabelStudio(self.url, self.api_key)
        found = Credentials.read(Path(self.embedded_dir)) if self.embedded_dir else None
        if found is None:
            raise dg.Failure(
                "Label Studio is not configured: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, "
                "or run the embedded server (`maskfind review label-studio`, or `make ui`)"
            )
        return LabelStudio(found.url, found.api_key)


class LabelStudioConfig(run_config_for(LabelStudioOptions)):
    """How queues become projects and tasks (`labeling.label_studio.LabelStudioOptions`)."""


@dg.asset(
    group_name="production",
    owners=OWNERS,
    code_version=asset_code_version(1),
    partitions_def=PRODUCTION_DAYS,
    deps=["review_queue"],
)
def label_studio_tasks(
    context: dg.AssetExecutionContext,
    config: LabelStudioConfig,
    label_studio: LabelStudioResource,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
) -> dg.MaterializeResult:
    """The day's review queue as a Label Studio project: one task per queued image, the
    model's mask as a brush prediction, reasons and scores as task data (idempotent per
    image)."""
    from maskfind_pipeline.flows.labeling import send_to_label_studio

    sent = send_to_label_studio(
        context.partition_key,
        label_studio.client(),
        core_of(config, LabelStudioOptions),
        data_store=data_store.open(),
        work_store=work_store.open(),
    )
    return dg.MaterializeResult(
        metadata={
            "project": dg.MetadataValue.url(sent.project_url),
            "queued": sent.queued,
            "tasks_added": sent.sent,
            "already_there": sent.already_there,
        }
    )


@dg.asset(
    group_name="production",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["label_studio_tasks"],
)
def returned_labels(
    context: dg.AssetExecutionContext,
    config: LabelStudioConfig,
    label_studio: LabelStudioResource,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
) -> dg.MaterializeResult:
    """Finished Label Studio annotations written as `failures/` samples (image, corrected mask,
    the image's tags + failed_model_version, reported_at, annotator, annotation_id), for the
    next dataset version; skips and rejections recorded in `review/returns/`, not imported."""
    from maskfind_pipeline.flows.labeling import collect_from_label_studio

    report = collect_from_label_studio(
        label_studio.client(),
        core_of(config, LabelStudioOptions),
        data_store=data_store.open(),
        work_store=work_store.open(),
        run_id=context.run_id,
    )
    shown = ("image_id", "status", "annotator", "annotation_id", "failure_key", "reason")
    return dg.MaterializeResult(
        metadata={
            "new_answers": len(report.rows),
            "already_recorded": report.already_recorded,
            "by_status": markdown_table(
                [{"status": s, "answers": n} for s, n in report.counts().items()]
            ),
            "failures_written": len(report.written),
            "answers": markdown_table([{k: r[k] for k in shown} for r in report.rows], 50),
            "ledger_part": report.ledger_key or "none (nothing new)",
        }
    )


@dg.asset_sensor(
    asset_key=dg.AssetKey("review_queue"),
    job=labeling_out_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def review_queue_to_label_studio(
    context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
) -> dg.RunRequest | None:
    """Each new review queue of a day is sent to Label Studio (off until switched on)."""
    event = asset_event.dagster_event
    if event is None or event.partition is None:
        return None
    day = event.partition
    return dg.RunRequest(run_key=f"{day}:{asset_event.run_id}", partition_key=day)


@dg.definitions
def labeling() -> dg.Definitions:
    """The resource (LABEL_STUDIO_API_KEY as an `EnvVar`: never in run config or logs), the
    assets, and the schedule that reads answers back every hour (off until switched on)."""
    import os

    locations = Locations.from_env()
    key = dg.EnvVar("LABEL_STUDIO_API_KEY") if os.environ.get("LABEL_STUDIO_API_KEY") else None
    resource = LabelStudioResource(
        url=os.environ.get("LABEL_STUDIO_URL") or None,
        api_key=key,  # type: ignore[arg-type]
        embedded_dir=str(locations.home / "label-studio"),
    )
    schedule = dg.ScheduleDefinition(
        name="returned_labels_schedule",
        job=labeling_back_job,
        cron_schedule="0 * * * *",
        execution_timezone=locations.timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    return dg.Definitions(
        assets=[label_studio_tasks, returned_labels],
        jobs=[labeling_out_job, labeling_back_job],
        sensors=[review_queue_to_label_studio],
        schedules=[schedule],
        resources={"label_studio": resource},
    )
