"""One contract, two implementations: every test runs on the local store and on S3."""

from __future__ import annotations

import threading

import pytest

from maskfind_pipeline.storage import (
    InvalidKey,
    ObjectChanged,
    ObjectExists,
    ObjectNotFound,
    ObjectStore,
)


def test_put_get_roundtrip_and_exists(store: ObjectStore) -> None:
    store.put("labeled/a.png", b"\x89PNG data")
    assert store.get("labeled/a.png") == b"\x89PNG data"
    assert store.exists("labeled/a.png")
    assert not store.exists("labeled/b.png")


def test_missing_key_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("labeled/missing.png")
    with pytest.raises(ObjectNotFound):
        store.tags("labeled/missing.png")


def test_head_reads_only_the_first_bytes_and_checks_the_etag(store: ObjectStore) -> None:
    store.put("production/2026-11-30/a.png", bytes(range(200)))
    (info,) = store.list("production/")
    assert store.head(info.key, 16, if_match=info.etag) == bytes(range(16))
    assert store.head(info.key, 1000) == bytes(range(200))
    with pytest.raises(ObjectNotFound):
        store.head("production/2026-11-30/missing.png", 16)
    store.put(info.key, b"replaced since it was listed")
    with pytest.raises(ObjectChanged):
        store.head(info.key, 16, if_match=info.etag)


def test_put_chunks_writes_their_concatenation_and_replaces(store: ObjectStore) -> None:
    big = [bytes([i]) * (3 * 1024 * 1024) for i in range(4)]  # 12 MiB: a multipart upload on S3
    store.put("review/coco.json", b"old")
    store.put_chunks("review/coco.json", iter(big))
    assert store.get("review/coco.json") == b"".join(big)
    store.put_chunks("review/empty.json", iter([]))
    assert store.get("review/empty.json") == b""
    assert [i.key for i in store.list("review/")] == ["review/coco.json", "review/empty.json"]


def test_tags_roundtrip_and_default_empty(store: ObjectStore) -> None:
    store.put("labeled/a.png", b"x", tags={"image_type": "t1", "station": "s 2/3"})
    store.put("labeled/b.png", b"y")
    assert store.tags("labeled/a.png") == {"image_type": "t1", "station": "s 2/3"}
    assert store.tags("labeled/b.png") == {}


def test_listing_is_paginated_complete_and_prefix_scoped(store: ObjectStore) -> None:
    keys = [f"labeled/img-{i:03d}.png" for i in range(23)]
    for key in keys:
        store.put(key, key.encode(), tags={"image_type": "t"})
    store.put("failures/other.png", b"z")
    listed = [info.key for info in store.list("labeled/", page_size=4)]
    assert sorted(listed) == keys
    assert all(info.size > 0 and info.etag for info in store.list("labeled/", page_size=4))


def test_folders_name_the_next_level_only(store: ObjectStore) -> None:
    for key in (
        "production/2026-11-30/a.png",
        "production/2026-12-01/b.png",
        "production/2026-12-01/deeper/c.png",
        "production/loose.png",
        "labeled/x.png",
    ):
        store.put(key, b"x")
    assert store.folders("production/") == ["2026-11-30", "2026-12-01"]
    assert store.folders() == ["labeled", "production"]
    assert store.folders("production/2026-12-01/") == ["deeper"]
    assert store.folders("nothing/") == []


def test_create_only_put_refuses_existing_key(store: ObjectStore) -> None:
    store.put("datasets/v1/card.json", b"first", create_only=True)
    with pytest.raises(ObjectExists):
        store.put("datasets/v1/card.json", b"second", create_only=True)
    assert store.get("datasets/v1/card.json") == b"first"


def test_concurrent_create_only_has_exactly_one_winner(store: ObjectStore) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            store.put("datasets/v2/manifest", f"writer {n}".encode(), create_only=True)
            outcomes.append("won")
        except ObjectExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1
    assert outcomes.count("exists") == 7


def test_if_match_detects_replacement_after_listing(store: ObjectStore) -> None:
    store.put("labeled/a.png", b"version one")
    (listed,) = list(store.list("labeled/"))
    store.put("labeled/a.png", b"version two, longer")
    with pytest.raises(ObjectChanged):
        store.get("labeled/a.png", if_match=listed.etag)
    (fresh,) = list(store.list("labeled/"))
    assert store.get("labeled/a.png", if_match=fresh.etag) == b"version two, longer"


def test_delete_removes_object_and_is_idempotent(store: ObjectStore) -> None:
    store.put("labeled/a.png", b"x", tags={"image_type": "t"})
    store.delete("labeled/a.png")
    store.delete("labeled/a.png")
    assert not store.exists("labeled/a.png")
    assert list(store.list("labeled/")) == []


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "/abs",
        "..",
        "a/../../b",
        "a\x00b",
        "dir/",
        "a//b",
        "x/" + "s" * 300,
        "",
        "C:/win",
        "a\\b",
    ],
)
def test_unsafe_keys_are_refused_before_any_write(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"payload")
    with pytest.raises(InvalidKey):
        store.get(key)
