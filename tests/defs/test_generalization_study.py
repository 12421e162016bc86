"""`generalization_study` in-process at a tiny size: 3 types x 8 images at 64 px, K = 2."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import dagster as dg

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.defs.datasets.assets import dataset_version, dataset_versions
from maskfind_pipeline.defs.ingest.assets import image_catalog
from maskfind_pipeline.defs.resources import build_resources
from maskfind_pipeline.defs.study.assets import generalization_study
from maskfind_pipeline.evaluation.generalization import StepOutcome, epochs_for
from maskfind_pipeline.flows.generalization import StudyOptions
from maskfind_pipeline.locations import Locations
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY_SPEC, TINY_TRAIN

TYPES = [t.name for t in synthetic.DEFAULT_TYPES[:3]]
ORDER = [TYPES[2], TYPES[0], TYPES[1]]


def test_the_study_trains_per_k_and_on_all_and_reports_seen_and_unseen(tmp_path: Path) -> None:
    locations = Locations.from_env({"MASKFIND_HOME": str(tmp_path)})
    synthetic.generate(
        LocalObjectStore(locations.data_uri), synthetic.DEFAULT_TYPES[:3], 8, size=64
    )
    resources = build_resources(locations)
    # With 8 images per type these fractions give every type train, val and test images.
    versioned = dg.materialize(
        [image_catalog, dataset_version, dataset_versions],
        selection=[image_catalog, dataset_version],
        resources=resources,
        run_config=dg.RunConfig({"dataset_version": {"config": {"fractions": [0.4, 0.3, 0.3]}}}),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert versioned.success
    card = VersionStore(LocalObjectStore(locations.work_uri)).latest()
    assert card is not None
    assert all(set(card["counts"][t]) == {"train", "val", "test"} for t in TYPES), card["counts"]

    study = StudyOptions(
        image_types=(*ORDER, "not-in-the-version"),
        max_k=2,
        images_per_type=None,
        images_seen=4,
        model=TINY_SPEC,
        train=TINY_TRAIN,
    )
    result = generalization_study.execute_in_process(
        run_config={"ops": {"study_plan": {"config": study.model_dump(mode="json")}}},
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success

    outcomes: dict[str, StepOutcome] = result.output_for_node("study_training")
    assert set(outcomes) == {"k1", "k2", "all"}
    assert (outcomes["k1"].step.seen, outcomes["k1"].step.unseen) == (
        (ORDER[0],),
        (ORDER[1], ORDER[2]),
    )
    assert (outcomes["k2"].step.seen, outcomes["k2"].step.unseen) == (
        (ORDER[0], ORDER[1]),
        (ORDER[2],),
    )
    assert outcomes["all"].step.seen == tuple(ORDER) and not outcomes["all"].step.unseen
    tested = Counter(card["counts"][t]["test"]["labeled"] for t in TYPES)
    for outcome in outcomes.values():
        assert set(outcome.test) == set(TYPES), "every model is tested on every type"
        assert Counter(s.n_images for s in outcome.test.values()) == tested
        assert outcome.dataset_version == card["id"]
        # Each training sees at least `images_seen` = 4 training images, in whole epochs.
        n_train = sum(card["counts"][t]["train"]["labeled"] for t in outcome.step.seen)
        assert outcome.epochs == epochs_for(4, n_train)
        assert all(0.0 <= s.miou <= 1.0 for s in outcome.test.values())

    rows = result.output_for_node("study_report")
    assert [(r["step"], r["n_types_seen"], r["added_type"]) for r in rows] == [
        ("k=1", 1, ORDER[0]),
        ("k=2", 2, ORDER[1]),
        ("all", 3, "all"),
    ]
    k1 = outcomes["k1"].test
    assert rows[0]["seen_miou"] == round(k1[ORDER[0]].miou, 4)
    assert rows[0]["unseen_miou"] == round((k1[ORDER[1]].miou + k1[ORDER[2]].miou) / 2, 4)
    assert rows[2]["unseen_miou"] is None

    (materialization,) = result.asset_materializations_for_node("study_report")
    assert materialization.asset_key == dg.AssetKey("generalization_study")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    table = materialization.metadata["study"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [r.data["step"] for r in table.records] == ["k=1", "k=2", "all"]
    assert {c.name for c in table.schema.columns} >= {"seen_miou", "unseen_miou", "n_types_seen"}
    assert meta["dataset_version"] == card["id"] and meta["image_types"] == ORDER
    prefix = "![generalization](data:image/png;base64,"
    assert str(meta["generalization"]).startswith(prefix)
    inline = base64.b64decode(str(meta["generalization"])[len(prefix) : -1])
    saved = tmp_path / "plots" / "generalization.png"
    assert meta["generalization_path"] == str(saved)
    assert saved.read_bytes() == inline and inline.startswith(b"\x89PNG")
