"""`maskfind weights fetch`: verified downloads into the hub cache, from a loopback stand-in hub."""

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
from maskfind_pipeline.ml import pretrained
from maskfind_pipeline.ml.weights_fetch import (
    PINNED_SHA256,
    ChecksumMismatch,
    NoPinnedChecksum,
    fetch_encoder_weights,
)

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
            data = FILES.get((repo, revision, filename)) if sep else None
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMITS[revision])
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


def test_cli_fetches_verifies_and_refuses(hub: StandInHub, cache: Path) -> None:
    runner = CliRunner()
    refused = runner.invoke(main, ["weights", "fetch"])
    assert refused.exit_code == 1 and "no pinned checksum" in refused.output
    assert hub.requests == []

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
