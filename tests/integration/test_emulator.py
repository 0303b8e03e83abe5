"""The API emulator behaves like a real API server for the kubernetes client, kopf and kubectl.

Every behaviour is driven through a real client; the in-process accessors only set the scene (or play the
kubelet), as they would in the operator's tests.
"""

import json
import re
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from etj_operator.sandbox.emulator import (
    ApiError,
    EmulatorServer,
    apply_json_patch,
    apply_strategic_merge_patch,
    parse_label_selector,
)
from etj_operator.sandbox.emulator.authn import ADMIN_TOKEN

GROUP, VERSION, PLURAL = "efficienttraining.dev", "v1alpha1", "efficienttrainingjobs"
NS = "team-a"


def job_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EfficientTrainingJob", "metadata": {"name": name},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "trainer", "image": "img"}]}},
                 **spec},
    }


def pod_body(name: str, labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, **meta},
            "spec": {"containers": [{"name": "trainer", "image": "img:1", "env": [{"name": "A", "value": "1"}]}]}}


def status_body(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


@pytest.fixture
def core(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_client)


@pytest.fixture
def custom(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube_client)


@pytest.fixture
def raw(emulator: EmulatorServer) -> Callable[..., Any]:
    """Send any request with a bearer token (as clients do) and return (status, parsed JSON body)."""
    def call(method: str, path: str, body: Any = None, content_type: str = "application/json",
             accept: str = "application/json") -> tuple[int, Any]:
        request = urllib.request.Request(
            emulator.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": accept, "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    return call


def create_job(custom: kubernetes.client.CustomObjectsApi, name: str, **spec: Any) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, job_body(name, **spec))
    return result


# ----- metadata set by the server ----------------------------------------------------------------------


def test_create_sets_server_metadata_and_drops_status(custom: kubernetes.client.CustomObjectsApi) -> None:
    body = job_body("j1")
    body["status"] = {"phase": "Succeeded"}
    body["metadata"].update(uid="client-uid", resourceVersion="999", generation=7)
    job = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    meta = job["metadata"]
    assert meta["uid"] != "client-uid" and len(meta["uid"]) == 36
    assert meta["resourceVersion"].isdigit() and meta["resourceVersion"] != "999"
    assert meta["generation"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["namespace"] == NS  # from the URL
    assert "status" not in job  # the status subresource owns it

    second = create_job(custom, "j2")
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


def test_duplicate_name_is_409_already_exists(custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "dup")
    with pytest.raises(ApiException) as info:
        create_job(custom, "dup")
    assert info.value.status == 409
    body = status_body(info.value)
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "AlreadyExists", 409)


def test_generate_name(core: kubernetes.client.CoreV1Api) -> None:
    pod = core.create_namespaced_pod(NS, {"metadata": {"generateName": "worker-"},
                                          "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert re.fullmatch(r"worker-[a-z0-9]{5}", pod.metadata.name)
    assert pod.status.phase == "Pending" and pod.status.qos_class == "BestEffort"
    limited = {"limits": {"cpu": "1", "memory": "1Gi"}}
    pod = core.create_namespaced_pod(NS, {"metadata": {"generateName": "worker-"},
                                          "spec": {"containers": [{"name": "c", "image": "i", "resources": limited}]}})
    assert pod.status.qos_class == "Guaranteed"


def test_missing_object_is_404_status(core: kubernetes.client.CoreV1Api,
                                      custom: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as info:
        custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nope")
    body = status_body(info.value)
    assert info.value.status == 404
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404
    assert body["details"]["name"] == "nope"
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod("nope", NS)
    assert info.value.status == 404


def test_replace_with_stale_resource_version_is_409(custom: kubernetes.client.CustomObjectsApi) -> None:
    job = create_job(custom, "j")
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "j", {"spec": {"replicas": 2}})
    job["spec"]["replicas"] = 3  # based on the stale version
    with pytest.raises(ApiException) as info:
        custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "j", job)
    assert info.value.status == 409 and status_body(info.value)["reason"] == "Conflict"

    fresh = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "j")
    fresh["spec"]["replicas"] = 3
    assert custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "j", fresh)["spec"]["replicas"] == 3


def test_generation_counts_spec_changes_only(custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "g")

    def patch(body: dict[str, Any], status: bool = False) -> dict[str, Any]:
        fn = custom.patch_namespaced_custom_object_status if status else custom.patch_namespaced_custom_object
        result: dict[str, Any] = fn(GROUP, VERSION, NS, PLURAL, "g", body)
        return result

    assert patch({"metadata": {"labels": {"x": "y"}}})["metadata"]["generation"] == 1
    assert patch({"status": {"phase": "Running"}}, status=True)["metadata"]["generation"] == 1
    assert patch({"spec": {"replicas": 4}})["metadata"]["generation"] == 2
    unchanged = patch({"spec": {"replicas": 4}})  # a no-op write changes nothing, not even the version
    assert unchanged["metadata"]["generation"] == 2


def test_status_subresource_isolates_status(custom: kubernetes.client.CustomObjectsApi,
                                            core: kubernetes.client.CoreV1Api) -> None:
    create_job(custom, "s")
    after_main = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "s", {"spec": {"replicas": 2}, "status": {"phase": "Hacked"}})
    assert "status" not in after_main and after_main["spec"]["replicas"] == 2
    after_status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "s", {"spec": {"replicas": 9}, "status": {"phase": "Running"}})
    assert after_status["status"] == {"phase": "Running"} and after_status["spec"]["replicas"] == 2

    core.create_namespaced_pod(NS, pod_body("p"))
    pod = core.patch_namespaced_pod("p", NS, {"status": {"phase": "Running"}, "metadata": {"labels": {"a": "b"}}})
    assert pod.status.phase == "Pending" and pod.metadata.labels == {"a": "b"}
    pod = core.patch_namespaced_pod_status("p", NS, {"status": {"phase": "Running"}})
    assert pod.status.phase == "Running"


# ----- patches ---------------------------------------------------------------------------------------------


def test_merge_patch_null_deletes_and_lists_replace(custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "m", runPolicy={"backoffLimit": 5})
    job = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "m", {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"runPolicy": None}})
    assert job["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert job["spec"].get("runPolicy") in (None, {"backoffLimit": 3, "cleanPodPolicy": "Running"})  # re-defaulted
    job = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "m", {"metadata": {"labels": {"a": None}}})
    assert job["metadata"]["labels"] == {"b": "2"}


def test_strategic_merge_patch_merges_containers_and_env_by_name(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod_body("p"))
    pod = core.patch_namespaced_pod("p", NS, {"spec": {"containers": [{"name": "trainer", "image": "img:2"}]}})
    container = pod.spec.containers[0]
    assert container.image == "img:2" and container.env[0].name == "A"  # env survived the image change
    with pytest.raises(ApiException) as info:  # a pod's spec is immutable apart from images and a few fields
        core.patch_namespaced_pod("p", NS, {"spec": {"containers": [{"name": "trainer", "args": ["x"]}]}})
    assert info.value.status == 422


def test_strategic_merge_patch_function_subset() -> None:
    old = {"metadata": {"finalizers": ["a"]},
           "spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}, {"name": "b"}],
                    "ports": [{"containerPort": 80}]}}
    patch = {"metadata": {"finalizers": ["b"]},
             "spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]},
                                     {"name": "b", "$patch": "delete"}],
                      "$setElementOrder/containers": [{"name": "a"}]}}
    new = apply_strategic_merge_patch(old, patch)
    assert new["metadata"]["finalizers"] == ["a", "b"]
    env = [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert new["spec"]["containers"] == [{"name": "a", "env": env}]
    assert new["spec"]["ports"] == [{"containerPort": 80}]


def test_strategic_merge_patch_on_custom_resource_is_415(raw: Callable[..., Any],
                                                         custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "smp")
    status, body = raw("PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/smp", {"spec": {"replicas": 2}},
                       content_type="application/strategic-merge-patch+json")
    assert status == 415 and body["reason"] == "UnsupportedMediaType"


def test_json_patch_and_failed_test_op_is_422(custom: kubernetes.client.CustomObjectsApi) -> None:
    job = create_job(custom, "jp")
    rv = job["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x.dev/f"]}]
    json_patch = "application/json-patch+json"
    patched = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "jp", ops, _content_type=json_patch)
    assert patched["metadata"]["finalizers"] == ["x.dev/f"]
    with pytest.raises(ApiException) as info:  # the same test op, now stale (kopf relies on this 422)
        custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "jp", ops, _content_type=json_patch)
    assert info.value.status == 422 and status_body(info.value)["reason"] == "Invalid"


def test_json_patch_function_covers_rfc6902() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    ops = [{"op": "add", "path": "/a/b/-", "value": 3}, {"op": "replace", "path": "/c", "value": "y"},
           {"op": "copy", "from": "/c", "path": "/d"}, {"op": "move", "from": "/d", "path": "/e~1f"},
           {"op": "remove", "path": "/a/b/0"}, {"op": "test", "path": "/a/b", "value": [2, 3]}]
    assert apply_json_patch(doc, ops) == {"a": {"b": [2, 3]}, "c": "y", "e/f": "y"}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}  # the input is untouched


# ----- selectors and lists ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("selector", "expected"), [
    ("app=etj", {"p1", "p2", "p3"}),
    ("app==etj,role=worker", {"p2", "p3"}),
    ("role!=worker", {"p1", "p4"}),
    ("role in (master, worker)", {"p1", "p2", "p3"}),
    ("role notin (worker)", {"p1", "p4"}),
    ("role", {"p1", "p2", "p3"}),
    ("!role", {"p4"}),
    ("app=etj,role in (worker),rank=1", {"p3"}),
])
def test_label_selectors(core: kubernetes.client.CoreV1Api, selector: str, expected: set[str]) -> None:
    for name, labels in [("p1", {"app": "etj", "role": "master"}),
                         ("p2", {"app": "etj", "role": "worker", "rank": "0"}),
                         ("p3", {"app": "etj", "role": "worker", "rank": "1"}),
                         ("p4", {"app": "other"})]:
        core.create_namespaced_pod(NS, pod_body(name, labels))
    assert {p.metadata.name for p in core.list_namespaced_pod(NS, label_selector=selector).items} == expected


def test_bad_label_selector_is_400(core: kubernetes.client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as info:
        core.list_namespaced_pod(NS, label_selector="role in ()")
    assert info.value.status == 400
    with pytest.raises(ApiError):
        parse_label_selector("bad key=1")


def test_field_selectors(emulator: EmulatorServer, core: kubernetes.client.CoreV1Api) -> None:
    for name in ("a", "b", "c"):
        core.create_namespaced_pod(NS, pod_body(name))
    core.create_namespaced_pod("other", pod_body("a"))
    emulator.set_pod_phase(NS, "b", "Running")
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, field_selector="status.phase=Running").items] == ["b"]
    assert {p.metadata.name for p in core.list_namespaced_pod(NS, field_selector="status.phase!=Running").items} == \
        {"a", "c"}
    everywhere = core.list_pod_for_all_namespaces(field_selector="metadata.name=a").items
    assert {p.metadata.namespace for p in everywhere} == {NS, "other"}
    assert len(core.list_pod_for_all_namespaces(field_selector="metadata.name=a,metadata.namespace=other").items) == 1
    with pytest.raises(ApiException) as info:
        core.list_namespaced_pod(NS, field_selector="spec.nonsense=1")
    assert info.value.status == 400


def test_list_kind_resource_version_and_paging(raw: Callable[..., Any],
                                               custom: kubernetes.client.CustomObjectsApi) -> None:
    for n in range(5):
        create_job(custom, f"j{n}")
    listing = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert listing["kind"] == "EfficientTrainingJobList" and listing["apiVersion"] == f"{GROUP}/{VERSION}"
    assert int(listing["metadata"]["resourceVersion"]) >= 5
    status, pods = raw("GET", "/api/v1/pods")
    assert status == 200 and pods["kind"] == "PodList"

    names, token = [], ""
    while True:
        page = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, limit=2, _continue=token or None)
        names += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert names == [f"j{n}" for n in range(5)]


# ----- watch ---------------------------------------------------------------------------------------------------


def watch_jobs(custom: kubernetes.client.CustomObjectsApi, **kwargs: Any) -> Iterator[dict[str, Any]]:
    watch = kubernetes.watch.Watch()
    yield from watch.stream(custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, **kwargs)


def test_watch_sends_current_objects_then_follows(emulator: EmulatorServer,
                                                  custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "w1")
    stream = watch_jobs(custom, timeout_seconds=5)
    first = next(stream)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "w1")
    emulator.patch("etj", NS, "w1", {"spec": {"replicas": 3}})
    second = next(stream)
    assert second["type"] == "MODIFIED" and second["object"]["spec"]["replicas"] == 3
    emulator.delete("etj", NS, "w1")
    assert next(stream)["type"] == "DELETED"
    stream.close()


def test_watch_resumes_from_resource_version_without_replay(custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "old")
    list_rv = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"]["resourceVersion"]
    create_job(custom, "new")
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "old", {"spec": {"replicas": 2}})

    events = list(watch_jobs(custom, resource_version=list_rv, timeout_seconds=1))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "new"), ("MODIFIED", "old")]

    # Reconnecting with the last seen version replays nothing (kmock 0.8 re-sent everything as ADDED).
    last_rv = events[-1]["object"]["metadata"]["resourceVersion"]
    assert list(watch_jobs(custom, resource_version=last_rv, timeout_seconds=1)) == []


@pytest.mark.timeout(30)  # without timeoutSeconds honoured, the stream would never end
def test_watch_bookmarks_and_timeout(tmp_path: Path) -> None:
    with EmulatorServer(bookmark_interval_seconds=0.2) as server:
        client = kubernetes.config.new_client_from_config(config_file=str(server.write_kubeconfig(tmp_path / "kc")))
        core = kubernetes.client.CoreV1Api(client)
        events = list(kubernetes.watch.Watch().stream(core.list_namespaced_pod, NS, resource_version="1",
                                                      allow_watch_bookmarks=True, timeout_seconds=1))
        assert events and {e["type"] for e in events} == {"BOOKMARK"}
        client.close()


def test_watch_after_compaction_is_410_gone(emulator: EmulatorServer, raw: Callable[..., Any],
                                            custom: kubernetes.client.CustomObjectsApi) -> None:
    job = create_job(custom, "c")
    emulator.patch("etj", NS, "c", {"spec": {"replicas": 2}})
    emulator.compact()
    with pytest.raises(ApiException) as info:  # the client turns the ERROR event into an exception
        list(watch_jobs(custom, resource_version=job["metadata"]["resourceVersion"], timeout_seconds=1))
    assert info.value.status == 410
    assert list(watch_jobs(custom, resource_version=str(emulator.call(lambda e: e.resource_version)),
                           timeout_seconds=1)) == []


def test_label_watch_sees_objects_enter_and_leave_the_selection(emulator: EmulatorServer,
                                                                custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "sel")
    stream = watch_jobs(custom, label_selector="tier=gold", timeout_seconds=5)
    emulator.patch("etj", NS, "sel", {"metadata": {"labels": {"tier": "gold"}}})
    assert next(stream)["type"] == "ADDED"
    emulator.patch("etj", NS, "sel", {"metadata": {"labels": {"tier": "silver"}}})
    assert next(stream)["type"] == "DELETED"
    stream.close()


@pytest.mark.timeout(30)  # the stream would otherwise last its 600 s
def test_break_watches_ends_open_streams(emulator: EmulatorServer, custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "b")
    stream = watch_jobs(custom, timeout_seconds=600)
    assert next(stream)["type"] == "ADDED"
    assert emulator.break_watches() == 1
    assert list(stream) == []


# ----- deletion: finalizers, garbage collection, namespaces -------------------------------------------------


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def test_finalizers_hold_deletion_until_removed(emulator: EmulatorServer,
                                                custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "f")
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "f", {"metadata": {"finalizers": ["x.dev/f"]}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "f")
    held = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "f")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["x.dev/f"]
    with pytest.raises(ApiException) as info:  # no new finalizers once deleting
        custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "f",
                                              {"metadata": {"finalizers": ["x.dev/f", "y.dev/g"]}})
    assert info.value.status == 422

    stream = watch_jobs(custom, resource_version=held["metadata"]["resourceVersion"], timeout_seconds=5)
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "f", {"metadata": {"finalizers": None}})
    assert [next(stream)["type"], next(stream)["type"]] == ["MODIFIED", "DELETED"]
    stream.close()
    assert emulator.get("etj", NS, "f") is None


def test_owner_deletion_collects_dependents_recursively(emulator: EmulatorServer,
                                                        core: kubernetes.client.CoreV1Api,
                                                        custom: kubernetes.client.CustomObjectsApi) -> None:
    job = create_job(custom, "owner")
    service = core.create_namespaced_service(NS, {"metadata": {"name": "svc", "ownerReferences": [owner_ref(job)]},
                                                  "spec": {"clusterIP": "None"}})
    svc_dict = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "uid": service.metadata.uid}}
    core.create_namespaced_pod(NS, pod_body("child", ownerReferences=[owner_ref(job)]))
    core.create_namespaced_pod(NS, pod_body("grandchild", ownerReferences=[owner_ref(svc_dict)],
                                            finalizers=["x.dev/hold"]))
    core.create_namespaced_pod(NS, pod_body("unrelated"))

    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "owner")
    emulator.wait_for("pods", NS, "child", lambda o: o is None)
    emulator.wait_for("services", NS, "svc", lambda o: o is None)
    held = emulator.wait_for("pods", NS, "grandchild", lambda o: bool(o and o["metadata"].get("deletionTimestamp")))
    assert held is not None  # its finalizer holds it
    emulator.patch("pods", NS, "grandchild", {"metadata": {"finalizers": None}})
    emulator.wait_for("pods", NS, "grandchild", lambda o: o is None)
    assert emulator.get("pods", NS, "unrelated") is not None


def test_owner_with_finalizer_collects_only_when_gone(emulator: EmulatorServer,
                                                      core: kubernetes.client.CoreV1Api,
                                                      custom: kubernetes.client.CustomObjectsApi) -> None:
    job = create_job(custom, "o")
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "o", {"metadata": {"finalizers": ["x/y"]}})
    core.create_namespaced_pod(NS, pod_body("child", ownerReferences=[owner_ref(job)]))
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "o")
    assert emulator.get("pods", NS, "child") is not None
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "o", {"metadata": {"finalizers": None}})
    emulator.wait_for("pods", NS, "child", lambda o: o is None)


def test_foreground_and_orphan_propagation(emulator: EmulatorServer, core: kubernetes.client.CoreV1Api,
                                           custom: kubernetes.client.CustomObjectsApi) -> None:
    fg = create_job(custom, "fg")
    core.create_namespaced_pod(NS, pod_body("fg-child", ownerReferences=[owner_ref(fg)], finalizers=["x/y"]))
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "fg", propagation_policy="Foreground")
    owner = emulator.get("etj", NS, "fg")
    assert owner is not None and "foregroundDeletion" in owner["metadata"]["finalizers"]
    emulator.wait_for("pods", NS, "fg-child", lambda o: bool(o and o["metadata"].get("deletionTimestamp")))
    emulator.patch("pods", NS, "fg-child", {"metadata": {"finalizers": None}})
    emulator.wait_for("etj", NS, "fg", lambda o: o is None)  # gone once its dependents are

    orphaner = create_job(custom, "orph")
    core.create_namespaced_pod(NS, pod_body("orphan", ownerReferences=[owner_ref(orphaner)]))
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "orph", propagation_policy="Orphan")
    emulator.wait_for("etj", NS, "orph", lambda o: o is None)
    orphan = emulator.get("pods", NS, "orphan")
    assert orphan is not None and not orphan["metadata"].get("ownerReferences")


def test_namespace_deletion_empties_it_first(emulator: EmulatorServer, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_pod("doomed", pod_body("p", finalizers=["x/y"]))
    core.delete_namespace("doomed")
    assert core.read_namespace("doomed").status.phase == "Terminating"
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("doomed", pod_body("late"))
    assert info.value.status == 403
    emulator.wait_for("pods", "doomed", "p", lambda o: bool(o and o["metadata"].get("deletionTimestamp")))
    emulator.patch("pods", "doomed", "p", {"metadata": {"finalizers": None}})
    emulator.wait_for("namespaces", None, "doomed", lambda o: o is None)


def test_delete_collection_by_label(core: kubernetes.client.CoreV1Api) -> None:
    for name, role in [("a", "worker"), ("b", "worker"), ("c", "master")]:
        core.create_namespaced_pod(NS, pod_body(name, {"role": role}))
    core.delete_collection_namespaced_pod(NS, label_selector="role=worker")
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["c"]


# ----- discovery, CRDs, core resources ----------------------------------------------------------------------


def test_discovery_serves_what_kopf_needs(raw: Callable[..., Any]) -> None:
    status, namespaces = raw("GET", "/api/v1/namespaces")  # a 500 in kmock 0.8
    assert status == 200 and namespaces["kind"] == "NamespaceList"
    assert {"default", "kube-system"} <= {n["metadata"]["name"] for n in namespaces["items"]}

    _, core_v1 = raw("GET", "/api/v1")
    by_name = {r["name"]: r for r in core_v1["resources"]}
    assert core_v1["groupVersion"] == "v1"
    assert by_name["pods"]["namespaced"] is True and {"list", "watch", "patch"} <= set(by_name["pods"]["verbs"])
    assert by_name["namespaces"]["namespaced"] is False and "pods/status" in by_name and "nodes" in by_name

    _, groups = raw("GET", "/apis")
    group = next(g for g in groups["groups"] if g["name"] == GROUP)
    assert group["preferredVersion"]["version"] == VERSION
    _, resources = raw("GET", f"/apis/{GROUP}/{VERSION}")
    etj = {r["name"]: r for r in resources["resources"]}
    assert etj[PLURAL]["kind"] == "EfficientTrainingJob" and etj[PLURAL]["namespaced"] is True
    assert {"list", "watch", "patch"} <= set(etj[PLURAL]["verbs"]) and "etj" in etj[PLURAL]["shortNames"]
    assert f"{PLURAL}/status" in etj
    for group_version in ("rbac.authorization.k8s.io/v1", "events.k8s.io/v1", "coordination.k8s.io/v1",
                          "apiextensions.k8s.io/v1"):
        assert raw("GET", f"/apis/{group_version}")[0] == 200
    assert raw("GET", "/apis/nonexistent.dev/v1")[0] == 404


def test_crd_created_through_the_api_becomes_served(kube_client: kubernetes.client.ApiClient,
                                                    raw: Callable[..., Any],
                                                    custom: kubernetes.client.CustomObjectsApi) -> None:
    crds = kubernetes.client.ApiextensionsV1Api(kube_client)
    crds.create_custom_resource_definition({
        "metadata": {"name": "widgets.example.dev"},
        "spec": {"group": "example.dev", "scope": "Cluster",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]}})
    crd = crds.read_custom_resource_definition("widgets.example.dev")
    assert {c.type for c in crd.status.conditions} >= {"Established", "NamesAccepted"}
    _, resources = raw("GET", "/apis/example.dev/v1")
    assert {r["name"] for r in resources["resources"]} == {"widgets", "widgets/status"}
    widget = custom.create_cluster_custom_object("example.dev", "v1", "widgets", {
        "apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "anything": {"goes": 1}})
    assert widget["anything"] == {"goes": 1} and "namespace" not in widget["metadata"]

    crds.delete_custom_resource_definition("widgets.example.dev")
    assert raw("GET", "/apis/example.dev/v1")[0] == 404


def test_strict_field_validation_and_dry_run(raw: Callable[..., Any],
                                            custom: kubernetes.client.CustomObjectsApi) -> None:
    collection = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
    status, body = raw("POST", f"{collection}?fieldValidation=Strict", job_body("typo", replicaz=2))
    assert status == 400 and 'unknown field "spec.replicaz"' in body["message"]
    status, body = raw("POST", f"{collection}?dryRun=All", job_body("dry"))
    assert status == 201 and body["metadata"]["name"] == "dry"
    assert custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"] == []


def test_tables_for_kubectl(raw: Callable[..., Any], emulator: EmulatorServer,
                            custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "t")
    emulator.patch_status("etj", NS, "t", {"phase": "Running"})
    table_accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    status, table = raw("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}", accept=table_accept)
    assert status == 200 and table["kind"] == "Table"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:3] == ["Name", "Phase", "Replicas"] and columns[-1] == "Age"
    assert table["rows"][0]["cells"][:3] == ["t", "Running", 1]
    assert table["rows"][0]["object"]["metadata"]["name"] == "t"


def test_crd_schema_prunes_unknown_fields_and_applies_defaults(custom: kubernetes.client.CustomObjectsApi) -> None:
    job = create_job(custom, "p", unknownField=1)
    assert "unknownField" not in job["spec"]
    assert job["spec"]["suspend"] is False  # a default from the CRD schema
    job = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "p", {
        "metadata": {"annotations": {"kopf.zalando.org/last-handled-configuration": "{}"}},
        "spec": {"alsoUnknown": True}})
    assert "alsoUnknown" not in job["spec"]
    assert job["metadata"]["annotations"]  # metadata is never pruned


def test_core_resources_the_operator_uses(emulator: EmulatorServer, kube_client: kubernetes.client.ApiClient,
                                          core: kubernetes.client.CoreV1Api) -> None:
    svc = core.create_namespaced_service(NS, {"metadata": {"name": "job-workers"},
                                              "spec": {"clusterIP": "None", "selector": {"job": "j"}}})
    assert svc.spec.cluster_ip == "None"
    assert core.create_namespaced_service(NS, {"metadata": {"name": "web"}, "spec": {}}).spec.cluster_ip
    core.create_namespaced_service_account(NS, {"metadata": {"name": "job-sa"}})
    core.create_namespaced_event(NS, {"metadata": {"generateName": "ev-"}, "reason": "Test", "message": "m",
                                      "involvedObject": {"kind": "Pod", "name": "x", "namespace": NS}})
    assert core.list_namespaced_event(NS, field_selector="involvedObject.name=x").items[0].reason == "Test"
    events = kubernetes.client.EventsV1Api(kube_client)
    events.create_namespaced_event(NS, {"metadata": {"name": "e2"}, "eventTime": "2025-01-01T00:00:00.000000Z",
                                        "reason": "R", "action": "A", "reportingController": "etj",
                                        "reportingInstance": "etj-1"})
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_client)
    rbac.create_namespaced_role(NS, {"metadata": {"name": "r"}, "rules": [
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"], "resourceNames": ["j"]}]})
    rbac.create_namespaced_role_binding(NS, {"metadata": {"name": "rb"},
                                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                         "name": "r"},
                                             "subjects": [{"kind": "ServiceAccount", "name": "job-sa"}]})
    assert rbac.read_namespaced_role("r", NS).rules[0].resource_names == ["j"]
    kubernetes.client.CoordinationV1Api(kube_client).create_namespaced_lease(NS, {"metadata": {"name": "l"}})

    # Cluster-scoped; a kubelet registers its node with a status, which the server keeps.
    core.create_node({"metadata": {"name": "gpu-node-1"},
                      "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}})
    pressure = {"efficienttraining.dev/power-pressure": "high"}
    node = core.patch_node("gpu-node-1", {"metadata": {"annotations": pressure}})
    assert node.metadata.annotations["efficienttraining.dev/power-pressure"] == "high"
    assert node.metadata.namespace is None and node.status.capacity == {"nvidia.com/gpu": "8"}
    assert [n["metadata"]["name"] for n in emulator.list("nodes")] == ["gpu-node-1"]


def test_kubelet_role_through_accessors(emulator: EmulatorServer, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod_body("w0", {"job": "j"}))
    emulator.set_pod_phase(NS, "w0", "Running", pod_ip="127.0.0.2")
    pod = core.read_namespaced_pod("w0", NS)
    assert pod.status.phase == "Running" and pod.status.pod_ip == "127.0.0.2"
    assert pod.status.container_statuses[0].state.running is not None
    emulator.set_pod_phase(NS, "w0", "Failed", exit_code={"trainer": 137})
    pod = core.read_namespaced_pod("w0", NS)
    assert pod.status.container_statuses[0].state.terminated.exit_code == 137
    assert [p["metadata"]["name"] for p in emulator.list("pods", NS, label_selector="job=j")] == ["w0"]
    with pytest.raises(ApiError) as info:
        emulator.create("pods", pod_body("w0"), namespace=NS)
    assert info.value.code == 409


# ----- fault injection and the request log -------------------------------------------------------------------


def test_fault_injection(emulator: EmulatorServer, custom: kubernetes.client.CustomObjectsApi) -> None:
    create_job(custom, "x")
    fault = emulator.faults.add(method="PATCH", path_regex=r"/efficienttrainingjobs/x/status$", status=500, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "x",
                                                         {"status": {"phase": "Running"}})
        assert info.value.status == 500
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "x", {"status": {"phase": "Running"}})
    assert fault.hits == 2 and emulator.faults.active == []

    emulator.faults.add(path_regex=r"/efficienttrainingjobs/x$", status=409, times=1)
    with pytest.raises(ApiException) as info:
        custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "x")
    assert info.value.status == 409

    emulator.faults.add(path_regex=r"/efficienttrainingjobs/x$", status=None, delay_seconds=0.3)
    started = time.monotonic()
    custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "x")
    assert time.monotonic() - started >= 0.3


def test_request_log_records_verbs_and_statuses(emulator: EmulatorServer,
                                                custom: kubernetes.client.CustomObjectsApi) -> None:
    emulator.clear_requests()
    create_job(custom, "log")
    custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "log")
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "log", {"status": {"phase": "Running"}})
    with pytest.raises(ApiException):
        custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "missing")
    log = [(r.method, r.verb, r.resource, r.subresource, r.name, r.status) for r in emulator.requests]
    # a create records the name of the object it created (not in its path)
    assert log == [("POST", "create", PLURAL, None, "log", 201), ("GET", "get", PLURAL, None, "log", 200),
                   ("PATCH", "patch", PLURAL, "status", "log", 200), ("GET", "get", PLURAL, None, "missing", 404)]
    assert all(0 < r.started_at <= r.answered_at for r in emulator.requests)


def test_server_binds_a_given_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with EmulatorServer(port=port) as server:
        assert server.url == f"http://127.0.0.1:{port}"
        assert server.get("namespaces", None, "default") is not None


def test_other_paths_fall_through_to_kmock_reactions(emulator: EmulatorServer, raw: Callable[..., Any]) -> None:
    emulator.emulator["get /custom-endpoint"] << {"hello": "kmock"}
    assert raw("GET", "/custom-endpoint") == (200, {"hello": "kmock"})
    assert raw("GET", "/version")[1]["major"] == "1"


# ----- real clients: kubectl and kopf --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_gets_and_applies(emulator: EmulatorServer, emulator_kubeconfig: Path, tmp_path: Path,
                                  custom: kubernetes.client.CustomObjectsApi) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(json.dumps(job_body("from-kubectl") | {"metadata": {"name": "from-kubectl", "namespace": NS}}))

    def kubectl(*args: str) -> str:
        done = subprocess.run(["kubectl", "--kubeconfig", str(emulator_kubeconfig), *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "created" in kubectl("apply", "-f", str(manifest))
    emulator.patch_status("etj", NS, "from-kubectl", {"phase": "Running"})
    table = kubectl("get", "etj", "-n", NS)
    assert re.search(r"NAME\s+PHASE\s+REPLICAS", table) and re.search(r"from-kubectl\s+Running\s+1", table)
    listed = json.loads(kubectl("get", "etj", "-n", NS, "-o", "json"))
    assert [item["metadata"]["name"] for item in listed["items"]] == ["from-kubectl"]
    kubectl("delete", "etj", "from-kubectl", "-n", NS, "--wait=false")
    emulator.wait_for("etj", NS, "from-kubectl", lambda o: o is None)


TINY_OPERATOR = textwrap.dedent("""
    import kopf

    @kopf.on.create('efficienttraining.dev', 'v1alpha1', 'efficienttrainingjobs')
    def created(patch, **_):
        patch.status['phase'] = 'Running'  # a phase the CRD allows

    @kopf.on.delete('efficienttraining.dev', 'v1alpha1', 'efficienttrainingjobs')
    def deleted(**_):
        pass
""")


@pytest.mark.parametrize("scope", [["-A"], ["-n", NS]], ids=["all-namespaces", "one-namespace"])
def test_kopf_handles_objects_through_the_emulator(emulator: EmulatorServer, emulator_kubeconfig: Path,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   scope: list[str]) -> None:
    from kopf.testing import KopfRunner

    operator_file = tmp_path / "tiny_operator.py"
    operator_file.write_text(TINY_OPERATOR)
    monkeypatch.setenv("KUBECONFIG", str(emulator_kubeconfig))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(emulator_kubeconfig))
    emulator.create("etj", job_body("existing"), namespace=NS)

    with KopfRunner(["run", *scope, "--standalone", str(operator_file)], timeout=60) as runner:
        seen = emulator.wait_for("etj", NS, "existing", lambda o: bool(
            o and o.get("status", {}).get("phase") == "Running" and o["metadata"].get("finalizers")),
            timeout_seconds=20)
        assert seen is not None
        emulator.create("etj", job_body("later"), namespace=NS)
        emulator.wait_for("etj", NS, "later", lambda o: bool(o and o.get("status", {}).get("phase") == "Running"),
                          timeout_seconds=20)
        emulator.delete("etj", NS, "existing")
        emulator.wait_for("etj", NS, "existing", lambda o: o is None, timeout_seconds=20)

    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
    # The finalizer was added (and removed) by JSON patches whose `test` op checked the resourceVersion.
    json_patches = [r for r in emulator.requests if r.method == "PATCH" and r.resource == PLURAL
                    and r.content_type == "application/json-patch+json"]
    assert json_patches and all(r.status == 200 for r in json_patches)
    assert "Traceback" not in runner.output
