"""A DCGM-format exporter for tests: per-pod GPU power set by the test, energy integrated exactly.

Not a test module. :class:`DcgmExporter` serves ``/metrics`` on 127.0.0.1 from its own thread in the
exposition format of NVIDIA dcgm-exporter (see ../shared/data/dcgm-exporter-scrape.prom): the label set
and order ``gpu, UUID, pci_bus_id, device, modelName, Hostname, container, namespace, pod``, power in W
with six decimals, the energy counter in mJ as an integer.

Power is piecewise constant: each GPU keeps the list of (time, watts) changes the test made, so the
energy between any two instants is known exactly (``energy_joules_between``) and the served counter is
that integral (plus the counter's start value, minus any injected reset). Times are ``time.time()``
seconds, comparable with Prometheus timestamps.

Options: ``label_scheme`` ``"pod"`` (dcgm-exporter >= 2: ``pod``/``namespace``/``container``) or
``"pod_name"`` (older: ``pod_name``/``pod_namespace``/``container_name``); ``simulated=True`` adds
``source="simulated"`` to every GPU series (as the harness's simulated GPU does); ``idle_gpus`` adds GPUs
held by no pod (no pod labels, as on a real node); ``with_limit`` serves DCGM_FI_DEV_POWER_MGMT_LIMIT.
Fault injection: :meth:`reset_counters` (driver reload: the counter restarts from 0, ground truth goes
on), :meth:`set_hidden` (the pod's series vanish while its GPUs keep drawing power: missing samples),
``fail_scrapes`` (answer 503).

Usage::

    with DcgmExporter(simulated=True) as exporter:
        exporter.add_pod("ml", "job-worker-0", gpus=8, watts=400.0)
        ...  # point Prometheus (tests/prometheus_server.py) or a DirectTelemetry at exporter.url
        exporter.set_power("ml", "job-worker-0", 250.0)
        joules = exporter.ground_truth_joules("ml", "job-worker-0")
"""

from __future__ import annotations

import bisect
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

__all__ = ["DcgmExporter", "ExporterGpu"]

LabelScheme = Literal["pod", "pod_name"]

POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"
ENERGY_METRIC = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
LIMIT_METRIC = "DCGM_FI_DEV_POWER_MGMT_LIMIT"
_HELP = {
    POWER_METRIC: ("gauge", "Power draw (in W)."),
    ENERGY_METRIC: ("counter", "Total energy consumption since boot (in mJ)."),
    LIMIT_METRIC: ("gauge", "Power management limit (in W)."),
}


@dataclass
class ExporterGpu:
    """One GPU: its identity, the power history the test set, and its counter state."""

    index: int
    uuid: str
    namespace: str | None
    pod: str | None
    container: str | None
    limit_watts: float
    #: Times (time.time() s) at which the power changed, and the power from then on (W).
    change_times_s: list[float] = field(default_factory=list)
    change_watts: list[float] = field(default_factory=list)
    #: Counter value (mJ) at ``change_times_s[0]`` (a GPU has used energy before the test started).
    counter_start_mj: float = 0.0
    #: Energy (mJ) integrated before the last counter reset: subtracted from the served counter.
    counter_reset_offset_mj: float = 0.0
    hidden: bool = False
    label_text: str = ""

    def watts_at(self, when_s: float) -> float:
        """The power at ``when_s`` (0 before the GPU existed)."""
        i = bisect.bisect_right(self.change_times_s, when_s) - 1
        return self.change_watts[i] if i >= 0 else 0.0

    def joules_between(self, start_s: float, end_s: float) -> float:
        """Exact energy (J) drawn in [start_s, end_s]."""
        if end_s <= start_s:
            return 0.0
        total = 0.0
        times = self.change_times_s
        for i, watts in enumerate(self.change_watts):
            seg_start = max(times[i], start_s)
            seg_end = min(times[i + 1] if i + 1 < len(times) else end_s, end_s)
            if seg_end > seg_start:
                total += watts * (seg_end - seg_start)
        return total

    def counter_mj(self, when_s: float) -> float:
        """The cumulative counter the exporter serves at ``when_s``."""
        drawn_mj = self.joules_between(self.change_times_s[0], when_s) * 1000.0
        return self.counter_start_mj + drawn_mj - self.counter_reset_offset_mj


class DcgmExporter:
    """An HTTP server on 127.0.0.1 that serves the GPUs of test pods in dcgm-exporter's format."""

    def __init__(
        self,
        *,
        label_scheme: LabelScheme = "pod",
        simulated: bool = False,
        idle_gpus: int = 0,
        with_limit: bool = True,
        hostname: str = "gpu-node-a",
        model_name: str = "NVIDIA H100 80GB HBM3",
        counter_start_mj: float = 0.0,
        port: int = 0,
    ) -> None:
        if label_scheme not in ("pod", "pod_name"):
            raise ValueError(f"label_scheme must be 'pod' or 'pod_name', not {label_scheme!r}")
        self.label_scheme: LabelScheme = label_scheme
        self.simulated = simulated
        self.with_limit = with_limit
        self.hostname = hostname
        self.model_name = model_name
        self.counter_start_mj = counter_start_mj
        #: When True every scrape gets HTTP 503 (a broken exporter).
        self.fail_scrapes = False
        #: Scrapes answered (any status).
        self.scrapes = 0
        self._lock = threading.RLock()
        #: When each successful scrape was rendered (time.time()), in order.
        self._render_times_s: list[float] = []
        self._gpus: list[ExporterGpu] = []
        self._by_pod: dict[tuple[str, str], list[ExporterGpu]] = {}
        self._next_index: dict[str, int] = {}
        for _ in range(idle_gpus):
            self._new_gpu(None, None, watts=70.0, limit_watts=700.0, when_s=time.time())
        self._server = self._make_server(port)
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------
    def _make_server(self, port: int) -> ThreadingHTTPServer:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                with exporter._lock:
                    exporter.scrapes += 1
                    failing = exporter.fail_scrapes
                if failing:
                    self.send_error(503, "injected failure")
                    return
                when_s = time.time()
                body = exporter.render(when_s).encode()
                with exporter._lock:
                    exporter._render_times_s.append(when_s)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                # A scraper that gave up (scrape timeout) closes the socket mid-body: not worth a traceback.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)  # type: ignore[arg-type]

        server = Server(("127.0.0.1", port), Handler)
        return server

    def start(self) -> DcgmExporter:
        """Serve from a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="dcgm-exporter", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> DcgmExporter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port served."""
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, as a Prometheus static target."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The full /metrics URL."""
        return f"http://{self.address}/metrics"

    # --- what the test controls -----------------------------------------------------------------------
    def _new_gpu(
        self, namespace: str | None, pod: str | None, *, watts: float, limit_watts: float, when_s: float
    ) -> ExporterGpu:
        node_index = self._next_index.get(self.hostname, 0)
        self._next_index[self.hostname] = node_index + 1
        gpu = ExporterGpu(
            index=node_index,
            uuid=f"GPU-{uuid.uuid4()}",
            namespace=namespace,
            pod=pod,
            container="trainer" if pod else None,
            limit_watts=limit_watts,
            change_times_s=[when_s],
            change_watts=[watts],
            counter_start_mj=self.counter_start_mj,
        )
        gpu.label_text = self._label_text(gpu)
        self._gpus.append(gpu)
        return gpu

    def _label_text(self, gpu: ExporterGpu) -> str:
        pairs = [
            ("gpu", str(gpu.index)),
            ("UUID", gpu.uuid),
            ("pci_bus_id", f"00000000:{gpu.index % 256:02X}:00.0"),
            ("device", f"nvidia{gpu.index}"),
            ("modelName", self.model_name),
            ("Hostname", self.hostname),
        ]
        if gpu.pod is not None and gpu.namespace is not None:
            if self.label_scheme == "pod":
                pairs += [("container", gpu.container or ""), ("namespace", gpu.namespace), ("pod", gpu.pod)]
            else:
                pairs += [
                    ("container_name", gpu.container or ""),
                    ("pod_namespace", gpu.namespace),
                    ("pod_name", gpu.pod),
                ]
        if self.simulated:
            pairs.append(("source", "simulated"))
        return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"

    def add_pod(
        self, namespace: str, pod: str, *, gpus: int = 1, watts: float = 300.0, limit_watts: float = 700.0
    ) -> list[str]:
        """Give ``namespace/pod`` ``gpus`` GPUs drawing ``watts`` each from now; returns their UUIDs."""
        with self._lock:
            if (namespace, pod) in self._by_pod:
                raise ValueError(f"{namespace}/{pod} already exists")
            now = time.time()
            made = [
                self._new_gpu(namespace, pod, watts=watts, limit_watts=limit_watts, when_s=now) for _ in range(gpus)
            ]
            self._by_pod[(namespace, pod)] = made
            return [g.uuid for g in made]

    def remove_pod(self, namespace: str, pod: str) -> None:
        """Forget the pod: its series disappear (its ground truth with it)."""
        with self._lock:
            gone = self._by_pod.pop((namespace, pod))
            self._gpus = [g for g in self._gpus if g not in gone]

    def _pod_gpus(self, namespace: str, pod: str) -> list[ExporterGpu]:
        try:
            return self._by_pod[(namespace, pod)]
        except KeyError:
            raise KeyError(f"no pod {namespace}/{pod} in the exporter") from None

    def set_power(self, namespace: str, pod: str, watts: float, *, gpu: int | None = None) -> None:
        """From now on, the pod's GPUs (or only its ``gpu``-th one) draw ``watts``."""
        if watts < 0:
            raise ValueError("watts must not be negative")
        with self._lock:
            now = time.time()
            gpus = self._pod_gpus(namespace, pod)
            for g in gpus if gpu is None else [gpus[gpu]]:
                g.change_times_s.append(max(now, g.change_times_s[-1]))
                g.change_watts.append(watts)

    def set_limit(self, namespace: str, pod: str, limit_watts: float) -> None:
        """Set the power limit the pod's GPUs report (it does not cap the power the test sets)."""
        with self._lock:
            for g in self._pod_gpus(namespace, pod):
                g.limit_watts = limit_watts

    def set_hidden(self, namespace: str, pod: str, hidden: bool) -> None:
        """Hide (or show again) the pod's series; its GPUs keep drawing power meanwhile."""
        with self._lock:
            for g in self._pod_gpus(namespace, pod):
                g.hidden = hidden

    def reset_counters(self, namespace: str, pod: str) -> None:
        """Make the pod's energy counters restart from 0 now (a driver reload); ground truth is unaffected."""
        with self._lock:
            now = time.time()
            for g in self._pod_gpus(namespace, pod):
                g.counter_reset_offset_mj += g.counter_mj(now)

    # --- ground truth ---------------------------------------------------------------------------------
    def energy_joules_between(self, namespace: str, pod: str, start_s: float, end_s: float) -> float:
        """Exact energy (J) the pod's GPUs drew between two ``time.time()`` instants."""
        with self._lock:
            return sum(g.joules_between(start_s, end_s) for g in self._pod_gpus(namespace, pod))

    def served_at_or_after(self, when_s: float) -> float:
        """When the first scrape at or after ``when_s`` was rendered (``when_s`` itself if none was).

        Prometheus stamps a sample with the time its scrape started, a little before the exporter renders
        the counter: the render time is when the value it stored was true.
        """
        with self._lock:
            i = bisect.bisect_left(self._render_times_s, when_s)
            return self._render_times_s[i] if i < len(self._render_times_s) else when_s

    def ground_truth_joules(self, namespace: str, pod: str, *, until_s: float | None = None) -> float:
        """Exact energy (J) the pod's GPUs drew since the pod was added (until now or ``until_s``)."""
        with self._lock:
            end_s = time.time() if until_s is None else until_s
            return sum(g.joules_between(g.change_times_s[0], end_s) for g in self._pod_gpus(namespace, pod))

    def power_watts(self, namespace: str, pod: str) -> float:
        """The pod's current total draw (W)."""
        with self._lock:
            now = time.time()
            return sum(g.watts_at(now) for g in self._pod_gpus(namespace, pod))

    def gpu_uuids(self, namespace: str, pod: str) -> list[str]:
        """The UUIDs of the pod's GPUs, in order."""
        with self._lock:
            return [g.uuid for g in self._pod_gpus(namespace, pod)]

    def pods(self) -> Iterator[tuple[str, str]]:
        """The (namespace, pod) pairs served."""
        with self._lock:
            return iter(list(self._by_pod))

    # --- the exposition ------------------------------------------------------------------------------
    def render(self, when_s: float | None = None) -> str:
        """The /metrics text at ``when_s`` (default now)."""
        with self._lock:
            now = time.time() if when_s is None else when_s
            visible = [g for g in self._gpus if not g.hidden]
            lines: list[str] = []
            metrics = [POWER_METRIC, ENERGY_METRIC] + ([LIMIT_METRIC] if self.with_limit else [])
            for metric in metrics:
                kind, help_text = _HELP[metric]
                lines.append(f"# HELP {metric} {help_text}")
                lines.append(f"# TYPE {metric} {kind}")
                for g in visible:
                    if metric == POWER_METRIC:
                        value = f"{g.watts_at(now):.6f}"
                    elif metric == ENERGY_METRIC:
                        value = str(int(g.counter_mj(now)))
                    else:
                        value = f"{g.limit_watts:.6f}"
                    lines.append(f"{metric}{g.label_text} {value}")
        return "\n".join(lines) + "\n"
