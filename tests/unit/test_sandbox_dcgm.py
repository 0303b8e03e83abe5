"""The sandbox node's simulated DCGM exporter: power from a pod's activity, capped by the node GPU's limit.

Driven by hand: a fake clock and a fake activity source (CPU seconds per pod tag), the node's real simulated
GPU state file (the node agent's backend), :meth:`NodeDcgmExporter.sample` called by the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from etj_contract import names as n
from etj_operator.nodeagent.gpus import H100_LIKE, SIMULATED_MODEL, SimulatedBackend
from etj_operator.sandbox.agents import Series, parse_metrics
from etj_operator.sandbox.dcgm import METRIC_GPU_UTIL, CardPower, NodeDcgmExporter, ProcessCpu, read_node_gpus
from etj_operator.sandbox.kubelet import ENV_POD_TAG, ENV_STATE_TAG, PodGpus
from etj_operator.sandbox.prometheus import SandboxPrometheus, find_prometheus

pytestmark = pytest.mark.timeout(60)

NODE = "node-a"


class FakeActivity:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def cpu_seconds(self) -> dict[str, float]:
        return dict(self.seconds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(tmp_path: Path) -> SimulatedBackend:
    return SimulatedBackend(tmp_path / "nodes" / NODE, NODE, count=3)


def make(node: SimulatedBackend, holders: list[PodGpus]) -> tuple[NodeDcgmExporter, FakeActivity, FakeClock]:
    activity, clock = FakeActivity(), FakeClock()
    exporter = NodeDcgmExporter(NODE, node.path, lambda: holders, activity=activity, clock=clock)
    return exporter, activity, clock


def uuids(node: SimulatedBackend) -> list[str]:
    return [d.uuid for d in sorted(node.inventory().devices, key=lambda d: d.index)]


def set_limit(node: SimulatedBackend, uuid: str, watts: int) -> None:
    [device] = [d for d in node.inventory().devices if d.uuid == uuid]
    node.set_limit(device, watts * 1000)


def test_the_card_is_the_harness_power_model_calibration():
    """The operator may not import etj_workload; the exporter's constants are held to the harness's model here."""
    from etj_workload import power_model

    model = power_model.H100_SXM
    card = CardPower()
    assert (card.idle_watts, card.max_watts) == (model.idle_watts, model.max_watts)
    assert (H100_LIKE.min_watts, H100_LIKE.max_watts, H100_LIKE.default_watts) == (
        model.min_limit_watts, model.max_limit_watts, model.default_limit_watts)
    for limit in range(100, 801, 10):
        expected = power_model.busy_power_watts(model, limit)
        assert card.busy_watts(limit, model.min_limit_watts, model.max_limit_watts) == pytest.approx(expected)
        # a fully busy card under the limit draws what the harness's simulated GPU draws when busy
        assert card.power_watts(1.0, limit, model.min_limit_watts, model.max_limit_watts) == pytest.approx(expected)
    assert card.power_watts(0.0, 250, 200, 700) == model.idle_watts


def test_an_idle_gpu_draws_idle_power_and_a_busy_pod_draws_its_demand_capped_by_the_limit(node):
    gpu0, gpu1, gpu2 = uuids(node)
    holder = PodGpus("ml", "w-0", "uid-0", "trainer", (gpu1,))
    exporter, activity, clock = make(node, [holder])
    activity.seconds = {holder.tag: 10.0, "other/pod/x": 3.0}
    first = exporter.sample()  # the baseline: no interval yet, no energy
    assert [r.power_watts for r in first] == [70.0, 70.0, 70.0]
    assert [r.energy_mj for r in first] == [0.0, 0.0, 0.0]

    clock.now += 2.0
    activity.seconds[holder.tag] += 2.0  # one busy core for its one GPU: fully busy
    readings = {r.gpu.uuid: r for r in exporter.sample()}
    assert readings[gpu1].load == 1.0 and readings[gpu1].power_watts == 700.0
    assert readings[gpu1].holder == holder and readings[gpu0].holder is None
    assert readings[gpu1].energy_mj == pytest.approx(700.0 * 2.0 * 1000)
    assert readings[gpu0].power_watts == readings[gpu2].power_watts == 70.0
    assert readings[gpu0].energy_mj == pytest.approx(70.0 * 2.0 * 1000)

    set_limit(node, gpu1, 250)  # what the node agent does: the card's limiter holds the draw at it
    clock.now += 1.0
    activity.seconds[holder.tag] += 1.0
    readings = {r.gpu.uuid: r for r in exporter.sample()}
    assert readings[gpu1].power_watts == 250.0 and readings[gpu1].gpu.limit_watts == 250.0
    assert readings[gpu1].energy_mj == pytest.approx((1400.0 + 250.0) * 1000)

    clock.now += 1.0
    activity.seconds[holder.tag] += 0.5  # half busy: demand 70 + 0.5 * 630 = 385 W, still over the cap
    assert {r.gpu.uuid: r.power_watts for r in exporter.sample()}[gpu1] == 250.0
    set_limit(node, gpu1, 700)
    clock.now += 1.0
    activity.seconds[holder.tag] += 0.5
    assert {r.gpu.uuid: r.power_watts for r in exporter.sample()}[gpu1] == pytest.approx(385.0)
    clock.now += 1.0  # no CPU used: the card idles
    assert {r.gpu.uuid: r.power_watts for r in exporter.sample()}[gpu1] == 70.0


def test_a_pod_with_two_gpus_spreads_its_cores_over_them(node):
    gpu0, gpu1, _ = uuids(node)
    holder = PodGpus("ml", "w-0", "uid-0", "trainer", (gpu0, gpu1))
    exporter, activity, clock = make(node, [holder])
    activity.seconds = {holder.tag: 0.0}
    exporter.sample()
    clock.now += 1.0
    activity.seconds[holder.tag] = 1.0  # one core for two GPUs: each half busy
    readings = exporter.sample()
    assert [r.load for r in readings[:2]] == [0.5, 0.5]
    assert readings[0].power_watts == pytest.approx(385.0)


def test_a_pod_seen_for_the_first_time_reads_idle_until_its_next_sample(node):
    _, gpu1, _ = uuids(node)
    holders: list[PodGpus] = []
    activity, clock = FakeActivity(), FakeClock()
    exporter = NodeDcgmExporter(NODE, node.path, lambda: holders, activity=activity, clock=clock)
    exporter.sample()
    holder = PodGpus("ml", "w-0", "uid-0", "trainer", (gpu1,))
    holders.append(holder)
    activity.seconds = {holder.tag: 50.0}  # CPU time from before this exporter saw it: not this interval's
    clock.now += 1.0
    assert exporter.sample()[1].power_watts == 70.0
    activity.seconds[holder.tag] += 1.0
    clock.now += 1.0
    assert exporter.sample()[1].power_watts == 700.0


def by_name(series: list[Series], name: str) -> list[Series]:
    return [s for s in series if s.name == name]


def test_the_exposition_is_dcgm_exporters_format_and_says_simulated(node):
    gpu0, gpu1, _ = uuids(node)
    holder = PodGpus("ml", "w-0", "uid-0", "trainer", (gpu1,))
    exporter, activity, clock = make(node, [holder])
    activity.seconds = {holder.tag: 0.0}
    exporter.sample()
    clock.now += 1.0
    activity.seconds[holder.tag] = 0.25
    exporter.sample()
    text = exporter.render()
    power_lines = [line for line in text.splitlines() if line.startswith(n.METRIC_POWER_USAGE + "{")]
    assert power_lines[1] == (
        f'{n.METRIC_POWER_USAGE}{{gpu="1",UUID="{gpu1}",pci_bus_id="00000000:02:00.0",device="nvidia1",'
        f'modelName="{SIMULATED_MODEL}",Hostname="{NODE}",container="trainer",namespace="ml",pod="w-0",'
        f'source="simulated"}} 227.500000')
    assert power_lines[0].startswith(f'{n.METRIC_POWER_USAGE}{{gpu="0",UUID="{gpu0}",')
    assert 'pod="' not in power_lines[0] and power_lines[0].endswith('source="simulated"} 70.000000')
    for metric in (n.METRIC_POWER_USAGE, n.METRIC_TOTAL_ENERGY_CONSUMPTION, n.METRIC_POWER_MGMT_LIMIT, METRIC_GPU_UTIL):
        assert f"# TYPE {metric} {'counter' if metric == n.METRIC_TOTAL_ENERGY_CONSUMPTION else 'gauge'}" in text
        help_line = next(line for line in text.splitlines() if line.startswith(f"# HELP {metric} "))
        assert "SIMULATED" in help_line
    series = parse_metrics(text)
    assert all(s.labels["source"] == "simulated" and "simulated" in s.labels["modelName"] for s in series)
    energy = {s.labels["UUID"]: s.value for s in by_name(series, n.METRIC_TOTAL_ENERGY_CONSUMPTION)}
    assert energy == {gpu0: 70000.0, gpu1: 227500.0, uuids(node)[2]: 70000.0}  # integer mJ
    assert {s.labels["UUID"]: s.value for s in by_name(series, n.METRIC_POWER_MGMT_LIMIT)}[gpu1] == 700.0
    assert {s.labels["UUID"]: s.value for s in by_name(series, METRIC_GPU_UTIL)}[gpu1] == 25.0


def test_the_exporter_serves_metrics_and_samples_in_its_own_thread(node):
    _, gpu1, _ = uuids(node)
    set_limit(node, gpu1, 300)
    exporter = NodeDcgmExporter(NODE, node.path, list, activity=FakeActivity(), interval_seconds=0.05)
    with exporter:
        first = exporter.samples
        deadline = time.monotonic() + 10
        while exporter.samples < first + 2:
            assert time.monotonic() < deadline, "the sampler did not run"
            time.sleep(0.02)
        with urllib.request.urlopen(exporter.metrics_url, timeout=5) as answer:
            series = parse_metrics(answer.read().decode())
    limits = {s.labels["UUID"]: s.value for s in by_name(series, n.METRIC_POWER_MGMT_LIMIT)}
    assert limits[gpu1] == 300.0 and len(limits) == 3
    assert [g.limit_watts for g in read_node_gpus(node.path)] == [700.0, 300.0, 700.0]


def test_process_cpu_counts_the_cpu_time_of_a_pods_tagged_processes(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    spin = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ntime.sleep(30)\n"
    env = {**os.environ, ENV_STATE_TAG: str(state.resolve()), ENV_POD_TAG: "ml/w-0/uid-0"}
    other = {**os.environ, ENV_STATE_TAG: str(tmp_path / "elsewhere"), ENV_POD_TAG: "ml/w-0/uid-0"}
    procs = [subprocess.Popen([sys.executable, "-c", spin], env=env),
             subprocess.Popen([sys.executable, "-c", spin], env=other)]
    try:
        activity = ProcessCpu(state)
        deadline = time.monotonic() + 30
        while activity.cpu_seconds().get("ml/w-0/uid-0", 0.0) < 0.4:
            assert time.monotonic() < deadline, "the pod's CPU time was not seen"
            time.sleep(0.05)
        assert list(activity.cpu_seconds()) == ["ml/w-0/uid-0"]  # the other sandbox's process is not ours
        assert activity.cpu_seconds()["ml/w-0/uid-0"] < 0.4 + 5.0  # one process's time, not two
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_the_sandbox_prometheus_scrapes_every_node_exporter_every_second(tmp_path):
    prometheus = SandboxPrometheus(tmp_path, ["127.0.0.1:9400", "127.0.0.1:9401"], "/usr/bin/prometheus")
    config = prometheus.config()
    [job] = config["scrape_configs"]  # type: ignore[index]
    assert job["job_name"] == "dcgm-exporter" and job["honor_labels"] is True
    assert job["scrape_interval"] == "1000ms" and job["scrape_timeout"] == "1000ms"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9400", "127.0.0.1:9401"]}]
    assert f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}" in prometheus.argv()


def test_find_prometheus_honours_the_override(tmp_path, monkeypatch):
    monkeypatch.setenv("ETJ_PROMETHEUS_BINARY", str(tmp_path / "missing"))
    assert find_prometheus() is None
    fake = tmp_path / "prometheus"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ETJ_PROMETHEUS_BINARY", str(fake))
    assert find_prometheus() == str(fake)


def test_without_the_prometheus_binary_the_sandbox_runs_and_says_so(tmp_path, monkeypatch):
    from etj_operator.sandbox.sandbox import Sandbox, SandboxOptions

    monkeypatch.setenv("ETJ_PROMETHEUS_BINARY", str(tmp_path / "no-such-prometheus"))
    options = SandboxOptions(state_dir=tmp_path / "state", port=0, operator=False, node_agent=False, gpus_per_node=1)
    with Sandbox(options) as sandbox:
        assert sandbox.prometheus is None
        assert "no prometheus binary" in sandbox.prometheus_note and "Direct" in sandbox.prometheus_note
        [exporter] = sandbox.dcgm_exporters  # the node exporter still runs
        with urllib.request.urlopen(exporter.metrics_url, timeout=5) as answer:
            assert len(by_name(parse_metrics(answer.read().decode()), n.METRIC_POWER_USAGE)) == 1
        assert "ETJ_PROMETHEUS_URL" not in sandbox.operator_settings(tmp_path / "kubeconfig")
    off = Sandbox(SandboxOptions(state_dir=tmp_path / "off", port=0, operator=False, node_agent=False,
                                 gpus_per_node=1, prometheus=False)).start()
    try:
        assert off.prometheus is None and "off" in off.prometheus_note
    finally:
        off.stop()
