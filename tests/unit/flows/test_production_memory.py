"""Memory on a production day is bounded by configuration, whatever the day holds: huge files
are refused by their size or header before they are fetched, and the pixels being decoded and
the masks waiting to be written each stay within their budget."""

from __future__ import annotations

import datetime as dt
import struct
import threading
import zlib
from pathlib import Path

import pytest

import maskfind_pipeline.serving.day as production
from maskfind_pipeline import synthetic
from maskfind_pipeline.data.production import PredictionLog
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.backends.runtimes import TorchBackend
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.serving.day import ProductionModels, predict_day
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY, tiny_weights

DAY = dt.date(2026, 11, 30)
DAY_PREFIX = f"production/{DAY.isoformat()}/"


class CountingStore(LocalObjectStore):
    """A local store that remembers which keys were fetched whole."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fetched: list[str] = []

    def get(self, key: str, *, if_match: str | None = None) -> bytes:
        self.fetched.append(key)
        return super().get(key, if_match=if_match)


@pytest.fixture(scope="module")
def models() -> ProductionModels:
    predictor = Predictor.from_weights(TINY, tiny_weights(seed=3), version="7")
    return ProductionModels(
        "7", predictor.config, TorchBackend("torch_fp32", predictor).predict, "torch_fp32"
    )


def png_header(width: int, height: int, size: int) -> bytes:
    """A PNG that says `width` x `height` in its header, padded to `size` bytes by a text
    chunk (its pixel data is cut short: nothing may get far enough to notice)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    head = b"\x89PNG\r\n\x1a\n" + ihdr
    return head + chunk(b"tEXt", b"pad\0" + b"x" * (size - len(head) - 16))


def jpeg_header(width: int, height: int, size: int) -> bytes:
    """A JPEG whose frame header says `width` x `height`, after 8 kB of metadata."""
    app1 = b"\xff\xe1" + struct.pack(">H", 8002) + b"\0" * 8000
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
    sof += b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    head = b"\xff\xd8" + app1 + sof + sos
    return head + b"\0" * (size - len(head))


def day_rows(work: LocalObjectStore) -> dict[str, dict[str, object]]:
    rows = PredictionLog(work, DAY.isoformat()).current().to_pylist()
    return {str(r["image_key"]).removeprefix(DAY_PREFIX): r for r in rows}


def test_a_20000_by_20000_file_is_refused_before_it_is_fetched(
    models: ProductionModels, tmp_path: Path
) -> None:
    data, work = CountingStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    synthetic.generate_production(data, synthetic.DEFAULT_TYPES[:1], 2, day=DAY, size=32)
    tags = {"image_type": "cam-a"}
    data.put(DAY_PREFIX + "huge.png", png_header(20_000, 20_000, 75_000), tags=tags)
    data.put(DAY_PREFIX + "huge.jpg", jpeg_header(20_000, 20_000, 75_000), tags=tags)
    data.put(DAY_PREFIX + "past-limit.png", png_header(8_000, 6_000, 70_000), tags=tags)
    data.put(DAY_PREFIX + "heavy.png", png_header(100, 100, 90_000), tags=tags)
    options = ProductionOptions(batch_size=2, io_workers=2, max_image_bytes=80_000)
    predict_day(
        DAY.isoformat(), models, data_store=data, work_store=work, options=options, run_id="r1"
    )
    rows = day_rows(work)
    refused = ["huge.png", "huge.jpg", "past-limit.png", "heavy.png"]
    assert all(rows[name]["status"] == "failed" for name in refused), rows
    assert "decompression bomb" in str(rows["huge.png"]["reason"])
    assert "decompression bomb" in str(rows["huge.jpg"]["reason"])
    assert "exceeds 40000000 pixels" in str(rows["past-limit.png"]["reason"])
    assert "max_image_bytes" in str(rows["heavy.png"]["reason"])
    assert not {k for k in data.fetched if k.removeprefix(DAY_PREFIX) in refused}
    assert sum(r["status"] == "ok" for r in rows.values()) == 2


def test_decoding_and_unwritten_masks_stay_within_their_pixel_budgets(
    models: ProductionModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, work = LocalObjectStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    synthetic.generate_production(data, synthetic.DEFAULT_TYPES[:2], 6, day=DAY, size=64)
    pixels = 64 * 64
    decoding, writing = _Peak(), _Peak()
    real_decode, real_encode = production.decode_image, production.encode_mask

    def decode(*args, **kwargs):  # type: ignore[no-untyped-def]
        with decoding.held(pixels):
            return real_decode(*args, **kwargs)

    def encode(mask):  # type: ignore[no-untyped-def]
        with writing.held(mask.size):
            return real_encode(mask)

    monkeypatch.setattr(production, "decode_image", decode)
    monkeypatch.setattr(production, "encode_mask", encode)
    options = ProductionOptions(
        batch_size=4,
        io_workers=4,
        max_decoding_pixels=2 * pixels,
        max_unwritten_mask_pixels=pixels,
    )
    outcome = predict_day(
        DAY.isoformat(), models, data_store=data, work_store=work, options=options, run_id="r1"
    )
    assert len(outcome.rows) == 12 and all(r["status"] == "ok" for r in outcome.rows)
    assert decoding.peak == 2 * pixels  # two at once: the budget, not the four threads
    assert writing.peak == pixels


class _Peak:
    """The most units held at once by all threads."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def held(self, units: int) -> _Held:
        return _Held(self, units)


class _Held:
    def __init__(self, peak: _Peak, units: int) -> None:
        self.peak, self.units = peak, units

    def __enter__(self) -> None:
        with self.peak._lock:
            self.peak.now += self.units
            self.peak.peak = max(self.peak.peak, self.peak.now)
        threading.Event().wait(0.02)  # long enough for the other threads to pile up

    def __exit__(self, *exc: object) -> None:
        with self.peak._lock:
            self.peak.now -= self.units
