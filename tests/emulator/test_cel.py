"""CEL rules (emulator/cel.py): compilation against the schema, evaluation, messages, paths, ratcheting."""

from __future__ import annotations

import re

import pytest

from etj_operator.sandbox.emulator.cel import (
    FieldPathError,
    RuleValidator,
    compile_rules,
    escape_property,
    normalize_field_path,
    render_path,
)

POWER = {
    "type": "object",
    "properties": {
        "mode": {"type": "string"},
        "limitWatts": {"type": "integer"},
        "eta": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "x-name": {"type": "string"},
        "if": {"type": "string"},
    },
}


def node(*rules: dict) -> dict:
    return {**POWER, "x-kubernetes-validations": list(rules)}


def errors(schema: dict, value, old=None, *, root: bool = False) -> list[str]:
    return [str(c) for c in RuleValidator(schema, root=root).validate(value, old)]


# ----- compilation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "expected"), [
    ("self.mode == 'Fixed'", ""),
    ("self.eta < 1", ""),  # cross-type numeric comparisons are enabled in Kubernetes
    ("self.limitWatts >= self.eta", ""),
    ("self.tags.all(t, t.size() < 10)", ""),
    ("self.labels.exists(k, self.labels[k] == 'x')", ""),
    ("self.x__dash__name == 'a' && self.__if__ == 'b'", ""),  # escaped property names
    ("self.mode.lowerAscii() == 'fixed'", ""),  # the strings extension
    ("cel.bind(m, self.mode, m == 'Auto')", ""),  # cel.bind
    ("self.nope == 1", "undefined field 'nope'"),
    ("self.eta + 1 > 2.0", "found no matching overload for '_+_' applied to '(double, int)'"),
    ("self.eta == 1", "found no matching overload for '_==_' applied to '(double, int)'"),
    ("self.mode", "cel expression must evaluate to a bool"),
    ("self.mode ==", "Syntax error"),
])
def test_rules_compile_against_the_schema(rule, expected):
    [compiled] = compile_rules(node({"rule": rule}))
    if expected:
        assert expected in compiled.error
        assert compiled.program is None
    else:
        assert compiled.error == ""
        assert compiled.program is not None


def test_compile_errors_point_into_the_rule_itself():
    [compiled] = compile_rules(node({"rule": "oldSelf.nope == 1", "optionalOldSelf": True}))
    # the column refers to the rule as written, not to the wrapper that makes oldSelf optional
    assert "ERROR: <input>:1:" in compiled.error and "undefined field 'nope'" in compiled.error
    assert "\n | oldSelf.nope == 1" in compiled.error


def test_root_rules_see_only_name_and_generate_name_of_metadata():
    root = {"type": "object", "properties": {"spec": {"type": "object"}}}
    ok, bad = compile_rules({**root, "x-kubernetes-validations": [
        {"rule": "self.metadata.name.size() < 10 && self.kind == 'X'"},
        {"rule": "has(self.metadata.labels)"},
    ]}, root=True)
    assert ok.error == ""
    assert "undefined field 'labels'" in bad.error


@pytest.mark.parametrize(("expression", "error"), [
    ("'limit is ' + string(self.limitWatts)", ""),
    ("self.limitWatts", "must evaluate to a string"),
])
def test_message_expressions_must_be_strings(expression, error):
    [compiled] = compile_rules(node({"rule": "true", "messageExpression": expression}))
    assert (error in compiled.message_error) if error else compiled.message_error == ""


# ----- evaluation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "value", "expected"), [
    ({"rule": "self.mode != 'Fixed' || has(self.limitWatts)", "message": "Fixed needs limitWatts"},
     {"mode": "Fixed"}, ['<nil>: Invalid value: "object": Fixed needs limitWatts']),
    ({"rule": "self.mode != 'Fixed' || has(self.limitWatts)"}, {"mode": "Fixed"},
     ["<nil>: Invalid value: \"object\": failed rule: self.mode != 'Fixed' || has(self.limitWatts)"]),
    ({"rule": "self.mode != 'Fixed' || has(self.limitWatts)", "message": "m"}, {"mode": "Fixed", "limitWatts": 3},
     []),
    # reading an absent field is an error, which the rule's message follows
    ({"rule": "self.mode != 'Fixed' || has(self.limitWatts)", "message": "Fixed needs limitWatts"}, {},
     ['<nil>: Invalid value: "object": no such key: mode evaluating rule: Fixed needs limitWatts']),
    # CEL's commutative || : an error on one side is absorbed by true on the other
    ({"rule": "self.mode == 'Fixed' || has(self.limitWatts)"}, {"limitWatts": 3}, []),
    # number is a double even when the JSON has an integer
    ({"rule": "self.eta == 1.0"}, {"eta": 1}, []),
    ({"rule": "self.limitWatts * 2 < 100", "message": "m"}, {"limitWatts": 9223372036854775807},
     ['<nil>: Invalid value: "object": integer overflow evaluating rule: m']),
    ({"rule": "self.tags[3] == 'a'", "message": "m"}, {"tags": ["a"]},
     ['<nil>: Invalid value: "object": index out of bounds: 3 evaluating rule: m']),
    ({"rule": "self.x__dash__name == 'ok'", "message": "m"}, {"x-name": "no"}, ['<nil>: Invalid value: "object": m']),
])
def test_rules_evaluate_as_kubernetes_does(rule, value, expected):
    assert errors(node(rule), value) == expected


@pytest.mark.parametrize(("rule", "expected"), [
    ({"rule": "has(self.limitWatts)", "message": "needs it", "fieldPath": ".limitWatts"},
     "limitWatts: Invalid value: \"object\": needs it"),
    ({"rule": "has(self.limitWatts)", "message": "needs it", "fieldPath": ".limitWatts",
      "reason": "FieldValueRequired"},
     "limitWatts: Required value: needs it"),
    ({"rule": "has(self.limitWatts)", "message": "no", "fieldPath": ".labels['a.b']", "reason": "FieldValueForbidden"},
     "labels[a.b]: Forbidden: no"),
    ({"rule": "has(self.limitWatts)", "message": "dup", "reason": "FieldValueDuplicate"},
     '<nil>: Duplicate value: "object"'),
    ({"rule": "has(self.limitWatts)", "message": "static", "messageExpression": "'mode is ' + self.mode"},
     '<nil>: Invalid value: "object": mode is Auto'),
    # a messageExpression that fails falls back to the message
    ({"rule": "has(self.limitWatts)", "message": "static", "messageExpression": "'eta ' + string(self.eta)"},
     '<nil>: Invalid value: "object": static'),
])
def test_field_path_reason_and_message(rule, expected):
    assert errors(node(rule), {"mode": "Auto"}) == [expected]


def test_nested_rules_name_their_path_and_skip_null():
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"power": node({"rule": "self.mode == 'A'", "message": "bad"}),
                                                  "list": {"type": "array", "items": node({"rule": "false",
                                                                                           "message": "item"})}}}}}
    got = errors(schema, {"spec": {"power": {"mode": "B"}, "list": [{"mode": "A"}, {"mode": "B"}]}})
    assert got == ['spec.power: Invalid value: "object": bad', 'spec.list[0]: Invalid value: "object": item',
                   'spec.list[1]: Invalid value: "object": item']
    assert errors(schema, {"spec": {"power": None}}) == []


# ----- transition rules and ratcheting --------------------------------------------------------------------

IMMUTABLE = node({"rule": "self.mode == oldSelf.mode", "message": "mode is immutable", "fieldPath": ".mode"})


@pytest.mark.parametrize(("value", "old", "expected"), [
    ({"mode": "A"}, None, []),  # create: a transition rule does not run
    ({"mode": "A"}, {"mode": "A"}, []),
    ({"mode": "B"}, {"mode": "A"}, ['mode: Invalid value: "object": mode is immutable']),
])
def test_transition_rules_run_only_with_an_old_value(value, old, expected):
    assert errors(IMMUTABLE, value, old) == expected


@pytest.mark.parametrize(("value", "old", "expected"), [
    ({"mode": "B"}, None, ['<nil>: Invalid value: "object": set once']),
    ({"mode": "A"}, None, []),
    ({"mode": "B"}, {"mode": "B"}, []),
    ({"mode": "C"}, {"mode": "B"}, ['<nil>: Invalid value: "object": set once']),
])
def test_optional_old_self_runs_on_create_too(value, old, expected):
    schema = node({"rule": "oldSelf.hasValue() ? self.mode == oldSelf.value().mode : self.mode == 'A'",
                   "optionalOldSelf": True, "message": "set once"})
    assert errors(schema, value, old) == expected


def test_unchanged_values_are_ratcheted_but_changed_ones_are_not():
    schema = {"type": "object", "properties": {
        "a": node({"rule": "self.mode == 'ok'", "message": "a"}),
        "b": node({"rule": "self.mode == 'ok'", "message": "b"}),
    }}
    old = {"a": {"mode": "bad"}, "b": {"mode": "bad"}}
    assert errors(schema, {"a": {"mode": "bad"}, "b": {"mode": "worse"}}, old) == ['b: Invalid value: "object": b']
    assert RuleValidator(schema).validate(old, old, ratcheting=False) != []


def test_map_list_items_correlate_with_their_old_item_by_key():
    schema = {"type": "object", "properties": {"stages": {
        "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
                  "x-kubernetes-validations": [{"rule": "self.size >= oldSelf.size", "message": "no shrinking"}]},
    }}}
    old = {"stages": [{"name": "a", "size": 5}, {"name": "b", "size": 5}]}
    new = {"stages": [{"name": "b", "size": 4}, {"name": "a", "size": 6}, {"name": "c", "size": 1}]}
    assert errors(schema, new, old) == ['stages[0]: Invalid value: "object": no shrinking']


# ----- names and paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "escaped"), [
    ("mode", "mode"), ("x-name", "x__dash__name"), ("a.b", "a__dot__b"), ("a/b", "a__slash__b"),
    ("a__b", "a__underscores__b"), ("namespace", "__namespace__"), ("a b", None), ("1a", None),
])
def test_property_names_are_escaped_as_kubernetes_escapes_them(name, escaped):
    assert escape_property(name) == escaped


@pytest.mark.parametrize(("path", "rendered", "error"), [
    (".limitWatts", "limitWatts", ""),
    (".labels.foo", "labels[foo]", ""),
    ("['x-name']", "x-name", ""),
    (".nope", "", "does not refer to a valid field"),
    (".tags[0]", "", "expected single quoted string but got 0"),
    (".", "", "unexpected end of JSON path"),
    ("limitWatts", "", "expected [ or . but got: limitWatts"),
])
def test_field_paths_are_checked_against_the_schema(path, rendered, error):
    if error:
        with pytest.raises(FieldPathError, match=re.escape(error)):
            normalize_field_path(path, POWER)
    else:
        assert render_path(normalize_field_path(path, POWER)) == rendered


def test_date_time_strings_are_timestamps_anywhere_in_the_object():
    """A root rule sees the whole object, status times included: they must reach CEL as timestamps."""
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object"},
            "status": {"type": "object", "properties": {
                "startTime": {"type": "string", "format": "date-time"},
                "conditions": {"type": "array", "items": {"type": "object", "properties": {
                    "lastTransitionTime": {"type": "string", "format": "date-time"}}}}}},
        },
        "x-kubernetes-validations": [
            {"rule": "self.metadata.name.size() <= 5", "message": "short names"},
            {"rule": "!has(self.status.startTime) || self.status.startTime < timestamp('2100-01-01T00:00:00Z')",
             "message": "starts before 2100"},
        ],
    }
    status = {"startTime": "2026-12-01T11:53:00Z", "conditions": [{"lastTransitionTime": "2026-12-01T11:53:00Z"}]}
    assert errors(schema, {"metadata": {"name": "ok"}, "status": status}, root=True) == []
    late = {**status, "startTime": "2101-01-01T00:00:00Z"}
    assert [e for e in errors(schema, {"metadata": {"name": "ok"}, "status": late}, root=True)] == [
        '<nil>: Invalid value: "object": starts before 2100']
