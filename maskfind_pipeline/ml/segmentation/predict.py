"""A ready-to-use predictor: model + its preprocessing + its threshold, loaded without pickle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from maskfind_pipeline.data.decoded import resize_image
from maskfind_pipeline.ml.device import Placement, select_device
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.inference import forward, predict_logits
from maskfind_pipeline.ml.segmentation.model import build_model


class InvalidWeights(ValueError):
    """Bytes that are not a safetensors state dict matching the configured architecture."""


def weights_to_bytes(model: torch.nn.Module) -> bytes:
    """The model's state dict as safetensors bytes (contiguous CPU tensors)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state)


def model_input(image: np.ndarray, size: int) -> torch.Tensor:
    """An RGB uint8 image (H,W,3) as the model sees it: uint8 (3,size,size), resized as the
    training cache resizes (`data.decoded.resize_image`)."""
    return torch.from_numpy(np.array(resize_image(image, size))).permute(2, 0, 1)


def to_image_size(probabilities: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Probabilities (1,S,S) at the model's size as float32 (height,width), bilinear."""
    restored = F.interpolate(
        probabilities[None].float(), size=(height, width), mode="bilinear", align_corners=False
    )
    return restored[0, 0].cpu().numpy().astype(np.float32, copy=False)


INFERENCE_BATCH = 32
"""The batch size the precision probe assumes for inference (production's)."""


def _exact_cpu() -> Placement:
    return select_device("cpu", mixed_precision=False)


@dataclass
class Predictor:
    """Segment uint8 RGB images of any size with a registered model version.

    A loaded predictor computes in float32 on the CPU, so the same version always gives the
    same logits (the golden test holds it to that); `to("cuda")` moves it to a GPU with the
    training device's rules (autocast, channels_last).
    """

    model: torch.nn.Module
    config: ModelConfig
    version: str = ""
    placement: Placement = field(default_factory=_exact_cpu)

    @classmethod
    def from_weights(cls, config: ModelConfig, weights: bytes, *, version: str = "") -> Predictor:
        """Rebuild the architecture from `config` and read `weights` with safetensors only."""
        try:
            state = load_safetensors(weights)
        except (SafetensorError, ValueError) as exc:
            digest = hashlib.sha256(weights).hexdigest()[:12]
            raise InvalidWeights(f"weights {digest}… are not a safetensors file: {exc}") from None
        model = build_model(config, pretrained=False)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InvalidWeights(
                f"weights do not fit {config.arch}/{config.encoder_name}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return cls(model.eval(), config, version)

    def to(self, device: str | None = None, *, mixed_precision: bool = True) -> Predictor:
        """This predictor on `device` (None: CUDA when available) with `ml.device`'s precision
        rules; `mixed_precision=False` keeps float32. The model moves in place. On a CPU that
        claims bfloat16 the precision is timed on this model (`ml.precision`, cached)."""
        from maskfind_pipeline.ml.precision import settle

        size = self.config.input_size
        placement = settle(
            select_device(device, mixed_precision=mixed_precision),
            self.model,
            (3, size, size),
            batch_size=INFERENCE_BATCH,
            training=False,
        )
        return replace(self, model=placement.prepare(self.model), placement=placement)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, *, tta: bool = True) -> torch.Tensor:
        """Logits (B,1,H,W), float32 on the predictor's device, for uint8 images (B,3,H,W)
        already at the model's input size: averaged over the config's test-time augmentation,
        or of the plain forward pass alone with `tta=False`."""
        if tta:
            return predict_logits(self.model, self.config, images, self.placement)
        return forward(self.model, self.config, images, self.placement).float()

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Product probability per pixel (H,W float32) for one RGB uint8 image (H,W,3).

        The image is resized as the training cache resizes (`data.decoded.resize_image`), and
        the probabilities are resized back to the image's own size.
        """
        tensor = model_input(image, self.config.input_size)[None]
        probs = torch.sigmoid(self.logits(tensor))
        return to_image_size(probs[0], *image.shape[:2])

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        """Boolean product mask (H,W) at the version's tuned threshold."""
        return self.probabilities(image) >= self.config.threshold
