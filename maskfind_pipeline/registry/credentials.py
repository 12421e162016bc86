"""Credentials for an MLflow server with basic auth: put into a tracking URI, kept out of text.

MLflow reads `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` from the environment of the
whole process; a registry given its own user carries it in its URI instead (requests sends
`user:password@` in a URL as basic auth), so two registries in one process can act as two users.
Every URI that reaches a message, a log line or metadata goes through `redact` first.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit


def with_credentials(uri: str, username: str | None, password: str | None) -> str:
    """`uri` with `username:password@` in its authority (http(s) only; others unchanged)."""
    parts = urlsplit(uri)
    if not username or parts.scheme not in ("http", "https"):
        return uri
    user = quote(username, safe="") + (f":{quote(password, safe='')}" if password else "")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def redact(uri: str) -> str:
    """`uri` without the password of its authority (`user:***@host`), fit to print."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
