"""Alerts: always a warning in the log, and a Slack message when a webhook URL is configured.

Slack support is the optional extra `slack` (`pip install '.[slack]'`); it is imported only when
a webhook is set, and its absence or a failed post is logged, never raised.
"""

from __future__ import annotations

from collections.abc import Callable

WEBHOOK_ENV = "MASKFIND_SLACK_WEBHOOK"


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
        response = WebhookClient(webhook_url, timeout=10).send(text=text)
    except OSError as exc:
        warn(f"the Slack webhook could not be reached: {exc}")
        return False
    if response.status_code != 200:
        warn(f"Slack refused the alert: HTTP {response.status_code} {response.body}")
        return False
    return True
