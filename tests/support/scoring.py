"""A home to score in: a published dataset version of small synthetic images and two registered
tiny untrained U-Nets, no training; and what an in-process `SampleScorer` makes of it, to compare
the fan-out of `test_scores` with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.resources import MlflowResource, build_resources
from maskfind_pipeline.evaluation.members import update_members
from maskfind_pipeline.evaluation.scores import ScoreStore
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_record

MODELS = ("1",)  # a registered model costs seconds; chunks of several models: a unit test
CHUNK = 2
# Most samples in test (a split is a function of the sample's hash): chunks from few images.
FRACTIONS = [0.2, 0.1, 0.7]


def scoring_config(chunk: int = CHUNK) -> dict[str, Any]:
    """Run config of the evaluation job: chunks of `chunk` samples, on the CPU."""
    options = {"chunk": chunk, "device": "cpu", "batch_size": 4}
    return {
        "ops": {
            "test_scores": {
                "ops": {"plan": {"config": options}, "score_chunk": {"config": options}}
            },
            "compat_evaluation": {"config": options},
        }
    }


def scoring_home(home: Path, images: Path | None = None, per_type: int = 6) -> Locations:
    """A published dataset version (two image types, 48 px) and the registered `MODELS`."""
    env = {"MASKFIND_HOME": str(home)}
    if images is not None:
        env["MASKFIND_DATA_URI"] = str(images)
    locations = Locations.from_env(env)
    if images is None:
        synthetic.generate(
            LocalObjectStore(locations.data_uri), synthetic.DEFAULT_TYPES[:2], per_type, size=48
        )
    job = (
        defs()
        .resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey("image_catalog"), dg.AssetKey("dataset_version")})
    )
    with dg.DagsterInstance.ephemeral() as instance:
        made = job.execute_in_process(
            run_config={"ops": {"dataset_version": {"config": {"fractions": FRACTIONS}}}},
            instance=instance,
            resources=build_resources(locations),
        )
        assert made.success
    mlflow = build_resources(locations)["mlflow"]
    assert isinstance(mlflow, MlflowResource)
    registry = mlflow.registry()
    for seed in MODELS:
        registry.log_training(tiny_record(int(seed)), alias=None)
    return locations


def distinct_test_rows(locations: Locations) -> pa.Table:
    """The distinct test samples of every published version."""
    work = LocalObjectStore(locations.work_uri)
    versions = VersionStore(work)
    cards = versions.list()
    members = update_members(LocalObjectStore(locations.home / "members-copy"), versions, cards)
    return members.rows_of([str(c["id"]) for c in cards])


def in_process_scores(locations: Locations, out: Path, chunk: int = CHUNK) -> pa.Table:
    """Every model's scores on `distinct_test_rows`, by one `SampleScorer` in this process (the same
    chunks, so the same batches), written to a store of their own under `out`."""
    from maskfind_pipeline.flows.evaluation import SampleScorer

    mlflow = build_resources(locations)["mlflow"]
    assert isinstance(mlflow, MlflowResource)
    scorer = SampleScorer(
        registry=mlflow.registry(),
        data_store=LocalObjectStore(locations.data_uri),
        cache=ContentCache(out / "cache"),
        decoded_root=out / "decoded",
        batch_size=4,
        device="cpu",
        chunk=chunk,
    )
    store = ScoreStore(LocalObjectStore(out / "work"))
    rows = distinct_test_rows(locations)
    return pa.concat_tables([scorer.ensure(m, rows, store) for m in MODELS])


def comparable(scores: pa.Table) -> list[dict[str, Any]]:
    """Scores without their time, sorted by model and sample."""
    keep = [c for c in scores.column_names if c != "evaluated_at"]
    rows = scores.select(keep).to_pylist()
    return sorted(rows, key=lambda r: (r["model_version"], r["sample_id"], r["mask_sha256"]))


def stored_scores(locations: Locations) -> pa.Table:
    store = ScoreStore(LocalObjectStore(locations.work_uri))
    return pa.concat_tables([store.of(m) for m in MODELS])


def chunks_expected(locations: Locations, chunk: int = CHUNK) -> int:
    n = distinct_test_rows(locations).num_rows
    return len(MODELS) * int(np.ceil(n / chunk))
