"""MLflow credentials travel in MLflow's environment variables, never inside a URI it prints
("View run ... at: <uri>") or quotes in its errors."""

from __future__ import annotations

import os
import secrets
import socket
from urllib.parse import urlsplit, urlunsplit

import pytest

from maskfind_pipeline.defs.resources import MlflowResource
from maskfind_pipeline.registry.credentials import mlflow_uri, redact, split_credentials
from maskfind_pipeline.registry.mlflow_registry import ModelRegistry
from tests.support.mlflow_server import MlflowServer
from tests.support.models import tiny_record


def with_password(uri: str, user: str, password: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_uri_loses_its_credentials_to_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    uri = "http://pipe%40line:p%3Ass@mlflow.internal:5000/base"
    assert split_credentials(uri) == ("http://mlflow.internal:5000/base", "pipe@line", "p:ss")
    clean_env.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow_uri(uri) == "http://mlflow.internal:5000/base"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "pipe@line"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p:ss"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000/base"
    # A user given apart wins over the URI's; a URI without credentials is unchanged.
    assert mlflow_uri(uri, "reader", "r-pass") == "http://mlflow.internal:5000/base"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "r-pass"
    assert mlflow_uri("sqlite:///x/mlflow.db") == "sqlite:///x/mlflow.db"
    assert redact(uri) == "http://pipe%40line:***@mlflow.internal:5000/base"


@pytest.mark.integration
def test_no_password_is_printed_when_a_run_ends(
    mlflow_tracking: MlflowServer,
    clean_env: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    uri = with_password(mlflow_tracking.tracking_uri, "pipeline", password)
    resource = MlflowResource(tracking_uri=uri, model_name=f"m-{secrets.token_hex(4)}")
    resource.registry().log_training(tiny_record(seed=2), alias=None)
    printed = capfd.readouterr()
    assert "View run" in printed.out  # MLflow did print where the run is
    assert password not in printed.out + printed.err


@pytest.mark.integration
def test_no_password_in_the_error_of_an_unreachable_server(
    clean_env: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clean_env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    password = f"pw-{secrets.token_hex(8)}"
    registry = ModelRegistry(with_password(f"http://127.0.0.1:{port}", "pipeline", password))
    with pytest.raises(Exception) as failed:
        registry.versions()
    printed = capfd.readouterr()
    assert str(port) in str(failed.value)  # the error does name the server...
    assert password not in str(failed.value) + printed.out + printed.err  # ...not the password
