"""The harness's access is its own job and its own report: the per-job Role, evaluated as Kubernetes' RBAC
authorizer does.

A small evaluator of Role rules (apiGroups, resources with subresources, verbs, resourceNames; no
wildcards) runs a list of requests the harness could make: only get/watch of its own job, get of its own
report and patch of its own report's status are allowed; reading or writing anything else is denied, including
the job's status (phase, restarts, energy, control are the operator's), the job's spec, other jobs and their
reports, pods, secrets and any list (resourceNames cannot restrict a list or a create). The same table goes
through the emulator's RBAC authorizer; tests/security/test_trust_boundary.py sends the real requests.
"""

from __future__ import annotations

import json
import urllib.request
from typing import NamedTuple

import pytest

from etj_operator import builders
from etj_operator import contract as c

from jobs import job_manifest


class Request(NamedTuple):
    verb: str
    group: str
    resource: str  # plural or plural/subresource
    name: str | None  # None: a list, a collection watch or a create
    namespace: str = "ml"


def allows(role, request: Request) -> bool:
    if request.namespace != role["metadata"]["namespace"]:
        return False
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        names = rule.get("resourceNames")
        if (
            request.group in rule["apiGroups"]
            and request.resource in rule["resources"]
            and request.verb in rule["verbs"]
            and (not names or (request.name is not None and request.name in names))
        ):
            return True
    return False


JOB = "digits"
REPORTS = c.REPORT_PLURAL
ALLOWED = [
    Request("get", c.GROUP, c.PLURAL, JOB),
    Request("watch", c.GROUP, c.PLURAL, JOB),
    Request("get", c.GROUP, REPORTS, JOB),
    Request("patch", c.GROUP, f"{REPORTS}/status", JOB),
]
DENIED = [
    Request("list", c.GROUP, c.PLURAL, None),
    Request("watch", c.GROUP, c.PLURAL, None),
    Request("get", c.GROUP, c.PLURAL, "someone-elses-job"),
    Request("get", c.GROUP, f"{c.PLURAL}/status", JOB),  # the job's status: the operator's alone
    Request("patch", c.GROUP, f"{c.PLURAL}/status", JOB),  # phase, restarts, energy, control, policy...
    Request("update", c.GROUP, f"{c.PLURAL}/status", JOB),
    Request("patch", c.GROUP, f"{c.PLURAL}/status", "someone-elses-job"),
    Request("get", c.GROUP, c.PLURAL, JOB, namespace="other-team"),
    Request("patch", c.GROUP, f"{REPORTS}/status", JOB, namespace="other-team"),
    Request("patch", c.GROUP, c.PLURAL, JOB),  # its own spec
    Request("update", c.GROUP, c.PLURAL, JOB),
    Request("delete", c.GROUP, c.PLURAL, JOB),
    Request("create", c.GROUP, c.PLURAL, None),
    Request("patch", c.GROUP, REPORTS, JOB),  # its report's metadata (ownerReferences, labels)
    Request("update", c.GROUP, REPORTS, JOB),
    Request("update", c.GROUP, f"{REPORTS}/status", JOB),
    Request("delete", c.GROUP, REPORTS, JOB),
    Request("create", c.GROUP, REPORTS, None),
    Request("list", c.GROUP, REPORTS, None),
    Request("watch", c.GROUP, REPORTS, None),
    Request("get", c.GROUP, REPORTS, "someone-elses-job"),
    Request("patch", c.GROUP, f"{REPORTS}/status", "someone-elses-job"),
    Request("get", "", "pods", f"{JOB}-worker-0"),
    Request("delete", "", "pods", f"{JOB}-worker-1"),
    Request("create", "", "pods", None),
    Request("create", "", "pods/exec", f"{JOB}-worker-1"),
    Request("get", "", "secrets", "anything"),
    Request("list", "", "secrets", None),
    Request("get", "", "configmaps", JOB),
    Request("get", "", "serviceaccounts", f"{JOB}-etj"),
    Request("create", "", "serviceaccounts/token", f"{JOB}-etj"),
    Request("patch", "rbac.authorization.k8s.io", "roles", f"{JOB}-etj"),
    Request("create", "rbac.authorization.k8s.io", "rolebindings", None),
    Request("get", "", "nodes", "gpu-node-a"),
    Request("create", "", "events", None),
]


@pytest.fixture(scope="module")
def role():
    return builders.build_role(builders.JobRef.from_body(job_manifest(JOB, namespace="ml")))


@pytest.mark.parametrize("request_", ALLOWED, ids=lambda r: f"{r.verb}-{r.resource}-{r.name}")
def test_the_harness_may_read_its_job_and_report_and_write_its_reports_status(role, request_):
    assert allows(role, request_)


@pytest.mark.parametrize("request_", DENIED, ids=lambda r: f"{r.verb}-{r.resource}-{r.name}-{r.namespace}")
def test_the_harness_may_do_nothing_else(role, request_):
    assert not allows(role, request_)


def test_the_binding_gives_the_role_to_the_jobs_own_service_account_only():
    job = builders.JobRef.from_body(job_manifest(JOB, namespace="ml"))
    binding = builders.build_role_binding(job, builders.service_account_name(job))
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{JOB}-etj"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{JOB}-etj", "namespace": "ml"}]
    assert binding["metadata"]["namespace"] == "ml"  # a RoleBinding: never cluster-wide


@pytest.fixture(scope="module")
def emulated_harness():
    """The job's Role and RoleBinding in an emulator enforcing RBAC, and the harness's own token."""
    from etj_operator.sandbox.emulator import EmulatorServer

    with EmulatorServer(rbac=True) as server:
        job = builders.JobRef.from_body(job_manifest(JOB, namespace="ml"))
        server.create("serviceaccounts", builders.build_service_account(job))
        server.create("roles", builders.build_role(job))
        server.create("rolebindings", builders.build_role_binding(job, builders.service_account_name(job)))
        yield server, server.service_account_token("ml", builders.service_account_name(job))


def _case_id(value: object) -> str:
    return f"{value.verb}-{value.resource}-{value.name}-{value.namespace}" if isinstance(value, Request) else ""


@pytest.mark.parametrize(("request_", "allowed"), [(r, True) for r in ALLOWED] + [(r, False) for r in DENIED],
                         ids=_case_id)
def test_the_emulators_rbac_authorizer_agrees(emulated_harness, request_, allowed):
    """The same table through the emulator's RBAC authorizer, as a self review made with the harness's token."""
    server, token = emulated_harness
    resource, _, subresource = request_.resource.partition("/")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {
        "resourceAttributes": {"verb": request_.verb, "group": request_.group, "resource": resource,
                               "subresource": subresource, "name": request_.name or "",
                               "namespace": request_.namespace}}}
    http = urllib.request.Request(f"{server.url}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                  data=json.dumps(review).encode(), method="POST",
                                  headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(http, timeout=10) as response:
        assert json.loads(response.read())["status"]["allowed"] is allowed
