"""Fetch an encoder's pretrained weights into the Hugging Face cache, checksum-verified.

The one place this project downloads weights, run by hand on a machine with internet
(`maskfind weights fetch [ENCODER]`); training never downloads
(`maskfind_pipeline.ml.weights.pretrained` reads the cache with `local_files_only=True`). The files
are the ones smp or timm would download
for the encoder (`hub_location`): `config.json` and `model.safetensors` for smp's own `smp-hub/...`
repos, `model.safetensors` for timm (`tu-`) encoders, at the revision smp pins (timm names none,
so `main`).

Every file must match a SHA-256 pinned in `PINNED_SHA256`; an encoder with a file that has no pinned
checksum is refused before anything is downloaded. Nothing unverified becomes visible in the cache:

1. `hf_hub_download` fetches the files into a fresh temporary cache (honouring `HF_ENDPOINT`, read
   at call time, for a mirror);
2. every file's SHA-256 is checked there; one mismatch refuses all of them, and the temporary
   cache is deleted with them;
3. only then are they installed into the real cache (`$HF_HUB_CACHE`, default
   `~/.cache/huggingface/hub`) in huggingface_hub's own layout: the blob, named by its etag, is
   copied in under a temporary name and renamed into place, then the snapshot symlink to it
   `snapshots/<commit>/<file>` (a plain copy where the temporary cache held one, as
   huggingface_hub does without symlink support), and last `refs/<revision>` when the revision is
   a branch. Blobs are copied with their content, never as links into the temporary cache.

A file already in the real cache is not downloaded again, only verified; a cached file that does not
match is reported and left for the user to delete.

Encoders whose Hugging Face files are not all pinned but whose ImageNet weights torchvision
publishes (`pretrained.TORCH_HUB_URLS`: resnet34, the default) are fetched from torchvision
instead, with torch.hub's own check: `torch.hub.download_url_to_file(..., hash_prefix=...)`
downloads to a temporary file beside the target, compares the SHA-256 with the 8 hex digits the
file name carries, and only then moves it into `<torch.hub.get_dir()>/checkpoints/`, where
training finds it (`pretrained.load_encoder_weights`, source 3).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.file_download import repo_folder_name

from maskfind_pipeline.ml.segmentation.config import ModelSpec
from maskfind_pipeline.ml.weights.pretrained import (
    HUB_FILENAME,
    TORCH_HUB_URLS,
    hash_prefix,
    hub_location,
    sha256_of,
)

DEFAULT_ENCODER: str = ModelSpec.model_fields["encoder_name"].default
"""The production default encoder (`ModelSpec().encoder_name`)."""
SMP_CONFIG_FILENAME = "config.json"

PINNED_SHA256: dict[tuple[str, str, str], str] = {
    # (repo_id, revision or "main", filename) -> SHA-256 of the file's bytes, lowercase hex.
    # For LFS files it equals the hub's etag (`X-Linked-Etag` on a HEAD of the resolve URL) and
    # the "SHA256" the hub's file page shows under "Git LFS Details".
    #
    # timm/tf_efficientnet_lite0.in1k: the "Git LFS Details" SHA256 on the hub's page
    # huggingface.co/timm/tf_efficientnet_lite0.in1k/blob/main/model.safetensors (main at commit
    # 38825935cd55b7f62331fbc6fdbe14a0bca3dcfd, 18.8 MB), read from a copy of that page, not by
    # hashing a download here. If main moves on, the fetch is refused until this is updated.
    ("timm/tf_efficientnet_lite0.in1k", "main", HUB_FILENAME): (
        "1b2a452450b5cf3f8f42da5b6214e71d5fda5666bef4dfae0699407e5bef13e1"
    ),
    # Not pinned, so refused here: smp-hub/resnet34.imagenet at
    # 7a57b34f723329ff020b3f8bc41771163c519d0c, model.safetensors and config.json (the default
    # encoder's weights come from torchvision's file instead: TORCH_HUB_URLS), and the timm
    # lite1/lite2 repos. Add an entry only from a source checked on a networked machine, e.g.
    # `sha256sum` of the files `hf download <repo> <file> --revision <rev>` fetched, or the
    # etag of `curl -sI https://huggingface.co/<repo>/resolve/<rev>/model.safetensors`;
    # until then `maskfind weights fetch --sha256 FILE=HEX` supplies a checksum for one run.
}


class WeightsFetchError(RuntimeError):
    """The weights could not be fetched; the real cache is unchanged."""


class NoPinnedChecksum(WeightsFetchError):
    """A file of the encoder has no pinned SHA-256, so it is not downloaded."""


class ChecksumMismatch(WeightsFetchError):
    """A file's SHA-256 differs from the pinned one."""


@dataclass(frozen=True)
class FetchedFile:
    """One verified file in the real cache."""

    repo_id: str
    revision: str
    filename: str
    path: Path
    """The snapshot path in the cache (what `hf_hub_download(..., local_files_only=True)` gives)."""
    sha256: str
    downloaded: bool
    """False when the file was already cached (and only verified)."""
    url: str | None = None
    """Where a torch.hub file comes from; None for Hugging Face files."""

    @property
    def label(self) -> str:
        """The file's origin, as the CLI prints it."""
        return self.url or f"{self.repo_id}@{self.revision} {self.filename}"


def fetch_weights(
    encoder_name: str = DEFAULT_ENCODER,
    *,
    weights: str = "imagenet",
    checksums: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> list[FetchedFile]:
    """What `maskfind weights fetch` does: the Hugging Face files when every one is pinned (or
    `checksums`, `FILE=HEX` options, pin them), else torchvision's file where one is published
    (`TORCH_HUB_URLS`), else `NoPinnedChecksum` before any download.

    Raises:
        ValueError: Unknown encoder or malformed `checksums`.
        WeightsFetchError: As `fetch_encoder_weights` and `fetch_torch_hub_weights`.
    """
    pinned = parse_sha256_options(encoder_name, weights, checksums)
    config, (repo_id, revision) = _located(encoder_name, weights)
    every_file_pinned = all(
        (repo_id, revision or "main", name) in pinned for name in hub_files(config)
    )
    url = TORCH_HUB_URLS.get((encoder_name, weights))
    if url is not None and not every_file_pinned:
        return [fetch_torch_hub_weights(url)]
    return fetch_encoder_weights(
        encoder_name, weights=weights, cache_dir=cache_dir, endpoint=endpoint, pinned=pinned
    )


def fetch_torch_hub_weights(url: str, *, hub_dir: str | Path | None = None) -> FetchedFile:
    """Download a torch.hub weights file into `<hub_dir>/checkpoints/`, checked by torch.hub
    against the SHA-256 prefix its name carries before it takes that name.

    Args:
        url: A file named `<name>-<sha256 prefix>.<ext>` (torch.hub's convention).
        hub_dir: torch.hub's folder; default `torch.hub.get_dir()` (`$TORCH_HOME/hub`).

    Raises:
        ValueError: The file name carries no SHA-256 prefix.
        ChecksumMismatch: The download, or the file already there, does not match its prefix.
        WeightsFetchError: The download failed.
    """
    name = Path(urlparse(url).path).name
    prefix = hash_prefix(name)
    target = Path(hub_dir or torch.hub.get_dir()) / "checkpoints" / name
    if target.is_file():
        digest = sha256_of(target)
        if not digest.startswith(prefix):
            raise ChecksumMismatch(
                f"cached {target}: SHA-256 {digest} does not start with {prefix}; the cache was "
                "not changed: delete it to fetch it again"
            )
        return FetchedFile(url, "torch.hub", name, target, digest, downloaded=False, url=url)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=prefix, progress=False)
    except RuntimeError as exc:  # torch.hub's "invalid hash value"; its partial file is removed
        raise ChecksumMismatch(
            f"downloaded {url}: {exc}; the download was discarded and the cache was not changed"
        ) from None
    except OSError as exc:  # URLError, HTTPError, disk errors
        raise WeightsFetchError(f"downloading {url} failed: {exc}") from exc
    return FetchedFile(url, "torch.hub", name, target, sha256_of(target), downloaded=True, url=url)


def hub_files(config: ModelSpec) -> tuple[str, ...]:
    """The files smp or timm download for `config`'s encoder weights."""
    if config.encoder_name.startswith("tu-"):
        return (HUB_FILENAME,)
    return (SMP_CONFIG_FILENAME, HUB_FILENAME)


def fetch_encoder_weights(
    encoder_name: str = DEFAULT_ENCODER,
    *,
    weights: str = "imagenet",
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    pinned: Mapping[tuple[str, str, str], str] | None = None,
) -> list[FetchedFile]:
    """Download `encoder_name`'s pretrained weights into the Hugging Face cache, verified.

    Args:
        encoder_name: smp encoder name (`tu-<timm name>` for timm encoders).
        weights: The smp pretrained-weights name (`ModelSpec.encoder_weights`).
        cache_dir: The hub cache; default `$HF_HUB_CACHE`, else huggingface_hub's default.
        endpoint: The hub URL; default `$HF_ENDPOINT` (read now), else huggingface_hub's default.
        pinned: (repo_id, revision, filename) -> SHA-256; default `PINNED_SHA256`.

    Returns:
        The verified files, in download order.

    Raises:
        ValueError: smp or timm knows no hub weights for this encoder.
        NoPinnedChecksum: A needed file has no pinned SHA-256 (nothing is downloaded).
        ChecksumMismatch: A downloaded or already cached file does not match its pin.
        WeightsFetchError: The download failed (offline mode, network, missing file).
    """
    config, (repo_id, revision) = _located(encoder_name, weights)
    ref = revision or "main"
    table = PINNED_SHA256 if pinned is None else pinned
    filenames = hub_files(config)
    unpinned = [name for name in filenames if (repo_id, ref, name) not in table]
    if unpinned:
        raise NoPinnedChecksum(
            f"no pinned checksum for {', '.join(unpinned)} of {repo_id} at revision {ref} "
            f"(encoder {encoder_name!r}), so nothing is downloaded: add the file's SHA-256 to "
            "PINNED_SHA256 in maskfind_pipeline/ml/weights/fetch.py, or pass "
            "--sha256 FILE=HEX to `maskfind weights fetch`"
        )
    expected = {name: table[(repo_id, ref, name)].lower() for name in filenames}
    cache = Path(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    cache = cache.expanduser()
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None

    fetched: dict[str, FetchedFile] = {}
    for name in filenames:
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=revision)
        if isinstance(cached, str):
            _verify(Path(cached), expected[name], f"cached {repo_id}/{name}", cached=True)
            fetched[name] = FetchedFile(
                repo_id, ref, name, Path(cached), expected[name], downloaded=False
            )
    missing = [name for name in filenames if name not in fetched]
    if missing:
        with tempfile.TemporaryDirectory(prefix="maskfind-weights-") as staging:
            staged = {
                name: _download(repo_id, name, revision, Path(staging), endpoint)
                for name in missing
            }
            for name, path in staged.items():
                _verify(path, expected[name], f"downloaded {repo_id}/{name}", cached=False)
            targets = {
                name: _target(path, Path(staging), cache, repo_id) for name, path in staged.items()
            }
            for name, target in targets.items():
                if target.exists():  # a snapshot entry the cache lookup did not reach (no ref)
                    _verify(target, expected[name], f"cached {repo_id}/{name}", cached=True)
            for name, path in staged.items():
                target = _install(path, staging=Path(staging), cache=cache, repo_id=repo_id)
                fetched[name] = FetchedFile(repo_id, ref, name, target, expected[name], True)
            _install_ref(Path(staging), cache, repo_id, ref)
    return [fetched[name] for name in filenames]


def parse_sha256_options(
    encoder_name: str, weights: str, options: Sequence[str]
) -> dict[tuple[str, str, str], str]:
    """`PINNED_SHA256` plus `FILE=HEX` options for `encoder_name`'s repo and revision.

    Raises:
        ValueError: An option is malformed, names a file the encoder does not need, or
            contradicts a pinned checksum.
    """
    config, (repo_id, revision) = _located(encoder_name, weights)
    table = dict(PINNED_SHA256)
    for option in options:
        name, _, digest = option.partition("=")
        digest = digest.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"--sha256 {option!r}: expected FILE=<64 hex digits>")
        if name not in hub_files(config):
            raise ValueError(f"--sha256 {option!r}: {encoder_name} needs {hub_files(config)}")
        key = (repo_id, revision or "main", name)
        if table.get(key, digest) != digest:
            raise ValueError(f"--sha256 {option!r} contradicts the pinned {table[key]}")
        table[key] = digest
    return table


def _located(encoder_name: str, weights: str) -> tuple[ModelSpec, tuple[str, str | None]]:
    config = ModelSpec(encoder_name=encoder_name, encoder_weights=weights)
    try:
        return config, hub_location(config)
    except KeyError:
        raise ValueError(f"unknown encoder {encoder_name!r} (neither smp nor tu-<timm>)") from None


def _verify(path: Path, expected: str, what: str, *, cached: bool) -> None:
    actual = sha256_of(path)
    if actual != expected:
        outcome = (
            f"; the cache was not changed: delete {path} (and its blob) to fetch it again"
            if cached
            else "; the download was discarded and the cache was not changed"
        )
        raise ChecksumMismatch(
            f"{what}: SHA-256 mismatch, expected {expected}, actual {actual}{outcome}"
        )


def _download(
    repo_id: str, filename: str, revision: str | None, staging: Path, endpoint: str | None
) -> Path:
    try:
        path = hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=staging, endpoint=endpoint
        )
    except OfflineModeIsEnabled:
        raise WeightsFetchError(
            "HF_HUB_OFFLINE is set: unset it for `maskfind weights fetch` (training may keep it)"
        ) from None
    except OSError as exc:  # HfHubHTTPError, LocalEntryNotFoundError, disk errors
        where = endpoint or constants.ENDPOINT
        raise WeightsFetchError(
            f"downloading {filename} of {repo_id}@{revision or 'main'} from {where} failed: {exc}"
        ) from exc
    return Path(path)


def _target(staged: Path, staging: Path, cache: Path, repo_id: str) -> Path:
    """Where a file staged at `.../snapshots/<commit>/<filename>` goes in `cache`."""
    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    return cache / folder / "snapshots" / staged.relative_to(staging / folder / "snapshots")


def _install(staged: Path, *, staging: Path, cache: Path, repo_id: str) -> Path:
    """Copy one verified file from the staging cache into `cache` in the same layout."""
    pointer = _target(staged, staging, cache, repo_id)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.exists():
        return pointer
    if not staged.is_symlink():
        _copy_atomically(staged, pointer)
        return pointer
    blob = cache / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    blob = blob / Path(os.readlink(staged)).name
    blob.parent.mkdir(parents=True, exist_ok=True)
    _copy_atomically(staged, blob)  # verified bytes; also replaces a stale blob of that name
    link = pointer.with_name(f".{pointer.name}.maskfind-link")
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(blob, pointer.parent))
    os.replace(link, pointer)
    return pointer


def _install_ref(staging: Path, cache: Path, repo_id: str, ref: str) -> None:
    """Copy `refs/<ref>` (written only when the revision is a branch or tag), last."""
    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    source = staging / folder / "refs" / ref
    if source.is_file():
        _write_atomically(cache / folder / "refs" / ref, source.read_bytes())


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.maskfind-partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.maskfind-partial")
    partial.write_bytes(data)
    os.replace(partial, target)
