"""RELIABILITY row 24 through `compat_evaluation` (not only the version store): a dataset
version whose manifest changed or went missing fails the run with an error naming the version,
and no cell is written for it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY_TRAINING


def _run(locations: Locations, instance: dg.DagsterInstance, assets: tuple[str, ...], config: dict):  # type: ignore[no-untyped-def]
    job = (
        defs()
        .resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey(a) for a in assets})
    )
    return job.execute_in_process(
        run_config=config,
        instance=instance,
        resources=build_resources(locations),
        raise_on_error=False,
    )


@pytest.mark.parametrize("fault", ["changed", "missing"])
def test_evaluating_a_corrupt_version_names_it_and_writes_no_cell(
    tmp_path: Path, fault: str
) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    synthetic.generate(
        LocalObjectStore(locations.data_uri), synthetic.DEFAULT_TYPES[:2], 8, size=48
    )
    instance = dg.DagsterInstance.ephemeral()
    trained = _run(
        locations,
        instance,
        ("image_catalog", "dataset_version", "mask_model"),
        {"ops": {"mask_model": {"config": TINY_TRAINING}}},
    )
    assert trained.success
    work = LocalObjectStore(locations.work_uri)
    vid = str(VersionStore(work).latest()["id"])  # type: ignore[index]
    manifest = next(i.key for i in work.list(f"datasets/{vid}/") if i.key.endswith(".parquet"))
    if fault == "changed":
        data = bytearray(work.get(manifest))
        data[len(data) // 2] ^= 0x01
        work.put(manifest, bytes(data))
    else:
        work.delete(manifest)

    result = _run(locations, instance, ("compat_evaluation",), {})

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    reported = failure.step_failure_data.user_failure_data
    assert reported is not None and reported.description is not None
    assert reported.description.startswith(f"corrupt dataset version {vid}: ")
    assert ("manifest missing" if fault == "missing" else "sha256") in reported.description
    assert not [c for c in CellStore(work).existing() if c.dataset_version == vid]
