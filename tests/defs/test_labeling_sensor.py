"""Each new review queue of a production day asks for a run of `label_studio_tasks` for that
day, once per materialization; the labeling jobs and schedule are in the definitions."""

from __future__ import annotations

import dagster as dg

from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.review_queue.labeling import review_queue_to_label_studio


def test_a_new_review_queue_is_sent_to_label_studio_once() -> None:
    definitions = defs()
    assert definitions.resolve_job_def("label_studio_out").name == "label_studio_out"
    schedule = definitions.resolve_schedule_def("returned_labels_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("production_days", ["2026-11-30"])
        event = dg.AssetMaterialization(asset_key="review_queue", partition="2026-11-30")
        instance.report_runless_asset_event(event)
        context = dg.build_sensor_context(instance=instance, definitions=definitions)
        (request,) = list(review_queue_to_label_studio(context))  # type: ignore[arg-type]
        assert isinstance(request, dg.RunRequest) and request.partition_key == "2026-11-30"
        later = dg.build_sensor_context(
            instance=instance, definitions=definitions, cursor=context.cursor
        )
        (skip,) = list(review_queue_to_label_studio(later))  # type: ignore[arg-type]
        assert isinstance(skip, dg.SkipReason), "the same queue is not sent twice"
