"""Finding a registered model's versions and moving its aliases (`challenger`, `champion`);
refusals of an MLflow server with auth become `RegistryError`s that say what to do."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException

from maskfind_pipeline.registry.credentials import mlflow_uri, redact
from maskfind_pipeline.registry.records import (
    MAX_DESCRIPTION,
    MODEL_ID_TAG,
    RegisteredModel,
    RegistryError,
)


class RegisteredVersions:
    """The versions and aliases of one registered model (default `maskfind-unet`) in one MLflow
    tracking server or store."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        registry_uri: str | None = None,
        model_name: str = "maskfind-unet",
        experiment: str = "maskfind",
        artifact_location: str | None = None,
    ) -> None:
        # No credentials in a URI MLflow prints or quotes: they move to its environment.
        tracking_uri = mlflow_uri(tracking_uri)
        registry_uri = mlflow_uri(registry_uri) if registry_uri else None
        for uri in (tracking_uri, registry_uri or ""):
            if uri.startswith("sqlite:///"):  # the embedded store: its folder may not exist yet
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.tracking_uri = tracking_uri
        self.where = redact(tracking_uri)
        """The tracking URI fit to print: without a password."""
        self.model_name = model_name
        self.experiment = experiment
        self.artifact_location = artifact_location

    def get(self, ref: str | int) -> RegisteredModel:
        """A version by number (`"3"`, `3`) or alias (`"champion"`); never falls back to latest."""
        text = str(ref)
        try:
            mv = (
                self.client.get_model_version(self.model_name, text)
                if text.isdigit()
                else self.client.get_model_version_by_alias(self.model_name, text)
            )
        except MlflowException as exc:
            kind = "version" if text.isdigit() else "alias"
            raise access_error(exc, self, f"read {kind} {text!r}") or RegistryError(
                f"registered model {self.model_name!r} has no {kind} {text!r} "
                f"(deleted, or never set) at {self.where}"
            ) from exc
        return registered(mv)

    def alias_or_none(self, alias: str) -> RegisteredModel | None:
        try:
            return self.get(alias)
        except RegistryError:
            return None

    def versions(self) -> list[RegisteredModel]:
        """Every version, oldest first, with its aliases."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(str(version), []).append(alias)
        models = [registered(mv) for mv in found]
        models = [replace(m, aliases=tuple(sorted(by_version.get(m.version, ())))) for m in models]
        return sorted(models, key=lambda m: int(m.version))

    def aliases(self) -> dict[str, str]:
        """alias -> version of the registered model (empty when it does not exist yet)."""
        try:
            registered = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return {}
        return {str(k): str(v) for k, v in (registered.aliases or {}).items()}

    def versions_of_runs(self, run_ids: Sequence[str]) -> list[RegisteredModel]:
        """The versions registered from runs `run_ids`, oldest first (aliases not read)."""
        if not run_ids:
            return []
        runs = ", ".join(f"'{r}'" for r in run_ids)
        found = self.client.search_model_versions(
            f"name = '{self.model_name}' AND run_id IN ({runs})"
        )
        return sorted((registered(mv) for mv in found), key=lambda m: int(m.version))

    def set_alias(self, alias: str, version: str) -> None:
        self.get(version)
        with self._access(f"move alias {alias!r} to version {version}"):
            self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def describe_version(self, version: str, description: str) -> None:
        """Set the version's description (Markdown in the MLflow UI), cut to the 5,000
        characters MLflow keeps."""
        with self._access(f"describe version {version}"):
            self.client.update_model_version(
                self.model_name, str(version), description=description[:MAX_DESCRIPTION]
            )

    def tag_version(self, version: str, tags: Mapping[str, str]) -> None:
        with self._access(f"tag version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.model_name, str(version), key, value)

    @contextlib.contextmanager
    def _access(self, action: str) -> Iterator[None]:
        """Refusals of an MLflow server with auth as `RegistryError`s that say what to do."""
        try:
            yield
        except MlflowException as exc:
            raise access_error(exc, self, action) or exc from exc


def access_error(
    exc: MlflowException, registry: RegisteredVersions, action: str
) -> RegistryError | None:
    """A clear error for a request the server refused (401/403), None for any other failure."""
    code = exc.error_code if isinstance(exc, RestException) else ""
    status = re.search(r"error code (\d{3})", str(exc))
    refused = {"401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED"}.get(
        status.group(1) if status else "", code
    )
    user = urlsplit(registry.tracking_uri).username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    if refused == "UNAUTHENTICATED":
        return RegistryError(
            f"{registry.where} refused to {action}: not authenticated (set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or credentials in the URI)"
        )
    if refused == "PERMISSION_DENIED":
        return RegistryError(
            f"{registry.where} refused to {action} of {registry.model_name!r}: permission denied "
            f"for user {user!r} (needs EDIT on the registered model); nothing was changed"
        )
    return None


def registered(mv: ModelVersion) -> RegisteredModel:
    return RegisteredModel(
        name=mv.name,
        version=str(mv.version),
        run_id=str(mv.run_id),
        tags=dict(mv.tags or {}),
        aliases=tuple(getattr(mv, "aliases", None) or ()),
        model_id=str(mv.model_id or (mv.tags or {}).get(MODEL_ID_TAG, "")),
    )
