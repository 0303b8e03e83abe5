"""Kubernetes-style conditions with fixed transition rules.

Rules (after Kubeflow's status helper, written for this project):

* ``lastTransitionTime`` changes only when a condition's status flips; reason and message may change freely.
* ``Running`` and ``Restarting`` are exclusive: setting one True sets the other False.
* Once ``Succeeded`` or ``Failed`` is True the job is final: other conditions no longer change, except
  that ``Invalid`` may clear when the user fixes the spec (the job then starts again).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Final

from etj_contract import ConditionType

Condition = dict[str, Any]

# The lifecycle's condition types (members of the contract's ConditionType).
CREATED: Final = ConditionType.CREATED
RUNNING: Final = ConditionType.RUNNING
RESTARTING: Final = ConditionType.RESTARTING
SUCCEEDED: Final = ConditionType.SUCCEEDED
FAILED: Final = ConditionType.FAILED
SUSPENDED: Final = ConditionType.SUSPENDED
INVALID: Final = ConditionType.INVALID
#: True while the API server refuses a request of the job's pass (403, 422, ...): which object, and why.
API_REQUEST_REFUSED: Final = ConditionType.API_REQUEST_REFUSED
#: True while pods of another job (an older job of the same name, or orphans) hold the gang's names: it waits.
POD_NAME_TAKEN: Final = ConditionType.POD_NAME_TAKEN
#: With the operator as Kueue's integration: True while the job's Workload is not admitted (etj_operator.kueue).
QUEUED: Final = ConditionType.QUEUED
CONDITION_TYPES: Final = (
    CREATED,
    RUNNING,
    RESTARTING,
    SUCCEEDED,
    FAILED,
    SUSPENDED,
    INVALID,
    API_REQUEST_REFUSED,
    POD_NAME_TAKEN,
    QUEUED,
)

_EXCLUSIVE: Final[dict[str, str]] = {RUNNING: RESTARTING, RESTARTING: RUNNING}
_FINAL: Final = (SUCCEEDED, FAILED)

# Reasons, CamelCase as Kubernetes uses them.
REASON_JOB_CREATED: Final = "JobCreated"
REASON_PODS_RUNNING: Final = "PodsRunning"
REASON_POD_FAILED: Final = "PodFailed"
REASON_BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
REASON_DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
REASON_JOB_SUCCEEDED: Final = "JobSucceeded"
REASON_SUSPENDED: Final = "JobSuspended"
REASON_RESUMED: Final = "JobResumed"
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_SPEC_FIXED: Final = "SpecFixed"
REASON_GANG_RESTARTED: Final = "GangRestarted"
#: ApiRequestRefused False again: every request of a pass was accepted.
REASON_REQUESTS_ACCEPTED: Final = "RequestsAccepted"
#: A spec field that shapes the pods' world changed: the whole gang is replaced (not counted as a restart).
REASON_SPEC_CHANGED: Final = "SpecChanged"
#: PodNameTaken True (and its Warning Event): pods the job does not own hold its names or its DNS names.
REASON_POD_NAME_TAKEN: Final = "PodNameTaken"
#: PodNameTaken False again: the other job's pods are gone.
REASON_POD_NAMES_FREE: Final = "PodNamesFree"
#: Warning Event: a child (ServiceAccount, Role, RoleBinding, Service) of another owner holds the child's name.
REASON_CHILD_NAME_TAKEN: Final = "ChildNameTaken"
#: Running/Restarting False while the job waits for Kueue's admission (phase Queued).
REASON_QUEUED: Final = "Queued"
#: Warning Event: the template's trainer sets variables the operator generates; the operator's values win.
REASON_ENV_OVERRIDDEN: Final = "EnvOverridden"


def find(conditions: Sequence[Condition], ctype: str) -> Condition | None:
    """The condition of this type, or None."""
    return next((cnd for cnd in conditions if cnd.get("type") == ctype), None)


def is_true(conditions: Sequence[Condition], ctype: str) -> bool:
    """Whether the condition of this type exists with status "True"."""
    cnd = find(conditions, ctype)
    return cnd is not None and cnd.get("status") == "True"


def is_final(conditions: Sequence[Condition]) -> bool:
    """Whether Succeeded or Failed is True."""
    return any(is_true(conditions, t) for t in _FINAL)


def set_condition(
    conditions: Sequence[Condition],
    ctype: str,
    status: bool | None,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """Return a new list with the condition set, following the module's rules (``status`` None: Unknown)."""
    result = [copy.deepcopy(cnd) for cnd in conditions]
    if is_final(result) and ctype not in (INVALID,) and not (ctype in _FINAL and is_true(result, ctype)):
        return result
    _apply(result, ctype, status, reason, message, now, generation)
    if status and ctype in _EXCLUSIVE and find(result, _EXCLUSIVE[ctype]) is not None:
        _apply(result, _EXCLUSIVE[ctype], False, reason, message, now, generation)
    if status and ctype in _FINAL:
        for other in (RUNNING, RESTARTING):
            if find(result, other) is not None:
                _apply(result, other, False, reason, message, now, generation)
    return result


def clear_final(conditions: Sequence[Condition]) -> list[Condition]:
    """Drop Succeeded/Failed (used only when a Failed(Invalid) job's spec is fixed)."""
    return [copy.deepcopy(cnd) for cnd in conditions if cnd.get("type") not in _FINAL]


def _apply(
    conditions: list[Condition],
    ctype: str,
    status: bool | None,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> None:
    value = "Unknown" if status is None else "True" if status else "False"
    existing = find(conditions, ctype)
    if existing is None:
        existing = {"type": ctype}
        conditions.append(existing)
    if existing.get("status") != value:
        existing["lastTransitionTime"] = now
    existing["status"] = value
    existing["reason"] = reason
    existing["message"] = message
    if generation is not None:
        existing["observedGeneration"] = generation
