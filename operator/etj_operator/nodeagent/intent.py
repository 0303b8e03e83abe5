"""API objects as the node agent's records (pure): a job's intent, a pod's identity and controller.

A job's intent is the per-GPU limit its pods' GPUs should have:

* mode Fixed: ``spec.energy.power.limitWatts``, lowered to the operator's cap when there is one
  (``status.control.powerLimitWattsPerGPU``: the throttle);
* mode Unmanaged: the operator's cap, or nothing;
* mode Auto (:attr:`JobIntent.pod_managed`): the harness picks each candidate and asks for it in its report;
  the operator answers the clamped value (``status.control.autoLimitWattsPerGPU``: :attr:`JobIntent.auto_watts`,
  never above the cap), which the agent applies; the operator's cap applies while there is no answer. A pod that
  can set limits itself (SYS_ADMIN: built for the in-pod path) keeps them, under the cap as a ceiling;
* a finished job (a terminal phase) asks nothing.

The spec is read with the contract's :class:`~etj_contract.plans.PowerPolicy` (the CRD's bounds), the control
section with :class:`~etj_contract.report.ControlSection`; what cannot be read is named in
:attr:`JobIntent.problems` and asks nothing (a malformed spec caps nothing; a malformed cap is dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etj_contract import agent as a
from etj_contract import names as n
from etj_contract.plans import PlanError, PowerPolicy
from etj_contract.report import ControlSection
from etj_operator.nodeagent.records import JobIntent, PodInfo

__all__ = ["job_intent", "pod_info"]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def job_intent(job: Mapping[str, Any]) -> JobIntent:
    """The intent of ``job`` (an EfficientTrainingJob as read from the API; see the module)."""
    uid = str(_mapping(job.get("metadata")).get("uid") or "")
    status = _mapping(job.get("status"))
    phase = status.get("phase")
    if phase in n.TERMINAL_PHASES:
        return JobIntent(uid, source=f"phase {phase}")
    problems: list[str] = []
    power_path = f"spec.{a.SPEC_ENERGY}.{a.SPEC_POWER}"
    raw_power = _mapping(job.get("spec")).get(a.SPEC_ENERGY)
    raw_power = _mapping(raw_power).get(a.SPEC_POWER)
    policy: PowerPolicy | None
    try:
        policy = PowerPolicy.from_json(raw_power if raw_power is not None else {}, power_path)
    except PlanError as e:
        policy = None
        problems.append(str(e))
    control = ControlSection.from_status(status.get(n.CONTROL))
    problems += control.problems
    cap = control.power_limit_watts_per_gpu
    if cap is not None and cap <= 0:
        problems.append(f"status.{n.CONTROL}.{n.CONTROL_POWER_LIMIT_WATTS_PER_GPU}: {cap} is no limit; dropped")
        cap = None
    cap_source = f"status.{n.CONTROL}.{n.CONTROL_POWER_LIMIT_WATTS_PER_GPU} {cap} W"
    if policy is None:
        # An unreadable spec: only the operator's own cap (it has checked the spec) is applied.
        return JobIntent(uid, cap, source=cap_source if cap is not None else "", problems=tuple(problems))
    if policy.mode == "Auto":
        auto = control.auto_limit_watts_per_gpu
        if auto is not None and auto <= 0:
            problems.append(f"status.{n.CONTROL}.{n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU}: {auto} is no limit; dropped")
            auto = None
        if auto is not None and cap is not None and auto > cap:
            auto = cap  # the operator never answers above its cap; a status edited by hand gets the cap
        source = "Auto" + (f", {cap_source}" if cap else "")
        if auto is not None:
            seq = control.auto_request_seq
            source += f", status.{n.CONTROL}.{n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU} {auto} W (request {seq})"
        return JobIntent(uid, cap, pod_managed=True, auto_watts=auto, source=source, problems=tuple(problems))
    if policy.mode == "Fixed" and policy.limit_watts is not None:
        fixed = policy.limit_watts
        if cap is not None and cap < fixed:
            return JobIntent(uid, cap, source=f"{cap_source} (Fixed {fixed} W)", problems=tuple(problems))
        return JobIntent(uid, fixed, source=f"Fixed {fixed} W", problems=tuple(problems))
    return JobIntent(uid, cap, source=cap_source if cap is not None else "", problems=tuple(problems))


def pod_info(pod: Mapping[str, Any]) -> PodInfo | None:
    """The agent's record of a pod object; None when it lacks a name, namespace or UID."""
    meta = _mapping(pod.get("metadata"))
    uid, name, namespace = meta.get("uid"), meta.get("name"), meta.get("namespace")
    if not (isinstance(uid, str) and uid and isinstance(name, str) and name and isinstance(namespace, str)
            and namespace):
        return None
    labels = {str(k): str(v) for k, v in _mapping(meta.get("labels")).items() if isinstance(v, str)}
    sets_own_limits = _may_set_limits(_mapping(pod.get("spec")))
    phase = _mapping(pod.get("status")).get("phase")
    job_uid = job_name = None
    owners = meta.get("ownerReferences")
    for owner in owners if isinstance(owners, list) else []:
        if not isinstance(owner, Mapping) or owner.get("controller") is not True:
            continue
        group = str(owner.get("apiVersion") or "").split("/", 1)[0]
        owner_uid, owner_name = owner.get("uid"), owner.get("name")
        if (owner.get("kind") == n.KIND and group == n.GROUP and isinstance(owner_uid, str) and owner_uid
                and isinstance(owner_name, str) and owner_name):
            job_uid, job_name = owner_uid, owner_name
        break  # one controller at most
    return PodInfo(uid, namespace, name, phase if isinstance(phase, str) else "", labels, job_uid, job_name,
                   sets_own_limits)


def _may_set_limits(spec: Mapping[str, Any]) -> bool:
    """Whether a container of the pod may set GPU limits through NVML: privileged, or SYS_ADMIN added."""
    containers = spec.get("containers")
    for container in containers if isinstance(containers, list) else []:
        context = _mapping(_mapping(container).get("securityContext"))
        if context.get("privileged") is True:
            return True
        added = _mapping(context.get("capabilities")).get("add")
        if isinstance(added, list) and any(str(cap).upper().removeprefix("CAP_") == "SYS_ADMIN" for cap in added):
            return True
    return False
