"""A year of bookkeeping at scale: catalog, nightly dataset versions, the compatibility matrix,
production logs. Rows only: no image is decoded or stored (two small pixel measurements aside).

`--months` months of `--images-per-month` labeled pairs (default 12 x 300,000), spread evenly
over the calendar days from 2027-01-01: one ingest and one dataset version per night, one new
model per night (the nightly schedule retrains), `--production-per-day` production images a day.

What runs through the project's own code, and what is measured or extrapolated:

- Catalog (measured every month). Every night's rows go into a `Catalog` in a `LocalObjectStore`
  (temp dir) in the parts real ingest writes: `IngestOptions.batch_size` pairs per part, a
  quarantine part beside each batch with a refusal. Rows, parts and bytes on disk are read off
  the store at every month end.
- Measured nights (the last night of each month in `--measure-months`; every other night is only
  appended in bulk). In a fresh process each, as a Dagster step runs:
    * ingest: `flows.ingest.ingest_catalog` (the real `data.ingest.ingest`: catalog read,
      pairing of the data store's whole listing, the already-seen filter, dedupe, commits). The
      listing (every image and mask key so far) is streamed from per-night files, its time
      excluded; the per-pair fetch + decode + hash (`_Checker`, pixels) is replaced by the row it
      would have produced;
    * dataset version: `flows.datasets.publish_dataset_version` (catalog read, splits, content
      id, create-only publish, verified read-back of it and its parent, diff, checks) and
      `added_samples_sheet` (fed 24 tiny synthetic images), the work of the `dataset_version`
      asset. The parent is last night's version, published from the catalog as it was then.
  Each phase is timed by wrapping the real function; peak RSS is the step process's own. A
  night whose step is predicted to need more than `--max-step-gb` is not measured (this machine
  is shared).
- Production (measured on those nights): one day's log written through `PredictionLog.append`
  in `ProductionOptions.commit_every` parts, and read back; 100 cells written with `CellStore`
  and read back (the per-file cost performance_history pays for every cell).
- Evaluation matrix (planned every night): `evaluation.planning.plan_cells` with the real
  policy (the newest `--last-n` models x versions, plus champion and challenger on every
  version), one model per night, champion promoted every `--promote-every` nights (assumed);
  and with `last_n=None` (all pairs) on the measured nights, checked against its closed form
  (2n - 1 new cells on night n), which gives the other nights. Test-split sizes come from the
  real `assign_splits` on every night's sample ids. GPU time = test images to evaluate /
  `--eval-img-per-s` (default: the H200 inference rate of docs/benchmarks.md, "CUDA").
- Pixels, small and measured: the mean encoded size of a synthetic 256² pair of each default
  type, and `build_decoded`'s pairs/s on ~120 such pairs (training decodes each new version).
- Extrapolated: timings and peak RSS of unmeasured nights (y = a * rows^b fitted over the
  measured nights); manifest bytes of unmeasured versions (interpolated bytes per row); S3
  request counts x `--request-ms`; image storage from the synthetic pair size (an assumption:
  real cameras' images are larger); decoded caches from `data/decoded.py`'s layout
  (N x size² x 3 + N x size² bytes, one per version, never pruned).

The first bottleneck is the earliest night on which any of these crosses its threshold:
`--window-share` of a `--night-hours` night (CPU bookkeeping, decoding, GPU evaluation, S3
requests), `--small-files` Parquet files read by one step, `--memory-gb` peak RSS of a step,
`--disk-tb` of local disk.

    python -m bench.scale [--months 12] [--images-per-month 300000] [--measure-months 1 3]
        [--last-n 7] [--promote-every 7] [--production-per-day 10000] [--max-step-gb 8]
        [--markdown]
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import functools
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from maskfind_pipeline import synthetic
from maskfind_pipeline.data import ingest as ingest_module
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.catalog import (
    CATALOG_SCHEMA,
    QUARANTINE_PREFIX,
    QUARANTINE_SCHEMA,
    SAMPLES_PREFIX,
    Catalog,
    CatalogTables,
)
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.ingest import IngestOptions
from maskfind_pipeline.data.pairing import Candidate, Refusal
from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.data.version_store import PREFIX as DATASETS_PREFIX
from maskfind_pipeline.data.version_store import VersionStore
from maskfind_pipeline.data.versions import VersionConfig, assign_splits, build_snapshot
from maskfind_pipeline.evaluation.cells import CELL_SCHEMA, Cell, CellStore
from maskfind_pipeline.evaluation.history import HistoryPolicy
from maskfind_pipeline.evaluation.planning import plan_cells
from maskfind_pipeline.flows import datasets as datasets_flow
from maskfind_pipeline.flows.history import compact_day
from maskfind_pipeline.flows.ingest import ingest_catalog
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.segmentation.config import ModelSpec
from maskfind_pipeline.storage import LocalObjectStore, ObjectInfo, ObjectNotFound, ObjectStore

START = dt.date(2027, 1, 1)
CAMERAS = ("color2d", "laser3d", "xray", "darkfield")
H200_EVAL_IMG_PER_S = 4482.0  # docs/benchmarks.md, "CUDA": ResNet-34 U-Net 256², H200


@dataclass(frozen=True)
class Config:
    months: int = 36
    images_per_month: int = 300_000
    measure_months: tuple[int, ...] = (1, 3)
    last_n: int = 7
    promote_every: int = 7
    production_per_day: int = 10_000
    failure_rate: float = 0.02
    quarantine_rate: float = 0.001
    types_start: int = 10
    types_per_month: int = 2
    night_hours: float = 8.0
    window_share: float = 0.10
    small_files: int = 300
    memory_gb: float = 4.0
    disk_tb: float = 0.2
    """The decoded store's disk budget (`MASKFIND_DECODED_BUDGET_GB`, default 200 GB)."""
    step_minutes: float = 10.0
    """What one CPU step (ingest, dataset_version) may take."""
    request_ms: float = 20.0
    eval_img_per_s: float = H200_EVAL_IMG_PER_S
    seed: int = 0
    decode_per_type: int = 12
    """Synthetic pairs per default image type whose decoding is timed."""
    cell_samples: int = 100
    """Cells written and read back to time one cell file."""
    max_step_gb: float = 8.0
    """Measured nights whose step is predicted to need more are extrapolated instead."""
    isolate: bool = True
    """Run each measured step in its own process (its own peak RSS); False: in this process."""

    @property
    def window_s(self) -> float:
        return self.night_hours * 3600 * self.window_share


# ---------------------------------------------------------------------------------------------
# The timeline and its synthetic rows


@dataclass(frozen=True)
class Night:
    index: int  # 1-based
    day: dt.date
    month: int  # 1-based
    pairs: int  # labeled pairs that arrived (accepted + quarantined)

    @property
    def run_id(self) -> str:
        return f"{self.index:08x}-0000-4000-8000-{self.day:%Y%m%d}0000"


def timeline(config: Config) -> list[Night]:
    """Every calendar day of `config.months` months from START, the month's pairs spread evenly."""
    nights: list[Night] = []
    for m in range(config.months):
        year, month = START.year + (START.month - 1 + m) // 12, (START.month - 1 + m) % 12 + 1
        days = calendar.monthrange(year, month)[1]
        base, extra = divmod(config.images_per_month, days)
        for d in range(days):
            day = dt.date(year, month, d + 1)
            nights.append(Night(len(nights) + 1, day, m + 1, base + (d < extra)))
    return nights


def image_types(config: Config, month: int) -> list[str]:
    return [
        f"type-{i:03d}" for i in range(config.types_start + config.types_per_month * (month - 1))
    ]


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """`n` random lowercase hex strings of `2 * nbytes` characters, built without Python loops."""
    data = rng.bytes(n * nbytes).hex().encode("ascii")
    offsets = np.arange(n + 1, dtype=np.int32) * (2 * nbytes)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)]
    )


@dataclass(frozen=True)
class NightRows:
    """One night's arrivals: the catalog rows ingest accepts and the quarantine rows it refuses,
    in pair order (`refused[i]`: pair i is refused)."""

    samples: pa.Table
    quarantine: pa.Table
    refused: np.ndarray
    listing: pa.Table
    """Image key, image ETag, mask key, mask ETag of every pair (what the data store lists)."""


def night_rows(config: Config, night: Night) -> NightRows:
    """A pure function of (config, night): what ingest would record for that night's pairs."""
    rng = np.random.default_rng([config.seed, night.index])
    n = night.pairs
    types = image_types(config, night.month)
    type_ix = rng.integers(0, len(types), n)
    failure = rng.random(n) < config.failure_rate
    refused = rng.random(n) < config.quarantine_rate
    cameras = [CAMERAS[i % len(CAMERAS)] for i in type_ix]
    ext = ["jpg" if c == "color2d" else "png" for c in cameras]
    prefix = np.where(failure, "failures", "labeled")
    stamp = f"{night.day:%Y%m%d}"
    ids = [f"{cameras[i]}-{stamp}-{i:06d}" for i in range(n)]
    midnight = dt.datetime.combine(night.day, dt.time(), tzinfo=dt.UTC)
    day_before = np.datetime64(night.day, "us") - np.timedelta64(1, "D")
    captured = day_before + rng.integers(0, 86_400, n).astype("timedelta64[s]")
    captured_text = np.datetime_as_string(captured, unit="s")
    ingested = midnight + dt.timedelta(hours=1)
    model = str(max(1, night.index - 3))
    failed_tags = f'"failed_model_version": "{model}", '
    reported_tags = f'"reported_at": "{night.day}T00:00:00Z", '
    tags = [  # json.dumps(tags, sort_keys=True), written out for speed
        f'{{"camera": "{cameras[i]}", "captured_at": "{captured_text[i]}Z", '
        f"{failed_tags if failure[i] else ''}"
        f'"image_type": "{types[type_ix[i]]}", "product": "product-{type_ix[i] % 7}", '
        f"{reported_tags if failure[i] else ''}"
        f'"station": "station-{type_ix[i] % 5}"}}'
        for i in range(n)
    ]
    image_sha = _hex(rng, n, 32)
    image_keys = [f"{p}/{i}.{e}" for p, i, e in zip(prefix, ids, ext, strict=True)]
    mask_keys = [f"{p}/{i}.mask.png" for p, i in zip(prefix, ids, strict=True)]
    image_etags, mask_etags = _hex(rng, n, 16), _hex(rng, n, 16)
    columns: dict[str, Any] = {
        "sample_id": image_sha,
        "source": np.where(failure, "failure", "labeled"),
        "image_id": ids,
        "image_key": image_keys,
        "mask_key": mask_keys,
        "image_sha256": image_sha,
        "mask_sha256": _hex(rng, n, 32),
        "image_etag": image_etags,
        "mask_etag": mask_etags,
        "image_bytes": rng.integers(20_000, 200_000, n),
        "width": np.full(n, 256, dtype=np.int32),
        "height": np.full(n, 256, dtype=np.int32),
        "image_format": ["JPEG" if e == "jpg" else "PNG" for e in ext],
        "image_mode": ["RGB" if e == "jpg" else "L" for e in ext],
        "exif_transposed": np.zeros(n, dtype=bool),
        "mask_fraction": rng.random(n).astype(np.float32),
        "image_type": [types[i] for i in type_ix],
        "camera": cameras,
        "product": [f"product-{i % 7}" for i in type_ix],
        "station": [f"station-{i % 5}" for i in type_ix],
        "captured_at": captured,
        "failed_model_version": [model if f else None for f in failure],
        "reported_at": [midnight if f else None for f in failure],
        "tags_json": tags,
        "ingested_at": pa.array([ingested] * n, pa.timestamp("us", tz="UTC")),
        "ingest_run": [night.run_id] * n,
    }
    table = pa.table(
        {
            name: pa.array(columns[name], type=CATALOG_SCHEMA.field(name).type)
            for name in CATALOG_SCHEMA.names
        },
        schema=CATALOG_SCHEMA,
    )
    listing = table.select(["image_key", "image_etag", "mask_key", "mask_etag"])
    bad = table.filter(pa.array(refused))
    k = bad.num_rows
    quarantine = pa.table(
        {
            "key": bad.column("image_key"),
            "etag": bad.column("image_etag"),
            "mask_etag": bad.column("mask_etag"),
            "stage": pa.array(["decode"] * k, pa.string()),
            "reason": pa.array(["cannot decode image: image file is truncated"] * k, pa.string()),
            "retryable": pa.array([False] * k, pa.bool_()),
            "quarantined_at": pa.array([ingested] * k, pa.timestamp("us", tz="UTC")),
            "ingest_run": pa.array([night.run_id] * k, pa.string()),
        },
        schema=QUARANTINE_SCHEMA,
    )
    return NightRows(table.filter(pa.array(~refused)), quarantine, refused, listing)


def bulk_append(catalog: Catalog, rows: NightRows, batch_size: int, run_id: str) -> None:
    """Append a night in the parts `ingest` commits: one samples part (and one quarantine part
    when the batch refused something) per `batch_size` pairs."""
    accepted = np.flatnonzero(~rows.refused)
    refused = np.flatnonzero(rows.refused)
    for number, start in enumerate(range(0, len(rows.refused), batch_size)):
        a0, a1 = np.searchsorted(accepted, [start, start + batch_size])
        r0, r1 = np.searchsorted(refused, [start, start + batch_size])
        catalog.append(
            rows.samples.slice(a0, a1 - a0),
            rows.quarantine.slice(r0, r1 - r0),
            run_id=run_id,
            batch=number,
        )


# ---------------------------------------------------------------------------------------------
# Timing the real functions


class PhaseTimer:
    """Wall seconds of each call of the wrapped functions, by label."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls[label].append(time.perf_counter() - start)

        return timed

    @contextmanager
    def patched(self, targets: Sequence[tuple[object, str, str]]) -> Iterator[PhaseTimer]:
        """Time `owner.attr` (a module function or a class's method) under `label`."""
        with ExitStack() as stack:
            for owner, attr, label in targets:
                original = getattr(owner, attr)
                stack.enter_context(patch.object(owner, attr, self.wrap(label, original)))
            yield self

    def first(self, label: str) -> float:
        return self.calls[label][0] if self.calls[label] else 0.0

    def total(self, label: str) -> float:
        return sum(self.calls[label])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


LISTING_DIR = "listing"


def listing_path(root: Path, night: int) -> Path:
    return root / LISTING_DIR / f"night-{night:04d}.parquet"


class SimulatedDataStore(ObjectStore):
    """The data store as ingest and the contact sheet see it: the listing of every pair that
    arrived up to a night, streamed in key pages from per-night files (as S3 streams its pages,
    so it is never held whole), and the same tiny synthetic image (or mask) for every key read.

    `listing_s` accumulates the time spent producing the listing, which the simulation adds
    and a real store would replace with its own (network) listing time."""

    def __init__(
        self,
        root: Path | None = None,
        nights: int = 0,
        image: bytes = b"",
        mask: bytes = b"",
    ) -> None:
        self.uri = "memory://simulated"
        self._files = [listing_path(root, n) for n in range(1, nights + 1)] if root else []
        self._image, self._mask = image, mask
        self.listing_s = 0.0
        self.listed = 0

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        for path in self._files:
            start = time.perf_counter()
            table = pq.read_table(path)
            cols = [table.column(c).to_pylist() for c in table.column_names]
            page = [
                info
                for image_key, image_etag, mask_key, mask_etag in zip(*cols, strict=True)
                if image_key.startswith(prefix)
                for info in (
                    ObjectInfo(image_key, 1, image_etag),
                    ObjectInfo(mask_key, 1, mask_etag),
                )
            ]
            self.listing_s += time.perf_counter() - start
            self.listed += len(page)
            yield from page

    def folders(self, prefix: str = "") -> list[str]:
        return []

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        if not self._image:
            raise ObjectNotFound(key)
        return self._mask if key.endswith(".mask.png") else self._image

    def put(
        self,
        key: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        create_only: bool = False,
    ) -> None:
        raise NotImplementedError("the simulated data store is read-only")

    def tags(self, key: str) -> dict[str, str]:
        return {}

    def exists(self, key: str) -> bool:
        return True

    def delete(self, key: str) -> None:
        raise NotImplementedError("the simulated data store is read-only")


def _fake_checker(tonight: NightRows) -> type:
    """`data.ingest._Checker` with the fetch + decode + hash replaced by the rows they give."""
    rows = {r["image_key"]: r for r in tonight.samples.to_pylist()}
    refusals = {r["key"]: r for r in tonight.quarantine.to_pylist()}

    class RowsChecker:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __call__(self, candidate: Candidate) -> object:
            key = candidate.image.key
            if key in refusals:
                r = refusals[key]
                refusal = Refusal(key, r["etag"], r["mask_etag"], r["stage"], r["reason"], False)
                return ingest_module._Checked(candidate, refusal=refusal)
            return ingest_module._Checked(candidate, row=dict(rows[key]))

    return RowsChecker


def measure_ingest(config: Config, root: Path, night: Night) -> dict[str, Any]:
    """Ingest one night through `flows.ingest.ingest_catalog` (see the module docstring)."""
    work = LocalObjectStore(root / "work")
    tonight = night_rows(config, night)
    store = SimulatedDataStore(root, night.index)
    timer = PhaseTimer()
    targets = [
        (Catalog, "read", "catalog read"),
        (ingest_module, "pair_listing", "pair listing"),
        (ingest_module, "_unseen", "seen filter"),
        (ingest_module._KnownHashes, "of", "known hashes"),
        (ingest_module, "_quarantined", "quarantined"),
        (ingest_module, "_commit", "commit parts"),
        (Catalog, "compact", "compact"),
    ]
    with patch.object(ingest_module, "_Checker", _fake_checker(tonight)), timer.patched(targets):
        start = time.perf_counter()
        outcome = ingest_catalog(
            store,
            work,
            ContentCache(root / "cache"),
            IngestOptions(),
            run_id=night.run_id,
        )
        total = time.perf_counter() - start
    counts = outcome.report.counts()
    return {
        "listed_keys": store.listed,
        **counts,
        "catalog_rows_after": outcome.samples.num_rows,
        "catalog_read_s": timer.first("catalog read"),
        "reread_s": sum(timer.calls["catalog read"][1:]),
        "listing_s": store.listing_s,
        "pairing_s": timer.total("pair listing") - store.listing_s,
        "seen_s": timer.total("seen filter")
        + timer.total("known hashes")
        + timer.total("quarantined"),
        "commit_s": timer.total("commit parts"),
        "compact_s": timer.total("compact"),
        "catalog_files_read": Catalog(work).files(),
        "total_s": total - store.listing_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def publish_parent(root: Path) -> dict[str, Any]:
    """Last night's version, from the catalog as it is before tonight's ingest (not timed)."""
    work = LocalObjectStore(root / "work")
    samples = Catalog(work).read().current_samples()
    snapshot = build_snapshot(samples, VersionConfig())
    published = VersionStore(work).publish(snapshot, catalog_rows=samples.num_rows)
    path = root / "work" / DATASETS_PREFIX / published.version_id / "manifest.parquet"
    return {"manifest_rows": snapshot.manifest.num_rows, "manifest_bytes": path.stat().st_size}


def _tiny_pair() -> tuple[bytes, bytes]:
    image_type = synthetic.DEFAULT_TYPES[0]
    sample = synthetic.render_sample(image_type, synthetic.sample_rng(0, image_type, 0), 32)
    image, _, mask = synthetic.encode_sample(sample, image_type)
    return image, mask


def measure_version(config: Config, root: Path, night: Night) -> dict[str, Any]:
    """The `dataset_version` asset's work for one night (see the module docstring)."""
    work = LocalObjectStore(root / "work")
    timer = PhaseTimer()
    targets = [
        (Catalog, "read", "catalog read"),
        (CatalogTables, "current_samples", "current samples"),
        (datasets_flow, "build_snapshot", "build"),
        (VersionStore, "publish", "publish"),
        (VersionStore, "manifest", "verified read"),
        (datasets_flow, "diff", "diff"),
        (datasets_flow, "check_version", "checks"),
    ]
    with timer.patched(targets):
        start = time.perf_counter()
        outcome = datasets_flow.publish_dataset_version(work, VersionConfig())
        version_s = time.perf_counter() - start
    image, mask = _tiny_pair()
    start = time.perf_counter()
    sheet = datasets_flow.added_samples_sheet(
        VersionStore(work), SimulatedDataStore(image=image, mask=mask), outcome.version_id
    )
    sheet_s = time.perf_counter() - start
    card = outcome.card
    manifest_path = root / "work" / DATASETS_PREFIX / outcome.version_id / "manifest.parquet"
    test = sum(sum(s.get("test", {}).values()) for s in card["counts"].values())
    return {
        "version_id": outcome.version_id,
        "created": outcome.created,
        "parent": card["parent"],
        "manifest_rows": card["samples"],
        "manifest_bytes": manifest_path.stat().st_size,
        "test_rows": test,
        "checks_passed": all(c.passed for c in outcome.checks if c.blocking),
        "sheet_bytes": len(sheet or b""),
        "catalog_read_s": timer.total("catalog read"),
        "current_s": timer.total("current samples"),
        "build_s": timer.total("build"),
        "publish_s": timer.total("publish"),
        "verify_s": timer.total("verified read"),
        "diff_s": timer.total("diff"),
        "checks_s": timer.total("checks"),
        "version_s": version_s,
        "sheet_s": sheet_s,
        "total_s": version_s + sheet_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _step(config: Config, root: Path, night: Night, step: str) -> dict[str, Any]:
    if step == "parent":
        return publish_parent(root)
    return (measure_ingest if step == "ingest" else measure_version)(config, root, night)


def _run_step(config: Config, root: Path, night: Night, step: str) -> dict[str, Any]:
    """One step in a fresh process (its own peak RSS, as a Dagster step), or in this one."""
    if not config.isolate:
        return _step(config, root, night, step)
    spec = json.dumps(
        {"config": asdict(config), "root": str(root), "night": night.index, "step": step}
    )
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--child", spec],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _child(spec_text: str) -> None:
    spec = json.loads(spec_text)
    raw = spec["config"]
    config = Config(**{**raw, "measure_months": tuple(raw["measure_months"])})
    night = timeline(config)[spec["night"] - 1]
    print(json.dumps(_step(config, Path(spec["root"]), night, spec["step"])))


# ---------------------------------------------------------------------------------------------
# Production logs and cell files


def _production_rows(config: Config, night: Night) -> list[dict[str, object]]:
    rng = np.random.default_rng([config.seed, night.index, 1])
    n = config.production_per_day
    types = image_types(config, night.month)
    day = night.day.isoformat()
    now = dt.datetime.combine(night.day, dt.time(3), tzinfo=dt.UTC)
    sha = _hex(rng, n, 32).to_pylist()
    etag = _hex(rng, n, 16).to_pylist()
    probs = rng.dirichlet([8, 2, 1], n).astype(np.float32)
    rows: list[dict[str, object]] = []
    for i in range(n):
        t = int(rng.integers(len(types)))
        image_id = f"{CAMERAS[t % 4]}-{night.day:%Y%m%d}-p{i:06d}"
        rows.append(
            {
                "image_key": f"production/{day}/{image_id}.png",
                "image_id": image_id,
                "day": day,
                "status": "ok",
                "reason": None,
                "retryable": False,
                "image_sha256": sha[i],
                "image_etag": etag[i],
                "width": 256,
                "height": 256,
                "image_type": types[t],
                "camera": CAMERAS[t % 4],
                "product": f"product-{t % 7}",
                "station": f"station-{t % 5}",
                "captured_at": now,
                "tags_json": json.dumps({"image_type": types[t], "camera": CAMERAS[t % 4]}),
                "model_version": str(night.index),
                "reviewer_version": "1",
                "backend": "onnxruntime",
                "mask_key": f"predictions/{day}/{image_id}.mask.png",
                "mask_fraction": float(rng.random()),
                "probability_mean": float(rng.random()),
                "uncertain_share": float(rng.random() * 0.1),
                "grade": int(np.argmax(probs[i])) + 1,
                "p_grade1": float(probs[i, 0]),
                "p_grade2": float(probs[i, 1]),
                "p_grade3": float(probs[i, 2]),
                "novelty": float(rng.random()),
                "novel": bool(rng.random() < 0.01),
                "predicted_at": now,
                "run_id": night.run_id,
            }
        )
    return rows


def measure_production(config: Config, root: Path, night: Night) -> dict[str, Any]:
    """One production day's log through `PredictionLog`: write in commit parts, read back."""
    work = LocalObjectStore(root / "work")
    log = PredictionLog(work, night.day.isoformat())
    rows = _production_rows(config, night)
    per_part = ProductionOptions().commit_every
    start = time.perf_counter()
    for part, i in enumerate(range(0, len(rows), per_part)):
        log.append(rows[i : i + per_part], run_id=night.run_id, part=part)
    append_s = time.perf_counter() - start
    compact_day(work, night.day.isoformat())
    start = time.perf_counter()
    current = PredictionLog(work, night.day.isoformat()).current()
    history_day = current.select(["day", "image_type", "status", "grade", "novel"]).to_pylist()
    read_s = time.perf_counter() - start
    assert len(history_day) == len(rows)
    infos = [i for i in work.list(log.prefix) if i.key.endswith(".parquet")]
    return {
        "rows": len(rows),
        "parts": per_part and -(-len(rows) // per_part),
        "files_after_compaction": len(infos),
        "bytes": sum(i.size for i in infos),
        "append_s": append_s,
        "read_s": read_s,
    }


def measure_cells(config: Config, root: Path, night: Night, count: int = 100) -> dict[str, Any]:
    """`count` cells of that night's shape (overall, per image type, per source) written with
    `CellStore` under a scratch root, and read back as performance_history reads every cell."""
    store = CellStore(LocalObjectStore(root / f"cells-{night.index}"))
    types = image_types(config, night.month)
    now = dt.datetime.now(dt.UTC)
    groups = [
        ("overall", "all"),
        *(("image_type", t) for t in types),
        ("source", "labeled"),
        ("source", "failure"),
    ]
    for i in range(count):
        rows = [
            {
                "model_version": str(i + 1),
                "dataset_version": f"ds-{night.index:016x}",
                "group_kind": kind,
                "group": group,
                "miou": 0.9,
                "precision": 0.9,
                "recall": 0.9,
                "n_images": 1000,
                "threshold": 0.5,
                "mlflow_run_id": f"{i:032x}",
                "evaluated_at": now,
            }
            for kind, group in groups
        ]
        store.write(Cell(str(i + 1), f"ds-{night.index:016x}"), rows)
    store.compact()
    start = time.perf_counter()
    table = store.read()
    read_s = time.perf_counter() - start
    assert table.schema.equals(CELL_SCHEMA) and table.num_rows == count * len(groups)
    files = [i for i in store.store.list("evaluations/") if i.key.endswith(".parquet")]
    return {
        "bytes_per_cell": sum(i.size for i in files) / count,
        "read_s_per_cell": read_s / count,
        "files": max(len(store.table(m).layout().files) for m in store.models()),
    }


def decode_rate(per_type: int = 12) -> float:
    """Pairs/s of `build_decoded` (what training does to each night's new version): synthetic
    256² pairs of the default types ingested for real (bytes in the content cache, as after
    ingest), then decoded and resized to the model's input size."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-decode-") as tmp:
        root = Path(tmp)
        data = LocalObjectStore(root / "data")
        synthetic.generate(data, synthetic.DEFAULT_TYPES, per_type, size=256)
        cache = ContentCache(root / "cache")
        catalog = Catalog(LocalObjectStore(root / "work"))
        samples = ingest_module.ingest(data, catalog, run_id="decode", cache=cache).new_samples
        manifest = build_snapshot(samples, VersionConfig()).manifest
        start = time.perf_counter()
        build_decoded(
            manifest,
            data,
            cache,
            root / "decoded",
            version_id="decode",
            size=ModelSpec().input_size,
        )
        return manifest.num_rows / (time.perf_counter() - start)


def pair_sizes() -> dict[str, float]:
    """Mean encoded bytes of one synthetic 256² sample of each default type (image, mask)."""
    images, masks = [], []
    for image_type in synthetic.DEFAULT_TYPES:
        sample = synthetic.render_sample(image_type, synthetic.sample_rng(0, image_type, 0), 256)
        image, _, mask = synthetic.encode_sample(sample, image_type)
        images.append(len(image))
        masks.append(len(mask))
    return {"image": float(np.mean(images)), "mask": float(np.mean(masks))}


# ---------------------------------------------------------------------------------------------
# The evaluation matrix


@dataclass
class EvalNight:
    index: int
    cells: int
    cumulative: int
    images: int
    all_cells: int
    all_cumulative: int
    all_images: int
    scored: int = 0
    """Test images scored tonight with per-sample scores (each model on what it has not scored)."""
    models: int = 0
    """Model versions with a missing cell tonight (their scores and cells tables are read)."""


def champion_before(night: int, promote_every: int) -> int | None:
    """The champion when night `night`'s evaluation runs: the last model promoted before it."""
    last = (night - 1) // promote_every * promote_every
    return last or None


def plan_year(
    config: Config, nights: Sequence[Night], test_rows: Sequence[int], check_at: set[int]
) -> tuple[list[EvalNight], list[str]]:
    """`plan_cells` every night under last_n; all pairs by its closed form, checked against
    `plan_cells(last_n=None)` on the nights in `check_at`."""
    existing: set[Cell] = set()
    cards: list[dict[str, object]] = []
    test_of: dict[str, int] = {}
    models: list[str] = []
    out, notes = [], []
    all_cumulative = tests_so_far = 0
    scored_upto: dict[str, int] = {}
    test_by_index: dict[int, int] = {}
    for night, test in zip(nights, test_rows, strict=True):
        n = night.index
        vid = f"ds-{n:04d}"
        cards.append({"id": vid, "counts": {"all": {"test": {"labeled": test}}}})
        test_of[vid] = test
        test_by_index[n] = test
        models.append(str(n))
        champion = champion_before(n, config.promote_every)
        pinned = [str(n)] + ([str(champion)] if champion else [])
        plan = plan_cells(models, cards, existing, pinned=pinned, last_n=config.last_n)
        existing.update(plan.missing)
        images = sum(test_of[c.dataset_version] for c in plan.missing)
        # Per-sample scores: test sets are nested here (no relabels), so a model has scored
        # the test samples of every version up to the newest it was evaluated on.
        scored = 0
        for model in {c.model_version for c in plan.missing}:
            mine = [c for c in plan.missing if c.model_version == model]
            newest = max(int(c.dataset_version[3:]) for c in mine)
            before = scored_upto.get(model, 0)
            if newest > before:
                scored += test_by_index[newest] - (test_by_index[before] if before else 0)
                scored_upto[model] = newest
        models_tonight = len({c.model_version for c in plan.missing})
        tests_so_far += test
        # All pairs: the new model on every version, every older model on the new version.
        all_cells = 2 * n - 1
        all_images = tests_so_far + (n - 1) * test
        all_cumulative += all_cells
        if n in check_at:
            before = {Cell(m, str(c["id"])) for m in models[:-1] for c in cards[:-1]}
            full = plan_cells(models, cards, before, pinned=pinned, last_n=None)
            got = (len(full.missing), sum(test_of[c.dataset_version] for c in full.missing))
            if got != (all_cells, all_images) or len(full.wanted) != all_cumulative:
                notes.append(f"night {n}: all-pairs plan {got} != closed form")
        out.append(
            EvalNight(
                n,
                len(plan.missing),
                len(existing),
                images,
                all_cells,
                all_cumulative,
                all_images,
                scored,
                models_tonight,
            )
        )
    return out, notes


# ---------------------------------------------------------------------------------------------
# The simulation


@dataclass
class MonthEnd:
    month: int
    night: int
    catalog_rows: int
    quarantine_rows: int
    sample_parts: int
    quarantine_parts: int
    catalog_bytes: int
    files_read: int = 0


@dataclass
class Result:
    config: Config
    nights: list[Night]
    months: list[MonthEnd]
    measured: dict[int, dict[str, Any]]  # by night index
    evaluation: list[EvalNight]
    notes: list[str]
    sizes: dict[str, float]
    versions_written: dict[int, tuple[int, int]]  # night -> (manifest rows, bytes)
    wall_s: float
    decode_pairs_per_s: float
    command: str = ""
    rows_by_night: list[int] = field(default_factory=list)
    test_by_night: list[int] = field(default_factory=list)


def _du(root: Path, prefix: str) -> tuple[int, int]:
    files = [f for f in (root / prefix).rglob("*.parquet")] if (root / prefix).exists() else []
    return len(files), sum(f.stat().st_size for f in files)


def _too_big(config: Config, measured: Mapping[int, dict[str, Any]], rows: int) -> str:
    """Why a night is too big to measure here (its predicted peak RSS), or ''."""
    if not measured:
        return ""
    xs = [m["rows"] for m in measured.values()]
    ys = [max(m["ingest"]["peak_rss_mb"], m["version"]["peak_rss_mb"]) for m in measured.values()]
    predicted = _fit(xs, ys)[0](rows)
    if predicted <= config.max_step_gb * 1024:
        return ""
    return (
        f"predicted peak RSS {predicted / 1024:.1f} GB > --max-step-gb {config.max_step_gb:g} "
        "(extrapolated instead)"
    )


def simulate(config: Config, workdir: Path | None = None) -> Result:
    """Run the whole timeline (module docstring); `workdir` defaults to a temporary directory."""
    started = time.perf_counter()
    nights = timeline(config)
    measured_nights = {
        max(n.index for n in nights if n.month == m)
        for m in config.measure_months
        if 1 <= m <= config.months
    }
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        root = workdir
        work = LocalObjectStore(root / "work")
        writer = Catalog(work)  # appends only: never reads (its part cache stays empty)
        batch = IngestOptions().batch_size
        fractions = VersionConfig().fractions
        rows_total = quarantine_total = test_total = 0
        rows_by_night, test_by_night = [], []
        measured: dict[int, dict[str, Any]] = {}
        versions_written: dict[int, tuple[int, int]] = {}
        months: list[MonthEnd] = []
        notes: list[str] = []
        (root / LISTING_DIR).mkdir(parents=True, exist_ok=True)
        for night in tqdm(nights, desc="nights", unit="night", file=sys.stderr):
            rows = night_rows(config, night)
            pq.write_table(rows.listing, listing_path(root, night.index))
            rows_now = rows_total + rows.samples.num_rows
            skip = night.index in measured_nights and _too_big(config, measured, rows_now)
            if skip:
                notes.append(f"night {night.index} (month {night.month}) not measured: {skip}")
            if night.index in measured_nights and not skip:
                if night.index > 1:  # last night's version: the parent tonight's diff reads
                    parent = _run_step(config, root, night, "parent")
                    versions_written[night.index - 1] = (
                        parent["manifest_rows"],
                        parent["manifest_bytes"],
                    )
                ingest = _run_step(config, root, night, "ingest")
                version = _run_step(config, root, night, "version")
                versions_written[night.index] = (
                    version["manifest_rows"],
                    version["manifest_bytes"],
                )
                measured[night.index] = {
                    "rows": rows_now,
                    "ingest": ingest,
                    "version": version,
                    "production": measure_production(config, root, night),
                    "cells": measure_cells(config, root, night, config.cell_samples),
                }
                tqdm.write(
                    f"night {night.index} (month {night.month}, {rows_now:,} rows): ingest "
                    f"{ingest['total_s']:.1f} s, {ingest['peak_rss_mb']:,.0f} MB; dataset_version "
                    f"{version['total_s']:.1f} s, {version['peak_rss_mb']:,.0f} MB",
                    file=sys.stderr,
                )
            else:
                bulk_append(writer, rows, batch, night.run_id)
                Catalog(work).compact()  # as ingest does at its end (a fresh reader: no cache)
            rows_total += rows.samples.num_rows
            quarantine_total += rows.quarantine.num_rows
            splits = assign_splits(rows.samples.column("sample_id"), fractions)
            test_total += int(np.count_nonzero(splits == "test"))
            rows_by_night.append(rows_total)
            test_by_night.append(test_total)
            if night.index in measured:
                got = measured[night.index]
                if got["ingest"]["catalog_rows_after"] != rows_total:
                    notes.append(f"night {night.index}: catalog rows differ from the simulation")
                if got["version"]["test_rows"] != test_total:
                    notes.append(f"night {night.index}: test rows differ from the simulation")
            last_of_month = night.index == len(nights) or nights[night.index].month != night.month
            if last_of_month:
                s_parts, s_bytes = _du(root / "work", SAMPLES_PREFIX)
                q_parts, q_bytes = _du(root / "work", QUARANTINE_PREFIX)
                months.append(
                    MonthEnd(
                        night.month,
                        night.index,
                        rows_total,
                        quarantine_total,
                        s_parts,
                        q_parts,
                        s_bytes + q_bytes,
                        Catalog(work).files(),
                    )
                )
        evaluation, plan_notes = plan_year(config, nights, test_by_night, measured_nights)
        notes += plan_notes
        sizes, rate = pair_sizes(), decode_rate(config.decode_per_type)
        result = Result(
            config,
            nights,
            months,
            measured,
            evaluation,
            notes,
            sizes,
            versions_written,
            time.perf_counter() - started,
            rate,
            "",
            rows_by_night,
            test_by_night,
        )
    return result


# ---------------------------------------------------------------------------------------------
# Derived quantities and the report


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[Callable[[float], float], float]:
    """y = a * x^b fitted in log-log over (xs, ys), and b; proportional (b = 1) for one point."""
    if len(xs) < 2:
        scale = ys[0] / xs[0] if xs else 0.0
        return (lambda x: scale * x), 1.0
    exponent, log_a = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
    return (lambda x: float(np.exp(log_a) * x**exponent)), float(exponent)


@dataclass
class Series:
    """One quantity per night, how it was obtained, and its threshold."""

    name: str
    unit: str
    values: list[float]
    threshold: float
    how: str


def derived(result: Result) -> list[Series]:
    """Per-night series of every quantity the bottleneck search compares with a threshold."""
    cfg, nights = result.config, result.nights
    rows = [float(r) for r in result.rows_by_night]
    days = [float(n.index) for n in nights]
    meas = sorted(result.measured)
    xs = [rows[i - 1] for i in meas]

    def fitted(step: str, key: str) -> tuple[Callable[[float], float], float]:
        return _fit(xs, [result.measured[i][step][key] for i in meas])

    ingest_s, ingest_b = fitted("ingest", "total_s")
    version_s, version_b = fitted("version", "total_s")
    ingest_mb, ingest_mb_b = fitted("ingest", "peak_rss_mb")
    version_mb, version_mb_b = fitted("version", "peak_rss_mb")
    month_files = {m.night: m.files_read for m in result.months}
    files_now, catalog_files = 0.0, []
    for d in days:
        files_now = float(month_files.get(int(d), files_now))
        catalog_files.append(files_now)
    cells_files = _cells_files(result)
    prod_parts = max((m["production"]["parts"] for m in result.measured.values()), default=0)
    history_days = HistoryPolicy().production_days
    history_files = [
        cells_files * _champions(int(d), cfg.promote_every) + min(d, history_days) - 1 + prod_parts
        for d in days
    ]
    size = ModelSpec().input_size
    row_bytes = 4 * size * size
    new_rows = np.diff(np.asarray([0.0, *rows]))
    fitted_text = "fit y = a * rows^b, measured nights, b = {:.2f}"
    step = cfg.step_minutes * 60
    return [
        Series(
            "ingest step (CPU)",
            "s",
            [ingest_s(r) for r in rows],
            step,
            fitted_text.format(ingest_b),
        ),
        Series(
            "dataset_version step (CPU)",
            "s",
            [version_s(r) for r in rows],
            step,
            fitted_text.format(version_b),
        ),
        Series(
            "peak RSS of ingest",
            "MB",
            [ingest_mb(r) for r in rows],
            cfg.memory_gb * 1024,
            fitted_text.format(ingest_mb_b),
        ),
        Series(
            "peak RSS of dataset_version",
            "MB",
            [version_mb(r) for r in rows],
            cfg.memory_gb * 1024,
            fitted_text.format(version_mb_b),
        ),
        Series(
            "decoding tonight's new samples for training (CPU, here)",
            "s",
            [r / result.decode_pairs_per_s for r in new_rows],
            step,
            f"new rows / {result.decode_pairs_per_s:,.0f} pairs/s (build_decoded, measured); "
            "older rows are in the content-addressed store (tests/unit/data/test_decoded_store.py)",
        ),
        Series(
            "catalog files read by a step",
            "files",
            catalog_files,
            cfg.small_files,
            "Catalog.files() at month ends (compacted after every night)",
        ),
        Series(
            "files read by performance_history",
            "files",
            history_files,
            cfg.small_files,
            "each champion's compacted cells + one file per finished day + the newest day's parts",
        ),
        Series(
            "files read by compat_evaluation",
            "files",
            [float(eval_files(e, cells_files)) for e in result.evaluation],
            cfg.small_files,
            "tonight's manifest + the membership table + scores and cells of each model with "
            "a missing cell (plan_cells, last_n)",
        ),
        Series(
            "GPU evaluation tonight, per-sample scores",
            "s",
            [e.scored / cfg.eval_img_per_s for e in result.evaluation],
            cfg.window_s,
            f"distinct test samples each model has not scored / {cfg.eval_img_per_s:,.0f} img/s",
        ),
        Series(
            "decoded pixels on local disk (training's share + evaluation's chunk)",
            "TB",
            [
                (min(r * row_bytes, 0.8 * cfg.disk_tb * 1e12) + 4096 * row_bytes) / 1e12
                for r in rows
            ],
            cfg.disk_tb,
            f"rows x {row_bytes:,} bytes at {size}², stored once, training keeping a hash share "
            f"that fits 80 % of the budget (data.decoded.fit_to_budget): at night "
            f"{len(rows)} a share of {_train_share(rows[-1], row_bytes, cfg):.2f} of train + val",
        ),
    ]


def _train_share(rows: float, row_bytes: int, cfg: Config) -> float:
    """The share of train + val rows training decodes under the budget (`fit_to_budget`)."""
    fit = 0.8 * cfg.disk_tb * 1e12 / row_bytes
    return 1.0 if rows <= fit else fit / (0.85 * rows)


def eval_files(e: EvalNight, cells_files: int) -> int:
    """Files compat_evaluation reads: the new version's manifest, the membership table, and the
    (compacted) scores and cells tables of each model with a missing cell."""
    return 2 + 2 * e.models * cells_files


def _cells_files(result: Result) -> int:
    return max((m["cells"]["files"] for m in result.measured.values()), default=1)


def _champions(night: int, promote_every: int) -> int:
    """Champion terms so far (the assumed promotion every `promote_every` nights)."""
    return max(1, night // promote_every)


def _parts_per_night(result: Result) -> float:
    last = result.months[-1]
    return (last.sample_parts + last.quarantine_parts) / last.night


def crossing(series: Series, nights: Sequence[Night]) -> str:
    for night, value in zip(nights, series.values, strict=True):
        if value >= series.threshold:
            return f"night {night.index} (month {night.month}, {night.day})"
    return "not within the simulated months"


def storage(result: Result) -> list[dict[str, float]]:
    """Cumulative bytes at each month end (see `report` for how each is obtained)."""
    cfg = result.config
    size = ModelSpec().input_size
    written = sorted(result.versions_written)
    per_row = [result.versions_written[n][1] / result.versions_written[n][0] for n in written]
    pair = result.sizes["image"] + result.sizes["mask"]
    cells_bytes = np.mean([m["cells"]["bytes_per_cell"] for m in result.measured.values()])
    prod_day = np.mean([m["production"]["bytes"] for m in result.measured.values()])
    out = []
    manifests = decoded = 0.0
    month_ends = {m.night: m for m in result.months}
    for night, rows, ev in zip(result.nights, result.rows_by_night, result.evaluation, strict=True):
        manifests += rows * float(np.interp(night.index, written, per_row))
        decoded = rows * 4 * size * size  # content-addressed: each row once, shared
        if night.index in month_ends:
            m = month_ends[night.index]
            pairs = m.catalog_rows + m.quarantine_rows
            out.append(
                {
                    "month": night.month,
                    "catalog": m.catalog_bytes,
                    "manifests": manifests,
                    "cells": ev.cumulative * cells_bytes,
                    "production_logs": prod_day * night.index,
                    "labeled_pairs": pairs * pair,
                    "production_pixels": cfg.production_per_day * night.index * pair,
                    "decoded": decoded,
                }
            )
    return out


def _gb(b: float) -> str:
    return f"{b / 1e9:,.2f}" if b < 1e11 else f"{b / 1e9:,.0f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool) -> str:
    cells = [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in cells)])
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*r) for r in cells)])


def summary(result: Result) -> tuple[list[str], list[list[str]]]:
    """One row per month end: the headline numbers, measured (exact) or fitted (~)."""
    cfg = result.config
    meas = sorted(result.measured)
    xs = [result.measured[i]["rows"] for i in meas]

    def fitted(step: str, key: str) -> Callable[[float], float]:
        return _fit(xs, [result.measured[i][step][key] for i in meas])[0]

    ingest_s, version_s = fitted("ingest", "total_s"), fitted("version", "total_s")
    ingest_mb, version_mb = fitted("ingest", "peak_rss_mb"), fitted("version", "peak_rss_mb")
    ev = {e.index: e for e in result.evaluation}
    store = {s["month"]: s for s in storage(result)}
    cells_files = _cells_files(result)
    prod_parts = max((g["production"]["parts"] for g in result.measured.values()), default=0)

    def history_files(night: int) -> int:
        days = min(night, HistoryPolicy().production_days)
        return cells_files * _champions(night, cfg.promote_every) + days - 1 + prod_parts

    rows = []
    for m in result.months:
        e, st, got = ev[m.night], store[m.month], result.measured.get(m.night)
        if got:
            times = (got["ingest"]["total_s"], got["version"]["total_s"])
            rss = max(got["ingest"]["peak_rss_mb"], got["version"]["peak_rss_mb"])
            mark = ""
        else:
            x = m.catalog_rows
            times, rss = (ingest_s(x), version_s(x)), max(ingest_mb(x), version_mb(x))
            mark = "~"
        small = st["catalog"] + st["manifests"] + st["cells"] + st["production_logs"]
        rows.append(
            [
                f"{m.month}" + (" (measured)" if got else ""),
                f"{m.catalog_rows / 1e6:.2f} M",
                f"{m.files_read:,}",
                f"{mark}{times[0]:,.0f} s",
                f"{mark}{times[1]:,.0f} s",
                f"{mark}{rss / 1024:,.1f} GB",
                f"{e.cells:,}",
                f"{e.scored / cfg.eval_img_per_s / 60:,.1f} min (cells: "
                f"{e.images / cfg.eval_img_per_s / 3600:,.1f} h)",
                f"{eval_files(e, cells_files):,}",
                f"{history_files(m.night):,}",
                f"{small / 1e9:,.0f} GB",
                f"{st['decoded'] / 1e9:,.0f} GB",
            ]
        )
    headers = [
        "month",
        "catalog rows",
        "catalog files a step reads",
        "ingest step",
        "dataset_version step",
        "peak RSS of a step",
        "eval cells tonight (last_n)",
        "GPU eval tonight: per-sample scores (a cell per cell before)",
        "files compat_evaluation reads",
        "files performance_history reads",
        "catalog + manifests + logs + scores + cells (object store)",
        "decoded pixels of the version (stored once)",
    ]
    return headers, rows


def report(result: Result, *, markdown: bool = False) -> str:
    cfg, nights = result.config, result.nights
    ev = {e.index: e for e in result.evaluation}
    out: list[str] = []
    total = sum(n.pairs for n in nights)
    measured = sorted(result.measured)
    months = sorted({nights[i - 1].month for i in measured})
    out.append(
        f"{cfg.months} months x {cfg.images_per_month:,} pairs = {total:,} pairs over "
        f"{len(nights)} nights ({START} on), {cfg.production_per_day:,} production images a day; "
        f"measured nights: {', '.join(map(str, measured))} (the last of months "
        f"{', '.join(map(str, months))}); every other night appended in bulk."
    )
    out.append(
        f"Assumed: {cfg.failure_rate:.0%} of arrivals are relabeled failures, "
        f"{cfg.quarantine_rate:.1%} are refused (quarantined), {cfg.types_start} image types "
        f"+ {cfg.types_per_month} a month, one model trained a night, champion promoted every "
        f"{cfg.promote_every} nights, {cfg.production_per_day:,} production images a day."
    )
    out.append("\nSummary at month ends (~: fitted over the measured nights, not measured):")
    out.append(_table(*summary(result), markdown))
    out.append(
        "\nCatalog, every month end (rows and files read off the store) and the matrix "
        f"(plan_cells every night; last_n={cfg.last_n} + champion and challenger on every "
        f"version, champion promoted every {cfg.promote_every} nights):"
    )
    rows = []
    for m in result.months:
        e = ev[m.night]
        rows.append(
            [
                m.month,
                m.night,
                f"{m.catalog_rows:,}",
                f"{m.sample_parts:,} + {m.quarantine_parts:,}",
                f"{m.catalog_bytes / 1e6:,.0f}",
                f"{e.cells:,} / {e.all_cells:,}",
                f"{e.cumulative:,} / {e.all_cumulative:,}",
                f"{e.images / 1e6:,.2f} / {e.all_images / 1e6:,.2f}",
                f"{e.images / cfg.eval_img_per_s / 3600:,.2f} / "
                f"{e.all_images / cfg.eval_img_per_s / 3600:,.2f}",
            ]
        )
    out.append(
        _table(
            [
                "month",
                "night",
                "catalog rows",
                "parts (samples + quarantine)",
                "catalog MB",
                "cells tonight last_n / all",
                "cells so far last_n / all",
                "test images tonight M last_n / all",
                "GPU h tonight last_n / all",
            ],
            rows,
            markdown,
        )
    )
    out.append(
        "\nMeasured nights: ingest (flows.ingest.ingest_catalog, fetch+decode replaced), seconds:"
    )
    rows = []
    for i in sorted(result.measured):
        g = result.measured[i]["ingest"]
        rows.append(
            [
                nights[i - 1].month,
                i,
                f"{g['listed_pairs']:,}",
                f"{g['skipped_already_seen']:,}",
                f"{g['new_samples']:,}+{g['quarantined']:,}",
                f"{g['catalog_read_s']:.2f}",
                f"{g['pairing_s']:.2f}",
                f"{g['seen_s']:.2f}",
                f"{g['commit_s']:.2f}",
                f"{g['reread_s']:.2f}",
                f"{g['total_s']:.2f}",
                f"{g['peak_rss_mb']:,.0f}",
                f"{g['listing_s']:.2f}",
            ]
        )
    out.append(
        _table(
            [
                "month",
                "night",
                "pairs listed",
                "already seen",
                "new+quarantined",
                "catalog read",
                "pair listing",
                "seen/known",
                "append (commit)",
                "re-read",
                "total",
                "peak RSS MB",
                "(simulated listing, excluded)",
            ],
            rows,
            markdown,
        )
    )
    out.append(
        "\nMeasured nights: dataset_version (publish_dataset_version + added_samples_sheet), "
        "seconds:"
    )
    rows = []
    for i in sorted(result.measured):
        v = result.measured[i]["version"]
        rows.append(
            [
                nights[i - 1].month,
                i,
                f"{v['manifest_rows']:,}",
                f"{v['manifest_bytes'] / 1e6:,.1f}",
                f"{v['catalog_read_s']:.2f}",
                f"{v['current_s']:.2f}",
                f"{v['build_s']:.2f}",
                f"{v['publish_s']:.2f}",
                f"{v['verify_s']:.2f}",
                f"{v['diff_s']:.2f}",
                f"{v['checks_s']:.2f}",
                f"{v['sheet_s']:.2f}",
                f"{v['total_s']:.2f}",
                f"{v['peak_rss_mb']:,.0f}",
            ]
        )
    out.append(
        _table(
            [
                "month",
                "night",
                "manifest rows",
                "manifest MB",
                "catalog read",
                "current rows",
                "build",
                "publish",
                "verified reads",
                "diff",
                "checks",
                "sheet",
                "total",
                "peak RSS MB",
            ],
            rows,
            markdown,
        )
    )
    out.append("\nMeasured nights: one production day (PredictionLog) and cell files (CellStore):")
    rows = []
    for i in sorted(result.measured):
        p, c = result.measured[i]["production"], result.measured[i]["cells"]
        rows.append(
            [
                nights[i - 1].month,
                i,
                f"{p['rows']:,}",
                p["parts"],
                f"{p['bytes'] / 1e6:.2f}",
                f"{p['append_s']:.2f}",
                f"{p['read_s']:.2f}",
                f"{c['bytes_per_cell']:,.0f}",
                f"{c['read_s_per_cell'] * 1000:.2f}",
            ]
        )
    out.append(
        _table(
            [
                "month",
                "night",
                "log rows/day",
                "parts/day",
                "log MB/day",
                "append s",
                "read day s",
                "bytes/cell",
                "read ms/cell",
            ],
            rows,
            markdown,
        )
    )
    size = ModelSpec().input_size
    out.append(
        "\nStorage, cumulative GB at month end. catalog: measured; manifests: one per night, "
        "bytes/row interpolated from the versions written; cells: last_n cells x measured "
        "bytes/cell; production logs: measured bytes/day x days; labeled pairs and production "
        f"(image + predicted mask): ASSUMED {result.sizes['image'] / 1e3:.0f} + "
        f"{result.sizes['mask'] / 1e3:.1f} kB a pair (synthetic 256² PNG/JPEG, measured); "
        f"decoded: data/decoded.py at {size}² (N x {4 * size * size:,} bytes), each row once:"
    )
    rows = [
        [
            s["month"],
            _gb(s["catalog"]),
            _gb(s["manifests"]),
            _gb(s["cells"]),
            _gb(s["production_logs"]),
            _gb(s["labeled_pairs"]),
            _gb(s["production_pixels"]),
            _gb(s["decoded"]),
        ]
        for s in storage(result)
    ]
    out.append(
        _table(
            [
                "month",
                "catalog",
                "manifests",
                "cells",
                "production logs",
                "labeled pairs",
                "production images+masks",
                "decoded caches",
            ],
            rows,
            markdown,
        )
    )
    series = derived(result)
    out.append(
        f"\nThresholds and when each is crossed ({cfg.window_share:.0%} of a "
        f"{cfg.night_hours:g} h night = {cfg.window_s:,.0f} s):"
    )
    last = nights[-1]
    crossings = []
    for s in series:
        when = crossing(s, nights)
        first = next((i for i, v in enumerate(s.values) if v >= s.threshold), None)
        crossings.append((first if first is not None else len(nights) + 1, s, when))
    rows = [
        [s.name, f"{s.threshold:,.4g} {s.unit}", f"{s.values[-1]:,.4g} {s.unit}", when, s.how]
        for _, s, when in sorted(crossings, key=lambda c: c[0])
    ]
    out.append(
        _table(
            ["quantity", "threshold", f"night {last.index}", "crosses on", "how"], rows, markdown
        )
    )
    first = min(crossings, key=lambda c: c[0])
    if first[0] <= len(nights):
        out.append(
            f"\nFirst bottleneck: {first[1].name}, crossing {first[1].threshold:,.4g} "
            f"{first[1].unit} on {first[2]}."
        )
    else:
        out.append("\nNo threshold is crossed within the simulated months.")
    if result.notes:
        out.append("Consistency checks FAILED: " + "; ".join(result.notes))
    else:
        out.append(
            "Consistency checks passed: measured catalog rows and test rows match the "
            "simulation; the all-pairs closed form matches plan_cells(last_n=None)."
        )
    out.append(f"Run time: {result.wall_s:,.0f} s.")
    return "\n".join(out)


def main() -> None:
    args = _parse()
    if args.child:
        _child(args.child)
        return
    config = Config(
        months=args.months,
        images_per_month=args.images_per_month,
        measure_months=tuple(args.measure_months),
        last_n=args.last_n,
        promote_every=args.promote_every,
        production_per_day=args.production_per_day,
        night_hours=args.night_hours,
        window_share=args.window_share,
        small_files=args.small_files,
        memory_gb=args.memory_gb,
        disk_tb=args.disk_tb,
        request_ms=args.request_ms,
        eval_img_per_s=args.eval_img_per_s,
        seed=args.seed,
        max_step_gb=args.max_step_gb,
        isolate=not args.in_process,
    )
    if args.load:
        result = pickle.loads(args.load.read_bytes())
    else:
        result = simulate(config)
        result.command = "python -m bench.scale " + " ".join(sys.argv[1:])
    if args.save:
        args.save.write_bytes(pickle.dumps(result))
    print(report(result, markdown=args.markdown))
    print(f"Command: {result.command or '(not recorded)'}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Config()
    parser.add_argument("--months", type=int, default=d.months)
    parser.add_argument("--images-per-month", type=int, default=d.images_per_month)
    parser.add_argument(
        "--measure-months",
        type=int,
        nargs="+",
        default=list(d.measure_months),
        help="months whose last night runs the real steps (others: bulk rows)",
    )
    parser.add_argument(
        "--last-n", type=int, default=d.last_n, help="EvaluationOptions.last_n (code default: all)"
    )
    parser.add_argument(
        "--promote-every",
        type=int,
        default=d.promote_every,
        help="assumed: the gate promotes the challenger every N nights",
    )
    parser.add_argument(
        "--production-per-day",
        type=int,
        default=d.production_per_day,
        help="assumed production images a day",
    )
    parser.add_argument("--night-hours", type=float, default=d.night_hours)
    parser.add_argument("--window-share", type=float, default=d.window_share)
    parser.add_argument("--small-files", type=int, default=d.small_files)
    parser.add_argument("--memory-gb", type=float, default=d.memory_gb)
    parser.add_argument("--disk-tb", type=float, default=d.disk_tb)
    parser.add_argument(
        "--request-ms",
        type=float,
        default=d.request_ms,
        help="assumed latency of one S3 request (bench/ingest.py uses 20 ms)",
    )
    parser.add_argument("--eval-img-per-s", type=float, default=d.eval_img_per_s)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--max-step-gb",
        type=float,
        default=d.max_step_gb,
        help="skip measuring a night whose step is predicted to need more memory (shared machine)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run measured steps in this process (peak RSS is then shared)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--save", type=Path, help="also write the results (pickle) here")
    parser.add_argument("--load", type=Path, help="print the report of results saved earlier")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
