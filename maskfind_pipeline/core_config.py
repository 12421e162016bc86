"""The base of every options and config model in the core (no Dagster here).

Each setting is declared once, in a `CoreConfig` subclass next to the code that uses it, with its
type, default and an attribute docstring; the Dagster run config classes in `defs/` are generated
from these models, so the launchpad shows every field with its description and nothing drifts.
"""

from __future__ import annotations

import json
from typing import Any, Self

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python


class CoreConfig(BaseModel):
    """Immutable settings: unknown fields are refused, attribute docstrings are descriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    def to_json(self) -> str:
        """Stable JSON (sorted keys), e.g. to store beside a model's weights."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Parse stored JSON; keys this version does not know are ignored (older or newer)."""
        raw: dict[str, Any] = json.loads(text)
        return cls.model_validate({k: v for k, v in raw.items() if k in cls.model_fields})

    def flat(self, prefix: str = "") -> dict[str, Any]:
        """Every leaf setting under a dotted name (`train.augment.flip_p`), e.g. MLflow params."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, CoreConfig):
                out |= value.flat(f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = to_jsonable_python(value)
        return out
