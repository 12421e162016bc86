"""Every core setting is settable from the run config; no Dagster `Config` copies a field list.

For each op of each job, every field of its core settings (nested ones too) is set to a value
other than its default, the run config is validated by Dagster against the job, and the core
object the op would get must equal the core object built directly from the same values: a field
missing from the run config, refused by its schema, or dropped on the way fails here.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import dagster as dg
import pytest
from pydantic_core import PydanticUndefined

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.definitions import defs
from maskfind_pipeline.defs.config import core_model, core_of, run_config_for

# Values the generic rule below cannot guess (they have to satisfy the core's validation).
SPECIAL: dict[tuple[str, str], Any] = {
    ("VersionConfig", "fractions"): [0.6, 0.25, 0.15],
    ("GradeRule", "good"): 0.9,
    ("GradeRule", "usable"): 0.7,
    ("NoveltyConfig", "quantile"): 0.9,
    ("NoveltyConfig", "min_share"): 0.5,
    ("AuditConfig", "confident"): 0.85,
    ("AuditConfig", "max_iou"): 0.4,
    ("AuditConfig", "min_confident_share"): 0.6,
    ("AuditConfig", "min_disagreement"): 0.1,
    ("ModelSpec", "tta_scales"): [1.0, 0.75],
    ("TrainConfig", "low_res_size"): 96,
}


def _ops() -> Iterator[tuple[dg.JobDefinition, str, type[dg.Config]]]:
    for job in defs().resolve_all_job_defs():
        for node in job.graph.nodes:
            compute = getattr(node.definition, "compute_fn", None)
            fn = getattr(compute, "decorated_fn", None)
            if fn is None or "config" not in inspect.signature(fn).parameters:
                continue
            yield job, node.name, typing.get_type_hints(fn)["config"]


OPS = sorted({(job.name, op): (job, op, cls) for job, op, cls in _ops()}.items())


def _other(annotation: Any, default: Any, where: tuple[str, str]) -> Any:
    """A JSON value of `annotation` that differs from `default`."""
    if where in SPECIAL:
        return SPECIAL[where]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return _other(inner, None, where) if default is None else None
    if origin is Literal:
        return next(str(v) for v in args if v != default)
    if origin in (tuple, list):
        if default:
            return [_other(args[0], item, where) for item in default]
        return [_other(args[0], None, where)]
    if isinstance(annotation, type) and issubclass(annotation, CoreConfig):
        return _probe(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return next(str(m.value) for m in annotation if m != default)
    if annotation is bool:
        return not default
    if annotation is int:
        return (default or 0) + 3
    if annotation is float:
        return round((default or 0.0) + 0.125, 6)
    if annotation is str:
        return f"{default or 'probe'}-set"
    raise TypeError(f"{where}: no probe value for {annotation}")


def _probe(core: type[CoreConfig]) -> dict[str, Any]:
    return {
        name: _other(
            info.annotation,
            None if info.default is PydanticUndefined else info.default,
            (core.__name__, name),
        )
        for name, info in core.model_fields.items()
    }


def _leaves(model: CoreConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, CoreConfig):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def test_every_op_with_config_is_covered() -> None:
    names = {key for key, _ in OPS}
    assert {
        ("nightly", "image_catalog"),
        ("nightly", "dataset_version"),
        ("nightly", "mask_model"),
        ("nightly", "compat_evaluation"),
        ("nightly", "promotion"),
        ("promote_model", "promote_version"),
        ("rollback_model", "rollback_champion"),
    } <= names


@pytest.mark.parametrize("key,op", OPS, ids=[f"{j}.{o}" for (j, o), _ in OPS])
def test_every_core_field_is_settable_from_the_run_config(key: tuple[str, str], op: Any) -> None:
    job, op_name, config_class = op
    core = core_model(config_class)
    assert core is not None, f"{config_class.__name__} is not generated from a core model"
    values = _probe(core)
    expected = core.model_validate(values)

    resolved = dg.validate_run_config(job, {"ops": {op_name: {"config": values}}})
    received = core_of(config_class(**resolved["ops"][op_name]["config"]), core)

    assert received == expected
    defaults = dict(_defaults(core))
    for field, value in _leaves(received):
        if field in defaults:
            assert value != defaults[field], f"{core.__name__}.{field} kept its default"


def _defaults(core: type[CoreConfig], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, info in core.model_fields.items():
        if isinstance(info.default, CoreConfig):
            yield from _defaults(type(info.default), f"{prefix}{name}.")
        elif not info.is_required():
            yield f"{prefix}{name}", info.default


@pytest.mark.parametrize("key,op", OPS, ids=[f"{j}.{o}" for (j, o), _ in OPS])
def test_no_run_config_class_declares_fields_of_its_own(key: tuple[str, str], op: Any) -> None:
    _, _, config_class = op
    core = core_model(config_class)
    assert core is not None
    mro = config_class.__mro__
    for cls in mro[: mro.index(run_config_for(core))]:
        assert not inspect.get_annotations(cls), f"{cls.__name__} declares fields"
