"""What the operator hands the harness through the pod environment, and the numbers both sides apply.

Today: the defaults and bounds of the Auto power mode (``spec.energy.power.auto``, handed to the harness as
the ``auto`` object of ``ETJ_POWER_POLICY``). The operator fills the defaults in when it parses the spec
(``etj_operator.models``); the harness applies the same ones when a field is absent and rejects a value out of
the same bounds (``etj_workload.config``); the CRD states them again for the API server, and
``tests/contract/test_plans.py`` checks the three agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "AUTO_BOUNDS",
    "AUTO_DEFAULTS",
    "AUTO_KEYS",
    "AutoPowerBounds",
    "AutoPowerDefaults",
    "IntRange",
    "NumberRange",
]


@dataclass(frozen=True)
class IntRange:
    """An inclusive range of integers (the CRD's ``minimum`` and ``maximum``)."""

    minimum: int
    maximum: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.minimum <= value <= self.maximum

    def __str__(self) -> str:
        return f"{self.minimum}..{self.maximum}"


@dataclass(frozen=True)
class NumberRange:
    """An inclusive range of numbers (the CRD's ``minimum`` and ``maximum``)."""

    minimum: float
    maximum: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and self.minimum <= value <= self.maximum

    def __str__(self) -> str:
        return f"{self.minimum:g}..{self.maximum:g}"


@dataclass(frozen=True)
class AutoPowerDefaults:
    """What applies when a field of ``spec.energy.power.auto`` is absent (the CRD's ``default``)."""

    #: Weight of energy against time in the cost ``eta*E + (1-eta)*P_max*T`` (1 = energy only).
    eta: float = 0.5
    #: Unmeasured steps at each candidate limit before measuring (the clock settles).
    warmup_steps: int = 5
    #: Measured steps at each candidate limit.
    profile_steps: int = 10
    #: Distance between two candidate limits (W).
    step_watts: int = 25
    #: Optional: step time at most this factor of the step time at the maximum limit; None: no constraint.
    max_slowdown: float | None = None


@dataclass(frozen=True)
class AutoPowerBounds:
    """The inclusive bounds of each field of ``spec.energy.power.auto``."""

    eta: NumberRange = NumberRange(0.0, 1.0)
    warmup_steps: IntRange = IntRange(0, 100_000)
    profile_steps: IntRange = IntRange(1, 100_000)
    step_watts: IntRange = IntRange(5, 500)
    max_slowdown: NumberRange = NumberRange(1.0, 10.0)


AUTO_DEFAULTS: Final = AutoPowerDefaults()
AUTO_BOUNDS: Final = AutoPowerBounds()
#: The camelCase key of each field, in ``spec.energy.power.auto`` and in ``ETJ_POWER_POLICY``'s ``auto``.
AUTO_KEYS: Final[dict[str, str]] = {
    "eta": "eta",
    "warmup_steps": "warmupSteps",
    "profile_steps": "profileSteps",
    "step_watts": "stepWatts",
    "max_slowdown": "maxSlowdown",
}
