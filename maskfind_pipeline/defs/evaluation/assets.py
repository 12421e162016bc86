"""`compat_evaluation`: the model version x dataset version matrix, computed incrementally.

Modelling: the matrix is one unpartitioned table asset (what the promotion gate reads, with the
heatmap in its metadata), and every computed cell is also recorded as a materialization of the
2-D partitioned asset `compat_cells` (model version x dataset version). The table keeps the
nightly job a single unpartitioned run; the partitions make each cell visible and addressable
in the UI's partition grid, with its metrics, without re-running anything to see it.
"""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.metadata import markdown_table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.partitions import COMPAT_CELLS, MODEL_VERSIONS
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource

compat_cells = dg.AssetSpec(
    "compat_cells",
    partitions_def=COMPAT_CELLS,
    group_name="evaluation",
    description="One (model version, dataset version) cell of the matrix: that model's metrics "
    "on that version's test split (recorded by compat_evaluation).",
    deps=["compat_evaluation"],
)


class EvaluationConfig(dg.Config):
    """How much of the matrix to keep filled."""

    last_n: int | None = None
    batch_size: int = 32


@dg.asset(group_name="evaluation", deps=["mask_model", "dataset_version"], kinds={"parquet"})
def compat_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Every model (last N, champion, challenger) on every dataset version's test split, per
    image type and source; only missing cells are computed."""
    from maskfind_pipeline.data.version_store import VersionStore
    from maskfind_pipeline.evaluation import compute
    from maskfind_pipeline.evaluation.cells import Cell, CellStore
    from maskfind_pipeline.evaluation.report import heatmap_png, matrix_markdown, type_deltas

    work, registry = work_store.open(), mlflow.registry()
    versions, cells = VersionStore(work), CellStore(work)
    plan = compute.plan_cells(registry, versions, cells, last_n=config.last_n)
    context.instance.add_dynamic_partitions(str(MODEL_VERSIONS.name), plan.models)

    evaluate_cell = compute.CellEvaluator(
        registry=registry,
        versions=versions,
        data_store=data_store.open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        batch_size=config.batch_size,
    )

    def evaluate(cell: Cell) -> list[dict[str, object]]:
        context.log.info(f"evaluating model v{cell.model_version} on {cell.dataset_version}")
        rows = evaluate_cell(cell)
        run_id = compute.log_cell_run(registry, cell, rows)
        return [{**row, "mlflow_run_id": run_id} for row in rows]

    def record(cell: Cell, rows: list[dict[str, object]]) -> None:
        overall = next(r for r in rows if r["group_kind"] == "overall")
        context.log_event(
            dg.AssetMaterialization(
                "compat_cells",
                partition=dg.MultiPartitionKey(
                    {"model": cell.model_version, "dataset": cell.dataset_version}
                ),
                metadata={
                    "miou": float(str(overall["miou"])),
                    "n_images": int(str(overall["n_images"])),
                    "groups": markdown_table(rows, limit=100),
                },
            )
        )

    written = compute.fill_matrix(plan, cells, evaluate, record)
    table = cells.read(plan.wanted)
    champion, challenger = registry.alias_or_none("champion"), registry.alias_or_none("challenger")
    deltas = (
        type_deltas(table, challenger.version, champion.version) if champion and challenger else []
    )
    return dg.MaterializeResult(
        metadata={
            "cells_computed": len(written),
            "cells_total": len(plan.wanted),
            "models": ", ".join(f"v{m}" for m in plan.models),
            "matrix": dg.MetadataValue.md(matrix_markdown(table)),
            "challenger_vs_champion": markdown_table(deltas, limit=200),
            **png_metadata(
                heatmap_png(table, dataset_order=plan.datasets),
                title="heatmap",
                save_to=Path(cache.root).parent / "plots" / "compat_heatmap.png",
            ),
        }
    )
