"""`test_scores`: the per-sample scoring the matrix needs, fanned out in chunks.

A graph-backed asset: `plan` finds, for each model with a missing cell, the distinct test samples
it has not scored and cuts them into chunks (`EvaluationOptions.chunk` samples, a dynamic output
each); `score_chunk` scores one chunk and commits its part of the model's scores table; `collect`
compacts the tables. Each chunk is a step of its own, so the executor the definitions load with
places them: Dagster's processes on this machine, celery workers (`MASKFIND_EXECUTOR=celery`) or
Kubernetes Jobs (`k8s`). The chunks travel between steps through the work store (`step_io`, the
object store every worker reads), not a local folder. `compat_evaluation` then aggregates the
cells from the scores and scores nothing (a chunk that failed is scored there).

The library does the work (`flows.evaluation.plan_scoring`, `score_chunk`); this is the graph.
"""

from pathlib import Path

import dagster as dg

from maskfind_pipeline.defs.config import core_of
from maskfind_pipeline.defs.evaluation.assets import EvaluationConfig
from maskfind_pipeline.defs.ownership import OWNERS, asset_code_version
from maskfind_pipeline.defs.resources import (
    CacheResource,
    MlflowResource,
    ObjectStoreResource,
    forget_steps,
)
from maskfind_pipeline.flows.options import EvaluationOptions


@dg.op(
    ins={"model": dg.In(dg.Nothing), "dataset": dg.In(dg.Nothing)},
    out=dg.DynamicOut(io_manager_key="step_io"),
)
def plan(
    context: dg.OpExecutionContext,
    config: EvaluationConfig,
    work_store: ObjectStoreResource,
    mlflow: MlflowResource,
):  # type: ignore[no-untyped-def]  # a generator of DynamicOutputs
    """The chunks of test samples the models with a missing cell have not scored."""
    from maskfind_pipeline.data.version_store import CorruptVersion, VersionStore
    from maskfind_pipeline.evaluation.cells import CellStore
    from maskfind_pipeline.flows.evaluation import plan_scoring

    work = work_store.open()
    try:
        matrix, chunks = plan_scoring(
            core_of(config, EvaluationOptions),
            registry=mlflow.registry(),
            versions=VersionStore(work),
            cells=CellStore(work),
        )
    except CorruptVersion as exc:  # changed or missing manifest: name it, score nothing
        raise dg.Failure(description=str(exc)) from exc
    context.log.info(
        f"{len(matrix.missing)} missing cell(s); {sum(c.rows.num_rows for c in chunks)} test "
        f"sample(s) to score in {len(chunks)} chunk(s)"
    )
    for chunk in chunks:
        yield dg.DynamicOutput(chunk, mapping_key=chunk.key)


@dg.op(out=dg.Out(io_manager_key="step_io"))
def score_chunk(
    context: dg.OpExecutionContext,
    config: EvaluationConfig,
    chunk,  # type: ignore[no-untyped-def]  # a ScoreChunk (no library import at load time)
    data_store: ObjectStoreResource,
    work_store: ObjectStoreResource,
    cache: CacheResource,
    mlflow: MlflowResource,
) -> tuple[str, int]:
    """Score one chunk, commit its part of the model's scores table; the model and the rows
    scored."""
    from maskfind_pipeline.evaluation.scores import ScoreStore
    from maskfind_pipeline.flows.evaluation import SampleScorer
    from maskfind_pipeline.flows.evaluation import score_chunk as score

    options = core_of(config, EvaluationOptions)
    scorer = SampleScorer(
        registry=mlflow.registry(),
        data_store=data_store.open(),
        cache=cache.open(),
        decoded_root=Path(cache.root) / "decoded",
        batch_size=options.batch_size,
        device=options.device,
        chunk=options.chunk,
    )
    part = score(chunk, scorer, ScoreStore(work_store.open()))
    context.log.info(f"model v{chunk.model_version}: scored {part.num_rows} test sample(s)")
    return chunk.model_version, part.num_rows


@dg.op(out=dg.Out(dg.Nothing))
def collect(
    context: dg.OpExecutionContext,
    scored: list[tuple[str, int]],
    work_store: ObjectStoreResource,
) -> None:
    """Compact the scores tables the chunks wrote to; drop this run's chunks from the store."""
    from maskfind_pipeline.evaluation.scores import ScoreStore

    work = work_store.open()
    models = sorted({model for model, _ in scored})
    ScoreStore(work).compact(models)
    forget_steps(work, context.run_id)
    context.add_output_metadata(
        {
            "samples_scored": sum(n for _, n in scored),
            "chunks": len(scored),
            "models": ", ".join(f"v{m}" for m in models),
        }
    )


@dg.graph_asset(
    group_name="evaluation",
    owners=OWNERS,
    code_version=asset_code_version(1),
    ins={
        "mask_model": dg.AssetIn(dagster_type=dg.Nothing),
        "dataset_version": dg.AssetIn(dagster_type=dg.Nothing),
    },
    kinds={"parquet"},
    description="Each model with a missing cell of the matrix scored on the distinct test "
    "samples it has not scored: one step per chunk, wherever the executor puts it.",
)
def test_scores(mask_model, dataset_version):  # type: ignore[no-untyped-def]  # a Dagster graph
    chunks = plan(model=mask_model, dataset=dataset_version)
    return collect(chunks.map(score_chunk).collect())
