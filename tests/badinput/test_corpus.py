"""The corpus of invalid manifests (tests/badinput/corpus/*.yaml), through every layer that may refuse them.

* With the emulator's default admission (the CRD's schema, then its CEL rules, as a real server), each is
  refused at admission, naming the field the corpus header names (what a real server names).
* With the schema alone (an API server that does not evaluate CEL), exactly the CEL-only cases are admitted.
* With the schema alone or no validation at all, whatever is admitted reaches the real operator, which fails
  the job (phase Failed, condition Invalid naming the field), creates no pod, no Service and no RBAC for it,
  and keeps running: a valid job still runs after.
"""

from __future__ import annotations

import pytest
from badinput_support import corpus, invalid_condition, post, set_admission

from etj_operator import contract as c
from etj_operator.runner import OperatorThread

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

CASES = corpus()
#: Refused by the server whatever the CRD says (object names are checked by the API server itself).
SERVER_REFUSES = {"name-unicode", "name-254-chars"}
#: Only the schema sees these: pruning drops the unknown field when fieldValidation is not Strict.
SCHEMA_ONLY = {"unknown-field"}
#: Refused by the CRD's CEL rules alone (x-kubernetes-validations): a server without CEL admits them.
CEL_ONLY = {"trainer-missing", "containers-repeat", "fixed-without-limit", "limit-without-fixed", "auto-with-fixed",
            "carbon-two-sources", "energy-fraction-without-budget", "stage-two-triggers", "stage-two-actions",
            "elastic-min-above-max", "elastic-replicas-outside", "name-52-chars", "name-63-chars",
            "containers-duplicate-names", "name-digit-first", "name-with-dot", "service-account-foreign"}


def slug(case):
    return case.id.split("-", 1)[1]


def test_the_corpus_covers_every_kind_of_bad_input():
    slugs = {slug(x) for x in CASES}
    assert len(CASES) >= 40
    for needed in ("replicas-string", "replicas-negative", "power-mode-unknown", "trainer-missing",
                   "fixed-without-limit", "auto-with-fixed", "energy-fraction-without-budget", "replicas-huge",
                   "name-unicode", "name-63-chars", "unknown-field", "containers-duplicate-names",
                   "name-digit-first", "service-account-foreign"):
        assert needed in slugs


@pytest.fixture
def server():
    with rbac_server() as srv:  # RBAC on: the operator runs as the chart's ServiceAccount
        yield srv


@pytest.mark.parametrize("case", CASES, ids=lambda x: x.id)
def test_full_validation_refuses_with_the_field_path(server, case):
    # no set-up: the emulator validates as a real server does by default
    answer = post(server, case.manifest)
    assert answer.code in (400, 422), (answer.code, answer.text)
    assert case.field in answer.text, answer.text
    assert server.get(c.PLURAL, NS, case.name) is None
    if slug(case) in CEL_ONLY:
        # refused by a CEL rule: its field error names the rule's node (value "object") or its reason
        causes = answer.body["details"]["causes"]
        assert [x for x in causes if x["field"].startswith(case.field) and x["message"].startswith(
            ('Invalid value: "object": ', "Required value: ", "Forbidden: "))], causes


def test_without_cel_exactly_the_cel_only_cases_are_admitted(server):
    set_admission(server, "schema")
    admitted = set()
    for case in CASES:
        answer = post(server, case.manifest)
        if answer.code == 201:
            admitted.add(slug(case))
        else:
            assert case.field in answer.text, (case.id, answer.text)
            assert "some validation rules were not checked" not in answer.text, answer.text
    assert admitted == CEL_ONLY


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["schema", "none"])
def test_the_operator_fails_what_admission_lets_through(server, mode, tmp_path, monkeypatch):
    set_admission(server, mode)
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
    monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("ETJ_METRICS_PORT", "0")
    cluster = Cluster(server)
    operator = OperatorThread(quiet=True).start()
    try:
        admitted = []
        for case in CASES:
            answer = post(server, case.manifest)
            if answer.code == 201:
                admitted.append(case)
            else:
                assert answer.code in (400, 422), (case.id, answer.code, answer.text)
                assert case.field in answer.text, (case.id, answer.text)
        admitted_slugs = {slug(x) for x in admitted}
        assert {"name-52-chars", "name-63-chars", "name-digit-first", "trainer-missing", "fixed-without-limit",
                "containers-duplicate-names"} <= admitted_slugs
        if mode == "schema":
            assert admitted_slugs == CEL_ONLY
        assert not admitted_slugs & (SERVER_REFUSES | SCHEMA_ONLY)
        if mode == "none":
            assert admitted_slugs == {slug(x) for x in CASES} - SERVER_REFUSES - SCHEMA_ONLY
        for case in admitted:
            invalid = wait_until(lambda case=case: invalid_condition(server, case.name), 20, f"{case.id} Invalid")
            assert case.field in invalid["message"], (case.id, invalid["message"])
        for case in admitted:
            assert cluster.pods(case.name) == [], case.id
            assert server.get("services", NS, case.name) is None, case.id
            assert server.get("roles", NS, f"{case.name}-etj") is None, case.id
        # still healthy: a valid job runs afterwards
        body = job_manifest("after-the-corpus", replicas=2)
        del body["metadata"]["uid"], body["metadata"]["generation"]
        assert post(server, body).code == 201
        cluster.wait_pods("after-the-corpus", 2)
        cluster.set_phase("after-the-corpus", "Running")
        cluster.wait_phase("after-the-corpus", "Running")
        assert operator.error is None
    finally:
        operator.stop()
    assert operator.error is None
