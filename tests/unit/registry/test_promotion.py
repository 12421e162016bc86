"""Alias moves: exactly one champion, recorded who/why, rollback restores the previous one."""

from __future__ import annotations

import pytest

from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.promotion import CHAMPION, promote, rollback
from maskfind_pipeline.registry.records import RegistryError
from tests.support.models import tiny_record


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:  # type: ignore[no-untyped-def]
    return ModelRegistry(
        f"sqlite:///{tmp_path}/mlflow.db",
        model_name="promo",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )


def test_promote_records_evidence_and_rollback_restores(registry: ModelRegistry) -> None:
    v1 = registry.log_training(tiny_record(seed=1)).version
    v2 = registry.log_training(tiny_record(seed=2)).version
    first = promote(registry, v1, actor="schedule", reason="gate passed")
    assert first.previous is None and registry.get(CHAMPION).version == v1
    second = promote(
        registry,
        v2,
        actor="alice",
        reason="better on wafers",
        evidence=[{"group": "overall", "delta": 0.01}],
    )
    assert second.previous == v1
    champion = registry.get(CHAMPION)
    assert champion.version == v2
    assert champion.tags["promoted_by"] == "alice" and champion.tags["previous_champion"] == v1
    assert "overall" in champion.tags["gate_evidence"]
    assert sum(CHAMPION in m.aliases for m in registry.versions()) == 1

    back = rollback(registry, actor="bob", reason="line 3 complains")
    assert back.champion == v1 and registry.get(CHAMPION).version == v1
    assert registry.get(v2).tags["rolled_back_by"] == "bob"
    assert sum(CHAMPION in m.aliases for m in registry.versions()) == 1


def test_rollback_without_a_previous_champion_is_a_clear_error(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        rollback(registry, actor="bob", reason="oops")
    v1 = registry.log_training(tiny_record(seed=1)).version
    promote(registry, v1, actor="schedule", reason="first")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(registry, actor="bob", reason="oops")


def test_promoting_a_deleted_version_fails_and_keeps_the_champion(registry: ModelRegistry) -> None:
    v1 = registry.log_training(tiny_record(seed=1)).version
    v2 = registry.log_training(tiny_record(seed=2)).version
    promote(registry, v1, actor="schedule", reason="first")
    registry.client.delete_model_version(registry.model_name, v2)
    with pytest.raises(RegistryError, match=f"no version '{v2}'"):
        promote(registry, v2, actor="alice", reason="try")
    assert registry.get(CHAMPION).version == v1


class Crash(Exception):
    """Stands for the process dying at one write to the registry."""


class CrashAt:
    """Counts the registry writes it wraps and raises `Crash` at the n-th."""

    def __init__(self, n: int) -> None:
        self.n, self.writes = n, 0

    def wrap(self, write):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.writes += 1
            if self.writes == self.n:
                raise Crash(f"died at write {self.n}")
            return write(*args, **kwargs)

        return wrapper


def test_a_crash_at_any_write_of_a_promotion_can_be_rolled_back(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever registry write the process dies at, the champion is either the old one or a
    new one that `rollback` returns to the old one; and the promotion can simply be retried."""
    v1 = registry.log_training(tiny_record(seed=1)).version
    promote(registry, v1, actor="schedule", reason="first")
    client = registry.client
    originals = {
        n: getattr(client, n) for n in ("set_model_version_tag", "set_registered_model_alias")
    }
    crashed_at = []
    for crash_at in range(1, 9):  # a promotion makes 7 writes: past the last, none crashes
        candidate = registry.log_training(tiny_record(seed=crash_at + 1)).version
        crash = CrashAt(crash_at)
        for name, write in originals.items():
            monkeypatch.setattr(client, name, crash.wrap(write))
        try:
            promote(registry, candidate, actor="schedule", reason="gate passed")
        except Crash:
            crashed_at.append(crash_at)
        monkeypatch.undo()
        if registry.get(CHAMPION).version == candidate:
            assert rollback(registry, actor="ops", reason="after a crash").champion == v1
        assert registry.get(CHAMPION).version == v1, f"crash at write {crash_at}"
    assert crashed_at == list(range(1, 8))
    last = registry.versions()[-1].version
    promote(registry, last, actor="schedule", reason="retry")
    assert registry.get(CHAMPION).tags["previous_champion"] == v1
