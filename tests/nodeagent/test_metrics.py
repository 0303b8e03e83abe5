"""The agent's /metrics text (dcgm-exporter's names, labels and units) and its HTTP server."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator.nodeagent.gpus import GpuError, LimitReading
from etj_operator.nodeagent.metrics import AgentSnapshot, GpuStatus, InputStatus, MetricsServer, render
from etj_operator.nodeagent.records import Decision, GpuDevice, Holder, UnknownDevice

DEVICE = GpuDevice("GPU-34319582", 0, "NVIDIA H100 80GB HBM3", 200_000, 700_000, 700_000, "00000000:07:00.0")
FREE = GpuDevice("GPU-0f6a2c1e", 2, "NVIDIA H100 80GB HBM3", 200_000, 700_000, 700_000, "00000000:48:00.0")


def snapshot() -> AgentSnapshot:
    holder = Holder("ml", "resnet-ddp-worker-0", "trainer", "p", "j")
    decision = Decision(DEVICE, "set", 300_000, a.REASON_JOB_LIMIT, (holder,), "uid-j")
    held = GpuStatus(DEVICE, decision, LimitReading(300_000, 290_500))
    refused = GpuError("set on GPU 2: NVML_ERROR_NO_PERMISSION", kind=a.ERROR_NO_PERMISSION, operation="set",
                       uuid=FREE.uuid, index=2)
    free = GpuStatus(FREE, Decision(FREE, "set", 700_000, a.REASON_NOT_HELD), LimitReading(450_000, None), (refused,))
    return AgentSnapshot(
        hostname="gpu-node-a",
        source="nvml",
        gpus=(held, free),
        unknown_devices=(UnknownDevice("GPU-gone", "ml", "x", "trainer"),),
        inputs=(InputStatus(a.INPUT_KUBELET, True, 1.5, False), InputStatus(a.INPUT_API, False, 75.0, True)),
        applies={DEVICE.uuid: 2},
        apply_errors={(FREE.uuid, a.ERROR_NO_PERMISSION): 3},
        cycles=7,
    )


def test_the_applied_limit_line_is_dcgm_exporters_format():
    text = render(snapshot())
    line = next(x for x in text.splitlines() if x.startswith(n.METRIC_POWER_MGMT_LIMIT + "{"))
    assert line == (
        'DCGM_FI_DEV_POWER_MGMT_LIMIT{gpu="0",UUID="GPU-34319582",pci_bus_id="00000000:07:00.0",device="nvidia0",'
        'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-a",container="trainer",namespace="ml",'
        'pod="resnet-ddp-worker-0",source="nvml"} 300.000000'
    )
    assert "# TYPE DCGM_FI_DEV_POWER_MGMT_LIMIT gauge" in text


def test_every_family_parses_and_says_what_the_snapshot_holds():
    families = {f.name: f for f in text_string_to_metric_families(render(snapshot()))}
    values = {name: [(dict(s.labels), s.value) for s in f.samples] for name, f in families.items()}
    limits = {lb[a.LABEL_UUID]: (lb.get(a.LABEL_POD), v) for lb, v in values[n.METRIC_POWER_MGMT_LIMIT]}
    assert limits == {DEVICE.uuid: ("resnet-ddp-worker-0", 300.0), FREE.uuid: (None, 450.0)}
    assert [(lb[a.LABEL_UUID], v) for lb, v in values[a.METRIC_ENFORCED_POWER_LIMIT]] == [(DEVICE.uuid, 290.5)]
    desired = {lb[a.LABEL_UUID]: (lb[a.LABEL_REASON], lb[a.LABEL_JOB_UID], v)
               for lb, v in values[a.METRIC_AGENT_DESIRED_LIMIT]}
    assert desired == {DEVICE.uuid: (a.REASON_JOB_LIMIT, "uid-j", 300.0), FREE.uuid: (a.REASON_NOT_HELD, "", 700.0)}
    assert [(lb[a.LABEL_UUID], lb[a.LABEL_ERROR], v) for lb, v in values[a.METRIC_AGENT_GPU_ERROR]] == [
        (FREE.uuid, a.ERROR_NO_PERMISSION, 1.0)]
    # prometheus_client's parser names a counter family without _total and its samples with it
    assert [v for _, v in values["etj_node_agent_apply_errors"]] == [3.0]
    assert [v for _, v in values["etj_node_agent_applies"]] == [2.0]
    assert [v for _, v in values["etj_node_agent_cycles"]] == [7.0]
    assert {lb[a.LABEL_INPUT]: v for lb, v in values[a.METRIC_AGENT_INPUT_EXPIRED]} == {"api": 1.0, "kubelet": 0.0}
    assert {lb[a.LABEL_INPUT]: v for lb, v in values[a.METRIC_AGENT_INPUT_AGE]} == {"api": 75.0, "kubelet": 1.5}
    assert values[a.METRIC_AGENT_UNKNOWN_DEVICE][0][0][a.LABEL_DEVICE_ID] == "GPU-gone"
    assert values[a.METRIC_AGENT_INFO] == [({a.LABEL_HOSTNAME: "gpu-node-a", a.LABEL_SOURCE: "nvml"}, 1.0)]
    for name in a.AGENT_METRICS:
        assert name.removesuffix("_total") in families, name


def test_label_values_are_escaped():
    odd = GpuDevice("GPU-x", 1, 'a "quoted"\\name', 1, 2, 2)
    text = render(AgentSnapshot("node", "simulated", gpus=(GpuStatus(odd, None, LimitReading(2, 2)),)))
    (sample,) = [s for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == n.METRIC_POWER_MGMT_LIMIT]
    assert sample.labels[a.LABEL_MODEL_NAME] == 'a "quoted"\\name'


def test_the_server_serves_the_latest_text_and_health():
    state = {"text": "first 1\n", "healthy": True}
    server = MetricsServer(lambda: state["text"], lambda: state["healthy"], port=0, host="127.0.0.1").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
            assert answer.read() == b"first 1\n"
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        state["text"] = "second 2\n"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
            assert answer.read() == b"second 2\n"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as answer:
            assert answer.status == 200
        state["healthy"] = False
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert info.value.code == 503
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/nothing", timeout=5)
    finally:
        server.stop()
