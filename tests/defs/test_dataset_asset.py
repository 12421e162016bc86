"""`dataset_version` in-process: a partition per version, checks, no duplicate versions."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.datasets.assets import dataset_version, dataset_versions
from maskfind_pipeline.defs.ingest.assets import image_catalog
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY_TRAINING
from tests.support.stores import put_pair


def _nightly(locations: Locations, instance: dg.DagsterInstance) -> dict[str, object]:
    result = dg.materialize(
        [image_catalog, dataset_version, dataset_versions],
        selection=[image_catalog, dataset_version],
        resources=build_resources(locations),
        instance=instance,
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks if c.passed} >= {
        "manifest_schema",
        "no_split_leakage",
        "manifest_checksum",
        "failures_included",
    }
    event = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("dataset_version")
    )
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_versions_become_partitions_and_failures_make_a_new_one(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data = LocalObjectStore(locations.data_uri)
    for i in range(12):
        put_pair(data, f"img{i}", seed=i, tags={"image_type": f"cam-{i % 3}"})
    instance = dg.DagsterInstance.ephemeral()

    first = _nightly(locations, instance)
    assert first["created"] is True and first["parent"] == "none"
    assert str(first["added_samples"]).startswith("![added_samples](data:image/png;base64,")
    assert instance.get_dynamic_partitions("dataset_versions") == [first["dataset_version"]]

    again = _nightly(locations, instance)
    assert again["created"] is False and again["dataset_version"] == first["dataset_version"]
    assert "added_samples" not in again, "no new version, nothing added"

    for i in range(4):
        put_pair(
            data,
            f"fail{i}",
            source="failures",
            seed=100 + i,
            tags={"image_type": "cam-0", "failed_model_version": "1"},
        )
    second = _nightly(locations, instance)
    assert second["created"] is True and second["parent"] == first["dataset_version"]
    sheet = tmp_path / "plots" / f"{second['dataset_version']}-added.png"
    with Image.open(sheet) as image:  # the 4 failures only: one row of 6 tiles of 128 + captions
        assert image.size == (6 * 128, 128 + 14)
    assert "failure" in str(second["diff_vs_parent"])
    assert instance.get_dynamic_partitions("dataset_versions") == [
        first["dataset_version"],
        second["dataset_version"],
    ]
    recorded = instance.get_latest_materialization_event(dg.AssetKey("dataset_versions"))
    assert recorded is not None and recorded.dagster_event is not None
    assert recorded.dagster_event.partition == second["dataset_version"]


def test_training_never_starts_on_a_version_whose_error_check_failed(tmp_path: Path) -> None:
    """`failures_included` fails (ERROR) when the catalog's failures are all left out, here by
    holding out their image type: the blocking check stops the run before `mask_model`."""
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data = LocalObjectStore(locations.data_uri)
    kept, dropped = synthetic.DEFAULT_TYPES[:2]
    synthetic.generate(data, [kept, dropped], 6, size=48)
    synthetic.generate_failures(data, [dropped], 2, failed_model_version="1", size=48)
    job = (
        defs()
        .resolve_implicit_global_asset_job_def()
        .get_subset(
            asset_selection={
                dg.AssetKey(a) for a in ("image_catalog", "dataset_version", "mask_model")
            }
        )
    )
    config = {"dataset_version": {"config": {"held_out_types": [dropped.name]}}}
    result = job.execute_in_process(
        run_config={"ops": {**config, "mask_model": {"config": TINY_TRAINING}}},
        instance=dg.DagsterInstance.ephemeral(),
        resources=build_resources(locations),
        raise_on_error=False,
    )
    assert not result.success
    errors = [
        c.check_name
        for c in result.get_asset_check_evaluations()
        if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    ]
    assert errors == ["failures_included"]
    assert not result.asset_materializations_for_node("mask_model")
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "mask_model" not in started
