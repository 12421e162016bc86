"""The base of every group of settings in the core (no Dagster here).

Each setting is declared once, in a `CoreConfig` subclass next to the code that uses it, with its
type, default and an attribute docstring; the Dagster run config classes in `defs/` are generated
from these models, so the launchpad shows every field with its description and nothing drifts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CoreConfig(BaseModel):
    """Immutable settings: unknown fields are refused, attribute docstrings are descriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
