"""Chaos: Prometheus goes away mid-run and the operator is SIGKILLed during the outage.

While Prometheus is down the jobs keep running (and drawing power); the operator says so on the job
(TelemetryAvailable=False), takes no decision on missing data and never lowers the energy total. A fresh
operator process comes up during the outage. When Prometheus is back, the energy counters cover the outage:
each job's total matches the exporter's exact ground truth within 1%.
"""

from __future__ import annotations

import time

import pytest
from chaos_support import (
    SUCCEED,
    ChaosOperator,
    Lifecycle,
    PodCreations,
    Report,
    ScriptedKubelet,
    check_outcomes,
    energy_errors,
    leftover_pods,
)

from etj_operator import contract as c

from emulated import NS, wait_until

pytestmark = pytest.mark.slow


def condition(server, name, ctype):
    status = (server.get(c.PLURAL, NS, name) or {}).get("status") or {}
    return next((x for x in status.get("conditions") or [] if x["type"] == ctype), {})


def blind(server, name):
    return condition(server, name, "TelemetryAvailable").get("status") == "False"


def energy(server, name):
    return ((server.get(c.PLURAL, NS, name) or {}).get("status") or {}).get("energy") or {}


def test_prometheus_outage_and_an_operator_kill_lose_no_energy(chaos_server, exporter, prometheus, chaos_env, tmp_path):
    server = chaos_server
    scripts = [
        Lifecycle(
            name=f"blind-{i}",
            kind="succeed",
            replicas=2,
            outcomes=[SUCCEED],
            backoff_limit=1,
            clean_pod_policy="Running",
            run_seconds=1e9,  # ended by the test once the outage is over
            fail_index=0,
            watts=watts,
            expected_phase="Succeeded",
            expected_restarts=0,
        )
        for i, watts in enumerate((250.0, 500.0))
    ]
    creations = PodCreations(server)
    operator = ChaosOperator(chaos_env, tmp_path)
    operator.start("thread")
    try:
        with ScriptedKubelet(server, exporter) as kubelet:
            for script in scripts:
                kubelet.add(script)
                server.create(c.PLURAL, script.manifest(energy=True), namespace=NS)
            wait_until(
                lambda: all(
                    (g := kubelet.gangs.get(s.name)) is not None and g.powered_at is not None for s in scripts
                ),
                30,
                "every gang drawing power",
            )
            wait_until(lambda: all(energy(server, s.name).get("joules", 0) > 0 for s in scripts), 20, "energy")
            prometheus.stop()
            try:
                wait_until(
                    lambda: all(blind(server, s.name) for s in scripts),
                    20,
                    "TelemetryAvailable=False on every job",
                )
                assert "Prometheus unavailable" in condition(server, scripts[0].name, "TelemetryAvailable")["message"]
                during = {s.name: energy(server, s.name)["joules"] for s in scripts}
                operator.stop(hard=False)  # the thread incarnation first; then a process, SIGKILLed
                operator.start("process")
                operator.stop(hard=True)
                operator.start("process")
                time.sleep(2.0)
                for s in scripts:  # no readings, no change: nothing is estimated while blind
                    assert energy(server, s.name)["joules"] == during[s.name]
                outage_end = time.time()
            finally:
                prometheus.start()
            wait_until(
                lambda: all(
                    min(float(e["t"]) for e in energy(server, s.name)["series"].values()) > outage_end + 1
                    for s in scripts
                ),
                40,
                "readings of every GPU after the outage",
            )
            for s in scripts:
                assert condition(server, s.name, "TelemetryAvailable").get("status") == "True"
                assert energy(server, s.name)["joules"] > during[s.name]
                s.run_seconds = 0.0  # the harness finishes now
            wait_until(
                lambda: all(energy(server, s.name) and s.name in kubelet.gangs and kubelet.gangs[s.name].done
                            for s in scripts),
                20,
                "the gangs to finish",
            )
            wait_until(lambda: not check_outcomes(server, scripts), 30, "every job Succeeded")
            assert not kubelet.energy_decreases, kubelet.energy_decreases
            assert not kubelet.errors, kubelet.errors
            report = Report(lifecycles=len(scripts))
            energy_errors(server, exporter, scripts, report)
            print(report.line())
            assert report.max_energy_error <= 0.01, report.energy_errors
            assert creations.duplicates() == {}
            wait_until(lambda: not leftover_pods(server, scripts), 20, "finished gangs cleaned up")
    finally:
        operator.close()
