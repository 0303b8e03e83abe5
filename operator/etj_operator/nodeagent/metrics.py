"""The node agent's /metrics: the limits it applied, as dcgm-exporter names them, and its own state.

Per GPU and per container that holds it (one series without pod labels when none does), with dcgm-exporter's
labels in its order (``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName``, ``Hostname``, then
``container``, ``namespace``, ``pod``) and ``source="nvml"|"simulated"``:

* ``DCGM_FI_DEV_POWER_MGMT_LIMIT`` (W): the power management limit read back after the cycle's changes;
* ``DCGM_FI_DEV_ENFORCED_POWER_LIMIT`` (W): the limit the driver enforces (when the backend can tell);
* ``etj_node_agent_desired_power_limit_watts`` (W), with ``job_uid`` and ``reason``: the limit the agent aims
  for (for ``PodManaged`` and ``InputsPending``: the limit in force, which it keeps).

And: ``etj_node_agent_gpu_error`` (1 per GPU, operation and error kind while the last attempt failed),
``etj_node_agent_apply_errors_total``, ``etj_node_agent_applies_total``, ``etj_node_agent_unknown_device``,
``etj_node_agent_input_up`` / ``_input_age_seconds`` / ``_input_expired`` (inputs ``kubelet`` and ``api``),
``etj_node_agent_cycles_total`` and ``etj_node_agent_info``. Names: :mod:`etj_contract.agent`.

The text is rendered here, from one snapshot per cycle (a scrape never sees half a cycle).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator.nodeagent.gpus import GpuError, LimitReading
from etj_operator.nodeagent.records import Decision, GpuDevice, UnknownDevice

__all__ = ["AgentSnapshot", "GpuStatus", "InputStatus", "MetricsServer", "render"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuStatus:
    """One GPU after a cycle: the decision, the limits read back, the errors of its last operations."""

    device: GpuDevice
    decision: Decision | None = None
    reading: LimitReading | None = None
    errors: tuple[GpuError, ...] = ()


@dataclass(frozen=True)
class InputStatus:
    """One input of the agent (the kubelet's allocations, the API's pods and jobs)."""

    name: str
    up: bool
    age_seconds: float
    expired: bool


@dataclass(frozen=True)
class AgentSnapshot:
    """Everything one scrape shows."""

    hostname: str
    source: str
    gpus: Sequence[GpuStatus] = ()
    inventory_errors: Sequence[GpuError] = ()
    unknown_devices: Sequence[UnknownDevice] = ()
    inputs: Sequence[InputStatus] = ()
    #: UUID -> limits set since the agent started.
    applies: Mapping[str, int] = field(default_factory=dict)
    #: (UUID, error kind) -> failed attempts to set a limit since the agent started.
    apply_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)
    cycles: int = 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series(name: str, labels: Sequence[tuple[str, str]], value: str) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{body}}} {value}"


def _watts(milliwatts: int) -> str:
    return f"{milliwatts / 1000:.6f}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.3f}"


def _gpu_labels(device: GpuDevice, hostname: str) -> list[tuple[str, str]]:
    return [
        (a.LABEL_GPU, str(device.index)),
        (a.LABEL_UUID, device.uuid),
        (a.LABEL_PCI_BUS_ID, device.pci_bus_id),
        (a.LABEL_DEVICE, f"nvidia{device.index}"),
        (a.LABEL_MODEL_NAME, device.name),
        (a.LABEL_HOSTNAME, hostname),
    ]


def _holder_labels(gpu: GpuStatus) -> list[list[tuple[str, str]]]:
    """One label set per container holding the GPU (dcgm-exporter's pod labels), or one empty set."""
    holders = gpu.decision.holders if gpu.decision else ()
    if not holders:
        return [[]]
    return [
        [(a.LABEL_CONTAINER, h.container), (a.LABEL_NAMESPACE, h.namespace), (a.LABEL_POD, h.pod)] for h in holders
    ]


def _desired_mw(gpu: GpuStatus) -> int | None:
    decision = gpu.decision
    if decision is None:
        return None
    in_force = gpu.reading.limit_mw if gpu.reading else None
    if decision.action == "leave" or decision.target_mw is None:
        return in_force
    if decision.action == "ceiling" and in_force is not None:
        return min(in_force, decision.target_mw)
    return decision.target_mw


def render(snapshot: AgentSnapshot) -> str:
    """The Prometheus text exposition of ``snapshot``."""
    host, source = snapshot.hostname, snapshot.source
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, series: list[str]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *series])

    limit, enforced, desired = [], [], []
    for gpu in snapshot.gpus:
        base = _gpu_labels(gpu.device, host)
        for pod_labels in _holder_labels(gpu):
            labels = [*base, *pod_labels, (a.LABEL_SOURCE, source)]
            if gpu.reading is not None:
                limit.append(_series(n.METRIC_POWER_MGMT_LIMIT, labels, _watts(gpu.reading.limit_mw)))
                if gpu.reading.enforced_mw is not None:
                    enforced.append(_series(a.METRIC_ENFORCED_POWER_LIMIT, labels, _watts(gpu.reading.enforced_mw)))
            want = _desired_mw(gpu)
            if gpu.decision is not None and want is not None:
                extra = [(a.LABEL_JOB_UID, gpu.decision.job_uid or ""), (a.LABEL_REASON, gpu.decision.reason)]
                desired.append(_series(a.METRIC_AGENT_DESIRED_LIMIT, [*labels, *extra], _watts(want)))
    family(n.METRIC_POWER_MGMT_LIMIT, "gauge", "Power management limit (in W).", limit)
    family(a.METRIC_ENFORCED_POWER_LIMIT, "gauge", "Enforced power limit (in W).", enforced)
    family(a.METRIC_AGENT_DESIRED_LIMIT, "gauge",
           "Power limit the node agent aims for on this GPU (in W), and why.", desired)

    errors: list[str] = []
    for gpu in snapshot.gpus:
        for error in gpu.errors:
            labels = [*_gpu_labels(gpu.device, host), (a.LABEL_OPERATION, error.operation),
                      (a.LABEL_ERROR, error.kind), (a.LABEL_SOURCE, source)]
            errors.append(_series(a.METRIC_AGENT_GPU_ERROR, labels, "1"))
    for error in snapshot.inventory_errors:
        labels = [(a.LABEL_GPU, "" if error.index is None else str(error.index)), (a.LABEL_UUID, error.uuid),
                  (a.LABEL_HOSTNAME, host), (a.LABEL_OPERATION, error.operation), (a.LABEL_ERROR, error.kind),
                  (a.LABEL_SOURCE, source)]
        errors.append(_series(a.METRIC_AGENT_GPU_ERROR, labels, "1"))
    family(a.METRIC_AGENT_GPU_ERROR, "gauge", "1 while the last operation on this GPU failed.", errors)

    family(a.METRIC_AGENT_APPLY_ERRORS, "counter", "Failed attempts to set a GPU's power limit.", [
        _series(a.METRIC_AGENT_APPLY_ERRORS, [(a.LABEL_UUID, uuid), (a.LABEL_HOSTNAME, host), (a.LABEL_ERROR, kind)],
                str(count))
        for (uuid, kind), count in sorted(snapshot.apply_errors.items())
    ])
    family(a.METRIC_AGENT_APPLIES, "counter", "Power limits the node agent set.", [
        _series(a.METRIC_AGENT_APPLIES, [(a.LABEL_UUID, uuid), (a.LABEL_HOSTNAME, host)], str(count))
        for uuid, count in sorted(snapshot.applies.items())
    ])
    family(a.METRIC_AGENT_UNKNOWN_DEVICE, "gauge", "Allocations of a device that is no GPU of this node.", [
        _series(a.METRIC_AGENT_UNKNOWN_DEVICE, [(a.LABEL_DEVICE_ID, u.device_id), (a.LABEL_HOSTNAME, host),
                                                (a.LABEL_CONTAINER, u.container), (a.LABEL_NAMESPACE, u.namespace),
                                                (a.LABEL_POD, u.pod)], "1")
        for u in snapshot.unknown_devices
    ])
    inputs = sorted(snapshot.inputs, key=lambda i: i.name)
    input_families: list[tuple[str, str, Callable[[InputStatus], str]]] = [
        (a.METRIC_AGENT_INPUT_UP, "1 when the last read of this input succeeded.", lambda i: str(int(i.up))),
        (a.METRIC_AGENT_INPUT_AGE, "Seconds since the last good read of this input.",
         lambda i: _number(i.age_seconds)),
        (a.METRIC_AGENT_INPUT_EXPIRED, "1 when this input failed past the grace (its GPUs are reset).",
         lambda i: str(int(i.expired))),
    ]
    for metric, help_text, value in input_families:
        family(metric, "gauge", help_text, [
            _series(metric, [(a.LABEL_INPUT, i.name), (a.LABEL_HOSTNAME, host)], value(i)) for i in inputs
        ])
    family(a.METRIC_AGENT_CYCLES, "counter", "Reconcile cycles the node agent ran.",
           [_series(a.METRIC_AGENT_CYCLES, [(a.LABEL_HOSTNAME, host)], str(snapshot.cycles))])
    family(a.METRIC_AGENT_INFO, "gauge", "The node agent and its GPU backend.",
           [_series(a.METRIC_AGENT_INFO, [(a.LABEL_HOSTNAME, host), (a.LABEL_SOURCE, source)], "1")])
    return "\n".join(lines) + "\n"


class MetricsServer:
    """``/metrics`` (the text of the latest snapshot) and ``/healthz`` on a port, from a daemon thread."""

    def __init__(self, text: Callable[[], str], healthy: Callable[[], bool], port: int, host: str = "0.0.0.0") -> None:
        self._text = text
        self._healthy = healthy
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, outer._text(), "text/plain; version=0.0.4; charset=utf-8")
                elif path in ("/healthz", "/livez", "/readyz"):
                    ok = outer._healthy()
                    self._answer(200 if ok else 503, "ok\n" if ok else "no recent cycle\n", "text/plain")
                else:
                    self._answer(404, "not found\n", "text/plain")

            def _answer(self, code: int, body: str, content_type: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="node-agent-metrics",
                                        daemon=True)

    def start(self) -> MetricsServer:
        """Serve from a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
