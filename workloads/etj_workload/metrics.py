"""The pod's /metrics endpoint: GPU power and energy under dcgm-exporter's names, plus training gauges.

GPU series use dcgm-exporter's metric names, units and label order (``gpu``, ``UUID``, ``pci_bus_id``,
``device``, ``modelName``, ``Hostname``, ``container``, ``namespace``, ``pod``) and add
``source="nvml"|"simulated"``, so the operator's Direct telemetry parses them like a dcgm-exporter scrape
and can tell simulated figures apart:

* ``DCGM_FI_DEV_POWER_USAGE`` gauge, W (six decimals),
* ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` counter, mJ (integer; no ``_total`` suffix, as dcgm-exporter),
* ``DCGM_FI_DEV_POWER_MGMT_LIMIT`` gauge, W (the limit in force).

Training gauges (labels ``job_name``, ``namespace``, ``pod``: not ``job``, which Prometheus sets to the scrape
job's name and, with ``honor_labels: false``, would rename to ``exported_job``): ``etj_training_step``,
``etj_training_epoch``, ``etj_training_samples_per_second``, ``etj_training_loss``, ``etj_training_accuracy``,
``etj_power_limit_watts``, ``etj_compression_stages_applied``.

The text is rendered here (not by prometheus_client, which would append ``_total`` to the counter).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import etj_contract as contract
from etj_workload.gpu import GpuReading

__all__ = ["MetricsServer", "MetricsSnapshot", "render"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one scrape shows."""

    gpus: Sequence[GpuReading]
    progress: Mapping[str, float] = field(default_factory=dict)
    """Gauge name (without the ``etj_`` prefix) -> value."""
    job: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = contract.TRAINER_CONTAINER
    hostname: str = field(default_factory=socket.gethostname)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


_GPU_METRICS = (
    (contract.METRIC_POWER_USAGE, "gauge", "Power draw (in W)."),
    (contract.METRIC_TOTAL_ENERGY_CONSUMPTION, "counter", "Total energy consumption since boot (in mJ)."),
    (contract.METRIC_POWER_MGMT_LIMIT, "gauge", "Power management limit (in W)."),
)

_PROGRESS_HELP = {
    "training_step": "Global training step (optimizer steps).",
    "training_epoch": "Current epoch (0-based).",
    "training_samples_per_second": "Job-wide training throughput (samples/s).",
    "training_loss": "Training loss, mean over the last poll interval.",
    "training_accuracy": "Test accuracy at the last evaluation (0..1).",
    "power_limit_watts": "Power limit in force on this pod's GPUs (W).",
    "compression_stages_applied": "Compression stages applied and kept.",
}


def render(snapshot: MetricsSnapshot) -> str:
    """Return the Prometheus text exposition of ``snapshot``."""
    lines: list[str] = []
    for metric, kind, help_text in _GPU_METRICS:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for gpu in snapshot.gpus:
            labels = [
                ("gpu", str(gpu.index)),
                ("UUID", gpu.uuid),
                ("pci_bus_id", ""),
                ("device", f"nvidia{gpu.index}"),
                ("modelName", gpu.name),
                ("Hostname", snapshot.hostname),
                ("container", snapshot.container),
                ("namespace", snapshot.namespace),
                ("pod", snapshot.pod),
                (contract.METRIC_LABEL_SOURCE, gpu.source),
            ]
            if metric == contract.METRIC_POWER_USAGE:
                text = f"{gpu.power_mw / 1000:.6f}"
            elif metric == contract.METRIC_TOTAL_ENERGY_CONSUMPTION:
                text = str(int(gpu.energy_mj))
            else:
                text = f"{gpu.power_limit_mw / 1000:.6f}"
            lines.append(f"{metric}{_labels(labels)} {text}")
    job_labels = _labels([("job_name", snapshot.job), ("namespace", snapshot.namespace), ("pod", snapshot.pod)])
    for name, value in snapshot.progress.items():
        metric = f"etj_{name}"
        lines += [f"# HELP {metric} {_PROGRESS_HELP.get(name, name)}", f"# TYPE {metric} gauge"]
        lines.append(f"{metric}{job_labels} {float(value)!r}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves :func:`render` of ``provider()`` on ``/metrics`` from a daemon thread."""

    def __init__(self, provider: Callable[[], MetricsSnapshot], port: int, host: str = "0.0.0.0") -> None:
        self._provider = provider
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                try:
                    body = render(outer._provider()).encode()
                except Exception as e:  # a scrape must never kill training
                    log.warning("rendering metrics failed: %s", e)
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="etj-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
