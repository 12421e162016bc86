"""Degraded true masks with a chosen IoU, and soft probability maps for them (numpy + scipy).

Each degradation takes a true mask and a target IoU and returns a mask whose IoU with the true
one is close to the target (exact up to pixel granularity for `erode`, `dilate`, `holes`, `cut`
and `merge`, which pick their strength by a quantile; `shift` scans shift lengths):

- `erode` / `dilate`: the boundary moves in / out by a distance that varies smoothly along it;
- `shift`: the whole mask moves by a sub-pixel vector in a random direction;
- `holes`: smooth blobs inside the product are missing;
- `cut`: the product is cut off by a straight line (a part beyond it is missing);
- `merge`: the mask bleeds into the background, mostly towards one side.

`soft_map` turns any mask into a probability map shaped like a segmentation network's: a
sigmoid of the signed distance to the mask's boundary with a random edge width, plus smooth
logit noise. That the map is soft (not a blurred 0/1 image) matters: the reviewer must not be
able to tell degraded samples from real predictions by the texture of the map, or it would learn
"synthetic map" instead of "wrong mask".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DEGRADATIONS = ("erode", "dilate", "shift", "holes", "cut", "merge")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def degrade(mask: np.ndarray, how: str, target_iou: float, rng: np.random.Generator) -> np.ndarray:
    """`mask` degraded by `how` to about `target_iou` with it (see the module docstring).

    Args:
        mask: the true mask (H, W), product where non-zero.
        how: one of `DEGRADATIONS`.
        target_iou: in [0, 1]; 1 returns the mask unchanged.
        rng: the only source of randomness.

    Raises:
        ValueError: an unknown degradation or a target outside [0, 1].
    """
    truth = np.asarray(mask) != 0
    if how not in _DEGRADE:
        raise ValueError(f"unknown degradation {how!r}; use one of {DEGRADATIONS}")
    if not 0.0 <= target_iou <= 1.0:
        raise ValueError(f"target IoU {target_iou} outside [0, 1]")
    if target_iou >= 1.0 or not truth.any():
        return truth.copy()
    return _DEGRADE[how](truth, float(target_iou), rng)


def soft_map(mask: np.ndarray, threshold: float, rng: np.random.Generator) -> np.ndarray:
    """A float32 probability map (H, W) with `p >= threshold` exactly on `mask`.

    p = sigmoid(signed_distance / width * exp(noise) + logit(threshold)): the signed distance
    to the boundary (positive inside, ±0.5 next to it) over a random edge width, its size (never
    its sign) scaled by a smooth random field, so confidence varies in patches as a network's
    does, dipping towards the threshold in places, while the mask the map gives back is `mask`.
    Values are rounded away from the threshold where float precision would blur the rule.
    """
    inside = np.asarray(mask) != 0
    width = rng.uniform(0.6, 3.0)
    spread = rng.uniform(0.0, 1.2) * smooth_noise(inside.shape, rng.uniform(3.0, 12.0), rng)
    logits = _signed_distance(inside) / width * np.exp(spread) + _logit(threshold)
    probs = (1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)
    return _respect(probs, inside, threshold)


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _signed_distance(inside: np.ndarray) -> np.ndarray:
    """Distance to the boundary, positive inside: ±0.5 on the pixels next to it."""
    if inside.all() or not inside.any():
        return np.full(inside.shape, 1e3 if inside.all() else -1e3)
    d_in, d_out = _distance(inside), _distance(~inside)
    return np.where(inside, d_in - 0.5, 0.5 - d_out)


def _respect(probs: np.ndarray, inside: np.ndarray, threshold: float) -> np.ndarray:
    """`probs` nudged so that float32 `probs >= threshold` is exactly `inside`."""
    cut = np.float32(threshold)
    above = np.nextafter(cut, np.float32(2.0))
    below = np.nextafter(cut, np.float32(-1.0))
    probs = np.where(inside, np.maximum(probs, cut), np.minimum(probs, below))
    return np.where(inside & (probs < cut), above, probs).astype(np.float32)


def _distance(inside: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel of `inside` to the nearest pixel outside it (0 outside)."""
    return np.asarray(ndimage.distance_transform_edt(inside), dtype=np.float64)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def _keep_fraction(truth: np.ndarray, score: np.ndarray, keep: float) -> np.ndarray:
    """`truth` without its pixels of highest `score`, keeping the share `keep` of them."""
    values = score[truth]
    count = round(keep * values.size)
    out = np.zeros_like(truth)
    if count <= 0:
        return out
    order = np.argsort(values, kind="stable")[:count]
    rows, cols = np.nonzero(truth)
    out[rows[order], cols[order]] = True
    return out


def _add_pixels(truth: np.ndarray, score: np.ndarray, target: float) -> np.ndarray:
    """`truth` plus the outside pixels of lowest `score`: as many as IoU `target` allows."""
    area = int(truth.sum())
    outside = ~truth
    count = min(round(area / target - area), int(outside.sum()))
    out = truth.copy()
    if count <= 0:
        return out
    rows, cols = np.nonzero(outside)
    order = np.argsort(score[outside], kind="stable")[:count]
    out[rows[order], cols[order]] = True
    return out


def _erode(truth: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    wobble = rng.uniform(0.5, 3.0) * smooth_noise(truth.shape, rng.uniform(3.0, 10.0), rng)
    return _keep_fraction(truth, -(_distance(truth) + wobble), target)


def _dilate(truth: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    wobble = rng.uniform(0.5, 3.0) * smooth_noise(truth.shape, rng.uniform(3.0, 10.0), rng)
    return _add_pixels(truth, _distance(~truth) + wobble, target)


def _merge(truth: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    distance = _distance(~truth)
    rows, cols = np.indices(truth.shape)
    centre_r, centre_c = (float(v.mean()) for v in np.nonzero(truth))
    angle = rng.uniform(0, 2 * np.pi)
    facing = np.cos(np.arctan2(rows - centre_r, cols - centre_c) - angle)
    # Growth is cheap towards `angle` and dear away from it: one lopsided bulge.
    stretch = 1.0 + rng.uniform(2.0, 6.0) * (1.0 - facing)
    wobble = rng.uniform(1.0, 4.0) * smooth_noise(truth.shape, rng.uniform(3.0, 10.0), rng)
    return _add_pixels(truth, distance * stretch + wobble, target)


def _holes(truth: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    field = smooth_noise(truth.shape, rng.uniform(3.0, 9.0), rng)
    return _keep_fraction(truth, field, target)


def _cut(truth: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.indices(truth.shape)
    angle = rng.uniform(0, 2 * np.pi)
    along = rows * np.sin(angle) + cols * np.cos(angle)
    return _keep_fraction(truth, along, target)


def _shift(truth: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    source = truth.astype(np.float32)

    def moved(length: float) -> np.ndarray:
        shifted = ndimage.shift(source, direction * length, order=1, mode="constant")
        return shifted >= 0.5

    low, high = 0.0, float(max(truth.shape))
    for _ in range(24):  # bisection on the length: IoU falls (about monotonically) with it
        middle = (low + high) / 2
        if iou(moved(middle), truth) > target:
            low = middle
        else:
            high = middle
    best = min((low, high), key=lambda length: abs(iou(moved(length), truth) - target))
    return moved(best)


_DEGRADE = {
    "erode": _erode,
    "dilate": _dilate,
    "shift": _shift,
    "holes": _holes,
    "cut": _cut,
    "merge": _merge,
}
