"""Server-side validation of custom resources for the sandbox's API emulator (admission, as a real server does).

A real API server rejects a custom resource that breaks its CRD's ``openAPIV3Schema`` (types, enums,
minimums, patterns, required fields) or one of its CEL ``x-kubernetes-validations`` rules, answering
``422 Invalid`` with one ``cause`` per field. The emulator only prunes and defaults. This module adds the
rest for the sandbox:

* the structural schema is checked with ``jsonschema`` after translating the OpenAPI dialect
  (``nullable``, ``x-kubernetes-int-or-string``; ``format`` and ``x-kubernetes-*`` keys are ignored, as
  jsonschema ignores unknown keywords);
* CEL is not evaluated here (no CEL engine is installed); instead, for EfficientTrainingJobs, the operator's
  own :func:`etj_operator.models.parse_spec` runs, which checks every rule the CRD's CEL expresses and more
  (the operator would refuse such a spec anyway, so rejecting it at admission only brings the error forward).

Install it with :func:`install` on an :class:`~etj_operator.sandbox.emulator.EmulatorServer`; every
create, update and patch of a custom resource (including ``dryRun``) then goes through it. Status writes are
checked against the schema too, but the spec's rules run only when the spec changes (as CEL ratcheting
lets an unchanged field through).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etj_operator import contract
from etj_operator.models import InvalidSpecError, parse_spec

if TYPE_CHECKING:
    from etj_operator.sandbox.emulator import EmulatorServer, ResourceType

__all__ = [
    "Cause",
    "SchemaValidator",
    "etj_spec_causes",
    "install",
    "invalid_error",
    "openapi_to_jsonschema",
    "validate_object",
]

Json = dict[str, Any]
#: Extra checks per (group, plural): ``(object) -> causes``; run when the object's spec changed.
SpecCheck = Callable[[Mapping[str, Any]], list["Cause"]]


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

_SCHEMA_KEYS = ("properties", "additionalProperties", "items", "allOf", "anyOf", "oneOf", "not")


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
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return "object" if isinstance(value, dict) else "array"
    return json.dumps(value)


def _cause_from_error(error: Any) -> Cause:
    """Word a jsonschema error as the API server words its OpenAPI validation errors."""
    path = _field_path(error.absolute_path)
    where = path or "<root>"
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
        return Cause(where, f"Invalid value: {_show(value)}: {where} in body must be of type {expected}",
                     "FieldValueTypeInvalid")
    phrases = {
        "minimum": f"should be greater than or equal to {limit}",
        "maximum": f"should be less than or equal to {limit}",
        "exclusiveMinimum": f"should be greater than {limit}",
        "exclusiveMaximum": f"should be less than {limit}",
        "pattern": f"should match '{limit}'",
        "minLength": f"should be at least {limit} chars long",
        "maxLength": f"may not be longer than {limit}",
        "minItems": f"should have at least {limit} items",
        "maxItems": f"must have at most {limit} items",
        "minProperties": f"should have at least {limit} properties",
        "maxProperties": f"should have at most {limit} properties",
        "multipleOf": f"should be a multiple of {limit}",
    }
    if kind in phrases:
        return Cause(where, f"Invalid value: {_show(value)}: {where} in body {phrases[kind]}")
    return Cause(where, f"Invalid value: {_show(value)}: {error.message}")


class SchemaValidator:
    """Validates objects against one CRD version's ``openAPIV3Schema`` (compiled once)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        try:
            import jsonschema  # type: ignore[import-untyped,unused-ignore]
        except ImportError as e:  # pragma: no cover - jsonschema comes with the dev and sandbox installs
            raise RuntimeError("sandbox validation needs the 'jsonschema' package (pip install jsonschema)") from e
        translated = openapi_to_jsonschema(schema)
        jsonschema.Draft202012Validator.check_schema(translated)
        self._validator = jsonschema.Draft202012Validator(translated)

    def causes(self, obj: Mapping[str, Any]) -> list[Cause]:
        """Every schema violation of ``obj`` (``metadata`` is the server's business and is not checked)."""
        body = {k: v for k, v in obj.items() if k != "metadata"}
        errors = sorted(self._validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
        causes: list[Cause] = []
        for error in errors:
            cause = _cause_from_error(error)
            if cause not in causes:
                causes.append(cause)
        return causes


def etj_spec_causes(obj: Mapping[str, Any]) -> list[Cause]:
    """The EfficientTrainingJob rules (the CRD's CEL and the operator's own checks), from ``parse_spec``."""
    name = (obj.get("metadata") or {}).get("name")
    try:
        parse_spec(obj.get("spec"), name if isinstance(name, str) else None)
    except InvalidSpecError as e:
        return [Cause(p.path, f"Invalid value: {p.message} ({p.fix})") for p in e.problems]
    return []


#: Extra spec checks the sandbox runs, per (group, plural).
SPEC_CHECKS: dict[tuple[str, str], SpecCheck] = {(contract.GROUP, contract.PLURAL): etj_spec_causes}


def validate_object(
    schema: SchemaValidator | None,
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    spec_check: SpecCheck | None = None,
) -> list[Cause]:
    """All causes against which ``obj`` (``old`` is the stored version, None on create) would be rejected."""
    causes = schema.causes(obj) if schema is not None else []
    spec_changed = old is None or old.get("spec") != obj.get("spec")
    if spec_check is not None and spec_changed and not any(c.field.startswith("spec") for c in causes):
        causes.extend(c for c in spec_check(obj) if c not in causes)
    return causes


def invalid_error(kind: str, group: str, name: str, causes: list[Cause]) -> Exception:
    """The 422 ``Invalid`` ApiError a real server answers, naming every field at fault."""
    from etj_operator.sandbox.emulator import ApiError

    listed = ", ".join(str(c) for c in causes)
    message = f'{kind}.{group} "{name}" is invalid: '
    message += f"[{listed}]" if len(causes) > 1 else listed
    return ApiError(422, "Invalid", message,
                    details={"name": name, "group": group, "kind": kind, "causes": [c.to_json() for c in causes]})


class _Admission:
    """The hook the emulator calls before committing a write: raises a 422 ApiError when invalid."""

    def __init__(self) -> None:
        # Compiled once per schema object; the schema is kept in the entry so its id cannot be reused.
        self._validators: dict[int, tuple[Json | None, SchemaValidator | None]] = {}

    def _validator(self, rt: ResourceType) -> SchemaValidator | None:
        entry = self._validators.get(id(rt.schema))
        if entry is None or entry[0] is not rt.schema:
            entry = (rt.schema, SchemaValidator(rt.schema) if rt.schema else None)
            self._validators[id(rt.schema)] = entry
        return entry[1]

    def __call__(self, rt: ResourceType, obj: Json, old: Json | None) -> None:
        if not rt.custom:
            return
        causes = validate_object(self._validator(rt), obj, old, SPEC_CHECKS.get((rt.group, rt.plural)))
        if causes:
            name = str((obj.get("metadata") or {}).get("name") or "")
            raise invalid_error(rt.kind, rt.group, name, causes)


def install(server: EmulatorServer) -> None:
    """Validate every custom-resource write of ``server`` from now on (idempotent)."""
    hooks = server.emulator.admission
    if not any(isinstance(h, _Admission) for h in hooks):
        hooks.append(_Admission())
