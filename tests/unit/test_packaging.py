"""A production install carries the pipeline only: no test helpers, servers or fault proxies.

`pip install .` installs the wheel built here; its files and its requirements are checked.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_ONLY = {"moto", "pytest", "hypothesis", "playwright", "tests", "bench", "skimage"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The project's wheel, built from a copy of the tree (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "maskfind_pipeline",
        source / "maskfind_pipeline",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip, "-w", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_only_the_package(wheel: zipfile.ZipFile) -> None:
    modules = [n for n in wheel.namelist() if n.endswith(".py")]
    assert "maskfind_pipeline/definitions.py" in modules
    assert all(n.startswith("maskfind_pipeline/") for n in modules), modules
    assert not [n for n in modules if "/testing/" in n or "/tests/" in n]


def test_no_shipped_module_imports_a_test_tool(wheel: zipfile.ZipFile) -> None:
    for name in (n for n in wheel.namelist() if n.endswith(".py")):
        tree = ast.parse(wheel.read(name), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                tops = {node.module.split(".")[0]}
            else:
                continue
            assert not tops & TEST_ONLY, f"{name} imports {tops & TEST_ONLY}"


def test_test_tools_are_required_only_by_the_dev_extra(wheel: zipfile.ZipFile) -> None:
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist") or []
    for requirement in requires:
        name = requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip()
        if name.lower() in {"moto", "pytest", "hypothesis", "pytest-timeout"}:
            assert 'extra == "dev"' in requirement, requirement
    assert any(r.startswith("dagster") and "extra" not in r for r in requires)
