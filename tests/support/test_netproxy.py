"""FaultProxy in front of a moto S3 server, driven through boto3."""

from __future__ import annotations

import http.client
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, FlexibleChecksumError, ResponseStreamingError

from tests.support.netproxy import FaultProxy
from tests.support.s3server import S3Server, s3_server

pytestmark = pytest.mark.integration

BUCKET = "netproxy"
MIB = 1 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as running:
        yield running


@pytest.fixture(scope="module")
def proxy(server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_proxy(proxy: FaultProxy) -> Iterator[None]:
    proxy.clear()
    yield
    proxy.clear()
    proxy.delay_s = 0.0


@pytest.fixture(scope="module")
def s3(server: S3Server, proxy: FaultProxy) -> Any:
    client = server.client(proxy.endpoint_url, max_attempts=3, max_pool_connections=32)
    client.create_bucket(Bucket=BUCKET)
    return client


def _put(s3: Any, key: str, body: bytes, **kwargs: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body, **kwargs)


def _get(s3: Any, key: str, **kwargs: Any) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key, **kwargs)["Body"].read()


@pytest.mark.parametrize("size", [0, 1, 2 * MIB])
def test_put_get_round_trip(s3: Any, size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    _put(s3, f"round/{size}", body)
    assert _get(s3, f"round/{size}") == body


def test_upload_fileobj_multipart_round_trip(s3: Any, proxy: FaultProxy) -> None:
    body = bytes(range(256)) * (6 * MIB // 256)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    s3.upload_fileobj(io.BytesIO(body), BUCKET, "multi", Config=config)
    assert _get(s3, "multi") == body
    assert proxy.requests_seen >= 5


def test_chunked_request_body_is_relayed(s3: Any, proxy: FaultProxy) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port)
    chunks = [b"a" * 1000, b"b" * 70_000, b"c"]
    connection.request("PUT", f"/{BUCKET}/chunked", body=iter(chunks), encode_chunked=True)
    assert connection.getresponse().status == 200
    connection.close()
    assert _get(s3, "chunked") == b"".join(chunks)


def test_head_and_missing_key_pass_through(s3: Any) -> None:
    _put(s3, "head", b"h" * 321)
    assert s3.head_object(Bucket=BUCKET, Key="head")["ContentLength"] == 321
    with pytest.raises(ClientError, match="NoSuchKey"):
        _get(s3, "missing")


def test_client_connection_stays_alive(s3: Any, proxy: FaultProxy) -> None:
    _put(s3, "alive", b"a")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "alive"})
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port)
    for _ in range(3):
        connection.request("GET", url.removeprefix(proxy.endpoint_url))
        response = connection.getresponse()
        assert (response.read(), response.getheader("Connection")) == (b"a", None)
    connection.close()


def test_list_with_pagination(s3: Any) -> None:
    keys = {f"list/{i:03d}" for i in range(23)}
    for key in keys:
        _put(s3, key, key.encode())
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="list/", PaginationConfig={"PageSize": 4}
    )
    listed = [[obj["Key"] for obj in page["Contents"]] for page in pages]
    assert len(listed) == 6
    assert sorted(key for page in listed for key in page) == sorted(keys)


def test_delay_applies_to_each_request_and_delays_overlap(s3: Any, proxy: FaultProxy) -> None:
    _put(s3, "delay", b"x")
    proxy.delay_s = 0.05
    start = time.perf_counter()
    assert _get(s3, "delay") == b"x"
    assert time.perf_counter() - start >= 0.05  # a lower bound: a slow machine only adds to it
    assert proxy.peak_delayed == 1
    proxy.clear()
    # Released together, the 20 requests all start their delay before any one's can end: the
    # peak counts how many waited at once (1 if the delay blocked the proxy, however fast).
    proxy.hold(20, path_contains="/delay")
    with ThreadPoolExecutor(20) as pool:
        bodies = list(pool.map(lambda _: _get(s3, "delay"), range(20)))
    assert bodies == [b"x"] * 20
    assert proxy.holds_met == 1
    assert proxy.peak_delayed >= 2


def test_in_flight_counts_concurrent_requests_and_sequential_ones_never_overlap(
    s3: Any, proxy: FaultProxy
) -> None:
    _put(s3, "count", b"c")
    proxy.clear()
    for _ in range(5):
        assert _get(s3, "count") == b"c"
    assert (proxy.requests_seen, proxy.peak_in_flight, proxy.in_flight) == (5, 1, 0)
    proxy.hold(8, path_contains="/count")
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: _get(s3, "count"), range(8))) == [b"c"] * 8
    assert (proxy.holds_met, proxy.peak_in_flight, proxy.in_flight) == (1, 8, 0)
    assert proxy.requests_seen == 13


def test_an_unmet_hold_releases_after_its_timeout_and_a_later_one_is_met(
    s3: Any, proxy: FaultProxy
) -> None:
    _put(s3, "lone", b"l")
    proxy.hold(2, timeout_s=0.2, path_contains="/lone")
    start = time.perf_counter()
    assert _get(s3, "lone") == b"l"
    assert time.perf_counter() - start >= 0.2  # a lower bound again
    assert proxy.holds_met == 0
    proxy.hold(2, timeout_s=60, path_contains="/lone")
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: _get(s3, "lone"), range(2))) == [b"l"] * 2
    assert proxy.holds_met == 1


def test_moto_returns_checksum_on_get(s3: Any) -> None:
    _put(s3, "checksummed", b"payload", ChecksumAlgorithm="SHA256")
    response = s3.get_object(Bucket=BUCKET, Key="checksummed", ChecksumMode="ENABLED")
    assert response["ChecksumSHA256"]
    assert response["Body"].read() == b"payload"


@pytest.mark.parametrize("algorithm", ["SHA256", "CRC32"])
def test_flip_byte_fails_checksum_once(s3: Any, proxy: FaultProxy, algorithm: str) -> None:
    key = f"flip/{algorithm}"
    body = bytes(range(256)) * 400
    _put(s3, key, body, ChecksumAlgorithm=algorithm)
    proxy.flip_byte(path_contains=key)
    with pytest.raises(FlexibleChecksumError):
        _get(s3, key, ChecksumMode="ENABLED")
    assert _get(s3, key, ChecksumMode="ENABLED") == body
    assert proxy.faults_applied == {"flip_byte": 1}


def test_default_client_validates_default_checksum(s3: Any, proxy: FaultProxy) -> None:
    _put(s3, "flip/default", b"d" * 1000)
    proxy.flip_byte(path_contains="flip/default")
    with pytest.raises(FlexibleChecksumError):
        _get(s3, "flip/default")


def test_flip_byte_changes_exactly_one_byte(s3: Any, server: S3Server, proxy: FaultProxy) -> None:
    unchecked = server.client(proxy.endpoint_url, response_checksum_validation="when_required")
    body = b"\x00" * 1001
    _put(s3, "flip/plain", body)
    proxy.flip_byte(path_contains="flip/plain")
    flipped = _get(unchecked, "flip/plain")
    assert [i for i, byte in enumerate(flipped) if byte] == [500]


def test_reset_after_breaks_the_body_once(s3: Any, proxy: FaultProxy) -> None:
    body = b"r" * 100_000
    _put(s3, "reset", body)
    proxy.reset_after(100, path_contains="reset")
    response = s3.get_object(Bucket=BUCKET, Key="reset")
    with pytest.raises(ResponseStreamingError):
        response["Body"].read()
    assert _get(s3, "reset") == body
    assert proxy.faults_applied == {"reset_after": 1}


def test_slow_down_twice_is_retried(s3: Any, proxy: FaultProxy) -> None:
    _put(s3, "slow", b"s")
    proxy.clear()
    proxy.respond_status(503, "SlowDown", times=2)
    assert _get(s3, "slow") == b"s"
    assert proxy.requests_seen == 3
    assert proxy.faults_applied == {"respond_status": 2}


def test_slow_down_past_retry_limit_raises(s3: Any, proxy: FaultProxy) -> None:
    _put(s3, "slow", b"s")
    proxy.clear()
    proxy.respond_status(503, "SlowDown", times=5)
    with pytest.raises(ClientError) as raised:
        _get(s3, "slow")
    assert raised.value.response["Error"]["Code"] == "SlowDown"
    assert proxy.requests_seen == 4  # Config's max_attempts counts retries, not attempts


def test_faults_match_only_their_predicate(s3: Any, proxy: FaultProxy) -> None:
    _put(s3, "match/a", b"a" * 10)
    proxy.flip_byte(path_contains="match/b")
    proxy.respond_status(403, "AccessDenied", method="PUT")
    assert _get(s3, "match/a") == b"a" * 10
    with pytest.raises(ClientError, match="AccessDenied"):
        _put(s3, "match/a", b"x")
    assert proxy.faults_applied == {"respond_status": 1}


def test_cut_request_relays_part_of_an_upload_then_resets(s3: Any, proxy: FaultProxy) -> None:
    body = b"u" * 200_000
    proxy.cut_request(1000, path_contains="/cut")
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port)
    connection.request("PUT", f"/{BUCKET}/cut", body=body)
    with pytest.raises(ConnectionError):  # reset, or closed before any response
        connection.getresponse()
    connection.close()
    assert proxy.faults_applied == {"cut_request": 1}
    with pytest.raises(ClientError, match="NoSuchKey"):  # upstream never had the whole body
        _get(s3, "cut")
    _put(s3, "cut", body)  # once only: the next upload passes
    assert _get(s3, "cut") == body
