"""The reviewer's samples: real predictions of mask models and degraded true masks, graded by IoU.

Real predictions come from running each mask model (`ml.predict.Predictor`) batched over a
dataset's images at the model's input size; each is also run on the horizontally flipped images
(flipped back) for the flip-disagreement baseline. Degraded samples are true masks degraded by
`ml.reviewer_degrade` to a target IoU drawn evenly over the three grades' bands, with a soft
probability map shaped like a network's (`soft_map`), so the reviewer cannot tell them apart by
the map's texture and grades 2 and 3 are well represented.

Conventions: every mask under review is `binary_mask(probabilities, threshold)` of the stored
(uint8-quantised) probabilities, exactly what `reviewer_inputs` rebuilds, and its IoU with the
true mask (`ml.metrics`, empty/empty = 1) gives its grade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from maskfind_pipeline.ml.metrics import iou_per_image, pixel_counts, quantize_probabilities
from maskfind_pipeline.ml.predict import Predictor
from maskfind_pipeline.ml.reviewer import binary_mask, dequantize
from maskfind_pipeline.ml.reviewer_config import GRADES, GradeRule
from maskfind_pipeline.ml.reviewer_degrade import DEGRADATIONS, degrade, soft_map

PREDICTION = "prediction"
DEGRADED = "degraded"
GRADE3_LOW_IOU = 0.3
"""Degraded grade-3 targets are drawn from [GRADE3_LOW_IOU, usable): wrong but overlapping
masks; outright misses come from real predictions."""
DEFAULT_THRESHOLD = 0.5
_PER_IMAGE = ("images", "true_masks", "image_types")


@dataclass(frozen=True, eq=False)
class ReviewSamples:
    """Masks under review with everything to train and judge the reviewer, row-aligned.

    Each image is stored once (`images`, `true_masks`, `image_types`, length M); every sample
    (length N) points at its image through `image_index`.

    Attributes:
        images: uint8 (M, S, S, 3).
        true_masks: bool (M, S, S).
        image_types: (M,) image type names.
        image_index: int64 (N,), the row of each sample's image.
        probabilities: uint8 (N, S, S), round(p * 255).
        masks: bool (N, S, S), the mask under review: `probabilities >= thresholds`.
        thresholds: float32 (N,), the threshold that made each mask.
        ious: float64 (N,), IoU of each mask with its true mask.
        kinds: (N,) `prediction` or `degraded:<how>`.
        models: (N,) the name of the model that predicted each mask ("" for degraded ones).
        entropy: float64 (N,), mean binary entropy (bits) of the probability map.
        flip_disagreement: float64 (N,), 1 - IoU of the mask with the mask predicted on the
            horizontally flipped image (flipped back); NaN for degraded masks (no model).
    """

    images: np.ndarray
    true_masks: np.ndarray
    image_types: np.ndarray
    image_index: np.ndarray
    probabilities: np.ndarray
    masks: np.ndarray
    thresholds: np.ndarray
    ious: np.ndarray
    kinds: np.ndarray
    models: np.ndarray
    entropy: np.ndarray
    flip_disagreement: np.ndarray

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def sample_types(self) -> np.ndarray:
        """The image type of each sample (N,)."""
        return self.image_types[self.image_index]

    @property
    def is_prediction(self) -> np.ndarray:
        """Whether each sample is a real prediction (N,) bool."""
        return self.kinds == PREDICTION

    def sample_images(self, selection: slice | np.ndarray | None = None) -> np.ndarray:
        """uint8 (K, S, S, 3) images of the selected samples (all by default)."""
        rows = self.image_index if selection is None else self.image_index[selection]
        return self.images[rows]

    def grades(self, rule: GradeRule) -> np.ndarray:
        """Grade 1, 2 or 3 of each sample by `rule`."""
        return rule.grades(self.ious)

    def take(self, selection: np.ndarray | Sequence[int]) -> ReviewSamples:
        """The selected samples (a boolean mask or indices), keeping only their images."""
        rows = np.asarray(selection)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        used, remapped = np.unique(self.image_index[rows], return_inverse=True)
        values = {
            f.name: getattr(self, f.name)[used if f.name in _PER_IMAGE else rows]
            for f in fields(self)
        }
        values["image_index"] = remapped.astype(np.int64)
        return ReviewSamples(**values)

    def counts(self, rule: GradeRule) -> dict[str, dict[str, int]]:
        """Samples per kind (`prediction`, `degraded:<how>`) and grade, for logs."""
        grades = self.grades(rule)
        return {
            kind: {f"grade_{g}": int(np.sum((self.kinds == kind) & (grades == g))) for g in GRADES}
            for kind in sorted(set(self.kinds.tolist()))
        }


def split_by_type(
    image_types: Sequence[str] | np.ndarray, held_out: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (seen, held_out) selections over `image_types`: the held-out types never train.

    Raises:
        ValueError: a held-out type has no images, or nothing would be left to train on.
    """
    types = np.asarray(image_types, dtype=object)
    missing = sorted(set(held_out) - set(types.tolist()))
    if missing:
        raise ValueError(f"held-out image types without images: {missing}")
    held = np.isin(types, list(held_out))
    if held.all():
        raise ValueError("every image type is held out")
    return ~held, held


def mean_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Mean binary entropy in bits over each map's pixels (N,); maps are float or uint8."""
    probs = np.asarray(probabilities)
    out = np.empty(len(probs), dtype=np.float64)
    for start in range(0, len(probs), 256):
        part = dequantize(torch.from_numpy(np.ascontiguousarray(probs[start : start + 256])))
        part = part.clamp(1e-7, 1 - 1e-7)
        bits = -(part * torch.log2(part) + (1 - part) * torch.log2(1 - part))
        out[start : start + 256] = bits.flatten(1).mean(dim=1).double().numpy()
    return out


def mask_ious(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image IoU (N,) of boolean masks with true masks (`ml.metrics`, empty/empty = 1)."""
    return iou_per_image(pixel_counts(np.asarray(masks, dtype=np.float32), truth, 0.5))


def build_review_samples(
    images: np.ndarray,
    true_masks: np.ndarray,
    image_types: Sequence[str] | np.ndarray,
    predictors: Sequence[Predictor],
    *,
    degraded_share: float,
    seed: int,
    batch_size: int = 32,
    grades: GradeRule | None = None,
) -> ReviewSamples:
    """Real predictions of every predictor on every image, plus degraded true masks.

    Args:
        images: uint8 (M, S, S, 3) at the predictors' input size S.
        true_masks: (M, S, S), product where non-zero.
        image_types: (M,) the type of each image.
        predictors: mask models; each predicts every image (and its mirror image, for the
            flip baseline). Named by `version`, else `model-<position>`.
        degraded_share: share of degraded samples among all: round(n_real * share / (1 -
            share)) of them; with share 1 or no predictors, one per image (and no predictions
            with share 1); with 0, none.
        seed: seeds which image, degradation and IoU each degraded sample gets.
        batch_size: images per predictor forward pass.
        grades: the grade bands the degraded targets are spread over (default `GradeRule()`).

    Raises:
        ValueError: arrays that do not align, or a predictor of another input size.
    """
    rule = grades or GradeRule()
    images, truth, types = _checked(images, true_masks, image_types)
    parts: list[dict[str, np.ndarray]] = []
    if degraded_share < 1.0:
        for position, predictor in enumerate(predictors):
            name = predictor.version or f"model-{position}"
            parts.append(_predictions(predictor, name, images, truth, batch_size))
    n_real = sum(len(p["image_index"]) for p in parts)
    count = _degraded_count(n_real, len(images), degraded_share)
    if count:
        thresholds = [p.config.threshold for p in predictors] or [DEFAULT_THRESHOLD]
        parts.append(_degraded(truth, count, rule, thresholds, seed))
    if not parts:
        raise ValueError("no samples: give predictors or a positive degraded_share")
    joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return ReviewSamples(images=images, true_masks=truth, image_types=types, **joined)


def _checked(
    images: np.ndarray, true_masks: np.ndarray, image_types: Sequence[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.asarray(images)
    truth = np.asarray(true_masks) != 0
    types = np.asarray(image_types, dtype=object)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (M, S, S, 3), got {images.dtype} {images.shape}")
    if truth.shape != images.shape[:3] or types.shape != images.shape[:1]:
        raise ValueError(
            f"images {images.shape}, true masks {truth.shape}, image types {types.shape} differ"
        )
    return images, truth, types


def _degraded_count(n_real: int, n_images: int, share: float) -> int:
    if share <= 0.0:
        return 0
    if share >= 1.0 or n_real == 0:
        return n_images
    return round(n_real * share / (1.0 - share))


@torch.inference_mode()
def _predictions(
    predictor: Predictor, name: str, images: np.ndarray, truth: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    size = predictor.config.input_size
    if images.shape[1:3] != (size, size):
        raise ValueError(f"{name} takes {size}² images, got {images.shape[1:3]}")
    threshold = predictor.config.threshold
    # The flip baseline compares plain forward passes: with test-time flipping the predicted
    # mask is mirror-symmetric by construction and would always agree with itself.
    tta = predictor.config.tta_passes > 1
    probs, plain, flipped = [], [], []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
        plain.append(_quantized(predictor.logits(batch, tta=False)))
        probs.append(_quantized(predictor.logits(batch)) if tta else plain[-1])
        flipped.append(_quantized(predictor.logits(batch.flip(-1), tta=False).flip(-1)))
    quantized, mirror = np.concatenate(probs), np.concatenate(flipped)
    masks = _masks(quantized, threshold)
    agreement = mask_ious(_masks(np.concatenate(plain), threshold), _masks(mirror, threshold))
    count = len(images)
    return {
        "image_index": np.arange(count, dtype=np.int64),
        "probabilities": quantized,
        "masks": masks,
        "thresholds": np.full(count, threshold, dtype=np.float32),
        "ious": mask_ious(masks, truth),
        "kinds": np.full(count, PREDICTION, dtype=object),
        "models": np.full(count, name, dtype=object),
        "entropy": mean_entropy(quantized),
        "flip_disagreement": 1.0 - agreement,
    }


def _degraded(
    truth: np.ndarray, count: int, rule: GradeRule, thresholds: Sequence[float], seed: int
) -> dict[str, np.ndarray]:
    plan = np.random.default_rng([seed, 0])
    image_index = plan.permutation(np.resize(np.arange(len(truth)), count)).astype(np.int64)
    hows = plan.choice(DEGRADATIONS, size=count)
    targets = [_target(int(g), rule, plan) for g in plan.choice(GRADES, size=count)]
    cuts = plan.choice(np.asarray(thresholds, dtype=np.float32), size=count)
    probs = np.empty((count, *truth.shape[1:]), dtype=np.uint8)
    for i in range(count):
        rng = np.random.default_rng([seed, 1, i])
        wrong = degrade(truth[image_index[i]], str(hows[i]), targets[i], rng)
        probs[i] = _quantize_keeping(soft_map(wrong, float(cuts[i]), rng), wrong, float(cuts[i]))
    masks = _masks(probs, cuts)
    return {
        "image_index": image_index,
        "probabilities": probs,
        "masks": masks,
        "thresholds": cuts.astype(np.float32),
        "ious": mask_ious(masks, truth[image_index]),
        "kinds": np.asarray([f"{DEGRADED}:{how}" for how in hows], dtype=object),
        "models": np.full(count, "", dtype=object),
        "entropy": mean_entropy(probs),
        "flip_disagreement": np.full(count, np.nan),
    }


def _target(grade: int, rule: GradeRule, rng: np.random.Generator) -> float:
    low, high = rule.band(grade)
    if grade == 3:
        low = min(GRADE3_LOW_IOU, high)
    return float(rng.uniform(low, high)) if grade != 1 else float(rng.uniform(low, 1.0))


def _quantize_keeping(probs: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 round(p * 255), nudged by one step where rounding would move a pixel across
    `threshold`, so that the quantised map still gives exactly `mask`."""
    levels = binary_mask(torch.arange(256, dtype=torch.uint8)[None], threshold)[0].numpy()
    first = int(np.argmax(levels)) if levels.any() else 256
    quantized = quantize_probabilities(probs).astype(np.int16)
    if 0 < first < 256:
        quantized = np.where(mask, np.maximum(quantized, first), np.minimum(quantized, first - 1))
    return quantized.astype(np.uint8)


def _masks(probabilities: np.ndarray, thresholds: float | np.ndarray) -> np.ndarray:
    out = np.empty(probabilities.shape, dtype=bool)
    cuts = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (len(probabilities),))
    for start in range(0, len(probabilities), 256):
        part = slice(start, start + 256)
        tensor = torch.from_numpy(np.ascontiguousarray(probabilities[part]))
        out[part] = binary_mask(tensor, cuts[part].copy()).numpy()
    return out


def _quantized(logits: torch.Tensor) -> np.ndarray:
    """uint8 round(sigmoid * 255) (N, S, S), as `ml.inference.predict_probabilities` stores."""
    return torch.sigmoid(logits.float()).mul_(255).round_().to(torch.uint8)[:, 0].cpu().numpy()
