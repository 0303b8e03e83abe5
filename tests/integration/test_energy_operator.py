"""The operator's energy loop end to end: real Prometheus scraping a DCGM-format exporter, the real operator
against the emulator. The test plays the kubelet and the harness (the exporter's power follows the per-GPU
limit the operator asks for, and the checkpoint acknowledgement is written as the harness writes it)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from dcgm_exporter import DcgmExporter
from prometheus_server import PrometheusServer, ScrapeJob, find_prometheus

from etj_operator import contract as c
from etj_operator.runner import OperatorThread

from emulated import NS, Cluster, operator_kubeconfig, rbac_server, wait_until
from jobs import job_manifest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_prometheus() is None, reason="needs the Debian 'prometheus' binary (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def exporter():
    with DcgmExporter() as exp:
        yield exp


@pytest.fixture(scope="module")
def prometheus(exporter):
    with PrometheusServer([ScrapeJob("dcgm", [exporter.address])], scrape_interval_seconds=1.0) as prom:
        yield prom


@pytest.fixture
def cluster(prometheus, tmp_path, monkeypatch):
    with rbac_server() as server:  # the operator as the chart's ServiceAccount, under the chart's rules
        monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(server, tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_TELEMETRY_INTERVAL_SECONDS", "1")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        monkeypatch.setenv("ETJ_PROMETHEUS_URL", prometheus.url)
        monkeypatch.setenv("ETJ_CHECKPOINT_TIMEOUT_SECONDS", "60")
        monkeypatch.setenv("ETJ_CAP_GRACE_SECONDS", "3")
        with OperatorThread():
            yield Cluster(server)


def start_job(cluster, exporter, name, watts, **spec):
    spec.setdefault("energy", {})["telemetry"] = {"source": "Prometheus", "intervalSeconds": 1}
    for i in range(spec.get("replicas", 2)):
        exporter.add_pod(NS, f"{name}-worker-{i}", gpus=1, watts=watts)
    cluster.apply(job_manifest(name, **spec))
    cluster.wait_pods(name, spec.get("replicas", 2))
    cluster.set_phase(name, "Running")


def follow_limit(cluster, exporter, name, demand_watts, replicas=2):
    """Play the enforcer (node agent) and the GPU: apply the operator's per-GPU limit, so the exporter reports
    it, and draw the demand, or the limit if lower."""
    limit = (cluster.status(name).get("control") or {}).get(c.CONTROL_POWER_LIMIT_WATTS_PER_GPU)
    watts = demand_watts if limit is None else min(demand_watts, limit)
    for i in range(replicas):
        exporter.set_limit(NS, f"{name}-worker-{i}", 700.0 if limit is None else float(limit))
        exporter.set_power(NS, f"{name}-worker-{i}", watts)
    return limit


def test_energy_matches_ground_truth_and_throttle_caps_then_releases(cluster, exporter):
    start_job(cluster, exporter, "acct", 400.0, replicas=2, energy={"power": {"budgetWatts": 600}})
    # over budget (800 W > 600 W): capped at 300 W per GPU, phase Throttled
    wait_until(lambda: follow_limit(cluster, exporter, "acct", 400.0) == 300, 20, "a 300 W per-GPU cap")
    status = cluster.wait_phase("acct", "Throttled")  # once the GPUs report the cap, not before
    assert any(x["type"] == "Throttled" and x["status"] == "True" for x in status["conditions"])
    assert any(x["type"] == "PowerCapEnforced" and x["status"] == "True" for x in status["conditions"])
    follow_limit(cluster, exporter, "acct", 400.0)
    time.sleep(3)  # a few cycles at the cap
    # demand drops below 85% of the budget: released after three low cycles
    for i in range(2):
        exporter.set_power(NS, f"acct-worker-{i}", 200.0)
    wait_until(
        lambda: "control" in cluster.status("acct")
        and cluster.status("acct")["control"].get(c.CONTROL_POWER_LIMIT_WATTS_PER_GPU) is None,
        20,
        "the cap released",
    )
    status = cluster.wait_phase("acct", "Running")
    energy = status["energy"]
    assert energy["source"] == "Prometheus" and energy["simulated"] is False
    # ground truth: the exporter's own integral between the first and the last sample the operator used
    # (sample times are scrape starts; the counters were read when the exporter rendered them)
    t0 = exporter.served_at_or_after(energy["history"][0][0])
    # lastSampleTime is RFC 3339 (to the microsecond), as every ...Time field of the status
    last = datetime.fromisoformat(energy["lastSampleTime"].replace("Z", "+00:00")).timestamp()
    t1 = exporter.served_at_or_after(last)
    truth = sum(exporter.energy_joules_between(NS, f"acct-worker-{i}", t0, t1) for i in range(2))
    assert t1 - t0 > 5
    assert energy["joules"] == pytest.approx(truth, rel=0.01)
    assert energy["peakWatts"] >= 790
    assert status["energy"]["kilowattHours"] == pytest.approx(energy["joules"] / 3.6e6, rel=1e-3)


def test_a_cap_nothing_applies_is_not_shown_as_throttled_and_is_warned_about(cluster, exporter):
    """The exporter keeps reporting 700 W limits (no enforcer): the job never shows Throttled."""
    start_job(cluster, exporter, "unenforced", 400.0, replicas=2, energy={"power": {"budgetWatts": 600}})
    status = wait_until(
        lambda: (s := cluster.status("unenforced")).get("control", {}).get(c.CONTROL_POWER_LIMIT_WATTS_PER_GPU) and s,
        20,
        "a cap asked",
    )
    verdict = wait_until(
        lambda: next(
            (x for x in cluster.status("unenforced").get("conditions", [])
             if x["type"] == "PowerCapEnforced" and x["reason"] == "LimitNotApplied"),
            None,
        ),
        30,
        "PowerCapEnforced=False after the grace",
    )
    assert verdict["status"] == "False" and "700 W" in verdict["message"]
    status = cluster.status("unenforced")
    assert status["phase"] == "Running"
    assert not any(x["type"] == "Throttled" and x["status"] == "True" for x in status["conditions"])
    def warnings() -> list[dict]:
        events = cluster.server.list("events", NS, field_selector="involvedObject.name=unenforced")
        return [e for e in events if e.get("reason") == "PowerCapNotEnforced"]

    wait_until(warnings, 10, "the PowerCapNotEnforced Warning")
    time.sleep(2)  # more cycles, still unenforced: no second Warning for the same cap
    assert [e["type"] for e in warnings()] == ["Warning"]
    # the history draws the limit measured (700 W), never the 300 W asked
    assert {point[2] for point in status["energy"]["history"][-3:]} == {700.0}


def test_energy_budget_stop_requests_a_checkpoint_first(cluster, exporter):
    start_job(
        cluster,
        exporter,
        "capped",
        500.0,
        replicas=2,
        checkpoint={"path": "/ckpt"},
        energy={"energyBudget": {"kilowattHours": 0.0008, "action": "Stop"}},  # 2880 J: about 3 s at 1 kW
    )
    status = wait_until(
        lambda: (s := cluster.status("capped")).get("control", {}).get(c.CONTROL_CHECKPOINT_REQUESTED) and s,
        30,
        "a checkpoint request",
    )
    assert status["control"][c.CONTROL_STOP_REQUESTED] is True
    assert status["phase"] != "Failed"  # it waits for the checkpoint before stopping the pods
    assert len(cluster.live_pods("capped")) == 2
    # the harness saves and acknowledges
    # the harness's acknowledgement goes to the job's report (its pods may write nothing else)
    cluster.server.patch_status(c.REPORT_PLURAL, NS, "capped", {"checkpoint": {"acknowledged": 1}})
    status = cluster.wait_phase("capped", "Failed")
    failed = next(x for x in status["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "EnergyBudgetExceeded"
    wait_until(lambda: not cluster.live_pods("capped"), 10, "pods stopped")


def test_prometheus_outage_stops_decisions_then_recovers(cluster, exporter, prometheus):
    start_job(cluster, exporter, "blind", 200.0, replicas=2, energy={"power": {"budgetWatts": 600}})
    wait_until(
        lambda: any(
            x["type"] == "TelemetryAvailable" and x["status"] == "True"
            for x in cluster.status("blind").get("conditions", [])
        ),
        20,
        "telemetry available",
    )
    prometheus.stop()
    try:
        status = wait_until(
            lambda: next(
                (
                    s
                    for s in [cluster.status("blind")]
                    for x in s.get("conditions", [])
                    if x["type"] == "TelemetryAvailable" and x["status"] == "False"
                ),
                None,
            ),
            20,
            "TelemetryAvailable=False",
        )
        reason = next(x for x in status["conditions"] if x["type"] == "TelemetryAvailable")["message"]
        assert "Prometheus unavailable" in reason
        joules_during = status["energy"]["joules"]
        # demand far over budget while blind: no throttle decision on missing data
        for i in range(2):
            exporter.set_power(NS, f"blind-worker-{i}", 700.0)
        time.sleep(3)
        status = cluster.status("blind")
        assert (status.get("control") or {}).get(c.CONTROL_POWER_LIMIT_WATTS_PER_GPU) is None
        assert status["energy"]["joules"] == joules_during
    finally:
        prometheus.start()
    # recovery: readings again, and the decision taken on fresh data
    wait_until(
        lambda: (cluster.status("blind").get("control") or {}).get(c.CONTROL_POWER_LIMIT_WATTS_PER_GPU) == 300,
        30,
        "the throttle after recovery",
    )
    status = cluster.status("blind")
    assert any(x["type"] == "TelemetryAvailable" and x["status"] == "True" for x in status["conditions"])
    # the energy of the outage is not lost: the counters cover it
    assert status["energy"]["joules"] > joules_during


def test_a_job_without_series_shows_unknown_energy_and_a_warning_naming_the_cause(cluster, exporter):
    """Prometheus answers, but nothing exports these pods' GPUs: unknown ('-'), never 0, and the cause named."""
    spec = {"energy": {"telemetry": {"source": "Prometheus", "intervalSeconds": 1}}}
    cluster.apply(job_manifest("unseen", replicas=2, **spec))  # no exporter.add_pod: no series for its pods
    cluster.wait_pods("unseen", 2)
    cluster.set_phase("unseen", "Running")
    status = wait_until(
        lambda: (s := cluster.status("unseen"))
        and any(x["type"] == "TelemetryAvailable" and x["status"] == "False" for x in s.get("conditions", []))
        and s,
        20,
        "TelemetryAvailable=False",
    )
    verdict = next(x for x in status["conditions"] if x["type"] == "TelemetryAvailable")
    assert verdict["reason"] == "NoSeries" and "unknown" in verdict["message"]
    energy = status.get("energy") or {}
    assert "kilowattHours" not in energy and "joules" not in energy and "currentWatts" not in energy
    assert energy.get("display") == {"power": "-", "energy": "-"}

    def warnings() -> list[dict]:
        events = cluster.server.list("events", NS, field_selector="involvedObject.name=unseen")
        return [e for e in events if e.get("reason") == "TelemetryUnavailable"]

    warned = wait_until(warnings, 10, "the TelemetryUnavailable Warning")
    assert warned[0]["type"] == "Warning" and warned[0]["message"].startswith("NoSeries:")
    time.sleep(2)  # more cycles, same cause: no second Warning
    assert len(warnings()) == 1 and warnings()[0].get("count", 1) == 1
