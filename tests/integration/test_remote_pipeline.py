"""The same definitions against S3 (moto server) and an MLflow tracking server, by
configuration alone: environment variables, no code change."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from maskfind_pipeline.storage import open_store
from tests.conftest import new_bucket
from tests.support.mlflow_server import MlflowServer
from tests.support.models import nightly_config
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration


def test_nightly_runs_on_s3_and_an_mlflow_server(
    s3: S3Server, mlflow_tracking: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3)
    model_name = "maskfind-unet"  # the only test that uses the default name on this server
    env = {
        "MASKFIND_HOME": str(tmp_path),
        "MASKFIND_DATA_URI": f"s3://{bucket}/data",
        "MASKFIND_WORK_URI": f"s3://{bucket}/work",
        "MASKFIND_S3_ENDPOINT_URL": s3.endpoint_url,
        "MLFLOW_TRACKING_URI": mlflow_tracking.tracking_uri,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = open_store(env["MASKFIND_DATA_URI"], endpoint_url=s3.endpoint_url)
    synthetic.generate(data, synthetic.DEFAULT_TYPES[:2], 20, size=64)

    result = defs().resolve_job_def("nightly").execute_in_process(run_config=nightly_config())
    assert result.success

    work = open_store(env["MASKFIND_WORK_URI"], endpoint_url=s3.endpoint_url)
    keys = [info.key for info in work.list()]
    assert any(k.startswith("catalog/samples/") for k in keys)
    assert any(k.endswith("/card.json") for k in keys)
    assert any(k.startswith("evaluations/cells/") for k in keys)
    registry = ModelRegistry(mlflow_tracking.tracking_uri, model_name=model_name)
    assert registry.get("champion").version == "1"
    assert not any(Path(tmp_path, "mlflow").glob("*"))  # nothing fell back to local SQLite
