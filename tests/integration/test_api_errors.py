"""The real operator against the API emulator: a request the server refuses is shown on the job and backs off."""

from __future__ import annotations

import itertools
import re

import pytest

from etj_operator import conditions as cond
from etj_operator.backoff import Backoff
from etj_operator.runner import OperatorThread

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

POD_POSTS = rf"/namespaces/{NS}/pods$"
REFUSAL = 'Pod "refused-worker-0" is invalid: spec.containers[0].image: Required value'
#: The test's slow-retry schedule (production: PERMANENT_BACKOFF, 5 s doubling to 5 minutes), jitter-free.
DELAYS = (0.3, 0.6, 1.2, 2.4)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "etj_operator.supervisor.PERMANENT_BACKOFF", Backoff(DELAYS[0], DELAYS[-1], jitter=0.0)
    )  # read when the operator builds its supervisor, below
    with rbac_server() as server:
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        with OperatorThread(quiet=True):
            yield Cluster(server)


def refused_condition(cluster: Cluster, name: str) -> dict | None:
    return cond.find(cluster.status(name).get("conditions") or [], cond.API_REQUEST_REFUSED)


def test_a_refused_pod_create_is_shown_on_the_job_and_retried_with_growing_delays(cluster):
    fault = cluster.server.faults.add(
        method="POST", path_regex=POD_POSTS, status=422, reason="Invalid", message=REFUSAL, times=len(DELAYS)
    )
    cluster.apply(job_manifest("refused", replicas=1))

    # within the pass that was refused: the condition, naming the object and carrying the server's words
    shown = wait_until(
        lambda: (c := refused_condition(cluster, "refused")) and c["status"] == "True" and c, what="the condition"
    )
    assert shown["reason"] == "Invalid"
    assert shown["message"].startswith("create Pod/refused-worker-0 refused (422 Invalid): ")
    assert REFUSAL in shown["message"]
    assert fault.hits <= 2  # shown at once, not after the retries

    # ... and a Warning Event on the job, once for the refusal (not once per retry)
    def warnings() -> list[dict]:
        return [
            e for e in cluster.server.list("events", NS)
            if e["type"] == "Warning" and e["involvedObject"]["name"] == "refused"
        ]

    event = wait_until(lambda: warnings() and warnings()[0], what="the Warning Event")
    assert event["reason"] == "FailedCreate"
    assert "Pod/refused-worker-0" in event["message"] and REFUSAL in event["message"]

    # once the server accepts the pod, the condition goes False
    cluster.wait_pods("refused", 1, timeout_seconds=30)
    cleared = wait_until(
        lambda: (c := refused_condition(cluster, "refused")) and c["status"] == "False" and c, what="the clearing"
    )
    assert cleared["reason"] == cond.REASON_REQUESTS_ACCEPTED
    assert fault.hits == len(DELAYS) and len(warnings()) == 1

    # the refused creates were retried on the slow schedule: each gap at least its delay, and growing
    posts = [r for r in cluster.server.requests if r.method == "POST" and re.search(POD_POSTS, r.path)]
    assert [r.fault for r in posts] == [True] * len(DELAYS) + [False]
    gaps = [b.started_at - a.started_at for a, b in itertools.pairwise(posts)]
    assert all(gap >= delay for gap, delay in zip(gaps, DELAYS, strict=True)), gaps
    assert all(a < b for a, b in itertools.pairwise(gaps)), gaps
