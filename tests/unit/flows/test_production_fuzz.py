"""Fuzzing a production day as ingest is fuzzed: hypothesis writes a day's folder in a local data
store (names that are long, not UTF-8 or share an id; image bytes that are valid, cut, flipped,
empty or claim a huge size; tags sidecars that are fine, missing, malformed, nested or huge;
symlinks out of the root, dangling or within it) and predicts it.

Whatever the folder holds: the day completes; every listed object gets exactly one row, `ok`
with its own mask or `failed` with a reason; nothing outside the data and work roots is read or
written; a second run redoes only what was marked retryable.

Each test runs twice: a small budget in `make test` and a long one behind `slow`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskfind_pipeline.data.production import PredictionLog, identity, list_day
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.backends.runtimes import TorchBackend
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.serving.day import ProductionModels, predict_day
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.fswrites import record_reads, record_writes
from tests.support.models import TINY, tiny_weights

BUDGET = [
    pytest.param(12, id="quick"),
    pytest.param(400, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
]
DAY = "2026-11-30"
FOLDER = f"production/{DAY}/".encode()
OPTIONS = ProductionOptions(
    batch_size=3, io_workers=2, commit_every=4, max_pixels=64 * 64, max_image_bytes=200_000
)


@cache
def _models() -> ProductionModels:
    predictor = Predictor.from_weights(TINY, tiny_weights(seed=3), version="7")
    return ProductionModels(
        "7", predictor.config, TorchBackend("torch_fp32", predictor).predict, "torch_fp32"
    )


@cache
def _images() -> dict[str, bytes]:
    """Small valid images by extension, and a PNG that claims 20000 x 20000 in its header."""
    out = {}
    for ext, fmt in (("png", "PNG"), ("jpg", "JPEG")):
        sink = io.BytesIO()
        Image.new("RGB", (24, 16), (120, 60, 30)).save(sink, fmt)
        out[ext] = sink.getvalue()
    huge = bytearray(out["png"])
    huge[16:24] = (20_000).to_bytes(4, "big") * 2  # IHDR width and height (CRC now wrong)
    out["huge"] = bytes(huge) + b"\0" * 70_000  # past the header read: refused unfetched
    return out


_STEM = st.one_of(
    st.sampled_from([b"a", b"twin", b"img-001"]),  # collide across extensions
    st.binary(min_size=1, max_size=12),  # not UTF-8, mostly
    st.text(min_size=1, max_size=10).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(238, 252).map(lambda n: b"l" * n),  # the mask key passes 255 bytes
)
_EXT = st.sampled_from([b".png", b".jpg", b".jpeg", b".PNG", b".gif", b"", b".mask.png"])


@st.composite
def _content(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["png", "jpg", "cut", "flip", "empty", "huge", "noise"]))
    base = _images()["png" if kind in ("png", "cut", "flip") else "jpg"]
    if kind in ("png", "jpg"):
        return base
    if kind == "cut":
        return base[: draw(st.integers(1, len(base) - 1))]
    if kind == "flip":
        at = draw(st.integers(0, len(base) - 1))
        return base[:at] + bytes([base[at] ^ draw(st.integers(1, 255))]) + base[at + 1 :]
    if kind == "huge":
        return _images()["huge"]
    return b"" if kind == "empty" else draw(st.binary(max_size=64))


_GOOD_TAGS = b'{"image_type": "cam-a", "camera": "c1"}'
_TAGS = st.one_of(
    st.just(_GOOD_TAGS),
    st.none(),
    st.sampled_from(
        [
            b'{"image_type": "cam-a", "camera": "c',  # cut off
            b'{"image_type": "cam-\xff"}',  # not UTF-8
            b"[" * 50_000 + b"]" * 50_000,  # nested past the recursion limit
            b'{"image_type": "cam-a", "n": "' + b"x" * 70_000 + b'"}',  # past the size cap
            b'{"image_type": 3}',
            b'{"image_type": "bad type!"}',
            b"null",
        ]
    ),
    st.binary(max_size=40),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3).map(
        lambda d: json.dumps({"image_type": "cam-a", **d}).encode()
    ),
)


@st.composite
def days(draw: st.DrawFn) -> list[tuple[str, bytes, bytes, bytes | None]]:
    """(kind, name, content or link target, tags sidecar) of each entry of the day's folder;
    kind `file`, `link-out` (to a file outside the root), `link-dangling` or `link-in`."""
    entries = []
    for _ in range(draw(st.integers(1, 7))):
        name = draw(_STEM) + draw(_EXT)
        kind = draw(st.sampled_from(["file"] * 6 + ["link-out", "link-dangling", "link-in"]))
        entries.append((kind, name, draw(_content()), draw(_TAGS)))
    return entries


def _write_day(root: Path, outside: Path, entries: list[tuple[str, bytes, bytes, bytes | None]]):  # type: ignore[no-untyped-def]
    """Write the entries under `root` byte for byte; skip what the filesystem cannot hold."""
    folder = os.path.join(os.fsencode(root), FOLDER)
    os.makedirs(folder, exist_ok=True)
    (outside / "secret.png").write_bytes(_images()["png"])
    (outside / "secret.tags.json").write_bytes(_GOOD_TAGS)
    for kind, name, content, tags in entries:
        path = os.path.join(folder, name)
        if name in (b".", b"..") or b"/" in name or b"\0" in name or name.startswith(b".tmp-"):
            continue
        try:
            if kind == "file":
                with open(path, "wb") as f:
                    f.write(content)
            elif kind == "link-out":
                os.symlink(os.fsencode(outside / "secret.png"), path)
            elif kind == "link-dangling":
                os.symlink(os.fsencode(outside / "gone.png"), path)
            else:
                with open(os.path.join(folder, b"target-" + name[:40]), "wb") as f:
                    f.write(content)
                os.symlink(b"target-" + name[:40], path)
            if tags is not None and not name.endswith(b".tags.json"):
                stem = name.rpartition(b".")[0] or name
                with open(os.path.join(folder, stem + b".tags.json"), "wb") as f:
                    f.write(tags)
        except OSError:  # a name too long, or one that is already there
            continue


@pytest.mark.parametrize("examples", BUDGET)
def test_a_fuzzed_day_completes_with_one_row_per_object_inside_its_roots(examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(entries=days())
    @example(
        entries=[
            ("file", b"twin.png", _images()["png"], _GOOD_TAGS),
            ("file", b"twin.jpg", _images()["jpg"], _GOOD_TAGS),
            ("file", b"caf\xe9.png", _images()["png"], _GOOD_TAGS),
            ("link-out", b"escape.png", b"", None),
            ("file", b"big.png", _images()["huge"], _GOOD_TAGS),
        ]
    )
    def check(entries: list[tuple[str, bytes, bytes, bytes | None]]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root, outside, work_root = Path(tmp, "data"), Path(tmp, "outside"), Path(tmp, "work")
            outside.mkdir()
            _write_day(root, outside, entries)
            data, work = LocalObjectStore(root), LocalObjectStore(work_root)
            listing = list_day(data, DAY)
            listed = {identity(i)[0] for i in listing.images + [i for i, _ in listing.unsupported]}
            with record_reads() as reads, record_writes() as writes:
                outcome = predict_day(
                    DAY, _models(), data_store=data, work_store=work, options=OPTIONS, run_id="r1"
                )
            rows = PredictionLog(work, DAY).read().to_pylist()
            assert Counter(r["image_key"] for r in rows) == Counter(listed), (rows, listed)
            assert len(outcome.rows) == len(rows)
            ok = [r for r in rows if r["status"] == "ok"]
            assert all(r["status"] == "failed" and r["reason"] for r in rows if r not in ok)
            assert len({r["mask_key"] for r in ok}) == len(ok)  # no two images share a mask
            for row in ok:
                with Image.open(io.BytesIO(data.get(str(row["mask_key"])))) as mask:
                    assert mask.size == (row["width"], row["height"])
            assert not reads.outside(root, work_root), reads.outside(root, work_root)
            assert not writes.outside(root, work_root), writes.outside(root, work_root)

            retryable = {r["image_key"] for r in rows if r["retryable"]}
            again = predict_day(
                DAY, _models(), data_store=data, work_store=work, options=OPTIONS, run_id="r2"
            )
            assert {r["image_key"] for r in again.rows} == retryable

    check()
