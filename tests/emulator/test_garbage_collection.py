"""The garbage collector as kube-controller-manager's: by owner UID, after the owner, and sometimes late.

A real collector works from its own informers, so dependents of a deleted owner go some time after it (a long
queue: seconds; the controller manager down or restarting: minutes). ``pause_garbage_collection`` holds its
work, as such a collector does; what must hold meanwhile is checked here: dependents keep their ownerReferences,
a new owner of the same name (another UID) does not keep them alive, an Orphan deletion keeps the owner (with the
``orphan`` finalizer) until the collector has taken the ownerReferences off, and a Foreground deletion waits.
"""

from __future__ import annotations

import pytest

from etj_operator.sandbox.emulator import EmulatorServer

NS = "default"


@pytest.fixture
def server():
    with EmulatorServer() as srv:
        yield srv


def owner(server: EmulatorServer, name: str = "owner") -> dict:
    return server.create("configmaps", {"metadata": {"name": name}}, namespace=NS)


def dependent(server: EmulatorServer, name: str, of: dict) -> dict:
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": of["metadata"]["name"], "uid": of["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    body = {"metadata": {"name": name, "ownerReferences": [ref]}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    return server.create("pods", body, namespace=NS)


def test_a_paused_collector_leaves_the_dependents_until_it_resumes(server):
    first = owner(server)
    dependent(server, "child", first)
    server.pause_garbage_collection()
    server.delete("configmaps", NS, "owner")
    assert server.get("configmaps", NS, "owner") is None
    server.call(lambda e: None)  # a round trip on the emulator's loop: deferred work has had its turn
    child = server.get("pods", NS, "child")
    assert child is not None and child["metadata"]["ownerReferences"][0]["uid"] == first["metadata"]["uid"]
    second = owner(server)  # the same name again: another owner (another UID)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    server.resume_garbage_collection()
    server.wait_for("pods", NS, "child", lambda o: o is None)  # the collector goes by UID, not by name
    assert server.get("configmaps", NS, "owner") is not None


def test_a_running_collector_removes_the_dependents_without_being_asked(server):
    dependent(server, "child", owner(server))
    server.delete("configmaps", NS, "owner")
    server.wait_for("pods", NS, "child", lambda o: o is None)


def test_an_orphan_deletion_keeps_the_owner_until_the_collector_has_orphaned_the_dependents(server):
    parent = owner(server)
    dependent(server, "child", parent)
    server.pause_garbage_collection()
    last = server.delete("configmaps", NS, "owner", propagation="Orphan")
    assert last is not None and last["metadata"]["finalizers"] == ["orphan"] and last["metadata"]["deletionTimestamp"]
    server.call(lambda e: None)
    held = server.get("configmaps", NS, "owner")
    assert held is not None and held["metadata"]["finalizers"] == ["orphan"]
    child = server.get("pods", NS, "child")
    assert child is not None and child["metadata"]["ownerReferences"][0]["uid"] == parent["metadata"]["uid"]
    server.resume_garbage_collection()
    server.wait_for("configmaps", NS, "owner", lambda o: o is None)
    child = server.get("pods", NS, "child")
    assert child is not None and not child["metadata"].get("ownerReferences")


def test_an_orphan_deletion_of_an_owner_without_dependents_is_immediate(server):
    owner(server)
    assert server.delete("configmaps", NS, "owner", propagation="Orphan") is not None
    assert server.get("configmaps", NS, "owner") is None


def test_a_foreground_deletion_waits_for_the_paused_collector(server):
    dependent(server, "child", owner(server))
    server.pause_garbage_collection()
    server.delete("configmaps", NS, "owner", propagation="Foreground")
    server.call(lambda e: None)
    assert server.get("pods", NS, "child") is not None
    held = server.get("configmaps", NS, "owner")
    assert held is not None and "foregroundDeletion" in held["metadata"]["finalizers"]
    server.resume_garbage_collection()
    server.wait_for("configmaps", NS, "owner", lambda o: o is None)
    assert server.get("pods", NS, "child") is None
