"""Data-parallel training: sharded loaders, and two gloo processes under torchrun that end with
the same weights while only rank 0 logs and registers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.ingest import IngestOptions
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.data.versions import VersionConfig
from maskfind_pipeline.flows.datasets import publish_dataset_version
from maskfind_pipeline.flows.ingest import ingest_catalog
from maskfind_pipeline.flows.options import DistributedOptions, TrainingOptions
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.distributed import Ranks, training_device
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.ddp_worker import weights_sha256
from tests.support.manifests import manifest_of
from tests.support.models import TINY_SPEC, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[3]


def test_sharded_train_loaders_split_every_epoch_between_the_ranks(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    keys = synthetic.generate(store, synthetic.DEFAULT_TYPES[:2], 7, size=32)
    manifest = manifest_of(store, keys, size=32, split=lambda i: "val" if i % 4 == 0 else "train")
    decoded = build_decoded(
        manifest, store, ContentCache(tmp_path / "c"), tmp_path / "d", version_id="v", size=32
    )
    train_rows = {i for i, s in enumerate(manifest.column("split").to_pylist()) if s == "train"}
    epochs: list[list[list[int]]] = []
    for epoch in (1, 2):
        shards = []
        for rank in (0, 1):
            loaders = make_loaders(
                manifest, decoded, batch_size=3, augment=None, seed=5, shard=(rank, 2)
            )
            loaders["train"].sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            shards.append([int(i) for b in loaders["train"] for i in b["index"]])
            assert [int(i) for b in loaders["val"] for i in b["index"]] == sorted(
                set(range(len(keys))) - train_rows
            )
        epochs.append(shards)
        assert len(shards[0]) == len(shards[1]) == (len(train_rows) + 1) // 2  # padded
        assert set(shards[0]) | set(shards[1]) == train_rows
        assert len(set(shards[0]) & set(shards[1])) <= len(train_rows) % 2  # the padding only
    assert epochs[0] != epochs[1], "each epoch draws a new permutation"


def test_each_rank_gets_its_own_gpu_and_a_share_of_the_cores() -> None:
    assert training_device("cuda", 1) == "cuda:1"
    assert training_device("cuda:0", 3) == "cuda:3"
    assert training_device("cpu", 1) == "cpu"
    two = DistributedOptions(nproc=2)
    assert two.thread_env({"OMP_NUM_THREADS": "3"}) == {}
    assert int(two.thread_env({})["OMP_NUM_THREADS"]) >= 1
    single = Ranks()
    assert not single.distributed and single.agree(True) == 1.0 and single.sum([2, 3]) == [2, 3]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MASKFIND_HOME with one published dataset version of 24 generated 64 px images."""
    root = tmp_path_factory.mktemp("ddp-home")
    locations = Locations.from_env({"MASKFIND_HOME": str(root)})
    data, work = LocalObjectStore(locations.data_uri), LocalObjectStore(locations.work_uri)
    synthetic.generate(data, synthetic.DEFAULT_TYPES[:3], 8, size=64)
    cache = ContentCache(locations.cache_dir)
    ingest_catalog(data, work, cache, IngestOptions(), run_id="ddp-test")
    publish_dataset_version(work, VersionConfig())
    return root


@pytest.mark.slow  # ~50 s; make test runs the same torchrun path through mask_model (Pipes)
def test_two_gloo_processes_end_with_the_weights_that_rank_0_alone_registered(
    home: Path, tmp_path: Path
) -> None:
    # A budget of 3 s ends training mid-epoch while a onecycle schedule follows the time spent:
    # ranks that read their own clocks would stop at different steps (and hang) or step with
    # different learning rates (and drift apart).
    train = TINY_TRAIN.model_copy(
        update={
            "epochs": 500,
            "batch_size": 4,
            "max_minutes": 0.05,
            "early_stopping_patience": 0,
            "device": "cpu",
        }
    )
    options = TrainingOptions(model=TINY_SPEC, train=train, distributed=DistributedOptions(nproc=2))
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {"options": options.model_dump(mode="json"), "home": str(home), "out": str(tmp_path)}
        )
    )
    started = time.perf_counter()
    done = subprocess.run(
        [*DistributedOptions(nproc=2).torchrun_command("tests.support.ddp_worker"), str(job)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["sha256"] == rank1["sha256"]
    assert rank0["flow_sha256"] == rank1["flow_sha256"]
    assert rank0["version"] == "1" and rank1["version"] is None
    assert rank0["stop_reason"] == "time_budget", rank0["epochs"]
    assert len(rank0["epochs"]) >= 2 and rank1["epochs"] == []
    assert rank0["epochs"][0]["line"].startswith(f"epoch 1/{train.epochs}: loss ")
    assert np.isfinite([e["train_loss"] for e in rank0["epochs"]]).all()

    paths = Locations.from_env({"MASKFIND_HOME": str(home)})
    registry = ModelRegistry(paths.tracking_uri, artifact_location=paths.artifact_location)
    assert [v.version for v in registry.versions()] == ["1"]
    assert len(registry.client.search_runs([registry.experiment_id()])) == 1
    assert registry.get("challenger").version == "1"
    assert registry.client.get_run(registry.get("1").run_id).data.params["distributed.nproc"] == "2"
    assert weights_sha256(load_model(registry, "challenger").model) == rank1["sha256"]
    print(f"torchrun, 2 processes: {time.perf_counter() - started:.1f} s")
