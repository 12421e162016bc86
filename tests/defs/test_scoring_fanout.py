"""`test_scores` in-process: the scoring the matrix needs, fanned out one step per chunk, gives
the scores one in-process `SampleScorer` gives, and `compat_evaluation` after it aggregates the
cells without scoring anything. (Two real celery workers: tests/integration/test_celery_fanout.py.)
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.resources import STEPS, build_resources
from maskfind_pipeline.evaluation.scores import ScoreChunk, plan_chunks
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.scoring import (
    MODELS,
    chunks_expected,
    comparable,
    distinct_test_rows,
    in_process_scores,
    scoring_config,
    scoring_home,
    stored_scores,
)


def test_chunks_cover_each_row_once_in_order_and_are_named_by_content() -> None:
    import pyarrow as pa

    rows = pa.table({"sample_id": [f"s{i}" for i in range(7)], "mask_sha256": ["m"] * 7})
    chunks = plan_chunks({"1": rows, "2": rows.slice(0, 2), "3": rows.slice(0, 0)}, 3)
    assert [(c.model_version, c.number, c.rows.num_rows) for c in chunks] == [
        ("1", 0, 3), ("1", 1, 3), ("1", 2, 1), ("2", 0, 2),
    ]  # fmt: skip
    assert pa.concat_tables([c.rows for c in chunks[:3]]).equals(rows)
    assert len({c.key for c in chunks}) == len(chunks)
    again = ScoreChunk("1", 9, rows.slice(0, 3))
    assert again.part_name == chunks[0].part_name  # same model, same samples: the same part
    assert ScoreChunk("2", 0, rows.slice(0, 3)).part_name != chunks[0].part_name
    with pytest.raises(ValueError, match="at least 1"):
        plan_chunks({"1": rows}, 0)


def test_the_fan_out_scores_what_one_scorer_does_and_the_cells_need_nothing_more(
    tmp_path: Path,
) -> None:
    options = scoring_home(tmp_path / "home")
    job = defs().resolve_job_def("evaluation")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=scoring_config(), instance=instance, resources=build_resources(options)
        )
        logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert result.success
    chunk_steps = [
        e.step_key
        for e in result.all_events
        if e.is_step_success and "score_chunk[" in str(e.step_key)
    ]
    assert len(chunk_steps) == chunks_expected(options) >= 2
    assert not [m for m in logs if "new test sample(s)" in m], "compat_evaluation scored again"

    scored = stored_scores(options)
    assert scored.num_rows == len(MODELS) * distinct_test_rows(options).num_rows
    assert comparable(scored) == comparable(in_process_scores(options, tmp_path / "one"))
    made = {
        e.materialization.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert made["test_scores"]["samples_scored"].value == scored.num_rows
    assert made["compat_evaluation"]["cells_computed"].value == len(MODELS)
    assert not list(LocalObjectStore(options.work_uri).list(STEPS)), "chunks left behind"

    # Nothing left to score: the next run plans no chunk and computes no cell.
    with dg.DagsterInstance.ephemeral() as instance:
        again = job.execute_in_process(
            run_config=scoring_config(), instance=instance, resources=build_resources(options)
        )
    assert again.success
    assert not [
        e for e in again.all_events if e.is_step_start and "score_chunk[" in str(e.step_key)
    ]
    assert stored_scores(options).num_rows == scored.num_rows
