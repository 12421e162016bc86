"""`performance_history`: per image type over time, the champion's test mIoU and production's
grade and novelty rates, with warning checks that `history_alert_sensor` turns into messages."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.evaluation.history import GRADE3_CHECK, MIOU_CHECK, HistoryPolicy

ASSET = "performance_history"


class HistoryConfig(run_config_for(HistoryPolicy)):
    """When the history warns, and how many production days it reads
    (`evaluation.history.HistoryPolicy`)."""


@dg.asset(
    group_name="production",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["compat_evaluation", "production_predictions"],
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            MIOU_CHECK,
            asset=ASSET,
            description="No image type's current champion test mIoU is far below the best "
            "champion's (names the image types that fail).",
        ),
        dg.AssetCheckSpec(
            GRADE3_CHECK,
            asset=ASSET,
            description="No image type has too many grade 3 masks on the newest production day "
            "(names the image types that fail).",
        ),
    ],
)
def performance_history(
    config: HistoryConfig,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The champion of each date's test mIoU per image type (from the compatibility cells) and
    each production day's grade distribution, grade-3 and novelty rates per image type."""
    from maskfind_pipeline.flows.history import build_history

    report = build_history(
        core_of(config, HistoryPolicy), registry=mlflow.registry(), work_store=work_store.open()
    )
    plots: dict[str, dg.MetadataValue] = {}
    for name, png in report.plots.items():
        save_to = Path(cache.root).parent / "plots" / f"{name}.png"
        plots |= png_metadata(png, title=name.replace("-", "_"), save_to=save_to)
    return dg.MaterializeResult(
        metadata={
            "champion": report.terms[-1].version if report.terms else "none",
            "champion_terms": len(report.terms),
            "production_days": len({r["day"] for r in report.daily}),
            "champion_miou": markdown_table(report.miou, limit=200),
            "production_daily": markdown_table(report.daily[-200:], limit=200),
            "failing_checks": dg.MetadataValue.json([c.to_json() for c in report.failing]),
            **plots,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=check.name,
                passed=check.passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=check.description,
                metadata={
                    "image_types": ",".join(sorted(check.failing)),
                    "checked": check.checked,
                },
            )
            for check in report.checks
        ],
    )
