"""The trust loop in-process: a model that never saw one image type is not promoted (and the
report names that type), a better model is, and the matrix is filled incrementally."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.ml.segmentation.config import demo_model_spec
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import tiny_training

pytestmark = pytest.mark.integration

TYPES = [
    synthetic.ImageType.parse(n)
    for n in ("color2d-choc_bar-conveyor-s1", "xray-praline-tray-s2", "darkfield-wafer-plain-s3")
]
HELD_OUT = "darkfield-wafer-plain-s3"
HYPER = {"learning_rate": 3e-3, "early_stopping_patience": 0, "epochs": 8}
TRAINING = tiny_training(**HYPER)
# The better model: the demo's offline-pretrained EfficientNet-Lite0 encoder, same budget.
LITE0 = demo_model_spec(64).model_copy(update={"decoder_channels": (64, 32, 16, 16, 8)})
PRETRAINED = tiny_training(LITE0, **HYPER)


def _run(
    instance, locations, assets: list[str], config: dict, *, success: bool = True
) -> dg.ExecuteInProcessResult:
    job = (
        defs()
        .resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey(a) for a in assets})
    )
    result = job.execute_in_process(
        run_config=config,
        instance=instance,
        resources=build_resources(locations),
        raise_on_error=False,
    )
    assert result.success is success
    return result


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    (event,) = [
        e
        for e in result.asset_materializations_for_node(asset)
        if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in event.metadata.items()}


def test_worse_model_is_blocked_and_named_better_model_is_promoted(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    synthetic.generate(LocalObjectStore(locations.data_uri), TYPES, 30, size=64)
    instance = dg.DagsterInstance.ephemeral()
    # A few test images per type here: a tolerance that fits that noise; the rule is the same.
    gate = {"promotion": {"config": {"floor": 0.3, "min_samples": 3, "tolerance": 0.02}}}
    chain = ["image_catalog", "dataset_version", "mask_model", "compat_evaluation", "promotion"]

    first = _run(
        instance,
        locations,
        chain,
        {"ops": {"mask_model": {"config": TRAINING}, **gate}},
    )
    assert _meta(first, "promotion")["champion_after"] == "1"

    # The gate is a blocking check: the refusal fails the run at `promotion`, and
    # `reviewer_model`, downstream of the gate, never starts.
    held = _run(
        instance,
        locations,
        [*chain, "reviewer_model"],
        {
            "ops": {
                "dataset_version": {"config": {"held_out_types": [HELD_OUT]}},
                "mask_model": {"config": TRAINING},
                **gate,
            }
        },
        success=False,
    )
    promotion = _meta(held, "promotion")
    assert promotion["promoted"] is False and promotion["champion_after"] == "1"
    assert HELD_OUT in str(promotion["reasons"])
    (gate_check,) = held.get_asset_check_evaluations()[-1:]
    assert gate_check.check_name == "gate_passed" and not gate_check.passed
    assert gate_check.severity == dg.AssetCheckSeverity.ERROR
    assert not held.asset_materializations_for_node("reviewer_model")
    started = {e.step_key for e in held.all_events if e.event_type_value == "STEP_START"}
    assert "reviewer_model" not in started
    evaluation = _meta(held, "compat_evaluation")
    assert evaluation["cells_computed"] == 3  # v2 on both versions, v1 on the new one

    better = _run(
        instance,
        locations,
        ["mask_model", "compat_evaluation", "promotion"],
        {
            "ops": {
                "mask_model": {
                    "config": {**PRETRAINED, "dataset_version": _first_version(locations)}
                },
                **gate,
            }
        },
    )
    assert _meta(better, "compat_evaluation")["cells_computed"] == 2
    outcome = _meta(better, "promotion")
    assert outcome["champion_after"] == "3", (outcome["reasons"], outcome["evidence"])
    assert len(CellStore(LocalObjectStore(locations.work_uri)).existing()) == 6
    assert instance.get_dynamic_partitions("model_versions") == ["1", "2", "3"]


def _first_version(locations: Locations) -> str:
    from maskfind_pipeline.data.version_store import VersionStore

    return str(VersionStore(LocalObjectStore(locations.work_uri)).list()[0]["id"])


def test_older_models_score_lower_on_new_production_failures(tmp_path: Path) -> None:
    """Failures of a kind the old model never saw enter a new dataset version: the old model on
    the new test set scores lower on the failure source, the model trained with them higher."""
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    data = LocalObjectStore(locations.data_uri)
    synthetic.generate(data, TYPES[:2], 30, size=64)
    instance = dg.DagsterInstance.ephemeral()
    chain = ["image_catalog", "dataset_version", "mask_model", "compat_evaluation", "promotion"]
    config = {
        "ops": {
            "mask_model": {"config": PRETRAINED},
            "promotion": {"config": {"floor": 0.0, "tolerance": 1.0, "overall_tolerance": 1.0}},
        }
    }
    _run(instance, locations, chain, config)
    synthetic.generate_failures(
        data, synthetic.UNSEEN_TYPES[:1], 40, failed_model_version="1", size=64
    )
    second = _run(instance, locations, chain, config)
    new_version = str(_meta(second, "dataset_version")["dataset_version"])
    cells = CellStore(LocalObjectStore(locations.work_uri)).read().to_pylist()
    by_source = {
        (r["model_version"], r["group"]): r["miou"]
        for r in cells
        if r["dataset_version"] == new_version and r["group_kind"] == "source"
    }
    assert by_source[("1", "failure")] < by_source[("1", "labeled")], by_source
    assert by_source[("2", "failure")] > by_source[("1", "failure")], by_source
