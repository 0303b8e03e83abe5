"""The one interface every telemetry source implements, and the records it returns.

A source is asked once per telemetry cycle for the readings of *all* pods of all jobs that use it
(:meth:`TelemetrySource.collect`), so that a Prometheus source can answer with one query per metric no
matter how many jobs run. Readings are per GPU: energy accounting needs each GPU's own counter to handle
counter resets. Units live in the names (W, mJ, s).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Protocol


class TelemetryCause(StrEnum):
    """Why a job got the readings it got: the ``TelemetryAvailable`` condition's reason.

    The values are API: users and alerts match on them (docs/telemetry.md lists them).
    """

    #: Readings arrived for the job's pods.
    SAMPLES_RECEIVED = "SamplesReceived"
    #: None of the job's pods runs, so there is nothing to read.
    NO_RUNNING_PODS = "NoRunningPods"
    #: The source failed as a whole (Prometheus unreachable, HTTP error, timeout, malformed answer).
    QUERY_FAILED = "QueryFailed"
    #: Prometheus answered, but with no GPU series for these pods.
    NO_SERIES = "NoSeries"
    #: Prometheus has GPU series, but none carries the pod/namespace labels the operator reads.
    LABEL_MISMATCH = "LabelMismatch"
    #: Series named the job's pods but were not theirs (another node, older than the pod, too many GPUs).
    NOT_ATTRIBUTED = "SeriesNotAttributed"
    #: Direct: the pods' /metrics could not be scraped.
    SCRAPE_FAILED = "ScrapeFailed"
    #: The job's spec names a Prometheus URL (or query) the operator's allowlist does not permit.
    NOT_ALLOWED = "SourceNotAllowed"


def rfc3339_seconds(text: str | None) -> float | None:
    """Unix seconds of a Kubernetes timestamp (``2024-05-01T12:00:00Z``); None when missing or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


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
    #: The GPUs the pod requested (``nvidia.com/gpu``, limits or requests of its containers); None: unknown.
    #: A source attributes no more GPU series than this to the pod.
    gpus: int | None = None

    @property
    def start_seconds(self) -> float | None:
        """``start_time`` as Unix seconds (None when unknown)."""
        return rfc3339_seconds(self.start_time)

    @property
    def owner(self) -> str:
        """What a sample attributed to this pod names it by: its UID, or ``namespace/pod`` without one."""
        return self.uid or f"{self.namespace}/{self.pod}"


def same_node(a: str, b: str) -> bool:
    """Whether two node names are the same node (host names compare case-insensitively)."""
    return a.casefold() == b.casefold()


def attribution_problem(target: PodTarget, *, node: str | None, timestamp_seconds: float) -> str | None:
    """Why a GPU series read under the target's namespace/pod is *not* this pod's, or None when it is.

    A series is the pod's when it comes from the pod's node (``node``: the series' own node label, when it
    has one; checked only when both are known) and was sampled no earlier than the pod's start (a sample
    from before ``status.startTime`` was an earlier pod of the same name: Prometheus answers with a
    vanished series' last sample for a while). dcgm-exporter never labels a series with the pod's UID, so
    node and time are what tells two same-name pods apart. A node label equal to the pod's own name is the
    pod's host name, not a node's: the series was served by the pod itself (the harness's ``/metrics``
    through a PodMonitor), as with Direct, and only its time is checked.
    """
    if node and target.node and not same_node(node, target.node) and not same_node(node, target.pod):
        return f"series from node {node!r}, the pod runs on {target.node!r}"
    start = target.start_seconds
    if start is not None and timestamp_seconds < start:
        return (
            f"sample at {timestamp_seconds:.3f} is older than the pod's start {target.start_time}: "
            "an earlier pod of that name"
        )
    return None


#: Kinds of series not attributed to a pod (``TelemetryResult.rejected_by_kind``; the ``reason`` label of
#: ``etj_telemetry_rejected_series_total``): from another node, sampled before the pod started, beyond the GPUs
#: the pod requested, a second copy of a GPU already read, a GPU the node agent does not list as the pod's.
REJECT_NODE: Final = "node"
REJECT_BEFORE_START: Final = "before_start"
REJECT_TOO_MANY_GPUS: Final = "too_many_gpus"
REJECT_DUPLICATE: Final = "duplicate"
REJECT_NOT_HELD: Final = "not_held"


def attribution_kind(target: PodTarget, *, node: str | None) -> str:
    """The kind of the problem :func:`attribution_problem` found: ``node``, else ``before_start``."""
    if node and target.node and not same_node(node, target.node) and not same_node(node, target.pod):
        return REJECT_NODE
    return REJECT_BEFORE_START


@dataclass(frozen=True)
class GpuSample:
    """One GPU's readings at one moment.

    ``energy_mj`` is the GPU's cumulative energy counter (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ since the
    driver loaded; it may reset). ``power_watts`` is the instantaneous draw (DCGM_FI_DEV_POWER_USAGE).
    ``simulated`` is True when the reading comes from the harness's simulated GPU, never from hardware.
    ``uid`` is the UID of the pod the source attributed the reading to (see :func:`attribution_problem`),
    ``node`` that pod's node (the series' own node label when it has one), ``pod_start_seconds`` the pod's
    start; a source that was given no UID leaves ``uid`` empty.
    """

    namespace: str
    pod: str
    gpu: str
    timestamp_seconds: float
    power_watts: float | None = None
    energy_mj: float | None = None
    power_limit_watts: float | None = None
    simulated: bool = False
    uid: str = ""
    node: str | None = None
    pod_start_seconds: float | None = None

    @property
    def series(self) -> str:
        """The key of this GPU series in the energy state: ``<pod UID>/<GPU>`` (``<pod>/<GPU>`` without a UID).

        The GPU is its UUID (or its index when the series has none): a re-created pod of the same name has
        another UID, hence another series, whose first reading is its baseline.
        """
        return f"{self.uid or self.pod}/{self.gpu}"

    @property
    def legacy_series(self) -> str:
        """The key releases before UID keys used (``<pod>/<GPU>``), to take over their stored counters."""
        return f"{self.pod}/{self.gpu}"

    @property
    def owner(self) -> str:
        """The pod this reading belongs to, as :attr:`PodTarget.owner` names it."""
        return self.uid or f"{self.namespace}/{self.pod}"


@dataclass(frozen=True, order=True)
class AgentGpuError:
    """A GPU of a job on which the node agent's last operation failed (``etj_node_agent_gpu_error`` = 1)."""

    node: str
    #: The GPU's UUID, else its index.
    gpu: str
    #: ``discover``, ``read`` or ``set`` (etj_contract.agent.OPERATION_*).
    operation: str
    #: The error kind (etj_contract.agent.ERROR_KINDS: ``NoPermission``, ``NotSupported``, ``GpuNotFound``...).
    kind: str


@dataclass(frozen=True, order=True)
class AgentUnknownDevice:
    """A device allocated to a job's pod that the node agent does not find among its node's GPUs.

    From ``etj_node_agent_unknown_device`` = 1: a MIG device, or a GPU that fell off the bus.
    """

    node: str
    #: ``namespace/pod``.
    pod: str
    device_id: str


@dataclass(frozen=True)
class AgentFindings:
    """What the node agent's series said of one job's nodes and GPUs in one telemetry cycle.

    Only a source that reads the agent's series fills it (``read``); Direct, or Prometheus without the agent's
    metric, leaves it empty and ``read`` False: then nothing here says anything about the agent.
    """

    #: The source read the agent's series for the job's pods this cycle (Prometheus: it had some, from any node).
    read: bool = False
    #: Nodes running the job's pods on which no agent publishes any series (sorted).
    nodes_without_agent: tuple[str, ...] = ()
    #: The job's GPUs (those the agent lists as its pods') on which the agent's last operation failed (sorted).
    gpu_errors: tuple[AgentGpuError, ...] = ()
    #: Devices allocated to the job's pods that the agent does not find on the node (sorted).
    unknown_devices: tuple[AgentUnknownDevice, ...] = ()

    @classmethod
    def combine(cls, parts: Iterable[AgentFindings]) -> AgentFindings:
        """The findings of several pods as one job's (``read`` when any part was read)."""
        found = list(parts)
        return cls(
            read=any(p.read for p in found),
            nodes_without_agent=tuple(sorted({n for p in found for n in p.nodes_without_agent})),
            gpu_errors=tuple(sorted({e for p in found for e in p.gpu_errors})),
            unknown_devices=tuple(sorted({u for p in found for u in p.unknown_devices})),
        )


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
    #: Series read under a target's namespace/pod but not attributed to it (another node, older than the
    #: pod's start): how many, and the last reason per ``"<namespace>/<pod>"``. Not an error.
    rejected: int = 0
    rejected_reasons: dict[str, str] = field(default_factory=dict)
    #: Series not attributed, counted by kind of reason (``node``, ``before_start``, ``too_many_gpus``,
    #: ``duplicate``...): the operator's ``etj_telemetry_rejected_series_total{reason}``.
    rejected_by_kind: dict[str, int] = field(default_factory=dict)
    #: When the source found no series for some targets: the label names the GPU series it saw carry
    #: (to name a label mismatch), empty when it saw no GPU series at all.
    labels_seen: tuple[str, ...] = ()
    #: Set with ``error`` when the backend answered with an HTTP error: its status code (never its body).
    status_code: int | None = None
    #: The cause of ``error`` (QUERY_FAILED, NOT_ALLOWED, ...), None without an error.
    error_cause: TelemetryCause | None = None
    #: What the node agent's series say of each target's node and GPUs, by :attr:`PodTarget.owner`; empty when the
    #: source does not read them.
    agent: dict[str, AgentFindings] = field(default_factory=dict)

    def reject(self, target: PodTarget, reason: str, kind: str = "other") -> None:
        """Count a series that is not ``target``'s own (``kind`` names the reason for metrics)."""
        self.rejected += 1
        self.rejected_reasons[f"{target.namespace}/{target.pod}"] = reason
        self.rejected_by_kind[kind] = self.rejected_by_kind.get(kind, 0) + 1


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


@dataclass
class JobTelemetry:
    """One cycle's readings for one job."""

    cycle: int
    time_seconds: float
    source: str
    samples: list[GpuSample] = field(default_factory=list)
    ok: bool = False
    #: The operator's own words on what went wrong (never a backend's response body); empty when ok.
    reason: str = ""
    #: What ``reason`` is, as the condition's reason.
    cause: TelemetryCause = TelemetryCause.SAMPLES_RECEIVED
    intensity_grams_per_kwh: float | None = None
    #: Why the job's carbon-intensity query was not run (the operator does not allow it); "" otherwise.
    intensity_refused: str = ""
    #: What the node agent's series say of the job's nodes and GPUs (empty when the source does not read them).
    agent: AgentFindings = field(default_factory=AgentFindings)
