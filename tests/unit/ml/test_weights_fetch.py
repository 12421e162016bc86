"""`maskfind weights fetch`: verified downloads into the Hugging Face and torch.hub caches, from a
loopback stand-in for the hub and for download.pytorch.org."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
from click.testing import CliRunner
from huggingface_hub import hf_hub_download

from maskfind_pipeline.cli import main
from maskfind_pipeline.ml.weights import pretrained
from maskfind_pipeline.ml.weights.fetch import (
    PINNED_SHA256,
    ChecksumMismatch,
    NoPinnedChecksum,
    fetch_encoder_weights,
    fetch_torch_hub_weights,
    fetch_weights,
)
from maskfind_pipeline.ml.weights.pretrained import TORCH_HUB_URLS

SMP_REPO = "smp-hub/resnet34.imagenet"
SMP_REVISION = "7a57b34f723329ff020b3f8bc41771163c519d0c"
TIMM_REPO = "timm/tf_efficientnet_lite0.in1k"
TIMM_COMMIT = "c0ffee" * 6 + "c0ff"
FILES = {
    (SMP_REPO, SMP_REVISION, "config.json"): b'{"stand-in": "config"}\n',
    (SMP_REPO, SMP_REVISION, "model.safetensors"): b"stand-in resnet34 weights",
    (TIMM_REPO, "main", "model.safetensors"): b"stand-in lite0 weights",
}
COMMITS = {SMP_REVISION: SMP_REVISION, "main": TIMM_COMMIT}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TORCHVISION_DATA = b"stand-in torchvision resnet34 weights"
TORCHVISION_NAME = f"resnet34-{sha256(TORCHVISION_DATA)[:8]}.pth"
MISNAMED = "resnet34-00000000.pth"
TORCH_FILES = {f"/models/{TORCHVISION_NAME}": TORCHVISION_DATA, f"/models/{MISNAMED}": b"other"}


RIGHT = {key: sha256(data) for key, data in FILES.items()}


@dataclass
class StandInHub:
    """Answers `/{repo_id}/resolve/{revision}/{filename}` like the hub, and records requests."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)

    def gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    record: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            record.append((self.command, self.path))
            repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
            revision, _, filename = rest.partition("/")
            data = FILES.get((repo, revision, filename)) if sep else TORCH_FILES.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMITS.get(revision, SMP_REVISION))
            self.send_header("ETag", f'"{sha256(data)}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: object) -> None:
        if not (isinstance(address, tuple) and address[:2] == ("127.0.0.1", port)):
            raise AssertionError(f"connection outside the stand-in hub attempted: {address}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        yield StandInHub(f"http://127.0.0.1:{port}", record)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hf-cache"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    return path


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub folder (`$TORCH_HOME/hub`)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub"


def listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_right_checksums_fill_the_cache_where_training_looks(hub: StandInHub, cache: Path) -> None:
    files = fetch_encoder_weights("resnet34", pinned=RIGHT)
    assert [(f.filename, f.downloaded) for f in files] == [
        ("config.json", True),
        ("model.safetensors", True),
    ]
    assert sorted(hub.gets()) == [
        f"/{SMP_REPO}/resolve/{SMP_REVISION}/config.json",
        f"/{SMP_REPO}/resolve/{SMP_REVISION}/model.safetensors",
    ]
    for name in ("config.json", "model.safetensors"):
        found = hf_hub_download(
            SMP_REPO, name, revision=SMP_REVISION, cache_dir=cache, local_files_only=True
        )
        assert Path(found).read_bytes() == FILES[(SMP_REPO, SMP_REVISION, name)]
    found = pretrained._cached_hub_file(SMP_REPO, SMP_REVISION)
    assert found is not None and found.read_bytes() == b"stand-in resnet34 weights"
    snapshot = cache / "models--smp-hub--resnet34.imagenet" / "snapshots" / SMP_REVISION
    assert (snapshot / "model.safetensors").is_symlink()
    assert not any("maskfind" in name for name in listing(cache))

    again = fetch_encoder_weights("resnet34", pinned=RIGHT)
    assert [f.downloaded for f in again] == [False, False]
    assert len(hub.gets()) == 2


def test_a_branch_revision_gets_its_ref(hub: StandInHub, cache: Path) -> None:
    (file,) = fetch_encoder_weights("tu-tf_efficientnet_lite0", pinned=RIGHT)
    assert (file.repo_id, file.revision, file.downloaded) == (TIMM_REPO, "main", True)
    refs = cache / "models--timm--tf_efficientnet_lite0.in1k" / "refs" / "main"
    assert refs.read_text() == TIMM_COMMIT
    found = pretrained._cached_hub_file(TIMM_REPO, None)
    assert found is not None and found.read_bytes() == b"stand-in lite0 weights"


def test_wrong_checksum_is_refused_and_leaves_the_cache_untouched(
    hub: StandInHub, cache: Path
) -> None:
    (cache / "models--other--repo" / "refs").mkdir(parents=True)
    before = listing(cache)
    wrong = {**RIGHT, (SMP_REPO, SMP_REVISION, "model.safetensors"): "ab" * 32}
    with pytest.raises(ChecksumMismatch) as info:
        fetch_encoder_weights("resnet34", pinned=wrong)
    message = str(info.value)
    assert "ab" * 32 in message and sha256(b"stand-in resnet34 weights") in message
    assert len(hub.gets()) == 2, "both files were downloaded, then refused together"
    assert listing(cache) == before
    assert pretrained._cached_hub_file(SMP_REPO, SMP_REVISION) is None


def test_real_pinned_checksum_refuses_a_stand_in_file(hub: StandInHub, cache: Path) -> None:
    assert (TIMM_REPO, "main", "model.safetensors") in PINNED_SHA256
    with pytest.raises(
        ChecksumMismatch, match=PINNED_SHA256[(TIMM_REPO, "main", "model.safetensors")]
    ):
        fetch_encoder_weights("tu-tf_efficientnet_lite0")
    assert hub.gets() and listing(cache) == []


def test_encoder_without_pinned_checksum_is_refused_before_any_request(
    hub: StandInHub, cache: Path
) -> None:
    with pytest.raises(NoPinnedChecksum, match=r"no pinned checksum for .*smp-hub/resnet34"):
        fetch_encoder_weights("resnet34", pinned={})
    assert hub.requests == [] and listing(cache) == []


def test_the_default_encoder_comes_from_torchvision_checked_by_its_hash_prefix(
    hub: StandInHub, torch_home: Path
) -> None:
    url = f"{hub.url}/models/{TORCHVISION_NAME}"
    fetched = fetch_torch_hub_weights(url)
    target = torch_home / "checkpoints" / TORCHVISION_NAME
    assert (fetched.path, fetched.sha256, fetched.downloaded) == (
        target,
        sha256(TORCHVISION_DATA),
        True,
    )
    assert target.read_bytes() == TORCHVISION_DATA
    assert listing(torch_home) == ["checkpoints", f"checkpoints/{TORCHVISION_NAME}"]
    assert not fetch_torch_hub_weights(url).downloaded
    assert hub.gets() == [f"/models/{TORCHVISION_NAME}"]


def test_a_torchvision_file_not_matching_its_name_is_refused_and_leaves_the_cache_untouched(
    hub: StandInHub, torch_home: Path
) -> None:
    with pytest.raises(ChecksumMismatch, match=f'expected "00000000", got "{sha256(b"other")}'):
        fetch_torch_hub_weights(f"{hub.url}/models/{MISNAMED}")
    assert hub.gets() == [f"/models/{MISNAMED}"]
    assert listing(torch_home) == ["checkpoints"], "no partial file is left"
    damaged = torch_home / "checkpoints" / TORCHVISION_NAME
    damaged.write_bytes(b"damaged")
    with pytest.raises(ChecksumMismatch, match="delete it"):
        fetch_torch_hub_weights(f"{hub.url}/models/{TORCHVISION_NAME}")
    assert damaged.read_bytes() == b"damaged" and len(hub.gets()) == 1


def test_an_encoder_with_neither_pin_nor_torchvision_file_is_refused_before_any_request(
    hub: StandInHub, cache: Path, torch_home: Path
) -> None:
    with pytest.raises(NoPinnedChecksum, match="tf_efficientnet_lite1"):
        fetch_weights("tu-tf_efficientnet_lite1")
    assert hub.requests == [] and listing(cache) == [] and not torch_home.exists()


def test_cli_fetches_verifies_and_refuses(
    hub: StandInHub, cache: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    url = f"{hub.url}/models/{TORCHVISION_NAME}"
    monkeypatch.setitem(TORCH_HUB_URLS, ("resnet34", "imagenet"), url)
    default = runner.invoke(main, ["weights", "fetch"])
    assert default.exit_code == 0, default.output
    assert f"{url}: sha256 {sha256(TORCHVISION_DATA)} OK, downloaded" in default.output
    assert (torch_home / "checkpoints" / TORCHVISION_NAME).read_bytes() == TORCHVISION_DATA
    assert listing(cache) == [], "the Hugging Face cache is not touched"
    monkeypatch.setitem(TORCH_HUB_URLS, ("resnet34", "imagenet"), f"{hub.url}/models/{MISNAMED}")
    refused = runner.invoke(main, ["weights", "fetch"])
    assert refused.exit_code == 1 and "invalid hash value" in refused.output

    config = f"config.json={RIGHT[(SMP_REPO, SMP_REVISION, 'config.json')]}"
    wrong = runner.invoke(
        main, ["weights", "fetch", "--sha256", config, "--sha256", "model.safetensors=" + "0" * 64]
    )
    assert wrong.exit_code == 1 and "SHA-256 mismatch" in wrong.output
    assert listing(cache) == []

    model = f"model.safetensors={RIGHT[(SMP_REPO, SMP_REVISION, 'model.safetensors')]}"
    result = runner.invoke(
        main, ["weights", "fetch", "resnet34", "--sha256", config, "--sha256", model]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("OK, downloaded") == 2
    assert pretrained._cached_hub_file(SMP_REPO, SMP_REVISION) is not None
