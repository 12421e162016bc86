"""Regenerate the golden model files. Run only for an intentional change of model outputs:

.venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.model import build_model
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes

HERE = Path(__file__).parent
CONFIG = ModelConfig(
    encoder_name="tu-mobilenetv3_small_050",
    encoder_weights=None,
    input_size=64,
    decoder_channels=(16, 8, 8, 8, 8),
    threshold=0.42,
)


def main() -> None:
    torch.manual_seed(1234)
    model = build_model(CONFIG, pretrained=False).eval()
    weights = weights_to_bytes(model)
    (HERE / "model.json").write_text(CONFIG.to_json())
    (HERE / "model.safetensors").write_bytes(weights)
    images = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(99)
    )
    logits = Predictor.from_weights(CONFIG, weights).logits(images).contiguous()
    save_file({"images": images, "logits": logits}, HERE / "io.safetensors")
    print(f"wrote golden files to {HERE}: weights {len(weights) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
