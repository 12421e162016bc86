"""The MLflow registry on a local SQLite store: register, aliases, verified loading, no pickle."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from maskfind_pipeline.ml.segmentation.predict import InvalidWeights, Predictor
from maskfind_pipeline.registry.loading import load_model
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.records import RegistryError
from tests.support.models import TINY, tiny_record


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root = tmp_path_factory.mktemp("mlflow")
    return ModelRegistry(
        f"sqlite:///{root}/mlflow.db",
        model_name="maskfind-unet-test",
        artifact_location=(root / "artifacts").as_uri(),
    )


def test_training_is_registered_with_tags_and_alias_challenger(registry: ModelRegistry) -> None:
    model = registry.log_training(tiny_record(seed=1, dataset_version="ds-aaa"))
    assert "challenger" in model.aliases
    assert model.tags["dataset_version"] == "ds-aaa" and model.tags["encoder"] == "resnet18"
    assert model.tags["threshold"] == "0.4000" and len(model.weights_sha256) == 64
    assert registry.get("challenger").version == model.version
    run = registry.client.get_run(model.run_id)
    assert run.data.params["epochs"] == "2"
    history = registry.client.get_metric_history(model.run_id, "val_miou")
    assert [m.value for m in history] == [0.5, 0.6]


def test_reload_gives_identical_logits(registry: ModelRegistry) -> None:
    record = tiny_record(seed=2)
    model = registry.log_training(record, alias=None)
    original = Predictor.from_weights(TINY, record.weights)
    reloaded = load_model(registry, model.version)
    images = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(original.logits(images), reloaded.logits(images))
    assert reloaded.config.threshold == 0.4 and reloaded.version == model.version
    mask = reloaded.predict_mask(np.zeros((50, 70, 3), dtype=np.uint8))
    assert mask.shape == (50, 70) and mask.dtype == bool


def test_missing_alias_or_version_is_a_clear_error(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        registry.get("champion")
    with pytest.raises(RegistryError, match="no version '999'"):
        load_model(registry, 999)


def test_deleted_version_drops_its_alias_and_never_falls_back(registry: ModelRegistry) -> None:
    model = registry.log_training(tiny_record(seed=3), alias="doomed")
    registry.client.delete_model_version(registry.model_name, model.version)
    with pytest.raises(RegistryError, match="no alias 'doomed'"):
        load_model(registry, "doomed")


def test_altered_weights_fail_their_hash(registry: ModelRegistry, tmp_path: Path) -> None:
    model = registry.log_training(tiny_record(seed=4), alias=None)
    other = tmp_path / "model"
    other.mkdir()
    (other / "weights.safetensors").write_bytes(tiny_record(seed=5).weights)
    (other / "config.json").write_text(TINY.to_json())
    registry.client.log_model_artifacts(model.model_id, str(other), "artifacts")
    with pytest.raises(RegistryError, match="do not match their sha256"):
        registry.download(model.version)


def test_files_beside_the_weights_come_back_verified(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    files = {"novelty.json": b'{"threshold": 3.5}', "novelty.safetensors": b"\x00" * 64}
    record = dataclasses.replace(tiny_record(seed=6), files=files)
    model = registry.log_training(record, alias=None)
    assert registry.download(model.version).files == files
    assert registry.download(registry.log_training(tiny_record(seed=7)).version).files == {}
    altered = tmp_path / "model"
    altered.mkdir()
    (altered / "novelty.json").write_bytes(b'{"threshold": 0.0}')
    registry.client.log_model_artifacts(model.model_id, str(altered), "artifacts")
    with pytest.raises(RegistryError, match=r"novelty\.json do not match their sha256"):
        registry.download(model.version)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_malicious_pickle_offered_as_weights_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = pickle.dumps({"encoder.conv1.weight": _Exploit(marker)})
    with pytest.raises(InvalidWeights, match="not a safetensors file"):
        Predictor.from_weights(TINY, payload)
    torch_file = tmp_path / "weights.pt"
    torch.save({"w": _Exploit(marker)}, torch_file)
    with pytest.raises(InvalidWeights):
        Predictor.from_weights(TINY, torch_file.read_bytes())
    assert not marker.exists()
