"""The scoring of the evaluation job fanned out over two real celery workers (deploy/celery, the
RabbitMQ of this machine, a vhost of the test's own): both workers score chunks, and the scores
and cells equal what one in-process `SampleScorer` makes of the same samples. (The same fan-out
in-process, faster: tests/defs/test_scoring_fanout.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.defs.resources import STEPS
from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.celery_workers import celery_deployment, vhost_exists
from tests.support.scoring import (
    MODELS,
    chunks_expected,
    comparable,
    in_process_scores,
    scoring_config,
    scoring_home,
    stored_scores,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.slow
def test_two_celery_workers_score_the_chunks_and_equal_one_scorer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    synthetic.generate(LocalObjectStore(images), synthetic.DEFAULT_TYPES[:2], 6, size=48)
    home = tmp_path / "celery"

    with celery_deployment(home, images, monkeypatch, ["left", "right"]) as deployment:
        options = scoring_home(home, images)
        result = deployment.execute("evaluation", run_config=scoring_config())
        placed = deployment.placement(result.run_id)

    assert result.success
    chunks = {step: worker for step, worker in placed.items() if "score_chunk[" in step}
    assert len(chunks) == chunks_expected(options) >= 2
    assert set(chunks.values()) == {"left", "right"}, placed  # both workers scored chunks
    assert set(placed.values()) <= {"left", "right"}, placed  # every step ran on a worker
    expected = in_process_scores(options, tmp_path / "one")
    assert comparable(stored_scores(options)) == comparable(expected)
    work = LocalObjectStore(options.work_uri)
    assert {c.model_version for c in CellStore(work).existing()} == set(MODELS)
    assert not list(work.list(STEPS)), "chunks left behind in the work store"
    assert deployment.vhost == "" or not vhost_exists(deployment.vhost)
