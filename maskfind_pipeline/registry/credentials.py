"""Credentials for an MLflow server with basic auth: in the environment, never in a URI.

MLflow prints its tracking host when a run ends ("View run ... at: <uri>") and quotes request
URLs in its errors, so a URI handed to it must carry no `user:password@`. MLflow reads the user
from `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` on every request instead: one
MLflow user per process. A URI configured with credentials in it still works: `mlflow_uri`
moves them into those variables and hands on the URI without them. Every URI that reaches a
message, a log line or metadata goes through `redact` first all the same.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit, urlunsplit

USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
URI_ENVS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """`uri` without the `user:password@` of its authority, and that user and password."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=host))
    return clean, unquote(user) or None, unquote(password) if colon else None


def mlflow_uri(uri: str, username: str | None = None, password: str | None = None) -> str:
    """The URI to hand MLflow: `uri` without credentials. The user (`username`/`password`, else
    the URI's own) goes into MLflow's environment variables, and an `MLFLOW_TRACKING_URI` /
    `MLFLOW_REGISTRY_URI` that carries credentials is replaced by its clean form, so nothing
    MLflow reads on its own holds a password either."""
    clean, uri_user, uri_password = split_credentials(uri)
    user = username or uri_user
    if user:
        os.environ[USERNAME_ENV] = user
        os.environ[PASSWORD_ENV] = (password if username else uri_password) or ""
    for name in URI_ENVS:
        configured = os.environ.get(name)
        if configured and "@" in urlsplit(configured).netloc:
            os.environ[name] = split_credentials(configured)[0]
    return clean


def redact(uri: str) -> str:
    """`uri` without the password of its authority (`user:***@host`), fit to print."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
