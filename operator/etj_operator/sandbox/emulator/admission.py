"""Admission of custom resources: the CRD's structural schema, its list types, then its CEL rules.

A real API server validates every write of a custom resource (create, update, patch, the status
subresource, dry runs included) against its CRD and answers ``422 Invalid`` with one cause per field:

1. the OpenAPI schema (types, enums, bounds, patterns, required fields, ``metadata.name`` /
   ``generateName`` restrictions), checked here with ``jsonschema`` after translating the OpenAPI dialect;
2. ``x-kubernetes-list-type`` ``map``/``set`` uniqueness;
3. the CEL ``x-kubernetes-validations`` rules (:mod:`.cel`), **unless** step 1 or 2 produced a *blocking*
   error (wrong type, unsupported enum value, required value, too long, too many), in which case the CEL
   rules are skipped and one more cause says so, as kube-apiserver does.

On updates, errors on values that did not change are ratcheted (dropped), as CRD validation ratcheting does.

:class:`CustomResourceAdmission` is the hook; every :class:`~.core.KubeApiEmulator` has one by default.
:func:`configure` switches it to ``"full"``, ``"schema"`` (a server without CEL) or ``"none"``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from .cel import RuleValidator
from .errors import ApiError

if TYPE_CHECKING:
    from .core import KubeApiEmulator
    from .resources import ResourceType

__all__ = [
    "BLOCKING_REASONS",
    "Cause",
    "CustomResourceAdmission",
    "SchemaValidator",
    "ValidationMode",
    "configure",
    "invalid_error",
    "list_type_causes",
    "openapi_to_jsonschema",
]

Json = dict[str, Any]
ValidationMode = Literal["full", "schema", "none"]

#: Schema errors after which CEL rules are not evaluated (kube-apiserver's "blocking" error types).
BLOCKING_REASONS: Final = frozenset({"FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong",
                                     "FieldValueTooMany", "FieldValueTypeInvalid"})
SKIPPED_CEL_MESSAGE: Final = ("some validation rules were not checked because the object was invalid; correct the"
                              " existing errors to complete validation")


@dataclass(frozen=True)
class Cause:
    """One reason an object is invalid, as a ``Status`` cause: ``field`` is a path such as ``spec.replicas``."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def to_json(self) -> Json:
        """The ``details.causes[]`` entry of a Status."""
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


# ----- the OpenAPI dialect -> JSON Schema -----------------------------------------------------------------

def openapi_to_jsonschema(schema: Mapping[str, Any]) -> Json:
    """Translate a CRD ``openAPIV3Schema`` into a JSON Schema that jsonschema validates the same way.

    ``nullable: true`` allows ``null``; ``x-kubernetes-int-or-string`` allows an integer or a string;
    boolean ``exclusiveMinimum``/``exclusiveMaximum`` become the numeric form; ``x-kubernetes-*`` keys,
    ``format``, ``default`` and ``description`` are dropped (the emulator has already defaulted the object).
    """
    out: Json = {}
    for key, value in schema.items():
        if key in ("default", "description", "example", "nullable", "format"):
            continue
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("additionalProperties", "items", "not") and isinstance(value, Mapping):
            out[key] = openapi_to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [openapi_to_jsonschema(sub) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        # OpenAPI 3.0 (JSON Schema draft 4): a boolean that makes ``minimum``/``maximum`` exclusive.
        if isinstance(out.get(exclusive), bool) and out.pop(exclusive) and bound in out:
            out[exclusive] = out.pop(bound)
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


def _field_path(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "object" if isinstance(value, dict) else "array"
    return json.dumps(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _cause_from_error(error: Any) -> Cause:
    """Word a jsonschema error as the API server words its OpenAPI validation errors."""
    path = _field_path(error.absolute_path)
    where = path or "<nil>"
    kind, value, limit = error.validator, error.instance, error.validator_value
    if kind == "required":
        missing = next((name for name in limit if isinstance(value, Mapping) and name not in value), "")
        return Cause(_field_path([*error.absolute_path, missing]), "Required value", "FieldValueRequired")
    if kind == "enum":
        allowed = ", ".join(_show(v) for v in limit)
        return Cause(where, f"Unsupported value: {_show(value)}: supported values: {allowed}",
                     "FieldValueNotSupported")
    if kind == "type":
        expected = limit if isinstance(limit, str) else " or ".join(str(t) for t in limit if t != "null")
        actual = _json_type(value)
        return Cause(where, f'Invalid value: "{actual}": {where} in body must be of type {expected}: "{actual}"',
                     "FieldValueTypeInvalid")
    if kind == "maxLength":
        return Cause(where, f"Too long: may not be longer than {limit}", "FieldValueTooLong")
    if kind in ("maxItems", "maxProperties"):
        size = len(value) if isinstance(value, (list, dict)) else 0
        unit = "items" if kind == "maxItems" else "properties"
        return Cause(where, f"Too many: {size}: must have at most {limit} {unit}", "FieldValueTooMany")
    phrases = {
        "minimum": f"should be greater than or equal to {limit}",
        "maximum": f"should be less than or equal to {limit}",
        "exclusiveMinimum": f"should be greater than {limit}",
        "exclusiveMaximum": f"should be less than {limit}",
        "pattern": f"should match '{limit}'",
        "minLength": f"should be at least {limit} chars long",
        "minItems": f"should have at least {limit} items",
        "minProperties": f"should have at least {limit} properties",
        "multipleOf": f"should be a multiple of {limit}",
    }
    if kind in phrases:
        return Cause(where, f"Invalid value: {_show(value)}: {where} in body {phrases[kind]}")
    return Cause(where, f"Invalid value: {_show(value)}: {error.message}")


def _metadata_schema(schema: Mapping[str, Any]) -> Json | None:
    """The declared ``metadata.name``/``generateName`` restrictions of a root schema, if any."""
    meta = (schema.get("properties") or {}).get("metadata") or {}
    props = {k: v for k, v in (meta.get("properties") or {}).items() if k in ("name", "generateName")}
    return {"type": "object", "properties": props} if props else None


class SchemaValidator:
    """Validates objects against one CRD version's ``openAPIV3Schema`` (compiled once)."""

    def __init__(self, schema: Mapping[str, Any], *, root: bool = True) -> None:
        import jsonschema

        body = dict(schema)
        if root and "properties" in body:
            properties = dict(body["properties"])
            meta = _metadata_schema(schema)
            if meta is None:
                properties.pop("metadata", None)
            else:
                properties["metadata"] = meta
            body["properties"] = properties
        translated = openapi_to_jsonschema(body)
        jsonschema.Draft202012Validator.check_schema(translated)
        self._validator = jsonschema.Draft202012Validator(translated)
        self._root = root
        self._meta = root and _metadata_schema(schema) is not None

    def causes(self, obj: Any, old: Any = None) -> list[Cause]:
        """Every schema violation of ``obj``; with ``old``, those on unchanged values are ratcheted."""
        body = obj
        if self._root and isinstance(obj, Mapping):
            body = {k: v for k, v in obj.items() if k != "metadata"}
            if self._meta:
                meta = obj.get("metadata") or {}
                body["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
        errors = sorted(self._validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
        causes: list[Cause] = []
        for error in errors:
            if old is not None and _unchanged(obj, old, list(error.absolute_path)):
                continue
            cause = _cause_from_error(error)
            if cause not in causes:
                causes.append(cause)
        return causes


_MISSING = object()


def _at(value: Any, path: list[Any]) -> Any:
    for part in path:
        if isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
            continue
        if not (isinstance(value, Mapping) and isinstance(part, str) and part in value):
            return _MISSING
        value = value[part]
    return value


def _unchanged(new: Any, old: Any, path: list[Any]) -> bool:
    return bool(_at(new, path) == _at(old, path))


# ----- list types ---------------------------------------------------------------------------------------

def _go_map(item: Mapping[str, Any], keys: list[str]) -> str:
    inner = ", ".join(f"{json.dumps(k)}:{json.dumps(item.get(k))}" for k in keys if k in item)
    return "map[string]interface {}{" + inner + "}"


def list_type_causes(schema: Mapping[str, Any] | None, value: Any, path: str = "") -> list[Cause]:
    """Duplicates in ``x-kubernetes-list-type: map`` (by key) and ``set`` lists, as a real server reports."""
    if schema is None or value is None:
        return []
    causes: list[Cause] = []
    if isinstance(value, list):
        kind = schema.get("x-kubernetes-list-type")
        keys = list(schema.get("x-kubernetes-list-map-keys") or [])
        seen: list[Any] = []
        for index, item in enumerate(value):
            here = f"{path}[{index}]"
            if kind == "map" and keys and isinstance(item, Mapping):
                key = [item.get(k) for k in keys]
                if key in seen:
                    causes.append(Cause(here, f"Duplicate value: {_go_map(item, keys)}", "FieldValueDuplicate"))
                seen.append(key)
            elif kind == "set":
                if item in seen:
                    causes.append(Cause(here, f"Duplicate value: {_show(item)}", "FieldValueDuplicate"))
                seen.append(item)
            causes.extend(list_type_causes(schema.get("items"), item, here))
    elif isinstance(value, Mapping):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key) if key in properties else (additional if isinstance(additional, Mapping)
                                                                  else None)
            if sub is not None:
                causes.extend(list_type_causes(sub, item, f"{path}.{key}" if path else key))
    return causes


def invalid_error(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    """The 422 ``Invalid`` ApiError a real server answers, naming every field at fault."""
    listed = ", ".join(str(c) for c in causes)
    message = f'{kind}.{group} "{name}" is invalid: '
    message += f"[{listed}]" if len(causes) > 1 else listed
    return ApiError(422, "Invalid", message,
                    details={"name": name, "group": group, "kind": kind, "causes": [c.to_json() for c in causes]})


# ----- the admission hook -------------------------------------------------------------------------------

@dataclass
class _Compiled:
    schema: Json
    structural: SchemaValidator
    rules: RuleValidator | None


class CustomResourceAdmission:
    """The emulator's admission of custom resources; raises a 422 ApiError when an object is invalid.

    ``cel=False`` simulates a server that does not evaluate ``x-kubernetes-validations`` (schema only).
    """

    def __init__(self, *, cel: bool = True) -> None:
        self.cel = cel
        self._compiled: dict[int, _Compiled] = {}

    def _for(self, rt: ResourceType) -> _Compiled | None:
        schema = rt.schema
        if not schema:
            return None
        entry = self._compiled.get(id(schema))
        if entry is None or entry.schema is not schema:
            entry = _Compiled(schema, SchemaValidator(schema), None)
            self._compiled[id(schema)] = entry
        if self.cel and entry.rules is None:
            entry.rules = RuleValidator(schema)
        return entry

    def causes(self, rt: ResourceType, obj: Json, old: Json | None) -> list[Cause]:
        """Every cause for which a real server refuses ``obj`` (``old``: the stored object on update)."""
        compiled = self._for(rt)
        if compiled is None:
            return []
        causes = compiled.structural.causes(obj, old)
        listed = list_type_causes(compiled.schema, _without_metadata(obj))
        # on update, list-type errors are checked only when the stored object had none (ratcheting)
        if old is None or not list_type_causes(compiled.schema, _without_metadata(old)):
            causes.extend(c for c in listed if c not in causes)
        if not self.cel or compiled.rules is None or compiled.rules.empty:
            return causes  # no rules: no CEL validator, and no "rules were not checked" cause either
        if any(c.reason in BLOCKING_REASONS for c in causes):
            causes.append(Cause("<nil>", f'Invalid value: "null": {SKIPPED_CEL_MESSAGE}'))
            return causes
        for failed in compiled.rules.validate(obj, old):
            cause = Cause(failed.field, failed.body, failed.reason)
            if cause not in causes:
                causes.append(cause)
        return causes

    def __call__(self, rt: ResourceType, obj: Json, old: Json | None) -> None:
        """Admit ``obj`` or raise the 422 a real server answers (custom resources only)."""
        if not rt.custom:
            return
        causes = self.causes(rt, obj, old)
        if causes:
            name = str((obj.get("metadata") or {}).get("name") or "")
            raise invalid_error(rt.kind, rt.group, name, causes)


def _without_metadata(obj: Mapping[str, Any]) -> Json:
    return {k: v for k, v in obj.items() if k != "metadata"}


def configure(emulator: KubeApiEmulator, mode: ValidationMode) -> None:
    """Set how ``emulator`` validates custom resources: ``full`` (a real server), ``schema`` (no CEL), ``none``."""
    if mode not in ("full", "schema", "none"):
        raise ValueError(f"unknown validation mode {mode!r}")
    hooks = [h for h in emulator.admission if not isinstance(h, CustomResourceAdmission)]
    if mode != "none":
        hooks.insert(0, CustomResourceAdmission(cel=mode == "full"))
    emulator.admission[:] = hooks
