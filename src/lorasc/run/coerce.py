"""Settings as their fields' types: a flag's text, or what a config file holds, converted by the field's
type (not by the YAML parser's guess), and refused as `<field>=<value> is not allowed: <what is>`."""

from __future__ import annotations

import math

from ..config import require
from ..targets import peft_targets


def coerce(name: str, value, kind):
    """`value` (a flag's text, or what a config file holds) as the field's type."""
    if isinstance(kind, tuple):  # choices; None among them is also spelled "none"
        value = None if None in kind and isinstance(value, str) and value.lower() == "none" else value
        require(value in kind, name, value, f"one of {kind}")
        return value
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        require("None" in kind, name, value, f"a value, not None ({kind})")
        return None
    base = kind.split(" |")[0].split("[")[0] if isinstance(kind, str) else kind.__name__
    convert = {"items": _as_items, "int": _as_int, "float": _as_float, "bool": _as_bool, "list": _as_list, "str": _as_str}[base]
    if "bool" in kind and "str" in kind:
        convert = _as_bool_or_str
    converted = convert(value)
    require(converted is not _INVALID, name, value, _KIND_NAMES[convert])
    return converted


_INVALID = object()


def _as_int(value):
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, float):
        return int(value) if value.is_integer() else _INVALID
    try:
        return int(value)
    except (TypeError, ValueError):
        return _INVALID


def _as_float(value):
    if isinstance(value, bool):
        return _INVALID
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _INVALID
    return number if math.isfinite(number) else _INVALID


def _as_bool(value):
    return value if isinstance(value, bool) else _INVALID


def _as_list(value):
    if isinstance(value, str):
        return value  # PEFT reads a string of target modules as a regex
    return peft_targets(list(value)) if isinstance(value, list) and all(isinstance(v, str) for v in value) else _INVALID


def _as_items(value):
    """Text with comma-separated items (a flag), or a list of texts and mappings (a config file's run.tasks)."""
    if isinstance(value, str):
        return value
    return list(value) if isinstance(value, list) and all(isinstance(v, (str, dict)) for v in value) else _INVALID


def _as_str(value):
    return value if isinstance(value, str) else _INVALID


def _as_bool_or_str(value):
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value if isinstance(value, (bool, str)) else _INVALID


_KIND_NAMES = {_as_items: "comma-separated names, or a list", _as_int: "an integer", _as_float: "a finite number", _as_bool: "true or false", _as_list: "a list of names",
               _as_str: "text", _as_bool_or_str: "true, false or a name"}
