"""Dataset versions: stable splits, content ids, atomic verified publishing on both stores."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskfind_pipeline.data.version_checks import check_version
from maskfind_pipeline.data.version_store import CorruptVersion, VersionNotFound, VersionStore
from maskfind_pipeline.data.versions import (
    EmptyCatalog,
    VersionConfig,
    assign_splits,
    build_snapshot,
    diff,
)
from maskfind_pipeline.storage import ObjectStore
from tests.support.catalogs import fake_catalog


def _splits(table: pa.Table) -> dict[str, str]:
    return dict(
        zip(table.column("sample_id").to_pylist(), table.column("split").to_pylist(), strict=True)
    )


def test_split_fractions_follow_the_config() -> None:
    manifest = build_snapshot(fake_catalog(20_000), VersionConfig()).manifest
    splits = manifest.column("split").to_pylist()
    for name, expected in zip(("train", "val", "test"), (0.70, 0.15, 0.15), strict=True):
        assert splits.count(name) / len(splits) == pytest.approx(expected, abs=0.01)


@settings(max_examples=25, deadline=None)
@given(before=st.integers(1, 300), added=st.integers(0, 300), seed=st.integers(0, 5))
def test_adding_samples_never_moves_an_existing_sample(before: int, added: int, seed: int) -> None:
    old = build_snapshot(fake_catalog(before, seed=seed), VersionConfig()).manifest
    grown = pa.concat_tables(
        [fake_catalog(before, seed=seed), fake_catalog(added, seed=seed, start=before)]
    )
    new = build_snapshot(grown, VersionConfig()).manifest
    new_splits = _splits(new)
    assert all(new_splits[sid] == split for sid, split in _splits(old).items())


def test_split_is_a_pure_function_of_the_hash() -> None:
    ids = [f"{i:064x}" for i in range(0, 2**256, 2**250)]
    forward = list(assign_splits(pa.array(ids), (0.7, 0.15, 0.15)))
    backward = list(assign_splits(pa.array(ids[::-1]), (0.7, 0.15, 0.15)))
    assert forward == backward[::-1]
    assert forward[0] == "train" and forward[-1] == "test"


def test_sample_ids_that_are_not_sha256_digests_are_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        assign_splits(pa.array(["not-a-hash"]), (0.7, 0.15, 0.15))


def test_same_catalog_gives_the_same_id_whatever_the_row_order() -> None:
    catalog = fake_catalog(500, failure_fraction=0.2)
    shuffled = catalog.take(pa.array(list(range(499, -1, -1))))
    assert (
        build_snapshot(catalog, VersionConfig()).version_id
        == build_snapshot(shuffled, VersionConfig()).version_id
    )


def test_config_and_content_changes_give_new_ids() -> None:
    catalog = fake_catalog(200)
    base = build_snapshot(catalog, VersionConfig()).version_id
    assert build_snapshot(catalog, VersionConfig(failure_weight=5.0)).version_id != base
    assert build_snapshot(catalog.slice(1), VersionConfig()).version_id != base


def test_failures_are_split_by_the_same_rule_and_weighted() -> None:
    manifest = build_snapshot(
        fake_catalog(3000, failure_fraction=0.3), VersionConfig(failure_weight=4.0)
    ).manifest
    rows = manifest.select(["source", "split", "weight"]).to_pylist()
    assert {r["split"] for r in rows if r["source"] == "failure"} == {"train", "val", "test"}
    assert {r["weight"] for r in rows if r["source"] == "failure"} == {4.0}
    assert {r["weight"] for r in rows if r["source"] == "labeled"} == {1.0}


def test_held_out_types_appear_only_in_test() -> None:
    catalog = fake_catalog(3000)
    full = _splits(build_snapshot(catalog, VersionConfig()).manifest)
    held = build_snapshot(catalog, VersionConfig(held_out_types=("cam-b",))).manifest
    rows = held.select(["sample_id", "image_type", "split"]).to_pylist()
    assert {r["split"] for r in rows if r["image_type"] == "cam-b"} == {"test"}
    assert all(full[r["sample_id"]] == r["split"] for r in rows)


def test_empty_catalog_and_tiny_types_get_clear_messages() -> None:
    with pytest.raises(EmptyCatalog, match="no samples"):
        build_snapshot(fake_catalog(0), VersionConfig())
    lonely = build_snapshot(fake_catalog(1, image_types=("rare",)), VersionConfig())
    assert any("rare has 1 sample" in w for w in lonely.warnings)


def test_checks_pass_on_a_good_version_and_catch_leakage() -> None:
    manifest = build_snapshot(fake_catalog(300, failure_fraction=0.1), VersionConfig()).manifest
    assert all(o.passed for o in check_version(manifest, catalog_failures=30))
    (row,) = manifest.slice(0, 1).to_pylist()
    row["split"] = "val" if row["split"] != "val" else "test"
    leaked = pa.concat_tables([manifest, pa.Table.from_pylist([row], schema=manifest.schema)])
    outcome = {o.name: o for o in check_version(leaked, catalog_failures=30)}
    assert not outcome["no_split_leakage"].passed
    no_failures = manifest.filter(
        pa.array([s == "labeled" for s in manifest.column("source").to_pylist()])
    )
    outcome = {o.name: o for o in check_version(no_failures, catalog_failures=30)}
    assert not outcome["failures_included"].passed


def test_publish_is_create_once_and_reads_back_verified(store: ObjectStore) -> None:
    versions = VersionStore(store)
    snapshot = build_snapshot(fake_catalog(100), VersionConfig())
    first = versions.publish(snapshot, catalog_rows=100)
    again = versions.publish(build_snapshot(fake_catalog(100), VersionConfig()), catalog_rows=100)
    assert first.created and not again.created and first.version_id == again.version_id
    assert versions.manifest(first.version_id).equals(snapshot.manifest)
    assert [c["id"] for c in versions.list()] == [first.version_id]


def test_second_version_names_its_parent_and_the_diff_shows_failures(store: ObjectStore) -> None:
    versions = VersionStore(store)
    first = versions.publish(build_snapshot(fake_catalog(100), VersionConfig()), catalog_rows=100)
    grown = pa.concat_tables([fake_catalog(100), fake_catalog(20, start=100, failure_fraction=1.0)])
    second = versions.publish(build_snapshot(grown, VersionConfig()), catalog_rows=120)
    assert second.card["parent"] == first.version_id
    changes = diff(versions.manifest(first.version_id), versions.manifest(second.version_id))
    assert sum(int(str(r["added"])) for r in changes if r["source"] == "failure") == 20
    assert all(r["removed"] == 0 for r in changes)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_manifest_is_a_clear_error(store: ObjectStore, damage: str) -> None:
    versions = VersionStore(store)
    vid = versions.publish(
        build_snapshot(fake_catalog(50), VersionConfig()), catalog_rows=50
    ).version_id
    key = f"datasets/{vid}/manifest.parquet"
    data = bytearray(store.get(key))
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2 :]
    store.put(key, bytes(data))
    with pytest.raises(CorruptVersion, match=f"corrupt dataset version {vid}"):
        versions.manifest(vid)


def test_missing_version_is_a_clear_error(store: ObjectStore) -> None:
    with pytest.raises(VersionNotFound, match="ds-nope does not exist"):
        VersionStore(store).manifest("ds-nope")


def _naive_diff(parent: pa.Table | None, child: pa.Table) -> list[dict[str, object]]:
    """The diff as Python dicts of every sample (the baseline the Arrow diff must equal)."""
    from collections import Counter

    def index(m: pa.Table) -> dict[str, tuple[str, str, str]]:
        cols = [
            m.column(c).to_pylist() for c in ("sample_id", "image_type", "source", "mask_sha256")
        ]
        return {sid: (t, s, k) for sid, t, s, k in zip(*cols, strict=True)}

    before, after = (index(parent) if parent is not None else {}), index(child)
    tally: Counter[tuple[str, str, str]] = Counter()
    for sid, (t, s, k) in after.items():
        if sid not in before:
            tally[(t, s, "added")] += 1
        elif before[sid][2] != k:
            tally[(t, s, "relabeled")] += 1
    for sid, (t, s, _) in before.items():
        if sid not in after:
            tally[(t, s, "removed")] += 1
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for (t, s, change), n in sorted(tally.items()):
        row = rows.setdefault(
            (t, s), {"image_type": t, "source": s, "added": 0, "removed": 0, "relabeled": 0}
        )
        row[change] = n
    return list(rows.values())


@settings(max_examples=20, deadline=None)
@given(
    kept=st.integers(0, 60),
    dropped=st.integers(0, 20),
    added=st.integers(0, 40),
    relabeled=st.integers(0, 20),
    seed=st.integers(0, 3),
)
def test_the_diff_equals_a_per_sample_count(
    kept: int, dropped: int, added: int, relabeled: int, seed: int
) -> None:
    base = fake_catalog(kept + dropped, seed=seed, failure_fraction=0.3)
    child = pa.concat_tables(
        [base.slice(0, kept), fake_catalog(added, seed=seed, start=500, failure_fraction=0.3)]
    )
    masks = child.column("mask_sha256").to_pylist()
    for i in range(min(relabeled, kept)):
        masks[i] = f"{i:064x}"
    child = child.set_column(
        child.schema.get_field_index("mask_sha256"), "mask_sha256", pa.array(masks)
    )
    parent = build_snapshot(base, VersionConfig()).manifest if base.num_rows else None
    manifest = build_snapshot(child, VersionConfig()).manifest if child.num_rows else None
    if manifest is None:
        return
    assert diff(parent, manifest) == _naive_diff(parent, manifest)
