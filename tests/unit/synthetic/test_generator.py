"""The synthetic generator: determinism, exact masks, a task Otsu cannot solve, the store layout."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from maskfind_pipeline.storage import LocalObjectStore, ObjectStore
from maskfind_pipeline.synthetic import (
    DEFAULT_TYPES,
    PRODUCTS,
    UNSEEN_TYPES,
    ImageType,
    contact_sheet,
    encode_sample,
    generate,
    generate_failures,
    generate_production,
    relabel_production,
    render_contact_sheet,
    render_sample,
    resolve_types,
    sample_rng,
)
from maskfind_pipeline.synthetic import scene as scene_module
from maskfind_pipeline.synthetic.shapes import draw_product
from tests.support.otsu import iou, otsu_iou

ALL_TYPES = DEFAULT_TYPES + UNSEEN_TYPES


@pytest.fixture
def new_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], LocalObjectStore]:
    """Fresh local stores (the embedded default store, not a fake)."""
    return lambda: LocalObjectStore(tmp_path_factory.mktemp("store"))


def contents(store: ObjectStore) -> dict[str, bytes]:
    return {info.key: store.get(info.key) for info in store.list()}


def tag_map(store: ObjectStore) -> dict[str, dict[str, str]]:
    return {info.key: store.tags(info.key) for info in store.list()}


def _render(image_type: ImageType, index: int, seed: int = 0, size: int = 64):
    return render_sample(image_type, sample_rng(seed, image_type, index), size)


@pytest.mark.parametrize("image_type", ALL_TYPES, ids=lambda t: t.name)
def test_every_type_renders_with_its_channel_count(image_type: ImageType) -> None:
    sample = _render(image_type, 0)
    channels = (64, 64, 3) if image_type.camera == "color2d" else (64, 64)
    assert sample.image.shape == channels and sample.image.dtype == np.uint8
    assert sample.mask.shape == (64, 64) and sample.mask.dtype == np.bool_


@pytest.mark.parametrize("image_type", DEFAULT_TYPES[:4], ids=lambda t: t.name)
def test_same_seed_gives_identical_bytes_and_another_seed_does_not(image_type: ImageType) -> None:
    first, again, other = _render(image_type, 3), _render(image_type, 3), _render(image_type, 3, 1)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.mask.tobytes() == again.mask.tobytes()
    assert first.image.tobytes() != other.image.tobytes()
    assert first.mask.tobytes() != other.mask.tobytes()


def test_masks_are_neither_empty_nor_full() -> None:
    fractions = [_render(t, i).mask.mean() for t in DEFAULT_TYPES for i in range(5)]
    assert all(0 < f < 0.9 for f in fractions), fractions
    assert 0.05 < float(np.mean(fractions)) < 0.5


def test_grayscale_cameras_differ_inside_and_outside_the_mask() -> None:
    for image_type in DEFAULT_TYPES:
        sample = _render(image_type, 1, size=128)
        grey = sample.image.astype(np.float32).reshape(128, 128, -1).mean(axis=2)
        inside, outside = grey[sample.mask], grey[~sample.mask]
        assert inside.std() > 0 and outside.std() > 0, image_type.name


def test_adding_a_type_does_not_change_the_samples_of_others(
    new_store: Callable[[], LocalObjectStore],
) -> None:
    alone, with_more = new_store(), new_store()
    generate(alone, [DEFAULT_TYPES[1]], 2, size=32)
    generate(with_more, [DEFAULT_TYPES[0], DEFAULT_TYPES[1]], 3, size=32)
    for key, data in contents(alone).items():
        assert contents(with_more)[key] == data


def test_otsu_baseline_fails_on_the_task() -> None:
    per_type = {
        t.name: float(
            np.mean([otsu_iou(s.image, s.mask) for s in (_render(t, i, 5, 128) for i in range(8))])
        )
        for t in DEFAULT_TYPES
    }
    table = "\n".join(f"{name}: {value:.3f}" for name, value in per_type.items())
    assert float(np.mean(list(per_type.values()))) < 0.9, table


def test_otsu_baseline_solves_an_easy_image() -> None:
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:30] = True
    assert otsu_iou(np.where(mask, 30, 200).astype(np.uint8), mask) == 1.0
    assert otsu_iou(np.where(mask, 220, 40).astype(np.uint8), mask) == 1.0


def test_iou() -> None:
    empty = np.zeros((4, 4), bool)
    half = empty.copy()
    half[:2] = True
    assert iou(empty, empty) == 1.0
    assert iou(half, empty) == 0.0
    assert iou(half, np.ones((4, 4), bool)) == 0.5


def test_names_parse_back() -> None:
    for image_type in ALL_TYPES:
        assert ImageType.parse(image_type.name) == image_type
    assert not set(DEFAULT_TYPES) & set(UNSEEN_TYPES)
    for field in ("camera", "product", "background"):
        assert {getattr(t, field) for t in DEFAULT_TYPES} == {getattr(t, field) for t in ALL_TYPES}


def test_resolve_types() -> None:
    assert resolve_types(None) == list(DEFAULT_TYPES) == resolve_types("all")
    assert resolve_types("unseen") == list(UNSEEN_TYPES)
    assert resolve_types("3") == list(DEFAULT_TYPES[:3])
    names = [DEFAULT_TYPES[2].name, DEFAULT_TYPES[0].name]
    assert resolve_types(",".join(names)) == [DEFAULT_TYPES[2], DEFAULT_TYPES[0]]
    assert resolve_types(names + names) == [DEFAULT_TYPES[2], DEFAULT_TYPES[0]]


@pytest.mark.parametrize(
    "spec", ["bogus", "color2d-choc_bar-sky-s1", "infrared-wafer-tray-s1", "", " , "]
)
def test_resolve_types_rejects_unknown_names_and_lists_valid_ones(spec: str) -> None:
    with pytest.raises(ValueError, match=DEFAULT_TYPES[0].name):
        resolve_types(spec)


@pytest.mark.parametrize("spec", ["0", "99"])
def test_resolve_types_rejects_counts_out_of_range(spec: str) -> None:
    with pytest.raises(ValueError, match="between 1 and"):
        resolve_types(spec)


def test_encode_sample_uses_jpeg_for_colour_and_png_otherwise() -> None:
    for image_type in (DEFAULT_TYPES[0], DEFAULT_TYPES[1]):
        sample = _render(image_type, 0)
        image_bytes, ext, mask_bytes = encode_sample(sample, image_type)
        expected = ("jpg", "JPEG") if image_type.camera == "color2d" else ("png", "PNG")
        assert (ext, Image.open(io.BytesIO(image_bytes)).format) == expected
        mask = np.asarray(Image.open(io.BytesIO(mask_bytes)))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, sample.mask)
        if ext == "png":
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(image_bytes))), sample.image)


def test_generate_writes_the_labeled_layout_with_tags(
    new_store: Callable[[], LocalObjectStore],
) -> None:
    store, calls = new_store(), []
    types = [DEFAULT_TYPES[0], DEFAULT_TYPES[1]]
    keys = generate(
        store, types, 2, seed=7, size=32, extra_tags={"batch": "b1"}, progress=calls.append
    )
    assert keys == [
        f"labeled/{t.name}-0007-{i:06d}.{'jpg' if t.camera == 'color2d' else 'png'}"
        for t in types
        for i in range(2)
    ]
    assert calls == [1, 2, 3, 4]
    assert len(contents(store)) == 8
    for key, image_type in zip(keys, [types[0]] * 2 + [types[1]] * 2, strict=True):
        tags = store.tags(key)
        assert tags["image_type"] == image_type.name and tags["batch"] == "b1"
        assert (tags["camera"], tags["product"], tags["station"]) == (
            image_type.camera,
            image_type.product,
            image_type.station,
        )
        dt.datetime.strptime(tags["captured_at"], "%Y-%m-%dT%H:%M:%SZ")
        mask = np.asarray(Image.open(io.BytesIO(store.get(key.rsplit(".", 1)[0] + ".mask.png"))))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}


def test_generate_is_repeatable_and_extends_without_changes(
    new_store: Callable[[], LocalObjectStore],
) -> None:
    first, second = new_store(), new_store()
    generate(first, DEFAULT_TYPES[:2], 2, size=32)
    generate(second, DEFAULT_TYPES[:2], 1, size=32)
    generate(second, DEFAULT_TYPES[:2], 1, size=32, start_index=1)
    assert contents(first) == contents(second) and tag_map(first) == tag_map(second)


def test_generate_without_masks(new_store: Callable[[], LocalObjectStore]) -> None:
    store = new_store()
    keys = generate(store, DEFAULT_TYPES[:1], 2, size=32, with_masks=False, prefix="extra")
    assert sorted(contents(store)) == sorted(keys) and all(k.startswith("extra/") for k in keys)


def test_generate_production_writes_one_day_without_masks(
    new_store: Callable[[], LocalObjectStore],
) -> None:
    store = new_store()
    day = dt.date(2025, 3, 4)
    keys = generate_production(store, DEFAULT_TYPES[:2], 2, day=day, size=32)
    assert sorted(contents(store)) == sorted(keys) and len(keys) == 4
    assert all(k.startswith("production/2025-03-04/") for k in keys)
    assert all(store.tags(k)["captured_at"].startswith("2025-03-04T") for k in keys)
    labeled = new_store()
    generate(labeled, DEFAULT_TYPES[:2], 2, size=32)
    assert not set(contents(store).values()) & set(contents(labeled).values())


def test_generate_failures_tags_the_failed_model(new_store: Callable[[], LocalObjectStore]) -> None:
    store = new_store()
    keys = generate_failures(store, DEFAULT_TYPES[:1], 2, failed_model_version="7", size=32)
    assert all(k.startswith("failures/") for k in keys) and len(contents(store)) == 4
    for key in keys:
        tags = store.tags(key)
        assert tags["failed_model_version"] == "7" and tags["reported_at"] > tags["captured_at"]
        assert store.exists(key.rsplit(".", 1)[0] + ".mask.png")


def test_contact_sheet_has_one_tile_per_sample() -> None:
    sample = _render(DEFAULT_TYPES[0], 0)
    sheet = contact_sheet([("a", sample.image, sample.mask)] * 5, columns=2, tile=48)
    assert sheet.mode == "RGB" and sheet.width == 96 and sheet.height > 3 * 48
    assert render_contact_sheet(DEFAULT_TYPES[:2], per_type=1, size=32).width > 0


def test_generate_writes_the_samples_render_sample_gives(
    new_store: Callable[[], LocalObjectStore],
) -> None:
    store, image_type = new_store(), DEFAULT_TYPES[1]
    (key,) = generate(store, [image_type], 1, seed=3, size=48)
    expected = render_sample(image_type, sample_rng(3, image_type, 0), 48)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(store.get(key)))), expected.image)


@pytest.mark.parametrize("product", PRODUCTS)
def test_the_product_window_never_clips_the_mask(product: str) -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        matrix = scene_module._pose(rng, 96)
        shape = draw_product(product, rng, 96 * rng.uniform(0.9, 1.5))
        inverse = np.linalg.inv(matrix)
        full = (slice(0, 96), slice(0, 96))
        everywhere = shape.fields(*scene_module._local_coords(inverse, full)).sdf < 0
        window = scene_module._window(matrix, shape.extent, 96)
        windowed = np.zeros_like(everywhere)
        windowed[window] = shape.fields(*scene_module._local_coords(inverse, window)).sdf < 0
        assert np.array_equal(everywhere, windowed)


def test_relabeling_production_images_writes_their_true_masks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = LocalObjectStore(tmp_path)
    xray = next(t for t in DEFAULT_TYPES if t.camera != "color2d")  # lossless PNG
    day = dt.date(2026, 11, 30)
    keys = generate_production(store, [xray], 2, day=day, size=48, seed=3)
    failures = relabel_production(
        store, keys, failed_model_version="4", reported_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    )
    assert failures == [k.replace(f"production/{day}/", "failures/") for k in keys]
    for index, key in enumerate(failures):
        truth = render_sample(xray, sample_rng(3, xray, index, f"production/{day}"), 48)
        image = np.asarray(Image.open(io.BytesIO(store.get(key))))
        mask = np.asarray(Image.open(io.BytesIO(store.get(key.replace(".png", ".mask.png")))))
        np.testing.assert_array_equal(image, truth.image)  # the same sample: its mask is true
        np.testing.assert_array_equal(mask != 0, truth.mask)
        assert store.tags(key)["failed_model_version"] == "4"
        assert store.tags(key)["image_type"] == xray.name
    with pytest.raises(ValueError, match="not a generated production image"):
        relabel_production(
            store,
            ["labeled/x.png"],
            failed_model_version="4",
            reported_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        )
