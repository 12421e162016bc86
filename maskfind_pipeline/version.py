"""The code version recorded on dataset versions and models: package version + git commit."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@cache
def package_version() -> str:
    """The installed package's version (`0+unknown` when it is not installed)."""
    try:
        return version("maskfind_pipeline")
    except PackageNotFoundError:
        return "0+unknown"


@cache
def code_version() -> str:
    package = package_version()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return package
    return f"{package}+g{commit}" if commit else package
