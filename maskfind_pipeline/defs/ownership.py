"""Who owns each asset, and which version of its code made a materialization.

Every asset declares `owners=OWNERS` and `code_version=asset_code_version(N)`: the package version
and a revision per asset. Bump an asset's revision when a change to its code changes what it
writes (a new column, another split rule, a different training recipe), not for refactors: the
Dagster UI then marks exactly the materializations made by the older code as stale ("code
version changed"), and a package release marks them all.
"""

from __future__ import annotations

from maskfind_pipeline.version import package_version

OWNERS = ["team:vision-ml"]
"""The team answering for the assets (Dagster's owner syntax: `team:<name>` or an email)."""


def asset_code_version(revision: int) -> str:
    """`<package version>+r<revision>`, e.g. `0.1.0+r1`."""
    return f"{package_version()}+r{revision}"
