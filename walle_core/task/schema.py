"""The manifest's JSON Schema and a small validator for the subset of JSON Schema it uses.

The schema is plain data so that the registry can publish it (OpenAPI) unchanged. The validator
covers exactly the keywords used below (type, properties, required, additionalProperties, items,
pattern, enum, minimum/maximum, maxLength, maxItems, uniqueItems), which keeps ``walle_core.task``
free of a third-party schema library.
"""

from __future__ import annotations

import re
from typing import Any

PATH_PATTERN = r"^(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+){0,15}$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$"

_FILE = {
    "type": "object",
    "required": ["path", "sha256", "size"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "pattern": PATH_PATTERN, "maxLength": 255},
        "sha256": {"type": "string", "pattern": r"^[0-9a-f]{64}$"},
        "size": {"type": "integer", "minimum": 0},
    },
}

_QUOTAS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "wall_time_s": {"type": "number", "minimum": 0.001, "maximum": 86400},
        "memory_bytes": {"type": "integer", "minimum": 1},
        "output_bytes": {"type": "integer", "minimum": 0},
    },
}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Walle task manifest",
    "type": "object",
    "required": ["format", "name", "version", "entry", "files"],
    "additionalProperties": False,
    "properties": {
        "format": {"type": "integer", "enum": [1]},
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "version": {"type": "string", "pattern": VERSION_PATTERN},
        "entry": {"type": "string", "pattern": PATH_PATTERN},
        "model": {"type": ["string", "null"], "pattern": PATH_PATTERN},
        "files": {"type": "array", "items": _FILE, "maxItems": 4096},
        "backends": {"type": "array", "items": {"type": "string", "maxLength": 64}, "uniqueItems": True},
        "ops": {"type": "array", "items": {"type": "string", "maxLength": 64}, "uniqueItems": True},
        # The trigger's pattern language belongs to the on-device pipeline; the bundle only carries it.
        "trigger": {"type": "object"},
        "quotas": _QUOTAS,
        "min_walle_version": {"type": "string", "pattern": VERSION_PATTERN},
        "description": {"type": "string", "maxLength": 4096},
    },
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is(value: Any, kind: str) -> bool:
    # bool is an int subclass in Python but not a number in JSON.
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value``, as ``"$.path: message"`` strings."""
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, k) for k in allowed):
            return [f"{where}: expected {' or '.join(allowed)}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above {schema['maximum']}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems") and len({repr(v) for v in value}) != len(value):
            errors.append(f"{where}: items are not unique")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required key {key!r}")
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected key {key!r}")
    return errors
