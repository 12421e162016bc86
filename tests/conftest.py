"""Shared fixtures: one S3 API server per session, fresh buckets and stores per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from maskfind_pipeline.labeling.server import RunningLabelStudio
from maskfind_pipeline.storage import LocalObjectStore, ObjectStore
from maskfind_pipeline.storage.s3 import S3ObjectStore
from tests.support.labeling import label_studio_server
from tests.support.mlflow_server import MlflowServer, mlflow_server
from tests.support.s3server import S3Server, s3_server

# Training and inference choose float32 or bf16 by timing the model (`ml.precision`); the suite
# trains dozens of tiny models of different shapes, so it fixes the precision instead (set before
# any test starts a server or worker, which inherit it). tests/unit/ml/test_precision.py times.
os.environ.setdefault("MASKFIND_PRECISION", "float32")


@pytest.fixture(scope="session")
def mlflow_tracking() -> Iterator[MlflowServer]:
    """A real `mlflow server` (SQLite backend, served artifacts) on 127.0.0.1 for the session."""
    with mlflow_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A moto S3 server in its own process on 127.0.0.1, shared by the whole session."""
    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLabelStudio]:
    """A real Label Studio (`make label-studio`'s environment) on 127.0.0.1 for the session,
    SQLite under the session's temporary folder, serving the tests' local stores (~8 s start)."""
    with label_studio_server(tmp_path_factory.getbasetemp()) as server:
        yield server


def new_bucket(server: S3Server) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    server.client().create_bucket(Bucket=name)
    return name


def s3_store(
    server: S3Server, *, endpoint_url: str | None = None, **options: object
) -> S3ObjectStore:
    return S3ObjectStore(
        new_bucket(server),
        "root",
        endpoint_url=endpoint_url or server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    """The same tests run against the local-directory store and against the S3 API server."""
    if request.param == "local":
        return LocalObjectStore(tmp_path_factory.mktemp("store"))
    return s3_store(request.getfixturevalue("s3"))


@pytest.fixture
def local_store(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    return LocalObjectStore(tmp_path_factory.mktemp("store"))
