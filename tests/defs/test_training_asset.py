"""`mask_model` end to end in-process: tiny data, 2 epochs from scratch, registered, reloadable."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import torch

from maskfind_pipeline import synthetic
from maskfind_pipeline.defs.datasets.assets import dataset_version, dataset_versions
from maskfind_pipeline.defs.ingest.assets import image_catalog
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.defs.training.assets import mask_model
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.promotion import promote
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY_TRAINING, tiny_training


def test_mask_model_trains_registers_challenger_and_reloads(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data = LocalObjectStore(locations.data_uri)
    synthetic.generate(data, synthetic.DEFAULT_TYPES[:3], 8, size=64)
    resources = build_resources(locations)
    result = dg.materialize(
        [image_catalog, dataset_version, dataset_versions, mask_model],
        selection=[image_catalog, dataset_version, mask_model],
        resources=resources,
        run_config=dg.RunConfig({"mask_model": {"config": TINY_TRAINING}}),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    meta = {
        k: v.value
        for k, v in result.asset_materializations_for_node("mask_model")[0].metadata.items()
    }
    assert meta["model_version"] == "1" and 0.0 < float(str(meta["threshold"])) < 1.0
    assert str(meta["pr_curve"]).startswith("![pr_curve](data:image/png;base64,")
    registry = resources["mlflow"].registry()  # type: ignore[attr-defined]
    challenger = registry.get("challenger")
    assert challenger.version == "1"
    assert challenger.tags["dagster_run_id"] == result.run_id
    assert challenger.tags["training_key"] == f"{result.run_id}/mask_model"  # what a retry finds
    assert set(challenger.tags["image_types_seen"].split(",")) <= {
        t.name for t in synthetic.DEFAULT_TYPES[:3]
    }
    plots = registry.client.list_artifacts(challenger.run_id, "plots")
    assert {"pr_curve.png", "val_gallery.png"} <= {Path(p.path).name for p in plots}
    predictor = load_model(registry, "challenger")
    image = synthetic.render_sample(synthetic.DEFAULT_TYPES[0], np.random.default_rng(1), 64).image
    assert predictor.predict_mask(image).shape == (64, 64)

    # A warm start begins from the champion's weights: with a learning rate of 0 the trained
    # convolutions are the champion's exactly (no ImageNet or random initialisation).
    promote(registry, "1", actor="test", reason="warm start")
    frozen = tiny_training(learning_rate=0.0, weight_decay=0.0, epochs=1)
    frozen["warm_start"] = True
    warm = dg.materialize(
        [image_catalog, dataset_version, dataset_versions, mask_model],
        selection=[mask_model],
        resources=resources,
        run_config=dg.RunConfig({"mask_model": {"config": frozen}}),
        instance=dg.DagsterInstance.ephemeral(),
    )
    warm_meta = warm.asset_materializations_for_node("mask_model")[0].metadata
    assert warm_meta["warm_start_from"].value == "1"
    champion, second = load_model(registry, "1"), load_model(registry, "2")
    convs = [k for k, v in champion.model.state_dict().items() if k.endswith("conv1.weight")]
    assert convs
    for key in convs:
        assert torch.equal(champion.model.state_dict()[key], second.model.state_dict()[key]), key
