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
import os

import pytest
from dcgm_exporter import DcgmExporter
from prometheus_server import PrometheusServer, ScrapeJob, live_processes, require_prometheus

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
