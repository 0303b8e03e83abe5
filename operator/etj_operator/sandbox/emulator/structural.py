"""Structural schema: pruning and defaulting of custom resources, as a real server does on every write."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .errors import _bad_request
from .objects import _without

Json = dict[str, Any]

def _prune(value: Any, schema: Mapping[str, Any] | None, path: str, dropped: list[str]) -> Any:
    if schema is None or not isinstance(value, (dict, list)):
        return value
    if isinstance(value, list):
        return [_prune(item, schema.get("items"), f"{path}[{n}]", dropped) for n, item in enumerate(value)]
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return value
    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    result: Json = {}
    for key, item in value.items():
        if key in properties:
            result[key] = _prune(item, properties[key], f"{path}.{key}", dropped)
        elif isinstance(additional, dict):
            result[key] = _prune(item, additional, f"{path}.{key}", dropped)
        elif additional is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            result[key] = item
        else:
            dropped.append(f"{path}.{key}".lstrip("."))
    return result


def _default(value: Any, schema: Mapping[str, Any] | None) -> Any:
    if schema is None:
        return value
    if isinstance(value, list):
        return [_default(item, schema.get("items")) for item in value]
    if not isinstance(value, dict):
        return value
    result = dict(value)
    for key, sub_schema in (schema.get("properties") or {}).items():
        if key not in result and "default" in sub_schema:
            result[key] = copy.deepcopy(sub_schema["default"])
        if key in result:
            result[key] = _default(result[key], sub_schema)
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        properties = schema.get("properties") or {}
        for key in result:
            if key not in properties:
                result[key] = _default(result[key], additional)
    return result


def prune_and_default(obj: Json, schema: Mapping[str, Any] | None, *, strict: bool = False) -> Json:
    """Drop fields the CRD schema does not know and fill in its defaults; ``metadata`` is left alone.

    With ``strict`` (``?fieldValidation=Strict``, what kubectl sends), unknown fields are a 400 instead.
    """
    if not schema:
        return obj
    body = _without(obj, "apiVersion", "kind", "metadata")
    dropped: list[str] = []
    body = _default(_prune(body, schema, "", dropped), schema)
    if strict and dropped:
        raise _bad_request("strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in dropped))
    result: Json = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    result.update(body)
    return result

