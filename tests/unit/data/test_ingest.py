"""Ingest on both stores: incremental, idempotent, deduplicated, and every bad input quarantined."""

from __future__ import annotations

import unicodedata

import pytest
from PIL import Image

from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.storage import LocalObjectStore, ObjectStore
from tests.support.images import encode, pair_bytes, product_image
from tests.support.stores import put_pair, reasons, run_ingest


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    return LocalObjectStore(tmp_path_factory.mktemp("work"))


def test_ingest_adds_pairs_then_rerun_adds_nothing(
    store: ObjectStore, work: LocalObjectStore
) -> None:
    for i in range(5):
        put_pair(store, f"img{i}", seed=i)
    put_pair(
        store,
        "fail0",
        source="failures",
        seed=99,
        tags={
            "image_type": "cam-a",
            "failed_model_version": "3",
            "reported_at": "2026-11-20T10:00:00",
        },
    )
    first = run_ingest(store, work)
    assert first.counts() == {
        "listed_pairs": 6,
        "skipped_already_seen": 0,
        "new_samples": 6,
        "quarantined": 0,
    }
    failure = next(r for r in first.new_rows if r["source"] == "failure")
    assert failure["failed_model_version"] == "3" and failure["reported_at"] is not None
    second = run_ingest(store, work, run_id="run-2")
    assert second.counts()["new_samples"] == 0 and second.counts()["skipped_already_seen"] == 6
    assert second.refusals == []
    tables = Catalog(work).read()
    assert tables.samples.num_rows == 6 and tables.quarantine.num_rows == 0


def test_only_new_keys_are_fetched_on_the_next_run(
    store: ObjectStore, work: LocalObjectStore
) -> None:
    put_pair(store, "a", seed=1)
    run_ingest(store, work)
    put_pair(store, "b", seed=2)
    report = run_ingest(store, work, run_id="run-2")
    assert [r["image_key"] for r in report.new_rows] == ["labeled/b.png"]
    assert report.skipped == 1


def test_same_bytes_under_two_keys_are_one_sample(
    store: ObjectStore, work: LocalObjectStore
) -> None:
    put_pair(store, "first", seed=7)
    put_pair(store, "second", seed=7)
    report = run_ingest(store, work)
    assert len(report.new_rows) == 1
    assert reasons(report) == {"labeled/second.png": "same image bytes as labeled/first.png"}


def test_conflicting_labels_for_the_same_bytes_are_named(
    store: ObjectStore, work: LocalObjectStore
) -> None:
    put_pair(store, "first", seed=7)
    put_pair(store, "second", seed=7, mask=encode(Image.new("L", (32, 24), 255)))
    report = run_ingest(store, work)
    assert "different mask (conflicting labels)" in reasons(report)["labeled/second.png"]


@pytest.mark.parametrize(
    "names",
    [
        (unicodedata.normalize("NFC", "crème"), unicodedata.normalize("NFD", "crème")),
        ("Bar-01", "bar-01"),
    ],
)
def test_unicode_equivalent_and_case_colliding_names(
    store: ObjectStore, work: LocalObjectStore, names: tuple[str, str]
) -> None:
    """Two different images under names that are equal after Unicode normalisation or case
    folding are two samples, each with its own key: the names play no part in identity, and
    nothing derived from them collides on a case-insensitive or normalising file system."""
    put_pair(store, names[0], seed=3)
    put_pair(store, names[1], seed=4)
    report = run_ingest(store, work)
    assert report.refusals == []
    rows = sorted(report.new_rows, key=lambda r: str(r["image_key"]))
    assert {str(r["image_key"]) for r in rows} == {f"labeled/{n}.png" for n in names}
    assert rows[0]["image_sha256"] != rows[1]["image_sha256"]
    ids = [str(r["sample_id"]) for r in rows]
    folded = {unicodedata.normalize("NFC", i).casefold() for i in ids}
    assert len(folded) == 2, f"sample ids collide once folded: {ids}"


def test_relabel_of_the_same_key_supersedes_the_old_mask(
    store: ObjectStore, work: LocalObjectStore
) -> None:
    put_pair(store, "a", seed=1)
    run_ingest(store, work)
    store.put("labeled/a.mask.png", encode(Image.new("L", (32, 24), 255)))
    report = run_ingest(store, work, run_id="run-2")
    assert len(report.new_rows) == 1 and report.refusals == []
    current = Catalog(work).read().current_samples()
    assert current.num_rows == 1 and current.column("mask_fraction")[0].as_py() == 1.0


def test_bad_inputs_are_quarantined_with_reasons(
    store: ObjectStore, work: LocalObjectStore
) -> None:
    good_image, good_mask = pair_bytes()
    put_pair(store, "good", seed=5)
    store.put("labeled/empty.png", b"", tags={"image_type": "cam-a"})
    store.put("labeled/empty.mask.png", good_mask)
    put_pair(store, "notags", seed=6, tags={})
    put_pair(store, "badtime", seed=8, tags={"image_type": "cam-a", "captured_at": "yesterday"})
    put_pair(store, "badtype", seed=9, tags={"image_type": "../../etc"})
    store.put("labeled/lonely.mask.png", good_mask)
    store.put("labeled/nomask.png", good_image, tags={"image_type": "cam-a"})
    put_pair(store, "truncated", image=good_image[: len(good_image) // 2])
    put_pair(store, "wrongext", ext="jpg", seed=10)
    put_pair(store, "smallmask", mask=encode(Image.new("L", (8, 8))))
    store.put("labeled/notes.txt", b"hello")
    store.put("labeled/sub/deeper.png", good_image)
    report = run_ingest(store, work)
    got = reasons(report)
    assert [r["image_id"] for r in report.new_rows] == ["good"]
    expected = {
        "labeled/empty.png": "empty",
        "labeled/notags.png": "missing required tag image_type",
        "labeled/badtime.png": "malformed tag captured_at",
        "labeled/badtype.png": "malformed tag image_type",
        "labeled/lonely.mask.png": "mask has no image",
        "labeled/nomask.png": "image has no mask",
        "labeled/truncated.png": "failed to decode",
        "labeled/wrongext.jpg": "content is PNG, expected JPEG",
        "labeled/smallmask.png": "differs from image size",
        "labeled/notes.txt": "unexpected key",
        "labeled/sub/deeper.png": "unexpected key",
    }
    for key, fragment in expected.items():
        assert fragment in got.get(key, "<not quarantined>"), (key, got.get(key))
    quarantine = Catalog(work).read().quarantine
    assert set(quarantine.column("key").to_pylist()) >= set(expected)
    rerun = run_ingest(store, work, run_id="run-2")
    assert rerun.refusals == [] and rerun.new_rows == []
    assert Catalog(work).read().quarantine.num_rows == quarantine.num_rows


def test_fixed_tags_are_picked_up_on_the_next_run(
    store: ObjectStore, work: LocalObjectStore
) -> None:
    put_pair(store, "a", seed=1, tags={})
    assert run_ingest(store, work).new_rows == []
    put_pair(store, "a", seed=1)
    assert len(run_ingest(store, work, run_id="run-2").new_rows) == 1


def test_object_replaced_between_listing_and_download_is_recorded(
    store: ObjectStore, work: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_pair(store, "a", seed=1)
    original_get = store.get

    def replace_then_get(key: str, *, if_match: str | None = None) -> bytes:
        if key == "labeled/a.png" and not getattr(replace_then_get, "done", False):
            replace_then_get.done = True  # type: ignore[attr-defined]
            store.put(key, encode(product_image(seed=42)), tags={"image_type": "cam-a"})
        return original_get(key, if_match=if_match)

    monkeypatch.setattr(store, "get", replace_then_get)
    report = run_ingest(store, work)
    assert report.new_rows == []
    assert "changed since it was listed" in reasons(report)["labeled/a.png"]
    assert len(run_ingest(store, work, run_id="run-2").new_rows) == 1
