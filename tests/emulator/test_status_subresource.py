"""A write to a custom resource's status subresource changes its status and nothing else, as kube-apiserver's
statusStrategy does: PrepareForUpdate copies the stored object and keeps only the new status (metadata, spec,
labels, annotations, ownerReferences and finalizers of the request are dropped), and the generation stays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from etj_operator import contract as c
from etj_operator.sandbox.emulator import EmulatorServer

ROOT = Path(__file__).resolve().parents[2]
OWNER = {"apiVersion": c.API_VERSION, "kind": c.KIND, "name": "job", "uid": "uid-job", "controller": True,
         "blockOwnerDeletion": True}


@pytest.fixture
def server():
    with EmulatorServer(crds=[ROOT / "crds"]) as srv:
        yield srv


def make_report(server: EmulatorServer) -> dict[str, Any]:
    return server.create(c.REPORT_PLURAL, {
        "apiVersion": c.API_VERSION, "kind": c.REPORT_KIND,
        "metadata": {"name": "job", "labels": {"a": "b"}, "annotations": {"n": "1"}, "ownerReferences": [OWNER]},
    }, namespace="default")


FORGED_METADATA = {"labels": {"a": "forged"}, "annotations": {"n": "forged"}, "ownerReferences": [],
                   "finalizers": ["example.com/hold"], "uid": "other", "generation": 99}


def assert_only_status_changed(before: dict[str, Any], after: dict[str, Any], status: dict[str, Any]) -> None:
    for field in ("labels", "annotations", "ownerReferences", "finalizers", "uid", "generation", "creationTimestamp",
                  "name", "namespace"):
        assert after["metadata"].get(field) == before["metadata"].get(field), field
    assert after.get("spec") == before.get("spec")
    assert after["status"] == status


def test_a_merge_patch_of_status_drops_metadata_and_spec(server):
    before = make_report(server)
    after = server.patch(c.REPORT_PLURAL, "default", "job",
                         {"metadata": FORGED_METADATA, "spec": {"x": 1}, "status": {"step": 3}}, subresource="status")
    assert_only_status_changed(before, after, {"step": 3})
    assert_only_status_changed(before, server.get(c.REPORT_PLURAL, "default", "job"), {"step": 3})


def test_a_json_patch_of_status_drops_metadata(server):
    before = make_report(server)
    after = server.patch(c.REPORT_PLURAL, "default", "job", [
        {"op": "replace", "path": "/metadata/labels", "value": {"a": "forged"}},
        {"op": "remove", "path": "/metadata/ownerReferences"},
        {"op": "add", "path": "/status", "value": {"epoch": 2}},
    ], subresource="status", patch_type="json")
    assert_only_status_changed(before, after, {"epoch": 2})


def test_a_put_of_status_drops_metadata_and_an_absent_status_clears_it(server):
    make_report(server)
    before = server.patch(c.REPORT_PLURAL, "default", "job", {"status": {"step": 1}}, subresource="status")
    body = {**before, "metadata": {**before["metadata"], **FORGED_METADATA}, "status": {"step": 5}}
    after = server.replace(c.REPORT_PLURAL, "default", "job", body, subresource="status")
    assert_only_status_changed(before, after, {"step": 5})
    cleared = server.replace(c.REPORT_PLURAL, "default", "job",
                             {k: v for k, v in after.items() if k != "status"}, subresource="status")
    assert "status" not in cleared  # statusStrategy: no status in the request, none stored


def test_the_jobs_status_subresource_too(server):
    body = {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "job", "labels": {"a": "b"}},
            "spec": {"template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}}}}
    before = server.create(c.PLURAL, body, namespace="default")
    after = server.patch(c.PLURAL, "default", "job", {
        "metadata": FORGED_METADATA, "spec": {"replicas": 7}, "status": {"phase": "Running"},
    }, subresource="status")
    assert_only_status_changed(before, after, {"phase": "Running"})
    assert after["spec"]["replicas"] == before["spec"]["replicas"]
