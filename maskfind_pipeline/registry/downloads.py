"""A version's files, downloaded and verified: config, weights and further files checked
against the sha256 recorded on the version before anything uses them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.artifacts import download_artifacts

from maskfind_pipeline.registry.records import (
    CONFIG_FILE,
    FILES_TAG,
    MODEL_DIR,
    PYFUNC_FILES,
    WEIGHTS_FILE,
    Download,
    RegisteredModel,
    RegistryError,
    sha256,
)
from maskfind_pipeline.registry.versions import RegisteredVersions


class VerifiedDownloads(RegisteredVersions):
    """Downloads of a registered model's versions that are what was registered, or an error."""

    def download(self, ref: str | int) -> Download:
        """Config, weights and files of a version (from its LoggedModel or, logged before
        those, its run's `model/` folder), verified against their recorded sha256."""
        model = self.get(ref)
        expected = json.loads(model.tags.get(FILES_TAG, "{}"))
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download_files(model, Path(tmp))
            missing = [
                n for n in (CONFIG_FILE, WEIGHTS_FILE, *expected) if not (local / n).is_file()
            ]
            if missing:
                raise RegistryError(
                    f"{self.model_name} version {model.version} has no {', '.join(missing)}"
                )
            config = (local / CONFIG_FILE).read_text()
            weights = (local / WEIGHTS_FILE).read_bytes()
            files = {name: (local / name).read_bytes() for name in expected}
        found = {WEIGHTS_FILE: sha256(weights)} | {n: sha256(d) for n, d in files.items()}
        recorded = {WEIGHTS_FILE: model.weights_sha256} | expected
        altered = sorted(name for name, sha in recorded.items() if found[name] != sha)
        if altered:
            raise RegistryError(
                f"{self.model_name} version {model.version}: {', '.join(altered)} do not match "
                "their sha256 (incomplete or altered upload)"
            )
        return Download(model, config, weights, files)

    def _download_files(self, model: RegisteredModel, into: Path) -> Path:
        if not model.model_id:  # logged before versions were pyfunc models
            return Path(self.client.download_artifacts(model.run_id, MODEL_DIR, str(into)))
        location = self.client.get_logged_model(model.model_id).artifact_location
        uri = f"{location.rstrip('/')}/{PYFUNC_FILES}"
        return Path(download_artifacts(uri, dst_path=str(into), tracking_uri=self.tracking_uri))
