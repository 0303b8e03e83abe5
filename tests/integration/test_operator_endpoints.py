"""The operator's own endpoints: kopf's liveness probe and the Prometheus metrics."""

from __future__ import annotations

import socket
import urllib.request

from etj_operator.runner import OperatorThread

from emulated import Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_liveness_and_metrics(tmp_path, monkeypatch):
    metrics_port, live_port = free_port(), free_port()
    with rbac_server() as server:  # the operator as the chart's ServiceAccount, under the chart's rules
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_METRICS_PORT", str(metrics_port))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        with OperatorThread(liveness_endpoint=f"http://127.0.0.1:{live_port}/healthz"):
            cluster = Cluster(server)
            cluster.apply(job_manifest("probe", replicas=1))
            cluster.wait_pods("probe", 1)
            assert wait_until(lambda: get(f"http://127.0.0.1:{live_port}/healthz"), 10, "liveness")
            text = wait_until(
                lambda: (
                    (t := get(f"http://127.0.0.1:{metrics_port}/metrics"))
                    and 'etj_jobs{phase="Pending"} 1.0' in t
                    and t
                ),
                10,
                "the jobs-by-phase gauge",
            )
            assert "etj_reconcile_duration_seconds_count" in text
            assert 'etj_api_requests_total{code="201",resource="pods",verb="create"}' in text
