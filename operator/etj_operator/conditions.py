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

Condition = dict[str, Any]

CREATED: Final = "Created"
RUNNING: Final = "Running"
RESTARTING: Final = "Restarting"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
SUSPENDED: Final = "Suspended"
INVALID: Final = "Invalid"
#: True while the API server refuses a request of the job's pass (403, 422, ...): which object, and why.
API_REQUEST_REFUSED: Final = "ApiRequestRefused"
CONDITION_TYPES: Final = (CREATED, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED, INVALID, API_REQUEST_REFUSED)

_EXCLUSIVE: Final = {RUNNING: RESTARTING, RESTARTING: RUNNING}
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
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """Return a new list with the condition set, following the module's rules."""
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
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> None:
    value = "True" if status else "False"
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
