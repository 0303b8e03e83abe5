"""The reconciler goes by UID: its pods, its children and its status writes are the job's of this UID only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from etj_operator import conditions as cond
from etj_operator import contract as c
from etj_operator.config import OperatorConfig
from etj_operator.lifecycle import Event, PodView
from etj_operator.ports import JobWriter
from etj_operator.reconciler import JobReconciler, JobState, split_by_owner

from jobs import job_manifest

OLD = "uid-of-an-earlier-job"


class Api(JobWriter):
    """Children that already exist answer 409 on create and are read back; every call is recorded."""

    def __init__(self, existing: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.existing = existing or {}
        self.calls: list[str] = []
        self.status_writes: list[dict[str, Any]] = []

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        key = (manifest["kind"], manifest["metadata"]["name"])
        self.calls.append(f"create {key[0]}/{key[1]}")
        return key not in self.existing

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}/{name}")
        return self.existing.get((kind, name))

    async def delete(self, kind: str, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        self.calls.append(f"delete {kind}/{name} uid={uid}")
        self.existing.pop((kind, name), None)
        return True

    async def patch_job_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        uid: str | None = None,
        status_exists: bool = True,
        term: str | None = None,
        stamp_resource_version: str | None = None,
    ) -> bool:
        self.status_writes.append({"uid": uid, "status_exists": status_exists, "keys": sorted(status)})
        return True


def child(kind: str, name: str, owner: str | None, ours: bool = True, job: str = "digits") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-of-{kind}"}
    if ours:
        meta["labels"] = {c.LABEL_JOB_NAME: job, c.LABEL_MANAGED_BY: c.MANAGED_BY}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": c.KIND, "name": job, "uid": owner, "controller": True}]
    return {"kind": kind, "metadata": meta}


def children(owner: str | None, ours: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
    names = {"ServiceAccount": "digits-etj", "Role": "digits-etj", "RoleBinding": "digits-etj",
             "Service": "digits", c.REPORT_KIND: "digits"}
    return {(kind, name): child(kind, name, owner, ours) for kind, name in names.items()}


def pod(index: int, owner: str | None, phase: str = "Running") -> PodView:
    return PodView(f"digits-worker-{index}", index, 0, phase, owner_uid=owner, uid=f"pod-{index}-{owner}")


async def one_pass(api: Api, pods=(), state: JobState | None = None, body=None) -> tuple[list[Event], JobState]:
    events: list[Event] = []
    reconciler = JobReconciler(api, OperatorConfig(), lambda _body, event: events.append(event))
    state = state or JobState()
    await reconciler.reconcile(body or job_manifest("digits", replicas=2), list(pods), state)
    return events, state


def test_pods_split_by_their_controller_uid():
    mine, theirs, orphan = pod(0, "uid-digits"), pod(1, OLD), pod(2, None)
    assert split_by_owner([mine, theirs, orphan], "uid-digits") == ([mine], [theirs, orphan])
    assert split_by_owner([orphan], "") == ([], [orphan])  # no UID, no pods: never a match on None


@pytest.mark.asyncio
async def test_children_of_an_earlier_job_are_not_adopted_and_no_pod_is_created_beside_them():
    api = Api(children(OLD))
    events, state = await one_pass(api)
    assert not [call for call in api.calls if call.startswith("create digits-worker") or "Pod/" in call]
    assert not any(call.startswith("delete") for call in api.calls)  # left to the garbage collector
    taken = [e for e in events if e.reason == cond.REASON_CHILD_NAME_TAKEN]
    assert len(taken) == 5 and all(e.type == "Warning" and OLD in e.message for e in taken)
    assert not state.children_ensured
    # the next pass checks again, and warns no more
    api.calls.clear()
    events, state = await one_pass(api, state=state)
    assert "get ServiceAccount/digits-etj" in api.calls and not any("Pod/" in call for call in api.calls)
    assert not [e for e in events if e.reason == cond.REASON_CHILD_NAME_TAKEN]
    # collected: the job's own children and then its pods are created
    api.existing.clear()
    api.calls.clear()
    _, state = await one_pass(api, state=state)
    assert state.children_ensured
    assert "create Pod/digits-worker-0" in api.calls and "create Pod/digits-worker-1" in api.calls


@pytest.mark.asyncio
async def test_the_job_s_own_children_after_an_operator_restart_are_fine():
    api = Api(children("uid-digits"))
    events, state = await one_pass(api)
    assert state.children_ensured and not [e for e in events if e.reason == cond.REASON_CHILD_NAME_TAKEN]
    assert "create Pod/digits-worker-0" in api.calls


@pytest.mark.asyncio
async def test_orphaned_children_are_replaced_once_no_pod_of_another_job_uses_them():
    api = Api(children(None))
    orphans = [pod(0, None), pod(1, None)]
    events, state = await one_pass(api, orphans)  # the orphaned gang still runs: keep its children
    assert not any(call.startswith("delete") for call in api.calls)
    assert {e.reason for e in events} >= {cond.REASON_CHILD_NAME_TAKEN, cond.REASON_POD_NAME_TAKEN}
    api.calls.clear()
    _, state = await one_pass(api, state=state)  # the user deleted the old pods: the orphans go, by UID
    assert "delete ServiceAccount/digits-etj uid=uid-of-ServiceAccount" in api.calls
    assert not state.children_ensured and not any("Pod/" in call for call in api.calls)
    api.calls.clear()
    _, state = await one_pass(api, state=state)
    assert state.children_ensured and "create Pod/digits-worker-0" in api.calls


@pytest.mark.asyncio
async def test_an_object_the_operator_did_not_make_is_left_alone():
    api = Api({("Service", "digits"): child("Service", "digits", None, ours=False)})
    events, state = await one_pass(api)
    assert not any(call.startswith("delete") for call in api.calls) and not state.children_ensured
    (warning,) = [e for e in events if e.reason == cond.REASON_CHILD_NAME_TAKEN]
    assert "Service digits" in warning.message and "not made by the operator" in warning.message


@pytest.mark.asyncio
async def test_status_writes_carry_the_job_s_uid_and_whether_a_status_exists():
    api = Api()
    _, state = await one_pass(api)
    assert api.status_writes[0]["uid"] == "uid-digits" and api.status_writes[0]["status_exists"] is False
    assert len(api.status_writes) == 1
    await one_pass(api, [pod(0, "uid-digits"), pod(1, "uid-digits")], state=state)  # before the watch echoes it
    assert len(api.status_writes) == 2 and api.status_writes[1]["status_exists"] is True  # this process wrote it
    echoed = {**job_manifest("digits", replicas=2), "status": {"phase": "Pending"}}
    await one_pass(api, [pod(0, "uid-digits"), pod(1, "uid-digits")], body=echoed)  # a restarted operator
    assert api.status_writes[-1] == {"uid": "uid-digits", "status_exists": True, "keys": api.status_writes[-1]["keys"]}
