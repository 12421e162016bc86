"""Alerts: always a warning in the log, and a Slack message when a webhook URL is configured.

Slack support is the optional extra `slack` (`pip install '.[slack]'`); it is imported only when
a webhook is set, and its absence or a failed post is logged, never raised. The webhook URL is a
secret (its path is the token): no message of ours repeats it, and slack_sdk, which logs the URL
of every request and retry, posts with a logger of its own that says nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

WEBHOOK_ENV = "MASKFIND_SLACK_WEBHOOK"
_QUIET = logging.Logger("maskfind.alerts.slack_sdk", level=logging.CRITICAL + 1)
_QUIET.addHandler(logging.NullHandler())  # not even logging's last-resort stderr handler


def send_alert(text: str, *, webhook_url: str | None, warn: Callable[[str], None]) -> bool:
    """Log `text` with `warn` and post it to the Slack incoming webhook `webhook_url` if given.

    Returns whether Slack accepted the message (False without a webhook).
    """
    warn(text)
    if not webhook_url:
        return False
    try:
        from slack_sdk.webhook import WebhookClient
    except ImportError:
        warn(f"{WEBHOOK_ENV} is set but slack_sdk is missing: pip install '.[slack]'")
        return False
    try:
        response = WebhookClient(webhook_url, timeout=10, logger=_QUIET).send(text=text)
    except Exception as exc:  # SlackRequestError, URLError, ValueError...: logged, not raised
        reason = _without(f"{type(exc).__name__}: {exc}", webhook_url)
        warn(f"the Slack webhook could not be reached: {reason}")
        return False
    if response.status_code != 200:
        body = _without(str(response.body), webhook_url)[:200]
        warn(f"Slack refused the alert: HTTP {response.status_code} {body}")
        return False
    return True


def _without(text: str, url: str) -> str:
    """`text` with the webhook URL, and its path (the token), replaced by `<webhook>`."""
    parts = [url]
    try:
        path = urlsplit(url).path
    except ValueError:
        path = url.partition("://")[2].partition("/")[2]
    parts += [path] if len(path) > 1 else []
    for secret in parts:
        text = text.replace(secret, "<webhook>")
    return text
