"""A production day nobody curated: images near the pixel limit with bad ones of every kind mixed
in, predicted by the shipped `serving.day.predict_day` in one run.

The day (a local data store in a temporary folder) holds `--images` images: `--bad` of them bad,
an equal share of each kind below, the rest good JPEGs of `--pixels` pixels (a few distinct
ones, hard-linked under every name: each is still fetched, decoded and predicted on its own),
`--twins` of the good ones as `<id>.png` + `<id>.jpg` pairs. The bad kinds:

    tags_cut, tags_not_utf8, tags_nested, tags_huge   a tags sidecar that is not usable
    long_name        the mask key would pass the 255-byte segment limit
    name_not_utf8    a local file name that is not UTF-8
    link_out         a symlink to a file outside the root
    link_dangling    a symlink to nothing
    half_upload      0 bytes (first listed before its upload completed)
    huge_header      a PNG whose header says 20000 x 20000
    truncated        a JPEG cut in the middle

Each day runs in a fresh process (the model: tests.support.models.TINY, random weights; the
work per image is fetching and decoding, the model's share is small at any size), under the
audit hooks of tests/support/fswrites.py, which see every file opened or written. Printed: rows
and their statuses by kind, distinct mask keys, reads and writes outside the data and work roots,
peak RSS of the process, images/s; and the ratio of peak RSS to that of a day a tenth the size
(same pixels, same options) run first: memory bounded by configuration does not grow with the day.

    python -m bench.production_day [--images 2000] [--bad 200] [--pixels 39000000]
        [--twins 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from maskfind_pipeline.storage.keys import printable_key

DAY = dt.date(2026, 11, 30)
FOLDER = f"production/{DAY.isoformat()}"
BAD_KINDS = (
    "tags_cut",
    "tags_not_utf8",
    "tags_nested",
    "tags_huge",
    "long_name",
    "name_not_utf8",
    "link_out",
    "link_dangling",
    "half_upload",
    "huge_header",
    "truncated",
)
GOOD_TAGS = b'{"image_type": "cam-a", "camera": "c1"}'
SIDECARS = {
    "tags_cut": b'{"image_type": "cam-a", "camera": "c',
    "tags_not_utf8": b'{"image_type": "cam-\xff\xfe"}',
    "tags_nested": b"[" * 30_000 + b"]" * 30_000,
    "tags_huge": b'{"image_type": "cam-a", "note": "' + b"x" * 3_000_000 + b'"}',
}
BASES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--bad", type=int, default=200)
    parser.add_argument("--pixels", type=int, default=39_000_000)
    parser.add_argument("--twins", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--run-day", type=Path, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.run_day:
        print(json.dumps(run_day(args.run_day)))
        return
    results = {}
    for name, images, bad, twins in (
        ("tenth", max(args.images // 10, 1), args.bad // 10, args.twins // 10),
        ("day", args.images, args.bad, args.twins),
    ):
        with tempfile.TemporaryDirectory(prefix="production-day-") as tmp:
            started = time.perf_counter()
            kinds = make_day(Path(tmp), images, bad, args.pixels, twins)
            made = time.perf_counter() - started
            results[name] = {**measure(Path(tmp)), "kinds": kinds, "generated_s": round(made)}
        report(name, results[name])
    ratio = results["day"]["peak_rss_mb"] / results["tenth"]["peak_rss_mb"]
    print(
        f"\npeak RSS: day {results['day']['peak_rss_mb']:,.0f} MB, a tenth of it "
        f"{results['tenth']['peak_rss_mb']:,.0f} MB: ratio {ratio:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps({**results, "rss_ratio": ratio}, indent=2))


def make_day(root: Path, images: int, bad: int, pixels: int, twins: int) -> dict[str, str]:
    """Write the day under `root/data` (and a file outside it under `root/outside`); the kind of
    every image, by its name as the store lists it."""
    data, outside = root / "data" / FOLDER, root / "outside"
    data.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_jpeg(64 * 48, seed=99))
    (outside / "secret.tags.json").write_bytes(GOOD_TAGS)
    bases = []
    for b in range(BASES):
        path = root / f"base-{b}.jpg"
        path.write_bytes(_jpeg(pixels, seed=b))
        bases.append(path)
    kinds: dict[str, str] = {}
    folder = os.fsencode(data)
    for i in range(images - bad):
        twin = i < 2 * twins
        stem = f"twin-{i // 2:04d}" if twin else f"img-{i:05d}"
        ext = ("png", "jpg")[i % 2] if twin else "jpg"
        name = f"{stem}.{ext}"
        if ext == "png":
            (data / name).write_bytes(_png_of(bases[i % BASES]))
        else:
            os.link(bases[i % BASES], data / name)
        (data / f"{stem}.tags.json").write_bytes(GOOD_TAGS)
        kinds[name] = "twin" if twin else "good"
    for i in range(bad):
        kind = BAD_KINDS[i % len(BAD_KINDS)]
        stem = f"bad-{kind}-{i:04d}"
        name = os.fsencode(f"{stem}.jpg")
        tags = SIDECARS.get(kind, GOOD_TAGS)
        if kind == "long_name":
            stem = f"{stem}-" + "l" * (244 - len(stem) - 1)
            name = os.fsencode(f"{stem}.jpg")
        if kind == "name_not_utf8":
            name, stem = f"{stem}-caf".encode() + b"\xe9.jpg", ""
        path = os.path.join(folder, name)
        if kind == "link_out":
            os.symlink(outside / "secret.jpg", path)
        elif kind == "link_dangling":
            os.symlink(outside / "gone.jpg", path)
        elif kind == "half_upload":
            Path(os.fsdecode(path)).write_bytes(b"")
        elif kind == "huge_header":
            name = os.fsencode(f"{stem}.png")
            path = os.path.join(folder, name)
            Path(os.fsdecode(path)).write_bytes(_huge_png_header())
        elif kind == "truncated":
            content = bases[i % BASES].read_bytes()
            Path(os.fsdecode(path)).write_bytes(content[: len(content) // 2])
        else:
            os.link(bases[i % BASES], path)
        sidecar = name.rpartition(b".")[0] + b".tags.json"
        with open(os.path.join(folder, sidecar), "wb") as f:
            f.write(tags)
        kinds[printable_key(os.fsdecode(name))] = kind
    return kinds


def measure(root: Path) -> dict[str, object]:
    """Run the day in a fresh process; what it reports."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.production_day", "--run-day", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the day's process failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_day(root: Path) -> dict[str, object]:
    """The child: predict the day under `root`, with every file read or written recorded."""
    from maskfind_pipeline.data.production import PredictionLog, list_day
    from maskfind_pipeline.flows.options import ProductionOptions
    from maskfind_pipeline.ml.backends.runtimes import TorchBackend
    from maskfind_pipeline.ml.segmentation.predict import Predictor
    from maskfind_pipeline.serving.day import ProductionModels, predict_day
    from maskfind_pipeline.storage import LocalObjectStore
    from tests.support.fswrites import record_reads, record_writes
    from tests.support.models import TINY, tiny_weights

    predictor = Predictor.from_weights(TINY, tiny_weights(seed=3), version="7")
    models = ProductionModels(
        "7", TINY, TorchBackend("torch_fp32", predictor).predict, "torch_fp32"
    )
    data, work = LocalObjectStore(root / "data"), LocalObjectStore(root / "work")
    listed = len(list_day(data, DAY.isoformat()).images)
    rss_before = _peak_rss_mb()
    started = time.perf_counter()
    with record_reads() as reads, record_writes() as writes:
        outcome = predict_day(
            DAY.isoformat(),
            models,
            data_store=data,
            work_store=work,
            options=ProductionOptions(),
            run_id="bench",
        )
    seconds = time.perf_counter() - started
    rows = PredictionLog(work, DAY.isoformat()).read().to_pylist()
    roots = (root / "data", root / "work")
    by_key = Counter(str(r["image_key"]) for r in rows)
    return {
        "listed": listed,
        "rows": len(rows),
        "rows_this_run": len(outcome.rows),
        "keys_with_more_than_one_row": sum(n > 1 for n in by_key.values()),
        "statuses": {
            printable_key(str(r["image_key"])).rpartition("/")[2]: [r["status"], r["reason"]]
            for r in rows
        },
        "distinct_mask_keys": len({r["mask_key"] for r in rows if r["status"] == "ok"}),
        "reads_outside_roots": [w.path for w in reads.outside(*roots)][:20],
        "writes_outside_roots": [w.path for w in writes.outside(*roots)][:20],
        "seconds": round(seconds, 1),
        "images_per_second": round(len(rows) / seconds, 2),
        "peak_rss_mb_before_the_day": round(rss_before),
        "peak_rss_mb": round(_peak_rss_mb()),
    }


def report(name: str, result: dict[str, object]) -> None:
    statuses: dict[str, list[str | None]] = result.pop("statuses")  # type: ignore[assignment]
    kinds: dict[str, str] = result["kinds"]  # type: ignore[assignment]
    table: dict[str, Counter[str]] = {}
    for file_name, kind in kinds.items():
        status, _ = statuses.get(file_name, ["missing", None])
        table.setdefault(kind, Counter())[str(status)] += 1
    reasons = {kinds.get(n, "?"): r for n, (s, r) in statuses.items() if s != "ok"}
    print(
        f"\n== {name}: {result['listed']} images listed, {result['rows']} rows "
        f"({result['keys_with_more_than_one_row']} keys with more than one), "
        f"{result['distinct_mask_keys']} distinct mask keys"
    )
    for kind, counts in sorted(table.items()):
        example = f"  e.g. {str(reasons.get(kind))[:90]}" if kind in reasons else ""
        print(f"  {kind:14} {dict(counts)}{example}")
    print(
        f"  reads outside the roots: {result['reads_outside_roots'] or 'none'}; "
        f"writes outside: {result['writes_outside_roots'] or 'none'}"
    )
    print(
        f"  {result['seconds']} s, {result['images_per_second']} images/s; peak RSS "
        f"{result['peak_rss_mb']:,} MB ({result['peak_rss_mb_before_the_day']:,} MB before "
        f"the day: interpreter, torch, model); generated in {result['generated_s']} s"
    )
    result["statuses"] = statuses


def _jpeg(pixels: int, *, seed: int) -> bytes:
    """A photo-like JPEG of about `pixels` pixels (4:3): smooth blobs, upscaled, with noise."""
    width = int(math.sqrt(pixels * 4 / 3))
    height = pixels // width
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    big = small.resize((width, height), Image.Resampling.BICUBIC)
    sink = io.BytesIO()
    big.save(sink, "JPEG", quality=85)
    return sink.getvalue()


def _png_of(jpeg: Path) -> bytes:
    sink = io.BytesIO()
    with Image.open(jpeg) as img:
        img.save(sink, "PNG", compress_level=1)
    return sink.getvalue()


def _huge_png_header() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"tEXt", b"pad\0" + b"x" * 100_000)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


if __name__ == "__main__":
    main()
