"""Where things live, read from the environment when asked (never at import time)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class Locations:
    """Locations and endpoints; embedded defaults put everything under `home`.

    Environment: MASKFIND_HOME (default `./.maskfind`), MASKFIND_DATA_URI (images, masks,
    production stream; default `<home>/data`), MASKFIND_WORK_URI (catalog, dataset versions;
    default `<home>/work`), MASKFIND_S3_ENDPOINT_URL (an S3 API server other than AWS),
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (default: SQLite under `<home>/mlflow`),
    MASKFIND_TIMEZONE (the schedules' IANA time zone, default UTC: the line's local night).
    Credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD, or a tracking URI that carries them) are not settings: the resources
    take them as `dg.EnvVar`s (`defs.resources`), and they never enter run config.
    """

    home: Path
    data_uri: str
    work_uri: str
    s3_endpoint_url: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_registry_uri: str | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"MASKFIND_TIMEZONE={self.timezone!r} is not an IANA time zone (e.g. Europe/Berlin)"
            ) from exc

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking: a server URL when configured, else SQLite under `home/mlflow`."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Local artifact root for the embedded SQLite store; a server decides its own."""
        if self.mlflow_tracking_uri:
            return None
        return (self.home / "mlflow" / "artifacts").as_uri()

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Locations:
        env = os.environ if env is None else env
        home = Path(env.get("MASKFIND_HOME", ".maskfind")).resolve()
        return cls(
            home=home,
            data_uri=env.get("MASKFIND_DATA_URI", str(home / "data")),
            work_uri=env.get("MASKFIND_WORK_URI", str(home / "work")),
            s3_endpoint_url=env.get("MASKFIND_S3_ENDPOINT_URL") or None,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            mlflow_registry_uri=env.get("MLFLOW_REGISTRY_URI") or None,
            timezone=env.get("MASKFIND_TIMEZONE") or "UTC",
        )
