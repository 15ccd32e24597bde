"""Typed loading of our JSON contract files into dataclasses, with errors that name the key.

Plans, splits, postprocessing decisions and run manifests are JSON loaded through
`from_dict`: every declared field must be present (unless it has a default) and of the
declared type; unknown keys are rejected so that a typo in a hand-edited file is caught.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from autounet.errors import PlansError

D = TypeVar("D")

KEY_MARK = ": key "
"""Separates the file from the key path in `where`: '<file>: key configurations.3d_fullres'."""


def key_path(where: str, key: object) -> str:
    """`where` extended by one key: the file gets ': key <key>', a key path gets '.<key>'."""
    return f"{where}.{key}" if KEY_MARK in where else f"{where}{KEY_MARK}{key}"


def from_dict(cls: type[D], data: Any, where: str) -> D:
    """Build dataclass `cls` from `data`; `where` prefixes error messages.

    `where` is the file (top level) or '<file>: key a.b' (nested), so that messages read
    '<file>: key a.b.c: ...' rather than gluing the key onto the file name. A top-level
    `validate(where)` may still append '.<key>' to the file; that is rewritten the same way.
    """
    if not isinstance(data, dict):
        raise PlansError(f"{where}: expected an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PlansError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise PlansError(f"{where}: missing required key '{name}'")
            continue
        kwargs[name] = _convert(hints[name], data[name], key_path(where, name))
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate(where)
        except PlansError as exc:
            message = str(exc)
            if KEY_MARK not in where and message.startswith(f"{where}."):
                raise PlansError(f"{where}{KEY_MARK}{message[len(where) + 1:]}") from None
            raise
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except PlansError as exc:
                errors.append(str(exc))
        raise PlansError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise PlansError(f"{where}: expected a list, got {type(value).__name__}")
        (arg,) = get_args(tp) or (Any,)
        return [_convert(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise PlansError(f"{where}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise PlansError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise PlansError(f"{where}: expected an object, got {type(value).__name__}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, f"{where}") if kt is not str else k: _convert(vt, v, key_path(where, k))
                for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PlansError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise PlansError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise PlansError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise PlansError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(tp, typing.TypeVar):
        return value
    raise PlansError(f"{where}: cannot interpret {value!r} as {tp}")


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-serialisable structure (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj
