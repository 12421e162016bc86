"""Decoded pixels addressed by content, stored once and shared by every dataset version.

A sample's decoded pixels depend on its image and mask bytes (their sha256), the model's input
size and the decode rules (`RULES`), never on the version that holds it. So they are stored once,
in packs of rows decoded together, and a version is a list of references into the packs:

    <root>/<size>-r<RULES>/index.sqlite                  content key -> (pack, row); packs, LRU
    <root>/<size>-r<RULES>/packs/<pack id>/images.u8     (n, size, size, 3) uint8 RGB
    <root>/<size>-r<RULES>/packs/<pack id>/masks.u8      (n, size, size) uint8 0/1
    <root>/<size>-r<RULES>/packs/<pack id>/meta.json     count, size, rules, content keys

The content key of a row is its image sha256 followed by its mask sha256 (a relabel is new
content). Building a version decodes only the rows whose key no pack holds (what is new since
the last version), writes them as new packs (each built in a temporary directory and renamed into
place whole, so a directory at a pack's path is always complete), then records them in the index.
Packs are evicted least recently used first (a pack is used when a version that refers to it is
opened) when the store exceeds its disk budget; the packs of the version being opened are never
evicted for it, and a version that alone needs more than the budget is a clear error.

Every image is resized to size x size without keeping its aspect ratio (image bilinear, which
Pillow antialiases when shrinking; mask nearest); inference must resize the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.images import InvalidImage, decode_pair
from maskfind_pipeline.data.versions import hash_positions
from maskfind_pipeline.storage.base import ObjectStore

RULES = 1
"""The decode rules' version (`data.images.decode_pair` + `resize_pair`): bump it when they
change, and every pixel is decoded again under a new directory."""
FORMAT_VERSION = RULES
PACK_ROWS = 4096
"""Rows per pack at most (4096 rows at 256² are about 1 GB)."""
DEFAULT_BUDGET_GB = 200.0
BUDGET_ENV = "MASKFIND_DECODED_BUDGET_GB"
_IMAGES, _MASKS, _META = "images.u8", "masks.u8", "meta.json"

Progress = Callable[[int, int], None]


class ContentMismatch(ValueError):
    """Bytes fetched from the store do not match the sha256 the manifest records."""


class DecodedBudgetExceeded(RuntimeError):
    """One version's decoded pixels alone need more local disk than the budget allows."""


def default_budget_bytes(env: dict[str, str] | None = None) -> int:
    """The decoded store's disk budget: `MASKFIND_DECODED_BUDGET_GB` (default 200 GB)."""
    text = (os.environ if env is None else env).get(BUDGET_ENV, "")
    try:
        gb = float(text) if text.strip() else DEFAULT_BUDGET_GB
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={text!r} is not a number of GB") from None
    return int(gb * 1e9)


class PackedRows:
    """Rows of several packs' memory maps, read as one (N, ...) uint8 array: integer, slice and
    index-array reads gather from each pack (a version's view; nothing is copied to disk)."""

    def __init__(self, packs: Sequence[np.ndarray], pack_of: np.ndarray, row_of: np.ndarray):
        self.packs = list(packs)
        self.pack_of, self.row_of = pack_of, row_of
        first = self.packs[0]
        self.shape: tuple[int, ...] = (len(pack_of), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, tuple):
            return self[index[0]][(slice(None), *index[1:])] if index else self
        if isinstance(index, (int, np.integer)):
            i = int(index)
            return self.packs[self.pack_of[i]][self.row_of[i]]
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self.take(np.asarray(index))

    def take(self, indices: Any, axis: int = 0) -> np.ndarray:
        if axis != 0:
            raise ValueError("PackedRows.take supports axis=0 only")
        rows = np.asarray(indices)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        packs = self.pack_of[rows]
        for p in np.unique(packs):
            where = np.flatnonzero(packs == p)
            out[where] = self.packs[int(p)][self.row_of[rows[where]]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)


Pixels = np.ndarray | PackedRows


@dataclass(frozen=True, eq=False)
class DecodedArrays:
    """The decoded samples of one manifest, in manifest order, read-only.

    Attributes:
        path: the decoded store's directory for this size (or a pack's, for a single pack).
        images: (N, size, size, 3) uint8 RGB (a memory map, or rows gathered from several).
        masks: (N, size, size) uint8, 0 or 1.
        sample_ids: the manifest's sample ids, row i describing images[i] and masks[i].
    """

    path: Path
    images: Pixels
    masks: Pixels
    sample_ids: tuple[str, ...]
    refs: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = None
    """(pack ids, pack of each row, row in that pack): how the view is re-opened elsewhere."""

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (e.g. to spawned DataLoader workers) as references, never as the pixels.
        if self.refs is None:
            raise TypeError("decoded arrays built in memory cannot be pickled")
        return (_open_view, (self.path, self.sample_ids, self.size, self.refs))


def build_decoded(
    manifest: pa.Table,
    store: ObjectStore,
    cache: ContentCache,
    root: Path,
    *,
    version_id: str = "",
    size: int,
    max_workers: int = 8,
    progress: Progress | None = None,
    budget_bytes: int | None = None,
) -> DecodedArrays:
    """The decoded pixels of every manifest row, decoding only those no earlier version had.

    Bytes come from `cache` by sha256, else from `store` (verified, then written back to the
    cache). Concurrent builders may both decode a new row; the index keeps one copy.

    Args:
        manifest: a dataset version's manifest (`MANIFEST_SCHEMA`); its row order is kept.
        store: where the manifest's image and mask keys live.
        cache: the local content cache consulted first.
        root: the directory holding the decoded store.
        version_id: the dataset version's id (named in errors only: pixels are shared).
        size: the side, in pixels, every image and mask is resized to.
        max_workers: decoding threads.
        progress: called with (rows done, rows to decode) while decoding.
        budget_bytes: the store's disk budget (default `default_budget_bytes()`).

    Raises:
        ContentMismatch: the store's bytes for a key differ from the manifest's sha256.
        InvalidImage: a pair no longer decodes (the message names the image key).
        DecodedBudgetExceeded: this manifest alone needs more than the budget.
    """
    decoded = DecodedStore(root, size, budget_bytes=budget_bytes)

    def decode(row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
        return _decode_resized(cache, store, row, size)

    return decoded.open(manifest, decode, max_workers, progress, name=version_id)


@dataclass(frozen=True)
class Fitted:
    """The rows of a manifest that training decodes, and the share of its train and val rows."""

    manifest: pa.Table
    train_share: float


def fit_to_budget(
    manifest: pa.Table, size: int, budget_bytes: int | None = None, *, headroom: float = 0.8
) -> Fitted:
    """The manifest whole when its decoded pixels fit `headroom` of the budget (the rest is
    room for evaluation's chunks); else a content-hash share of its train and val rows that fits
    (test rows are scored by evaluation, chunk by chunk, and not decoded for training).

    The share is a pure function of each sample's hash (hex digits 16-30, independent of the
    split's), so as versions grow a kept sample stays kept until the share shrinks past it, and a
    new version still decodes only its new samples.
    """
    budget = default_budget_bytes() if budget_bytes is None else budget_bytes
    row_bytes, limit = 4 * size * size, headroom * budget
    if manifest.num_rows * row_bytes <= limit:
        return Fitted(manifest, 1.0)
    split = np.asarray(manifest.column("split").to_numpy(zero_copy_only=False))
    used = (split == "train") | (split == "val")
    share = min(1.0, (limit // row_bytes) / max(1, int(used.sum())))
    position = hash_positions(manifest.column("sample_id"), offset=16)
    return Fitted(manifest.filter(pa.array(used & (position < share))), share)


def content_keys(manifest: pa.Table) -> pa.Array:
    """The content key of each row: image sha256 + mask sha256 (128 hex digits)."""
    joined = pc.binary_join_element_wise(  # pyright: ignore[reportAttributeAccessIssue]
        manifest.column("image_sha256"), manifest.column("mask_sha256"), ""
    )
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


class DecodedStore:
    """The content-addressed packs of one input size, their index and their eviction."""

    def __init__(self, root: Path, size: int, *, budget_bytes: int | None = None) -> None:
        self.size = size
        self.dir = Path(root) / f"{size}-r{RULES}"
        self.budget = default_budget_bytes() if budget_bytes is None else budget_bytes
        self.row_bytes = 4 * size * size

    def open(
        self,
        manifest: pa.Table,
        decode: Callable[[dict[str, str]], tuple[np.ndarray, np.ndarray]],
        max_workers: int = 8,
        progress: Progress | None = None,
        *,
        name: str = "",
    ) -> DecodedArrays:
        """Decode what is missing, then the view of every row (see `build_decoded`)."""
        keys = content_keys(manifest).to_pylist()
        need = len(set(keys)) * self.row_bytes
        if need > self.budget:
            raise DecodedBudgetExceeded(
                f"dataset version {name or '(unnamed)'} needs {need / 1e9:,.1f} GB of decoded "
                f"pixels at {self.size}², more than the budget of {self.budget / 1e9:,.1f} GB "
                f"({BUDGET_ENV})"
            )
        (self.dir / "packs").mkdir(parents=True, exist_ok=True)
        found = self._lookup(keys)
        missing = sorted({i for i, k in enumerate(keys) if k not in found}, key=keys.__getitem__)
        missing = _first_of_each(missing, keys)
        if missing:
            self._make_room(len(missing) * self.row_bytes, keep={p for p, _ in found.values()})
            rows = manifest.take(pa.array(missing, pa.int64()))
            self._decode_packs(rows, [keys[i] for i in missing], decode, max_workers, progress)
            found = self._lookup(keys)
        absent = [k for k in keys if k not in found]
        if absent:
            raise RuntimeError(f"{len(absent)} decoded rows vanished while opening {name}")
        view = _refs([found[k] for k in keys])
        self._touch(view[0])
        self._make_room(0, keep=set(view[0]))
        sample_ids = tuple(manifest.column("sample_id").to_pylist())
        return _open_view(self.dir, sample_ids, self.size, view)

    def stored_bytes(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM packs").fetchone()[0])

    def pack_ids(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT pack FROM packs ORDER BY last_used, pack")]

    def _decode_packs(
        self,
        rows: pa.Table,
        keys: list[str],
        decode: Callable[[dict[str, str]], tuple[np.ndarray, np.ndarray]],
        max_workers: int,
        progress: Progress | None,
    ) -> None:
        fields = ["image_key", "mask_key", "image_sha256", "mask_sha256"]
        done = 0
        for start in range(0, len(keys), PACK_ROWS):
            part = rows.slice(start, PACK_ROWS).select(fields).to_pylist()
            pack_keys = keys[start : start + PACK_ROWS]

            def tick(n: int, _: int, base: int = done) -> None:
                if progress is not None:
                    progress(base + n, len(keys))

            pack = self._write_pack(part, pack_keys, decode, max_workers, tick)
            self._register(pack, pack_keys)
            done += len(pack_keys)

    def _write_pack(
        self,
        rows: list[dict[str, str]],
        keys: list[str],
        decode: Callable[[dict[str, str]], tuple[np.ndarray, np.ndarray]],
        max_workers: int,
        progress: Progress,
    ) -> str:
        pack = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
        final = self.dir / "packs" / pack
        if _complete(final, len(keys)):
            return pack
        tmp = final.with_name(f".tmp-{pack}-{uuid.uuid4().hex}")
        try:
            tmp.mkdir()
            _fill(tmp, rows, self.size, decode, max_workers, progress)
            meta = {"format": RULES, "count": len(keys), "size": self.size, "keys": keys}
            (tmp / _META).write_text(json.dumps(meta))
            try:
                tmp.rename(final)
            except OSError:
                if not _complete(final, len(keys)):  # a broken leftover: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return pack

    def _register(self, pack: str, keys: list[str]) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO packs(pack, bytes, last_used) VALUES (?, ?, ?)",
                (pack, len(keys) * self.row_bytes, time.time()),
            )
            db.executemany(
                "INSERT OR IGNORE INTO entries(key, pack, row) VALUES (?, ?, ?)",
                ((k, pack, i) for i, k in enumerate(keys)),
            )

    def _lookup(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        with self._db() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted(key TEXT PRIMARY KEY)")
            db.execute("DELETE FROM wanted")
            db.executemany("INSERT OR IGNORE INTO wanted(key) VALUES (?)", ((k,) for k in keys))
            rows = db.execute(
                "SELECT e.key, e.pack, e.row FROM wanted w JOIN entries e ON e.key = w.key"
            ).fetchall()
            db.execute("DELETE FROM wanted")
        whole = {p for p in {pack for _, pack, _ in rows} if _complete(self._pack_dir(p))}
        return {key: (pack, row) for key, pack, row in rows if pack in whole}

    def _touch(self, packs: Sequence[str]) -> None:
        now = time.time()
        with self._db() as db:
            db.executemany(
                "UPDATE packs SET last_used = ? WHERE pack = ?", ((now, p) for p in packs)
            )

    def _make_room(self, incoming: int, keep: set[str]) -> None:
        """Evict least recently used packs (never those in `keep`) until `incoming` more bytes
        fit in the budget."""
        with self._db() as db:
            packs = db.execute("SELECT pack, bytes FROM packs ORDER BY last_used, pack").fetchall()
            total = sum(b for _, b in packs)
            evicted = []
            for pack, size in packs:
                if total + incoming <= self.budget:
                    break
                if pack in keep:
                    continue
                db.execute("DELETE FROM entries WHERE pack = ?", (pack,))
                db.execute("DELETE FROM packs WHERE pack = ?", (pack,))
                total -= size
                evicted.append(pack)
        for pack in evicted:
            _remove(self._pack_dir(pack))

    def _pack_dir(self, pack: str) -> Path:
        return self.dir / "packs" / pack

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.dir / "index.sqlite", timeout=60.0)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS packs"
                "(pack TEXT PRIMARY KEY, bytes INTEGER NOT NULL, last_used REAL NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries"
                "(key TEXT PRIMARY KEY, pack TEXT NOT NULL, row INTEGER NOT NULL)"
            )
            with db:
                yield db


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


def manifest_fingerprint(manifest: pa.Table, size: int) -> str:
    """A sha256 over the rules, size and every row's (sample id, image sha, mask sha), in order."""
    digest = hashlib.sha256(f"decoded-v{RULES}:{size}\n".encode())
    columns = ("sample_id", "image_sha256", "mask_sha256")
    for row in zip(*(manifest.column(c).to_pylist() for c in columns), strict=True):
        digest.update(("\t".join(row) + "\n").encode())
    return digest.hexdigest()


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

    This is the resize the decoded store applies; inference must use the same one.
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


def _fill(
    directory: Path,
    rows: list[dict[str, str]],
    size: int,
    decode: Callable[[dict[str, str]], tuple[np.ndarray, np.ndarray]],
    max_workers: int,
    progress: Progress,
) -> None:
    count = len(rows)
    images = np.memmap(directory / _IMAGES, np.uint8, mode="w+", shape=(count, size, size, 3))
    masks = np.memmap(directory / _MASKS, np.uint8, mode="w+", shape=(count, size, size))

    def decode_row(i: int) -> None:
        images[i], masks[i] = decode(rows[i])

    _run_all(decode_row, count, max_workers, progress)
    images.flush()
    masks.flush()


def _run_all(work: Callable[[int], None], count: int, max_workers: int, progress: Progress) -> None:
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        futures = [pool.submit(work, i) for i in range(count)]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                progress(done, count)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _first_of_each(positions: list[int], keys: list[str]) -> list[int]:
    seen: set[str] = set()
    out = []
    for i in positions:
        if keys[i] not in seen:
            seen.add(keys[i])
            out.append(i)
    return sorted(out)


def _refs(located: list[tuple[str, int]]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    packs = tuple(dict.fromkeys(p for p, _ in located))
    number = {p: i for i, p in enumerate(packs)}
    pack_of = np.fromiter((number[p] for p, _ in located), np.int32, len(located))
    row_of = np.fromiter((r for _, r in located), np.int64, len(located))
    return packs, pack_of, row_of


def _complete(path: Path, count: int | None = None) -> bool:
    try:
        meta = json.loads((path / _META).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    return count is None or meta.get("count") == count


def _remove(path: Path) -> None:
    """Delete a pack: renamed aside first, so no reader finds half of it (open maps survive)."""
    aside = path.with_name(f".evicted-{path.name}-{uuid.uuid4().hex}")
    try:
        path.rename(aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _open_view(
    directory: Path,
    sample_ids: tuple[str, ...],
    size: int,
    refs: tuple[tuple[str, ...], np.ndarray, np.ndarray],
) -> DecodedArrays:
    packs, pack_of, row_of = refs
    if not len(pack_of):
        empty = np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
        for array in empty:
            array.flags.writeable = False
        return DecodedArrays(directory, empty[0], empty[1], sample_ids, refs)
    opened = [_open_pack(directory / "packs" / p, size) for p in packs]
    if len(packs) == 1 and np.array_equal(row_of, np.arange(len(opened[0][0]))):
        return DecodedArrays(directory, opened[0][0], opened[0][1], sample_ids, refs)
    images = PackedRows([o[0] for o in opened], pack_of, row_of)
    masks = PackedRows([o[1] for o in opened], pack_of, row_of)
    return DecodedArrays(directory, images, masks, sample_ids, refs)


def _open_pack(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    count = int(json.loads((path / _META).read_text())["count"])
    return (
        _open_readonly(path / _IMAGES, (count, size, size, 3)),
        _open_readonly(path / _MASKS, (count, size, size)),
    )


def _open_readonly(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape))
    if os.path.getsize(path) != expected:
        raise ValueError(f"{path}: {os.path.getsize(path)} bytes, expected {expected}")
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
