"""How a production day is predicted (torch-free: the Dagster definitions load it)."""

from __future__ import annotations

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.ml.backends.config import BackendConfig


class ProductionOptions(CoreConfig):
    """How a production day is predicted."""

    batch_size: int = 32
    """Images per model batch (the champion and the reviewer see the same batch)."""
    io_workers: int = 8
    """Threads fetching and decoding images ahead of the model, and writing masks back."""
    commit_every: int = 256
    """Images per committed log part: a crash loses at most this much work."""
    max_pixels: int = 40_000_000
    """Images with more pixels are refused before decoding (as ingest refuses them); a file
    larger than 64 KiB is refused by its header, before it is fetched whole."""
    max_image_bytes: int = 256 * 1024 * 1024
    """Files larger than this (by their listed size) are refused without being fetched."""
    max_decoding_pixels: int = 80_000_000
    """Pixels being fetched and decoded at once by all the I/O threads (peak memory: about 7
    bytes a pixel); an image larger than this is decoded alone."""
    max_unwritten_mask_pixels: int = 160_000_000
    """Full-size mask pixels waiting to be encoded and written back (1 byte a pixel)."""
    backend: BackendConfig = BackendConfig()
    """The champion's inference backend: named, or the fastest here (measured once per run)."""
    gallery_per_type: int = 4
    """Worst-graded masks per image type shown in the materialization's gallery."""
