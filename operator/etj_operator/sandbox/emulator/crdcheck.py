"""What a real API server checks in a CustomResourceDefinition before accepting it.

On create and update of a CRD, kube-apiserver refuses (422) a schema that is not *structural* or whose
defaults or CEL rules are wrong. Checked here, in the server's words:

* the name is ``<plural>.<group>``;
* structural schema: a ``type`` on every node (except ``x-kubernetes-int-or-string`` and
  ``x-kubernetes-preserve-unknown-fields`` nodes), ``properties`` and ``additionalProperties`` not together,
  no ``uniqueItems``, ``x-kubernetes-preserve-unknown-fields`` only ``true``, root ``metadata`` restricting
  nothing but ``name`` and ``generateName``, ``x-kubernetes-list-type: map`` on object items whose keys are
  required or defaulted, ``x-kubernetes-list-map-keys`` only on map lists;
* every ``default`` is pruned (no unknown fields), valid against its schema, and passes its node's CEL rules
  (evaluated on the default as written: nested defaults are not applied first, so ``default: {}`` under a
  rule that reads ``self.mode`` fails with ``no such key: mode``);
* every rule and ``messageExpression`` compiles against the schema (an unknown field is a compile error),
  ``fieldPath`` names a field, ``reason`` is supported, ``message`` has no line break, ``oldSelf`` is used
  only where old values can be correlated.

Not checked: CEL cost estimation, conversion webhooks, version-specific printer columns and subresource
paths, ``x-kubernetes-embedded-resource`` nesting rules.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .admission import Cause, SchemaValidator, invalid_error
from .cel import (
    SUPPORTED_REASONS,
    FieldPathError,
    RuleValidator,
    Segment,
    compile_rules,
    normalize_field_path,
    render_path,
)
from .errors import ApiError
from .structural import _prune

Json = dict[str, Any]

__all__ = ["check_crd", "crd_causes"]

_CRD_KIND, _CRD_GROUP = "CustomResourceDefinition", "apiextensions.k8s.io"


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, (dict, list)) else ("object" if isinstance(value, dict)
                                                                          else "array")


def _prop(path: Sequence[Segment], name: str) -> list[Segment]:
    return [*path, ("child", "properties"), ("key", name)]


class _Checker:
    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def add(self, path: Sequence[Segment], body: str, reason: str = "FieldValueInvalid") -> None:
        cause = Cause(render_path(path), body, reason)
        if cause not in self.causes:
            self.causes.append(cause)

    # ----- structural ------------------------------------------------------------------------------

    def structural(self, schema: Any, path: list[Segment], *, level: str) -> None:
        if not isinstance(schema, Mapping):
            return
        int_or_string = bool(schema.get("x-kubernetes-int-or-string"))
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        if preserve is not None and preserve is not True:
            self.add([*path, ("child", "x-kubernetes-preserve-unknown-fields")],
                     f"Invalid value: {_show(preserve)}: must be true or undefined")
        if not schema.get("type") and not int_or_string and preserve is not True:
            where = {"root": "at the root", "items": "for specified array items",
                     "additional": "for specified additionalProperties"}.get(level, "for specified object fields")
            self.add([*path, ("child", "type")], f"Required value: must not be empty {where}",
                     "FieldValueRequired")
        if int_or_string and schema.get("type"):
            self.add([*path, ("child", "type")],
                     f"Invalid value: {_show(schema['type'])}: must be empty to be structural")
        if schema.get("properties") and schema.get("additionalProperties") not in (None, True):
            self.add([*path, ("child", "additionalProperties")],
                     "Forbidden: additionalProperties and properties are mutual exclusive", "FieldValueForbidden")
        if schema.get("uniqueItems") is True:
            self.add([*path, ("child", "uniqueItems")], "Forbidden: uniqueItems cannot be set to true since the"
                     " runtime complexity becomes quadratic", "FieldValueForbidden")
        self.list_type(schema, path)
        for name, sub in (schema.get("properties") or {}).items():
            sub_path = _prop(path, name)
            if level == "root" and name == "metadata" and isinstance(sub, Mapping):
                self.metadata(sub, sub_path)
                continue
            if level == "root" and name in ("apiVersion", "kind") and isinstance(sub, Mapping) \
                    and sub.get("type") not in (None, "string"):
                self.add([*sub_path, ("child", "type")], f"Invalid value: {_show(sub.get('type'))}: must be string")
            self.structural(sub, sub_path, level="property")
        if isinstance(schema.get("items"), Mapping):
            self.structural(schema["items"], [*path, ("child", "items")], level="items")
        elif schema.get("type") == "array" and "items" not in schema and preserve is not True:
            self.add([*path, ("child", "items")], "Required value: must be specified", "FieldValueRequired")
        if isinstance(schema.get("additionalProperties"), Mapping):
            self.structural(schema["additionalProperties"], [*path, ("child", "additionalProperties")],
                            level="additional")

    def metadata(self, schema: Mapping[str, Any], path: list[Segment]) -> None:
        if schema.get("type") != "object":
            self.add([*path, ("child", "type")], f"Invalid value: {_show(schema.get('type'))}: must be object")
        allowed = {"type", "properties", "description"}
        extra_keys = set(schema) - allowed
        extra_props = set(schema.get("properties") or {}) - {"name", "generateName"}
        if extra_keys or extra_props:
            self.add(path, "Forbidden: must not specify anything other than name and generateName, but metadata is"
                     " implicitly specified", "FieldValueForbidden")

    def list_type(self, schema: Mapping[str, Any], path: list[Segment]) -> None:
        kind = schema.get("x-kubernetes-list-type")
        keys = schema.get("x-kubernetes-list-map-keys")
        if kind is None and keys is None:
            return
        if kind is not None and schema.get("type") != "array":
            self.add([*path, ("child", "x-kubernetes-list-type")], "Invalid value: " + _show(kind)
                     + ": must only be used on type array")
        if kind not in (None, "atomic", "set", "map"):
            self.add([*path, ("child", "x-kubernetes-list-type")], f"Unsupported value: {_show(kind)}: supported"
                     ' values: "atomic", "set", "map"', "FieldValueNotSupported")
        if keys is not None and kind != "map":
            self.add([*path, ("child", "x-kubernetes-list-map-keys")],
                     "Forbidden: must not be set if x-kubernetes-list-type is not map", "FieldValueForbidden")
        if kind != "map":
            return
        items: Mapping[str, Any] = schema["items"] if isinstance(schema.get("items"), Mapping) else {}
        if not keys:
            self.add([*path, ("child", "x-kubernetes-list-map-keys")],
                     "Required value: must not be empty if x-kubernetes-list-type is map", "FieldValueRequired")
            return
        if items.get("type") != "object":
            self.add([*path, ("child", "items"), ("child", "type")], "Invalid value: "
                     + _show(items.get("type")) + ": must be object if parent array's x-kubernetes-list-type is map")
            return
        required = set(items.get("required") or [])
        for key in keys:
            prop = (items.get("properties") or {}).get(key)
            if prop is None:
                self.add([*path, ("child", "x-kubernetes-list-map-keys")],
                         f"Invalid value: {_show(keys)}: entries must all be names of item properties")
            elif key not in required and "default" not in prop:
                self.add([*path, ("child", "items"), ("child", "properties"), ("key", key), ("child", "default")],
                         "Required value: this property is in x-kubernetes-list-map-keys, so it must have a default"
                         " or be a required property", "FieldValueRequired")

    # ----- defaults ------------------------------------------------------------------------------------

    def defaults(self, schema: Any, path: list[Segment], *, in_additional: bool = False) -> None:
        if not isinstance(schema, Mapping):
            return
        if "default" in schema:
            self.default(schema, [*path, ("child", "default")], in_additional=in_additional)
        for name, sub in (schema.get("properties") or {}).items():
            self.defaults(sub, _prop(path, name), in_additional=in_additional)
        if isinstance(schema.get("items"), Mapping):
            self.defaults(schema["items"], [*path, ("child", "items")], in_additional=in_additional)
        if isinstance(schema.get("additionalProperties"), Mapping):
            self.defaults(schema["additionalProperties"], [*path, ("child", "additionalProperties")],
                          in_additional=True)

    def default(self, schema: Mapping[str, Any], path: list[Segment], *, in_additional: bool) -> None:
        value = schema["default"]
        if in_additional:
            self.add(path, "Forbidden: must not be set inside additionalProperties", "FieldValueForbidden")
            return
        pruned: list[str] = []
        _prune(copy.deepcopy(value), schema, "", pruned)
        if pruned:
            self.add(path, f"Invalid value: {_show(value)}: must not have unknown fields")
            return
        where = render_path(path)
        structural = SchemaValidator(schema, root=False).causes(value)
        for cause in structural:
            field = where if cause.field in ("", "<nil>") else f"{where}.{cause.field}"
            self.causes.append(Cause(field, cause.message, cause.reason))
        if structural:
            return
        rules = RuleValidator(schema, root=False)
        failed = rules.validate(value, value, path=path, ratcheting=False)
        if not failed and any(r.get("optionalOldSelf") for r in schema.get("x-kubernetes-validations") or []):
            failed = rules.validate(value, None, path=path, ratcheting=False)
        for failure in failed:
            rendered = Cause(failure.field, failure.body, failure.reason)
            if rendered not in self.causes:
                self.causes.append(rendered)

    # ----- rules ---------------------------------------------------------------------------------------

    def rules(self, schema: Any, path: list[Segment], *, root: bool, correlatable: bool) -> None:
        if not isinstance(schema, Mapping):
            return
        entries = schema.get("x-kubernetes-validations") or []
        if entries:
            self.rule_entries(schema, entries, path, root=root, correlatable=correlatable)
        for name, sub in (schema.get("properties") or {}).items():
            self.rules(sub, _prop(path, name), root=False, correlatable=correlatable)
        items = schema.get("items")
        if isinstance(items, Mapping):
            map_list = schema.get("x-kubernetes-list-type") == "map"
            self.rules(items, [*path, ("child", "items")], root=bool(items.get("x-kubernetes-embedded-resource")),
                       correlatable=correlatable and map_list)
        if isinstance(schema.get("additionalProperties"), Mapping):
            self.rules(schema["additionalProperties"], [*path, ("child", "additionalProperties")], root=False,
                       correlatable=correlatable)

    def rule_entries(self, schema: Mapping[str, Any], entries: list[Any], path: list[Segment], *, root: bool,
                     correlatable: bool) -> None:
        here = [*path, ("child", "x-kubernetes-validations")]
        problems_before = len(self.causes)
        for index, raw in enumerate(entries):
            at = [*here, ("index", str(index))]
            if not isinstance(raw, Mapping) or not str(raw.get("rule") or "").strip():
                self.add([*at, ("child", "rule")], "Required value: rule is not specified", "FieldValueRequired")
                continue
            rule, message = str(raw["rule"]), raw.get("message")
            if message is not None and "\n" in str(message):
                self.add([*at, ("child", "message")], f"Invalid value: {_show(message)}: message must not contain"
                         " line breaks")
            if "\n" in rule and not message and not raw.get("messageExpression"):
                self.add([*at, ("child", "message")], "Required value: message must be specified if rule contains"
                         " line breaks", "FieldValueRequired")
            if raw.get("reason") is not None and raw["reason"] not in SUPPORTED_REASONS:
                listed = ", ".join(json.dumps(r) for r in sorted(SUPPORTED_REASONS))
                self.add([*at, ("child", "reason")], f"Unsupported value: {_show(raw['reason'])}: supported values:"
                         f" {listed}", "FieldValueNotSupported")
            field_path = raw.get("fieldPath")
            if field_path is not None:
                text = str(field_path)
                if not text.strip():
                    self.add([*at, ("child", "fieldPath")], f"Invalid value: {_show(text)}: fieldPath must be"
                             " non-empty if specified")
                elif "\n" in text:
                    self.add([*at, ("child", "fieldPath")], f"Invalid value: {_show(text)}: fieldPath must not"
                             " contain line breaks")
                else:
                    try:
                        normalize_field_path(text, schema)
                    except FieldPathError as e:
                        self.add([*at, ("child", "fieldPath")], f"Invalid value: {_show(text)}: fieldPath must be a"
                                 f" valid path: {e}")
        if len(self.causes) > problems_before:
            return  # as a real server: schema problems first, CEL compilation only once they are fixed
        for compiled in compile_rules(schema, root=root):
            at = [*here, ("index", str(compiled.index))]
            if compiled.error:
                self.add([*at, ("child", "rule")], f"Invalid value: {_show(compiled.rule)}: compilation failed:"
                         f" {compiled.error}")
            elif compiled.uses_old_self and not correlatable:
                self.add([*at, ("child", "rule")], f"Invalid value: {_show(compiled.rule)}: oldSelf cannot be used on"
                         " the uncorrelatable portion of the schema")
            if compiled.message_error:
                self.add([*at, ("child", "messageExpression")], f"Invalid value: {_show(compiled.message_expression)}:"
                         f" messageExpression compilation failed: {compiled.message_error}")


def _schema_paths(crd: Mapping[str, Any]) -> list[tuple[list[Segment], Mapping[str, Any]]]:
    spec = crd.get("spec") or {}
    versions = [v for v in spec.get("versions") or [] if isinstance(v, Mapping)]
    schemas = [((v.get("schema") or {}).get("openAPIV3Schema")) for v in versions]
    if schemas and all(s == schemas[0] for s in schemas) and isinstance(schemas[0], Mapping):
        # Identical per-version schemas are held once, as spec.validation (the server's internal form).
        return [([("child", "spec"), ("child", "validation"), ("child", "openAPIV3Schema")], schemas[0])]
    return [([("child", "spec"), ("child", "versions"), ("index", str(i)), ("child", "schema"),
              ("child", "openAPIV3Schema")], s) for i, s in enumerate(schemas) if isinstance(s, Mapping)]


def crd_causes(crd: Mapping[str, Any]) -> list[Cause]:
    """Every reason a real server refuses ``crd`` (an apiextensions.k8s.io/v1 CustomResourceDefinition)."""
    checker = _Checker()
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    name = str((crd.get("metadata") or {}).get("name") or "")
    required = f"{names.get('plural', '')}.{spec.get('group', '')}"
    if name != required:
        checker.add([("child", "metadata"), ("child", "name")],
                    f'Invalid value: {_show(name)}: must be spec.names.plural+"."+spec.group')
    for path, schema in _schema_paths(crd):
        before = len(checker.causes)
        checker.structural(schema, path, level="root")
        if len(checker.causes) > before:
            continue  # defaults and rules are only checked on a structural schema
        checker.defaults(schema, path)
        checker.rules(schema, path, root=True, correlatable=True)
    return checker.causes


def check_crd(crd: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
    """Raise the 422 a real server answers when ``crd`` is refused (on update: only for new problems)."""
    causes = crd_causes(crd)
    if old is not None and causes:
        known = set(crd_causes(old))
        causes = [c for c in causes if c not in known]
    if causes:
        name = str((crd.get("metadata") or {}).get("name") or "")
        error: ApiError = invalid_error(_CRD_KIND, _CRD_GROUP, name, causes)
        raise error
