"""Ingest from a real S3 API server (moto, own process) through a fault-injecting proxy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.ingest import IngestOptions, ingest
from maskfind_pipeline.storage import LocalObjectStore
from maskfind_pipeline.storage.s3 import S3ObjectStore, StoreUnavailable
from tests.conftest import s3_store
from tests.support.images import encode, pair_bytes, product_image
from tests.support.netproxy import FaultProxy
from tests.support.s3server import S3Server
from tests.support.stores import put_pair, reasons, run_ingest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy(s3: S3Server) -> Iterator[FaultProxy]:
    url = urlparse(s3.endpoint_url)
    with FaultProxy(url.hostname or "127.0.0.1", url.port or 80) as running:
        yield running


@pytest.fixture
def via_proxy(s3: S3Server, proxy: FaultProxy) -> S3ObjectStore:
    proxy.clear()
    return s3_store(s3, endpoint_url=proxy.endpoint_url, max_attempts=3)


@pytest.fixture
def work(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "work")


def test_slowdown_twice_then_success(via_proxy: S3ObjectStore, proxy: FaultProxy, work) -> None:
    put_pair(via_proxy, "a", seed=1)
    proxy.respond_status(503, "SlowDown", times=2, path_contains="a.png", method="GET")
    report = run_ingest(via_proxy, work)
    assert len(report.new_rows) == 1
    assert proxy.faults_applied == {"respond_status": 2}


def test_slowdown_past_the_retry_limit_is_a_clear_error(
    via_proxy: S3ObjectStore, proxy: FaultProxy, work
) -> None:
    put_pair(via_proxy, "a", seed=1)
    proxy.respond_status(503, "SlowDown", times=10, path_contains="a.png", method="GET")
    with pytest.raises(StoreUnavailable, match="SlowDown"):
        run_ingest(via_proxy, work)
    proxy.clear()
    assert len(run_ingest(via_proxy, work, run_id="retry").new_rows) == 1


def test_flipped_byte_is_refetched(via_proxy: S3ObjectStore, proxy: FaultProxy, work) -> None:
    put_pair(via_proxy, "a", seed=1)
    proxy.flip_byte(times=2, path_contains="a.png")
    report = run_ingest(via_proxy, work)
    assert len(report.new_rows) == 1 and proxy.faults_applied == {"flip_byte": 2}


def test_byte_flipped_on_every_attempt_is_quarantined(
    via_proxy: S3ObjectStore, proxy: FaultProxy, work
) -> None:
    put_pair(via_proxy, "a", seed=1)
    put_pair(via_proxy, "b", seed=2)
    proxy.flip_byte(times=50, path_contains="/a.png")
    report = run_ingest(via_proxy, work)
    assert [r["image_id"] for r in report.new_rows] == ["b"]
    assert "corrupt transfer" in reasons(report)["labeled/a.png"]
    proxy.clear()
    assert [r["image_id"] for r in run_ingest(via_proxy, work, run_id="2").new_rows] == ["a"]


def test_connection_reset_mid_body_is_retried_without_partial_files(
    via_proxy: S3ObjectStore, proxy: FaultProxy, tmp_path: Path, work
) -> None:
    image, mask = pair_bytes(seed=3, width=96, height=96)
    put_pair(via_proxy, "a", image=image, mask=mask)
    proxy.reset_after(100, times=2, path_contains="a.png")
    cache = ContentCache(tmp_path / "cache")
    report = ingest(via_proxy, Catalog(work), run_id="r", cache=cache)
    assert len(report.new_rows) == 1 and proxy.faults_applied == {"reset_after": 2}
    files = {p.name: p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    row = report.new_rows[0]
    assert files == {str(row["image_sha256"]): image, str(row["mask_sha256"]): mask}


def test_thousands_of_objects_listed_a_few_per_page_are_each_ingested_once(
    s3: S3Server, work
) -> None:
    store = s3_store(s3)
    _, mask = pair_bytes(seed=1, width=8, height=8)
    client = s3.client()

    def upload(i: int) -> None:
        key = f"root/labeled/p{i:05d}"
        client.put_object(
            Bucket=store.bucket, Key=f"{key}.png", Body=_unique_png(i), Tagging="image_type=cam-a"
        )
        client.put_object(Bucket=store.bucket, Key=f"{key}.mask.png", Body=mask)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(upload, range(1200)))
    report = run_ingest(store, work, page_size=7, batch_size=500)
    assert len(report.new_rows) == 1200
    assert len({r["image_key"] for r in report.new_rows}) == 1200
    assert Catalog(work).read().samples.num_rows == 1200
    assert run_ingest(store, work, run_id="2", page_size=7).new_rows == []


def test_unsafe_keys_from_the_server_are_quarantined_and_never_touch_disk(
    s3: S3Server, tmp_path: Path, work
) -> None:
    store = s3_store(s3)
    image, _ = pair_bytes()
    client = s3.client()
    bad = [
        "labeled/../escape.png",
        "labeled/./dot.png",
        "labeled//double.png",
        "labeled/" + "x" * 300 + ".png",
        "labeled/dir/",
    ]
    for key in bad:
        client.put_object(
            Bucket=store.bucket, Key="root/" + key, Body=image, Tagging="image_type=cam-a"
        )
    put_pair(store, "fine")
    cache = ContentCache(tmp_path / "cache")
    report = ingest(store, Catalog(work), run_id="r", cache=cache)
    assert [r["image_id"] for r in report.new_rows] == ["fine"]
    refused = reasons(report)
    listed = {info.key for info in store.list("labeled/")}
    for key in listed - {"labeled/fine.png", "labeled/fine.mask.png"}:
        assert key in refused, key
    assert any("invalid key" in reason for reason in refused.values())
    outside = [p for p in tmp_path.rglob("*") if "escape" in p.name or "double" in p.name]
    assert outside == []


def _unique_png(i: int) -> bytes:
    return encode(product_image(8, 8, seed=i))


def test_concurrent_ingest_beats_sequential_through_latency(
    s3: S3Server, proxy: FaultProxy, work, tmp_path: Path
) -> None:
    store = s3_store(s3, endpoint_url=proxy.endpoint_url)
    for i in range(40):
        put_pair(store, f"p{i}", seed=i)
    proxy.clear()
    proxy.delay_s = 0.02
    try:
        start = time.perf_counter()
        ingest(
            store,
            Catalog(LocalObjectStore(tmp_path / "w1")),
            run_id="seq",
            options=IngestOptions(max_workers=1),
        )
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        report = ingest(store, Catalog(work), run_id="par", options=IngestOptions(max_workers=16))
        concurrent = time.perf_counter() - start
    finally:
        proxy.delay_s = 0.0
    assert len(report.new_rows) == 40
    assert concurrent * 3 < sequential, (concurrent, sequential)
