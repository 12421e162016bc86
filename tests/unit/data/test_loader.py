"""The decoded cache and the torch loaders, on a few dozen tiny generated samples."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from maskfind_pipeline import synthetic
from maskfind_pipeline.data import decoded as decoded_module
from maskfind_pipeline.data.augment_config import AugmentConfig
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import ContentMismatch, DecodedArrays, build_decoded
from maskfind_pipeline.data.images import decode_pair
from maskfind_pipeline.data.loader import MaskDataset, make_loaders
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.manifests import manifest_of as make_manifest

GENERATED, SIZE = 48, 32
SPLIT_CYCLE = ("train", "train", "train", "val", "test")
GEOMETRY_ONLY = AugmentConfig(enabled=True, brightness=0, contrast=0, saturation=0, hue=0)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalObjectStore, pa.Table]:
    store = LocalObjectStore(tmp_path_factory.mktemp("store"))
    keys = synthetic.generate(store, synthetic.DEFAULT_TYPES[:6], 5, size=GENERATED)
    return store, manifest_of(store, keys)


def manifest_of(store: LocalObjectStore, image_keys: list[str]) -> pa.Table:
    return make_manifest(
        store,
        image_keys,
        size=GENERATED,
        split=lambda i: SPLIT_CYCLE[i % len(SPLIT_CYCLE)],
        failure=lambda i: i % 7 == 0,
        failure_weight=2.0,
    )


def build(
    source: tuple[LocalObjectStore, pa.Table],
    root: Path,
    manifest: pa.Table | None = None,
    **options: Any,
) -> DecodedArrays:
    store, default = source
    cache = options.pop("cache", None) or ContentCache(root / "content")
    table = default if manifest is None else manifest
    return build_decoded(
        table, store, cache, root / "decoded", version_id="v1", size=SIZE, **options
    )


def expected_pair(store: LocalObjectStore, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    ext = row["image_key"].rpartition(".")[2]
    pair = decode_pair(store.get(row["image_key"]), store.get(row["mask_key"]), image_ext=ext)
    image = Image.fromarray(pair.image).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    mask = Image.fromarray(pair.mask.astype(np.uint8)).resize(
        (SIZE, SIZE), Image.Resampling.NEAREST
    )
    return np.asarray(image), np.asarray(mask)


def assert_matches_direct_decode(
    store: LocalObjectStore, manifest: pa.Table, arrays: DecodedArrays
) -> None:
    assert arrays.sample_ids == tuple(manifest.column("sample_id").to_pylist())
    assert arrays.images.shape == (manifest.num_rows, SIZE, SIZE, 3)
    for i, row in enumerate(manifest.to_pylist()):
        image, mask = expected_pair(store, row)
        np.testing.assert_array_equal(arrays.images[i], image)
        np.testing.assert_array_equal(arrays.masks[i], mask)


def count_decodes(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[int]:
    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if fail_at is not None and len(calls) >= fail_at:
            raise RuntimeError("simulated crash")
        return decode_pair(*args, **kwargs)

    monkeypatch.setattr(decoded_module, "decode_pair", counting)
    return calls


def test_decoded_arrays_equal_a_direct_decode_and_resize(source, tmp_path: Path) -> None:
    store, manifest = source
    progress: list[tuple[int, int]] = []
    arrays = build(source, tmp_path, max_workers=4, progress=lambda d, t: progress.append((d, t)))
    assert_matches_direct_decode(store, manifest, arrays)
    assert set(np.unique(arrays.masks)) == {0, 1}
    assert isinstance(arrays.images, np.ndarray) and isinstance(arrays.masks, np.ndarray)
    assert not arrays.images.flags.writeable and not arrays.masks.flags.writeable
    assert progress[-1] == (manifest.num_rows, manifest.num_rows) and len(progress) == 30
    assert len(list((tmp_path / "decoded" / "32-r1" / "packs").glob("*/meta.json"))) == 1


def test_second_build_decodes_nothing(source, tmp_path: Path, monkeypatch) -> None:
    first = build(source, tmp_path)
    calls = count_decodes(monkeypatch, fail_at=1)
    second = build(source, tmp_path)
    assert calls == []
    assert second.path == first.path
    np.testing.assert_array_equal(second.images, first.images)


def test_store_bytes_are_verified_and_written_back_to_the_cache(source, tmp_path: Path) -> None:
    _, manifest = source
    cache = ContentCache(tmp_path / "content")
    build(source, tmp_path, cache=cache)
    for sha in manifest.column("image_sha256").to_pylist():
        assert cache.get(sha) is not None
    bad = manifest.set_column(
        manifest.schema.get_field_index("mask_sha256"),
        "mask_sha256",
        pa.array(["0" * 64] * manifest.num_rows),
    )
    with pytest.raises(ContentMismatch, match=manifest["mask_key"][0].as_py()):
        build(source, tmp_path / "other", bad, max_workers=1)


def test_corrupted_cached_bytes_fall_back_to_the_store(source, tmp_path: Path) -> None:
    store, manifest = source
    cache = ContentCache(tmp_path / "content")
    for key in manifest.column("image_key").to_pylist():
        sha = cache.put(store.get(key))
        cache.path(sha).write_bytes(b"garbage")
    arrays = build(source, tmp_path, cache=cache)
    assert_matches_direct_decode(store, manifest, arrays)
    first = manifest["image_key"][0].as_py()
    assert cache.get(manifest["image_sha256"][0].as_py()) == store.get(first)


def test_the_same_content_in_another_order_decodes_nothing(source, tmp_path, monkeypatch) -> None:
    store, manifest = source
    build(source, tmp_path)
    other = manifest.take(list(reversed(range(manifest.num_rows))))
    calls = count_decodes(monkeypatch)
    arrays = build(source, tmp_path, other)
    assert calls == []
    assert_matches_direct_decode(store, other, arrays)
    assert len(list((tmp_path / "decoded" / "32-r1" / "packs").iterdir())) == 1


def test_a_crashed_build_leaves_nothing_that_looks_complete(source, tmp_path, monkeypatch) -> None:
    store, manifest = source
    count_decodes(monkeypatch, fail_at=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(source, tmp_path, max_workers=2)
    assert list((tmp_path / "decoded" / "32-r1" / "packs").iterdir()) == []
    monkeypatch.setattr(decoded_module, "decode_pair", decode_pair)
    assert_matches_direct_decode(store, manifest, build(source, tmp_path))


def test_a_builder_that_loses_the_rename_race_uses_the_winner(source, tmp_path: Path) -> None:
    winners: list[DecodedArrays] = []

    def rival_finishes_first(done: int, total: int) -> None:
        if done == total and not winners:
            winners.append(build(source, tmp_path))

    loser = build(source, tmp_path, progress=rival_finishes_first)
    assert loser.path == winners[0].path
    np.testing.assert_array_equal(loser.masks, winners[0].masks)
    assert len(list((tmp_path / "decoded" / "32-r1" / "packs").iterdir())) == 1


def test_decoded_arrays_pickle_as_a_path(source, tmp_path: Path) -> None:
    arrays = build(source, tmp_path)
    data = pickle.dumps(arrays)
    assert len(data) < 10_000
    again = pickle.loads(data)
    np.testing.assert_array_equal(again.images, arrays.images)
    assert again.sample_ids == arrays.sample_ids


def test_items_are_uint8_images_binary_masks_and_weights(source, tmp_path: Path) -> None:
    arrays = build(source, tmp_path)
    weights = np.arange(len(arrays), dtype=np.float32)
    item = MaskDataset(arrays, [3, 7], weights)[1]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, SIZE, SIZE)
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, SIZE, SIZE)
    np.testing.assert_array_equal(item["image"].numpy(), arrays.images[7].transpose(2, 0, 1))
    np.testing.assert_array_equal(item["mask"][0].numpy(), arrays.masks[7])
    assert item["index"] == 7 and float(item["weight"]) == 7.0


def test_a_deterministic_flip_moves_image_and_mask_together(source, tmp_path: Path) -> None:
    arrays = build(source, tmp_path)
    config = GEOMETRY_ONLY.model_copy(update=dict(flip_p=1.0, rotate90=False, affine_p=0.0))
    item = MaskDataset(arrays, [0], augment=config)[0]
    flipped = np.flip(arrays.images[0], axis=(0, 1)).transpose(2, 0, 1)
    np.testing.assert_array_equal(item["image"].numpy(), flipped)
    np.testing.assert_array_equal(item["mask"][0].numpy(), np.flip(arrays.masks[0], axis=(0, 1)))


def dihedral(array: np.ndarray) -> list[np.ndarray]:
    rotations = [np.rot90(array, k, axes=(0, 1)) for k in range(4)]
    return rotations + [np.flip(r, axis=1) for r in rotations]


def test_flips_and_rotations_apply_the_same_transform_to_both(source, tmp_path: Path) -> None:
    arrays = build(source, tmp_path)
    config = GEOMETRY_ONLY.model_copy(update=dict(affine_p=0.0))
    dataset = MaskDataset(arrays, range(len(arrays)), augment=config)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        image = item["image"].numpy().transpose(1, 2, 0)
        which = [j for j, d in enumerate(dihedral(arrays.images[i])) if np.array_equal(d, image)]
        assert which, "the image is not a flip/rotation of the original"
        mask = item["mask"][0].numpy()
        assert np.array_equal(dihedral(arrays.masks[i])[which[0]], mask)
        seen.add(which[0])
    assert len(seen) > 3


def test_affine_and_colour_keep_the_mask_binary_and_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 64, 64), np.uint8)
    for m in masks:
        y, x = rng.integers(8, 32, size=2)
        m[y : y + 24, x : x + 20] = 1
    images = np.repeat((masks * 255)[..., None], 3, axis=3)
    arrays = DecodedArrays(tmp_path, images, masks, tuple(str(i) for i in range(8)))
    config = GEOMETRY_ONLY.model_copy(update=dict(affine_p=1.0, degrees=20))
    torch.manual_seed(1)
    for item in MaskDataset(arrays, range(8), augment=config):
        mask = item["mask"][0].numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0}
        agreement = ((item["image"][0].numpy() > 127) == (mask > 0)).mean()
        assert agreement > 0.97
    jittered = MaskDataset(arrays, range(8), augment=AugmentConfig(enabled=True))[0]
    assert set(np.unique(jittered["mask"].numpy())) <= {0.0, 1.0}


def epoch_indices(loader: Any) -> list[int]:
    return [int(i) for batch in loader for i in batch["index"]]


def test_train_order_follows_the_seed_and_val_is_not_shuffled(source, tmp_path: Path) -> None:
    _, manifest = source
    arrays = build(source, tmp_path)

    def train_order(seed: int) -> list[int]:
        loaders = make_loaders(manifest, arrays, batch_size=4, augment=None, seed=seed)
        return epoch_indices(loaders["train"])

    assert train_order(1) == train_order(1)
    assert train_order(1) != train_order(2)
    loaders = make_loaders(manifest, arrays, batch_size=4, augment=None, seed=1)
    assert set(loaders) == {"train", "val", "test"}
    splits = np.asarray(manifest.column("split").to_pylist())
    assert epoch_indices(loaders["val"]) == np.flatnonzero(splits == "val").tolist()
    assert sorted(train_order(1)) == np.flatnonzero(splits == "train").tolist()
    batch = next(iter(loaders["val"]))
    assert batch["image"].dtype == torch.uint8 and batch["weight"].shape == (4,)


def test_augmented_workers_repeat_exactly_for_a_seed(source, tmp_path: Path) -> None:
    _, manifest = source
    arrays = build(source, tmp_path)
    config = AugmentConfig(enabled=True)

    def first_epoch() -> tuple[list[int], torch.Tensor]:
        loader = make_loaders(
            manifest, arrays, batch_size=6, num_workers=2, augment=config, seed=3
        )["train"]
        batches = list(loader)
        images = torch.cat([b["image"] for b in batches])
        return [int(i) for b in batches for i in b["index"]], images

    order, images = first_epoch()
    again_order, again_images = first_epoch()
    assert order == again_order and torch.equal(images, again_images)
    plain = make_loaders(manifest, arrays, batch_size=6, augment=None, seed=3)["train"]
    assert epoch_indices(plain) == order


def test_loaders_refuse_another_manifest_and_skip_absent_splits(source, tmp_path: Path) -> None:
    _, manifest = source
    arrays = build(source, tmp_path)
    with pytest.raises(ValueError, match="another manifest"):
        make_loaders(manifest.slice(1), arrays, batch_size=4, augment=None, seed=0)
    no_test = manifest.filter(pa.array([s != "test" for s in manifest["split"].to_pylist()]))
    subset = build(source, tmp_path / "subset", no_test)
    assert set(make_loaders(no_test, subset, batch_size=4, augment=None, seed=0)) == {
        "train",
        "val",
    }
