"""Counting the HTTP requests an MLflow client makes, by endpoint, while a block runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import requests


@contextmanager
def counted_requests() -> Iterator[Counter[str]]:
    """Every request made through `requests` (MLflow's REST and artifact clients use it) in the
    block, counted by `METHOD /path` (artifact paths shortened to their API prefix)."""
    counts: Counter[str] = Counter()
    original = requests.Session.request

    def request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        path = urlsplit(url).path
        if "/mlflow-artifacts/artifacts/" in path:
            path = path.split("/mlflow-artifacts/artifacts/")[0] + "/mlflow-artifacts/artifacts/…"
        counts[f"{method.upper()} {path}"] += 1
        return original(self, method, url, *args, **kwargs)

    with mock.patch.object(requests.Session, "request", request):
        yield counts
