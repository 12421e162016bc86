"""`review_queue` (per production day) and `label_audit`: what people should relabel."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.data.review_queue import ReviewQueueOptions
from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.options import AuditOptions

_SHOWN = ("image_key", "image_type", "reasons", "grade", "p_grade3", "novelty", "label_iou")


class ReviewConfig(run_config_for(ReviewQueueOptions)):
    """Which production images are queued (`data.review_queue.ReviewQueueOptions`)."""


class AuditRunConfig(run_config_for(AuditOptions)):
    """Which dataset version is audited and the suspect rule (`flows.options.AuditOptions`)."""


@dg.asset(
    group_name="production",
    owners=OWNERS,
    code_version=asset_code_version(1),
    partitions_def=PRODUCTION_DAYS,
    deps=["production_predictions"],
)
def review_queue(
    context: dg.AssetExecutionContext,
    config: ReviewConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
) -> dg.MaterializeResult:
    """The day's images people should relabel (grade 3, a sample of grade 2, new image types),
    with why, as a table and a COCO import file with the model's masks as pre-annotations;
    relabeled masks come back as `failures/` and enter the next dataset version."""
    from maskfind_pipeline.flows.review_queue import queue_production_day

    outcome = queue_production_day(
        context.partition_key,
        core_of(config, ReviewQueueOptions),
        data_store=data_store.open(),
        work_store=work_store.open(),
    )
    return dg.MaterializeResult(
        metadata={
            "queued": outcome.files.size,
            "already_relabeled": outcome.already_relabeled,
            "by_reason": markdown_table(_by_reason(outcome.entries)),
            "queue": markdown_table([{k: e[k] for k in _SHOWN} for e in outcome.entries], 50),
            "table": outcome.files.table_key,
            "labeling_tool_import": outcome.files.coco_key,
        }
    )


@dg.asset(
    group_name="training",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["mask_model", "dataset_version"],
    kinds={"pytorch"},
)
def label_audit(
    config: AuditRunConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Labels of the latest dataset version that a confident model which never trained on them
    contradicts, queued for review (reason `label_suspect`) as a table and a COCO file."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.flows.review_queue import audit_labels

    work = work_store.open()
    outcome = audit_labels(
        core_of(config, AuditOptions),
        registry=mlflow.registry(),
        versions=VersionStore(work),
        data_store=data_store.open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        work_store=work,
    )
    return dg.MaterializeResult(
        metadata={
            "dataset_version": outcome.dataset_version,
            "labels_audited": outcome.audited,
            "judged_by_model": markdown_table(
                [{"model_version": v, "labels": n} for v, n in outcome.judged_by.items()]
            ),
            "not_judged": outcome.not_judged,
            "suspects": outcome.files.size,
            "queue": markdown_table([{k: e[k] for k in _SHOWN} for e in outcome.entries], 50),
            "labeling_tool_import": outcome.files.coco_key,
        }
    )


def _by_reason(entries: list[dict[str, object]]) -> list[dict[str, object]]:
    counts: dict[str, int] = {}
    for entry in entries:
        for reason in entry["reasons"]:  # type: ignore[union-attr]
            counts[reason] = counts.get(reason, 0) + 1
    return [{"reason": r, "images": n} for r, n in sorted(counts.items())]
