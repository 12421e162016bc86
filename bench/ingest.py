"""Ingest throughput: pairs/s of `ingest` against a sequential boto3 loop measured in the same run.

Three measurements on the same generated pairs:
  1. S3 through a loopback proxy that adds `--latency-ms` to every request (real S3 answers a
     small GET in 10-30 ms; loopback has none): the pipeline's concurrent ingest vs. a plain
     one-object-at-a-time boto3 loop doing the same work (GET image, GET mask, GET tags, decode
     and validate). The sequential loop runs on the first `--baseline-pairs` pairs only (it is
     slow by design); both are reported in pairs/s.
  2. The same two without the proxy (loopback: both CPU-bound on this machine).
  3. The local-directory store: concurrent ingest vs. one worker.

    python -m bench.ingest --pairs 2000 --size 256 --latency-ms 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlparse

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.images import decode_pair
from maskfind_pipeline.data.ingest import IngestOptions, ingest
from maskfind_pipeline.data.tags import parse_tags
from maskfind_pipeline.storage import LocalObjectStore, ObjectStore
from maskfind_pipeline.storage.s3 import S3ObjectStore
from tests.support.netproxy import FaultProxy
from tests.support.s3server import S3Server, s3_server


def main() -> None:
    args = _parse()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        source = LocalObjectStore(Path(tmp) / "data")
        types = synthetic.DEFAULT_TYPES
        per_type = -(-args.pairs // len(types))
        start = time.perf_counter()
        synthetic.generate(source, types, per_type, size=args.size, seed=1)
        pairs = per_type * len(types)
        print(f"generated {pairs} pairs at {args.size}² in {time.perf_counter() - start:.1f} s")
        rows = [
            _measure("local store, 1 worker", pairs, lambda: _ingest(source, tmp, 1)),
            _measure(
                f"local store, {args.workers} workers",
                pairs,
                lambda: _ingest(source, tmp, args.workers),
            ),
        ]
        with s3_server() as server:
            bucket = _upload(server, source)
            rows += _s3_rows(server, bucket, pairs, tmp, args)
        _report(rows)


def _s3_rows(server: S3Server, bucket: str, pairs: int, tmp: str, args: argparse.Namespace):
    url = urlparse(server.endpoint_url)
    with FaultProxy(
        url.hostname or "127.0.0.1", url.port or 80, delay_s=args.latency_ms / 1000
    ) as proxy:
        slow = _s3_store(proxy.endpoint_url, bucket)
        fast = _s3_store(server.endpoint_url, bucket)
        n = min(args.baseline_pairs, pairs)
        return [
            _measure(
                f"S3 +{args.latency_ms} ms, sequential boto3 loop", n, lambda: _sequential(slow, n)
            ),
            _measure(
                f"S3 +{args.latency_ms} ms, ingest {args.workers} workers",
                pairs,
                lambda: _ingest(slow, tmp, args.workers),
            ),
            _measure("S3 loopback, sequential boto3 loop", n, lambda: _sequential(fast, n)),
            _measure(
                f"S3 loopback, ingest {args.workers} workers",
                pairs,
                lambda: _ingest(fast, tmp, args.workers),
            ),
        ]


def _ingest(store: ObjectStore, tmp: str, workers: int) -> int:
    work = LocalObjectStore(tempfile.mkdtemp(dir=tmp, prefix="work-"))
    report = ingest(
        store, Catalog(work), run_id="bench", options=IngestOptions(max_workers=workers)
    )
    assert not report.refusals, report.refusals[:3]
    return len(report.new_rows)


def _sequential(store: S3ObjectStore, limit: int) -> int:
    """The naive loop: list, then GET image, GET mask, GET tags and validate, one at a time."""
    client, bucket, done = store.client, store.bucket, 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="labeled/"):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith(".mask.png") or done >= limit:
                continue
            mask_key = key.rpartition(".")[0] + ".mask.png"
            image = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            mask = client.get_object(Bucket=bucket, Key=mask_key)["Body"].read()
            tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
            parse_tags({t["Key"]: t["Value"] for t in tags})
            decode_pair(image, mask, image_ext=key.rpartition(".")[2])
            done += 1
    return done


def _upload(server: S3Server, source: LocalObjectStore) -> str:
    client = server.client(max_pool_connections=32)
    bucket = "bench-ingest"
    client.create_bucket(Bucket=bucket)

    def put(key: str) -> None:
        tags = source.tags(key) if not key.endswith(".mask.png") else {}
        client.put_object(Bucket=bucket, Key=key, Body=source.get(key), Tagging=urlencode(tags))

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        keys = [info.key for info in source.list("labeled/")]
        list(pool.map(put, keys))
    print(f"uploaded {len(keys)} objects to the S3 server in {time.perf_counter() - start:.1f} s")
    return bucket


def _s3_store(endpoint_url: str, bucket: str) -> S3ObjectStore:
    return S3ObjectStore(
        bucket,
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _measure(label: str, expected: int, fn) -> tuple[str, float]:
    start = time.perf_counter()
    done = fn()
    seconds = time.perf_counter() - start
    assert done == expected, f"{label}: {done} pairs, expected {expected}"
    print(f"  {label:<42} {done:>6} pairs {seconds:>7.1f} s {done / seconds:>8.1f} pairs/s")
    return label, done / seconds


def _report(rows: list[tuple[str, float]]) -> None:
    rate = dict(rows)
    labels = list(rate)
    print("\nratios (same run):")
    print(
        f"  local: {rate[labels[1]] / rate[labels[0]]:.2f}x one worker "
        f"({rate[labels[1]]:.0f} pairs/s)"
    )
    print(f"  S3 with latency: {rate[labels[3]] / rate[labels[2]]:.1f}x the sequential loop")
    print(f"  S3 loopback:     {rate[labels[5]] / rate[labels[4]]:.1f}x the sequential loop")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--baseline-pairs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=32)
    return parser.parse_args()


if __name__ == "__main__":
    main()
