"""Ingest from a real S3 API server (moto, own process) through a fault-injecting proxy."""

from __future__ import annotations

import re
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
from tests.support.fswrites import record_writes, snapshot
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
        list(pool.map(upload, range(600)))  # 1,200 objects: 172 pages, three catalog batches
    report = run_ingest(store, work, page_size=7, batch_size=250)
    assert len(report.new_rows) == 600
    assert len({r["image_key"] for r in report.new_rows}) == 600
    assert Catalog(work).read().samples.num_rows == 600
    assert run_ingest(store, work, run_id="2", page_size=7).new_rows == []


def test_unsafe_keys_from_the_server_are_quarantined_and_never_touch_disk(
    s3: S3Server, tmp_path: Path
) -> None:
    store = s3_store(s3)
    fine_image, fine_mask = pair_bytes()
    unsafe_image, _ = pair_bytes(seed=9)  # other bytes: in the cache they would show
    client = s3.client()
    bad = [
        "labeled/../escape.png",
        "labeled/../../../../escape.png",
        "labeled/./dot.png",
        "labeled//double.png",
        "labeled/" + "x" * 300 + ".png",
        "labeled/dir/",
    ]
    for key in bad:
        client.put_object(
            Bucket=store.bucket, Key="root/" + key, Body=unsafe_image, Tagging="image_type=cam-a"
        )
    put_pair(store, "fine", image=fine_image, mask=fine_mask)
    # deeper than any `..` above, so that an escape by `..` still lands in the scanned tmp_path
    nest = tmp_path.joinpath("a", "b", "c", "d", "e")
    nest.mkdir(parents=True)
    cache_root, work_root = nest / "cache", nest / "work"
    before = snapshot(tmp_path)
    with record_writes() as log:
        report = ingest(
            store,
            Catalog(LocalObjectStore(work_root)),
            run_id="r",
            cache=ContentCache(cache_root),
        )
    assert [r["image_id"] for r in report.new_rows] == ["fine"]
    refused = reasons(report)
    listed = {info.key for info in store.list("labeled/")}
    for key in listed - {"labeled/fine.png", "labeled/fine.mask.png"}:
        assert key in refused, key
    assert any("invalid key" in reason for reason in refused.values())
    roots = (cache_root, work_root)
    assert log.outside(*roots) == []
    created = snapshot(tmp_path) - before
    assert [p for p in created if not any(p.is_relative_to(root) for root in roots)] == []
    # inside the roots, only the fine pair's bytes and the catalog's files (compacted at the end)
    row = report.new_rows[0]
    shas = (str(row["image_sha256"]), str(row["mask_sha256"]))
    assert _files(created, cache_root) == {f"{sha[:2]}/{sha}" for sha in shas}
    parts = _files(created, work_root)
    assert parts and all(_CATALOG_PART.fullmatch(part) for part in parts), parts


_CATALOG_PART = re.compile(
    r"catalog/(samples|quarantine)/"
    r"(part-[^/]+\.parquet|_compacted/[^/]+\.parquet|_snapshots/[0-9]+\.json)"
)


def _files(paths: set[Path], root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths if p.is_relative_to(root) and p.is_file()}


def _unique_png(i: int) -> bytes:
    return encode(product_image(8, 8, seed=i))


def test_concurrent_ingest_overlaps_its_requests_and_sequential_ingest_never_does(
    s3: S3Server, proxy: FaultProxy, tmp_path: Path
) -> None:
    store = s3_store(s3, endpoint_url=proxy.endpoint_url)
    pairs = 16
    for i in range(pairs):
        put_pair(store, f"p{i}", seed=i)

    def run(workers: int, hold: int, timeout_s: float) -> tuple[list[dict[str, object]], int]:
        proxy.clear()
        # Object GETs wait at the proxy until `hold` of them are there together (or `timeout_s`
        # passes): overlap the client attempts is then seen however slow the machine is.
        proxy.hold(hold, timeout_s=timeout_s, path_contains=".png")
        work = LocalObjectStore(tmp_path / f"work-{workers}")
        report = ingest(
            store, Catalog(work), run_id=f"w{workers}", options=IngestOptions(max_workers=workers)
        )
        assert proxy.requests_seen >= 3 * pairs  # image, mask and tags of each pair
        assert len(report.new_rows) == pairs
        return _comparable(Catalog(work).read().samples.to_pylist()), proxy.peak_in_flight

    # Sequentially, a second request is never sent before the first is answered: held 1 s
    # (a client that overlapped anyway would show it), the peak stays 1.
    sequential_rows, sequential_peak = run(1, hold=2, timeout_s=1.0)
    assert sequential_peak == 1
    concurrent_rows, concurrent_peak = run(16, hold=8, timeout_s=60.0)
    assert proxy.holds_met == 1 and concurrent_peak >= 8, concurrent_peak
    assert concurrent_rows == sequential_rows


def _comparable(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Catalog rows without what differs between two runs of the same ingest, in key order."""
    varying = {"ingested_at", "ingest_run"}
    return sorted(
        ({k: v for k, v in row.items() if k not in varying} for row in rows),
        key=lambda row: str(row["image_key"]),
    )
