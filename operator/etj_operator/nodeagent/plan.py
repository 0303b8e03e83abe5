"""The node agent's decision (pure: no I/O, no clock): the limit every GPU of the node should have, and why.

Inputs: the node's GPUs, the kubelet's allocations (which container holds which device), the node's pods as
the API shows them (UID, controller job UID, phase), and the intent of each job those pods belong to, by job
UID. Each GPU gets one :class:`~etj_operator.nodeagent.records.Decision`:

* held by pods of one job that asks a limit: that limit, clamped to the card's constraints (``JobLimit``, or
  ``JobLimitClamped`` when the constraints changed it);
* held by pods of one Auto job, pods without the privilege to set limits (the agent enforces): the operator's
  answer to the harness's request (``AutoCandidate``), else the operator's cap (``JobLimit``), else the
  default (``NoLimitAsked``);
* held by pods of one Auto job that set their own limits (SYS_ADMIN, the in-pod path): ``leave``
  (``PodManaged``), or, with an operator cap, ``ceiling`` (``JobCeiling``: only a limit above the cap is
  lowered to it);
* anything else goes back to the card's default limit: not held (``NotHeld``), held by a pod the API does not
  show (``PodUnknown``), by a finished pod (``PodFinished``), by a pod no EfficientTrainingJob controls
  (``UnmanagedPod``), by a pod whose job is gone, a re-created job of the same name included, as jobs are known
  by UID only (``JobGone``), by a pod whose job asks no limit (``NoLimitAsked``), or shared by pods that do not
  all want the same (``SharedGpu``: the agent caps a GPU for one job only).

An input that could not be read is :class:`~etj_operator.nodeagent.records.Unavailable`: ``PENDING`` (never
read since the agent started, within the grace) keeps the limit in force (``leave``, ``InputsPending``);
``EXPIRED`` (failing past the grace) sends what depends on it to the default (``InputsExpired``). A GPU the
kubelet says nobody holds is reset whatever the API's state: that needs no attribution.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from etj_contract import agent as a
from etj_operator.nodeagent.records import (
    Action,
    ContainerAllocation,
    Decision,
    GpuDevice,
    Holder,
    JobIntent,
    NodePlan,
    PodInfo,
    Unavailable,
    UnknownDevice,
)

__all__ = ["FINISHED_POD_PHASES", "device_uuid", "plan_node"]

#: Pod phases whose containers have all ended: the pod holds its GPUs no more.
FINISHED_POD_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class _Verdict:
    """What one holder wants of a GPU. ``action`` "default": the card's default limit."""

    action: Action | None
    watts: int | None
    reason: str
    job_uid: str | None = None


_DEFAULT = None  # _Verdict.action for "the card's default limit"


def device_uuid(device_id: str) -> str:
    """The GPU a device plugin id names: ``GPU-x::2`` (a time-sliced replica) is ``GPU-x``."""
    return device_id.split("::", 1)[0]


def _resolve(device_id: str, by_uuid: Mapping[str, GpuDevice], by_index: Mapping[int, GpuDevice]) -> GpuDevice | None:
    key = device_uuid(device_id)
    if key in by_uuid:
        return by_uuid[key]
    if key.isdigit():  # the device plugin's index strategy (DEVICE_ID_STRATEGY=index)
        return by_index.get(int(key))
    return None


def _unavailable(state: Unavailable) -> _Verdict:
    if state is Unavailable.PENDING:
        return _Verdict("leave", None, a.REASON_INPUTS_PENDING)
    return _Verdict(_DEFAULT, None, a.REASON_INPUTS_EXPIRED)


def _holder_verdict(
    holder: ContainerAllocation,
    pods: Mapping[tuple[str, str], PodInfo],
    intents: Mapping[str, JobIntent | Unavailable],
) -> tuple[_Verdict, PodInfo | None]:
    pod = pods.get((holder.namespace, holder.pod))
    if pod is None:
        return _Verdict(_DEFAULT, None, a.REASON_POD_UNKNOWN), None
    if pod.phase in FINISHED_POD_PHASES:
        return _Verdict(_DEFAULT, None, a.REASON_POD_FINISHED, pod.job_uid), pod
    if pod.job_uid is None:
        return _Verdict(_DEFAULT, None, a.REASON_UNMANAGED_POD), pod
    intent = intents.get(pod.job_uid)
    if intent is None:
        return _Verdict(_DEFAULT, None, a.REASON_JOB_GONE, pod.job_uid), pod
    if isinstance(intent, Unavailable):
        verdict = _unavailable(intent)
        return _Verdict(verdict.action, None, verdict.reason, pod.job_uid), pod
    if intent.pod_managed and not pod.sets_own_limits:
        if intent.auto_watts is not None:
            return _Verdict("set", intent.auto_watts, a.REASON_AUTO_CANDIDATE, pod.job_uid), pod
        if intent.watts is None:
            return _Verdict(_DEFAULT, None, a.REASON_NO_LIMIT_ASKED, pod.job_uid), pod
        return _Verdict("set", intent.watts, a.REASON_JOB_LIMIT, pod.job_uid), pod
    if intent.pod_managed:
        if intent.watts is None:
            return _Verdict("leave", None, a.REASON_POD_MANAGED, pod.job_uid), pod
        return _Verdict("ceiling", intent.watts, a.REASON_JOB_CEILING, pod.job_uid), pod
    if intent.watts is None:
        return _Verdict(_DEFAULT, None, a.REASON_NO_LIMIT_ASKED, pod.job_uid), pod
    return _Verdict("set", intent.watts, a.REASON_JOB_LIMIT, pod.job_uid), pod


def _decide(device: GpuDevice, verdict: _Verdict, holders: tuple[Holder, ...]) -> Decision:
    if verdict.action is _DEFAULT:
        return Decision(device, "set", device.default_mw, verdict.reason, holders, verdict.job_uid)
    if verdict.action == "leave" or verdict.watts is None:
        return Decision(device, "leave", None, verdict.reason, holders, verdict.job_uid)
    asked_mw = verdict.watts * 1000
    target = device.clamp_mw(asked_mw)
    reason, note = verdict.reason, ""
    if target != asked_mw:
        note = f"asked {verdict.watts} W, the card allows {device.min_mw / 1000:g}..{device.max_mw / 1000:g} W"
        if verdict.action == "set" and reason == a.REASON_JOB_LIMIT:
            reason = a.REASON_JOB_LIMIT_CLAMPED
    return Decision(device, verdict.action, target, reason, holders, verdict.job_uid, verdict.watts, note)


def plan_node(
    devices: Sequence[GpuDevice],
    allocations: Sequence[ContainerAllocation] | Unavailable,
    pods: Sequence[PodInfo] | Unavailable,
    intents: Mapping[str, JobIntent | Unavailable],
    resources: Collection[str] = (a.RESOURCE_NVIDIA_GPU,),
) -> NodePlan:
    """Decide every GPU's limit (see the module). ``intents``: job UID -> intent; a UID absent is a job gone."""
    by_uuid = {d.uuid: d for d in devices}
    by_index = {d.index: d for d in devices}
    held: dict[str, list[ContainerAllocation]] = {d.uuid: [] for d in devices}
    unknown: list[UnknownDevice] = []
    if not isinstance(allocations, Unavailable):
        for allocation in allocations:
            if allocation.resource not in resources:
                continue
            for device_id in allocation.device_ids:
                device = _resolve(device_id, by_uuid, by_index)
                if device is None:
                    unknown.append(UnknownDevice(device_id, allocation.namespace, allocation.pod, allocation.container))
                    continue
                same = [h for h in held[device.uuid] if (h.namespace, h.pod, h.container) ==
                        (allocation.namespace, allocation.pod, allocation.container)]
                if not same:
                    held[device.uuid].append(allocation)
    pods_by_name = {} if isinstance(pods, Unavailable) else {(p.namespace, p.name): p for p in pods}

    decisions: list[Decision] = []
    for device in sorted(devices, key=lambda d: (d.index, d.uuid)):
        if isinstance(allocations, Unavailable):
            decisions.append(_decide(device, _unavailable(allocations), ()))
            continue
        allocated = held[device.uuid]
        if not allocated:
            decisions.append(_decide(device, _Verdict(_DEFAULT, None, a.REASON_NOT_HELD), ()))
            continue
        if isinstance(pods, Unavailable):
            holders = tuple(Holder(h.namespace, h.pod, h.container) for h in allocated)
            decisions.append(_decide(device, _unavailable(pods), holders))
            continue
        verdicts: list[_Verdict] = []
        holder_list: list[Holder] = []
        for allocation in allocated:
            verdict, pod = _holder_verdict(allocation, pods_by_name, intents)
            verdicts.append(verdict)
            holder_list.append(
                Holder(
                    allocation.namespace,
                    allocation.pod,
                    allocation.container,
                    pod.uid if pod else None,
                    pod.job_uid if pod else None,
                )
            )
        distinct = set(verdicts)
        chosen = verdicts[0] if len(distinct) == 1 else _Verdict(_DEFAULT, None, a.REASON_SHARED)
        decisions.append(_decide(device, chosen, tuple(holder_list)))
    return NodePlan(tuple(decisions), tuple(unknown))
