"""A decoded, memory-mapped copy of a dataset version at one resolution (numpy only, no torch).

Layout: `<root>/<version_id>-<size>/` holds `images.u8` (N, size, size, 3 uint8), `masks.u8`
(N, size, size uint8 0/1) and `meta.json` (count, size and a fingerprint of the manifest's sample
ids and content hashes, in order). A cache is built in a temporary directory and renamed into
place whole, so a directory at the final path is always complete; a cache whose fingerprint does
not match the manifest is rebuilt, never reused.

Every image is resized to size x size without keeping its aspect ratio (image bilinear, which
Pillow antialiases when shrinking; mask nearest); inference must resize the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.images import InvalidImage, decode_pair
from maskfind_pipeline.storage.base import ObjectStore

FORMAT_VERSION = 1
_IMAGES, _MASKS, _META = "images.u8", "masks.u8", "meta.json"

Progress = Callable[[int, int], None]


class ContentMismatch(ValueError):
    """Bytes fetched from the store do not match the sha256 the manifest records."""


@dataclass(frozen=True, eq=False)
class DecodedArrays:
    """The decoded samples of one manifest, in manifest order, as read-only memory maps.

    Attributes:
        path: the cache directory.
        images: (N, size, size, 3) uint8 RGB.
        masks: (N, size, size) uint8, 0 or 1.
        sample_ids: the manifest's sample ids, row i describing images[i] and masks[i].
    """

    path: Path
    images: np.ndarray
    masks: np.ndarray
    sample_ids: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (e.g. to spawned DataLoader workers) as the path, never as the array contents.
        return (_open_arrays, (self.path, self.sample_ids, self.size))


def build_decoded(
    manifest: pa.Table,
    store: ObjectStore,
    cache: ContentCache,
    root: Path,
    *,
    version_id: str,
    size: int,
    max_workers: int = 8,
    progress: Progress | None = None,
) -> DecodedArrays:
    """Decode every manifest row once into memory-mapped arrays, or open the existing cache.

    Bytes come from `cache` by sha256, else from `store` (verified, then written back to the
    cache). A concurrent builder of the same cache that loses the final rename uses the winner's.

    Args:
        manifest: a dataset version's manifest (`MANIFEST_SCHEMA`); its row order is kept.
        store: where the manifest's image and mask keys live.
        cache: the local content cache consulted first.
        root: the directory holding decoded caches.
        version_id: the dataset version's id.
        size: the side, in pixels, every image and mask is resized to.
        max_workers: decoding threads.
        progress: called with (rows done, rows in total) while building.

    Raises:
        ContentMismatch: the store's bytes for a key differ from the manifest's sha256.
        InvalidImage: a pair no longer decodes (the message names the image key).
    """
    final = Path(root) / f"{version_id}-{size}"
    fingerprint = manifest_fingerprint(manifest, size)
    sample_ids = tuple(manifest.column("sample_id").to_pylist())
    existing = _open_if_matching(final, fingerprint, sample_ids, size)
    if existing is not None:
        return existing
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex}")
    try:
        _build(manifest, store, cache, tmp, size, max_workers, progress)
        _write_meta(tmp, len(sample_ids), size, fingerprint)
        return _publish(tmp, final, fingerprint, sample_ids, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def manifest_fingerprint(manifest: pa.Table, size: int) -> str:
    """A sha256 over the format, size and every row's (sample id, image sha, mask sha), in order."""
    digest = hashlib.sha256(f"decoded-v{FORMAT_VERSION}:{size}\n".encode())
    columns = ("sample_id", "image_sha256", "mask_sha256")
    for row in zip(*(manifest.column(c).to_pylist() for c in columns), strict=True):
        digest.update(("\t".join(row) + "\n").encode())
    return digest.hexdigest()


def fetch_verified(cache: ContentCache, store: ObjectStore, key: str, sha256: str) -> bytes:
    """The bytes of `key` from the cache by `sha256`, else from the store, checked and cached.

    Raises:
        ContentMismatch: the store's bytes do not hash to `sha256`.
    """
    data = cache.get(sha256)
    if data is not None:
        return data
    data = store.get(key)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ContentMismatch(f"{key}: store content has sha256 {actual}, manifest says {sha256}")
    cache.path(sha256).unlink(missing_ok=True)
    cache.put(data, sha256)
    return data


def _build(
    manifest: pa.Table,
    store: ObjectStore,
    cache: ContentCache,
    tmp: Path,
    size: int,
    max_workers: int,
    progress: Progress | None,
) -> None:
    tmp.mkdir()
    count = manifest.num_rows
    images = _create(tmp / _IMAGES, (count, size, size, 3))
    masks = _create(tmp / _MASKS, (count, size, size))
    rows = manifest.select(["image_key", "mask_key", "image_sha256", "mask_sha256"]).to_pylist()

    def decode_row(i: int) -> None:
        images[i], masks[i] = _decode_resized(cache, store, rows[i], size)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        futures = [pool.submit(decode_row, i) for i in range(count)]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                if progress is not None:
                    progress(done, count)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    for array in (images, masks):
        if isinstance(array, np.memmap):
            array.flush()


def _decode_resized(
    cache: ContentCache, store: ObjectStore, row: dict[str, str], size: int
) -> tuple[np.ndarray, np.ndarray]:
    image_key = row["image_key"]
    image_bytes = fetch_verified(cache, store, image_key, row["image_sha256"])
    mask_bytes = fetch_verified(cache, store, row["mask_key"], row["mask_sha256"])
    try:
        pair = decode_pair(image_bytes, mask_bytes, image_ext=image_key.rpartition(".")[2])
    except InvalidImage as exc:
        raise InvalidImage(f"{image_key}: {exc}") from exc
    return resize_pair(pair.image, pair.mask, size)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGB uint8 image (bilinear) and a boolean mask (nearest, as 0/1 uint8) to a square.

    This is the resize the decoded cache applies; inference must use the same one.
    """
    mask_u8 = mask.astype(np.uint8)
    if image.shape[:2] == (size, size):
        return image, mask_u8
    small = Image.fromarray(mask_u8).resize((size, size), Image.Resampling.NEAREST)
    return resize_image(image, size), np.asarray(small)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 image to a square, PIL bilinear: the rule of the cache and inference."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _create(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:
        path.touch()
        return np.zeros(shape, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)


def _write_meta(directory: Path, count: int, size: int, fingerprint: str) -> None:
    meta = {"format": FORMAT_VERSION, "count": count, "size": size, "fingerprint": fingerprint}
    (directory / _META).write_text(json.dumps(meta, indent=2))


def _publish(
    tmp: Path, final: Path, fingerprint: str, sample_ids: tuple[str, ...], size: int
) -> DecodedArrays:
    try:
        tmp.rename(final)
    except OSError:
        winner = _open_if_matching(final, fingerprint, sample_ids, size)
        if winner is not None:
            return winner
        stale = final.with_name(f".stale-{final.name}-{uuid.uuid4().hex}")
        final.rename(stale)
        tmp.rename(final)
        shutil.rmtree(stale, ignore_errors=True)
    return _open_arrays(final, sample_ids, size)


def _open_if_matching(
    final: Path, fingerprint: str, sample_ids: tuple[str, ...], size: int
) -> DecodedArrays | None:
    try:
        meta = json.loads((final / _META).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("count") != len(sample_ids):
        return None
    return _open_arrays(final, sample_ids, size)


def _open_arrays(path: Path, sample_ids: tuple[str, ...], size: int) -> DecodedArrays:
    count = len(sample_ids)
    images = _open_readonly(path / _IMAGES, (count, size, size, 3))
    masks = _open_readonly(path / _MASKS, (count, size, size))
    return DecodedArrays(path, images, masks, sample_ids)


def _open_readonly(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape))
    if os.path.getsize(path) != expected:
        raise ValueError(f"{path}: {os.path.getsize(path)} bytes, expected {expected}")
    if expected == 0:
        array = np.zeros(shape, dtype=np.uint8)
        array.flags.writeable = False
        return array
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
