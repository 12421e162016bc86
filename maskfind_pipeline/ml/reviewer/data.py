"""The reviewer's samples: real predictions of mask models and degraded true masks, graded by IoU.

Real predictions come from running each mask model (`ml.segmentation.predict.Predictor`) batched
over a dataset's images at the model's input size; each is also run on the horizontally flipped
images (flipped back) for the flip-disagreement baseline. Degraded samples are true masks degraded
by `ml.reviewer.degrade` to a target IoU drawn evenly over the three grades' bands, with a soft
probability map shaped like a network's (`soft_map`), so the reviewer cannot tell them apart by the
map's texture and grades 2 and 3 are well represented.

Conventions: every mask under review is `binary_mask(probabilities, threshold)` of the stored
(uint8-quantised) probabilities, exactly what `reviewer_inputs` rebuilds, and its IoU with the
true mask (`ml.metrics`, empty/empty = 1) gives its grade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np
import torch

from maskfind_pipeline.ml.metrics import iou_per_image, pixel_counts, quantize_probabilities
from maskfind_pipeline.ml.reviewer.config import GRADES, GradeRule
from maskfind_pipeline.ml.reviewer.degrade import DEGRADATIONS, degrade, soft_map
from maskfind_pipeline.ml.reviewer.grading import FLIP, NOVELTY, mask_signals
from maskfind_pipeline.ml.reviewer.model import binary_mask, dequantize
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.ml.segmentation.tta import flip_disagreement, mirrored_logits

PREDICTION = "prediction"
DEGRADED = "degraded"
GRADE3_LOW_IOU = 0.3
"""Degraded grade-3 targets are drawn from [GRADE3_LOW_IOU, usable): wrong but overlapping
masks; outright misses come from real predictions."""
DEFAULT_THRESHOLD = 0.5
_PER_IMAGE = ("images", "true_masks", "image_types")


@dataclass(frozen=True, eq=False)
class ReviewerSamples:
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
        flip_disagreement: float64 (N,), `ml.segmentation.tta.flip_disagreement` of the plain and
        the
            mirrored pass of the model that made the mask; NaN for degraded masks (no model).
        novelty: float64 (N,), the new-image-type score the mask's model gives the image
            (`ml.novelty.model`); NaN where unknown (degraded masks, models without one).
        origins: (N,) where the mask comes from: `champion`, `fold` (a mask model trained
            without some types), `failure` (the model version a relabeled production image
            failed with), `prediction` (any other model), `degraded`.
        unseen: bool (N,), whether the mask's model never trained on the image's type.
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
    novelty: np.ndarray | None = None
    origins: np.ndarray | None = None
    unseen: np.ndarray | None = None

    def __post_init__(self) -> None:
        count = len(self.image_index)
        defaults = {
            "novelty": np.full(count, np.nan),
            "origins": np.where(self.kinds == PREDICTION, PREDICTION, DEGRADED).astype(object),
            "unseen": np.zeros(count, dtype=bool),
        }
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)

    def __len__(self) -> int:
        return len(self.image_index)

    @cached_property
    def signals(self) -> dict[str, np.ndarray]:
        """Every signal `ml.reviewer.grading` grades from, per sample (N,) (not the CNN's)."""
        assert self.novelty is not None
        out = mask_signals(self.probabilities, self.thresholds)
        return out | {FLIP: self.flip_disagreement, NOVELTY: self.novelty}

    def of_origin(self, *origins: str) -> np.ndarray:
        """Boolean (N,): the samples whose masks come from one of `origins`."""
        return np.isin(np.asarray(self.origins, dtype=object), list(origins))

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

    def take(self, selection: np.ndarray | Sequence[int]) -> ReviewerSamples:
        """The selected samples (a boolean mask or indices), keeping only their images."""
        rows = np.asarray(selection)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        used, remapped = np.unique(self.image_index[rows], return_inverse=True)
        values = {
            f.name: getattr(self, f.name)[used if f.name in _PER_IMAGE else rows]
            for f in fields(self)
        }
        values["image_index"] = remapped.astype(np.int64)
        return ReviewerSamples(**values)

    @classmethod
    def joined(
        cls,
        images: np.ndarray,
        true_masks: np.ndarray,
        image_types: np.ndarray,
        parts: Sequence[Mapping[str, np.ndarray]],
    ) -> ReviewerSamples:
        """Samples made of `parts` (per-sample arrays, as `predicted_masks` and
        `degraded_masks` return them) over the same images."""
        if not parts:
            raise ValueError("no samples to join")
        keys = [f.name for f in fields(cls) if f.name not in _PER_IMAGE]
        joined = {key: np.concatenate([part[key] for part in parts]) for key in keys}
        return cls(images=images, true_masks=true_masks, image_types=image_types, **joined)

    def counts(self, rule: GradeRule) -> dict[str, dict[str, int]]:
        """Samples per origin of real masks (`champion`, `fold`, ...) or kind of degraded ones
        (`degraded:<how>`), and grade, for logs."""
        grades = self.grades(rule)
        assert self.origins is not None
        names = np.where(self.kinds == PREDICTION, self.origins, self.kinds)
        return {
            name: {f"grade_{g}": int(np.sum((names == name) & (grades == g))) for g in GRADES}
            for name in sorted(set(names.tolist()))
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
) -> ReviewerSamples:
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
            parts.append(
                predicted_masks(predictor, images, truth, name=name, batch_size=batch_size)
            )
    n_real = sum(len(p["image_index"]) for p in parts)
    count = _degraded_count(n_real, len(images), degraded_share)
    if count:
        thresholds = [p.config.threshold for p in predictors] or [DEFAULT_THRESHOLD]
        parts.append(degraded_masks(truth, count, rule, thresholds, seed))
    if not parts:
        raise ValueError("no samples: give predictors or a positive degraded_share")
    return ReviewerSamples.joined(images, truth, types, parts)


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
def predicted_masks(
    predictor: Predictor,
    images: np.ndarray,
    truth: np.ndarray,
    *,
    name: str,
    rows: np.ndarray | None = None,
    origin: str = PREDICTION,
    unseen: bool = False,
    novelty: np.ndarray | None = None,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """One model's masks of `images[rows]` (all by default) as per-sample arrays for
    `ReviewerSamples.joined`, graded against `truth`, with the flip disagreement of its plain
    and mirrored pass (`ml.segmentation.tta`, as every inference backend computes it).

    Args:
        predictor: the mask model; `images` must be at its input size.
        images, truth: uint8 (M, S, S, 3) and bool (M, S, S) over all images.
        name: the model's name in `models`.
        rows: the image rows it predicts.
        origin, unseen: recorded per sample (`ReviewerSamples`).
        novelty: its novelty score of each predicted image (len(rows),); NaN if None.
        batch_size: images per forward pass.

    Raises:
        ValueError: the images are not at the predictor's input size.
    """
    size = predictor.config.input_size
    if images.shape[1:3] != (size, size):
        raise ValueError(f"{name} takes {size}² images, got {images.shape[1:3]}")
    index = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    threshold = predictor.config.threshold
    # The flip signal compares plain forward passes: with test-time flipping the predicted
    # mask is mirror-symmetric by construction and would always agree with itself.
    tta = predictor.config.tta_passes > 1
    probs, disagreement = [], []
    for start in range(0, len(index), batch_size):
        picked = np.asarray(images[index[start : start + batch_size]])
        batch = torch.from_numpy(picked).permute(0, 3, 1, 2)
        plain = predictor.logits(batch, tta=False)
        mirrored = mirrored_logits(lambda x: predictor.logits(x, tta=False), batch)
        probs.append(_quantized(predictor.logits(batch) if tta else plain))
        disagreement.append(flip_disagreement(plain, mirrored, threshold).double().cpu().numpy())
    count = len(index)
    quantized = np.concatenate(probs) if probs else np.zeros((0, size, size), np.uint8)
    masks = _masks(quantized, threshold)
    scores = np.full(count, np.nan) if novelty is None else np.asarray(novelty, np.float64)
    return {
        "image_index": index,
        "probabilities": quantized,
        "masks": masks,
        "thresholds": np.full(count, threshold, dtype=np.float32),
        "ious": mask_ious(masks, np.asarray(truth[index])),
        "kinds": np.full(count, PREDICTION, dtype=object),
        "models": np.full(count, name, dtype=object),
        "entropy": mean_entropy(quantized),
        "flip_disagreement": np.concatenate(disagreement) if disagreement else np.zeros(0),
        "novelty": scores,
        "origins": np.full(count, origin, dtype=object),
        "unseen": np.full(count, unseen, dtype=bool),
    }


def degraded_masks(
    truth: np.ndarray,
    count: int,
    rule: GradeRule,
    thresholds: Sequence[float],
    seed: int,
    *,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """`count` true masks of `truth[rows]` (all rows by default) degraded to target IoUs spread
    evenly over the grades' bands, as per-sample arrays for `ReviewerSamples.joined`."""
    plan = np.random.default_rng([seed, 0])
    pool = np.arange(len(truth)) if rows is None else np.asarray(rows, dtype=np.int64)
    image_index = plan.permutation(np.resize(pool, count)).astype(np.int64)
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
        "novelty": np.full(count, np.nan),
        "origins": np.full(count, DEGRADED, dtype=object),
        "unseen": np.zeros(count, dtype=bool),
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
    """uint8 round(sigmoid * 255) (N, S, S), as `ml.segmentation.inference.predict_probabilities`
    stores."""
    return torch.sigmoid(logits.float()).mul_(255).round_().to(torch.uint8)[:, 0].cpu().numpy()
