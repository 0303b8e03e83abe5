"""The CRD checks a real API server makes (emulator/crdcheck.py), through the emulator's CRD create path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from etj_operator.sandbox.emulator import ApiError, EmulatorServer
from etj_operator.sandbox.emulator.crdcheck import crd_causes

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "crds" / "efficienttrainingjobs.yaml"
CHART_COPY = ROOT / "charts" / "efficient-training-operator" / "crds" / "efficienttrainingjobs.yaml"
REPORT = ROOT / "crds" / "efficienttrainingjobreports.yaml"
REPORT_CHART_COPY = ROOT / "charts" / "efficient-training-operator" / "crds" / "efficienttrainingjobreports.yaml"
SCHEMA_PATH = "spec.validation.openAPIV3Schema"
POWER_PATH = f"{SCHEMA_PATH}.properties[spec].properties[energy].properties[power]"


def crd(spec_schema: dict, *, name: str = "widgets.example.com") -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": name},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": spec_schema}}}}]},
    }


def create(crd_body: dict) -> ApiError | None:
    server = EmulatorServer()
    try:
        server.load_crd(crd_body)
    except ApiError as e:
        return e
    return None


@pytest.mark.parametrize("path", [SHIPPED, CHART_COPY], ids=["crds", "chart"])
def test_the_shipped_crd_and_the_chart_copy_are_accepted(path):
    body = yaml.safe_load(path.read_text())
    assert crd_causes(body) == []
    with EmulatorServer(crds=[path]) as server:
        job = {"apiVersion": "efficienttraining.dev/v1alpha1", "kind": "EfficientTrainingJob",
               "metadata": {"name": "ok"}, "spec": {"template": {"spec": {"containers": [{"name": "trainer"}]}}}}
        created = server.create("efficienttrainingjobs", job, namespace="default")
        assert created["spec"]["energy"]["power"] == {"mode": "Unmanaged"}


@pytest.mark.parametrize("path", [REPORT, REPORT_CHART_COPY], ids=["crds", "chart"])
def test_the_shipped_report_crd_and_the_chart_copy_are_accepted_and_bound_the_report(path):
    body = yaml.safe_load(path.read_text())
    assert crd_causes(body) == []
    with EmulatorServer(crds=[path]) as server:
        report = {"apiVersion": "efficienttraining.dev/v1alpha1", "kind": "EfficientTrainingJobReport",
                  "metadata": {"name": "ok"}}
        assert "status" not in server.create("efficienttrainingjobreports", report, namespace="default")
        written = server.patch_status("efficienttrainingjobreports", "default", "ok",
                                      {"step": 3, "stages": [{"name": "prune", "applied": True}], "extra": "x"})
        assert written["status"] == {"step": 3, "stages": [{"name": "prune", "applied": True}]}  # pruned
        for status, field in [({"step": -1}, "status.step"), ({"gpuSource": "x" * 65}, "status.gpuSource"),
                              ({"stages": [{"name": "s"}] * 17}, "status.stages"),
                              ({"checkpoint": {"path": "/" * 4097}}, "status.checkpoint.path"),
                              ({"accuracy": 1.5}, "status.accuracy")]:
            with pytest.raises(ApiError) as refused:
                server.patch_status("efficienttrainingjobreports", "default", "ok", status)
            assert refused.value.code == 422 and field in refused.value.message
            assert "some validation rules were not checked" not in refused.value.message  # it has no CEL rules


def test_the_shipped_crds_load_from_their_folder():
    with EmulatorServer(crds=[ROOT / "crds"]) as server:
        names = {crd["metadata"]["name"] for crd in server.list("customresourcedefinitions")}
    assert names == {"efficienttrainingjobs.efficienttraining.dev", "efficienttrainingjobreports.efficienttraining.dev"}


def test_the_original_crd_with_an_empty_power_default_is_refused_as_a_real_server_refused_it():
    text = SHIPPED.read_text()
    fixed = "default:\n                        mode: Unmanaged\n"
    assert fixed in text
    broken = yaml.safe_load(text.replace(fixed, "default: {}\n"))
    error = create(broken)
    assert error is not None and error.code == 422 and error.reason == "Invalid"
    assert error.message == (
        'CustomResourceDefinition.apiextensions.k8s.io "efficienttrainingjobs.efficienttraining.dev" is invalid: '
        f'{POWER_PATH}.default: Invalid value: "object": no such key: mode evaluating rule: mode Fixed needs'
        " limitWatts (the per-GPU power limit in watts)")
    [cause] = error.details["causes"]
    assert cause["field"] == f"{POWER_PATH}.default" and cause["reason"] == "FieldValueInvalid"


OBJ = {"type": "object"}


@pytest.mark.parametrize(("spec_schema", "field", "message"), [
    ({"type": "object", "properties": {"a": {}}}, f"{SCHEMA_PATH}.properties[spec].properties[a].type",
     "Required value: must not be empty for specified object fields"),
    ({"type": "object", "properties": {"a": {"type": "array"}}},
     f"{SCHEMA_PATH}.properties[spec].properties[a].items", "Required value: must be specified"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
     f"{SCHEMA_PATH}.properties[spec].additionalProperties",
     "Forbidden: additionalProperties and properties are mutual exclusive"),
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}}},
     f"{SCHEMA_PATH}.properties[spec].properties[a].uniqueItems",
     "Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"),
    ({"type": "object", "x-kubernetes-preserve-unknown-fields": False},
     f"{SCHEMA_PATH}.properties[spec].x-kubernetes-preserve-unknown-fields", "Invalid value: false: must be true"),
    ({"type": "object", "properties": {"l": {"type": "array", "x-kubernetes-list-type": "map",
                                             "x-kubernetes-list-map-keys": ["name"], "items": {
                                                 "type": "object", "properties": {"name": {"type": "string"}}}}}},
     f"{SCHEMA_PATH}.properties[spec].properties[l].items.properties[name].default",
     "Required value: this property is in x-kubernetes-list-map-keys, so it must have a default or be a required"),
    ({"type": "object", "properties": {"l": {"type": "array", "x-kubernetes-list-map-keys": ["name"],
                                             "items": {"type": "string"}}}},
     f"{SCHEMA_PATH}.properties[spec].properties[l].x-kubernetes-list-map-keys",
     "Forbidden: must not be set if x-kubernetes-list-type is not map"),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "default": 0}}},
     f"{SCHEMA_PATH}.properties[spec].properties[n].default",
     "Invalid value: 0: <nil> in body should be greater than or equal to 1"),
    ({"type": "object", "properties": {"o": {"type": "object", "default": {"extra": 1},
                                             "properties": {"a": {"type": "string"}}}}},
     f"{SCHEMA_PATH}.properties[spec].properties[o].default", "Invalid value: object: must not have unknown fields"),
    ({"type": "object", "properties": {"o": {"type": "object", "default": {"a": "x"},
                                             "properties": {"a": {"type": "string"}},
                                             "x-kubernetes-validations": [{"rule": "self.a == 'y'",
                                                                           "message": "a must be y"}]}}},
     f"{SCHEMA_PATH}.properties[spec].properties[o].default", 'Invalid value: "object": a must be y'),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "x-kubernetes-validations": [{"rule": "self.b == 'x'"}]},
     f"{SCHEMA_PATH}.properties[spec].x-kubernetes-validations[0].rule",
     "Invalid value: \"self.b == 'x'\": compilation failed: ERROR: <input>:1:5: undefined field 'b'"),
    ({"type": "object", "properties": {"a": {"type": "number"}},
      "x-kubernetes-validations": [{"rule": "self.a + 1 > 0.0"}]},
     f"{SCHEMA_PATH}.properties[spec].x-kubernetes-validations[0].rule",
     "found no matching overload for '_+_' applied to '(double, int)'"),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "x-kubernetes-validations": [{"rule": "true", "fieldPath": ".b"}]},
     f"{SCHEMA_PATH}.properties[spec].x-kubernetes-validations[0].fieldPath",
     'Invalid value: ".b": fieldPath must be a valid path: does not refer to a valid field'),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "x-kubernetes-validations": [{"rule": "true", "reason": "Nope"}]},
     f"{SCHEMA_PATH}.properties[spec].x-kubernetes-validations[0].reason",
     'Unsupported value: "Nope": supported values: "FieldValueDuplicate", "FieldValueForbidden"'),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "x-kubernetes-validations": [{"rule": "true", "message": "two\nlines"}]},
     f"{SCHEMA_PATH}.properties[spec].x-kubernetes-validations[0].message", "message must not contain line breaks"),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "x-kubernetes-validations": [{"rule": "true", "messageExpression": "self.a.size()"}]},
     f"{SCHEMA_PATH}.properties[spec].x-kubernetes-validations[0].messageExpression",
     "messageExpression compilation failed: must evaluate to a string"),
    ({"type": "object", "properties": {"l": {"type": "array", "items": {
        "type": "object", "properties": {"a": {"type": "string"}},
        "x-kubernetes-validations": [{"rule": "self.a == oldSelf.a"}]}}}},
     f"{SCHEMA_PATH}.properties[spec].properties[l].items.x-kubernetes-validations[0].rule",
     "oldSelf cannot be used on the uncorrelatable portion of the schema"),
])
def test_a_crd_a_real_server_refuses_is_refused_with_its_kind_of_message(spec_schema, field, message):
    error = create(crd(spec_schema))
    assert error is not None and error.code == 422, spec_schema
    assert error.message.startswith('CustomResourceDefinition.apiextensions.k8s.io "widgets.example.com" is invalid:')
    causes = {c["field"]: c["message"] for c in error.details["causes"]}
    assert field in causes, causes
    assert message in causes[field]


def test_root_metadata_may_restrict_only_name_and_generate_name():
    body = crd(OBJ)
    root = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["properties"]["metadata"] = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 9}}}
    root["x-kubernetes-validations"] = [{"rule": "self.metadata.name.size() > 1", "fieldPath": ".metadata.name"}]
    assert create(copy.deepcopy(body)) is None
    root["properties"]["metadata"]["properties"]["labels"] = {"type": "object"}
    error = create(body)
    assert error is not None
    assert (f"{SCHEMA_PATH}.properties[metadata]: Forbidden: must not specify anything other than name and"
            " generateName, but metadata is implicitly specified") in error.message


def test_a_root_field_path_into_metadata_needs_metadata_name_declared():
    body = crd(OBJ)
    root = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["properties"]["metadata"] = {"type": "object"}
    root["x-kubernetes-validations"] = [{"rule": "self.metadata.name.size() > 1", "fieldPath": ".metadata.name"}]
    error = create(body)
    assert error is not None
    assert (f'{SCHEMA_PATH}.x-kubernetes-validations[0].fieldPath: Invalid value: ".metadata.name": fieldPath must'
            " be a valid path: does not refer to a valid field") in error.message


def test_the_crd_name_must_be_plural_dot_group():
    error = create(crd(OBJ, name="gadgets.example.com"))
    assert error is not None
    assert 'metadata.name: Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group' \
        in error.message


def test_versions_with_different_schemas_are_named_per_version():
    body = crd({"type": "object", "properties": {"a": {}}})
    second = copy.deepcopy(body["spec"]["versions"][0])
    second.update(name="v2", storage=False)
    second["schema"]["openAPIV3Schema"]["properties"]["spec"] = OBJ
    body["spec"]["versions"].append(second)
    error = create(body)
    assert error is not None
    fields = [c["field"] for c in error.details["causes"]]
    assert fields == ["spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[a].type"]


def test_an_update_that_breaks_the_crd_is_refused_and_the_stored_crd_kept():
    body = crd({"type": "object", "properties": {"a": {"type": "string"}}})
    with EmulatorServer() as server:
        server.load_crd(body)
        broken = copy.deepcopy(body)
        broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
            "x-kubernetes-validations"] = [{"rule": "self.nope"}]
        stored = server.get("customresourcedefinitions", None, "widgets.example.com")
        broken["metadata"] = stored["metadata"]
        with pytest.raises(ApiError) as raised:
            server.replace("customresourcedefinitions", None, "widgets.example.com", broken)
        assert raised.value.code == 422 and "undefined field 'nope'" in raised.value.message
        after = server.get("customresourcedefinitions", None, "widgets.example.com")
        assert "x-kubernetes-validations" not in after["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["spec"]
