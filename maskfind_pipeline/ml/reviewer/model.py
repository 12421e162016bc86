"""The reviewer: a 5-channel classifier of predicted masks, and the one definition of its input.

The reviewer sees the image, the mask model's probability map and the binary mask the mask model
hands downstream (`probabilities >= threshold`), and outputs logits of grade 1 (the mask is
right), 2 (imperfect but usable) and 3 (untrustworthy); `ReviewerSpec.grades` says which IoU
bands the grades stand for.

Architecture: an smp encoder (any smp or `tu-` timm encoder) whose first convolution takes 5
channels, global average and max pooling of its deepest feature maps (`pooled_stages` of them),
dropout and a linear head.
Pretrained 3-channel weights are loaded offline through `ml.weights.pretrained` and then adapted to
5 channels as smp adapts them for `in_channels > 3` (`patch_first_conv`): input channel i takes the
pretrained filter of RGB channel i mod 3, all scaled by 3/5, so the probability channel starts as a
copy of red's filter and the mask channel as green's.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from segmentation_models_pytorch.encoders import get_encoder
from segmentation_models_pytorch.encoders._utils import patch_first_conv
from torch import nn

from maskfind_pipeline.ml.device import Placement, select_device
from maskfind_pipeline.ml.reviewer.config import GRADES, ReviewerSpec
from maskfind_pipeline.ml.segmentation.config import ModelSpec
from maskfind_pipeline.ml.weights.pretrained import load_encoder_weights

if TYPE_CHECKING:
    from maskfind_pipeline.ml.reviewer.runtimes import ReviewerRuntime, RuntimeChoice

_log = logging.getLogger(__name__)

IN_CHANNELS = 5
ENCODER_DEPTH = 5
Threshold = float | np.ndarray | torch.Tensor


class InvalidReviewerWeights(ValueError):
    """Bytes that are not a safetensors state dict of the configured reviewer."""


class ReviewerNet(nn.Module):
    """smp encoder (5 input channels) -> average and max pooling of its deepest `stages`
    feature maps -> dropout -> a linear head of 3 grade logits."""

    def __init__(self, encoder: nn.Module, channels: list[int], dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.stages = len(channels)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * sum(channels), len(GRADES)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.encoder(inputs)[-self.stages :]
        pooled = [f.mean(dim=(2, 3)) for f in features] + [f.amax(dim=(2, 3)) for f in features]
        return self.head(torch.cat(pooled, dim=1).float())


def build_reviewer(spec: ReviewerSpec, *, pretrained: bool = True) -> ReviewerNet:
    """The reviewer network of `spec`: 5 input channels, 3 logits.

    Nothing is downloaded: with `pretrained` and `spec.encoder_weights` set, the 3-channel
    encoder weights come from a local source (`ml.weights.pretrained.load_encoder_weights`) before
    the first convolution is widened; otherwise all weights are random.

    Raises:
        PretrainedWeightsUnavailable: pretrained weights were asked for but none exist locally.
    """
    encoder = get_encoder(spec.encoder_name, in_channels=3, depth=ENCODER_DEPTH, weights=None)
    channels = [int(c) for c in encoder.out_channels[-spec.pooled_stages :]]
    model = ReviewerNet(encoder, channels, spec.dropout)
    loaded = None
    if pretrained:
        loaded = load_encoder_weights(model, _encoder_spec(spec))
        if loaded is not None:
            _log.info("reviewer encoder %s weights loaded from %s", spec.encoder_name, loaded)
    patch_first_conv(encoder, new_in_channels=IN_CHANNELS, pretrained=loaded is not None)
    return model


def _encoder_spec(spec: ReviewerSpec) -> ModelSpec:
    """The fields `ml.weights.pretrained` reads, as the mask model's spec type."""
    return ModelSpec(
        encoder_name=spec.encoder_name,
        encoder_weights=spec.encoder_weights,
        encoder_weights_path=spec.encoder_weights_path,
    )


def dequantize(probabilities: torch.Tensor) -> torch.Tensor:
    """float32 probabilities from uint8 round(p * 255); float input is returned as float32."""
    if probabilities.dtype == torch.uint8:
        return probabilities.float() / 255.0
    return probabilities.float()


def binary_mask(probabilities: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """`probabilities >= threshold` (bool, same shape), per sample when `threshold` is (B,).

    `probabilities` are float (compared in float32, the threshold rounded to it) or uint8
    (dequantised first by `dequantize`); their first dimension is the batch.
    """
    values = dequantize(probabilities)
    if isinstance(threshold, torch.Tensor):
        cut = threshold.to(values.device, torch.float32)
    else:
        cut = torch.as_tensor(np.asarray(threshold, dtype=np.float32), device=values.device)
    if cut.ndim == 1:
        cut = cut.view(-1, *([1] * (values.ndim - 1)))
    return values >= cut


def reviewer_inputs(
    images: torch.Tensor,
    probabilities: torch.Tensor,
    threshold: Threshold,
    spec: ReviewerSpec,
) -> torch.Tensor:
    """The reviewer's input: the one definition, in training and in production.

    Channels: the image normalised by `spec.mean`/`spec.std` (0..2), the probability map
    (3) and the binary mask `probabilities >= threshold` (4), both mapped from [0, 1] to
    [-1, 1]. The mask is taken at the probabilities' own size; where that differs from
    `spec.input_size`, all five channels are then resized together (bilinear, antialiased), so
    the mask channel holds the covered share of each pixel.

    Args:
        images: uint8 (B, 3, S, S), on any device.
        probabilities: (B, 1, S, S) float in [0, 1], or uint8 round(p * 255).
        threshold: the mask model's decision threshold: one float, or one per sample (B,).
        spec: the reviewer's spec.

    Returns:
        float32 (B, 5, R, R) on the images' device, R = `spec.input_size`.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (B, 3, S, S), got {images.dtype} {images.shape}")
    expected = (images.shape[0], 1, *images.shape[2:])
    if tuple(probabilities.shape) != expected:
        raise ValueError(f"expected probabilities {expected}, got {tuple(probabilities.shape)}")
    device = images.device
    probs = dequantize(probabilities.to(device))
    mask = binary_mask(probs, threshold).float()
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    image = images.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)
    inputs = torch.cat((image, probs.mul(2.0).sub_(1.0), mask.mul_(2.0).sub_(1.0)), dim=1)
    size = spec.input_size
    if inputs.shape[-2:] != (size, size):
        inputs = F.interpolate(
            inputs, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return inputs


def grade_logits(
    model: nn.Module,
    spec: ReviewerSpec,
    images: torch.Tensor,
    probabilities: torch.Tensor,
    threshold: Threshold,
    placement: Placement,
) -> torch.Tensor:
    """Grade logits (B, 3) of one batch, with `placement`'s device, memory format and autocast."""
    images = images.to(placement.device, non_blocking=True)
    inputs = reviewer_inputs(images, probabilities, threshold, spec)
    inputs = inputs.contiguous(memory_format=placement.memory_format)
    with placement.autocast():
        return model(inputs).float()


@torch.inference_mode()
def grade_probabilities(
    model: nn.Module,
    spec: ReviewerSpec,
    images: np.ndarray,
    probabilities: np.ndarray,
    threshold: Threshold,
    *,
    placement: Placement | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """P(grade 1), P(grade 2), P(grade 3) of each mask, (N, 3) float64, rows summing to 1.

    Args:
        model: a reviewer (put in eval mode here and back afterwards).
        spec: its spec.
        images: uint8 (N, S, S, 3).
        probabilities: (N, S, S) float in [0, 1] or uint8 round(p * 255).
        threshold: the mask model's threshold, one float or one per image (N,).
        placement: device and precision; default the model's device, float32 autocast rules
            of `select_device`.
        batch_size: images per forward pass.
    """
    if len(images) != len(probabilities):
        raise ValueError(f"{len(images)} images for {len(probabilities)} probability maps")
    placement = placement or select_device(str(next(model.parameters()).device))
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (len(images),))
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        batch = torch.from_numpy(np.ascontiguousarray(images[part])).permute(0, 3, 1, 2)
        probs = torch.from_numpy(np.ascontiguousarray(probabilities[part]))[:, None]
        logits = grade_logits(model, spec, batch, probs, thresholds[part].copy(), placement)
        out.append(torch.softmax(logits, dim=1).double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(GRADES)))


@dataclass
class ReviewerModel:
    """A loaded reviewer: network, spec and placement; grades batches of predictions.

    Like `ml.segmentation.predict.Predictor`, a loaded reviewer computes in float32 on the CPU;
    `to("cuda")` moves it with the training device's rules, `on_fastest_runtime` runs its
    network in the fastest runtime of this CPU (`ml.reviewer.runtimes`).
    """

    model: nn.Module
    spec: ReviewerSpec
    version: str = ""
    placement: Placement = field(
        default_factory=lambda: select_device("cpu", mixed_precision=False)
    )
    runtime: ReviewerRuntime | None = None
    """Where the network runs when set (its inputs are computed in torch on the CPU)."""

    @classmethod
    def from_weights(
        cls, spec: ReviewerSpec, weights: bytes, *, version: str = ""
    ) -> ReviewerModel:
        """Rebuild the network from `spec` and read `weights` with safetensors only."""
        try:
            state = load_safetensors(weights)
        except (SafetensorError, ValueError) as exc:
            digest = hashlib.sha256(weights).hexdigest()[:12]
            raise InvalidReviewerWeights(f"weights {digest}… are not safetensors: {exc}") from None
        model = build_reviewer(spec, pretrained=False)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InvalidReviewerWeights(f"weights do not fit {spec.encoder_name}: {exc}") from None
        return cls(model.eval(), spec, version)

    def to(self, device: str | None = None, *, mixed_precision: bool = True) -> ReviewerModel:
        """This reviewer on `device` with `ml.device`'s precision rules (the model moves); on a
        CPU that claims bfloat16 the precision is timed on this network (`ml.precision`)."""
        from maskfind_pipeline.ml.precision import settle

        size = self.spec.input_size
        placement = settle(
            select_device(device, mixed_precision=mixed_precision),
            self.model,
            (IN_CHANNELS, size, size),
            batch_size=64,
            training=False,
        )
        return replace(self, model=placement.prepare(self.model), placement=placement)

    @torch.inference_mode()
    def grade_batch(
        self, images: torch.Tensor, probabilities: torch.Tensor, threshold: Threshold
    ) -> torch.Tensor:
        """(B, 3) grade probabilities, float32 on the reviewer's device, for the mask model's
        uint8 input batch (B, 3, S, S) and its probabilities (B, 1, S, S)."""
        if self.runtime is not None:
            inputs = reviewer_inputs(images.cpu(), probabilities.cpu(), threshold, self.spec)
            return torch.softmax(self.runtime.logits(inputs), dim=1)
        logits = grade_logits(
            self.model, self.spec, images, probabilities, threshold, self.placement
        )
        return torch.softmax(logits, dim=1)

    def on_fastest_runtime(
        self, cache_dir: Path, *, batch_size: int = 32, candidates: tuple[str, ...] | None = None
    ) -> tuple[ReviewerModel, RuntimeChoice]:
        """This reviewer with its network in the fastest of torch (its precision measured),
        ONNX Runtime and OpenVINO on this CPU, and the choice: measured once per machine,
        version and library versions, cached in `cache_dir` (`ml.reviewer.runtimes`)."""
        from maskfind_pipeline.ml.reviewer import runtimes

        exports = runtimes.ReviewerExports(
            self.model, self.spec.model_dump_json(), self.spec.input_size, cache_dir
        )

        def open_runtime(name: str) -> ReviewerRuntime:
            if name == "torch":
                placed = self.to("cpu")
                return runtimes.TorchRuntime(placed.model, placed.placement)
            if name == "onnxruntime":
                return runtimes.OnnxRuntime(exports.onnx())
            if name == "openvino":
                return runtimes.OpenVinoRuntime(exports.openvino())
            raise ValueError(f"unknown reviewer runtime {name!r}")

        choice = runtimes.choose_runtime(
            open_runtime,
            {**runtimes.machine_key(), **exports.onnx_inputs},
            cache_dir,
            input_size=self.spec.input_size,
            candidates=candidates or runtimes.RUNTIMES,
            batch_size=batch_size,
        )
        return replace(self, runtime=choice.runtime), choice
