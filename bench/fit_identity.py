"""Train the tiny mask model (float32 and mixed precision: augmentation, EMA, low-res start,
onecycle) and the tiny reviewer (augmented); print each history and a sha256 of the weights.

Run it on two commits (same MASKFIND_PRECISION_CACHE, so both train in the same precision) and
compare the JSON: a refactor of the fit loop must leave every number unchanged.

    MASKFIND_PRECISION_CACHE=/tmp/p.json PYTHONPATH=. python -m bench.fit_identity > after.json
"""

import json
import tempfile
from pathlib import Path

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.distributed import state_digest
from maskfind_pipeline.ml.reviewer.config import ReviewerTrainConfig
from maskfind_pipeline.ml.reviewer.train import train_reviewer
from maskfind_pipeline.ml.segmentation.config import ModelConfig, TrainConfig
from maskfind_pipeline.ml.segmentation.train import make_train_loaders, train
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.manifests import manifest_of
from tests.unit.ml.test_reviewer import TINY as RTINY
from tests.unit.ml.test_reviewer import squares_to_review

SIZE = 64
TINY = ModelConfig(
    encoder_name="resnet18",
    encoder_weights=None,
    input_size=SIZE,
    decoder_channels=(32, 16, 16, 8, 8),
)
out = {}
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    store = LocalObjectStore(root / "store")
    keys = synthetic.generate(store, synthetic.DEFAULT_TYPES[:4], 6, size=SIZE)
    manifest = manifest_of(
        store,
        keys,
        size=SIZE,
        split=lambda i: "val" if i % 3 == 0 else "train",
        failure=lambda i: i % 4 == 1,
    )
    decoded = build_decoded(
        manifest, store, ContentCache(root / "cache"), root / "decoded", version_id="v", size=SIZE
    )
    for mp in (False, True):
        config = TrainConfig(
            epochs=3,
            batch_size=4,
            learning_rate=3e-3,
            augment=AugmentConfig(enabled=True),
            ema_decay=0.9,
            mixed_precision=mp,
            device="cpu",
            low_res_size=32,
            low_res_share=0.3,
        )
        options = select_device("cpu", mixed_precision=mp)
        result = train(
            TINY,
            config,
            make_train_loaders(manifest, decoded, config, options),
            image_types=manifest.column("image_type").to_pylist(),
            sources=manifest.column("source").to_pylist(),
            progress_bar=False,
        )
        out[f"mask_mp{mp}"] = {
            "history": [
                {k: v for k, v in h.items() if k not in ("seconds", "images_per_second")}
                for h in result.history
            ],
            "digest": state_digest(result.model.state_dict()),
            "best": result.best_epoch,
            "stop": result.stop_reason,
            "threshold": result.config.threshold,
            "precision": result.device.get("precision"),
        }
train_s, val_s = squares_to_review(48, 0), squares_to_review(24, 1)
rc = ReviewerTrainConfig(
    epochs=3,
    batch_size=16,
    learning_rate=3e-3,
    device="cpu",
    mixed_precision=False,
    early_stopping_patience=0,
    augment=True,
)
r = train_reviewer(RTINY, rc, train_s, val_s, progress_bar=False)
out["reviewer"] = {
    "history": [
        {k: v for k, v in h.items() if k not in ("seconds", "samples_per_second")}
        for h in r.history
    ],
    "digest": state_digest(r.model.state_dict()),
    "best": r.best_epoch,
}
print(json.dumps(out, indent=1))
