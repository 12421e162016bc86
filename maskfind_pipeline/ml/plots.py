"""Training plots as PNG bytes: threshold curve, validation gallery, per-epoch curves.

Figures are built with `matplotlib.figure.Figure` (Agg canvas), never pyplot, so nothing global
is touched and plotting is safe off the main thread.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from matplotlib.figure import Figure

from maskfind_pipeline.ml.metrics import predicted_masks
from maskfind_pipeline.ml.segmentation.threshold import ThresholdChoice

_GT_COLOUR = np.array([0, 255, 60], dtype=np.float32)
_PRED_COLOUR = np.array([255, 0, 200], dtype=np.float32)


def pr_curve_png(choice: ThresholdChoice) -> bytes:
    """Precision-recall curve and mean IoU by threshold, with the chosen point marked."""
    curve, i = choice.curve, choice.index
    fig = Figure(figsize=(10, 4), layout="constrained")
    pr, by_threshold = fig.subplots(1, 2)
    pr.plot(curve.recall, curve.precision, color="tab:blue")
    pr.scatter([curve.recall[i]], [curve.precision[i]], color="tab:red", zorder=3)
    pr.annotate(
        f"t={choice.threshold:.2f}",
        (curve.recall[i], curve.precision[i]),
        textcoords="offset points",
        xytext=(6, -12),
    )
    pr.set(xlabel="pixel recall", ylabel="pixel precision", title="precision / recall (val)")
    for key, colour in (
        ("mean_iou", "tab:green"),
        ("precision", "tab:blue"),
        ("recall", "tab:orange"),
    ):
        by_threshold.plot(curve.thresholds, getattr(curve, key), label=key, color=colour)
    by_threshold.axvline(
        choice.threshold, color="tab:red", linestyle="--", label=f"chosen ({choice.policy})"
    )
    by_threshold.set(xlabel="threshold", title="metrics by threshold (val)")
    by_threshold.legend(loc="lower left")
    return _png(fig)


def training_curves_png(history: Sequence[Mapping[str, float]]) -> bytes:
    """Train loss and validation mean IoU per epoch."""
    epochs = [int(h.get("epoch", n + 1)) for n, h in enumerate(history)]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss, miou = fig.subplots(1, 2)
    loss.plot(epochs, [h.get("train_loss", np.nan) for h in history], marker="o")
    loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    miou.plot(epochs, [h.get("val_miou", np.nan) for h in history], marker="o", color="tab:green")
    miou.set(xlabel="epoch", ylabel="mean IoU", title="validation mean IoU (t=0.5)")
    return _png(fig)


def select_gallery(
    image_types: Sequence[str], ious: np.ndarray, per_type: int = 3, max_types: int = 12
) -> list[int]:
    """Positions of up to `per_type` images per type, spread from worst to best IoU.

    With more than `max_types` types, the types of lowest mean IoU are shown.
    """
    names = np.asarray(image_types, dtype=object)
    groups = {name: np.flatnonzero(names == name) for name in set(names.tolist())}
    shown = sorted(groups, key=lambda name: (float(ious[groups[name]].mean()), name))[:max_types]
    chosen: list[int] = []
    for name in sorted(shown):
        ranked = groups[name][np.argsort(ious[groups[name]], kind="stable")]
        picks = np.unique(np.linspace(0, len(ranked) - 1, min(per_type, len(ranked))).round())
        chosen.extend(int(ranked[int(p)]) for p in picks)
    return chosen


def gallery_png(
    images: np.ndarray,
    masks: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    *,
    labels: Sequence[str],
    captions: Sequence[str],
    max_columns: int = 3,
) -> bytes:
    """A grid of predictions: one row per label, green GT outline, magenta prediction.

    Args:
        images: (K, H, W, 3) or (K, 3, H, W) uint8.
        masks: (K, H, W) ground truth (all zero where there is none, e.g. in production).
        probabilities: (K, H, W) float or uint8-quantised probabilities.
        threshold: the decision threshold.
        labels: the row label (image type) of each image; images of a label share a row.
        captions: a second title line per image (e.g. its IoU or its grade).
        max_columns: images per row.
    """
    rows = sorted(set(labels))
    fig = Figure(figsize=(2.4 * max_columns, 2.5 * max(len(rows), 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(len(rows), 1), max_columns, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    used = dict.fromkeys(rows, 0)
    predicted = predicted_masks(probabilities, threshold)
    for k, label in enumerate(labels):
        column = used[label]
        if column >= max_columns:
            continue
        used[label] += 1
        ax = axes[rows.index(label), column]
        ax.imshow(overlay(_hwc(images[k]), masks[k] != 0, predicted[k]))
        ax.set_title(f"{label[:28]}\n{captions[k]}", fontsize=7)
    return _png(fig)


class GradedExample(Protocol):
    """A production prediction at the model's size (e.g. `serving.day.Example`)."""

    @property
    def image_type(self) -> str: ...
    @property
    def p_grade3(self) -> float: ...
    @property
    def image(self) -> np.ndarray: ...
    @property
    def probabilities(self) -> np.ndarray: ...


def production_gallery_png(examples: Sequence[GradedExample], threshold: float) -> bytes:
    """The worst-graded production masks, one row per image type, titled with P(grade 3)."""
    return gallery_png(
        np.stack([e.image for e in examples]),
        np.zeros((len(examples), *examples[0].probabilities.shape), bool),
        np.stack([e.probabilities for e in examples]),
        threshold,
        labels=[e.image_type for e in examples],
        captions=[f"P(grade 3) {e.p_grade3:.2f}" for e in examples],
        max_columns=max(sum(e.image_type == x.image_type for x in examples) for e in examples),
    )


def overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The image with the prediction tinted magenta and the ground truth outlined in green."""
    out = image.astype(np.float32)
    out[predicted] = 0.55 * out[predicted] + 0.45 * _PRED_COLOUR
    out[outline(truth)] = _GT_COLOUR
    return out.astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _hwc(image: np.ndarray) -> np.ndarray:
    return image.transpose(1, 2, 0) if image.shape[0] == 3 and image.shape[-1] != 3 else image


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
