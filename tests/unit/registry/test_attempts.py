"""Retries of one training (`registry.attempts.resume`) on a local SQLite store: a version whose
files do not verify is marked failed and never promoted; an attempt a retry took over registers
nothing; a kept version never takes `challenger` back from a newer training. Real SIGKILLs:
tests/integration/test_training_kill.py."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from mlflow.entities import LoggedModelStatus

from maskfind_pipeline.evaluation.cells import CellStore
from maskfind_pipeline.evaluation.gate import GatePolicy
from maskfind_pipeline.flows.promotion import gate_and_promote
from maskfind_pipeline.registry.attempts import resume
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHALLENGER, CHAMPION, promote
from maskfind_pipeline.registry.records import (
    ATTEMPT_NOTE_TAG,
    ATTEMPT_TAG,
    TRAINING_KEY_TAG,
    RegistryError,
    TrainingRecord,
)
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.models import TINY, tiny_record

KEY = "run-1/mask_model"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def registry(store: Path) -> ModelRegistry:
    """A registered model and experiment of its own in the module's store (one schema)."""
    name = f"attempts-{uuid.uuid4().hex[:8]}"
    return ModelRegistry(
        f"sqlite:///{store}/mlflow.db",
        model_name=name,
        experiment=name,
        artifact_location=(store / "artifacts").as_uri(),
    )


def _record(seed: int, key: str = KEY) -> TrainingRecord:
    record = tiny_record(seed=seed)
    return dataclasses.replace(record, tags={**record.tags, TRAINING_KEY_TAG: key})


class Died(BaseException):
    """Stands for the attempt's end right after a registry call (its response lost)."""


def test_a_version_whose_weights_do_not_verify_is_failed_and_never_promoted(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create = registry.client.create_model_version

    def create_then_die(*args: object, **kwargs: object) -> None:
        create(*args, **kwargs)  # type: ignore[arg-type]
        raise Died

    monkeypatch.setattr(registry.client, "create_model_version", create_then_die)
    with pytest.raises(Died):
        registry.log_training(_record(seed=1))
    monkeypatch.undo()
    (broken,) = registry.versions()
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.safetensors").write_bytes(tiny_record(seed=2).weights[:1000])
    (other / "config.json").write_text(TINY.to_json())
    registry.client.log_model_artifacts(broken.model_id, str(other), "artifacts")

    assert resume(registry, KEY, alias=CHALLENGER) is None
    retried = registry.log_training(_record(seed=3))

    broken = registry.get(broken.version)
    assert broken.tags[ATTEMPT_TAG] == "failed" and broken.aliases == ()
    assert "do not match their sha256" in broken.tags[ATTEMPT_NOTE_TAG]
    assert registry.client.get_run(broken.run_id).info.status == "FAILED"
    assert registry.get(CHALLENGER).version == retried.version
    with pytest.raises(RegistryError, match="from a failed training attempt"):
        promote(registry, broken.version, actor="alice", reason="try it anyway")
    assert registry.alias_or_none(CHAMPION) is None
    promote(registry, retried.version, actor="schedule", reason="gate passed")
    assert resume(registry, KEY, alias=CHALLENGER) == registry.get(retried.version)


def test_an_attempt_a_retry_took_over_registers_nothing(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orphaned attempt still uploading when the retry starts: the retry marks it failed, and
    it then neither makes its model READY nor registers it."""
    upload = registry.client.log_model_artifacts

    def upload_while_retry_starts(*args: object, **kwargs: object) -> None:
        upload(*args, **kwargs)  # type: ignore[arg-type]
        assert resume(registry, KEY, alias=CHALLENGER) is None

    monkeypatch.setattr(registry.client, "log_model_artifacts", upload_while_retry_starts)
    with pytest.raises(RegistryError, match="a retry of the same training took over"):
        registry.log_training(_record(seed=1))

    assert registry.versions() == []
    (model,) = registry.client.search_logged_models([registry.experiment_id()])
    assert model.status == LoggedModelStatus.FAILED
    assert registry.client.get_run(str(model.source_run_id)).info.status == "FAILED"


def test_a_kept_version_never_takes_challenger_from_a_newer_training(
    registry: ModelRegistry,
) -> None:
    early = registry.log_training(_record(seed=1), alias=None)  # died before its alias
    assert resume(registry, KEY, alias=CHALLENGER) == registry.get(early.version)
    assert registry.get(CHALLENGER).version == early.version  # it lacked it: given

    registry.client.delete_registered_model_alias(registry.model_name, CHALLENGER)
    newer = registry.log_training(_record(seed=2, key="run-2/mask_model"))
    kept = resume(registry, KEY, alias=CHALLENGER)

    assert kept is not None and kept.version == early.version
    assert registry.get(CHALLENGER).version == newer.version


def test_the_gate_refuses_a_challenger_from_a_failed_attempt(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """A version marked failed after it got `challenger` (e.g. its files stopped verifying): the
    nightly gate says why and moves nothing, whatever its cells say."""
    challenger = registry.log_training(_record(seed=1))
    registry.tag_version(challenger.version, {ATTEMPT_TAG: "failed", ATTEMPT_NOTE_TAG: "why"})

    outcome = gate_and_promote(
        registry, CellStore(LocalObjectStore(tmp_path)), GatePolicy(floor=0.0), actor="test"
    )

    assert not outcome.decision.passed and not outcome.promoted
    assert outcome.decision.reasons == [
        f"candidate {challenger.version} is from a failed training attempt: why"
    ]
    assert registry.alias_or_none(CHAMPION) is None
