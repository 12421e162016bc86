"""The benchmarks' baseline dataset: read and decode every pair from the store on each access."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maskfind_pipeline.data.decoded import resize_pair
from maskfind_pipeline.data.images import decode_pair
from maskfind_pipeline.storage.base import ObjectStore


class NaiveDataset(Dataset[dict[str, Any]]):
    """Manifest rows served the slow way: store GETs, PIL decode and resize at every access."""

    def __init__(self, store: ObjectStore, rows: list[dict[str, Any]], size: int) -> None:
        self.store, self.rows, self.size = store, rows, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        ext = row["image_key"].rpartition(".")[2]
        pair = decode_pair(
            self.store.get(row["image_key"]), self.store.get(row["mask_key"]), image_ext=ext
        )
        image, mask = resize_pair(pair.image, pair.mask, self.size)
        return {
            "image": torch.from_numpy(np.array(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "weight": torch.tensor(row["weight"], dtype=torch.float32),
            "index": index,
        }
