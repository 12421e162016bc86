"""Fuzzing the ingest validator: object keys, tags documents and image bytes from hypothesis go
through the entry points ingest uses (`validate_key`/`pair_objects`, `LocalObjectStore.tags` +
`parse_tags`, `decode_pair`, and `ingest` itself). Each input is accepted consistently or refused
with the project's own error (`InvalidKey`, `InvalidTags`/`ValueError`, `InvalidImage`): never
another exception. A whole ingest loses nothing: every listed object is in the catalog or in the
quarantine with a reason.

Every test runs twice: a small budget in `make test` (a few seconds in all) and a long one behind
the `slow` marker (`make test-slow`).
"""

from __future__ import annotations

import io
import json
import os
import string
import tempfile
from datetime import timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskfind_pipeline.data.catalog import Catalog
from maskfind_pipeline.data.images import InvalidImage, decode_pair
from maskfind_pipeline.data.ingest import IngestOptions, ingest
from maskfind_pipeline.data.pairing import pair_objects
from maskfind_pipeline.data.tags import InvalidTags, parse_tags
from maskfind_pipeline.storage import LocalObjectStore
from maskfind_pipeline.storage.base import ObjectInfo
from maskfind_pipeline.storage.keys import (
    MASK_SUFFIX,
    TAGS_SUFFIX,
    InvalidKey,
    parse_image_key,
    printable_key,
    tags_sidecar_key,
    validate_key,
)

# max_examples per test: the default run, and the long run behind `slow`.
BUDGET = [
    pytest.param({"keys": 300, "tags": 200, "images": 150, "ingest": 12}, id="quick"),
    pytest.param(
        {"keys": 5_000, "tags": 3_000, "images": 5_000, "ingest": 500},
        id="long",
        marks=[pytest.mark.slow, pytest.mark.timeout(1800)],
    ),
]
SOURCES = ("labeled", "failures")
MAX_PIXELS = 64 * 64  # mutated headers may claim huge sizes: refuse them cheaply
STAGES = {"key", "pair", "fetch", "tags", "decode", "duplicate"}


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- object keys ---------------------------------------------------------------------------

_ANY_CHAR = st.characters(codec=None, categories=None)  # surrogates and controls included
_SUFFIXES = [".png", ".jpg", ".jpeg", ".PNG", MASK_SUFFIX, TAGS_SUFFIX, ".png.", ".mask.png.png"]
_SEGMENT = st.one_of(
    st.sampled_from(["", ".", "..", "...", "C:", "~", "a\\b", "\x00", "\x7f", "\n", "e\u0301"]),
    st.sampled_from(["\uff46\uff55\uff4c\uff4c", "\ud800", "\udcff"]),  # full-width, surrogates
    st.text(alphabet=_ANY_CHAR, min_size=1, max_size=12),
    st.text(alphabet=string.ascii_letters + "._-", min_size=1, max_size=12),
    st.integers(240, 1100).map(lambda n: "x" * n),  # around the segment and key byte limits
    st.tuples(st.text(string.ascii_lowercase, max_size=8), st.sampled_from(_SUFFIXES)).map("".join),
)
_SEPARATOR = st.sampled_from(["/", "/", "/", "//", "\\", "/./", "/../"])


@st.composite
def object_keys(draw: st.DrawFn, *, prefix: bool = False) -> str:
    """Keys as a store may list them (a local file name that is not UTF-8 is listed with
    surrogate escapes); with `prefix`, as listed under labeled/ or failures/."""
    segments = draw(st.lists(_SEGMENT, min_size=1, max_size=4))
    key = segments[0]
    for segment in segments[1:]:
        key += draw(_SEPARATOR) + segment
    start = (
        draw(st.sampled_from(SOURCES)) + "/"
        if prefix
        else draw(st.sampled_from(["", "", "labeled/", "failures/", "/", "\\", "./"]))
    )
    return start + key


def _reserved_by_local_store(key: str) -> bool:
    """Names the local store keeps for itself: tag sidecars and temporary files."""
    name = key.rpartition("/")[2]
    return name.endswith(TAGS_SUFFIX) or name.startswith(".tmp-")


@pytest.mark.parametrize("budget", BUDGET)
def test_any_key_is_refused_or_round_trips(budget: dict[str, int]) -> None:
    @fuzz_settings(budget["keys"])
    @given(key=object_keys())
    @example(key="labeled/\udcff.png")  # a local file name that is not UTF-8
    @example(key="labeled/\ud800.png")
    def check(key: str) -> None:
        try:
            assert validate_key(key) == key
        except InvalidKey as exc:
            assert str(exc).startswith("invalid key")
            str(exc).encode("utf-8")  # the reason is storable in the quarantine table
            return
        assert key.encode("utf-8")  # every accepted key is storable in the catalog
        assert ".." not in key.split("/") and not key.startswith("/")
        parsed = parse_image_key(key)
        if parsed is not None:
            assert parsed.image_key == key
            assert key.startswith(f"{parsed.source.value}/{parsed.image_id}.")
            assert parse_image_key(parsed.mask_key) is None
        if _reserved_by_local_store(key):
            return
        with tempfile.TemporaryDirectory() as tmp:
            store = LocalObjectStore(tmp)
            store.put(key, b"payload")
            assert [info.key for info in store.list()] == [key]
            assert store.get(key) == b"payload"
            try:
                validate_key(tags_sidecar_key(key))
            except InvalidKey:  # the local store cannot hold tags for this key, and says so
                with pytest.raises(InvalidKey):
                    store.tags(key)
                with pytest.raises(InvalidKey):
                    store.put(key, b"payload", tags={"image_type": "t"})
                return
            assert store.tags(key) == {}
            store.put(key, b"payload", tags={"image_type": "t"})
            assert store.tags(key) == {"image_type": "t"}

    check()


@pytest.mark.parametrize("budget", BUDGET)
def test_listing_pairs_every_key_or_refuses_it(budget: dict[str, int]) -> None:
    @fuzz_settings(budget["keys"])
    @given(
        keys=st.lists(
            st.one_of(object_keys(prefix=True), _pair_keys()), min_size=1, max_size=12, unique=True
        ),
        empty=st.sets(st.integers(0, 11), max_size=3),
    )
    @example(keys=["labeled/\udcff.png", "labeled/\udcff.mask.png"], empty=set())
    def check(keys: list[str], empty: set[int]) -> None:
        listing = [ObjectInfo(k, 0 if i in empty else 10, f"etag-{i}") for i, k in enumerate(keys)]
        candidates, refusals = pair_objects(listing)
        paired = [c.image.key for c in candidates] + [c.mask.key for c in candidates]
        refused = [r.key for r in refusals]
        assert len(set(paired)) == len(paired), "a key in two candidates"
        assert not set(paired) & set(refused), "a key both paired and refused"
        for refusal in refusals:
            assert refusal.stage in STAGES and refusal.reason
            (refusal.key + refusal.reason).encode("utf-8")  # storable
        refused_ids = {_mask_of(k) for k in refused}
        for key in keys:
            shown = printable_key(key)
            assert shown in paired or shown in refused or key in refused_ids, key
        for candidate in candidates:
            assert candidate.image.size and candidate.mask.size
            assert candidate.keys.mask_key == candidate.mask.key

    check()


def _pair_keys() -> st.SearchStrategy[str]:
    """Keys that do pair up, so that candidates are common."""
    return st.tuples(
        st.sampled_from(SOURCES),
        st.sampled_from(["a", "b", "é", "A"]),
        st.sampled_from([".png", ".jpg", ".jpeg", MASK_SUFFIX]),
    ).map(lambda t: f"{t[0]}/{t[1]}{t[2]}")


def _mask_of(key: str) -> str | None:
    parsed = parse_image_key(key)
    return parsed.mask_key if parsed else None


# --- tags documents ------------------------------------------------------------------------

_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(alphabet=_ANY_CHAR, max_size=20),
)
_JSON_ANY = st.recursive(
    _JSON_SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_TIMES = st.one_of(
    st.datetimes().map(lambda t: t.isoformat()),
    st.sampled_from(
        [
            "2024-05-01T08:00:00Z",
            "2024-05-01",
            "yesterday",
            "0001-01-01T00:00:00+01:00",  # before datetime.min in UTC
            "9999-12-31T23:59:59-01:00",  # after datetime.max in UTC
            "2024-13-01T00:00:00",
        ]
    ),
)
_TAG_TEXT = st.one_of(
    st.sampled_from(["cam-a", "", " ", "../../etc", "a" * 129, "x" * 300, "a\nb", "\ud800", "é"]),
    st.text(alphabet=_ANY_CHAR, max_size=30),
    _TIMES,
)
_TAG_NAMES = [
    "image_type",
    "camera",
    "product",
    "station",
    "failed_model_version",
    "captured_at",
    "reported_at",
]


@st.composite
def tags_documents(draw: st.DrawFn) -> bytes:
    """A tags sidecar: a well-formed or broken object, another JSON value, or not JSON at all."""
    names = st.one_of(st.sampled_from(_TAG_NAMES), st.text(alphabet=_ANY_CHAR, max_size=10))
    values = draw(st.sampled_from([_TAG_TEXT, _TAG_TEXT, _TAG_TEXT, _JSON_ANY]))  # wrong types
    tags = draw(st.dictionaries(names, values, max_size=8))
    if draw(st.integers(0, 3)):  # mostly with a well-formed image_type
        tags["image_type"] = draw(st.sampled_from(["cam-a", "T.1:x+y", " cam-b", "cam a"]))
    document = json.dumps(tags).encode()
    kind = draw(st.sampled_from(["object"] * 4 + ["other", "truncated", "bytes", "deep", "huge"]))
    if kind == "other":
        return json.dumps(draw(_JSON_ANY)).encode()
    if kind == "truncated":
        return document[: draw(st.integers(0, max(0, len(document) - 1)))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "deep":
        depth = draw(st.integers(100, 200_000))
        return b'{"image_type": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "huge":
        return json.dumps({**tags, "camera": "c" * draw(st.integers(257, 3_000_000))}).encode()
    return document


@pytest.mark.parametrize("budget", BUDGET)
def test_tags_document_is_parsed_or_refused_with_a_reason(budget: dict[str, int]) -> None:
    @fuzz_settings(budget["tags"])
    @given(document=tags_documents())
    @example(document=b'{"image_type": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    @example(document=b'{"image_type": "cam-a", "camera": "\\ud800"}')
    @example(document=b'{"image_type": "cam-a", "captured_at": "0001-01-01T00:00:00+01:00"}')
    @example(document=b'{"image_type": null}')  # was read as the image type "None"
    def check(document: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = LocalObjectStore(tmp)
            store.put("labeled/a.png", b"image")
            Path(tmp, tags_sidecar_key("labeled/a.png")).write_bytes(document)
            try:  # as ingest's _Checker does
                tags = parse_tags(store.tags("labeled/a.png"))
            except (InvalidTags, ValueError) as exc:
                assert str(exc)
                str(exc).encode("utf-8")  # the quarantine reason is storable
                return
        assert tags.image_type == json.loads(document)["image_type"].strip()
        for text in (tags.camera, tags.product, tags.station, tags.failed_model_version):
            assert text is None or (len(text) <= 256 and text.encode("utf-8"))
        for time in (tags.captured_at, tags.reported_at):
            assert time is None or time.utcoffset() == timedelta(0)
        assert json.dumps(dict(tags.raw)).encode("ascii")

    check()


# --- image bytes ---------------------------------------------------------------------------

_SIZE = (6, 5)
_PNG_MODES = ("RGB", "RGBA", "L", "LA", "P", "1")
_MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF", b""]


@cache
def _bases() -> dict[str, tuple[str, bytes]]:
    """Tiny valid images (name -> extension, bytes) of every mode ingest must convert."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (_SIZE[1], _SIZE[0], 3), dtype=np.uint8), "RGB")
    mask = np.zeros((_SIZE[1], _SIZE[0]), dtype=np.uint8)
    mask[1:3, 2:5] = 255
    return {
        **{f"png-{m}": ("png", _encode(rgb.convert(m), "PNG")) for m in _PNG_MODES},
        **{f"jpeg-{m}": ("jpg", _encode(rgb.convert(m), "JPEG")) for m in ("RGB", "L", "CMYK")},
        "png-I;16": ("png", _encode(Image.fromarray(mask.astype(np.uint16) * 200), "PNG")),
        "mask-L": ("png", _encode(Image.fromarray(mask, "L"), "PNG")),
        "mask-01": ("png", _encode(Image.fromarray(mask // 255, "L"), "PNG")),
        "mask-1": ("png", _encode(Image.fromarray(mask, "L").convert("1"), "PNG")),
        "mask-jpeg": ("jpg", _encode(Image.fromarray(mask, "L"), "JPEG", quality=60)),
        # Stored turned by 90 degrees, EXIF orientation 6 turns it back to the masks' size.
        "exif-rotated": ("jpg", _encode(rgb.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=6)),
    }


def _encode(img: Image.Image, fmt: str, *, exif: int | None = None, **params: object) -> bytes:
    if exif is not None:
        tags = Image.Exif()
        tags[0x0112] = exif
        params["exif"] = tags.tobytes()
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


@st.composite
def image_bytes(draw: st.DrawFn, base: str | None = None) -> bytes:
    """A tiny valid image, as is or mutated: truncated, bit-flipped, overwritten, a wrong magic
    number, or random bytes altogether."""
    name = base or draw(st.sampled_from(sorted(_bases())))
    data = bytearray(_bases()[name][1])
    kind = draw(
        st.sampled_from(
            ["valid"] * 3 + ["truncate", "flip", "flip", "overwrite", "magic", "random"]
        )
    )
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite":
        start = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=16))
        data[start : start + len(patch)] = patch
    elif kind == "magic":
        magic = draw(st.sampled_from(_MAGIC))
        data = bytearray(magic) + data[draw(st.sampled_from([4, 8])) :]
    elif kind == "random":
        return draw(st.binary(max_size=256))
    return bytes(data)


_EXTENSIONS = st.sampled_from(["png", "jpg", "jpeg", "PNG", "JPG", "gif", "", "png "])


@st.composite
def images_with_extension(draw: st.DrawFn) -> tuple[bytes, str]:
    """Image bytes (often valid, often mutated) and the extension of the key they came under:
    mostly the right one, sometimes another or none."""
    name = draw(st.sampled_from([n for n in sorted(_bases()) if not n.startswith("mask")]))
    ext, _ = _bases()[name]
    return draw(image_bytes(name)), draw(st.sampled_from([ext, ext, ext, draw(_EXTENSIONS)]))


@pytest.mark.parametrize("budget", BUDGET)
def test_image_bytes_decode_consistently_or_are_refused(budget: dict[str, int]) -> None:
    @fuzz_settings(budget["images"])
    @given(
        image=images_with_extension(),
        mask=st.one_of(*(image_bytes(m) for m in ("mask-L", "mask-01", "mask-1")), image_bytes()),
    )
    def check(image: tuple[bytes, str], mask: bytes) -> None:
        data, ext = image
        try:
            pair = decode_pair(data, mask, image_ext=ext, max_pixels=MAX_PIXELS)
        except InvalidImage as exc:
            assert str(exc)
            str(exc).encode("utf-8")
            return
        height, width = pair.mask.shape
        assert pair.image.shape == (height, width, 3) and pair.image.dtype == np.uint8
        assert pair.mask.dtype == bool and 0.0 <= pair.mask_fraction <= 1.0
        assert pair.image_format == ("PNG" if ext.lower() == "png" else "JPEG")
        with Image.open(io.BytesIO(data)) as opened:
            assert opened.format == pair.image_format and opened.mode == pair.image_mode
            assert width * height <= MAX_PIXELS
            # EXIF orientations 5 to 8 turn the image by 90 degrees.
            turned = {opened.size, opened.size[::-1]} if pair.exif_transposed else {opened.size}
            assert (width, height) in turned

    check()


# --- whole ingest runs ---------------------------------------------------------------------


def _possible_file_name(name: bytes) -> bool:
    """A name the filesystem can hold, and not one the local store keeps for itself."""
    reserved = name.startswith(b".tmp-") or name.endswith(TAGS_SUFFIX.encode())
    return name not in (b".", b"..") and not {0, ord("/")} & set(name) and not reserved


_FILE_NAME = st.one_of(
    st.text(alphabet=_ANY_CHAR, min_size=1, max_size=20).map(
        lambda text: text.encode("utf-8", "surrogatepass")
    ),
    st.binary(min_size=1, max_size=20),  # not UTF-8, mostly
    st.sampled_from([b"\xff.png", b"\xff.mask.png", b"a\nb.png", b"x" * 240]),
).filter(_possible_file_name)


_GOOD_TAGS = b'{"image_type": "cam-a", "camera": "c1", "captured_at": "2024-05-01T08:00:00Z"}'


@st.composite
def factory_stores(draw: st.DrawFn) -> list[tuple[bytes, bytes, bytes | None]]:
    """Files for a local data store: (path under the root, content, tags sidecar or None).
    Pairs with fuzzed bytes and tags, and stray objects with fuzzed names."""
    files: list[tuple[bytes, bytes, bytes | None]] = []
    for number in range(draw(st.integers(0, 4))):
        folder = draw(st.sampled_from(SOURCES)).encode() + b"/"
        ident = draw(_FILE_NAME) if draw(_one_in(4)) else f"s{number}".encode()
        ext = draw(st.sampled_from(["png", "jpg", "jpeg"]))
        base = draw(st.sampled_from(_names_with_ext("png" if ext == "png" else "jpg")))
        image = draw(image_bytes(base)) if draw(_one_in(3)) else _bases()[base][1]
        tags = draw(st.one_of(tags_documents(), st.none())) if draw(_one_in(3)) else _GOOD_TAGS
        files.append((folder + ident + b"." + ext.encode(), image, tags))
        if not draw(_one_in(5)):  # mostly with a mask
            mask = draw(image_bytes("mask-L")) if draw(_one_in(3)) else _bases()["mask-L"][1]
            files.append((folder + ident + MASK_SUFFIX.encode(), mask, None))
    for _ in range(draw(st.integers(0, 3))):
        folders = draw(st.lists(_FILE_NAME, max_size=2))
        path = b"/".join([draw(st.sampled_from(SOURCES)).encode(), *folders, draw(_FILE_NAME)])
        files.append((path, draw(st.binary(max_size=8)), None))
    return files


def _one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws; shrinks to False (the well-formed case)."""
    return st.integers(0, n - 1).map(lambda drawn: drawn == n - 1)


def _names_with_ext(ext: str) -> list[str]:
    return [name for name, (e, _) in _bases().items() if e == ext and not name.startswith("mask")]


@pytest.mark.parametrize("budget", BUDGET)
def test_whole_ingest_puts_every_object_in_the_catalog_or_quarantine(
    budget: dict[str, int],
) -> None:
    @fuzz_settings(budget["ingest"])
    @given(files=factory_stores())
    @example(
        files=[
            (b"labeled/\xff.png", _bases()["png-RGB"][1], b'{"image_type": "cam-a"}'),
            (b"labeled/\xff.mask.png", _bases()["mask-L"][1], None),
        ]
    )
    def check(files: list[tuple[bytes, bytes, bytes | None]]) -> None:
        with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as work:
            data = LocalObjectStore(data_dir)
            _write_files(data_dir, files)
            listed = {i.key for source in SOURCES for i in data.list(f"{source}/")}
            options = IngestOptions(max_workers=2, batch_size=3, max_pixels=MAX_PIXELS)
            report = ingest(data, Catalog(LocalObjectStore(work)), run_id="r1", options=options)
            tables = Catalog(LocalObjectStore(work)).read()
            samples = tables.samples.to_pylist()
            quarantine = tables.quarantine.to_pylist()
            assert len(samples) == len(report.new_rows) and len(quarantine) == len(report.refusals)
            catalogued = {r["image_key"] for r in samples} | {r["mask_key"] for r in samples}
            refused = {r["key"] for r in quarantine}
            masks_of_refused = {_mask_of(k) for k in refused}
            for key in listed:
                shown = printable_key(key)
                assert shown in catalogued or shown in refused or key in masks_of_refused, (
                    key,
                    quarantine,
                )
            for row in quarantine:
                assert row["stage"] in STAGES and row["reason"], row
            rerun = ingest(data, Catalog(LocalObjectStore(work)), run_id="r2", options=options)
            assert rerun.new_rows == [] and rerun.refusals == []

    check()


def _write_files(root: str, files: list[tuple[bytes, bytes, bytes | None]]) -> None:
    """Write the files byte for byte (names that are not UTF-8 included), skipping a path that
    the filesystem cannot hold."""
    base = os.fsencode(root)
    for path, content, tags in files:
        full = os.path.join(base, path)
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            Path(os.fsdecode(full)).write_bytes(content)
        except OSError:  # e.g. a file where a folder is needed, or a name too long
            continue
        if tags is not None:
            key = os.fsdecode(path)
            sidecar = os.path.join(base, os.fsencode(tags_sidecar_key(key)))
            Path(os.fsdecode(sidecar)).write_bytes(tags)
