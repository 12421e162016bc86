"""Run as a subprocess: publish a version of a fake catalog, optionally dying at a chosen step.

    python -m tests.support.publish_worker STORE_URI ROWS [--crash STEP] [--start-at EPOCH]

STEP: before_manifest | mid_manifest (local store: temp file written, not linked) |
after_manifest (manifest written, card not). Prints "created <id>" or "exists <id>".
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.data.versions import VersionConfig, build_snapshot
from maskfind_pipeline.storage import ObjectStore, open_store
from tests.support.catalogs import fake_catalog


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(store: ObjectStore, step: str) -> None:
    original_put = store.put

    def put(key: str, data: bytes, **kwargs: object) -> None:
        if step == "before_manifest" and key.endswith("manifest.parquet"):
            _die()
        if step == "after_manifest" and key.endswith("card.json"):
            _die()
        original_put(key, data, **kwargs)  # type: ignore[arg-type]

    store.put = put  # type: ignore[method-assign]
    if step == "mid_manifest":
        os.link = lambda *a, **k: _die()  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("rows", type=int)
    parser.add_argument("--crash", default=None)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--endpoint-url", default=None)
    args = parser.parse_args()
    store = open_store(args.uri, endpoint_url=args.endpoint_url)
    snapshot = build_snapshot(fake_catalog(args.rows), VersionConfig())
    if args.crash:
        _arm(store, args.crash)
    time.sleep(max(0.0, args.start_at - time.time()))
    published = VersionStore(store).publish(snapshot, catalog_rows=args.rows)
    print(("created" if published.created else "exists"), published.version_id, flush=True)


if __name__ == "__main__":
    main()
