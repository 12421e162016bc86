"""Predict and grade encoded images: PNG or JPEG bytes in, PNG bytes and numbers out.

This is what the served models (`registry.pyfunc_models`) do with each request row. Images are
decoded by ingest's rules (`data.images.decode_image`) and predicted one at a time with a loaded
`Predictor` or `Grader`, so the mask equals `predictor.predict_mask(image)` and its PNG is
byte for byte what production writes as `<id>.mask.png`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from maskfind_pipeline.data.images import InvalidImage, decode_image
from maskfind_pipeline.data.production import encode_mask
from maskfind_pipeline.ml.reviewer.config import GRADES
from maskfind_pipeline.ml.reviewer.grader import Grader
from maskfind_pipeline.ml.reviewer.grading import grades_of
from maskfind_pipeline.ml.segmentation.predict import Predictor

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T = TypeVar("T")


def decode_upload(data: bytes) -> np.ndarray:
    """RGB uint8 (H, W, 3) of PNG or JPEG bytes; `InvalidImage` with the reason otherwise."""
    ext = "png" if bytes(data[:8]) == PNG_SIGNATURE else "jpg"
    return decode_image(bytes(data), image_ext=ext).image


def png(pixels: np.ndarray) -> bytes:
    """uint8 pixels (H, W) or (H, W, 3) as PNG bytes."""
    sink = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(sink, "PNG")
    return sink.getvalue()


def decode_probabilities(data: bytes) -> np.ndarray:
    """uint8 round(p * 255) (H, W) of a greyscale PNG probability map."""
    try:
        with Image.open(io.BytesIO(bytes(data)), formats=["PNG"]) as img:
            return np.array(img.convert("L"), dtype=np.uint8)
    except Exception as exc:
        raise InvalidImage(f"probabilities are not a readable PNG ({type(exc).__name__})") from None


def mask_outputs(predictor: Predictor, data: bytes, *, probabilities: bool) -> dict[str, Any]:
    """`mask` (0/255 PNG), `mask_fraction` and, if asked, `probabilities` (PNG of
    round(p * 255)) of one encoded image, all at the image's own size."""
    probs = predictor.probabilities(decode_upload(data))
    mask = probs >= predictor.config.threshold
    row: dict[str, Any] = {"mask": encode_mask(mask), "mask_fraction": float(mask.mean())}
    if probabilities:
        row["probabilities"] = png(np.round(probs * 255.0).astype(np.uint8))
    return row


def grade_outputs(
    grader: Grader,
    image: bytes,
    probabilities: bytes,
    threshold: float,
    flip_disagreement: float = float("nan"),
    novelty: float = float("nan"),
) -> dict[str, Any]:
    """`grade` and `p_grade1..3` of the mask `probabilities >= threshold` of one image, graded
    at the size the image and its probability map (equal sizes) are sent at, with the mask
    model's flip disagreement and novelty score where the caller has them (NaN: unknown)."""
    pixels, probs = decode_upload(image), decode_probabilities(probabilities)
    if pixels.shape[:2] != probs.shape:
        raise InvalidImage(f"probabilities {probs.shape} differ from the image {pixels.shape[:2]}")
    images = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None]
    maps = torch.from_numpy(probs)[None, None]
    odds = grader.grade_batch(
        images,
        maps,
        float(threshold),
        flip_disagreement=np.array([flip_disagreement], dtype=np.float64),
        novelty=np.array([novelty], dtype=np.float64),
    )
    return {"grade": int(grades_of(odds)[0])} | {
        f"p_grade{g}": float(odds[0, i]) for i, g in enumerate(GRADES)
    }


def each_row(rows: Iterable[T], work: Callable[[T], dict[str, Any]]) -> list[dict[str, Any]]:
    """`work` of every row; a bad image fails as `InvalidImage` naming its row (from 0)."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(work(row))
        except InvalidImage as exc:
            raise InvalidImage(f"row {i}: {exc}") from None
    return out
