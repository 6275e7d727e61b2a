"""Typed, documented, JSON-serialisable configuration.

Each stage defines a frozen dataclass whose fields carry a type, a default and
a doc (``field(metadata={"doc": ...})``), with units in the field names
(``box_size_pix``, ``match_radius_arcsec``). :func:`config_from_dict` builds one
from JSON, refusing unknown keys and wrong types with a :class:`ConfigError`
that names the offending key path, and then calls the class's ``validate()``
for cross-field checks, as pex_config does.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def doc_field(default: Any, doc: str, **kwargs: Any) -> Any:
    """A dataclass field with a mandatory doc string (an empty doc is refused)."""
    if not doc or not doc.strip():
        raise ValueError("every config field needs a doc")
    if isinstance(default, (list, dict, set)):
        raise ValueError("use a tuple (immutable) for sequence defaults")
    return dataclasses.field(default=default, metadata={"doc": doc}, **kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON form of a config dataclass (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = [config_to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        else:
            out[f.name] = value
    return out


def config_docs(cls: type) -> dict[str, str]:
    """Field name -> doc string for a config class (for forms and help pages)."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def config_from_dict(cls: type[T], data: Any, *, path: str = "") -> T:
    """Build ``cls`` from a JSON mapping; missing keys take their defaults.

    Raises
    ------
    ConfigError
        On an unknown key, a value of the wrong type, or a failed ``validate()``;
        the message names the key path (``"background.box_size_pix"``).
    """
    where = path or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}", stage="config")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}",
            stage="config",
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        config = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}", stage="config") from exc
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", stage="config") from exc
    return config


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, path=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(f"{key}: {value!r} is not valid ({'; '.join(errors)})", stage="config")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}", stage="config")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}", stage="config")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}", stage="config")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}", stage="config")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}", stage="config")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", stage="config")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", stage="config")
        return value
    return value
