"""Dagster run config classes generated from the core options: one definition per option.

`run_config_for(Core)` makes a `dg.Config` with the same fields, defaults and descriptions as the
pydantic model `Core`, so the launchpad shows every setting and nothing is copied by hand. Types
Dagster's config system lacks are mapped: tuples become lists, `Literal`s and enums become enums
whose names are their values (Dagster knows `Literal` only outside lists), nested core models
become nested config classes.
`core_of(config, Core)` turns a run's config back into the core object (validated by the core's
own rules).
"""

from __future__ import annotations

import enum
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import dagster as dg
import pydantic
from pydantic_core import to_jsonable_python

from maskfind_pipeline.core_config import CoreConfig

C = TypeVar("C", bound=CoreConfig)

_GENERATED: dict[type[CoreConfig], type[dg.Config]] = {}


def run_config_for(core: type[CoreConfig]) -> type[dg.Config]:
    """The `dg.Config` class with `core`'s fields (see the module docstring), made once."""
    if core not in _GENERATED:
        fields: dict[str, Any] = {
            name: (_config_type(info.annotation, core.__name__ + _camel(name)), _field(info))
            for name, info in core.model_fields.items()
        }
        _GENERATED[core] = pydantic.create_model(
            f"{core.__name__}RunConfig",
            __base__=dg.Config,
            __doc__=core.__doc__,
            __module__=core.__module__,
            **fields,
        )
    return _GENERATED[core]


def core_model(config_class: type) -> type[CoreConfig] | None:
    """The core model a run config class was generated from (None for any other class)."""
    return next((core for core, made in _GENERATED.items() if issubclass(config_class, made)), None)


def core_of(config: dg.Config, core: type[C]) -> C:
    """The core options a run's `config` holds."""
    if core_model(type(config)) is not core:
        raise TypeError(f"{type(config).__name__} was not generated from {core.__name__}")
    # Dagster hands enum choices over as their plain values: no serializer warning for those.
    return core.model_validate(config.model_dump(mode="json", warnings=False))


def _config_type(annotation: Any, name: str) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{name}: only `X | None` unions map to run config")
        return _config_type(inner[0], name) | None
    if origin in (tuple, list):
        return list[_config_type(args[0], name)]
    if origin is Literal:
        return _str_enum(name, [str(v) for v in args])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _str_enum(name, [str(m.value) for m in annotation])
    if isinstance(annotation, type) and issubclass(annotation, CoreConfig):
        return run_config_for(annotation)
    return annotation


def _field(info: pydantic.fields.FieldInfo) -> Any:
    if info.is_required():
        return pydantic.Field(description=info.description)
    return pydantic.Field(default=_default(info.default), description=info.description)


def _default(value: Any) -> Any:
    if isinstance(value, CoreConfig):
        return run_config_for(type(value))(**value.model_dump(mode="json"))
    return to_jsonable_python(value)


def _str_enum(name: str, values: list[str]) -> type[enum.Enum]:
    """An enum whose names are its values, so run config spells choices as the core does."""
    return enum.Enum(name, {v: v for v in values}, type=str)  # pyright: ignore[reportReturnType]


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))
