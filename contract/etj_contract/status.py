"""The closed vocabularies of the job's status: its phase and its condition types.

Both are ``enum.StrEnum``: a member *is* its string (``Phase.RUNNING == "Running"``), so it can be written
into a status dict or compared with one read from the API as it is. The CRD's ``status.phase`` enum lists
exactly the values of :class:`Phase` (``tests/contract/test_status.py`` checks it).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["TERMINAL", "ConditionType", "Phase"]


class Phase(enum.StrEnum):
    """``status.phase``: where the job is in its life (the CRD's enum, in its order)."""

    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    THROTTLED = "Throttled"
    RESCHEDULING = "Rescheduling"
    PAUSED = "Paused"
    SUSPENDED = "Suspended"
    #: Waiting for Kueue: the job's Workload is not admitted (yet, or again after an eviction); no pod runs.
    QUEUED = "Queued"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (Succeeded or Failed): nothing runs and nothing changes any more."""
        return self in TERMINAL


#: The phases a job ends in.
TERMINAL: Final[tuple[Phase, ...]] = (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(enum.StrEnum):
    """``status.conditions[].type``: every condition the operator sets on a job."""

    # the lifecycle's (etj_operator.conditions)
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    INVALID = "Invalid"
    #: True while the API server refuses a request of the job's pass (403, 422, ...).
    API_REQUEST_REFUSED = "ApiRequestRefused"
    #: True while pods the job does not own (an older job's of the same name, orphans) hold its pods' names.
    POD_NAME_TAKEN = "PodNameTaken"
    #: With the operator as Kueue's integration (ETJ_KUEUE): True while the job's Workload is not admitted, with
    #: Kueue's reason and message; False once it is (reason ``Admitted``).
    QUEUED = "Queued"
    # the energy policies' (etj_operator.policies)
    TELEMETRY_AVAILABLE = "TelemetryAvailable"
    THROTTLED = "Throttled"
    BUDGET_EXCEEDED = "BudgetExceeded"
    PAUSED = "Paused"
    RESCHEDULING = "Rescheduling"
    #: While a per-GPU cap is asked (the throttle, a Fixed limit): whether the GPUs' measured limits are at or
    #: under it. The Throttled condition and phase are True only while this is.
    POWER_CAP_ENFORCED = "PowerCapEnforced"
    #: With an energy budget: True (``ForecastOverBudget``) while the forecast energy at completion exceeds it,
    #: False (``ForecastWithinBudget``) while it fits, Unknown while the forecast is unknown or not mature.
    ENERGY_FORECAST = "EnergyForecast"
