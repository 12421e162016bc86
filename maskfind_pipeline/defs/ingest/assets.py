"""`image_catalog`: incremental ingest of labeled images and relabeled failures."""

from collections import Counter

import dagster as dg

from maskfind_pipeline.data.ingest import IngestOptions
from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import counts_table, markdown_table
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.resources import CacheResource, ObjectStoreResource
from maskfind_pipeline.flows.ingest import ingest_catalog

_PREVIEW_COLUMNS = ("image_key", "image_type", "source", "width", "height", "mask_fraction")


class IngestConfig(run_config_for(IngestOptions)):
    """Concurrency and limits of one ingest run (`data.ingest.IngestOptions`)."""


@dg.asset(
    group_name="ingest",
    owners=OWNERS,
    code_version=asset_code_version(1),
    kinds={"parquet"},
    retry_policy=dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL),
)
def image_catalog(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
) -> dg.MaterializeResult:
    """Every valid image/mask pair under labeled/ and failures/, deduplicated by content hash;
    what fails validation goes to the quarantine table with a reason."""
    outcome = ingest_catalog(
        data_store.open(),
        work_store.open(),
        cache.open(),
        core_of(config, IngestOptions),
        run_id=context.run.run_id,
        progress=lambda done, total: context.log.info(f"ingest: {done}/{total} pairs checked"),
    )
    report, samples, summary = outcome.report, outcome.samples, outcome.summary
    preview = report.new_samples.select(list(_PREVIEW_COLUMNS)).slice(0, 20).to_pylist()
    return dg.MaterializeResult(
        metadata={
            **{name: dg.MetadataValue.int(value) for name, value in report.counts().items()},
            "catalog_samples": dg.MetadataValue.int(samples.num_rows),
            "catalog_by_image_type": counts_table(
                Counter(samples.column("image_type").to_pylist()), "image_type"
            ),
            "catalog_by_source": counts_table(
                Counter(samples.column("source").to_pylist()), "source"
            ),
            "new_by_image_type": counts_table(summary["by_image_type"], "image_type"),
            "quarantined_by_stage": counts_table(summary["refused_by_stage"], "stage"),
            "quarantine": markdown_table(
                [
                    {"key": r.key, "stage": r.stage, "reason": r.reason, "retryable": r.retryable}
                    for r in report.refusals
                ]
            ),
            "preview": markdown_table(preview),
        }
    )
