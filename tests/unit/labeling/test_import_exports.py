"""`maskfind review import`: CVAT "COCO 1.0" and "Segmentation mask 1.1" exports and Label
Studio's JSON export of a review queue become failure samples with the image's tags, and the
next dataset version holds them; broken or partial exports are refused whole; nothing twice."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskfind_pipeline.cli import main
from maskfind_pipeline.data.production import encode_mask
from maskfind_pipeline.flows.labeling import import_export
from maskfind_pipeline.labeling.exports import ExportError
from maskfind_pipeline.labeling.label_studio import brush_result
from maskfind_pipeline.labeling.returns import Ledger
from maskfind_pipeline.storage import LocalObjectStore
from maskfind_pipeline.storage.s3 import StoreUnavailable
from tests.support.labeling import (
    TAGS,
    QueuedImage,
    next_dataset_version,
    production_day_with_queue,
)

PRODUCT_RGB = (250, 50, 83)


@pytest.fixture
def day(tmp_path: Path) -> tuple[LocalObjectStore, LocalObjectStore, list[QueuedImage]]:
    data, work = LocalObjectStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    return data, work, production_day_with_queue(data, work)


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE (column-major, starting with background), as CVAT writes it."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def _cvat_coco(images: list[QueuedImage], path: Path, *, polygon_for: int | None = None) -> Path:
    """A CVAT "COCO 1.0" export zip: the first image as a mask, `polygon_for` as a polygon,
    the last without any shape."""
    document: dict = {"licenses": [], "info": {}, "categories": [], "images": [], "annotations": []}
    document["categories"] = [{"id": 1, "name": "product", "supercategory": ""}]
    for number, image in enumerate(images, start=1):
        h, w = image.truth.shape
        document["images"].append(
            {"id": number, "width": w, "height": h, "file_name": f"{image.image_id}.png"}
        )
        if number == len(images):
            continue
        segmentation: object = {"counts": _uncompressed_rle(image.truth), "size": [h, w]}
        if number - 1 == polygon_for:
            segmentation = [[2.0, 1.0, w - 3.0, 1.0, w - 3.0, h - 2.0, 2.0, h - 2.0]]
        document["annotations"].append(
            {
                "id": number,
                "image_id": number,
                "category_id": 1,
                "segmentation": segmentation,
                "iscrowd": 0 if isinstance(segmentation, list) else 1,
                "attributes": {"occluded": False},
            }
        )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(document))
    return path


def _cvat_masks(images: list[QueuedImage], path: Path, *, leave_out: str | None = None) -> Path:
    """A CVAT "Segmentation mask 1.1" export zip of the images with their true masks."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "labelmap.txt",
            "# label:color_rgb:parts:actions\nbackground:0,0,0::\nproduct:250,50,83::\n",
        )
        archive.writestr(
            "ImageSets/Segmentation/default.txt", "\n".join(i.image_id for i in images) + "\n"
        )
        for image in images:
            if image.image_id == leave_out:
                continue
            rgb = np.zeros((*image.truth.shape, 3), np.uint8)
            rgb[image.truth] = PRODUCT_RGB
            sink = io.BytesIO()
            Image.fromarray(rgb).save(sink, "PNG")
            archive.writestr(f"SegmentationClass/{image.image_id}.png", sink.getvalue())
    return path


def _mask(store: LocalObjectStore, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.get(f"failures/{image_id}.mask.png")))) != 0


def test_a_cvat_coco_export_becomes_failures_in_the_next_dataset_version(
    day, tmp_path: Path
) -> None:
    data, work, images = day
    export = _cvat_coco(images, tmp_path / "coco.zip", polygon_for=1)
    tool, report = import_export(
        export, data_store=data, work_store=work, run_id="i1", annotator="dana@line-3"
    )
    assert tool == "cvat-coco"
    assert report.counts() == {"empty": 1, "imported": 2}
    first, second, last = images
    np.testing.assert_array_equal(_mask(data, first.image_id), first.truth)
    polygon = _mask(data, second.image_id)  # the rectangle inside the image, as CVAT draws it
    assert polygon[5, 5] and not polygon[0, 0] and polygon.sum() >= (41 - 4) * (30 - 6)
    assert not data.exists(f"failures/{last.image_id}.png"), "an image without shape: not imported"
    assert data.get(f"failures/{first.image_id}.png") == data.get(first.image_key)

    version = next_dataset_version(data, work, tmp_path / "cache")
    assert set(version) == {first.image_id, second.image_id}
    row = version[first.image_id]
    assert row["failed_model_version"] == "4" and row["camera"] == TAGS["camera"]
    assert row["image_type"] == TAGS["image_type"] and row["station"] == TAGS["station"]
    assert row["tags"]["annotator"] == "dana@line-3"
    assert row["tags"]["annotation_id"].startswith("cvat-coco:")
    written = hashlib.sha256(data.get(f"failures/{first.image_id}.mask.png")).hexdigest()
    assert row["mask_sha256"] == written

    again = import_export(export, data_store=data, work_store=work, run_id="i2")[1]
    assert again.rows == [] and again.already_recorded == 3, "nothing is imported twice"


def test_a_cvat_segmentation_mask_export_is_pixel_identical(day, tmp_path: Path) -> None:
    data, work, images = day
    tool, report = import_export(
        _cvat_masks(images, tmp_path / "masks.zip"), data_store=data, work_store=work, run_id="m"
    )
    assert tool == "cvat-mask" and report.counts() == {"imported": 3}
    for image in images:
        np.testing.assert_array_equal(_mask(data, image.image_id), image.truth)
        tags = data.tags(f"failures/{image.image_id}.png")
        assert tags["failed_model_version"] == "4" and tags["image_type"] == TAGS["image_type"]
        assert "annotator" not in tags, "CVAT's files do not say who: no annotator is invented"


def test_a_later_export_with_another_mask_revises_the_failure(day, tmp_path: Path) -> None:
    data, work, images = day
    import_export(
        _cvat_masks(images, tmp_path / "a.zip"), data_store=data, work_store=work, run_id="a"
    )
    changed = [QueuedImage(i.image_id, i.image_key, i.predicted, i.truth.copy()) for i in images]
    changed[0].truth[0, :] = True
    report = import_export(
        _cvat_masks(changed, tmp_path / "b.zip"), data_store=data, work_store=work, run_id="b"
    )[1]
    assert report.counts() == {"revised": 1} and report.already_recorded == 2
    np.testing.assert_array_equal(_mask(data, images[0].image_id), changed[0].truth)
    ledger = Ledger(work).table().to_pylist()
    revised = [r for r in ledger if r["status"] == "revised"]
    assert revised[0]["mask_sha256"] == hashlib.sha256(encode_mask(changed[0].truth)).hexdigest()


def test_a_label_studio_json_export_records_skips_and_rejections(day, tmp_path: Path) -> None:
    data, work, images = day
    tasks = []
    for number, (image, answer) in enumerate(zip(images, ["mask", "skip", "reject"], strict=True)):
        annotation: dict = {
            "id": 10 + number,
            "completed_by": {"id": 3, "email": "ana@line-3"},
            "updated_at": f"2026-12-01T10:0{number}:00Z",
            "was_cancelled": answer == "skip",
            "result": [],
        }
        if answer == "mask":
            annotation["result"] = [brush_result(image.truth)]
        if answer == "reject":
            annotation["result"] = [{"type": "choices", "value": {"choices": ["reject"]}}]
        data_fields = {"image": f"/data/local-files/?d=data/{image.image_key}"}
        tasks.append({"id": number + 1, "data": data_fields, "annotations": [annotation]})
    export = tmp_path / "project-1-at-2026-12-01.json"
    export.write_text(json.dumps(tasks))
    tool, report = import_export(export, data_store=data, work_store=work, run_id="ls")
    assert tool == "label-studio"
    assert report.counts() == {"imported": 1, "rejected": 1, "skipped": 1}
    np.testing.assert_array_equal(_mask(data, images[0].image_id), images[0].truth)
    tags = data.tags(f"failures/{images[0].image_id}.png")
    assert tags["annotator"] == "ana@line-3" and tags["annotation_id"] == "label-studio:10"
    assert tags["reported_at"].startswith("2026-12-01T10:00:00")
    assert not data.exists(f"failures/{images[1].image_id}.png")
    assert not data.exists(f"failures/{images[2].image_id}.png")


def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda imgs, p: _truncated(_cvat_masks(imgs, p / "x.zip")), "not a zip archive"),
        (lambda imgs, p: _cvat_masks(imgs, p / "x.zip", leave_out=imgs[1].image_id), "partial"),
        (lambda imgs, p: _truncated(_write(p / "x.json", "[{}]" * 1)), "not complete JSON"),
        (lambda imgs, p: _renamed(_cvat_coco(imgs, p / "x.zip")), "in no review queue"),
        (lambda imgs, p: _resized(imgs, p), "do not fit: the mask is 41x30, the image .* is 30x41"),
        (lambda imgs, p: _write(p / "x.txt", "hello"), "not complete JSON"),
    ],
    ids=["truncated-zip", "missing-mask", "truncated-json", "unknown-image", "wrong-size", "text"],
)
def test_a_broken_or_partial_export_is_refused_and_nothing_is_written(
    day, tmp_path: Path, make, message: str
) -> None:
    data, work, images = day
    before = sorted(i.key for i in data.list())
    with pytest.raises(ExportError, match=message):
        import_export(make(images, tmp_path), data_store=data, work_store=work, run_id="x")
    assert sorted(i.key for i in data.list()) == before
    assert Ledger(work).table().num_rows == 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _renamed(path: Path) -> Path:
    with zipfile.ZipFile(path) as archive:
        document = json.loads(archive.read("annotations/instances_default.json"))
    document["images"][0]["file_name"] = "someone-else.png"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(document))
    return path


def _resized(images: list[QueuedImage], tmp_path: Path) -> Path:
    """The second image's mask transposed (30x41 instead of 41x30): a mask of another image."""
    wrong = [QueuedImage(i.image_id, i.image_key, i.predicted, i.truth) for i in images]
    wrong[1] = QueuedImage(
        wrong[1].image_id, wrong[1].image_key, wrong[1].predicted, wrong[1].truth.T
    )
    return _cvat_masks(wrong, tmp_path / "x.zip")


def test_a_file_dropped_failure_is_not_overwritten(day, tmp_path: Path) -> None:
    data, work, images = day
    data.put(f"failures/{images[0].image_id}.png", data.get(images[0].image_key), tags=TAGS)
    data.put(f"failures/{images[0].image_id}.mask.png", encode_mask(images[0].predicted))
    report = import_export(
        _cvat_masks(images, tmp_path / "m.zip"), data_store=data, work_store=work, run_id="m"
    )[1]
    assert report.counts() == {"conflict": 1, "imported": 2}
    np.testing.assert_array_equal(_mask(data, images[0].image_id), images[0].predicted)


def test_the_cli_imports_and_refuses_with_a_clear_message(
    day, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, work, images = day
    monkeypatch.setenv("MASKFIND_DATA_URI", str(data.root))
    monkeypatch.setenv("MASKFIND_WORK_URI", str(work.root))
    runner = CliRunner()
    good = _cvat_masks(images, tmp_path / "good.zip")
    result = runner.invoke(main, ["review", "import", str(good), "--annotator", "kim"])
    assert result.exit_code == 0, result.output
    assert "cvat-mask export" in result.output and "imported 3" in result.output
    again = runner.invoke(main, ["review", "import", str(good)])
    assert "nothing new; 3 already recorded" in again.output
    bad = _truncated(_cvat_masks(images, tmp_path / "bad.zip"))
    refused = runner.invoke(main, ["review", "import", str(bad)])
    assert refused.exit_code == 1 and "refused, nothing imported" in refused.output


class _RefusingStore(LocalObjectStore):
    """A store that refuses to write failure images while `down` (an outage, or S3 refusing
    an 11th tag)."""

    down = True

    def put(self, key: str, data: bytes, **kwargs) -> None:  # type: ignore[override]
        if self.down and key.startswith("failures/") and not key.endswith(".mask.png"):
            raise StoreUnavailable(f"{key}: S3 error InvalidTag")
        super().put(key, data, **kwargs)


def test_a_write_the_store_refuses_is_recorded_and_tried_again(tmp_path: Path) -> None:
    data, work = _RefusingStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    images = production_day_with_queue(data, work, sizes=((21, 17),))
    export = _cvat_masks(images, tmp_path / "m.zip")
    first = import_export(export, data_store=data, work_store=work, run_id="a")[1]
    assert first.counts() == {"failed": 1} and "InvalidTag" in str(first.rows[0]["reason"])
    assert not data.exists(f"failures/{images[0].image_id}.png")
    data.down = False
    second = import_export(export, data_store=data, work_store=work, run_id="b")[1]
    assert second.counts() == {"imported": 1}, "a failed write is tried again"
    np.testing.assert_array_equal(_mask(data, images[0].image_id), images[0].truth)
