"""The code location loads, validates, and does not import torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], home: Path) -> str:
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "MASKFIND_HOME": str(home / "maskfind")}
    result = subprocess.run(
        [str(Path(sys.executable).with_name(args[0])), *args[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_dagster_definitions_validate_passes_with_the_project_instance_config(
    tmp_path: Path,
) -> None:
    output = _run(["dagster", "definitions", "validate", "-w", "workspace.yaml"], tmp_path)
    assert "All code locations passed validation" in output


def test_dg_check_defs_passes(tmp_path: Path) -> None:
    assert "All definitions loaded successfully" in _run(["dg", "check", "defs"], tmp_path)


def test_loading_definitions_does_not_import_torch() -> None:
    probe = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        "from maskfind_pipeline.definitions import defs\n"
        "d = defs()\n"
        "keys = sorted(k.to_user_string() for k in d.resolve_asset_graph().get_all_asset_keys())\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'seconds': time.perf_counter() - t,"
        " 'assets': keys}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["torch"] is False
    assert "image_catalog" in report["assets"]


def test_every_asset_has_a_code_version_and_owners() -> None:
    from maskfind_pipeline.definitions import defs
    from maskfind_pipeline.version import package_version

    specs = defs().resolve_all_asset_specs()
    assert len(specs) >= 15
    missing = {
        spec.key.to_user_string(): (spec.code_version, spec.owners)
        for spec in specs
        if not re.fullmatch(rf"{re.escape(package_version())}\+r\d+", spec.code_version or "")
        or not spec.owners
        or not all(re.fullmatch(r"team:[\w-]+|[^@\s]+@[^@\s]+", o) for o in spec.owners)
    }
    assert not missing, f"assets without a code version or owners: {missing}"
