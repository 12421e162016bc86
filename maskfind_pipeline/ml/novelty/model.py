"""New image type alarm: a novelty score on the mask model's own image features.

Fitted when the mask model trains, on the `ml.novelty.features` features (the encoder's two deepest
stages, spatially averaged) of its training images; stored beside its weights as safetensors
(arrays) plus JSON (settings, threshold, image types); scored in production on the features the
inference backends return with every mask, so scoring never runs a network and imports no torch.

Two scores (higher = more novel):

- `mahalanobis`: per-image-type class means with one shared covariance of the within-type
  residuals, shrunk (Ledoit-Wolf or OAS); the score is the distance to the nearest type's mean.
- `knn`: distance to the k-th nearest training feature (cosine distance on L2-normalised
  features).

`calibrate` sets the threshold to the `quantile` of the scores of validation images of seen
types, so about 1 - quantile of them are flagged. `day_alarms` is the pure core of the
production warning: image types (tag combinations) with many novel images on one day.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from maskfind_pipeline.core_config import CoreConfig

FORMAT_VERSION = 1
TENSORS_FILE, META_FILE = "novelty.safetensors", "novelty.json"
"""The novelty model's two files beside the mask model's weights in the registry."""


class NoveltyConfig(CoreConfig):
    """How the novelty (new image type) score is fitted, calibrated and turned into alarms."""

    features: Literal["imagenet", "model"] = "imagenet"
    """Whose encoder gives the features: `imagenet`, the mask model's encoder as it was before
    training (its ImageNet weights, one more encoder pass in production); `model`, the trained
    encoder (free: from the mask's own forward pass). Training for masks narrows what the
    encoder sees, so the ImageNet features separate image types better (README: novelty
    table). A model without pretrained encoder weights falls back to `model`."""
    method: Literal["mahalanobis", "knn"] = "mahalanobis"
    """`mahalanobis`: distance to the nearest image type's mean under one shared, shrunk
    covariance; `knn`: cosine distance to the k-th nearest training image."""
    normalise: Literal["l2", "none"] = "l2"
    """Feature normalisation before either score: `l2` scales each image's feature vector to
    unit length (kNN then measures cosine distance), `none` uses the raw pooled activations."""
    shrinkage: Literal["ledoit_wolf", "oas"] = "ledoit_wolf"
    """Covariance shrinkage estimator of `mahalanobis` (scikit-learn LedoitWolf or OAS)."""
    k: int = Field(default=5, ge=1)
    """Which nearest training image `knn` measures the distance to (1 = the nearest)."""
    max_bank: int = Field(default=20_000, ge=1)
    """`knn` keeps at most this many training features (an evenly spaced subsample)."""
    quantile: float = Field(default=0.95, gt=0.0, lt=1.0)
    """The threshold is this quantile of validation scores of seen types: 0.95 flags about
    5 % of images of known types (a day's alarm needs far more of one type: `min_share`);
    0.99 of a validation split of a few hundred images is decided by its one or two
    strangest images and detects much less."""
    min_share: float = Field(default=0.25, ge=0.0, le=1.0)
    """A day raises an alarm for an image type when at least this share of its images is
    novel ..."""
    min_count: int = Field(default=5, ge=1)
    """... and at least this many of them are."""


@dataclass(frozen=True)
class NoveltyModel:
    """A fitted novelty score: settings, the seen image types, arrays, calibrated threshold.

    Attributes:
        config: the settings it was fitted with.
        image_types: the seen image types (one mean per type for `mahalanobis`).
        arrays: float32 arrays: `means` (T, D) and `whitening` (D, D) for `mahalanobis`,
            `bank` (M, D) for `knn`.
        threshold: scores above it are novel; None until `calibrate`.
        info: counts recorded at fitting and calibration (stored in the JSON).
    """

    config: NoveltyConfig
    image_types: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    threshold: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, features: np.ndarray, image_types: Sequence[str] | np.ndarray, config: NoveltyConfig
    ) -> NoveltyModel:
        """Fit on the features (N, D) of training images and their image types (N,).

        Raises:
            ValueError: shapes disagree, fewer than two images, or a non-finite feature.
        """
        x = _checked(features)
        types = np.asarray(image_types, dtype=object)
        if len(types) != len(x) or len(x) < 2:
            raise ValueError(f"need >= 2 features with one type each, got {len(x)}/{len(types)}")
        x = _normalised(x, config)
        names = tuple(sorted({str(t) for t in types}))
        if config.method == "mahalanobis":
            arrays = _fit_mahalanobis(x, types, names, config)
        else:
            arrays = {"bank": _subsample(x, config.max_bank).astype(np.float32)}
        info = {"n_train": len(x), "feature_dim": int(x.shape[1])}
        return cls(config, names, arrays, info=info)

    @property
    def feature_dim(self) -> int:
        """D, the length of the feature vectors it scores."""
        return int(next(iter(self.arrays.values())).shape[1])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Novelty score (N,) float32 of features (N, D): higher is more novel."""
        x = _normalised(_checked(features, self.feature_dim), self.config)
        if self.config.method == "mahalanobis":
            return _mahalanobis(x, self.arrays["means"], self.arrays["whitening"])
        return _knn(x, self.arrays["bank"], self.config)

    def calibrate(self, val_features: np.ndarray) -> NoveltyModel:
        """This model with its threshold at `config.quantile` of the validation scores."""
        scores = self.scores(val_features)
        if not len(scores):
            raise ValueError("calibration needs at least one validation feature")
        threshold = float(np.quantile(scores.astype(np.float64), self.config.quantile))
        info = {**self.info, "n_val": len(scores), "val_flagged": int((scores > threshold).sum())}
        return replace(self, threshold=threshold, info=info)

    def is_novel(self, scores: np.ndarray) -> np.ndarray:
        """Boolean (N,): score above the calibrated threshold.

        Raises:
            ValueError: the model is not calibrated.
        """
        if self.threshold is None:
            raise ValueError("the novelty model has no threshold: call calibrate first")
        return np.asarray(scores) > self.threshold

    def to_bytes(self) -> tuple[bytes, str]:
        """(safetensors bytes of the arrays, JSON of settings, threshold and image types)."""
        meta = {
            "format": FORMAT_VERSION,
            "config": json.loads(self.config.to_json()),
            "image_types": list(self.image_types),
            "threshold": self.threshold,
            "info": self.info,
        }
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.arrays.items()}
        return save_arrays(arrays), json.dumps(meta, indent=2, sort_keys=True)

    @classmethod
    def from_bytes(cls, tensors: bytes, meta: str) -> NoveltyModel:
        """Inverse of `to_bytes` (safetensors and JSON only: nothing is unpickled).

        Raises:
            ValueError: an unknown format or arrays that do not fit the method.
        """
        raw = json.loads(meta)
        if raw.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown novelty model format {raw.get('format')!r}")
        config = NoveltyConfig.from_json(json.dumps(raw["config"]))
        arrays = dict(load_arrays(tensors))
        wanted = {"means", "whitening"} if config.method == "mahalanobis" else {"bank"}
        if set(arrays) != wanted:
            raise ValueError(f"{config.method} needs arrays {sorted(wanted)}, got {sorted(arrays)}")
        threshold = raw["threshold"]
        return cls(
            config,
            tuple(raw["image_types"]),
            arrays,
            None if threshold is None else float(threshold),
            dict(raw.get("info", {})),
        )


def to_files(model: NoveltyModel) -> dict[str, bytes]:
    """The model as the registry's files beside the weights (`TENSORS_FILE`, `META_FILE`)."""
    tensors, meta = model.to_bytes()
    return {TENSORS_FILE: tensors, META_FILE: meta.encode()}


def from_files(files: Mapping[str, bytes]) -> NoveltyModel | None:
    """The model stored by `to_files`, or None for a version registered without one."""
    if TENSORS_FILE not in files or META_FILE not in files:
        return None
    return NoveltyModel.from_bytes(files[TENSORS_FILE], files[META_FILE].decode())


@dataclass(frozen=True)
class DayAlarm:
    """An image type (tag combination) with many novel images on one day.

    Attributes:
        group: the image type, then the further tags it was grouped by.
        novel: its novel images that day.
        total: its images that day (with a score).
        share: novel / total.
    """

    group: tuple[str, ...]
    novel: int
    total: int
    share: float

    @property
    def image_type(self) -> str:
        """The image type tag of the group."""
        return self.group[0]

    @property
    def name(self) -> str:
        """The group as one label, e.g. `xray-praline-tray-s2 / cam7`."""
        return " / ".join(self.group)


def day_alarms(
    image_types: Sequence[str] | np.ndarray,
    novel: np.ndarray,
    config: NoveltyConfig,
    *,
    threshold: float | None = None,
    tags: Sequence[tuple[str, ...]] | None = None,
) -> list[DayAlarm]:
    """Groups of one day's images whose novel share and count reach the configured minimums.

    Args:
        image_types: the image type of every image (N,).
        novel: boolean flags (N,) (`NoveltyModel.is_novel`), or float scores with `threshold`;
            NaN scores (images without features) are left out of the counts.
        config: supplies `min_share` and `min_count`.
        threshold: scores above it are novel (only with float `novel`).
        tags: further tags per image (N tuples), grouped by together with the image type.

    Returns:
        The alarms, highest share first (ties: by name).
    """
    flags, scored = _flags(np.asarray(novel), threshold)
    types = [str(t) for t in image_types]
    extra = [tuple(str(v) for v in t) for t in tags] if tags is not None else [()] * len(types)
    if not len(types) == len(extra) == len(flags):
        raise ValueError(f"lengths differ: {len(types)} types, {len(extra)} tags, {len(flags)}")
    counts: dict[tuple[str, ...], list[int]] = {}
    for group, flag, ok in zip(
        ((t, *e) for t, e in zip(types, extra, strict=True)), flags, scored, strict=True
    ):
        if ok:
            tally = counts.setdefault(group, [0, 0])
            tally[0] += int(flag)
            tally[1] += 1
    alarms = [
        DayAlarm(group, n, total, n / total)
        for group, (n, total) in counts.items()
        if n >= config.min_count and n / total >= config.min_share
    ]
    return sorted(alarms, key=lambda a: (-a.share, a.group))


def _flags(novel: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(novel flags, has-a-score flags) from boolean flags or from scores and a threshold."""
    if novel.dtype == bool:
        if threshold is not None:
            raise ValueError("a threshold applies to scores, not to boolean flags")
        return novel, np.ones(len(novel), bool)
    if threshold is None:
        raise ValueError("scores need a threshold (or pass NoveltyModel.is_novel flags)")
    scores = novel.astype(np.float64)
    scored = ~np.isnan(scores)
    return scored & (np.nan_to_num(scores, nan=-np.inf) > threshold), scored


def _checked(features: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"expected features (N, {dim or 'D'}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("a feature is not finite")
    return x


def _normalised(x: np.ndarray, config: NoveltyConfig) -> np.ndarray:
    if config.normalise == "none":
        return x
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _fit_mahalanobis(
    x: np.ndarray, types: np.ndarray, names: tuple[str, ...], config: NoveltyConfig
) -> dict[str, np.ndarray]:
    """Class means (T, D) and a whitening matrix L (D, D) with L L^T = the shrunk precision."""
    from sklearn.covariance import OAS, LedoitWolf

    x64 = x.astype(np.float64)
    labels = np.asarray([str(t) for t in types], dtype=object)
    means = np.stack([x64[labels == name].mean(axis=0) for name in names])
    index = {name: i for i, name in enumerate(names)}
    residuals = x64 - means[[index[label] for label in labels]]
    estimator = LedoitWolf if config.shrinkage == "ledoit_wolf" else OAS
    covariance = estimator(assume_centered=True).fit(residuals).covariance_
    whitening = _whitening(covariance)
    return {"means": means.astype(np.float32), "whitening": whitening.astype(np.float32)}


def _whitening(covariance: np.ndarray) -> np.ndarray:
    """L with L L^T = covariance^-1, from its eigen-decomposition (floored eigenvalues)."""
    values, vectors = np.linalg.eigh(covariance)
    floor = max(float(values.max()) * 1e-9, 1e-12)
    return vectors / np.sqrt(np.maximum(values, floor))


def _mahalanobis(x: np.ndarray, means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of x to the nearest mean."""
    w = whitening.astype(np.float64)
    wx, wm = x.astype(np.float64) @ w, means.astype(np.float64) @ w
    squared = (wx**2).sum(1)[:, None] - 2 * wx @ wm.T + (wm**2).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).astype(np.float32)


def _knn(x: np.ndarray, bank: np.ndarray, config: NoveltyConfig) -> np.ndarray:
    """Distance to the k-th nearest bank row: 1 - cosine (l2) or Euclidean (none)."""
    k = min(config.k, len(bank))
    if config.normalise == "l2":
        distances = 1.0 - x @ bank.T
    else:
        squared = (x**2).sum(1)[:, None] - 2 * x @ bank.T + (bank**2).sum(1)[None, :]
        distances = np.sqrt(np.maximum(squared, 0.0))
    return np.partition(distances, k - 1, axis=1)[:, k - 1].astype(np.float32)


def _subsample(x: np.ndarray, limit: int) -> np.ndarray:
    if len(x) <= limit:
        return x
    return x[np.linspace(0, len(x) - 1, limit).round().astype(np.int64)]
