"""`dataset_version`: an immutable, verified snapshot of the catalog; each one a partition."""

from pathlib import Path
from typing import Any, cast

import dagster as dg

from maskfind_pipeline.data.version_checks import CheckOutcome
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.data.versions import EmptyCatalog, VersionConfig
from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.partitions import DATASET_VERSIONS
from maskfind_pipeline.defs.resources import CacheResource, ObjectStoreResource
from maskfind_pipeline.flows.datasets import added_samples_sheet, publish_dataset_version
from maskfind_pipeline.version import code_version

CHECKS = (
    "manifest_schema",
    "no_split_leakage",
    "every_image_type_tested",
    "failures_included",
    "manifest_checksum",
)

dataset_versions = dg.AssetSpec(
    "dataset_versions",
    partitions_def=DATASET_VERSIONS,
    group_name="datasets",
    owners=OWNERS,
    code_version=asset_code_version(1),
    description="Every published dataset version, one partition each (recorded by "
    "dataset_version); evaluations address versions through these partitions.",
    deps=["dataset_version"],
)


class DatasetConfig(run_config_for(VersionConfig)):
    """How the catalog becomes a version (`data.versions.VersionConfig`); changing any field
    yields a new version id."""


@dg.asset(
    group_name="datasets",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["image_catalog"],
    kinds={"parquet"},
    # Blocking: a version failing an ERROR check stops the run here, so training never starts
    # on it (WARN checks, e.g. every_image_type_tested, only warn).
    check_specs=[
        dg.AssetCheckSpec(name, asset="dataset_version", blocking=True) for name in CHECKS
    ],
)
def dataset_version(
    context: dg.AssetExecutionContext,
    config: DatasetConfig,
    work_store: ObjectStoreResource,
    data_store: ObjectStoreResource,
    cache: CacheResource,
) -> dg.MaterializeResult:
    """Snapshot the current catalog: stable hash-based splits, failures included and weighted.
    The id comes from the content, so the same catalog never makes a second version."""
    work = work_store.open()
    try:
        outcome = publish_dataset_version(
            work, core_of(config, VersionConfig), code_version=code_version()
        )
    except EmptyCatalog as exc:
        raise dg.Failure(description=str(exc)) from exc
    vid, card = outcome.version_id, outcome.card
    context.instance.add_dynamic_partitions(str(DATASET_VERSIONS.name), [vid])
    if outcome.created:
        context.log_event(
            dg.AssetMaterialization(
                "dataset_versions", partition=vid, metadata=_card_metadata(card)
            )
        )
    sheet = (
        added_samples_sheet(VersionStore(work), data_store.open(), vid) if outcome.created else None
    )
    return dg.MaterializeResult(
        metadata={
            **(
                png_metadata(
                    sheet,
                    title="added_samples",
                    save_to=Path(cache.root).parent / "plots" / f"{vid}-added.png",
                )
                if sheet
                else {}
            ),
            "dataset_version": vid,
            "created": outcome.created,
            **_card_metadata(card),
            "diff_vs_parent": markdown_table(outcome.diff, limit=100),
            "warnings": dg.MetadataValue.md(
                "\n".join(f"- {w}" for w in card["warnings"]) or "_none_"
            ),
        },
        check_results=[_check_result(o) for o in outcome.checks],
        tags={"maskfind/dataset_version": vid},
    )


def _card_metadata(card: dict) -> dict[str, Any]:
    rows = [
        {
            "image_type": t,
            **{
                f"{split}/{source}": n
                for split, by_source in by_split.items()
                for source, n in by_source.items()
            },
        }
        for t, by_split in card["counts"].items()
    ]
    columns = sorted({k for row in rows for k in row if k != "image_type"})
    rows = [{"image_type": r["image_type"], **{c: r.get(c, 0) for c in columns}} for r in rows]
    return {
        "parent": card["parent"] or "none",
        "samples": dg.MetadataValue.int(card["samples"]),
        "manifest_sha256": card["manifest_sha256"],
        "counts": markdown_table(rows, limit=200),
    }


def _check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        description=outcome.description,
        metadata=cast(dict[str, Any], outcome.details),
    )
