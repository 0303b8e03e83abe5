"""Chaos: the API server misbehaves (5xx, 409 conflicts, slow answers, all requests failing for a while).

The real operator runs against the emulator with faults injected in its HTTP layer. Each test checks the
operator recovers on its own (the job reaches its phase), never creates a pod twice for the same job, index
and gang generation, and counts a gang restart exactly once.
"""

from __future__ import annotations

import time

import pytest
from chaos_support import PodCreations

from etj_operator import contract as c
from etj_operator.runner import OperatorThread

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

pytestmark = pytest.mark.slow

STATUS_PATCH = rf"/namespaces/{NS}/{c.PLURAL}/[^/]+/status$"
POD_POSTS = rf"/namespaces/{NS}/pods$"


@pytest.fixture
def cluster(tmp_path, monkeypatch):

    with rbac_server() as server:  # the operator as the chart's ServiceAccount, under the chart's rules
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        creations = PodCreations(server)
        with OperatorThread(quiet=True):
            cluster = Cluster(server)
            cluster.creations = creations
            yield cluster


def job(cluster, name, **spec):
    body = job_manifest(name, **spec)
    for key in ("uid", "generation"):
        body["metadata"].pop(key)
    return cluster.apply(body)


def run_to_success(cluster, name, replicas, generation=0):
    cluster.wait_pods(name, replicas, generation=generation, timeout_seconds=30)
    cluster.set_phase(name, "Running")
    cluster.wait_phase(name, "Running", timeout_seconds=30)
    cluster.set_phase(name, "Succeeded", exit_code=0)
    return cluster.wait_phase(name, "Succeeded", timeout_seconds=30)


def fail_one_pod(cluster, name, index=0):
    cluster.set_phase(name, "Running")
    cluster.wait_phase(name, "Running", timeout_seconds=30)
    cluster.set_phase(name, "Failed", indices=[index], exit_code=1)


def test_pod_creates_failing_with_5xx_are_retried_without_duplicates(cluster):
    fault = cluster.server.faults.add(method="POST", path_regex=POD_POSTS, status=500, times=3)
    job(cluster, "flaky-create", replicas=3)
    status = run_to_success(cluster, "flaky-create", 3)
    assert fault.hits == 3
    assert status["restarts"] == 0
    assert cluster.creations.duplicates() == {}
    assert cluster.creations.count("flaky-create") == 3


def test_status_write_failing_during_a_gang_restart_counts_the_restart_once(cluster):
    job(cluster, "flaky-status", replicas=2, runPolicy={"backoffLimit": 3})
    cluster.wait_pods("flaky-status", 2)
    fail_one_pod(cluster, "flaky-status")
    # the pass that sees the crash deletes the gang, then cannot write restarts=1: 500s for a while
    fault = cluster.server.faults.add(method="PATCH", path_regex=STATUS_PATCH, status=503, times=4)
    status = run_to_success(cluster, "flaky-status", 2, generation=1)
    assert fault.hits >= 1
    assert status["restarts"] == 1
    assert cluster.creations.duplicates() == {}
    assert cluster.creations.count("flaky-status") == 4  # two gangs of two


def test_conflicts_on_status_and_children_are_absorbed(cluster):
    conflict = cluster.server.faults.add(method="PATCH", path_regex=STATUS_PATCH, status=409, times=3)
    role = cluster.server.faults.add(method="POST", path_regex=r"/roles$", status=409, times=1)
    job(cluster, "conflicted", replicas=2, runPolicy={"backoffLimit": 1})
    cluster.wait_pods("conflicted", 2, timeout_seconds=30)
    fail_one_pod(cluster, "conflicted", index=1)
    status = run_to_success(cluster, "conflicted", 2, generation=1)
    assert conflict.hits == 3 and role.hits == 1
    assert status["restarts"] == 1
    assert cluster.creations.duplicates() == {}


def test_slow_api_answers_cause_no_duplicate_work(cluster):
    # every pod create and status write takes 1 s: the operator's loop runs every 0.5 s meanwhile
    cluster.server.faults.add(method="POST", path_regex=POD_POSTS, delay_seconds=1.0, status=None, times=None)
    cluster.server.faults.add(method="PATCH", path_regex=STATUS_PATCH, delay_seconds=1.0, status=None, times=None)
    job(cluster, "slow", replicas=3, runPolicy={"backoffLimit": 2})
    cluster.wait_pods("slow", 3, timeout_seconds=30)
    fail_one_pod(cluster, "slow", index=2)
    status = run_to_success(cluster, "slow", 3, generation=1)
    assert status["restarts"] == 1
    assert cluster.creations.duplicates() == {}
    assert cluster.creations.count("slow") == 6
    posts = [r for r in cluster.server.requests if r.method == "POST" and r.resource == "pods"]
    assert len(posts) == 6  # not one extra create was even attempted


def test_api_server_down_for_a_while_then_back(cluster):
    job(cluster, "outage", replicas=2)
    cluster.wait_pods("outage", 2)
    cluster.set_phase("outage", "Running")
    cluster.wait_phase("outage", "Running")
    # every request fails for 3 s (watches included: they reconnect), open watches are cut, and a pod
    # crashes meanwhile; kopf retries its watches with a backoff, the job's loop every 2 s
    fault = cluster.server.faults.add(path_regex=r"^/api", status=503, times=None)
    cluster.server.break_watches()
    cluster.set_phase("outage", "Failed", indices=[0], exit_code=137)
    wait_until(lambda: fault.hits >= 8, 20, "the operator's requests to meet the outage")
    time.sleep(3.0)
    cluster.server.faults.remove(fault)
    status = run_to_success(cluster, "outage", 2, generation=1)
    assert status["restarts"] == 1
    assert cluster.creations.duplicates() == {}
