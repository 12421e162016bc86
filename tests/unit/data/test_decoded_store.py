"""The content-addressed decoded store across dataset versions: decodes counted, not computed."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.data import decoded as decoded_module
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import (
    DecodedBudgetExceeded,
    DecodedStore,
    PackedRows,
    build_decoded,
    default_budget_bytes,
    fit_to_budget,
)
from maskfind_pipeline.data.images import decode_pair
from maskfind_pipeline.data.ingest import IngestOptions
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.flows.datasets import publish_dataset_version
from maskfind_pipeline.flows.ingest import ingest_catalog
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.catalogs import fake_catalog

SIZE = 24
ROW_BYTES = 4 * SIZE * SIZE
TYPES = synthetic.DEFAULT_TYPES[:3]


class Nights:
    """A data store that grows night by night, ingested and versioned by the real flows."""

    def __init__(self, root: Path) -> None:
        self.data = LocalObjectStore(root / "data")
        self.work = LocalObjectStore(root / "work")
        self.cache = ContentCache(root / "cache")
        self.root = root / "decoded"
        self.night = 0

    def arrive(self, per_type: int) -> str:
        synthetic.generate(
            self.data, TYPES, per_type, size=32, seed=7, start_index=self.night * 100
        )
        self.night += 1
        ingest_catalog(
            self.data, self.work, self.cache, IngestOptions(), run_id=f"night-{self.night}"
        )
        return publish_dataset_version(self.work, VersionConfig()).version_id

    def decoded(self, vid: str, **options: Any) -> Any:
        return self.decoded_rows(VersionStore(self.work).manifest(vid), **options)

    def decoded_rows(self, manifest: pa.Table, **options: Any) -> Any:
        return build_decoded(manifest, self.data, self.cache, self.root, size=SIZE, **options)

    def added(self, parent: str, child: str) -> pa.Table:
        """The rows of `child` that `parent` does not have."""
        versions = VersionStore(self.work)
        old = versions.manifest(parent).column("sample_id").to_numpy()
        new = versions.manifest(child)
        return new.filter(pa.array(~np.isin(new.column("sample_id").to_numpy(), old)))


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def counting(image: bytes, mask: bytes, **kwargs: Any) -> Any:
        calls.append(kwargs.get("image_ext", ""))
        return decode_pair(image, mask, **kwargs)

    monkeypatch.setattr(decoded_module, "decode_pair", counting)
    return calls


def test_the_next_version_decodes_only_its_new_samples(tmp_path: Path, monkeypatch) -> None:
    nights = Nights(tmp_path)
    calls = count_decodes(monkeypatch)
    first = nights.arrive(4)
    v1 = nights.decoded(first)
    assert len(calls) == len(v1) == 12
    second = nights.arrive(3)
    calls.clear()
    v2 = nights.decoded(second)
    assert len(v2) == 21 and len(calls) == 9
    shared = set(v1.sample_ids) & set(v2.sample_ids)
    assert len(shared) == 12
    for sid in shared:  # the older rows are the very pixels decoded for version 1
        i, j = v1.sample_ids.index(sid), v2.sample_ids.index(sid)
        np.testing.assert_array_equal(v2.images[j], v1.images[i])
        np.testing.assert_array_equal(v2.masks[j], v1.masks[i])
    calls.clear()
    again = nights.decoded(first)  # an old version still opens, decoding nothing
    assert calls == [] and again.sample_ids == v1.sample_ids
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(v1.images))


def test_a_view_over_several_packs_reads_like_one_array(tmp_path: Path) -> None:
    nights = Nights(tmp_path)
    nights.decoded(nights.arrive(2))
    view = nights.decoded(nights.arrive(2))
    assert isinstance(view.images, PackedRows)
    whole = np.asarray(view.images)
    assert whole.shape == (12, SIZE, SIZE, 3) and whole.dtype == np.uint8
    rows = np.array([11, 0, 5, 5])
    np.testing.assert_array_equal(np.take(view.images, rows, axis=0), whole[rows])
    np.testing.assert_array_equal(view.images[rows], whole[rows])
    np.testing.assert_array_equal(view.images[3], whole[3])
    np.testing.assert_array_equal(view.images[2:9:3], whole[2:9:3])
    np.testing.assert_array_equal(view.masks[np.arange(12) % 2 == 0], np.asarray(view.masks)[::2])
    again = pickle.loads(pickle.dumps(view))
    np.testing.assert_array_equal(np.asarray(again.images), whole)


def test_the_least_recently_used_packs_go_first(tmp_path: Path, monkeypatch) -> None:
    nights, budget = Nights(tmp_path), 12 * ROW_BYTES
    store = DecodedStore(nights.root, SIZE, budget_bytes=budget)
    first = nights.arrive(2)  # 6 rows: pack A
    nights.decoded(first, budget_bytes=budget)
    second = nights.arrive(2)  # 12 rows: A + pack B (the 6 new)
    nights.decoded(second, budget_bytes=budget)
    nights.decoded_rows(nights.added(first, second), budget_bytes=budget)  # uses B only, later
    assert store.stored_bytes() == budget
    third = nights.arrive(1)  # 15 rows: one version alone over the budget is a clear error
    with pytest.raises(DecodedBudgetExceeded, match="more than the budget"):
        nights.decoded(third, budget_bytes=budget)
    calls = count_decodes(monkeypatch)
    nights.decoded_rows(nights.added(second, third), budget_bytes=budget)  # 3 new: pack C
    assert len(calls) == 3 and store.stored_bytes() == 9 * ROW_BYTES  # A, used longest ago, went
    calls.clear()
    again = nights.decoded(first, budget_bytes=budget)  # evicted content is decoded again
    assert len(calls) == 6 and store.stored_bytes() == 9 * ROW_BYTES  # and B made room for it
    assert len(store.pack_ids()) == 2
    calls.clear()
    nights.decoded_rows(nights.added(second, third), budget_bytes=budget)
    assert calls == [] and len(again) == 6


def test_the_budget_comes_from_the_environment() -> None:
    assert default_budget_bytes({}) == 200 * 10**9
    assert default_budget_bytes({"MASKFIND_DECODED_BUDGET_GB": "1.5"}) == 1_500_000_000
    with pytest.raises(ValueError, match="MASKFIND_DECODED_BUDGET_GB"):
        default_budget_bytes({"MASKFIND_DECODED_BUDGET_GB": "lots"})


def test_past_the_budget_training_keeps_a_stable_hash_share() -> None:
    catalog = fake_catalog(2000, seed=5)
    manifest = build_snapshot(catalog, VersionConfig()).manifest
    assert fit_to_budget(manifest, SIZE, budget_bytes=10**12).manifest.num_rows == 2000
    budget = int(600 * ROW_BYTES / 0.8)
    fitted = fit_to_budget(manifest, SIZE, budget_bytes=budget)
    kept = np.asarray(fitted.manifest.column("split").to_numpy(zero_copy_only=False))
    split = np.asarray(manifest.column("split").to_numpy(zero_copy_only=False))
    assert (kept == "test").sum() == 0 and fitted.manifest.num_rows * ROW_BYTES <= 0.8 * budget
    assert 500 < fitted.manifest.num_rows <= 600
    for name in ("train", "val"):  # both splits keep about the same share
        share = (kept == name).sum() / (split == name).sum()
        assert abs(share - fitted.train_share) < 0.08
    # More samples, same budget: a smaller share, and a subset of the samples kept before.
    grown = build_snapshot(
        pa.concat_tables([catalog, fake_catalog(1000, seed=5, start=2000)]), VersionConfig()
    ).manifest
    again = fit_to_budget(grown, SIZE, budget_bytes=budget)
    before = set(fitted.manifest.column("sample_id").to_pylist())
    after = set(again.manifest.column("sample_id").to_pylist())
    old = set(catalog.column("sample_id").to_pylist())
    assert again.train_share < fitted.train_share and (after & old) <= before
