"""Retrying a training whose process was killed: settle what the earlier attempts left first.

Every attempt at one training tags its MLflow run, LoggedModel and version with the same
`training_key` (`records.TRAINING_KEY_TAG`). A killed attempt leaves, depending on when it
died: a RUNNING run without a model (while training: `ModelRegistry.training_run`); a RUNNING run
whose LoggedModel is PENDING with part of its files (while uploading); a RUNNING run with a
complete version that may lack its alias (after registering). `resume`, called by the retry before
it trains, makes that one outcome:

- the first version of the key whose files verify is the training's result: it is kept (and gets
  the alias it may lack), its run FINISHED, and the retry trains nothing, so the training ends
  with exactly one good version;
- every other run of the key is FAILED and its LoggedModels too (a PENDING one with part of its
  files never becomes READY), every other version is tagged failed: never aliased by a retry,
  refused by `promotion.promote`; each says why (`training_attempt` and `training_attempt_note`).
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow.entities import LoggedModelStatus, Run, RunTag, ViewType

from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.registry.records import (
    ATTEMPT_NOTE_TAG,
    ATTEMPT_TAG,
    FAILED,
    TRAINING_KEY_TAG,
    RegisteredModel,
    RegistryError,
)

RESUMED = "resumed"


def resume(
    registry: ModelRegistry, training_key: str, *, alias: str | None
) -> RegisteredModel | None:
    """The version an earlier attempt at `training_key` registered, verified and given `alias`
    (unless the alias is on a newer version of another training); None when there is none,
    after marking every earlier attempt failed."""
    runs = registry.client.search_runs(
        [registry.experiment_id()],
        f"tags.{TRAINING_KEY_TAG} = '{training_key}'",
        run_view_type=ViewType.ALL,
        order_by=["attributes.start_time ASC"],
    )
    registered = registry.versions_of_runs([r.info.run_id for r in runs])
    versions = [v for v in registered if not v.failed_attempt]
    kept = next((v for v in versions if _verifies(registry, v)), None)
    for version in versions:
        if kept is not None and version.version != kept.version:
            note = f"superseded by version {kept.version} of the same training"
            registry.tag_version(version.version, {ATTEMPT_TAG: FAILED, ATTEMPT_NOTE_TAG: note})
    for run in runs:
        if kept is not None and run.info.run_id == kept.run_id:
            _complete(registry, run)
        elif run.data.tags.get(ATTEMPT_TAG) != FAILED:
            _fail(registry, run, _why(run, kept))
    if kept is None:
        return None
    if alias and _alias_is_stale(registry, alias, kept, registered):
        registry.set_alias(alias, kept.version)
    return registry.get(kept.version)


def _verifies(registry: ModelRegistry, version: RegisteredModel) -> bool:
    """Whether the version's files are all there and match their sha256; tagged failed if not."""
    try:
        registry.download(version.version)
    except RegistryError as exc:
        registry.tag_version(version.version, {ATTEMPT_TAG: FAILED, ATTEMPT_NOTE_TAG: str(exc)})
        return False
    return True


def _complete(registry: ModelRegistry, run: Run) -> None:
    """The kept version's run: an attempt that died after registering finished its training."""
    if run.info.status != "FINISHED":
        registry.client.set_tag(run.info.run_id, ATTEMPT_TAG, RESUMED)
        registry.client.set_terminated(run.info.run_id, status="FINISHED")


def _fail(registry: ModelRegistry, run: Run, note: str) -> None:
    client, run_id = registry.client, run.info.run_id
    client.log_batch(run_id, tags=[RunTag(ATTEMPT_TAG, FAILED), RunTag(ATTEMPT_NOTE_TAG, note)])
    if run.info.status != "FAILED":
        client.set_terminated(run_id, status="FAILED")
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    for model in models:
        client.set_logged_model_tags(model.model_id, {ATTEMPT_TAG: FAILED, ATTEMPT_NOTE_TAG: note})
        if model.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)


def _why(run: Run, kept: RegisteredModel | None) -> str:
    if kept is not None:
        return f"a retry kept version {kept.version} of the same training"
    if run.info.status == "RUNNING":
        return "the attempt died before it registered a version (process killed)"
    return f"the attempt ended {run.info.status} without a version that verifies"


def _alias_is_stale(
    registry: ModelRegistry, alias: str, kept: RegisteredModel, same: Sequence[RegisteredModel]
) -> bool:
    """Whether `alias` should move to `kept`: it is on no version, on another version of the
    same training, or on an older one."""
    current = registry.alias_or_none(alias)
    if current is None:
        return True
    if current.version in {v.version for v in same}:
        return current.version != kept.version
    return int(current.version) < int(kept.version)
