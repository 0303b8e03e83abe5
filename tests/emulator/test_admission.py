"""Admission of custom resources (emulator/admission.py): schema, list types, then CEL, on every write."""

from __future__ import annotations

import copy

import pytest

from etj_operator.sandbox.emulator import ApiError, EmulatorServer
from etj_operator.sandbox.emulator.admission import SKIPPED_CEL_MESSAGE, configure

SPEC = {
    "type": "object",
    "required": ["size"],
    "x-kubernetes-validations": [
        {"rule": "self.mode != 'Fixed' || has(self.limit)", "fieldPath": ".limit", "reason": "FieldValueRequired",
         "message": "mode Fixed needs limit"},
        {"rule": "!has(self.frozen) || !has(oldSelf.frozen) || self.frozen == oldSelf.frozen",
         "fieldPath": ".frozen", "message": "frozen is immutable"},
    ],
    "properties": {
        "size": {"type": "integer", "minimum": 1, "maximum": 10},
        "mode": {"type": "string", "enum": ["Auto", "Fixed"], "default": "Auto"},
        "limit": {"type": "integer"},
        "frozen": {"type": "string"},
        "label": {"type": "string", "maxLength": 5},
        "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["key"],
                  "items": {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}},
    },
}
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {
                               "type": "object",
                               "x-kubernetes-validations": [{"rule": "self.metadata.name.size() <= 8",
                                                             "fieldPath": ".metadata.name",
                                                             "message": "at most 8 characters"}],
                               "properties": {
                                   "metadata": {"type": "object", "properties": {
                                       "name": {"type": "string", "maxLength": 253},
                                       "generateName": {"type": "string", "maxLength": 253}}},
                                   "spec": SPEC,
                                   "status": {"type": "object", "properties": {"phase": {
                                       "type": "string", "enum": ["Up", "Down"]}}}}}}}]},
}


def widget(name: str = "w", **spec) -> dict:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": 1, **spec}}


@pytest.fixture
def server():
    srv = EmulatorServer(crds=[CRD])
    yield srv


def refused(fn) -> ApiError:
    with pytest.raises(ApiError) as raised:
        fn()
    assert raised.value.code == 422 and raised.value.reason == "Invalid"
    return raised.value


def causes(error: ApiError) -> list[tuple[str, str, str]]:
    return [(c["field"], c["reason"], c["message"]) for c in error.details["causes"]]


@pytest.mark.parametrize(("spec", "expected"), [
    # CEL refuses, naming the rule's fieldPath and reason
    ({"mode": "Fixed"}, [("spec.limit", "FieldValueRequired", "Required value: mode Fixed needs limit")]),
    # a bound error does not block CEL: both are reported
    ({"size": 0, "mode": "Fixed"}, [
        ("spec.size", "FieldValueInvalid", "Invalid value: 0: spec.size in body should be greater than or equal to 1"),
        ("spec.limit", "FieldValueRequired", "Required value: mode Fixed needs limit")]),
    # blocking errors (enum, type, required, too long) skip CEL, and say so
    ({"mode": "Turbo"}, [
        ("spec.mode", "FieldValueNotSupported", 'Unsupported value: "Turbo": supported values: "Auto", "Fixed"'),
        ("<nil>", "FieldValueInvalid", f'Invalid value: "null": {SKIPPED_CEL_MESSAGE}')]),
    ({"size": "big", "mode": "Fixed"}, [
        ("spec.size", "FieldValueTypeInvalid",
         'Invalid value: "string": spec.size in body must be of type integer: "string"'),
        ("<nil>", "FieldValueInvalid", f'Invalid value: "null": {SKIPPED_CEL_MESSAGE}')]),
    ({"label": "toolong", "mode": "Fixed"}, [
        ("spec.label", "FieldValueTooLong", "Too long: may not be longer than 5"),
        ("<nil>", "FieldValueInvalid", f'Invalid value: "null": {SKIPPED_CEL_MESSAGE}')]),
    # list-type map keys must be unique
    ({"items": [{"key": "a"}, {"key": "a"}]}, [
        ("spec.items[1]", "FieldValueDuplicate", 'Duplicate value: map[string]interface {}{"key":"a"}')]),
])
def test_create_is_refused_with_the_causes_a_real_server_gives(server, spec, expected):
    error = refused(lambda: server.create("widgets", widget(**spec), namespace="default"))
    assert causes(error) == expected
    assert server.get("widgets", "default", "w") is None


def test_required_fields_are_reported_and_block_cel(server):
    body = widget(mode="Fixed")
    del body["spec"]["size"]
    error = refused(lambda: server.create("widgets", body, namespace="default"))
    assert causes(error)[0] == ("spec.size", "FieldValueRequired", "Required value")
    assert SKIPPED_CEL_MESSAGE in error.message


def test_root_rules_check_the_name_after_it_is_generated(server):
    error = refused(lambda: server.create("widgets", widget(name="too-long-1"), namespace="default"))
    assert causes(error) == [("metadata.name", "FieldValueInvalid", 'Invalid value: "object": at most 8 characters')]
    generated = {**widget(), "metadata": {"generateName": "w-"}}
    assert server.create("widgets", generated, namespace="default")["metadata"]["name"].startswith("w-")


def test_dry_run_is_validated_and_stores_nothing(server):
    rt = server.call(lambda e: e.resource_type("widgets"))
    error = refused(lambda: server.call(lambda e: e.create_object(rt, "default", widget(mode="Fixed"), dry_run=True)))
    assert "spec.limit: Required value: mode Fixed needs limit" in error.message
    server.call(lambda e: e.create_object(rt, "default", widget(), dry_run=True))
    assert server.get("widgets", "default", "w") is None


def test_updates_patches_and_status_writes_are_validated(server):
    server.create("widgets", widget(frozen="a"), namespace="default")
    # transition rule: runs on update only
    error = refused(lambda: server.patch("widgets", "default", "w", {"spec": {"frozen": "b"}}))
    assert causes(error) == [("spec.frozen", "FieldValueInvalid", 'Invalid value: "object": frozen is immutable')]
    stored = server.get("widgets", "default", "w")
    stored["spec"]["mode"] = "Fixed"
    error = refused(lambda: server.replace("widgets", "default", "w", stored))
    assert "spec.limit: Required value" in error.message
    error = refused(lambda: server.patch("widgets", "default", "w", [{"op": "replace", "path": "/spec/size",
                                                                     "value": 11}], patch_type="json"))
    assert "spec.size in body should be less than or equal to 10" in error.message
    error = refused(lambda: server.patch_status("widgets", "default", "w", {"phase": "Sideways"}))
    assert causes(error)[0] == ("status.phase", "FieldValueNotSupported",
                                'Unsupported value: "Sideways": supported values: "Up", "Down"')
    assert server.patch_status("widgets", "default", "w", {"phase": "Up"})["status"] == {"phase": "Up"}


def test_unchanged_invalid_values_are_ratcheted_on_update(server):
    server.call(lambda e: configure(e, "none"))
    server.create("widgets", widget(mode="Fixed", size=0), namespace="default")  # stored before the rules applied
    server.call(lambda e: configure(e, "full"))
    # a status write and a label change pass: the invalid spec did not change
    server.patch_status("widgets", "default", "w", {"phase": "Up"})
    server.patch("widgets", "default", "w", {"metadata": {"labels": {"a": "b"}}})
    # any change to spec: the rule on spec runs again (the node changed); size is still ratcheted
    error = refused(lambda: server.patch("widgets", "default", "w", {"spec": {"frozen": "x"}}))
    assert [c[0] for c in causes(error)] == ["spec.limit"]
    error = refused(lambda: server.patch("widgets", "default", "w", {"spec": {"size": -1, "limit": 5}}))
    assert [c[0] for c in causes(error)] == ["spec.size"]


@pytest.mark.parametrize(("mode", "spec", "admitted"), [
    ("full", {"mode": "Fixed"}, False),
    ("schema", {"mode": "Fixed"}, True),  # a server without CEL
    ("schema", {"mode": "Turbo"}, False),
    ("none", {"mode": "Turbo"}, True),  # no validation at all
])
def test_validation_can_be_switched_to_schema_only_or_off(mode, spec, admitted):
    srv = EmulatorServer(crds=[CRD], validation=mode)
    if admitted:
        assert srv.create("widgets", widget(**spec), namespace="default")["spec"]["mode"] == spec["mode"]
    else:
        refused(lambda: srv.create("widgets", widget(**spec), namespace="default"))


def test_other_admission_hooks_survive_a_switch(server):
    seen: list[str] = []
    server.call(lambda e: e.admission.append(lambda rt, obj, old: seen.append(rt.plural)))
    server.call(lambda e: configure(e, "schema"))
    server.create("widgets", widget(mode="Fixed"), namespace="default")
    assert seen == ["widgets"]
    with pytest.raises(ValueError, match="unknown validation mode"):
        server.call(lambda e: configure(e, "strict"))  # type: ignore[arg-type]


def test_the_crd_defaults_apply_before_validation(server):
    created = server.create("widgets", copy.deepcopy(widget()), namespace="default")
    assert created["spec"]["mode"] == "Auto"
