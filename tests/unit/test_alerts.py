"""Alerts reach the log always and a Slack incoming webhook when one is set (loopback stand-in)."""

from __future__ import annotations

import logging
import socket
import sys

import pytest

from maskfind_pipeline.alerts import send_alert
from tests.support.webhook import webhook_server


def test_an_alert_is_logged_and_posted_to_the_webhook_as_json_text() -> None:
    logged: list[str] = []
    with webhook_server() as hook:
        posted = send_alert("wafer fell", webhook_url=hook.url, warn=logged.append)
    assert posted is True
    assert hook.bodies == [{"text": "wafer fell"}]
    assert logged == ["wafer fell"]


def test_without_a_webhook_the_alert_is_only_logged() -> None:
    logged: list[str] = []
    assert send_alert("wafer fell", webhook_url=None, warn=logged.append) is False
    assert logged == ["wafer fell"]


def test_a_refused_post_is_logged_not_raised() -> None:
    logged: list[str] = []
    with webhook_server(status=500) as hook:
        assert send_alert("x", webhook_url=hook.url, warn=logged.append) is False
    assert len(hook.bodies) == 1
    assert "HTTP 500" in logged[-1]
    assert "secret" not in " ".join(logged)


def test_an_unreachable_webhook_is_logged_not_raised() -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logged: list[str] = []
    url = f"http://127.0.0.1:{port}/hook"
    assert send_alert("x", webhook_url=url, warn=logged.append) is False
    assert "could not be reached" in logged[-1]


def test_without_slack_sdk_the_log_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "slack_sdk.webhook", None)
    logged: list[str] = []
    with webhook_server() as hook:
        assert send_alert("x", webhook_url=hook.url, warn=logged.append) is False
    assert hook.bodies == []
    assert logged[0] == "x"
    assert "pip install '.[slack]'" in logged[1]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example/services/T0/B0/token-{secret}",  # SlackRequestError: invalid URL
        "http://[::1/services/T0/B0/token-{secret}",  # ValueError from urllib
        "http://127.0.0.1:{port}/services/T0/B0/token-{secret}",  # refused, retried by slack_sdk
    ],
)
def test_no_failure_of_the_post_raises_or_repeats_the_webhook_url(
    url: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = "s3cr3t-webhook-token"
    logged: list[str] = []
    caplog.set_level(logging.DEBUG)
    posted = send_alert("x", webhook_url=url.format(secret=secret, port=port), warn=logged.append)
    assert posted is False
    assert len(logged) == 2 and "Slack" in logged[1]
    printed = capfd.readouterr()
    for text in (*logged, caplog.text, printed.out, printed.err):
        assert secret not in text, text
