"""The one interface every telemetry source implements, and the records it returns.

A source is asked once per telemetry cycle for the readings of *all* pods of all jobs that use it
(:meth:`TelemetrySource.collect`), so that a Prometheus source can answer with one query per metric no
matter how many jobs run. Readings are per GPU: energy accounting needs each GPU's own counter to handle
counter resets. Units live in the names (W, mJ, s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PodTarget:
    """A worker pod whose GPUs are to be read, and the job it belongs to."""

    namespace: str
    pod: str
    job: str
    pod_ip: str | None = None
    metrics_port: int = 9400
    #: The pod's UID, its node and its ``status.startTime`` (RFC 3339): a series is this pod's only when it
    #: comes from this node, after this start (a same-name pod of another job is another pod).
    uid: str = ""
    node: str | None = None
    start_time: str | None = None


@dataclass(frozen=True)
class GpuSample:
    """One GPU's readings at one moment.

    ``energy_mj`` is the GPU's cumulative energy counter (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ since the
    driver loaded; it may reset). ``power_watts`` is the instantaneous draw (DCGM_FI_DEV_POWER_USAGE).
    ``simulated`` is True when the reading comes from the harness's simulated GPU, never from hardware.
    """

    namespace: str
    pod: str
    gpu: str
    timestamp_seconds: float
    power_watts: float | None = None
    energy_mj: float | None = None
    power_limit_watts: float | None = None
    simulated: bool = False

    @property
    def series(self) -> str:
        """A stable key for this GPU's series (used to remember the last counter value)."""
        return f"{self.pod}/{self.gpu}"


@dataclass
class TelemetryResult:
    """What one cycle of a source produced."""

    samples: list[GpuSample] = field(default_factory=list)
    #: Requests made to the backend this cycle (Prometheus queries, or pod scrapes for Direct).
    requests: int = 0
    #: Set when the whole source failed this cycle (e.g. Prometheus unreachable); samples are then empty.
    error: str | None = None
    #: Pods that could not be read (Direct: scrape failed), with the reason.
    pod_errors: dict[str, str] = field(default_factory=dict)


class TelemetrySource(Protocol):
    """Reads GPU power and energy for many pods at once."""

    #: "Prometheus" or "Direct", as in spec.energy.telemetry.source.
    name: str

    async def collect(self, targets: Sequence[PodTarget]) -> TelemetryResult:
        """Read every target's GPUs; never raise for backend failures (report them in the result)."""
        ...

    async def query_scalar(self, promql: str) -> float | None:
        """Evaluate a PromQL expression giving one number (carbon intensity); None when unavailable."""
        ...
