"""`mask_model` with `distributed: {nproc: 2}`: torchrun launched through Dagster Pipes, epochs
streamed from rank 0 into the run's logs, one version registered with the reported weights."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.defs.datasets.assets import dataset_version, dataset_versions
from maskfind_pipeline.defs.ingest.assets import image_catalog
from maskfind_pipeline.defs.partitions import MODEL_VERSIONS
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.defs.training.assets import mask_model
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.distributed import state_digest
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_training

# Slow (about 22 s: two ranks each importing torch and training): distributed training is opt-in
# (`distributed.nproc`, default 1) and does not pay on a 2-core CPU (docs/performance.md); the
# one-process `mask_model` path is tested in make test, this one in make test-slow.
pytestmark = pytest.mark.slow


def test_mask_model_trains_in_two_processes_and_streams_epochs_through_pipes(
    tmp_path: Path,
) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    synthetic.generate(
        LocalObjectStore(locations.data_uri), synthetic.DEFAULT_TYPES[:3], 8, size=64
    )
    resources = build_resources(locations)
    training = tiny_training(device="cpu", batch_size=4)
    training["distributed"] = {"nproc": 2}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [image_catalog, dataset_version, dataset_versions, mask_model],
        selection=[image_catalog, dataset_version, mask_model],
        resources=resources,
        run_config=dg.RunConfig({"mask_model": {"config": training}}),
        instance=instance,
    )
    assert result.success
    materialization = result.asset_materializations_for_node("mask_model")[0]
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["model_version"] == "1" and meta["nproc"] == 2
    assert 0.0 < float(str(meta["threshold"])) < 1.0 and meta["best_epoch"] in (1, 2)
    assert str(meta["pr_curve"]).startswith("![pr_curve](data:image/png;base64,")
    assert (materialization.tags or {})["maskfind/model_version"] == "1"
    assert instance.get_dynamic_partitions(str(MODEL_VERSIONS.name)) == ["1"]

    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    epochs = [m for m in messages if m.startswith("epoch ")]
    assert [m.split(":")[0] for m in epochs] == ["epoch 1/2", "epoch 2/2"], messages
    assert all("val mIoU" in m and "img/s" in m for m in epochs)

    registry = resources["mlflow"].registry()  # type: ignore[attr-defined]
    assert [v.version for v in registry.versions()] == ["1"]
    assert len(registry.client.search_runs([registry.experiment_id()])) == 1
    challenger = registry.get("challenger")
    assert challenger.tags["dagster_run_id"] == result.run_id
    assert meta["mlflow_run_id"] == challenger.run_id
    # The digest all ranks agreed on is the digest of the registered weights.
    assert (
        state_digest(load_model(registry, "challenger").model.state_dict())
        == meta["weights_sha256"]
    )
