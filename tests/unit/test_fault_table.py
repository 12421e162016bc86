"""The fault table of docs/reliability.md cannot go stale: every row names tests, and every name
is a test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The rows of RELIABILITY.md: object store 8, images 7, registry 9, servers 3, then production
# days 9, secrets 1, and `maskfind ui`'s shutdown.
ROWS = 38


def fault_table(page: str) -> list[tuple[int, list[str]]]:
    """(row number, test names) of each row of the table under "## Faults and bad inputs"."""
    section = page.split("\n## Faults and bad inputs\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows.append((int(cells[0]), re.findall(r"`(test_\w+)`", cells[-1])))
    return rows


def suite_tests() -> set[str]:
    """Every test function the suite defines, `slow` ones included (they are not collected by
    `make test`, so the names come from the source)."""
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return {name for name in names if name.startswith("test_")}


def test_every_row_names_tests_that_exist() -> None:
    rows = fault_table((ROOT / "docs" / "reliability.md").read_text())
    assert [number for number, _ in rows] == list(range(1, ROWS + 1))
    defined = suite_tests()
    for number, names in rows:
        assert names, f"row {number} names no test"
        missing = sorted(set(names) - defined)
        assert not missing, f"row {number} names tests that do not exist: {missing}"


def test_the_checker_notices_a_stale_name() -> None:
    page = (
        "x\n## Faults and bad inputs\n\n| # | fault | does | tests |\n|---|---|---|---|\n"
        "| 1 | a | b | `test_every_row_names_tests_that_exist`, `test_gone_long_ago` |\n## Next\n"
    )
    ((number, names),) = fault_table(page)
    assert number == 1 and set(names) - suite_tests() == {"test_gone_long_ago"}
