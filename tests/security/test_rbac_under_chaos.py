"""Least privilege beyond the happy path: every API request the operator makes while it is SIGKILLed and
restarted, while the API answers 5xx, while pods crash and jobs are failed as invalid, suspended, resumed
and deleted, is allowed by the chart's rendered RBAC.

tests/chart/test_rbac.py records one full lifecycle and checks it both ways (used <= granted, granted <=
used); this test reuses its request recorder and RBAC evaluator on the chaos harness's traffic, where
the operator takes its recovery paths (re-listing after a restart, retries, cleanup of stale gangs).
"""

from __future__ import annotations

import importlib.util
import time

import pytest
from chaos_support import ChaosOperator, assert_clean, make_crash_lifecycles, run_chaos
from chart_support import ROOT, render

from etj_operator import contract as c
from etj_operator.sandbox.emulator.admission import configure

from emulated import NS, Cluster, operator_kubeconfig, operator_refusals, rbac_server, wait_until
from jobs import job_manifest

pytestmark = pytest.mark.slow


def chart_rbac_module():
    spec = importlib.util.spec_from_file_location("chart_test_rbac", ROOT / "tests" / "chart" / "test_rbac.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_request_under_chaos_is_allowed_by_the_chart(tmp_path, monkeypatch):
    rbac = chart_rbac_module()
    with rbac_server() as server:  # RBAC on: the operator as the chart's ServiceAccount, under the chart's rules
        env = {
            "KUBECONFIG": str(operator_kubeconfig(server, tmp_path / "kubeconfig")),
            "ETJ_RECONCILE_INTERVAL_SECONDS": "0.5",
            "ETJ_METRICS_PORT": "0",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        server.faults.add(method="POST", path_regex=r"/pods$", status=500, times=2)
        server.faults.add(method="PATCH", path_regex=r"/status$", status=503, times=3)
        scripts = make_crash_lifecycles(seed=11, count=6)
        report = run_chaos(server, None, env, tmp_path, seed=11, count=6, concurrency=6,
                           restart_every=(0.5, 2.0), deadline_seconds=90, scripts=scripts)
        assert_clean(report, minimum_restarts=2)
        # the other paths: an invalid job, suspend and resume, a deletion, with a fresh operator process
        operator = ChaosOperator(env, tmp_path)
        operator.start("process")
        try:
            cluster = Cluster(server)
            # CEL refuses this spec at admission; a server without CEL admits it and the operator fails it
            server.call(lambda emulator: configure(emulator, "schema"))
            bad = job_manifest("rbac-invalid", energy={"power": {"mode": "Fixed"}})
            pausable = job_manifest("rbac-pausable", replicas=2)
            for body in (bad, pausable):
                del body["metadata"]["uid"], body["metadata"]["generation"]
                cluster.apply(body)
            cluster.wait_phase("rbac-invalid", "Failed")
            cluster.wait_pods("rbac-pausable", 2)
            server.patch(c.PLURAL, NS, "rbac-pausable", {"spec": {"suspend": True}})
            cluster.wait_phase("rbac-pausable", "Suspended")
            server.patch(c.PLURAL, NS, "rbac-pausable", {"spec": {"suspend": False}})
            cluster.wait_pods("rbac-pausable", 2)
            server.delete(c.PLURAL, NS, "rbac-pausable")
            wait_until(lambda: cluster.job("rbac-pausable") is None, 20, "job deleted")
            time.sleep(0.5)
        finally:
            operator.close()
        used = rbac.operator_requests(server)
    assert {(p.resource, p.verb) for p in used} >= {
        ("pods", "create"),
        ("pods", "delete"),
        (f"{c.PLURAL}/status", "patch"),
        ("events", "create"),
        ("roles", "create"),
    }
    assert operator_refusals(server) == []
    objects = render({})
    missing = sorted(p for p in used if not rbac.allowed(objects, p))
    assert missing == [], f"the chart's RBAC does not allow: {missing}"
