"""KubeApi's status writes against the API emulator: on the job of one UID only, never on a new job of its name.

The write is a JSON patch whose first operation tests ``/metadata/uid`` (a merge patch carrying the UID is no
precondition on a real server: the status strategy resets the metadata), then one operation per key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from etj_operator import contract as c
from etj_operator.kubeapi import KubeApi, load_connection
from etj_operator.sandbox.emulator import EmulatorServer

from jobs import job_manifest

NS = "default"


def create_job(emulator: EmulatorServer, name: str) -> str:
    body = job_manifest(name, replicas=1)
    for key in ("uid", "generation"):
        body["metadata"].pop(key)
    return emulator.create(c.PLURAL, body, namespace=NS)["metadata"]["uid"]


def status_of(emulator: EmulatorServer, name: str) -> dict:
    return (emulator.get(c.PLURAL, NS, name) or {}).get("status") or {}


def status_patches(emulator: EmulatorServer) -> list:
    return [r for r in emulator.requests if r.method == "PATCH" and r.subresource == "status"]


@pytest_asyncio.fixture
async def api(emulator_kubeconfig: Path):
    client = KubeApi(load_connection(str(emulator_kubeconfig)))
    yield client
    await client.aclose()


@pytest.mark.asyncio
async def test_a_write_for_a_deleted_job_never_lands_on_the_new_job_of_its_name(emulator, api):
    old = create_job(emulator, "same")
    assert await api.patch_job_status(NS, "same", {"phase": "Running", "restarts": 2}, uid=old, status_exists=False)
    assert status_of(emulator, "same") == {"phase": "Running", "restarts": 2}

    emulator.delete(c.PLURAL, NS, "same")
    new = create_job(emulator, "same")
    assert new != old
    # what the old job's loop computed (say, from the old pods: Succeeded) finds the job gone
    written = await api.patch_job_status(NS, "same", {"phase": "Succeeded", "restarts": 2}, uid=old)
    assert written is False
    assert status_of(emulator, "same") == {}
    # the new job's own write lands
    assert await api.patch_job_status(NS, "same", {"phase": "Pending"}, uid=new, status_exists=False)
    assert status_of(emulator, "same") == {"phase": "Pending"}


@pytest.mark.asyncio
async def test_a_write_for_a_job_that_is_gone_says_so(emulator, api):
    uid = create_job(emulator, "vanished")
    emulator.delete(c.PLURAL, NS, "vanished")
    assert await api.patch_job_status(NS, "vanished", {"phase": "Running"}, uid=uid) is False


@pytest.mark.asyncio
async def test_keys_are_written_one_by_one_and_other_keys_are_left_alone(emulator, api):
    uid = create_job(emulator, "keys")
    assert await api.patch_job_status(
        NS, "keys", {"phase": "Running", "completionTime": "2026-01-01T00:00:00Z"}, uid=uid, status_exists=False
    )
    emulator.patch_status(c.PLURAL, NS, "keys", {"workload": {"step": 7}})  # another writer's key
    control = {c.CONTROL_POWER_LIMIT_WATTS_PER_GPU: None, c.CONTROL_CHECKPOINT_REQUESTED: 2}
    change = {"completionTime": None, "control": control, "phase": "Paused"}
    assert await api.patch_job_status(NS, "keys", change, uid=uid)
    # None removes a key, also inside a mapping (as a merge patch would); the rest of the status stays
    assert status_of(emulator, "keys") == {
        "phase": "Paused",
        "workload": {"step": 7},
        "control": {c.CONTROL_CHECKPOINT_REQUESTED: 2},
    }
    patch = status_patches(emulator)[-1]
    assert patch.status == 200 and patch.content_type.startswith("application/json-patch+json")


@pytest.mark.asyncio
async def test_a_wrong_guess_about_the_status_is_mended_with_one_more_try(emulator, api):
    uid = create_job(emulator, "guess")
    # the caller believes a status exists (e.g. a stale view): /status/phase has no parent, the server says 422
    before = len(status_patches(emulator))
    assert await api.patch_job_status(NS, "guess", {"phase": "Running", "restarts": None}, uid=uid)
    assert status_of(emulator, "guess") == {"phase": "Running"}
    assert [r.status for r in status_patches(emulator)[before:]] == [422, 200]
    # removing a key that is not there any more: one more try without it
    assert await api.patch_job_status(NS, "guess", {"restarts": None, "phase": "Pending"}, uid=uid)
    assert status_of(emulator, "guess") == {"phase": "Pending"}


def resource_version(emulator: EmulatorServer, name: str) -> str:
    return (emulator.get(c.PLURAL, NS, name) or {})["metadata"]["resourceVersion"]


@pytest.mark.asyncio
async def test_a_leader_fences_its_writes_and_an_earlier_leaders_write_never_lands(emulator, api):
    """Leader election: the first write of a term stamps status.leaderTerm on the job as read (resourceVersion
    precondition); later writes test the stamp, so once another term stamped the job the old leader's fail."""
    from etj_operator.errors import ConflictError
    from etj_operator.leader import NotLeader

    uid = create_job(emulator, "fenced")
    seen = resource_version(emulator, "fenced")
    assert await api.patch_job_status(
        NS, "fenced", {"phase": "Running"}, uid=uid, status_exists=False, term="1/op-a/t1", stamp_resource_version=seen
    )
    assert status_of(emulator, "fenced") == {"phase": "Running", c.STATUS_LEADER_TERM: "1/op-a/t1"}
    assert await api.patch_job_status(NS, "fenced", {"restarts": 1}, uid=uid, term="1/op-a/t1")
    # op-b takes over: a stamp made from a stale read is refused (409), from a fresh one it lands
    with pytest.raises(ConflictError):
        await api.patch_job_status(NS, "fenced", {}, uid=uid, term="2/op-b/t2", stamp_resource_version=seen)
    assert await api.patch_job_status(
        NS, "fenced", {}, uid=uid, term="2/op-b/t2", stamp_resource_version=resource_version(emulator, "fenced")
    )
    # op-a, paused across the takeover, resumes with a write computed earlier: refused, nothing changed
    before = status_of(emulator, "fenced")
    with pytest.raises(NotLeader, match="2/op-b/t2"):
        await api.patch_job_status(NS, "fenced", {"restarts": 2, "phase": "Failed"}, uid=uid, term="1/op-a/t1")
    assert status_of(emulator, "fenced") == before == {
        "phase": "Running", "restarts": 1, c.STATUS_LEADER_TERM: "2/op-b/t2"
    }
    assert await api.patch_job_status(NS, "fenced", {"restarts": 2}, uid=uid, term="2/op-b/t2")
