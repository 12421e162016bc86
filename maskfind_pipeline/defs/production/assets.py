"""`production_predictions`: the champion's masks for one production day, graded by the reviewer."""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import markdown_table, table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.partitions import PRODUCTION_DAYS
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.novelty.model import DayAlarm


class ProductionConfig(run_config_for(ProductionOptions)):
    """Batching, I/O threads, log commits and the inference backend
    (`flows.options.ProductionOptions`)."""


@dg.asset(
    group_name="production",
    owners=OWNERS,
    code_version=asset_code_version(1),
    partitions_def=PRODUCTION_DAYS,
    deps=["promotion", "reviewer_model"],
    kinds={"pytorch", "parquet"},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30),
    check_specs=[
        dg.AssetCheckSpec(
            "novelty_alarm",
            asset="production_predictions",
            description="No image type has many images unlike anything the champion trained on "
            "(a new image type: label it).",
        )
    ],
)
def production_predictions(
    context: dg.AssetExecutionContext,
    config: ProductionConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Every image of `production/<day>/`: the champion's mask written back to
    `predictions/<day>/<id>.mask.png`, the reviewer's grade, one log row (`predictions/<day>/`
    in the work store); bad images are logged as failed, a re-run does only what is missing."""
    from maskfind_pipeline.data.production import grade_3_rate, summary
    from maskfind_pipeline.flows.production import NoChampion, predict_production_day
    from maskfind_pipeline.ml.plots import production_gallery_png

    day = context.partition_key
    try:
        report = predict_production_day(
            day,
            core_of(config, ProductionOptions),
            registry=mlflow.registry(),
            reviewers=mlflow.reviewers(),
            data_store=data_store.open(),
            work_store=work_store.open(),
            cache_root=Path(cache.root),
            run_id=context.run.run_id,
            progress=lambda done, total: context.log.info(f"{day}: {done}/{total} images"),
        )
    except NoChampion as exc:
        raise dg.Failure(description=str(exc)) from exc
    outcome, day_rows = report.outcome, report.day_rows
    failures = [r for r in outcome.rows if r["status"] != "ok"]
    gallery = production_gallery_png(outcome.worst, report.threshold) if outcome.worst else None
    scored = [r for r in day_rows if r.get("novel") is not None]
    return dg.MaterializeResult(
        metadata={
            "day": day,
            "images_listed": outcome.listed,
            "predicted_now": len(outcome.rows) - len(failures),
            "failed_now": len(failures),
            "skipped_done": outcome.skipped,
            "images_per_second": round(outcome.images_per_second, 1),
            "champion_version": report.champion_version,
            "reviewer_version": report.reviewer_version or "none",
            "backend": report.backend,
            "backend_images_per_second": markdown_table(report.backend_speeds),
            "reviewer_runtime": report.reviewer_runtime or "none (the grades read no CNN)",
            **(
                {"reviewer_images_per_second": markdown_table(report.reviewer_speeds)}
                if report.reviewer_speeds
                else {}
            ),
            "grade_3_rate": grade_3_rate(day_rows),
            "novel_rate": sum(bool(r["novel"]) for r in scored) / len(scored) if scored else None,
            "by_image_type": table(summary(day_rows)),
            "failures": markdown_table(
                [{"key": r["image_key"], "reason": r["reason"]} for r in failures], limit=50
            ),
            **(
                png_metadata(
                    gallery,
                    title="worst_graded",
                    save_to=Path(cache.root).parent / "plots" / f"production-{day}.png",
                )
                if gallery
                else {}
            ),
        },
        tags={"maskfind/production_day": day},
        check_results=[_novelty_check(report.alarms, novelty_known=bool(scored))],
    )


def _novelty_check(alarms: list[DayAlarm], *, novelty_known: bool) -> dg.AssetCheckResult:
    """A warning naming every image type with many novel images that day."""
    names = ", ".join(f"{a.name} ({a.novel}/{a.total})" for a in alarms)
    if alarms:
        description = f"new image type(s): {names}"
    elif novelty_known:
        description = "no image type has many novel images"
    else:
        description = "the champion has no novelty model: nothing scored"
    return dg.AssetCheckResult(
        check_name="novelty_alarm",
        passed=not alarms,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "alarms": markdown_table(
                [
                    {"image_type": a.name, "novel": a.novel, "images": a.total, "share": a.share}
                    for a in alarms
                ]
            ),
            "image_types": ",".join(a.image_type for a in alarms),
        },
    )
