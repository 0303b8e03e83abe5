"""Two real operator processes with leader election against the emulator (RBAC on, the chart's rules): one
leads, the other stands by; killing or pausing the leader hands over within a lease duration and a retry,
and a paused leader, resumed, writes nothing."""

from __future__ import annotations

import os
import signal
import time

import pytest
from operator_process import OperatorProcess, live_processes

from etj_operator import contract as c
from etj_operator.leader import LeaseRecord
from etj_operator.sandbox.identities import OPERATOR_NAME, OPERATOR_NAMESPACE

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

pytestmark = pytest.mark.slow

LEASE, RENEW, RETRY = 3.0, 2.0, 0.5
#: A handover takes at most a lease duration after the leader's last renewal, plus a retry period (jittered).
HANDOVER = LEASE + RETRY * 1.2 + 5.0  # + slack for process start-up on a loaded 2-core machine


@pytest.fixture
def server():
    with rbac_server() as srv:
        yield srv


@pytest.fixture
def env(server, tmp_path):
    return {
        "KUBECONFIG": str(operator_kubeconfig(server, tmp_path / "kubeconfig")),
        "ETJ_RECONCILE_INTERVAL_SECONDS": "0.5",
        "ETJ_TELEMETRY_INTERVAL_SECONDS": "1",
        "ETJ_METRICS_PORT": "0",
        "ETJ_PROMETHEUS_URL": "http://127.0.0.1:9",
        "ETJ_LEADER_ELECTION": "true",
        "ETJ_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE,
        "ETJ_LEADER_ELECTION_LEASE_NAME": OPERATOR_NAME,  # the name the chart's Role lets it read and renew
        "ETJ_LEASE_DURATION_SECONDS": str(LEASE),
        "ETJ_RENEW_DEADLINE_SECONDS": str(RENEW),
        "ETJ_RETRY_PERIOD_SECONDS": str(RETRY),
    }


def holder(server) -> str:
    lease = server.get("leases", OPERATOR_NAMESPACE, OPERATOR_NAME)
    return LeaseRecord.from_lease(lease).holder if lease else ""


def writes_by(server, identity: str, since: float = 0.0) -> list[str]:
    """Requests other than reads and the Lease's own that the operator of ``identity`` sent (since then)."""
    return [
        f"{r.method} {r.path} -> {r.status}"
        for r in server.requests
        if f"({identity})" in r.user_agent
        and r.method not in ("GET", "HEAD")
        and r.resource != "leases"
        and r.started_at >= since
    ]


def start(env, tmp_path, identity: str) -> OperatorProcess:
    return OperatorProcess({**env, "ETJ_LEADER_ELECTION_IDENTITY": identity}, tmp_path).start()


def test_one_leads_the_other_stands_by_and_takes_over_when_the_leader_is_killed(server, env, tmp_path):
    cluster = Cluster(server)
    a = start(env, tmp_path, "op-a")
    wait_until(lambda: holder(server) == "op-a", HANDOVER, "op-a leading")
    b = start(env, tmp_path, "op-b")
    try:
        cluster.apply(job_manifest("ha", replicas=2))
        cluster.wait_pods("ha", 2)
        cluster.set_phase("ha", "Running")
        cluster.wait_phase("ha", "Running")
        assert writes_by(server, "op-a")  # the leader wrote (its requests name it) ...
        assert writes_by(server, "op-b") == []  # ... and the standby nothing at all
        term_a = cluster.status("ha")[c.STATUS_LEADER_TERM]
        assert "/op-a/" in term_a
        a.kill()
        killed = time.monotonic()
        wait_until(lambda: holder(server) == "op-b", HANDOVER, "op-b taking over")
        # the new leader stamps the job with its term and carries the job on: a gang restart after a crash
        wait_until(lambda: "/op-b/" in cluster.status("ha").get(c.STATUS_LEADER_TERM, ""), 10, "op-b's stamp")
        assert time.monotonic() - killed < HANDOVER + 10
        cluster.set_phase("ha", "Failed", indices=[1], exit_code=1)
        wait_until(lambda: cluster.status("ha").get("restarts") == 1, 20, "the gang restart by op-b")
        cluster.wait_pods("ha", 2, generation=1)
        events = server.list("events", NS, field_selector="involvedObject.name=ha")
        created = [e for e in events if e["reason"] == "JobCreated"]
        assert len(created) == 1 and created[0].get("count", 1) == 1  # not posted again by the new leader
        assert cluster.pod_creations("ha") == 4  # 2 per generation, none twice
    finally:
        b.terminate()
        a.kill()
    assert live_processes() == []


def test_a_paused_leader_is_replaced_and_once_resumed_writes_nothing(server, env, tmp_path):
    cluster = Cluster(server)
    a = start(env, tmp_path, "op-a")
    wait_until(lambda: holder(server) == "op-a", HANDOVER, "op-a leading")
    b = start(env, tmp_path, "op-b")
    try:
        cluster.apply(job_manifest("paused", replicas=2))
        cluster.wait_pods("paused", 2)
        cluster.set_phase("paused", "Running")
        cluster.wait_phase("paused", "Running")
        os.kill(a.pid, signal.SIGSTOP)  # past its lease: its kubelet died, say
        wait_until(lambda: holder(server) == "op-b", HANDOVER, "op-b taking over")
        # meanwhile the gang crashes and the new leader restarts it
        cluster.set_phase("paused", "Failed", indices=[0], exit_code=1)
        wait_until(lambda: cluster.status("paused").get("restarts") == 1, 20, "the gang restart by op-b")
        cluster.wait_pods("paused", 2, generation=1)
        resumed = time.monotonic()
        os.kill(a.pid, signal.SIGCONT)
        time.sleep(3 * LEASE)  # what it would do, it does now: nothing, it knows it does not lead
        assert writes_by(server, "op-a", since=resumed) == []
        assert writes_by(server, "op-b")  # the leader's writes are seen (and named) by the same check
        assert holder(server) == "op-b"
        assert cluster.status("paused").get("restarts") == 1 and cluster.pod_creations("paused") == 4
    finally:
        b.terminate()
        os.kill(a.pid, signal.SIGCONT) if a.returncode is None else None
        a.terminate()
    assert live_processes() == []


def test_a_leader_stopping_cleanly_releases_the_lease_for_a_fast_handover(server, env, tmp_path):
    a = start(env, tmp_path, "op-a")
    wait_until(lambda: holder(server) == "op-a", HANDOVER, "op-a leading")
    b = start(env, tmp_path, "op-b")
    try:
        a.terminate()  # SIGTERM: finishes its passes, then releases the Lease
        lease = server.get("leases", OPERATOR_NAMESPACE, OPERATOR_NAME)
        assert LeaseRecord.from_lease(lease).holder in ("", "op-b")
        wait_until(lambda: holder(server) == "op-b", RETRY * 1.2 + 5.0, "op-b taking the released Lease")
    finally:
        b.terminate()
    assert live_processes() == []
