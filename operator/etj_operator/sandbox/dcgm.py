"""The sandbox node's DCGM exporter: **simulated** GPU power of every node GPU, in dcgm-exporter's format.

On a GPU node, NVIDIA dcgm-exporter (a DaemonSet) reads each GPU's power, energy counter and power limit from
the driver and labels each series with the pod that holds the GPU (from the kubelet's PodResources API). It
measures the card, so it sees any program, with or without the project's harness. The sandbox has no cards,
so this exporter stands for it on the sandbox node, and computes what a card would draw:

* a GPU no pod holds draws the idle power (70 W);
* a GPU a pod holds draws a **demand** from the pod's activity: the CPU time the pod's processes used since
  the last sample (``/proc/<pid>/stat`` of the processes carrying the pod's tag, the kubelet's
  :func:`~etj_operator.sandbox.kubelet.tagged_processes` marker), as busy cores per GPU held, mapped linearly
  to ``idle .. max`` (one busy core per GPU reads as a fully busy card, :attr:`CardPower.busy_cores_per_gpu`:
  the sandbox runs one process per GPU with ``OMP_NUM_THREADS=1``). Any program counts, harness or foreign;
* that demand is then **capped by the node GPU's power limit in force** (``limitMilliwatts`` in the node's
  ``gpus.json``, what the node agent set), as a card's power limiter holds its draw at the limit: the draw of
  a busy card under limit ``L`` is the harness's power model's ``busy_power_watts(L)`` (DVFS: the clock drops
  until the busy power meets the limit; ``etj_workload.power_model``, H100 SXM-like: 70 W idle, 700 W max,
  limits 200..700 W). The operator may not import the workload package (the import contract), so
  :class:`CardPower` carries the same constants and a unit test holds them to ``power_model.H100_SXM``.

It serves ``/metrics`` with, per node GPU, ``DCGM_FI_DEV_POWER_USAGE`` (W, six decimals),
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ, an integer counter it integrates itself, since the sandbox's
node started), ``DCGM_FI_DEV_POWER_MGMT_LIMIT`` (W, the limit in force) and ``DCGM_FI_DEV_GPU_UTIL`` (%, the
load it derived), with dcgm-exporter's labels in its order (``gpu, UUID, pci_bus_id, device, modelName,
Hostname``, then ``container, namespace, pod`` of the holder) and ``source="simulated"``; ``modelName`` is the
node GPU's (``Simulated H100 SXM (simulated)``) and every HELP line says simulated. ``Hostname`` is the node's
name, as dcgm-exporter's chart sets it (``NODE_NAME``), so the operator attributes a series to a pod only
from the pod's node.

It runs in the sandbox's process (a sampling thread and an HTTP server on a free port of 127.0.0.1): it reads
the kubelet's allocation (:meth:`~etj_operator.sandbox.kubelet.ProcessKubelet.gpu_holders`) directly, because
the pod's process tag holds its UID, which the PodResources answer does not carry. Samples are taken every
``interval_seconds`` (0.5 s), whoever scrapes; the clock and the activity source are injectable, so that a
test can drive :meth:`NodeDcgmExporter.sample` by hand.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final, Protocol

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator.sandbox.kubelet import ENV_POD_TAG, ENV_STATE_TAG, PodGpus

__all__ = [
    "METRIC_GPU_UTIL",
    "SIMULATED_SOURCE",
    "ActivitySource",
    "CardPower",
    "GpuReading",
    "NodeDcgmExporter",
    "NodeGpu",
    "ProcessCpu",
    "read_node_gpus",
]

log = logging.getLogger(__name__)

#: dcgm-exporter's GPU utilisation gauge (%); here the load derived from the pod's CPU time (simulated).
METRIC_GPU_UTIL: Final = "DCGM_FI_DEV_GPU_UTIL"
#: The ``source`` label of every series (the operator marks such readings simulated).
SIMULATED_SOURCE: Final = "simulated"

_HELP: Final[Mapping[str, tuple[str, str]]] = {
    METRIC_GPU_UTIL: ("gauge", "GPU utilization (in %). SIMULATED: the holder pod's CPU use, etj sandbox."),
    n.METRIC_POWER_USAGE: ("gauge", "Power draw (in W). SIMULATED: demand from the pod's CPU use, capped by the"
                           " limit, etj sandbox."),
    n.METRIC_TOTAL_ENERGY_CONSUMPTION: ("counter", "Total energy consumption since boot (in mJ). SIMULATED:"
                                        " the integral of the simulated power, etj sandbox."),
    n.METRIC_POWER_MGMT_LIMIT: ("gauge", "Power management limit (in W). SIMULATED: the node GPU's limit in"
                                " force (gpus.json), etj sandbox."),
}


@dataclass(frozen=True)
class CardPower:
    """How a simulated card's draw follows its load and its power limit (units in the names).

    The constants are the harness's power model's (``etj_workload.power_model.H100_SXM``; a unit test checks
    them): the operator side may not import the workload package.
    """

    idle_watts: float = 70.0
    #: The draw of a fully busy card at full clock (the model's ``max_watts``).
    max_watts: float = 700.0
    #: Busy CPU cores (of the holder pod, per GPU it holds) that read as a fully busy card.
    busy_cores_per_gpu: float = 1.0

    def load(self, busy_cores: float, gpus: int) -> float:
        """The load of each of ``gpus`` cards held by a pod whose processes used ``busy_cores``: 0..1."""
        if gpus <= 0 or self.busy_cores_per_gpu <= 0:
            return 0.0
        return min(max(busy_cores / (gpus * self.busy_cores_per_gpu), 0.0), 1.0)

    def demand_watts(self, load: float) -> float:
        """The draw at full clock of a card at ``load`` (0: idle, 1: fully busy)."""
        return self.idle_watts + (self.max_watts - self.idle_watts) * min(max(load, 0.0), 1.0)

    @staticmethod
    def busy_watts(limit_watts: float, min_limit_watts: float, max_limit_watts: float) -> float:
        """A busy card's draw under ``limit_watts``: the limit, clamped to the card's range (DVFS meets it).

        ``etj_workload.power_model.busy_power_watts``: the clock fraction where ``P(f)`` equals the clamped
        limit, so the busy power is that limit (and the full-clock draw when the limit does not bind).
        """
        return min(max(limit_watts, min_limit_watts), max_limit_watts)

    def power_watts(self, load: float, limit_watts: float, min_limit_watts: float, max_limit_watts: float) -> float:
        """The draw of a card at ``load`` under ``limit_watts``: its demand, held at the limit when above it."""
        demand = self.demand_watts(load)
        ceiling = min(self.busy_watts(limit_watts, min_limit_watts, max_limit_watts), self.max_watts)
        return min(demand, ceiling)


@dataclass(frozen=True)
class NodeGpu:
    """One GPU of the node's state file (``gpus.json``). Units: W."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    limit_watts: float
    min_limit_watts: float
    max_limit_watts: float


def read_node_gpus(gpus_file: Path) -> list[NodeGpu]:
    """The node's GPUs and their limits in force, from its simulated state file (written atomically)."""
    data = json.loads(Path(gpus_file).read_text())
    gpus = [NodeGpu(index=int(g["index"]), uuid=str(g["uuid"]), name=str(g.get("name") or ""),
                    pci_bus_id=str(g.get("pciBusId") or f"00000000:{int(g['index']) + 1:02X}:00.0"),
                    limit_watts=int(g["limitMilliwatts"]) / 1000, min_limit_watts=int(g["minLimitMilliwatts"]) / 1000,
                    max_limit_watts=int(g["maxLimitMilliwatts"]) / 1000)
            for g in data["gpus"]]
    return sorted(gpus, key=lambda g: g.index)


class ActivitySource(Protocol):
    """Cumulative CPU time of pods' processes: ``pod tag -> seconds`` (a pod without processes is absent)."""

    def cpu_seconds(self) -> Mapping[str, float]:
        """Seconds of CPU (user + system, children reaped included) used by each pod's processes so far."""
        ...


class ProcessCpu:
    """:class:`ActivitySource` from ``/proc``: the processes that carry the sandbox's state directory.

    A process's pod is read once from its environment (``ETJ_SANDBOX_POD``) and remembered by (pid, start
    time); its CPU time (``utime + stime + cutime + cstime`` of ``/proc/<pid>/stat``) is read each call, so
    a worker that ended and was reaped by its pod's torchrun still counts (in its parent's ``cutime``).
    """

    def __init__(self, state_dir: Path, *, proc: Path = Path("/proc")) -> None:
        self._state = str(Path(state_dir).resolve()).encode()
        self._proc = proc
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._tags: dict[int, tuple[int, str | None]] = {}

    def _tag(self, pid: int) -> str | None:
        try:
            raw = (self._proc / str(pid) / "environ").read_bytes()
        except OSError:
            return None
        env = dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if item)
        if env.get(ENV_STATE_TAG.encode()) != self._state:
            return None
        tag = env.get(ENV_POD_TAG.encode())
        return tag.decode(errors="replace") if tag else None

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per pod tag, now."""
        totals: dict[str, float] = {}
        alive: set[int] = set()
        me = os.getpid()
        try:
            entries = [e.name for e in os.scandir(self._proc) if e.name.isdigit()]
        except OSError:
            return totals
        for name in entries:
            pid = int(name)
            if pid == me:
                continue
            try:
                stat = (self._proc / name / "stat").read_text()
                fields = stat[stat.rfind(")") + 2:].split()
                ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
                start = int(fields[19])
            except (OSError, IndexError, ValueError):
                continue
            alive.add(pid)
            known = self._tags.get(pid)
            if known is None or known[0] != start:
                known = (start, self._tag(pid))
                self._tags[pid] = known
            if known[1] is not None:
                totals[known[1]] = totals.get(known[1], 0.0) + ticks / self._ticks
        for gone in [p for p in self._tags if p not in alive]:
            del self._tags[gone]
        return totals


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one sample (what ``/metrics`` serves). Units in the names."""

    gpu: NodeGpu
    holder: PodGpus | None
    load: float
    power_watts: float
    energy_mj: float


@dataclass
class _PodActivity:
    cpu_seconds: float
    at: float


class NodeDcgmExporter:
    """The node's simulated dcgm-exporter (see the module): ``start()``/``stop()``, or :meth:`sample` by hand."""

    def __init__(
        self,
        node: str,
        gpus_file: Path,
        holders: Callable[[], Sequence[PodGpus]],
        *,
        activity: ActivitySource | None = None,
        state_dir: Path | None = None,
        card: CardPower | None = None,
        interval_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if activity is None:
            if state_dir is None:
                raise ValueError("give an activity source or the sandbox's state_dir (its pods' processes)")
            activity = ProcessCpu(state_dir)
        self.node = node
        self.gpus_file = Path(gpus_file)
        self.holders = holders
        self.activity = activity
        self.card = card or CardPower()
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._readings: list[GpuReading] = []
        self._energy_mj: dict[str, float] = {}
        self._pods: dict[str, _PodActivity] = {}
        self._last_at: float | None = None
        self._problem: str | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None
        self._serving: threading.Thread | None = None

    # ----- sampling ---------------------------------------------------------------------------------------

    def sample(self) -> list[GpuReading]:
        """Take one sample now (the clock's time): each GPU's load, power (capped) and energy; returns them."""
        now = self.clock()
        try:
            gpus = read_node_gpus(self.gpus_file)
        except (OSError, ValueError, KeyError, TypeError) as e:
            if self._problem != str(e):
                self._problem = str(e)
                log.warning("node %s: simulated DCGM exporter cannot read %s: %s", self.node, self.gpus_file, e)
            return self.readings()
        self._problem = None
        by_uuid: dict[str, PodGpus] = {}
        for held in self.holders():
            for uuid in held.uuids:
                by_uuid.setdefault(uuid, held)  # a GPU held twice (never in the sandbox): its first holder
        cpu = self.activity.cpu_seconds()
        cores: dict[str, float] = {}
        for tag in {h.tag for h in by_uuid.values()}:
            used, before = cpu.get(tag), self._pods.get(tag)
            if used is not None and before is not None and now > before.at:
                cores[tag] = max(used - before.cpu_seconds, 0.0) / (now - before.at)
        self._pods = {tag: _PodActivity(seconds, now) for tag, seconds in cpu.items()}
        dt = 0.0 if self._last_at is None else max(now - self._last_at, 0.0)
        readings = []
        for gpu in gpus:
            holder = by_uuid.get(gpu.uuid)
            load = self.card.load(cores.get(holder.tag, 0.0), len(holder.uuids)) if holder is not None else 0.0
            watts = self.card.power_watts(load, gpu.limit_watts, gpu.min_limit_watts, gpu.max_limit_watts)
            energy = self._energy_mj.get(gpu.uuid, 0.0) + watts * dt * 1000.0  # the power of the interval ending now
            self._energy_mj[gpu.uuid] = energy
            readings.append(GpuReading(gpu, holder, load, watts, energy))
        with self._lock:
            self._readings = readings
            self._last_at = now
            self.samples += 1
        return readings

    def readings(self) -> list[GpuReading]:
        """The last sample's readings."""
        with self._lock:
            return list(self._readings)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.sample()
            except Exception as e:  # a bug must not end the node's measurements silently
                log.warning("node %s: simulated DCGM exporter sample failed: %r", self.node, e)

    # ----- the exposition ---------------------------------------------------------------------------------

    def _labels(self, reading: GpuReading) -> str:
        gpu = reading.gpu
        pairs = [(a.LABEL_GPU, str(gpu.index)), (a.LABEL_UUID, gpu.uuid), (a.LABEL_PCI_BUS_ID, gpu.pci_bus_id),
                 (a.LABEL_DEVICE, f"nvidia{gpu.index}"), (a.LABEL_MODEL_NAME, gpu.name or "Simulated GPU (simulated)"),
                 (a.LABEL_HOSTNAME, self.node)]
        if reading.holder is not None:
            pairs += [(a.LABEL_CONTAINER, reading.holder.container), (a.LABEL_NAMESPACE, reading.holder.namespace),
                      (a.LABEL_POD, reading.holder.pod)]
        pairs.append((a.LABEL_SOURCE, SIMULATED_SOURCE))
        return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"

    def render(self) -> str:
        """The ``/metrics`` text of the last sample (dcgm-exporter's format; see the module)."""
        readings = self.readings()
        lines: list[str] = []
        for metric in (METRIC_GPU_UTIL, n.METRIC_POWER_USAGE, n.METRIC_TOTAL_ENERGY_CONSUMPTION,
                       n.METRIC_POWER_MGMT_LIMIT):
            kind, text = _HELP[metric]
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
            for r in readings:
                if metric == METRIC_GPU_UTIL:
                    value = str(round(r.load * 100))
                elif metric == n.METRIC_POWER_USAGE:
                    value = f"{r.power_watts:.6f}"
                elif metric == n.METRIC_TOTAL_ENERGY_CONSUMPTION:
                    value = str(int(r.energy_mj))
                else:
                    value = f"{r.gpu.limit_watts:.6f}"
                lines.append(f"{metric}{self._labels(r)} {value}")
        return "\n".join(lines) + "\n"

    # ----- lifecycle --------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port served (after :meth:`start`)."""
        return int(self._server.server_address[1]) if self._server is not None else self._port

    @property
    def address(self) -> str:
        """``host:port``: a Prometheus static target."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where ``/metrics`` is served."""
        return f"http://{self.address}/metrics"

    def start(self) -> NodeDcgmExporter:
        """Take a first sample, serve ``/metrics`` and sample every ``interval_seconds`` in threads."""
        self.sample()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
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
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a scraper that gave up: no traceback
                    super().handle_error(request, client_address)  # type: ignore[arg-type]

        self._server = Server((self.host, self._port), Handler)
        self._serving = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                         name=f"etj-sandbox-dcgm-{self.node}", daemon=True)
        self._serving.start()
        self._stop.clear()
        self._sampler = threading.Thread(target=self._run, name=f"etj-sandbox-dcgm-sampler-{self.node}", daemon=True)
        self._sampler.start()
        log.info("node %s: simulated DCGM exporter on %s (every %g s)", self.node, self.metrics_url,
                 self.interval_seconds)
        return self

    def stop(self) -> None:
        """Stop sampling and serving."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)
            self._sampler = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._serving is not None:
                self._serving.join(timeout=10)
            self._server = self._serving = None

    def __enter__(self) -> NodeDcgmExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

