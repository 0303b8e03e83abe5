"""The real operator against the API emulator: a job's pods are the ones it owns by UID; spec changes never mix.

Reproduces issue 12's reports: a finished job deleted and applied again while the garbage collector has not
removed the old pods yet (the new job was marked Succeeded within a second from the old worker 0), a job
deleted with ``--cascade=orphan`` and applied again (the new job adopted the old pods), and ``replicas``
2 -> 3 on a running job (a third pod expecting a 3-node world beside the running 2-node gang).
"""

from __future__ import annotations

import pytest

from etj_operator import conditions as cond
from etj_operator import contract as c
from etj_operator.runner import OperatorThread

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    # RBAC on: the operator runs as the chart's ServiceAccount under the chart's rules (tests/emulated.py)
    with rbac_server() as server:
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        with OperatorThread(quiet=True):
            yield Cluster(server)


def uid_of(cluster: Cluster, name: str) -> str:
    return (cluster.job(name) or {})["metadata"]["uid"]


def owner_of(obj: dict) -> str | None:
    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")]
    return refs[0]["uid"] if refs else None


def events_of(cluster: Cluster, uid: str, reason: str | None = None) -> list[dict]:
    return [
        e for e in cluster.server.list("events", NS)
        if e["involvedObject"].get("uid") == uid and (reason is None or e["reason"] == reason)
    ]


def condition(cluster: Cluster, name: str, ctype: str) -> dict | None:
    return cond.find(cluster.status(name).get("conditions") or [], ctype)


def owned_pods(cluster: Cluster, job: str, uid: str, count: int) -> list[dict]:
    def ready() -> list[dict] | None:
        pods = cluster.live_pods(job)
        return pods if len(pods) == count and all(owner_of(p) == uid for p in pods) else None

    return wait_until(ready, what=f"{count} pods of {job} owned by {uid}")


def test_a_finished_job_applied_again_while_its_pods_await_garbage_collection_runs_a_new_gang(cluster):
    cluster.apply(job_manifest("again", replicas=2))
    cluster.wait_pods("again", 2)
    cluster.bind("again")  # on a node: a deleted running pod stays Terminating until its kubelet removes it
    cluster.set_phase("again", "Running")
    cluster.wait_phase("again", "Running")
    cluster.set_phase("again", "Succeeded", indices=[0])
    cluster.wait_phase("again", "Succeeded")
    # cleanPodPolicy Running: worker 1 is deleted; its kubelet has not removed it yet
    wait_until(lambda: len(cluster.terminating_pods("again")) == 1, what="worker 1 terminating")
    old = uid_of(cluster, "again")

    cluster.server.pause_garbage_collection()  # kube-controller-manager is behind
    cluster.server.delete(c.PLURAL, NS, "again")
    wait_until(lambda: cluster.job("again") is None, what="the old job deleted")
    cluster.apply(job_manifest("again", replicas=2))
    new = uid_of(cluster, "again")
    assert new != old

    # the old pods (worker 0 Succeeded, worker 1 Terminating) are not the new job's: it waits, Pending
    taken = wait_until(
        lambda: (x := condition(cluster, "again", cond.POD_NAME_TAKEN)) and x["status"] == "True" and x,
        what="PodNameTaken",
    )
    assert "again-worker-0" in taken["message"] and f"uid {old}" in taken["message"]
    assert cluster.status("again")["phase"] == "Pending"
    assert all(owner_of(p) == old for p in cluster.pods("again"))  # nothing created, nothing adopted
    # the old job's children are not adopted either (they would be collected under the new job)
    children = wait_until(lambda: events_of(cluster, new, cond.REASON_CHILD_NAME_TAKEN), what="ChildNameTaken")
    assert any("ServiceAccount again-etj" in e["message"] and old in e["message"] for e in children)
    assert owner_of(cluster.server.get("serviceaccounts", NS, "again-etj") or {"metadata": {}}) == old

    cluster.server.resume_garbage_collection()  # worker 0 and the children go; worker 1 still terminates
    wait_until(lambda: [p["metadata"]["name"] for p in cluster.pods("again")] == ["again-worker-1"], what="GC")
    assert all(owner_of(p) == old for p in cluster.pods("again"))  # no pod beside the dying worker 1
    assert cluster.finish_terminations("again") == 1  # its kubelet is done
    pods = owned_pods(cluster, "again", new, 2)
    assert {p["metadata"]["annotations"][c.ANNOTATION_GANG_GENERATION] for p in pods} == {"0"}
    account = wait_until(lambda: cluster.server.get("serviceaccounts", NS, "again-etj"), what="new ServiceAccount")
    assert owner_of(account) == new
    cluster.set_phase("again", "Running")
    status = cluster.wait_phase("again", "Running")
    assert status["restarts"] == 0 and not status.get("completionTime")
    assert condition(cluster, "again", cond.POD_NAME_TAKEN)["status"] == "False"
    # one Warning for the episode; never a success taken from the old worker 0
    wait_until(lambda: events_of(cluster, new, cond.REASON_POD_NAME_TAKEN), what="the PodNameTaken Event")
    assert len(events_of(cluster, new, cond.REASON_POD_NAME_TAKEN)) == 1
    assert events_of(cluster, new, cond.REASON_JOB_SUCCEEDED) == []


def test_orphaned_pods_of_an_earlier_job_are_not_adopted_and_the_new_gang_waits_for_them(cluster):
    cluster.apply(job_manifest("orph", replicas=2))
    cluster.wait_pods("orph", 2)
    cluster.set_phase("orph", "Running")
    cluster.wait_phase("orph", "Running")
    old_pods = {p["metadata"]["uid"] for p in cluster.pods("orph")}

    cluster.server.delete(c.PLURAL, NS, "orph", propagation="Orphan")  # kubectl delete --cascade=orphan
    wait_until(lambda: cluster.job("orph") is None, what="the old job deleted")
    assert all(owner_of(p) is None for p in cluster.pods("orph"))
    cluster.apply(job_manifest("orph", replicas=2))
    new = uid_of(cluster, "orph")

    taken = wait_until(
        lambda: (x := condition(cluster, "orph", cond.POD_NAME_TAKEN)) and x["status"] == "True" and x,
        what="PodNameTaken",
    )
    assert "orph-worker-0" in taken["message"] and "no owner" in taken["message"]
    warning = wait_until(lambda: events_of(cluster, new, cond.REASON_POD_NAME_TAKEN), what="the Warning")[0]
    assert warning["type"] == "Warning" and "no owner" in warning["message"]
    # the old pods run on, unowned, and are not this job's: not adopted, not reported as Running
    assert {p["metadata"]["uid"] for p in cluster.pods("orph")} == old_pods
    assert all(owner_of(p) is None for p in cluster.pods("orph"))
    status = cluster.status("orph")
    assert status["phase"] == "Pending" and status["replicaStatuses"]["Worker"]["active"] == 0

    for pod in cluster.pods("orph"):  # the user deletes the old pods
        cluster.server.delete("pods", NS, pod["metadata"]["name"])
    pods = owned_pods(cluster, "orph", new, 2)
    assert not {p["metadata"]["uid"] for p in pods} & old_pods
    # the orphaned children were replaced by the new job's own
    for resource, name in (("serviceaccounts", "orph-etj"), ("services", "orph"), ("roles", "orph-etj"),
                           ("rolebindings", "orph-etj")):
        child = wait_until(
            lambda r=resource, n=name: (o := cluster.server.get(r, NS, n)) and owner_of(o) == new and o,
            what=f"{resource}/{name} owned by the new job",
        )
        assert child is not None
    cluster.set_phase("orph", "Running")
    assert cluster.wait_phase("orph", "Running")["restarts"] == 0


def test_replicas_2_to_3_on_a_running_job_ends_in_one_consistent_3_worker_gang(cluster):
    cluster.apply(job_manifest("grow", replicas=2))
    cluster.wait_pods("grow", 2)
    cluster.bind("grow")
    cluster.set_phase("grow", "Running")
    cluster.wait_phase("grow", "Running")
    old_pods = {p["metadata"]["uid"] for p in cluster.pods("grow")}
    (old_world,) = {p["metadata"]["annotations"][c.ANNOTATION_WORLD] for p in cluster.pods("grow")}

    cluster.server.patch(c.PLURAL, NS, "grow", {"spec": {"replicas": 3}})
    # the whole old gang is deleted (Terminating on its node) and the phase says why
    wait_until(lambda: len(cluster.terminating_pods("grow")) == 2, what="the old gang terminating")
    status = wait_until(
        lambda: (s := cluster.status("grow"))["replicaStatuses"]["Worker"]["terminating"] == 2 and s,
        what="a pass that saw the old gang terminating",
    )
    assert status["phase"] == "Restarting"
    restarting = condition(cluster, "grow", cond.RESTARTING)
    assert restarting["reason"] == cond.REASON_SPEC_CHANGED and "replicas 2 -> 3" in restarting["message"]
    # no third pod beside the dying 2-node world (the pass that deleted it is over: the next one wrote this status)
    assert cluster.server.get("pods", NS, "grow-worker-2") is None

    assert cluster.finish_terminations("grow") == 2
    pods = cluster.wait_pods("grow", 3)
    assert not {p["metadata"]["uid"] for p in pods} & old_pods
    worlds = {p["metadata"]["annotations"][c.ANNOTATION_WORLD] for p in pods}
    assert len(worlds) == 1 and worlds != {old_world}
    for pod in pods:
        trainer = next(x for x in pod["spec"]["containers"] if x["name"] == "trainer")
        env = {v["name"]: v.get("value") for v in trainer["env"]}
        assert env[c.ENV_WORLD_SIZE] == "3" and env[c.ENV_PET_NNODES] == "3"
    cluster.bind("grow")
    cluster.set_phase("grow", "Running")
    status = cluster.wait_phase("grow", "Running")
    assert status["restarts"] == 0  # a change the user asked for spends no backoffLimit
    uid = uid_of(cluster, "grow")
    spec_changed = wait_until(lambda: events_of(cluster, uid, cond.REASON_SPEC_CHANGED), what="the SpecChanged Event")
    assert len(spec_changed) == 1 and "replicas 2 -> 3" in spec_changed[0]["message"]
    assert events_of(cluster, uid, cond.REASON_GANG_RESTARTED) == []
