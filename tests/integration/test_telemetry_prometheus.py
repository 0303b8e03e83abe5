"""The Prometheus telemetry source against a real Prometheus server scraping DCGM-format exporters.

One Prometheus (module scope) scrapes four exporters, each standing for a way clusters label GPU series:
  team-a  dcgm-exporter labels pod/namespace, scraped with honor_labels: true (plus an idle GPU, no pod)
  team-b  the same exporter scraped with honor_labels: false from a target labelled with the exporter's
          own pod/namespace (a ServiceMonitor): the job pods' labels arrive as exported_pod/exported_namespace
  team-c  an old exporter's pod_name/pod_namespace
  sim     series labelled source="simulated"
The outage test starts its own server, so stopping it disturbs nothing else.
"""

import asyncio
import math
import os
import time
from datetime import UTC, datetime

import pytest
from dcgm_exporter import DcgmExporter
from prometheus_server import PrometheusServer, ScrapeJob, live_processes, require_prometheus

from etj_operator.energy import EnergyState, integrate
from etj_operator.telemetry.base import PodTarget
from etj_operator.telemetry.prometheus import LABEL_SCHEMES, PrometheusTelemetry

JOBS = 12
PODS_PER_JOB = 2
GPUS_PER_POD = 2


def job_targets(namespace, jobs=JOBS):
    return [PodTarget(namespace, f"job{j}-worker-{r}", f"job{j}") for j in range(jobs) for r in range(PODS_PER_JOB)]


def watts_of(job, replica):
    return 100.0 + 10 * job + replica


@pytest.fixture(scope="module")
def cluster():
    require_prometheus()
    exporters = {
        "team-a": DcgmExporter(idle_gpus=1),
        "team-b": DcgmExporter(hostname="gpu-node-b"),
        "team-c": DcgmExporter(label_scheme="pod_name", hostname="gpu-node-c"),
        "sim": DcgmExporter(simulated=True, hostname="sandbox"),
    }
    for namespace, exporter in exporters.items():
        exporter.start()
        for j in range(JOBS):
            for r in range(PODS_PER_JOB):
                exporter.add_pod(namespace, f"job{j}-worker-{r}", gpus=GPUS_PER_POD, watts=watts_of(j, r))
    jobs = [
        ScrapeJob("dcgm-a", [exporters["team-a"].address]),
        ScrapeJob(
            "dcgm-b",
            [exporters["team-b"].address],
            honor_labels=False,
            target_labels={"namespace": "gpu-operator", "pod": "dcgm-exporter-7xk2p", "container": "exporter"},
        ),
        ScrapeJob("dcgm-c", [exporters["team-c"].address]),
        ScrapeJob("dcgm-sim", [exporters["sim"].address]),
    ]
    server = PrometheusServer(jobs)
    pid = None
    try:
        server.start()
        pid = server.pid
        per_namespace = JOBS * PODS_PER_JOB * GPUS_PER_POD
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{namespace="team-a"}', per_namespace)
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{exported_namespace="team-b"}', per_namespace)
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{pod_namespace="team-c"}', per_namespace)
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{namespace="sim"}', per_namespace)
        yield server, exporters
    finally:
        server.close()
        for exporter in exporters.values():
            exporter.stop()
    assert pid is not None and not _alive(pid) and pid not in live_processes()


def collect(source, targets):
    return asyncio.run(source.collect(targets))


def test_one_query_per_metric_per_cycle_whatever_the_number_of_jobs(cluster):
    server, _ = cluster
    source = PrometheusTelemetry(server.url)
    for jobs in (1, JOBS):
        before = server.query_api_requests()
        result = collect(source, job_targets("team-a", jobs))
        # Counted by Prometheus itself, not only by the source.
        assert server.query_api_requests() - before == 3
        assert result.error is None and result.requests == 3
        assert len(result.samples) == jobs * PODS_PER_JOB * GPUS_PER_POD
    source.close()


def test_series_map_to_their_pods_and_gpus(cluster):
    server, exporters = cluster
    exporter = exporters["team-a"]
    targets = job_targets("team-a")
    result = collect(PrometheusTelemetry(server.url), targets)
    assert result.error is None
    by_pod = {}
    for sample in result.samples:
        by_pod.setdefault(sample.pod, []).append(sample)
    # Only our pods: the idle GPU and the exporter-b pod ("dcgm-exporter-7xk2p") are not targets.
    assert set(by_pod) == {t.pod for t in targets}
    for target in targets:
        samples = by_pod[target.pod]
        job, replica = int(target.job.removeprefix("job")), int(target.pod.rsplit("-", 1)[1])
        assert sorted(s.gpu for s in samples) == sorted(exporter.gpu_uuids("team-a", target.pod))
        for s in samples:
            assert s.namespace == "team-a" and not s.simulated
            assert s.power_watts == watts_of(job, replica)
            assert s.power_limit_watts == 700.0
            assert s.energy_mj is not None and s.energy_mj > 0


def test_power_changes_and_growing_counters_show_up(cluster):
    server, exporters = cluster
    exporter = exporters["team-a"]
    source = PrometheusTelemetry(server.url)
    target = PodTarget("team-a", "job0-worker-0", "job0")
    first = collect(source, [target]).samples
    exporter.set_power("team-a", "job0-worker-0", 555.0)
    exporter.set_limit("team-a", "job0-worker-0", 560.0)
    server.wait_for_scrapes(2)
    second = collect(source, [target]).samples
    try:
        assert {s.power_watts for s in second} == {555.0}
        assert {s.power_limit_watts for s in second} == {560.0}
        before = {s.gpu: s.energy_mj for s in first}
        assert all(s.energy_mj > before[s.gpu] for s in second)
    finally:
        exporter.set_power("team-a", "job0-worker-0", watts_of(0, 0))
        exporter.set_limit("team-a", "job0-worker-0", 700.0)


def test_exported_pod_labels(cluster):
    server, _ = cluster
    targets = job_targets("team-b")
    pod_label, namespace_label = LABEL_SCHEMES["exported_pod"]
    configured = collect(PrometheusTelemetry(server.url, pod_label=pod_label, namespace_label=namespace_label), targets)
    assert configured.error is None
    assert {s.pod for s in configured.samples} == {t.pod for t in targets}
    # With the default labels, pod/namespace name the exporter's own pod: no job pod matches.
    assert collect(PrometheusTelemetry(server.url), targets).samples == []


def test_pod_name_labels(cluster):
    server, _ = cluster
    targets = job_targets("team-c")
    source = PrometheusTelemetry(server.url, pod_label="pod_name", namespace_label="pod_namespace")
    result = collect(source, targets)
    assert result.error is None
    assert len(result.samples) == len(targets) * GPUS_PER_POD
    assert {(s.namespace, s.pod) for s in result.samples} == {(t.namespace, t.pod) for t in targets}


def test_simulated_label_marks_samples(cluster):
    server, _ = cluster
    source = PrometheusTelemetry(server.url)
    simulated = collect(source, job_targets("sim", 2)).samples
    real = collect(source, job_targets("team-a", 2)).samples
    assert simulated and all(s.simulated for s in simulated)
    assert real and not any(s.simulated for s in real)


def test_query_scalar_for_carbon_intensity(cluster):
    server, _ = cluster
    source = PrometheusTelemetry(server.url)
    assert asyncio.run(source.query_scalar("vector(412.5)")) == 412.5
    assert asyncio.run(source.query_scalar('sum(DCGM_FI_DEV_POWER_USAGE{namespace="team-a",pod="job0-worker-1"})')) == (
        watts_of(0, 1) * GPUS_PER_POD
    )
    assert asyncio.run(source.query_scalar("absent_metric_for_carbon")) is None


def rfc3339(seconds):
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reading_after(source, target, after, timeout_seconds=20.0):
    """Collect until the target has a reading scraped after ``after``; returns (result, that sample)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = collect(source, [target])
        fresh = [s for s in result.samples if s.timestamp_seconds > after]
        if fresh:
            (sample,) = fresh
            return result, sample
        assert time.monotonic() < deadline, f"no reading of {target} after {after}: {result}"
        time.sleep(0.2)


def test_a_same_name_pod_on_the_same_gpu_adds_no_foreign_energy(cluster):
    """Job A's pod j-worker-0 ran on a GPU of gpu-node-a; re-created as job B, its namesake lands on that GPU.

    The exporter labels the GPU with the pod's name only (and keeps doing so between the two pods), and a
    same-name series comes from another node. B's energy is what the GPU drew from B's first own reading on.
    """
    server, exporters = cluster
    node_a, node_b = exporters["team-a"], exporters["sim"]  # Hostname gpu-node-a, sandbox
    (gpu,) = node_a.add_pod("reuse", "j-worker-0", gpus=1, watts=300.0)
    (elsewhere,) = node_b.add_pod("reuse", "j-worker-0", gpus=1, watts=500.0)
    try:
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{namespace="reuse"}', 2)
        source = PrometheusTelemetry(server.url)
        job_a, job_b = EnergyState(), EnergyState()
        pod_a = PodTarget("reuse", "j-worker-0", "j", uid="uid-a", node="gpu-node-a", start_time=rfc3339(0))
        result, a1 = reading_after(source, pod_a, 0)
        assert (a1.uid, a1.gpu, a1.node) == ("uid-a", gpu, "gpu-node-a")
        assert result.rejected == 1  # the series from node "sandbox"
        integrate(job_a, [a1], source="Prometheus")
        _, a2 = reading_after(source, pod_a, a1.timestamp_seconds)
        integrate(job_a, [a2], source="Prometheus")
        assert job_a.joules > 0

        # A is gone; the GPU goes on drawing (another job, or idle) under the same labels
        node_a.set_power("reuse", "j-worker-0", 650.0)
        start_b = math.ceil(time.time()) + 2
        pod_b = PodTarget("reuse", "j-worker-0", "j", uid="uid-b", node="gpu-node-a", start_time=rfc3339(start_b))
        # whatever Prometheus answers now was scraped before B's start: an earlier pod's, or another node's
        early = collect(source, [pod_b])
        assert early.error is None and early.samples == [] and early.rejected == 2
        integrate(job_b, early.samples, source="Prometheus")

        result, b1 = reading_after(source, pod_b, start_b - 1)
        assert b1.timestamp_seconds >= start_b and (b1.uid, b1.gpu) == ("uid-b", gpu)
        assert "node 'sandbox'" in result.rejected_reasons["reuse/j-worker-0"]
        integrate(job_b, [b1], source="Prometheus")
        assert job_b.joules == 0  # its first own reading is its baseline
        node_a.set_power("reuse", "j-worker-0", 200.0)
        result, b2 = reading_after(source, pod_b, b1.timestamp_seconds)
        assert elsewhere not in {s.gpu for s in result.samples}
        integrate(job_b, [b2], source="Prometheus")
        source.close()

        def drawn(first, last):  # the GPU's exact energy between two readings (counters read at render)
            served = node_a.served_at_or_after
            return node_a.energy_joules_between(
                "reuse", "j-worker-0", served(first.timestamp_seconds), served(last.timestamp_seconds)
            )

        own, gap = drawn(b1, b2), drawn(a2, b1)
        assert gap > 600  # at least a second at 650 W that was never B's
        assert job_b.joules == pytest.approx(own, rel=1e-3, abs=0.01)
        # what keying by pod name would have counted: from A's last counter, the gap included
        assert (b2.energy_mj - a2.energy_mj) / 1000 == pytest.approx(own + gap, rel=1e-3, abs=0.01)
        assert set(job_b.series) == {f"uid-b/{gpu}"}
    finally:
        node_a.remove_pod("reuse", "j-worker-0")
        node_b.remove_pod("reuse", "j-worker-0")


def test_outage_gives_an_error_then_recovers():
    require_prometheus()
    with DcgmExporter() as exporter:
        exporter.add_pod("ml", "w-0", gpus=2, watts=250.0)
        server = PrometheusServer([ScrapeJob("dcgm", [exporter.address])])
        try:
            server.start()
            server.wait_for_series('DCGM_FI_DEV_POWER_MGMT_LIMIT{pod="w-0"}', 2)
            source = PrometheusTelemetry(server.url, timeout_seconds=2)
            target = PodTarget("ml", "w-0", "job")
            assert len(collect(source, [target]).samples) == 2

            pid = server.pid
            server.stop()
            assert pid is not None and not _alive(pid)
            down = collect(source, [target])  # must not raise
            assert down.samples == [] and down.error is not None and server.url in down.error

            server.start(wait_up=False)  # same port and storage: the stored samples answer at once
            pid = server.pid
            server.wait_for_series('DCGM_FI_DEV_POWER_USAGE{pod="w-0"}', 2)
            back = collect(source, [target])
            assert back.error is None and {s.power_watts for s in back.samples} == {250.0}
            source.close()
        finally:
            server.close()
    assert not _alive(pid) and pid not in live_processes()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
