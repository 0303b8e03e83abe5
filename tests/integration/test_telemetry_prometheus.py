"""The Prometheus telemetry source against a real Prometheus server scraping DCGM-format exporters.

One Prometheus (module scope) scrapes these exporters, each standing for a way clusters label GPU series:
  team-a  dcgm-exporter labels pod/namespace, scraped with honor_labels: true (plus an idle GPU, no pod)
  team-b  the same exporter scraped with honor_labels: false from a target labelled with the exporter's
          own pod/namespace (a ServiceMonitor): the job pods' labels arrive as exported_pod/exported_namespace
  team-c  an old exporter's pod_name/pod_namespace, scraped with honor_labels: true
  team-d  the old exporter scraped with honor_labels: false: pod_name names the holder, pod the exporter
  sim     series labelled source="simulated"
  dup     one exporter scraped by two jobs: every GPU twice
  nomap   an exporter without pod mapping (GPU series without any pod label), job dcgm-nomap
  spoof   a pod's own /metrics (Hostname: the pod's name) serving seven GPUs at 5 MW beside the node
          exporter's one real GPU of that pod (node gpu-node-s, no node agent)
  held    the same on node gpu-node-t, where the node agent (its real /metrics) lists the real GPU
Every scheme is read by one source without configuration. The outage test starts its own server, so
stopping it disturbs nothing else.
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
from etj_operator.nodeagent.gpus import GpuError
from etj_operator.nodeagent.metrics import AgentSnapshot, GpuStatus, MetricsServer, render
from etj_operator.nodeagent.records import Decision, GpuDevice, Holder, UnknownDevice
from etj_operator.telemetry.base import AgentFindings, AgentGpuError, AgentUnknownDevice, PodTarget, TelemetryCause
from etj_operator.telemetry.hub import JobRegistration, TelemetryHub
from etj_operator.telemetry.prometheus import PrometheusTelemetry

JOBS = 12
PODS_PER_JOB = 2
GPUS_PER_POD = 2


def job_targets(namespace, jobs=JOBS):
    return [PodTarget(namespace, f"job{j}-worker-{r}", f"job{j}") for j in range(jobs) for r in range(PODS_PER_JOB)]


def watts_of(job, replica):
    return 100.0 + 10 * job + replica


SCHEMES = ("team-a", "team-b", "team-c", "team-d")
SPOOFED = 7


def agent_metrics(node, real_uuid, namespace, pod):
    """The node agent's /metrics for a node of two GPUs: the real one held by ``namespace/pod``, one idle."""
    held = GpuDevice(real_uuid, 0, "NVIDIA H100", 200_000, 700_000, 700_000, "00000000:01:00.0")
    idle = GpuDevice("GPU-idle-on-" + node, 1, "NVIDIA H100", 200_000, 700_000, 700_000, "00000000:02:00.0")
    holder = Holder(namespace, pod, "trainer", job_uid="job-uid")
    snapshot = AgentSnapshot(
        node,
        "nvml",
        gpus=[
            GpuStatus(
                held,
                Decision(held, "set", 450_000, "JobLimit", (holder,), "job-uid"),
                # NVML refused the job's limit on its GPU (what PowerCapEnforced names: AgentApplyFailed)
                errors=(GpuError("refused", kind="NoPermission", operation="set", uuid=real_uuid, index=0),),
            ),
            GpuStatus(idle, Decision(idle, "set", 700_000, "NotHeld")),
        ],
        unknown_devices=[UnknownDevice("MIG-gone", namespace, pod, "trainer")],
    )
    return MetricsServer(lambda: render(snapshot), lambda: True, port=0, host="127.0.0.1").start()


@pytest.fixture(scope="module")
def cluster():
    require_prometheus()
    exporters = {
        "team-a": DcgmExporter(idle_gpus=1),
        "team-b": DcgmExporter(hostname="gpu-node-b"),
        "team-c": DcgmExporter(label_scheme="pod_name", hostname="gpu-node-c"),
        "team-d": DcgmExporter(label_scheme="pod_name", hostname="gpu-node-d"),
        "sim": DcgmExporter(simulated=True, hostname="sandbox"),
        "dup": DcgmExporter(hostname="gpu-node-dup"),
    }
    for namespace, exporter in exporters.items():
        exporter.start()
        for j in range(JOBS):
            for r in range(PODS_PER_JOB):
                exporter.add_pod(namespace, f"job{j}-worker-{r}", gpus=GPUS_PER_POD, watts=watts_of(j, r))
    exporters["nomap"] = DcgmExporter(idle_gpus=2, hostname="gpu-node-n").start()
    real = {}
    for namespace, node in (("spoof", "gpu-node-s"), ("held", "gpu-node-t")):
        exporters[f"{namespace}-node"] = DcgmExporter(hostname=node).start()
        (real[namespace],) = exporters[f"{namespace}-node"].add_pod(namespace, "j-worker-0", gpus=1, watts=350.0)
        exporters[f"{namespace}-pod"] = DcgmExporter(hostname="j-worker-0").start()  # the pod's own /metrics
        exporters[f"{namespace}-pod"].add_pod(namespace, "j-worker-0", gpus=SPOOFED, watts=5_000_000.0)
    agent = agent_metrics("gpu-node-t", real["held"], "held", "j-worker-0")
    operator_target = {"namespace": "gpu-operator", "container": "exporter"}
    jobs = [
        ScrapeJob("dcgm-a", [exporters["team-a"].address]),
        ScrapeJob(
            "dcgm-b",
            [exporters["team-b"].address],
            honor_labels=False,
            target_labels={**operator_target, "pod": "dcgm-exporter-7xk2p"},
        ),
        ScrapeJob("dcgm-c", [exporters["team-c"].address]),
        ScrapeJob(
            "dcgm-d",
            [exporters["team-d"].address],
            honor_labels=False,
            target_labels={**operator_target, "pod": "dcgm-exporter-old-9q8w"},
        ),
        ScrapeJob("dcgm-sim", [exporters["sim"].address]),
        ScrapeJob("dcgm-dup-1", [exporters["dup"].address]),
        ScrapeJob("dcgm-dup-2", [exporters["dup"].address]),
        ScrapeJob("dcgm-nomap", [exporters["nomap"].address]),
        ScrapeJob("dcgm-nodes", [exporters["spoof-node"].address, exporters["held-node"].address]),
        ScrapeJob("workers", [exporters["spoof-pod"].address, exporters["held-pod"].address]),
        ScrapeJob("node-agent", [f"127.0.0.1:{agent.port}"]),
    ]
    server = PrometheusServer(jobs)
    pid = None
    try:
        server.start()
        pid = server.pid
        per_namespace = JOBS * PODS_PER_JOB * GPUS_PER_POD
        for selector in (
            'namespace="team-a"',
            'exported_namespace="team-b"',
            'pod_namespace="team-c"',
            'pod_namespace="team-d"',
            'namespace="sim"',
        ):
            server.wait_for_series(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{selector}}}", per_namespace)
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{namespace="dup"}', 2 * per_namespace)
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{job="dcgm-nomap"}', 2)
        server.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{namespace=~"spoof|held"}', 2 * (1 + SPOOFED))
        server.wait_for_series('etj_node_agent_desired_power_limit_watts{Hostname="gpu-node-t"}', 2)
        yield server, exporters, real
    finally:
        server.close()
        agent.stop()
        for exporter in exporters.values():
            exporter.stop()
    assert pid is not None and not _alive(pid) and pid not in live_processes()


def collect(source, targets):
    return asyncio.run(source.collect(targets))


def test_one_query_per_metric_per_cycle_whatever_the_number_of_jobs(cluster):
    server, *_ = cluster
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
    server, exporters, _ = cluster
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
    server, exporters, _ = cluster
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


@pytest.mark.parametrize("namespace", SCHEMES)
def test_every_label_scheme_is_read_without_configuration(cluster, namespace):
    server, exporters, _ = cluster
    targets = job_targets(namespace)
    result = collect(PrometheusTelemetry(server.url), targets)
    assert result.error is None and result.rejected == 0
    assert len(result.samples) == len(targets) * GPUS_PER_POD
    for target in targets:
        gpus = sorted(s.gpu for s in result.samples if s.pod == target.pod)
        assert gpus == sorted(exporters[namespace].gpu_uuids(namespace, target.pod))


def test_one_source_reads_every_scheme_in_one_query_per_metric(cluster):
    server, *_ = cluster
    source = PrometheusTelemetry(server.url)
    targets = [t for namespace in SCHEMES for t in job_targets(namespace)]
    before = server.query_api_requests()
    result = collect(source, targets)
    assert server.query_api_requests() - before == 3 and result.requests == 3
    assert len(result.samples) == len(targets) * GPUS_PER_POD
    # under honor_labels: false the series' own pod is the exporter's: not a holder, not a managed pod
    assert not {s.pod for s in result.samples} & {"dcgm-exporter-7xk2p", "dcgm-exporter-old-9q8w"}
    source.close()


def test_a_configured_scheme_is_an_override(cluster):
    server, *_ = cluster
    targets = job_targets("team-b")
    assert collect(PrometheusTelemetry(server.url, pod_label="pod", namespace_label="namespace"), targets).samples == []
    configured = collect(PrometheusTelemetry(server.url, pod_label="exported_pod"), targets)
    assert {s.pod for s in configured.samples} == {t.pod for t in targets}


def test_gpu_series_without_any_pod_label_are_named_in_the_jobs_condition(cluster):
    server, *_ = cluster
    source = PrometheusTelemetry(server.url, extra_matchers='job="dcgm-nomap"')
    result = collect(source, job_targets("team-a", 1))
    assert result.error is None and result.samples == []
    assert {"Hostname", "UUID", "gpu", "instance", "job", "modelName"} <= set(result.labels_seen)
    assert not {"pod", "exported_pod", "pod_name"} & set(result.labels_seen)
    hub = TelemetryHub(lambda kind, url: source)
    hub.register(JobRegistration(("team-a", "job0"), "Prometheus", server.url, tuple(job_targets("team-a", 1))))
    asyncio.run(hub.run_cycle())
    delivery = hub.take(("team-a", "job0"))
    assert delivery.cause == TelemetryCause.LABEL_MISMATCH and "carry the labels Hostname, UUID" in delivery.reason
    source.close()


def test_a_gpu_scraped_twice_counts_once(cluster):
    server, *_ = cluster
    targets = job_targets("dup")
    result = collect(PrometheusTelemetry(server.url), targets)
    assert result.error is None and len(result.samples) == len(targets) * GPUS_PER_POD
    assert len({s.series for s in result.samples}) == len(result.samples)
    assert result.rejected_by_kind == {"duplicate": len(targets) * GPUS_PER_POD}
    reason = result.rejected_reasons["dup/job0-worker-0"]
    assert reason.startswith("GPU GPU-") and "also read from dcgm-dup-" in reason


def test_seven_spoofed_gpus_do_not_count_for_a_pod_that_requested_one(cluster):
    server, _, real = cluster
    target = PodTarget("spoof", "j-worker-0", "j", uid="uid-s", node="gpu-node-s", gpus=1)
    result = collect(PrometheusTelemetry(server.url), [target])
    (sample,) = result.samples
    # the node exporter's series wins over the pod's own: the same one every cycle
    assert (sample.gpu, sample.power_watts, sample.node) == (real["spoof"], 350.0, "gpu-node-s")
    assert result.rejected_by_kind == {"too_many_gpus": SPOOFED}
    # without a GPU request the operator cannot tell (no node agent on gpu-node-s): all eight count
    unknown = collect(PrometheusTelemetry(server.url), [PodTarget("spoof", "j-worker-0", "j", node="gpu-node-s")])
    assert len(unknown.samples) == 1 + SPOOFED


def test_where_the_node_agent_runs_its_pod_to_gpu_map_decides(cluster):
    server, _, real = cluster
    for gpus in (1, None):
        target = PodTarget("held", "j-worker-0", "j", uid="uid-t", node="gpu-node-t", gpus=gpus)
        result = collect(PrometheusTelemetry(server.url), [target])
        (sample,) = result.samples
        assert (sample.gpu, sample.power_watts, sample.power_limit_watts) == (real["held"], 350.0, 700.0)
        assert result.rejected_by_kind == {"not_held": SPOOFED}
        assert "does not list GPU" in result.rejected_reasons["held/j-worker-0"]
        # the agent's own word on the pod's GPU, from its real /metrics through Prometheus
        assert result.agent["uid-t"] == AgentFindings(
            read=True,
            gpu_errors=(AgentGpuError("gpu-node-t", real["held"], "set", "NoPermission"),),
            unknown_devices=(AgentUnknownDevice("gpu-node-t", "held/j-worker-0", "MIG-gone"),),
        )


def test_a_node_without_the_agents_series_is_named(cluster):
    server, *_ = cluster
    target = PodTarget("spoof", "j-worker-0", "j", uid="u", node="gpu-node-s")
    result = collect(PrometheusTelemetry(server.url), [target])
    assert result.agent["u"] == AgentFindings(read=True, nodes_without_agent=("gpu-node-s",))


def test_simulated_label_marks_samples(cluster):
    server, *_ = cluster
    source = PrometheusTelemetry(server.url)
    simulated = collect(source, job_targets("sim", 2)).samples
    real = collect(source, job_targets("team-a", 2)).samples
    assert simulated and all(s.simulated for s in simulated)
    assert real and not any(s.simulated for s in real)


def test_query_scalar_for_carbon_intensity(cluster):
    server, *_ = cluster
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
    server, exporters, _ = cluster
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
