"""`image_catalog` materializes in-process on tiny data, reports metadata, and is idempotent."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.defs.ingest.assets import image_catalog
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.stores import put_pair


def _materialize(locations: Locations) -> dict[str, object]:
    result = dg.materialize([image_catalog], resources=build_resources(locations))
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_image_catalog_materializes_and_rerun_adds_nothing(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data = LocalObjectStore(locations.data_uri)
    for i in range(3):
        put_pair(data, f"ok{i}", seed=i, tags={"image_type": f"cam-{i % 2}"})
    put_pair(data, "broken", image=b"not an image")

    first = _materialize(locations)
    assert first["new_samples"] == 3 and first["quarantined"] == 1
    assert "cam-0" in str(first["catalog_by_image_type"])
    assert "broken.png" in str(first["quarantine"])
    assert Catalog(LocalObjectStore(locations.work_uri)).read().samples.num_rows == 3
    assert any(locations.cache_dir.rglob("*"))

    second = _materialize(locations)
    assert second["new_samples"] == 0 and second["quarantined"] == 0
    assert second["skipped_already_seen"] == 4  # three samples and one permanent refusal
    assert second["catalog_samples"] == 3
