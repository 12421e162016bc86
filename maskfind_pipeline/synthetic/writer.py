"""Write rendered samples to an object store in the layout of DESIGN.md's contract."""

from __future__ import annotations

import datetime as dt
import io
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from maskfind_pipeline.synthetic.render import Sample, render_sample
from maskfind_pipeline.synthetic.types import ImageType

if TYPE_CHECKING:
    from maskfind_pipeline.storage.base import ObjectStore

_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def sample_rng(
    seed: int, image_type: ImageType, index: int, stream: str = "labeled"
) -> np.random.Generator:
    """The generator of one sample, independent of which other types or indices are generated.

    The type enters through a stable hash of its name (not its position in a list), so adding
    types or raising counts never changes samples already generated. `stream` separates sample
    families (a key prefix, a production day) that share a seed.
    """
    entropy = [seed, _crc(stream), _crc(image_type.name), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def encode_sample(sample: Sample, image_type: ImageType) -> tuple[bytes, str, bytes]:
    """Encode a sample: (image bytes, "jpg" or "png", mask PNG bytes with values 0/255).

    Colour images become JPEG (quality 90); grayscale cameras keep lossless PNG.
    """
    image = Image.fromarray(sample.image)
    if image_type.camera == "color2d":
        return _encode(image, "JPEG", quality=90), "jpg", encode_mask(sample.mask)
    return _encode(image, "PNG", compress_level=1), "png", encode_mask(sample.mask)


def encode_mask(mask: np.ndarray) -> bytes:
    """A boolean mask as an 8-bit PNG with values 0 and 255."""
    return _encode(Image.fromarray(mask.astype(np.uint8) * 255), "PNG", compress_level=1)


def _encode(image: Image.Image, fmt: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(
    store: ObjectStore,
    keyed: Sequence[tuple[str, ImageType, int, Mapping[str, str]]],
    *,
    seed: int,
    size: int,
    stream: str,
    with_masks: bool,
    progress: Callable[[int], None] | None,
) -> list[str]:
    keys = []
    for done, (stem, image_type, index, tags) in enumerate(keyed, start=1):
        sample = render_sample(image_type, sample_rng(seed, image_type, index, stream), size)
        image_bytes, ext, mask_bytes = encode_sample(sample, image_type)
        store.put(f"{stem}.{ext}", image_bytes, tags=tags)
        if with_masks:
            store.put(f"{stem}.mask.png", mask_bytes)
        keys.append(f"{stem}.{ext}")
        if progress is not None:
            progress(done)
    return keys


def _tags(
    image_type: ImageType, captured_at: dt.datetime, extra: Mapping[str, str] | None
) -> dict[str, str]:
    tags = {
        "image_type": image_type.name,
        "camera": image_type.camera,
        "product": image_type.product,
        "station": image_type.station,
        "captured_at": _iso(captured_at),
    }
    return tags | dict(extra or {})


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def _captured_at(image_type: ImageType, base: dt.datetime, index: int, span_s: int) -> dt.datetime:
    offset = (60 * index + _crc(image_type.name) % 60) % span_s
    return base + dt.timedelta(seconds=offset)


def generate(
    store: ObjectStore,
    types: Sequence[ImageType],
    count_per_type: int,
    *,
    prefix: str = "labeled",
    seed: int = 0,
    size: int = 256,
    start_index: int = 0,
    extra_tags: Mapping[str, str] | None = None,
    with_masks: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Render and store `count_per_type` labeled samples of each type.

    Writes `<prefix>/<image_id>.<jpg|png>` (tagged with image_type, camera, product, station,
    captured_at and `extra_tags`) and, when `with_masks`, `<prefix>/<image_id>.mask.png`. The
    image id is `<type name>-<seed:04d>-<index:06d>`; everything is a pure function of
    (prefix, seed, type, index), so reruns rewrite identical bytes.

    Args:
        store: where to write.
        types: the image types to render.
        count_per_type: samples per type, with indices from `start_index`.
        prefix: the key prefix (`labeled` by default).
        seed: the dataset seed.
        size: image side in pixels.
        start_index: the first index, to extend an existing set without changing it.
        extra_tags: more tags for every image.
        with_masks: whether to write the masks.
        progress: called with the number of images written so far after each one.

    Returns:
        The image keys written, type by type.
    """
    base = _EPOCH + dt.timedelta(days=seed % 365)
    jobs = [
        (
            f"{prefix}/{t.name}-{seed:04d}-{i:06d}",
            t,
            i,
            _tags(t, _captured_at(t, base, i, 10**9), extra_tags),
        )
        for t in types
        for i in range(start_index, start_index + count_per_type)
    ]
    stream = prefix
    return _write(
        store, jobs, seed=seed, size=size, stream=stream, with_masks=with_masks, progress=progress
    )


def generate_production(
    store: ObjectStore,
    types: Sequence[ImageType],
    count_per_type: int,
    *,
    day: dt.date,
    seed: int = 0,
    size: int = 256,
    start_index: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Render unlabeled images seen in production on `day`: `production/<YYYY-MM-DD>/<id>.<ext>`.

    Images differ from day to day and from labeled ones; no masks are written. Ids are
    `<type name>-<YYYYMMDD>-<seed:04d>-<index:06d>`, captured_at falls on `day` (UTC).
    """
    base = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    jobs = [
        (
            f"production/{day.isoformat()}/{t.name}-{day:%Y%m%d}-{seed:04d}-{i:06d}",
            t,
            i,
            _tags(t, _captured_at(t, base, i, 86_400), None),
        )
        for t in types
        for i in range(start_index, start_index + count_per_type)
    ]
    stream = f"production/{day.isoformat()}"
    return _write(
        store, jobs, seed=seed, size=size, stream=stream, with_masks=False, progress=progress
    )


def generate_failures(
    store: ObjectStore,
    types: Sequence[ImageType],
    count_per_type: int,
    *,
    failed_model_version: str,
    seed: int = 0,
    size: int = 256,
    start_index: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Render relabeled production failures: `failures/<id>.<ext>` and `failures/<id>.mask.png`.

    Images carry the usual tags plus `failed_model_version` and `reported_at` (a day after
    capture). Ids are `<type name>-fail-<seed:04d>-<index:06d>`.
    """
    base = _EPOCH + dt.timedelta(days=seed % 365)
    jobs = []
    for t in types:
        for i in range(start_index, start_index + count_per_type):
            captured = _captured_at(t, base, i, 10**9)
            extra = {
                "failed_model_version": failed_model_version,
                "reported_at": _iso(captured + dt.timedelta(days=1)),
            }
            jobs.append(
                (f"failures/{t.name}-fail-{seed:04d}-{i:06d}", t, i, _tags(t, captured, extra))
            )
    stream = f"failures/{failed_model_version}"
    return _write(
        store, jobs, seed=seed, size=size, stream=stream, with_masks=True, progress=progress
    )


def relabel_production(
    store: ObjectStore,
    image_keys: Sequence[str],
    *,
    failed_model_version: str,
    reported_at: dt.datetime,
) -> list[str]:
    """Play the people who relabel queued production images: for each generated production
    image (`production/<day>/<type>-<YYYYMMDD>-<seed>-<index>.<ext>`), write it with its true
    mask as a relabeled failure, `failures/<image_id>.<ext>` + `.mask.png`, tagged with its
    tags plus `failed_model_version` and `reported_at`. Returns the failure image keys.

    Raises:
        ValueError: a key that is not a generated production image.
    """
    written = []
    for key in image_keys:
        image_id, ext = key.rpartition("/")[2].rsplit(".", 1)
        _production_origin(key, image_id)  # refuses any other key before reading it
        data = store.get(key)
        mask = production_truth(key, Image.open(io.BytesIO(data)).width)
        tags = {
            **store.tags(key),
            "failed_model_version": failed_model_version,
            "reported_at": _iso(reported_at),
        }
        store.put(f"failures/{image_id}.{ext}", data, tags=tags)
        store.put(f"failures/{image_id}.mask.png", encode_mask(mask))
        written.append(f"failures/{image_id}.{ext}")
    return written


def production_truth(key: str, size: int) -> np.ndarray:
    """The true mask of a generated production image (`production/<day>/<type>-...`) of side
    `size`, rendered again from its key.

    Raises:
        ValueError: a key that is not a generated production image.
    """
    image_id = key.rpartition("/")[2].rsplit(".", 1)[0]
    image_type, seed, index, stream = _production_origin(key, image_id)
    return render_sample(image_type, sample_rng(seed, image_type, index, stream), size).mask


def _production_origin(key: str, image_id: str) -> tuple[ImageType, int, int, str]:
    """(type, seed, index, stream) of a generated production image, from its key."""
    parts = key.split("/")
    try:
        name, _, seed, index = image_id.rsplit("-", 3)
        if len(parts) != 3 or parts[0] != "production":
            raise ValueError(key)
        return ImageType.parse(name), int(seed), int(index), f"production/{parts[1]}"
    except ValueError:
        raise ValueError(f"{key} is not a generated production image") from None
