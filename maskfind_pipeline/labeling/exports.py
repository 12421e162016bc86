"""Reading what a labeling tool exported: Label Studio's JSON, CVAT's "COCO 1.0" and CVAT's
"Segmentation mask 1.1", each into `Returned` answers.

A file (or an unpacked export folder) is read whole and checked before anything is written: a
truncated archive or JSON, an annotation of an unknown image, a mask of the wrong size, a
missing mask file, an undecodable RLE: each refuses the whole export with `ExportError`, which
names the part at fault.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from maskfind_pipeline.labeling import brush
from maskfind_pipeline.labeling.returns import EMPTY, LABELED, REJECTED, SKIPPED, Returned

LABEL_STUDIO, CVAT_COCO, CVAT_MASK = "label-studio", "cvat-coco", "cvat-mask"
PRODUCT = "product"
"""The label (brush label, COCO category, CVAT label) of the product."""
REJECT = "reject"
"""The choice that marks an image as unusable (Label Studio's `verdict` control)."""


class ExportError(ValueError):
    """An export that cannot be read whole; nothing of it is imported."""


def read_export(path: str | Path) -> tuple[str, list[Returned]]:
    """The tool and the answers of an export file or folder (format recognised by content).

    Raises:
        ExportError: unreadable, partial or not one of the three formats.
    """
    files = _Files.open(Path(path))
    if files.has("labelmap.txt"):
        return CVAT_MASK, read_cvat_masks(files)
    names = [n for n in files.names() if n.endswith(".json")]
    if len(names) == 1 or files.single_json:
        document = files.json(names[0] if names else "")
        if isinstance(document, list):
            return LABEL_STUDIO, read_label_studio(document)
        if isinstance(document, dict) and {"images", "annotations", "categories"} <= set(document):
            return CVAT_COCO, read_cvat_coco(document)
    coco = [n for n in names if PurePosixPath(n).name.startswith("instances_")]
    if len(coco) == 1:
        return CVAT_COCO, read_cvat_coco(files.json(coco[0]))
    raise ExportError(
        f"{path}: not a Label Studio JSON export, a CVAT COCO 1.0 export (annotations/"
        "instances_*.json) or a CVAT Segmentation mask 1.1 export (labelmap.txt)"
    )


def read_label_studio(
    tasks: list[Any], annotator: Callable[[object], str | None] | None = None
) -> list[Returned]:
    """Every annotation of a Label Studio JSON export (or of the export API): a corrected brush
    mask, a skip (`was_cancelled`), a rejection (the `reject` choice) or an empty answer.
    `annotator` turns `completed_by` into a name (default: its email, else `user-<id>`)."""
    name = annotator or _completed_by
    out = []
    for task in tasks:
        if not isinstance(task, dict) or not isinstance(task.get("annotations"), list):
            raise ExportError(f"not a Label Studio task (no annotations list): {str(task)[:80]}")
        data = task.get("data") or {}
        image_id, image_key = _task_image(task)
        for annotation in task["annotations"]:
            revision = f"{annotation.get('id')}@{annotation.get('updated_at')}"
            common = {
                "tool": LABEL_STUDIO,
                "image_id": image_id,
                "revision": revision,
                "annotation_id": f"{LABEL_STUDIO}:{annotation.get('id')}",
                "annotator": name(annotation.get("completed_by")),
                "annotated_at": _time(annotation.get("updated_at")),
                "image_key": image_key,
                "model_version": _text(data.get("model_version")),
            }
            if annotation.get("was_cancelled"):
                out.append(Returned(status=SKIPPED, reason="skipped in Label Studio", **common))
                continue
            results = annotation.get("result") or []
            if any(REJECT in (r.get("value", {}).get("choices") or []) for r in results):
                out.append(Returned(status=REJECTED, reason="rejected: unusable", **common))
                continue
            mask = _brush_mask(results, f"task {task.get('id')} annotation {annotation.get('id')}")
            if mask is None or not mask.any():
                out.append(Returned(status=EMPTY, reason="no brush mask drawn", **common))
            else:
                out.append(Returned(status=LABELED, mask=mask, **common))
    return out


def read_cvat_coco(document: Mapping[str, Any]) -> list[Returned]:
    """One answer per image of a CVAT "COCO 1.0" export: the union of its product shapes
    (polygons or RLE masks); an image without one is an empty answer."""
    try:
        images = {int(i["id"]): i for i in document["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in document["categories"]}
        product = _product_ids(categories)
        masks = {
            i: np.zeros((int(im["height"]), int(im["width"])), bool) for i, im in images.items()
        }
        for annotation in document["annotations"]:
            image_id = int(annotation["image_id"])
            if image_id not in images:
                raise ExportError(f"annotation {annotation.get('id')} names no listed image")
            if int(annotation["category_id"]) not in product:
                continue
            masks[image_id] |= _coco_shape(annotation, masks[image_id].shape)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"not a well-formed COCO file: {type(exc).__name__}: {exc}") from exc
    return [_file_answer(CVAT_COCO, images[i]["file_name"], m) for i, m in masks.items()]


def read_cvat_masks(files: _Files) -> list[Returned]:
    """One answer per listed item of a CVAT "Segmentation mask 1.1" export: the pixels of its
    class mask coloured as the product label."""
    colours = _labelmap(files.text("labelmap.txt"))
    product = _product_colours(colours)
    items = []
    for name in files.names():
        if name.startswith("ImageSets/Segmentation/") and name.endswith(".txt"):
            items += [line.strip() for line in files.text(name).splitlines() if line.strip()]
    if not items:
        raise ExportError("no item listed under ImageSets/Segmentation/*.txt")
    out = []
    for item in items:
        key = f"SegmentationClass/{item}.png"
        if not files.has(key):
            raise ExportError(f"{key} is missing: a partial export")
        try:
            with Image.open(io.BytesIO(files.read(key))) as image:
                rgb = np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise ExportError(f"{key} is not a readable PNG: {exc}") from exc
        mask = np.zeros(rgb.shape[:2], bool)
        for colour in product:
            mask |= (rgb == np.asarray(colour, dtype=np.uint8)).all(axis=2)
        out.append(_file_answer(CVAT_MASK, item, mask))
    return out


def image_id_of(name: str) -> str:
    """`production/2026-12-04/abc.png` or `abc.png` or `abc` -> `abc`."""
    base = PurePosixPath(name).name
    return base.rsplit(".", 1)[0] if "." in base else base


def _file_answer(tool: str, name: str, mask: np.ndarray) -> Returned:
    image_id = image_id_of(str(name))
    if not mask.any():
        return Returned(tool, image_id, EMPTY, f"empty:{image_id}", reason="no product shape")
    digest = hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()
    return Returned(
        tool, image_id, LABELED, digest, mask=mask, annotation_id=f"{tool}:{digest[:12]}"
    )


def _brush_mask(results: Iterable[Any], where: str) -> np.ndarray | None:
    mask = None
    for result in results:
        value = result.get("value") or {}
        if result.get("type") != "brushlabels" or value.get("format") != "rle":
            continue
        labels = value.get("brushlabels") or [PRODUCT]
        if PRODUCT not in labels:
            continue
        try:
            height, width = int(result["original_height"]), int(result["original_width"])
            part = brush.decode(value["rle"], height, width)
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{where}: unreadable brush result: {exc}") from exc
        if mask is not None and mask.shape != part.shape:
            raise ExportError(f"{where}: brush results of different image sizes")
        mask = part if mask is None else mask | part
    return mask


def _coco_shape(annotation: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    height, width = shape
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros(shape, bool)
        rles = coco_mask.frPyObjects(segmentation, height, width)
        rle = coco_mask.merge(rles)
    else:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ExportError(
                f"annotation {annotation.get('id')}: an RLE of size {size}, its image is "
                f"{[height, width]}"
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise ExportError(f"annotation {annotation.get('id')}: RLE counts do not cover it")
            rle = coco_mask.frPyObjects(dict(segmentation), height, width)  # pyright: ignore
        else:
            rle = {"size": size, "counts": str(counts).encode()}
    return coco_mask.decode(rle).astype(bool)  # pyright: ignore[reportArgumentType]


def _product_ids(categories: Mapping[int, str]) -> set[int]:
    named = {i for i, n in categories.items() if n == PRODUCT}
    if named:
        return named
    if len(categories) == 1:
        return set(categories)
    raise ExportError(f"no category named {PRODUCT!r} among {sorted(categories.values())}")


def _labelmap(text: str) -> dict[str, tuple[int, int, int]]:
    colours = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        try:
            name, colour = line.split(":")[:2]
            r, g, b = (int(v) for v in colour.split(","))
        except ValueError:
            raise ExportError(f"labelmap.txt: unreadable line {line!r}") from None
        colours[name] = (r, g, b)
    return colours


def _product_colours(colours: Mapping[str, tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    if PRODUCT in colours:
        return [colours[PRODUCT]]
    others = [c for n, c in colours.items() if n != "background"]
    if len(others) == 1:
        return others
    raise ExportError(f"labelmap.txt: no label {PRODUCT!r} among {sorted(colours)}")


def _task_image(task: Mapping[str, Any]) -> tuple[str, str | None]:
    data = task.get("data") or {}
    key = _text(data.get("image_key"))
    if data.get("image_id"):
        return str(data["image_id"]), key
    if key:
        return image_id_of(key), key
    url = str(data.get("image") or "")
    if not url:
        raise ExportError(f"task {task.get('id')}: no image in its data")
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d")
    return image_id_of(unquote(local[0] if local else parsed.path)), None


def _completed_by(value: object) -> str | None:
    if isinstance(value, dict):
        return str(value.get("email") or f"user-{value.get('id')}")
    return None if value is None else f"user-{value}"


def _time(value: object) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"unreadable time {value!r}") from None


def _text(value: object) -> str | None:
    return None if value in (None, "") else str(value)


class _Files:
    """The files of an export: a zip archive, a folder, or one JSON file."""

    def __init__(self, read: Callable[[str], bytes], names: list[str], single: bool) -> None:
        self._read, self._names, self.single_json = read, names, single

    @classmethod
    def open(cls, path: Path) -> _Files:
        if path.is_dir():
            names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
            return cls(lambda n: (path / n).read_bytes(), names, False)
        if not path.is_file():
            raise ExportError(f"{path}: no such file or folder")
        if zipfile.is_zipfile(path):
            try:
                archive = zipfile.ZipFile(path)
                bad = archive.testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ExportError(f"{path}: a broken zip archive: {exc}") from exc
            if bad is not None:
                raise ExportError(f"{path}: {bad} is corrupt in the archive")
            return cls(archive.read, sorted(archive.namelist()), False)
        if path.suffix == ".zip":
            raise ExportError(f"{path}: not a zip archive (truncated?)")
        return cls(lambda _: path.read_bytes(), [], True)

    def names(self) -> list[str]:
        return self._names

    def has(self, name: str) -> bool:
        return name in self._names

    def read(self, name: str) -> bytes:
        return self._read(name)

    def text(self, name: str) -> str:
        try:
            return self._read(name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExportError(f"{name}: not UTF-8 text") from exc

    def json(self, name: str) -> Any:
        try:
            return json.loads(self._read(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExportError(f"{name or 'the file'}: not complete JSON ({exc})") from exc
