"""`compat_evaluation`: the model version x dataset version matrix, computed incrementally.

Modelling: the matrix is one unpartitioned table asset (what the promotion gate reads, with the
heatmap in its metadata), and every computed cell is also recorded as a materialization of the
2-D partitioned asset `compat_cells` (model version x dataset version). The table keeps the
nightly job a single unpartitioned run; the partitions make each cell visible and addressable
in the UI's partition grid, with its metrics, without re-running anything to see it.
"""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of, run_config_for
from maskfind_pipeline.defs.metadata import table
from maskfind_pipeline.defs.metadata_images import png_metadata
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.partitions import COMPAT_CELLS, MODEL_VERSIONS
from maskfind_pipeline.defs.resources import CacheResource, MlflowResource, ObjectStoreResource
from maskfind_pipeline.flows.options import EvaluationOptions

compat_cells = dg.AssetSpec(
    "compat_cells",
    partitions_def=COMPAT_CELLS,
    group_name="evaluation",
    owners=OWNERS,
    code_version=asset_code_version(1),
    description="One (model version, dataset version) cell of the matrix: that model's metrics "
    "on that version's test split (recorded by compat_evaluation).",
    deps=["compat_evaluation"],
)


class EvaluationConfig(run_config_for(EvaluationOptions)):
    """How much of the matrix to keep filled (`flows.options.EvaluationOptions`)."""


@dg.asset(
    group_name="evaluation",
    owners=OWNERS,
    code_version=asset_code_version(1),
    deps=["mask_model", "dataset_version", "test_scores"],
    kinds={"parquet"},
)
def compat_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Every model (last N, champion, challenger) on every dataset version's test split, per
    image type and source; only missing cells are computed, as aggregates of the per-sample
    scores (`test_scores` scored them in chunks; what is still unscored is scored here)."""
    from maskfind_pipeline.data.version_store import CorruptVersion, VersionStore
    from maskfind_pipeline.evaluation.cells import Cell, CellStore
    from maskfind_pipeline.evaluation.report import heatmap_png, matrix_rows, type_heatmap_png
    from maskfind_pipeline.flows.evaluation import update_matrix

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
                    "groups": table(rows, limit=100),
                },
            )
        )

    work = work_store.open()
    try:
        outcome = update_matrix(
            core_of(config, EvaluationOptions),
            registry=mlflow.registry(),
            versions=VersionStore(work),
            cells=CellStore(work),
            data_store=data_store.open(),
            cache=cache.open(),
            decoded_root=Path(cache.root) / "decoded",
            on_plan=lambda plan: context.instance.add_dynamic_partitions(
                str(MODEL_VERSIONS.name), plan.models
            ),
            on_cell=record,
            log=context.log.info,
        )
    except CorruptVersion as exc:  # changed or missing manifest: name it, write no cell
        raise dg.Failure(description=str(exc)) from exc
    plan, cells = outcome.plan, outcome.table
    return dg.MaterializeResult(
        metadata={
            "cells_computed": len(outcome.written),
            "cells_total": len(plan.wanted),
            "models": ", ".join(f"v{m}" for m in plan.models),
            "matrix": table(matrix_rows(cells)),
            "challenger_vs_champion": table(outcome.deltas),
            **png_metadata(
                heatmap_png(cells, dataset_order=plan.datasets),
                title="heatmap",
                save_to=Path(cache.root).parent / "plots" / "compat_heatmap.png",
            ),
            **(
                png_metadata(
                    type_heatmap_png(cells, plan.datasets[-1]),
                    title="heatmap_per_type",
                    save_to=Path(cache.root).parent / "plots" / "compat_heatmap_per_type.png",
                )
                if plan.datasets
                else {}
            ),
        }
    )
