"""The real operator (kopf, in a thread) against the API emulator: the job lifecycle end to end."""

from __future__ import annotations

import time

import pytest

from etj_operator import contract as c
from etj_operator.handlers import LEGACY_FINALIZER
from etj_operator.metrics import REGISTRY
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.emulator.admission import configure

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest


@pytest.fixture
def server(tmp_path, monkeypatch):
    # RBAC on: the operator runs as the chart's ServiceAccount under the chart's rules (tests/emulated.py)
    with rbac_server() as srv:
        kubeconfig = operator_kubeconfig(srv, tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        yield srv


@pytest.fixture
def cluster(server):
    operator = OperatorThread().start()
    try:
        yield Cluster(server)
    finally:
        operator.stop()


#: How long after a DELETE a pass that was already running may still finish (a pass takes milliseconds; this
#: leaves room for a loaded CI machine and stays under two of the tests' 0.5 s reconcile intervals).
IN_FLIGHT_PASS_SECONDS = 0.75


def passes_so_far() -> float:
    """Passes the operator (in this process) has made over all jobs: its reconcile histogram's count."""
    return REGISTRY.get_sample_value("etj_reconcile_duration_seconds_count") or 0.0


def env_of(pod):
    trainer = next(x for x in pod["spec"]["containers"] if x["name"] == "trainer")
    return {v["name"]: v.get("value") for v in trainer["env"]}


def test_create_makes_children_and_pods_with_the_distributed_env(cluster):
    cluster.apply(job_manifest("digits", replicas=2, nprocPerNode=2))
    pods = cluster.wait_pods("digits", 2)
    for index, pod in enumerate(pods):
        assert pod["metadata"]["name"] == f"digits-worker-{index}"
        assert pod["metadata"]["labels"][c.LABEL_REPLICA_INDEX] == str(index)
        owner = pod["metadata"]["ownerReferences"][0]
        assert owner["kind"] == c.KIND and owner["name"] == "digits" and owner["controller"] is True
        env = env_of(pod)
        assert env[c.ENV_MASTER_ADDR] == "digits-worker-0.digits.default.svc"
        assert env[c.ENV_WORLD_SIZE] == "4"
        assert env[c.ENV_RANK] == str(index)
        assert env[c.ENV_PET_NNODES] == "2" and env[c.ENV_PET_NPROC_PER_NODE] == "2"
        assert env[c.ENV_ETJ_NAME] == "digits" and env[c.ENV_ETJ_NAMESPACE] == NS
    svc = cluster.server.get("services", NS, "digits")
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    assert cluster.server.get("serviceaccounts", NS, "digits-etj") is not None
    role = cluster.server.get("roles", NS, "digits-etj")
    assert role is not None and role["rules"][0]["resourceNames"] == ["digits"]
    assert cluster.server.get("rolebindings", NS, "digits-etj") is not None
    status = cluster.wait_phase("digits", "Pending")
    assert status["observedGeneration"] == 1
    assert any(x["type"] == "Created" and x["status"] == "True" for x in status["conditions"])


def test_pod_failure_restarts_the_gang_then_succeeds(cluster):
    cluster.apply(job_manifest("gang", replicas=2))
    cluster.wait_pods("gang", 2)
    cluster.set_phase("gang", "Running")
    cluster.wait_phase("gang", "Running")
    cluster.set_phase("gang", "Failed", indices=[1], exit_code=137)
    status = wait_until(lambda: cluster.status("gang").get("restarts") == 1 and cluster.status("gang"), what="restart")
    assert "gang-worker-1 failed with exit code 137" in str(status["conditions"])
    cluster.wait_pods("gang", 2, generation=1)
    cluster.set_phase("gang", "Running")
    cluster.wait_phase("gang", "Running")
    cluster.set_phase("gang", "Succeeded")
    status = cluster.wait_phase("gang", "Succeeded")
    assert status["restarts"] == 1 and status["completionTime"]


def test_backoff_limit_exhausted_fails_with_the_pod_and_exit_code(cluster):
    cluster.apply(job_manifest("flaky", replicas=2, runPolicy={"backoffLimit": 0}))
    cluster.wait_pods("flaky", 2)
    cluster.set_phase("flaky", "Running")
    cluster.set_phase("flaky", "Failed", indices=[0], exit_code=3)
    status = cluster.wait_phase("flaky", "Failed")
    failed = next(x for x in status["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "flaky-worker-0 failed with exit code 3" in failed["message"]
    # the still-running worker is stopped, the failed one is kept for its logs (cleanPodPolicy Running)
    wait_until(
        lambda: [p["metadata"]["name"] for p in cluster.live_pods("flaky")] == ["flaky-worker-0"], what="cleanup"
    )


def test_suspend_deletes_pods_and_resume_recreates_them(cluster):
    cluster.apply(job_manifest("pausable", replicas=2))
    cluster.wait_pods("pausable", 2)
    cluster.server.patch(c.PLURAL, NS, "pausable", {"spec": {"suspend": True}})
    cluster.wait_phase("pausable", "Suspended")
    wait_until(lambda: not cluster.live_pods("pausable"), what="pods deleted")
    cluster.server.patch(c.PLURAL, NS, "pausable", {"spec": {"suspend": False}})
    cluster.wait_pods("pausable", 2)
    status = cluster.wait_phase("pausable", "Pending")
    assert status["observedGeneration"] == 3


def test_active_deadline_fails_the_job(cluster):
    cluster.apply(job_manifest("slow", replicas=1, runPolicy={"activeDeadlineSeconds": 2}))
    cluster.wait_pods("slow", 1)
    cluster.set_phase("slow", "Running")
    status = cluster.wait_phase("slow", "Failed", timeout_seconds=15)
    assert next(x for x in status["conditions"] if x["type"] == "Failed")["reason"] == "DeadlineExceeded"
    wait_until(lambda: not cluster.live_pods("slow"), what="pods deleted")


def test_ttl_deletes_the_finished_job_and_its_children(cluster):
    cluster.apply(job_manifest("short", replicas=1, runPolicy={"ttlSecondsAfterFinished": 1}))
    cluster.wait_pods("short", 1)
    cluster.set_phase("short", "Succeeded")
    cluster.wait_phase("short", "Succeeded")
    wait_until(lambda: cluster.job("short") is None, timeout_seconds=15, what="job deleted by TTL")
    wait_until(lambda: cluster.server.get("services", NS, "short") is None, what="service garbage-collected")


def test_delete_cleans_up_children(cluster):
    cluster.apply(job_manifest("gone", replicas=2))
    cluster.wait_pods("gone", 2)
    assert not (cluster.job("gone") or {})["metadata"].get("finalizers")  # nothing holds a deletion
    cluster.server.delete(c.PLURAL, NS, "gone")
    wait_until(lambda: cluster.job("gone") is None, what="job deleted")
    wait_until(lambda: not cluster.pods("gone"), what="pods garbage-collected")
    assert cluster.server.get("roles", NS, "gone-etj") is None


def test_foreground_deletion_recreates_no_pod(cluster):
    cluster.apply(job_manifest("fg", replicas=2))
    cluster.wait_pods("fg", 2)
    for pod in cluster.pods("fg"):  # a pod finalizer keeps the job in its foreground deletion for a while
        cluster.server.patch("pods", NS, pod["metadata"]["name"], {"metadata": {"finalizers": ["test.dev/hold"]}})
    creations = cluster.pod_creations("fg")
    before = len(cluster.server.requests)
    cluster.server.delete(c.PLURAL, NS, "fg", propagation="Foreground")
    deleted_at = time.monotonic()  # the request log's clock
    wait_until(
        lambda: len([p for p in cluster.pods("fg") if p["metadata"].get("deletionTimestamp")]) == 2,
        what="pods terminating",
    )
    first = cluster.pods("fg")[0]["metadata"]["name"]  # one pod goes; the other still holds the job
    cluster.server.patch("pods", NS, first, {"metadata": {"finalizers": None}})
    wait_until(lambda: len(cluster.pods("fg")) == 1, what="one pod gone")
    time.sleep(IN_FLIGHT_PASS_SECONDS)
    passes = passes_so_far()
    time.sleep(2.0)  # four reconcile intervals: a loop still running would pass (and create the missing pod)
    assert passes_so_far() == passes  # the only job here: no pass of any job ran
    assert cluster.pod_creations("fg") == creations
    assert (cluster.job("fg") or {})["metadata"].get("deletionTimestamp")
    writes = [
        r for r in cluster.server.requests[before:] if r.method != "GET" and r.user_agent.startswith("etj-operator/")
    ]
    # A pass already running when the DELETE landed may still end with its status write (the API server takes
    # status writes on a terminating object); it creates nothing. Past that, the job's loop has stopped: no
    # status patch, pod or child request on a deleting job.
    in_flight = [r for r in writes if r.started_at <= deleted_at + IN_FLIGHT_PASS_SECONDS]
    assert all(r.method == "PATCH" and r.subresource == "status" for r in in_flight), in_flight
    assert [r for r in writes if r.started_at > deleted_at + IN_FLIGHT_PASS_SECONDS] == []
    for pod in cluster.pods("fg"):
        cluster.server.patch("pods", NS, pod["metadata"]["name"], {"metadata": {"finalizers": None}})
    wait_until(lambda: cluster.job("fg") is None, what="job deleted once its pods are gone")
    assert cluster.pod_creations("fg") == creations


def test_a_job_deleted_and_applied_again_is_reconciled_again(cluster):
    cluster.apply(job_manifest("again", replicas=1))
    cluster.wait_pods("again", 1)
    cluster.server.delete(c.PLURAL, NS, "again")
    cluster.apply(job_manifest("again", replicas=2))  # at once: the first loop may still be winding down
    uid = (cluster.job("again") or {})["metadata"]["uid"]

    def owned_by_new_job() -> bool:
        pods = cluster.live_pods("again")
        return len(pods) == 2 and all(p["metadata"]["ownerReferences"][0]["uid"] == uid for p in pods)

    wait_until(owned_by_new_job, what="the new job's two pods")
    assert cluster.wait_phase("again", "Pending")["observedGeneration"] == 1


def test_the_finalizer_of_earlier_versions_is_taken_off(cluster):
    legacy = job_manifest("legacy", replicas=1)
    legacy["metadata"]["finalizers"] = [LEGACY_FINALIZER]  # as a job created under an earlier operator version
    cluster.apply(legacy)
    cluster.wait_pods("legacy", 1)
    wait_until(lambda: not (cluster.job("legacy") or {})["metadata"].get("finalizers"), what="finalizer removed")
    cluster.server.delete(c.PLURAL, NS, "legacy")
    wait_until(lambda: cluster.job("legacy") is None, what="job deleted")


def without_cel(cluster):
    """Admission as on an API server without CEL (schema only): the CRD's rules are the operator's to apply."""
    cluster.server.call(lambda emulator: configure(emulator, "schema"))


def test_invalid_spec_fails_with_the_field_and_no_pods(cluster):
    without_cel(cluster)  # a real server refuses this job at admission (CEL rule); one without CEL admits it
    cluster.apply(job_manifest("bad", energy={"power": {"mode": "Fixed"}}))
    status = cluster.wait_phase("bad", "Failed")
    invalid = next(x for x in status["conditions"] if x["type"] == "Invalid")
    assert invalid["status"] == "True" and "spec.energy.power.limitWatts" in invalid["message"]
    assert cluster.pods("bad") == []
    assert cluster.server.get("services", NS, "bad") is None


def test_operator_restart_mid_job_creates_no_duplicates_and_keeps_status(server):
    cluster = Cluster(server)
    with OperatorThread():
        cluster.apply(job_manifest("durable", replicas=3))
        cluster.wait_pods("durable", 3)
        cluster.set_phase("durable", "Running")
        cluster.wait_phase("durable", "Running")
        cluster.set_phase("durable", "Failed", indices=[2], exit_code=1)
        wait_until(lambda: cluster.status("durable").get("restarts") == 1, what="restart counted")
    # while the operator is down, the gang's old pods disappear and nothing recreates them
    wait_until(lambda: cluster.live_pods("durable") == [] or True)
    posts_before = [r for r in server.requests if r.method == "POST" and r.resource == "pods"]
    with OperatorThread():
        cluster.wait_pods("durable", 3, generation=1)
        cluster.set_phase("durable", "Running")
        status = cluster.wait_phase("durable", "Running")
        assert status["restarts"] == 1
    with OperatorThread():  # a second restart with everything already in place changes nothing
        status = cluster.wait_phase("durable", "Running")
    posts_after = [r for r in server.requests if r.method == "POST" and r.resource == "pods"]
    created = [r for r in posts_after if r.status == 201]
    assert len(created) == 6  # 3 for the first gang, 3 for the restarted one, none duplicated
    assert len(posts_after) - len(posts_before) <= 3 + 3  # at most one (idempotent) attempt per pod
    assert len(cluster.pods("durable")) == 3
    assert status["restarts"] == 1


def test_a_spec_made_invalid_mid_run_fails_the_job_and_stops_its_pods(cluster):
    without_cel(cluster)
    cluster.apply(job_manifest("edited", replicas=2))
    cluster.wait_pods("edited", 2)
    cluster.set_phase("edited", "Running")
    cluster.wait_phase("edited", "Running")
    # an API server without CEL admits this edit; the operator's parser does not
    cluster.server.patch(c.PLURAL, NS, "edited", {"spec": {"energy": {"power": {"mode": "Fixed"}}}})
    status = cluster.wait_phase("edited", "Failed")
    assert "spec.energy.power.limitWatts" in next(x for x in status["conditions"] if x["type"] == "Invalid")["message"]
    wait_until(lambda: not cluster.live_pods("edited"), what="the gang stopped")


def test_events_are_on_the_job_as_kubectl_describe_lists_them(cluster):
    cluster.apply(job_manifest("told", replicas=1))
    cluster.wait_pods("told", 1)
    uid = (cluster.job("told") or {})["metadata"]["uid"]

    def events() -> list[dict]:
        return cluster.server.list("events", NS, field_selector="involvedObject.name=told")

    wait_until(lambda: any(e["reason"] == "JobCreated" for e in events()), what="JobCreated event")
    created = next(e for e in events() if e["reason"] == "JobCreated")
    assert created["involvedObject"]["uid"] == uid and created["involvedObject"]["kind"] == c.KIND
    assert created["source"]["component"] == c.MANAGED_BY and created["type"] == "Normal"


# ----- graceful deletion: a gang restart waits until the old gang is gone from the API -------------------


def test_a_gang_restart_under_graceful_deletion_waits_for_the_slow_worker_0(cluster):
    template = job_manifest("graceful")["spec"]["template"]
    template["spec"]["terminationGracePeriodSeconds"] = 60  # a trainer that checkpoints before it exits
    cluster.apply(job_manifest("graceful", replicas=2, template=template, runPolicy={"backoffLimit": 3}))
    cluster.wait_pods("graceful", 2)
    cluster.bind("graceful")  # scheduled: from now on their deletion is graceful, as on a node
    cluster.set_phase("graceful", "Running")
    cluster.wait_phase("graceful", "Running")
    cluster.set_phase("graceful", "Failed", indices=[1], exit_code=1)

    # The failed worker 1 goes at once (a finished pod has nothing to stop); worker 0, still running, stays
    # Terminating: its kubelet has sent SIGTERM and the trainer takes its time to exit.
    status = wait_until(
        lambda: (s := cluster.status("graceful")).get("replicaStatuses", {}).get("Worker", {}).get("terminating") == 1
        and s,
        what="the operator to see worker 0 terminating",
    )
    assert status["restarts"] == 1 and status["phase"] == "Restarting"
    assert [p["metadata"]["name"] for p in cluster.pods("graceful")] == ["graceful-worker-0"]

    # Two later passes (marked by spec edits the operator acknowledges with observedGeneration) see the same
    # old worker 0 terminating: both must leave the new gang uncreated, worker 1 included, whose name is free.
    for generation, limit in ((2, 4), (3, 5)):
        cluster.server.patch(c.PLURAL, NS, "graceful", {"spec": {"runPolicy": {"backoffLimit": limit}}})
        wait_until(lambda g=generation: cluster.status("graceful").get("observedGeneration") == g, what="a pass")
    pods = cluster.pods("graceful")
    assert [(p["metadata"]["name"], bool(p["metadata"].get("deletionTimestamp"))) for p in pods] == [
        ("graceful-worker-0", True)
    ]
    assert cluster.status("graceful")["phase"] == "Restarting"

    finished_at = time.monotonic()
    assert cluster.finish_terminations("graceful") == 1  # the trainer exited on SIGTERM; the kubelet removes it
    new_gang = cluster.wait_pods("graceful", 2, generation=1)
    assert all(not p["spec"].get("nodeName") for p in new_gang)
    new_posts = [
        r for r in cluster.server.requests
        if r.method == "POST" and r.resource == "pods" and r.status == 201 and r.started_at >= finished_at
    ]
    assert len(new_posts) == 2  # both new pods were asked for only after the old worker 0 was gone
    assert cluster.pod_creations("graceful") == 4  # two per generation, none duplicated
    cluster.bind("graceful")
    cluster.set_phase("graceful", "Running")
    status = cluster.wait_phase("graceful", "Running")
    assert status["restarts"] == 1 and status["replicaStatuses"]["Worker"]["terminating"] == 0


def test_resume_waits_until_the_suspended_pods_have_terminated(cluster):
    cluster.apply(job_manifest("nap", replicas=2))
    cluster.wait_pods("nap", 2)
    cluster.bind("nap")
    cluster.set_phase("nap", "Running")
    cluster.wait_phase("nap", "Running")
    cluster.server.patch(c.PLURAL, NS, "nap", {"spec": {"suspend": True}})
    cluster.wait_phase("nap", "Suspended")
    wait_until(lambda: len(cluster.terminating_pods("nap")) == 2, what="both pods terminating")
    cluster.server.patch(c.PLURAL, NS, "nap", {"spec": {"suspend": False}})
    wait_until(lambda: cluster.status("nap").get("observedGeneration") == 3, what="the resume seen")
    cluster.server.patch(c.PLURAL, NS, "nap", {"spec": {"runPolicy": {"backoffLimit": 4}}})
    wait_until(lambda: cluster.status("nap").get("observedGeneration") == 4, what="one more pass")
    assert cluster.live_pods("nap") == [] and len(cluster.terminating_pods("nap")) == 2
    assert cluster.status("nap")["replicaStatuses"]["Worker"]["terminating"] == 2
    assert cluster.finish_terminations("nap") == 2
    cluster.wait_pods("nap", 2)
    assert cluster.pod_creations("nap") == 4


def test_the_events_of_a_pass_survive_a_failed_pod_create(cluster):
    fault = cluster.server.faults.add(method="POST", path_regex=rf"/namespaces/{NS}/pods$", status=500, times=1)
    cluster.apply(job_manifest("unlucky", replicas=2))
    cluster.wait_pods("unlucky", 2)
    assert fault.hits == 1  # the first pass failed half-way: after its status write, at a pod create

    def created_events() -> list[dict]:
        events = cluster.server.list("events", NS, field_selector="involvedObject.name=unlucky")
        return [e for e in events if e["reason"] == "JobCreated"]

    events = wait_until(created_events, what="the JobCreated event")
    # the retry derives no second JobCreated: it starts from the status the failed pass wrote
    wait_until(lambda: cluster.status("unlucky").get("phase") == "Pending", what="the retried pass")
    assert len(created_events()) == 1 and events[0].get("count", 1) == 1
