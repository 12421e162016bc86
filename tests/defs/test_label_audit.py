"""The label audit: new labels that a confident model which never trained on them contradicts
are queued as `label_suspect`; clean new labels are not; old training labels are not judged
again."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.review_queue import LABEL_SUSPECT, read_queue
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.segmentation.config import demo_model_spec
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_training

XRAY = next(t for t in synthetic.DEFAULT_TYPES if t.camera == "xray")
MODEL = demo_model_spec(64).model_copy(update={"decoder_channels": (64, 32, 16, 16, 8)})


def _run(locations: Locations, instance, assets: tuple[str, ...], config: dict) -> dict:  # type: ignore[no-untyped-def]
    job = (
        defs()
        .resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey(a) for a in assets})
    )
    result = job.execute_in_process(
        run_config=config, instance=instance, resources=build_resources(locations)
    )
    assert result.success
    return {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key
    }


@pytest.mark.integration
def test_wrong_new_labels_are_found_and_clean_ones_are_not(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data, work = LocalObjectStore(locations.data_uri), LocalObjectStore(locations.work_uri)
    instance = dg.DagsterInstance.ephemeral()
    synthetic.generate(data, [XRAY], 40, size=64)
    training = tiny_training(MODEL, epochs=25, learning_rate=3e-3, early_stopping_patience=0)
    _run(
        locations,
        instance,
        ("image_catalog", "dataset_version", "mask_model"),
        {"ops": {"mask_model": {"config": training}}},
    )
    new = synthetic.generate(data, [XRAY], 12, size=64, start_index=40)
    wrong = {k.rpartition("/")[2].rpartition(".")[0] for k in new[::3]}
    for image_id in wrong:  # a wrong label: the whole image marked as product
        data.put(f"labeled/{image_id}.mask.png", synthetic.encode_mask(np.ones((64, 64), bool)))
    meta = _run(locations, instance, ("image_catalog", "dataset_version", "label_audit"), {})[
        "label_audit"
    ]

    queue = read_queue(work, f"review/labels/{meta['dataset_version'].value}/").to_pylist()
    assert {r["image_id"] for r in queue} == wrong
    assert all(r["reasons"] == [LABEL_SUSPECT] and r["model_version"] == "1" for r in queue)
    versions = VersionStore(work)
    first = versions.manifest(str(versions.list()[0]["id"]))
    old_train = sum(s == "train" for s in first.column("split").to_pylist())
    assert meta["not_judged"].value == old_train, "labels model 1 trained on are not re-judged"
    assert meta["labels_audited"].value == 40 + 12 - old_train
