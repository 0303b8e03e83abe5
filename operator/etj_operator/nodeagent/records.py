"""The node agent's records: GPUs, the kubelet's allocations, pods, jobs' intents (pure data, no I/O).

Power limits are in milliwatts (NVML's unit) wherever a GPU is concerned, so that a card's default limit is
kept exactly; a job asks in whole watts (``status.control.powerLimitWattsPerGPU``, ``spec.energy.power
.limitWatts``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Action",
    "ContainerAllocation",
    "Decision",
    "GpuDevice",
    "Holder",
    "JobIntent",
    "NodePlan",
    "PodInfo",
    "Unavailable",
    "UnknownDevice",
]


@dataclass(frozen=True)
class GpuDevice:
    """One GPU of the node, as the backend lists it. Units: mW."""

    uuid: str
    index: int
    name: str
    min_mw: int
    max_mw: int
    default_mw: int
    pci_bus_id: str = ""

    def clamp_mw(self, limit_mw: int) -> int:
        """``limit_mw`` within the card's constraints."""
        return max(self.min_mw, min(self.max_mw, limit_mw))


@dataclass(frozen=True)
class ContainerAllocation:
    """What the kubelet says one container holds of one resource (PodResources ``ContainerDevices``)."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class PodInfo:
    """A pod of the node, as read from the API: its identity and the job (by UID) that controls it."""

    uid: str
    namespace: str
    name: str
    phase: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The UID of the controller ownerReference when the controller is an EfficientTrainingJob; None otherwise.
    job_uid: str | None = None
    #: That job's name (the pod's namespace is the job's): how the agent reads the job, then checks its UID.
    job_name: str | None = None
    #: A container of the pod may set GPU limits itself (``privileged``, or ``SYS_ADMIN`` added): a pod built
    #: for the in-pod NVML path. The agent leaves such a pod's Auto limits to it (``PodManaged``).
    sets_own_limits: bool = False


@dataclass(frozen=True)
class JobIntent:
    """What a job asks of the GPUs its pods hold.

    ``watts``: the per-GPU limit (W), None when the job asks none. ``pod_managed``: mode Auto, where the pod's
    harness picks the limit; ``watts`` is then the operator's cap (None: none). ``auto_watts``: mode Auto, the
    operator's answer to the harness's request (``status.control.autoLimitWattsPerGPU``, at most the cap).

    For mode Auto the agent applies ``auto_watts``, else ``watts``, else the default limit, to the GPUs of pods
    without the privilege to set limits; a pod that has it sets its own, and ``watts`` is then a ceiling.
    """

    uid: str
    watts: int | None = None
    pod_managed: bool = False
    auto_watts: int | None = None
    #: Where the limit comes from, for logs ("Fixed 300 W", "status.control 250 W").
    source: str = ""
    #: What could not be read from the job (a malformed spec or control section); the job then asks nothing.
    problems: tuple[str, ...] = ()


class Unavailable(enum.Enum):
    """An input the agent could not read."""

    #: Not read since the agent started, within the grace: the limits in force are kept.
    PENDING = "pending"
    #: Failing for longer than the grace: what depends on it goes back to the default limit.
    EXPIRED = "expired"


Action = Literal["set", "ceiling", "leave"]


@dataclass(frozen=True)
class Holder:
    """A container that holds a GPU, and what the agent knows of its pod."""

    namespace: str
    pod: str
    container: str
    pod_uid: str | None = None
    job_uid: str | None = None


@dataclass(frozen=True)
class Decision:
    """The limit the agent wants on one GPU, and why.

    ``action``: ``set`` brings the GPU to ``target_mw``; ``ceiling`` lowers it to ``target_mw`` only when the
    limit in force is above; ``leave`` keeps whatever is in force (``target_mw`` None).
    """

    device: GpuDevice
    action: Action
    target_mw: int | None
    reason: str
    holders: tuple[Holder, ...] = ()
    job_uid: str | None = None
    #: What the job asked before the card's constraints were applied. Units: W.
    requested_watts: int | None = None
    #: One line for logs ("asked 150 W, the card allows 200..700 W").
    note: str = ""


@dataclass(frozen=True)
class UnknownDevice:
    """An allocation of a device id that is none of the node's GPUs."""

    device_id: str
    namespace: str
    pod: str
    container: str


@dataclass(frozen=True)
class NodePlan:
    """The decision for every GPU of the node, and the allocations that named no GPU of it."""

    decisions: tuple[Decision, ...]
    unknown_devices: tuple[UnknownDevice, ...] = ()

    def by_uuid(self) -> dict[str, Decision]:
        """The decisions keyed by GPU UUID."""
        return {d.device.uuid: d for d in self.decisions}
