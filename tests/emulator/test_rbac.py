"""RBAC in the emulator: rule matching, request attributes, escalation prevention, 401/403 bodies, the
self reviews behind ``kubectl auth can-i``, TokenRequest and OwnerReferencesPermissionEnforcement."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.emulator.authn import ADMIN_TOKEN, UserInfo, service_account_user
from etj_operator.sandbox.emulator.rbac import (
    Attributes,
    compact_string,
    covers,
    forbidden,
    request_attributes,
    rule_allows,
)

BOB = service_account_user("ns", "bob")
RBAC = "rbac.authorization.k8s.io"


def attrs(verb: str, resource: str = "", *, group: str = "", sub: str = "", ns: str = "", name: str = "",
          path: str = "") -> Attributes:
    if path:
        return Attributes(BOB, verb, resource_request=False, path=path)
    return Attributes(BOB, verb, group=group, resource=resource, subresource=sub, namespace=ns, name=name)


PODS_GET = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
RULE_CASES = [
    (PODS_GET, attrs("get", "pods"), True),
    (PODS_GET, attrs("list", "pods"), False),
    (PODS_GET, attrs("get", "pods", group="apps"), False),
    (PODS_GET, attrs("get", "pods", sub="log"), False),  # a subresource is its own resource
    ({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}, attrs("get", "pods", sub="log"), True),
    ({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]},
     attrs("patch", "jobs", group="x", sub="status"), True),
    ({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]}, attrs("patch", "jobs", group="x"), False),
    ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, attrs("delete", "anything", group="g", sub="s"), True),
    ({**PODS_GET, "resourceNames": ["a"]}, attrs("get", "pods", name="a"), True),
    ({**PODS_GET, "resourceNames": ["a"]}, attrs("get", "pods", name="b"), False),
    ({**PODS_GET, "resourceNames": ["a"]}, attrs("get", "pods"), False),
    ({"nonResourceURLs": ["/api", "/apis/*"], "verbs": ["get"]}, attrs("get", path="/api"), True),
    ({"nonResourceURLs": ["/api", "/apis/*"], "verbs": ["get"]}, attrs("get", path="/apis/g/v"), True),
    ({"nonResourceURLs": ["/api", "/apis/*"], "verbs": ["get"]}, attrs("get", path="/api/v1"), False),
    ({"nonResourceURLs": ["*"], "verbs": ["get"]}, attrs("post", path="/x"), False),
    (PODS_GET, attrs("get", path="/api"), False),  # resource rules never match a URL
]


@pytest.mark.parametrize(("rule", "request_", "allowed"), RULE_CASES)
def test_rule_matching_is_that_of_rule_allows(rule, request_, allowed):
    assert rule_allows(request_, rule) is allowed


ATTRIBUTE_CASES = [
    ("GET", "/api/v1/namespaces/ns/pods", {}, ("list", "", "pods", "", "ns", "")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}, ("watch", "", "pods", "", "ns", "")),
    ("GET", "/api/v1/watch/namespaces/ns/pods", {}, ("watch", "", "pods", "", "ns", "")),
    ("GET", "/apis/g/v1/namespaces/ns/jobs", {"watch": "1", "fieldSelector": "metadata.name=j"},
     ("watch", "g", "jobs", "", "ns", "j")),
    ("GET", "/api/v1/namespaces/ns/pods/p/log", {}, ("get", "", "pods", "log", "ns", "p")),
    ("POST", "/api/v1/namespaces/ns/pods", {}, ("create", "", "pods", "", "ns", "")),
    ("PUT", "/apis/g/v1/namespaces/ns/jobs/j/status", {}, ("update", "g", "jobs", "status", "ns", "j")),
    ("PATCH", "/apis/g/v1/namespaces/ns/jobs/j", {}, ("patch", "g", "jobs", "", "ns", "j")),
    ("DELETE", "/api/v1/namespaces/ns/pods/p", {}, ("delete", "", "pods", "", "ns", "p")),
    ("DELETE", "/api/v1/namespaces/ns/pods", {}, ("deletecollection", "", "pods", "", "ns", "")),
    ("GET", "/api/v1/namespaces/ns", {}, ("get", "", "namespaces", "", "ns", "ns")),  # its own namespace
    ("GET", "/api/v1/nodes", {}, ("list", "", "nodes", "", "", "")),
]


@pytest.mark.parametrize(("method", "path", "query", "expected"), ATTRIBUTE_CASES)
def test_request_attributes_are_resolved_as_request_info_does(method, path, query, expected):
    a = request_attributes(BOB, method, path, query)
    assert a.resource_request
    assert (a.verb, a.group, a.resource, a.subresource, a.namespace, a.name) == expected


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis/g/v1", "/version", "/healthz"])
def test_discovery_paths_are_non_resource_requests_with_the_method_as_verb(path):
    a = request_attributes(BOB, "GET", path, {})
    assert (a.resource_request, a.verb, a.path) == (False, "get", path)


COVER_CASES = [
    ([PODS_GET], [PODS_GET], True),
    ([PODS_GET], [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}], False),
    ([PODS_GET], [{**PODS_GET, "resourceNames": ["a"]}], True),  # a name-less rule covers any name
    ([{**PODS_GET, "resourceNames": ["a"]}], [PODS_GET], False),
    ([{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["get"]}],
     [{"apiGroups": ["g"], "resources": ["jobs/status"], "verbs": ["get"]}], True),
    ([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], [PODS_GET], True),
    ([{"nonResourceURLs": ["/api/*"], "verbs": ["get"]}], [{"nonResourceURLs": ["/api/v1"], "verbs": ["get"]}], True),
    ([], [PODS_GET], False),
]


@pytest.mark.parametrize(("owned", "wanted", "covered"), COVER_CASES)
def test_covers_is_the_policy_comparator(owned, wanted, covered):
    assert covers(owned, wanted)[0] is covered


def test_the_missing_rules_print_as_compact_strings():
    _, missing = covers([PODS_GET], [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}])
    assert [compact_string(m) for m in missing] == ['{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}']


FORBIDDEN_CASES = [
    (attrs("list", "pods", ns="ns"),
     'pods is forbidden: User "system:serviceaccount:ns:bob" cannot list resource "pods" in API group "" in the'
     ' namespace "ns"'),
    (attrs("get", "nodes", name="n1"),
     'nodes "n1" is forbidden: User "system:serviceaccount:ns:bob" cannot get resource "nodes" in API group ""'
     " at the cluster scope"),
    (attrs("patch", "jobs", group="g", sub="status", ns="ns", name="j"),
     'jobs.g "j" is forbidden: User "system:serviceaccount:ns:bob" cannot patch resource "jobs/status" in API'
     ' group "g" in the namespace "ns"'),
    (attrs("get", path="/metrics"), 'forbidden: User "system:serviceaccount:ns:bob" cannot get path "/metrics"'),
]


@pytest.mark.parametrize(("request_", "message"), FORBIDDEN_CASES)
def test_forbidden_messages_are_those_of_a_real_server(request_, message):
    error = forbidden(request_)
    assert (error.code, error.reason, error.message) == (403, "Forbidden", message)


# ----- over HTTP ---------------------------------------------------------------------------------------------


def call(server: EmulatorServer, method: str, path: str, token: str | None, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    head = {"Content-Type": "application/json", **(headers or {})}
    if token:
        head["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(server.url + path, method=method, headers=head,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
            return response.status, json.loads(data) if data.startswith(b"{") else data.decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(rbac=True, owner_references_permission_enforcement=True) as srv:
        srv.create("serviceaccounts", {"metadata": {"name": "bob"}}, namespace="ns")
        srv.create("roles", {"metadata": {"name": "writer"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "create", "delete"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
            {"apiGroups": [RBAC], "resources": ["roles", "rolebindings"], "verbs": ["create"]},
            {"apiGroups": [RBAC], "resources": ["roles"], "resourceNames": ["bindable"], "verbs": ["bind"]},
            {"apiGroups": [RBAC], "resources": ["roles"], "resourceNames": ["escalatable"], "verbs": ["escalate"]},
        ]}, namespace="ns")
        srv.create("rolebindings", {"metadata": {"name": "writer"},
                                    "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "writer"},
                                    "subjects": [{"kind": "ServiceAccount", "name": "bob", "namespace": "ns"}]},
                   namespace="ns")
        srv.create("roles", {"metadata": {"name": "bindable"}, "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}, namespace="ns")
        yield srv


@pytest.fixture(scope="module")
def bob(server):
    return server.service_account_token("ns", "bob")


def binding(name: str, role: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "bob", "namespace": "ns"}]}


def test_an_unknown_token_gets_the_real_401(server):
    assert call(server, "GET", "/api/v1/namespaces/ns/pods", "made-up") == (401, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized",
        "reason": "Unauthorized", "code": 401})


def test_a_role_allows_in_its_namespace_only(server, bob):
    assert call(server, "GET", "/api/v1/namespaces/ns/pods", bob)[0] == 200
    status, body = call(server, "GET", "/api/v1/namespaces/other/pods", bob)
    assert status == 403
    assert body["message"] == ('pods is forbidden: User "system:serviceaccount:ns:bob" cannot list resource "pods"'
                               ' in API group "" in the namespace "other"')
    assert body["details"] == {"kind": "pods"}


def test_the_admin_token_may_do_anything(server):
    assert call(server, "GET", "/api/v1/nodes", ADMIN_TOKEN)[0] == 200


@pytest.mark.parametrize(("token", "path", "status"), [
    (None, "/version", 200), (None, "/healthz", 200), (None, "/api", 403), ("bob", "/api", 200),
    ("bob", "/apis", 200), ("bob", "/metrics", 403)])
def test_the_bootstrap_policy_opens_discovery_to_the_authenticated_and_public_info_to_all(server, bob, token, path,
                                                                                         status):
    assert call(server, "GET", path, bob if token else None)[0] == status


def test_a_role_granting_what_the_writer_lacks_is_refused(server, bob):
    status, body = call(server, "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles", bob, {
        "metadata": {"name": "greedy"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    assert status == 403
    assert body["message"] == (
        'roles.rbac.authorization.k8s.io "greedy" is forbidden: user "system:serviceaccount:ns:bob" (groups=['
        '"system:serviceaccounts" "system:serviceaccounts:ns" "system:authenticated"]) is attempting to grant RBAC'
        ' permissions not currently held:\n{APIGroups:[""], Resources:["pods"], Verbs:["get"]}')


@pytest.mark.parametrize(("name", "verbs", "status"), [("held", ["list"], 201), ("escalatable", ["get"], 201)])
def test_a_role_within_the_writers_rules_or_with_escalate_is_created(server, bob, name, verbs, status):
    body = {"metadata": {"name": name}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}]}
    assert call(server, "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles", bob, body)[0] == status


def test_a_binding_to_a_role_that_does_not_exist_gets_the_roles_404(server, bob):
    status, body = call(server, "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings", bob,
                        binding("early", "not-yet"))
    assert status == 404
    assert body["message"] == 'role.rbac.authorization.k8s.io "not-yet" not found'


def test_a_binding_needs_bind_or_every_rule_of_its_role(server, bob):
    server.create("roles", {"metadata": {"name": "secret-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}, namespace="ns")
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings"
    assert call(server, "POST", path, bob, binding("to-secrets", "secret-reader"))[0] == 403
    assert call(server, "POST", path, bob, binding("to-bindable", "bindable"))[0] == 201  # bind on it
    assert call(server, "POST", path, bob, binding("to-own", "writer"))[0] == 201  # holds every rule


def test_a_binding_to_a_missing_role_adds_the_rbac_error_to_the_denial(server):
    server.create("serviceaccounts", {"metadata": {"name": "carol"}}, namespace="ns")
    server.create("rolebindings", {"metadata": {"name": "dangling"},
                                   "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "gone"},
                                   "subjects": [{"kind": "ServiceAccount", "name": "carol"}]}, namespace="ns")
    status, body = call(server, "GET", "/api/v1/namespaces/ns/pods", server.service_account_token("ns", "carol"))
    assert status == 403
    assert body["message"].endswith(': RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found')


def ssar(server: EmulatorServer, token: str, **resource: str) -> dict[str, Any]:
    status, body = call(server, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token,
                        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                         "spec": {"resourceAttributes": resource}})
    assert status == 201
    return body["status"]


@pytest.mark.parametrize(("resource", "allowed"), [
    ({"verb": "list", "resource": "pods", "namespace": "ns"}, True),
    ({"verb": "get", "resource": "pods", "namespace": "ns"}, False),
    ({"verb": "list", "resource": "pods", "namespace": "other"}, False),
    ({"verb": "bind", "group": RBAC, "resource": "roles", "name": "bindable", "namespace": "ns"}, True),
])
def test_self_subject_access_reviews_answer_for_the_caller(server, bob, resource, allowed):
    answer = ssar(server, bob, **resource)
    assert answer["allowed"] is allowed
    if allowed:  # the first binding (by name) that allows it; "to-own" also binds bob to the writer Role
        assert re.fullmatch(r'RBAC: allowed by RoleBinding "[a-z-]+/ns" of Role "(writer|bindable)" to'
                            r' ServiceAccount "ns/bob"', answer["reason"]), answer["reason"]


def test_discovery_lists_the_self_reviews(server, bob):
    status, body = call(server, "GET", "/apis/authorization.k8s.io/v1", bob)
    assert status == 200
    listed = {r["name"]: r["verbs"] for r in body["resources"]}
    assert listed["selfsubjectaccessreviews"] == ["create"]


def test_token_requests_issue_tokens_of_existing_service_accounts(server):
    path = "/api/v1/namespaces/ns/serviceaccounts/bob/token"
    status, body = call(server, "POST", path, ADMIN_TOKEN, {"spec": {"expirationSeconds": 600}})
    assert (status, body["kind"], body["spec"]["expirationSeconds"]) == (201, "TokenRequest", 600)
    token = body["status"]["token"]
    assert ssar(server, token, verb="list", resource="pods", namespace="ns")["allowed"] is True
    assert call(server, "POST", "/api/v1/namespaces/ns/serviceaccounts/nobody/token", ADMIN_TOKEN, {})[0] == 404


def test_impersonation_needs_the_impersonate_verb(server, bob):
    headers = {"Impersonate-User": "system:serviceaccount:ns:bob"}
    assert call(server, "GET", "/api/v1/namespaces/ns/pods", ADMIN_TOKEN, headers=headers)[0] == 200
    assert call(server, "GET", "/api/v1/nodes", ADMIN_TOKEN, headers=headers)[0] == 403  # acting as bob
    status, body = call(server, "GET", "/api/v1/namespaces/ns/pods", bob, headers={"Impersonate-User": "admin"})
    assert status == 403
    assert "cannot impersonate resource \"users\"" in body["message"]


POD = {"metadata": {"name": "child", "ownerReferences": [
    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u", "controller": True,
     "blockOwnerDeletion": True}]}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def test_owner_references_need_delete_on_the_object_and_update_on_the_owners_finalizers(server, bob):
    path = "/api/v1/namespaces/ns/configmaps"
    child = {"metadata": {"name": "cm-child", "ownerReferences": POD["metadata"]["ownerReferences"]}}
    status, body = call(server, "POST", path, bob, child)  # bob may create configmaps, not delete them
    assert status == 403
    assert body["message"] == ('configmaps "cm-child" is forbidden: cannot set an ownerRef on a resource you can\'t'
                               " delete: , <nil>")
    status, body = call(server, "POST", "/api/v1/namespaces/ns/pods", bob, POD)  # may delete pods: finalizers?
    assert status == 403
    assert body["message"] == ('pods "child" is forbidden: cannot set blockOwnerDeletion if an ownerReference'
                               " refers to a resource you can't set finalizers on: , <nil>")
    plain = {**POD, "metadata": {"name": "child", "ownerReferences": [
        {**POD["metadata"]["ownerReferences"][0], "blockOwnerDeletion": False}]}}
    assert call(server, "POST", "/api/v1/namespaces/ns/pods", bob, plain)[0] == 201


def test_rbac_is_off_unless_asked_for():
    with EmulatorServer() as srv:
        assert call(srv, "GET", "/api/v1/nodes", "any-token")[0] == 200
        assert srv.access.enabled is False
        assert UserInfo("x").privileged is False
