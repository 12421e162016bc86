"""Poison pills: one bad file beside good ones never stops a production day, on any retry.

Each bad file gets one `failed` row with its reason; the good images beside it get their masks
and `ok` rows; a second run finds nothing left to do (or only what may succeed later).
"""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.production import PredictionLog, list_day
from maskfind_pipeline.flows.options import ProductionOptions
from maskfind_pipeline.ml.backends.runtimes import TorchBackend
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.serving.day import ProductionModels, predict_day
from maskfind_pipeline.storage import LocalObjectStore
from maskfind_pipeline.storage.keys import MAX_SEGMENT_BYTES
from maskfind_pipeline.storage.s3 import StoreUnavailable
from tests.support.fswrites import record_reads
from tests.support.models import TINY, tiny_weights

DAY = dt.date(2026, 11, 30)
DAY_PREFIX = f"production/{DAY.isoformat()}/"
GOOD = 3
OPTIONS = ProductionOptions(batch_size=2, io_workers=2, commit_every=3)


@pytest.fixture(scope="module")
def models() -> ProductionModels:
    predictor = Predictor.from_weights(TINY, tiny_weights(seed=3), version="7")
    return ProductionModels(
        champion_version="7",
        config=predictor.config,
        predict=TorchBackend("torch_fp32", predictor).predict,
        backend="torch_fp32",
    )


@pytest.fixture
def data(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "data")
    synthetic.generate_production(store, synthetic.DEFAULT_TYPES[:1], GOOD, day=DAY, size=32)
    return store


def png(width: int = 24, height: int = 16) -> bytes:
    sink = io.BytesIO()
    Image.new("RGB", (width, height), (90, 160, 30)).save(sink, "PNG")
    return sink.getvalue()


def jpeg(width: int = 24, height: int = 16) -> bytes:
    sink = io.BytesIO()
    Image.new("RGB", (width, height), (30, 60, 200)).save(sink, "JPEG")
    return sink.getvalue()


def run_day(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path, run_id: str = "r1"
) -> dict[str, dict[str, object]]:
    """Predict the day; the log's current rows by image file name."""
    work = LocalObjectStore(tmp_path / "work")
    predict_day(
        DAY.isoformat(), models, data_store=data, work_store=work, options=OPTIONS, run_id=run_id
    )
    rows = PredictionLog(work, DAY.isoformat()).current().to_pylist()
    return {str(r["image_key"]).removeprefix(DAY_PREFIX): r for r in rows}


def assert_good_ones_ok(rows: dict[str, dict[str, object]]) -> None:
    ok = [name for name, row in rows.items() if row["status"] == "ok"]
    assert len(ok) >= GOOD, rows


def write_sidecar(data: LocalObjectStore, name: str, content: bytes) -> None:
    data.put(DAY_PREFIX + name, png())
    (data.root / DAY_PREFIX / name).with_suffix(".tags.json").write_bytes(content)


SIDECARS = {
    "cut_off": b'{"image_type": "cam-a", "camera": "c',
    "not_utf8": b'{"image_type": "cam-\xff\xfe"}',
    "nested": b"[" * 30_000 + b"]" * 30_000,  # under the size cap: refused for its depth
    "huge": b'{"image_type": "cam-a", "note": "' + b"x" * 5_000_000 + b'"}',
    "not_an_object": b'["image_type", "cam-a"]',
    "not_strings": b'{"image_type": 3}',
}


@pytest.mark.parametrize("kind", sorted(SIDECARS))
def test_a_bad_tags_sidecar_fails_only_its_image(
    kind: str, models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    write_sidecar(data, "bad.png", SIDECARS[kind])
    rows = run_day(models, data, tmp_path)
    assert len(rows) == GOOD + 1
    assert rows["bad.png"]["status"] == "failed"
    assert "tags" in str(rows["bad.png"]["reason"]), rows["bad.png"]["reason"]
    assert_good_ones_ok(rows)


def test_a_name_whose_mask_key_passes_the_segment_limit_fails_with_a_reason(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    # The image's key and its tags sidecar's are valid, its mask's (`<name>.mask.png`) is not.
    stem = "l" * (MAX_SEGMENT_BYTES - len(".tags.json") - 1)
    data.put(DAY_PREFIX + stem + ".jpg", jpeg(), tags={"image_type": "cam-a"})
    rows = run_day(models, data, tmp_path)
    assert len(rows) == GOOD + 1
    row = rows[stem + ".jpg"]
    assert row["status"] == "failed" and "mask key" in str(row["reason"]), row["reason"]
    assert_good_ones_ok(rows)
    again = run_day(models, data, tmp_path, run_id="r2")
    assert again == rows  # failed for good: nothing redone


def test_a_local_file_name_that_is_not_utf8_fails_with_a_reason(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    folder = os.fsencode(data.root / DAY_PREFIX)
    with open(folder + b"/caf\xe9.png", "wb") as f:  # Latin-1 "café"
        f.write(png())
    rows = run_day(models, data, tmp_path)
    assert len(rows) == GOOD + 1
    (name,) = [n for n in rows if n.startswith("caf")]
    assert rows[name]["status"] == "failed" and "UTF-8" in str(rows[name]["reason"])
    assert_good_ones_ok(rows)
    assert run_day(models, data, tmp_path, run_id="r2") == rows


def test_an_extension_that_is_not_utf8_fails_with_a_printable_reason(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    """Found by the fuzz test: the reason quoted the extension's undecodable byte, which no
    Parquet column can hold, and the whole day failed to log."""
    folder = os.fsencode(data.root / DAY_PREFIX)
    with open(folder + b"/\x01.\x80", "wb") as f:
        f.write(png())
    rows = run_day(models, data, tmp_path)
    assert len(rows) == GOOD + 1
    (name,) = [n for n in rows if n.startswith("\x01")]
    assert rows[name]["status"] == "failed"
    # escaped as the key is (`storage.keys.printable_key`: the surrogate of byte 0x80)
    assert str(rows[name]["reason"]) == "unsupported image extension .\\udc80"
    assert_good_ones_ok(rows)


def test_one_id_with_two_extensions_is_two_images_two_masks_two_rows(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    data.put(DAY_PREFIX + "twin.png", png(24, 16), tags={"image_type": "cam-a"})
    data.put(DAY_PREFIX + "twin.jpg", jpeg(40, 10), tags={"image_type": "cam-a"})
    rows = run_day(models, data, tmp_path)
    twins = [rows["twin.png"], rows["twin.jpg"]]
    assert [r["status"] for r in twins] == ["ok", "ok"]
    keys = {str(r["mask_key"]) for r in twins}
    assert len(keys) == 2
    sizes = {Image.open(io.BytesIO(data.get(str(r["mask_key"])))).size for r in twins}
    assert sizes == {(24, 16), (40, 10)}  # each mask is its own image's


def test_symlinks_out_of_the_root_and_dangling_ones_fail_without_reading_outside(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(png())
    (tmp_path / "secret.tags.json").write_text('{"image_type": "cam-a"}')
    folder = data.root / DAY_PREFIX
    (folder / "escape.png").symlink_to(outside)
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    with record_reads() as reads:
        rows = run_day(models, data, tmp_path)
    assert reads.paths, "it recorded the day's reads"
    assert not reads.outside(data.root, tmp_path / "work"), reads.outside(data.root)
    assert rows["escape.png"]["status"] == "failed", rows["escape.png"]
    assert "outside" in str(rows["escape.png"]["reason"])
    if "dangling.png" in rows:  # listed with a reason, or skipped
        assert rows["dangling.png"]["status"] == "failed"
    assert_good_ones_ok(rows)


def test_a_file_renamed_away_during_the_listing_is_skipped(
    data: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = data.root / DAY_PREFIX
    real_walk = os.walk

    def walk_then_rename(top, *args, **kwargs):  # type: ignore[no-untyped-def]
        for entry in real_walk(top, *args, **kwargs):
            for name in entry[2]:
                if not name.endswith(".tags.json") and Path(entry[0]) == folder:
                    os.rename(folder / name, folder.parent / f"moved-{name}")
                    break
            yield entry

    monkeypatch.setattr(os, "walk", walk_then_rename)
    listing = list_day(data, DAY.isoformat())
    assert len(listing.images) == GOOD - 1


def test_a_half_uploaded_file_is_retried_once_complete(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    data.put(DAY_PREFIX + "late.png", b"", tags={"image_type": "cam-a"})
    first = run_day(models, data, tmp_path)
    assert first["late.png"]["status"] == "failed" and not first["late.png"]["retryable"]
    data.put(DAY_PREFIX + "late.png", png(), tags={"image_type": "cam-a"})
    second = run_day(models, data, tmp_path, run_id="r2")
    assert second["late.png"]["status"] == "ok"
    assert second["late.png"]["image_etag"] != first["late.png"]["image_etag"]


def test_a_store_outage_leaves_retryable_rows_that_the_next_run_retries(
    models: ProductionModels, data: LocalObjectStore, tmp_path: Path
) -> None:
    class Outage(LocalObjectStore):
        def get(self, key: str, *, if_match: str | None = None) -> bytes:
            raise StoreUnavailable(f"{key}: S3 error 503 SlowDown")

    first = run_day(models, Outage(data.root), tmp_path)
    assert {r["status"] for r in first.values()} == {"failed"}
    assert all(r["retryable"] and "503" in str(r["reason"]) for r in first.values())
    second = run_day(models, data, tmp_path, run_id="r2")
    assert {r["status"] for r in second.values()} == {"ok"} and len(second) == GOOD
