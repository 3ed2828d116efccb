"""Typed construction of config dataclasses: every field's type and range checked up front.

One mechanism for YAML run configs, dotted ``key=value`` overrides and method configs:
``build_dataclass(cls, values)`` checks each value against the field's annotation
(``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``dict[str, X]``, nested dataclasses, ``Any``), coerces only where no information is lost
(``"1e-4"`` -> ``1e-4`` for a float field: YAML 1.1 reads ``1e-4`` as a string; an int for a
float field; a list for a tuple field), and checks the range declared in the field's
metadata with :func:`bounds`. Any failure is a ``ConfigError`` (a ``ValueError``) naming the
key, the value, what was expected and an example of a valid value.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping, Sequence

_NONE = type(None)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


class UnknownConfigKeyError(ConfigError, KeyError):
    """A config key that the dataclass does not have; the message lists the valid keys."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def bounds(min: float | None = None, max: float | None = None, *, exclusive_min: bool = False,
           choices: Sequence[Any] | None = None) -> dict[str, Any]:
    """Field metadata declaring a range: ``field(default=8, metadata=bounds(min=1))``.

    ``min``/``max`` are inclusive unless ``exclusive_min``; ``choices`` lists allowed values.
    """
    return {"opencir_bounds": {"min": min, "max": max, "exclusive_min": exclusive_min,
                               "choices": tuple(choices) if choices is not None else None}}


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if tp is _NONE:
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _fail(where: str, value: Any, expected: str, example: str) -> ConfigError:
    return ConfigError(f"config key {where!r}: got {value!r}, expected {expected} (e.g. {where}={example})")


def _example(f: dataclasses.Field) -> str | None:
    """The field's default written as an override value, used as the example in messages."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, (int, float, str)):
        return str(default)
    if isinstance(default, tuple) and default:
        return "[" + ", ".join(str(v) for v in default) + "]"
    return None


def _with_example(err: ConfigError, where: str, example: str | None) -> ConfigError:
    if example is None:
        return err
    message = str(err)
    head, sep, _ = message.rpartition(f" (e.g. {where}=")
    return ConfigError(f"{head} (e.g. {where}={example})") if sep else err


def _coerce_scalar(tp: type, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(where, value, "true or false", "true")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _fail(where, value, "an integer", "3")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        raise _fail(where, value, "a number", "1e-4")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. an image id or tag YAML read as a number
        raise _fail(where, value, "a string", "name")
    if isinstance(value, tp):
        return value
    raise _fail(where, value, _type_name(tp), "...")


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked (and losslessly coerced) against the annotation ``tp``."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if _NONE in args:
                return None
            raise _fail(where, value, _type_name(tp), "...")
        options = [a for a in args if a is not _NONE]
        if _NONE in args and str not in options and isinstance(value, str) and value.strip() in ("none", "None"):
            return None  # train.grad_clip=none (YAML spells it null)
        errors = []
        for option in options:
            try:
                return coerce(option, value, where)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(where, value, " or ".join(_type_name(a) for a in args), "...")
    if value is None:
        raise _fail(where, value, _type_name(tp), "..." if tp not in (int, float, bool, str) else
                    {int: "3", float: "0.1", bool: "true", str: "name"}[tp])
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value  # already built (and checked by ``Validated.__post_init__`` where it applies)
        if not isinstance(value, Mapping):
            raise _fail(where, value, f"a mapping of {tp.__name__} keys", "{...}")
        return build_dataclass(tp, value, f"{where}.")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if isinstance(value, (str, int, float)):
                value = [value]  # one value for a variable-length tuple: train.select_metrics=R@5
            if not isinstance(value, (list, tuple)):
                raise _fail(where, value, f"a list ({_type_name(tp)})", "[...]")
            return tuple(coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)):
            raise _fail(where, value, f"a list ({_type_name(tp)})", "[...]")
        if args and len(args) != len(value):
            raise _fail(where, value, f"a list of {len(args)} values ({_type_name(tp)})", "[0.9, 0.999]")
        return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _fail(where, value, f"a list ({_type_name(tp)})", "[1, 2]")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _fail(where, value, "a mapping", "{key: value}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): coerce(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        return _coerce_scalar(tp, value, where)
    return value


def check_bounds(f: dataclasses.Field, value: Any, where: str) -> None:
    """Raise ``ConfigError`` if ``value`` is outside the range declared with :func:`bounds`."""
    spec = f.metadata.get("opencir_bounds")
    if not spec or value is None:
        return
    if spec["choices"] is not None and value not in spec["choices"]:
        raise ConfigError(f"config key {where!r}: got {value!r}, expected one of "
                          f"{', '.join(map(repr, spec['choices']))}")
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        low, high = spec["min"], spec["max"]
        if low is not None and (item <= low if spec["exclusive_min"] else item < low):
            relation = f"greater than {low}" if spec["exclusive_min"] else f"at least {low}"
            raise ConfigError(f"config key {where!r}: got {value!r}, must be {relation}")
        if high is not None and item > high:
            raise ConfigError(f"config key {where!r}: got {value!r}, must be at most {high}")


def build_dataclass(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``values`` with every field type- and range-checked.

    Unknown keys fail with the list of valid ones; ``where`` prefixes key names in messages.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key {where.rstrip('.') or '(top level)'!r}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UnknownConfigKeyError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; valid keys under "
                          f"{where.rstrip('.') or 'the top level'}: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        f = fields[key]
        name = f"{where}{key}"
        if value is None and dataclasses.is_dataclass(hints[key]):
            value = {}
        try:
            kwargs[key] = coerce(hints[key], value, name)
        except ConfigError as err:
            raise _with_example(err, name, _example(f)) from None
        check_bounds(f, kwargs[key], name)
    instance = cls(**kwargs)
    for f in fields.values():  # defaults obey the same ranges (a subclass may narrow them)
        if f.name not in values:
            check_bounds(f, getattr(instance, f.name), f"{where}{f.name}")
    return instance


def check_fields(instance: Any, where: str | None = None) -> None:
    """Check (and losslessly coerce, in place) every field of a dataclass instance."""
    cls = type(instance)
    prefix = f"{cls.__name__}." if where is None else where
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        try:
            value = coerce(hints[f.name], getattr(instance, f.name), name)
        except ConfigError as err:
            raise _with_example(err, name, _example(f)) from None
        check_bounds(f, value, name)
        object.__setattr__(instance, f.name, value)


class Validated:
    """Dataclass mixin: fields are type- and range-checked however the instance is built
    (from YAML through :func:`build_dataclass`, or directly in Python)."""

    def __post_init__(self) -> None:
        check_fields(self)
