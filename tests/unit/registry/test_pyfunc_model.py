"""Registered versions are pyfunc LoggedModels from code: the same masks as `load_model`, in a
fresh process by alias; old versions (files in the run's `model/` folder) still load."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import load_model as load_pyfunc
from PIL import Image

from maskfind_pipeline.data.images import InvalidImage
from maskfind_pipeline.evaluation.cells import Cell
from maskfind_pipeline.flows.evaluation import log_cell_run
from maskfind_pipeline.ml.reviewer.config import ReviewerSpec
from maskfind_pipeline.ml.reviewer.grader import GRADE_MODEL_FILE
from maskfind_pipeline.ml.reviewer.grading import SIGNALS, fit_grade_model, grades_of
from maskfind_pipeline.ml.reviewer.model import build_reviewer
from maskfind_pipeline.ml.segmentation.predict import Predictor, weights_to_bytes
from maskfind_pipeline.registry.loading import load_grader, load_model, load_reviewer
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.pyfunc_models import AlteredWeights
from maskfind_pipeline.registry.records import RegistryError, TrainingRecord
from tests.support.models import TINY, tiny_record

ROOT = Path(__file__).resolve().parents[3]
RNG = np.random.default_rng(7)
IMAGES = {  # (name, encoded bytes): two PNG sizes and a JPEG, so resizing is exercised
    "wide": RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8),
    "square": RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    "odd": RNG.integers(0, 256, (33, 47, 3), dtype=np.uint8),
}


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    sink = io.BytesIO()
    Image.fromarray(pixels).save(sink, fmt)
    return sink.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


UPLOADS = [encode(IMAGES["wide"]), encode(IMAGES["square"]), encode(IMAGES["odd"], "JPEG")]


def mixed_record(seed: int) -> TrainingRecord:
    """A tiny model whose threshold is the median probability of the uploads: half product."""
    record = tiny_record(seed=seed)
    predictor = Predictor.from_weights(TINY, record.weights)
    probs = np.concatenate([predictor.probabilities(decoded(u)).ravel() for u in UPLOADS])
    config = TINY.model_copy(update={"threshold": float(np.median(probs))})
    return dataclasses.replace(record, config=config, dataset_version=f"ds-{seed:016x}")


@pytest.fixture(autouse=True)
def no_global_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in an empty folder: a client falling back to MLflow's process-global tracking URI
    (default `sqlite:///mlflow.db`) would leave a store there."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root = tmp_path_factory.mktemp("mlflow")
    return ModelRegistry(
        f"sqlite:///{root}/mlflow.db",
        model_name="maskfind-unet-pyfunc",
        artifact_location=(root / "artifacts").as_uri(),
    )


@pytest.fixture(scope="module")
def champion(registry: ModelRegistry) -> str:
    """Version logged first and made champion; a later version is only challenger."""
    version = registry.log_training(mixed_record(seed=11), alias="champion").version
    registry.log_training(mixed_record(seed=12), alias="challenger")
    return version


def old_layout_version(registry: ModelRegistry, record: TrainingRecord) -> str:
    """A version as `log_training` wrote it before versions were pyfunc models: the files in
    its run's `model/` folder, sha256 tags, no LoggedModel."""
    client = registry.client
    run_id = client.create_run(registry.experiment_id(), run_name="train-old").info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "model")
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(record.weights)
        (folder / "config.json").write_text(record.config.to_json())
        for name, data in record.files.items():
            (folder / name).write_bytes(data)
        client.log_artifacts(run_id, str(folder), "model")
    client.set_terminated(run_id)
    with contextlib.suppress(MlflowException):  # exists
        client.create_registered_model(registry.model_name)
    sha = {n: _sha(d) for n, d in sorted(record.files.items())}
    tags = {"weights_sha256": _sha(record.weights), "files_sha256": json.dumps(sha)}
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    return str(client.create_model_version(registry.model_name, source, run_id, tags).version)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_version_is_a_pyfunc_model_from_code_linked_to_its_run(tmp_path: Path) -> None:
    registry = ModelRegistry(
        f"sqlite:///{tmp_path}/store/mlflow.db",
        model_name="maskfind-unet-logged",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    files = {"novelty.json": b'{"threshold": 3.5}'}
    record = dataclasses.replace(tiny_record(seed=3, dataset_version="ds-00ab"), files=files)
    model = registry.log_training(record)
    logged = registry.client.get_logged_model(model.model_id)
    assert logged.name == "model" and logged.source_run_id == model.run_id
    assert str(logged.status) == "READY"
    outputs = registry.client.get_run(model.run_id).outputs
    assert outputs is not None
    assert [o.model_id for o in outputs.model_outputs] == [model.model_id]
    [entry] = json.loads(logged.tags["mlflow.modelVersions"])
    assert (entry["name"], str(entry["version"])) == (registry.model_name, model.version)
    assert logged.tags["weights_sha256"] == model.weights_sha256
    [metric] = [m for m in logged.metrics or [] if m.key == "val_miou_tuned"]
    assert (metric.value, metric.dataset_name, metric.dataset_digest) == (0.61, "ds-00ab", "00ab")

    folder = Path(urlparse(logged.artifact_location).path)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in flavor  # no cloudpickled object
    assert set(flavor["artifacts"]) == {"weights", "config", "novelty.json"}
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "binary", "name": "image", "required": True}
    ]
    assert mlmodel["model_id"] == model.model_id and mlmodel["run_id"] == model.run_id
    stored = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert not [p for p in stored if p.endswith((".pkl", ".pickle", ".pt", ".pth"))], stored
    expected = {"artifacts/weights.safetensors", "artifacts/config.json", "mask_model.py"}
    assert expected <= set(stored), stored
    run_folder = Path(urlparse(str(registry.client.get_run(model.run_id).info.artifact_uri)).path)
    assert not (run_folder / "model").exists()  # the files are stored once, in the model
    assert registry.download(model.version).files == files


def test_old_and_new_versions_load_and_verify_alike(registry: ModelRegistry) -> None:
    record = tiny_record(seed=4)
    record = dataclasses.replace(record, files={"novelty.json": b"{}"})
    old = old_layout_version(registry, record)
    new = registry.log_training(record, alias=None).version
    assert registry.get(old).model_id == "" and registry.get(new).model_id
    images = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    expected = Predictor.from_weights(TINY, record.weights).logits(images)
    for version in (old, new):
        assert torch.equal(load_model(registry, version).logits(images), expected)
        assert registry.download(version).files == {"novelty.json": b"{}"}
    altered = Path(tempfile.mkdtemp())
    (altered / "weights.safetensors").write_bytes(tiny_record(seed=5).weights)
    registry.client.log_artifacts(registry.get(old).run_id, str(altered), "model")
    with pytest.raises(RegistryError, match=r"weights\.safetensors do not match their sha256"):
        load_model(registry, old)
    assert torch.equal(load_model(registry, new).logits(images), expected)


_FRESH_PROCESS = """
import json, sys
from pathlib import Path
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
uploads = [Path(p).read_bytes() for p in sys.argv[3:]]
out = model.predict(pd.DataFrame({"image": uploads}), params={"probabilities": True})
for i, row in out.iterrows():
    Path(sys.argv[2], f"{i}.mask.png").write_bytes(row["mask"])
    Path(sys.argv[2], f"{i}.probs.png").write_bytes(row["probabilities"])
print(json.dumps({"model_id": model.metadata.model_id, "fractions": list(out["mask_fraction"])}))
"""


def test_pyfunc_by_alias_in_a_fresh_process_predicts_the_masks_of_load_model(
    registry: ModelRegistry, champion: str, tmp_path: Path
) -> None:
    paths = []
    for i, data in enumerate(UPLOADS):
        paths.append(tmp_path / f"upload{i}")
        paths[-1].write_bytes(data)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri}
    uri = f"models:/{registry.model_name}@champion"
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, uri, str(tmp_path), *map(str, paths)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["model_id"] == registry.get("champion").model_id
    predictor, other = load_model(registry, "champion"), load_model(registry, "challenger")
    assert predictor.version == champion
    differs = False
    for i, data in enumerate(UPLOADS):
        image = decoded(data)
        expected = predictor.probabilities(image)
        mask = np.asarray(Image.open(tmp_path / f"{i}.mask.png"))
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, expected >= predictor.config.threshold)
        assert 0.1 < (mask > 0).mean() < 0.9  # a mask that can tell models apart
        assert answer["fractions"][i] == pytest.approx((mask > 0).mean())
        probs = np.asarray(Image.open(tmp_path / f"{i}.probs.png"))
        np.testing.assert_array_equal(probs, np.round(expected * 255).astype(np.uint8))
        differs |= not np.array_equal(mask > 0, other.predict_mask(image))
    assert differs, "the challenger predicts the same masks: the alias would go unchecked"


def test_the_pyfunc_refuses_altered_weights_and_names_a_bad_image(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    model = registry.log_training(tiny_record(seed=6), alias=None)
    location = registry.client.get_logged_model(model.model_id).artifact_location
    pyfunc = load_pyfunc(location)
    with pytest.raises(InvalidImage, match="row 1: image is not a readable PNG or JPEG"):
        pyfunc.predict(pd.DataFrame({"image": [UPLOADS[0], b"not an image"]}))
    altered = tmp_path / "artifacts"
    altered.mkdir()
    (altered / "weights.safetensors").write_bytes(tiny_record(seed=7).weights)
    registry.client.log_model_artifacts(model.model_id, str(altered), "artifacts")
    with pytest.raises(AlteredWeights, match="is not the logged"):
        load_pyfunc(location)


def test_the_reviewer_is_a_pyfunc_too(tmp_path: Path) -> None:
    reviewers = ModelRegistry(
        f"sqlite:///{tmp_path}/store/mlflow.db",
        model_name="maskfind-reviewer-test",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    spec = ReviewerSpec(encoder_name="resnet18", encoder_weights=None, input_size=32)
    torch.manual_seed(0)
    record = dataclasses.replace(
        tiny_record(), config=spec, weights=weights_to_bytes(build_reviewer(spec, pretrained=False))
    )
    model = reviewers.log_training(record)
    pyfunc = load_pyfunc(reviewers.client.get_logged_model(model.model_id).artifact_location)
    image = IMAGES["wide"]
    probs = np.clip(np.arange(50 * 70).reshape(50, 70) / 14, 0, 255).astype(np.uint8)
    out = pyfunc.predict(
        pd.DataFrame(
            {"image": [encode(image)], "probabilities": [encode(probs)], "threshold": [0.3]}
        )
    )
    reviewer = load_reviewer(reviewers, model.version)
    expected = reviewer.grade_batch(
        torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(probs)[None, None], 0.3
    )[0]
    assert list(out.columns) == ["grade", "p_grade1", "p_grade2", "p_grade3"]
    odds = out.iloc[0][["p_grade1", "p_grade2", "p_grade3"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(odds, expected.double().numpy(), rtol=0, atol=1e-7)
    assert out.iloc[0]["grade"] == int(grades_of(odds[None])[0])


def test_a_served_reviewer_grades_with_its_grade_model(tmp_path: Path) -> None:
    """A version with a grade model serves its grades, from the optional signal columns the
    mask model's production pass has (flip disagreement, novelty), as `load_grader` grades."""
    reviewers = ModelRegistry(
        f"sqlite:///{tmp_path}/store/mlflow.db",
        model_name="maskfind-reviewer-test",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    spec = ReviewerSpec(encoder_name="resnet18", encoder_weights=None, input_size=32)
    rng = np.random.default_rng(0)
    signals = {name: rng.uniform(0, 1, 200) for name in SIGNALS}
    grades = np.where(signals["flip_disagreement"] > 0.6, 3, 1)
    grade_model = fit_grade_model(signals, grades, "signals")
    record = dataclasses.replace(
        tiny_record(),
        config=spec,
        weights=weights_to_bytes(build_reviewer(spec, pretrained=False)),
        files={GRADE_MODEL_FILE: grade_model.to_json().encode()},
    )
    model = reviewers.log_training(record)
    pyfunc = load_pyfunc(reviewers.client.get_logged_model(model.model_id).artifact_location)
    image = IMAGES["wide"]
    probs = np.clip(np.arange(50 * 70).reshape(50, 70) / 14, 0, 255).astype(np.uint8)
    row = {"image": encode(image), "probabilities": encode(probs), "threshold": 0.3}
    frame = pd.DataFrame([{**row, "flip_disagreement": f, "novelty": 1.0} for f in (0.0, 0.9)])
    out = pyfunc.predict(frame)
    grader = load_grader(reviewers, model.version)
    assert grader.reviewer is None and grader.scorer == "signals"  # the CNN is never loaded
    for i, flip in enumerate((0.0, 0.9)):
        expected = grader.grade_batch(
            torch.from_numpy(image).permute(2, 0, 1)[None],
            torch.from_numpy(probs)[None, None],
            0.3,
            flip_disagreement=np.array([flip]),
            novelty=np.array([1.0]),
        )[0]
        odds = out.iloc[i][["p_grade1", "p_grade2", "p_grade3"]].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(odds, expected, rtol=0, atol=1e-7)
    assert out.iloc[1]["p_grade3"] > out.iloc[0]["p_grade3"]  # more disagreement, more suspect
    without = pyfunc.predict(pd.DataFrame([row]))  # signals left out: unknown, filled in
    assert 0.0 < without.iloc[0]["p_grade3"] < 1.0


def test_cell_metrics_are_the_logged_models_metrics_too(registry: ModelRegistry) -> None:
    new = registry.log_training(tiny_record(seed=8), alias=None)
    old = old_layout_version(registry, tiny_record(seed=9))
    rows: list[dict[str, object]] = [
        {"group_kind": "overall", "group": "all", "miou": 0.8, "precision": 0.9, "recall": 0.7},
        {"group_kind": "image_type", "group": "x", "miou": 0.6, "precision": 0.5, "recall": 0.4},
    ]
    run_id = log_cell_run(registry, Cell(new.version, "ds-0123456789abcdef"), rows)
    logged = registry.client.get_logged_model(new.model_id)
    found = {
        (m.key, m.dataset_name, m.dataset_digest, m.run_id): m.value for m in logged.metrics or []
    }
    test = "ds-0123456789abcdef/test"  # measured on the version's test split
    assert found[("test_miou/overall", test, "0123456789abcdef", run_id)] == 0.8
    assert found[("test_recall/image_type/x", test, "0123456789abcdef", run_id)] == 0.4
    old_run = log_cell_run(registry, Cell(old, "ds-0123456789abcdef"), rows)  # no model: run only
    assert registry.client.get_run(old_run).data.metrics["test_miou/overall"] == 0.8
