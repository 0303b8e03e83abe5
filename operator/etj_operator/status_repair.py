"""The job's status read back as defensively as its spec (pure): a malformed value is reported and repaired.

Only the operator writes ``status`` (the workload writes its own report object; docs/security.md), but a
status can still hold what the operator's code does not expect: written by a cluster administrator, by an
older operator, or restored from a backup. The CRD's schema leaves the nested objects open
(``x-kubernetes-preserve-unknown-fields``), so the API server does not catch ``status.policy.drain: []``.
Before this module, such a value made every pass raise and the job froze: no restart, no deadline, no budget.

:func:`repair_status` checks every key the operator decides from against the shape the operator writes, and
returns a status the pass can run on plus one :class:`Problem` per value it dropped or replaced, naming the
field path. Repairs never invent progress: a dropped counter falls back to what the pods show (the gang
generation for ``restarts``, the earliest pod start for ``startTime``) or to its empty value, and the
repaired status is written back by the same pass. The reconciler posts one Warning Event per repair.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from etj_contract import (
    CONTROL,
    ENERGY,
    FORECAST,
    KUEUE,
    PLACEMENT,
    POLICY,
    ConditionType,
    ControlSection,
    EnergySection,
    FieldProblem,
    ForecastSection,
    KueueSection,
    Phase,
    PlacementSection,
    PolicySection,
    describe_value,
)
from etj_operator import contract as c

__all__ = ["Problem", "repair_status"]


#: One value of the status that could not be used as it was: ``path`` (``status.policy.drain``), ``found`` (a
#: short description of what was there) and ``action`` (what the operator did instead); ``str()`` joins them.
Problem = FieldProblem


def _as_problem(text: str) -> Problem:
    """A record's problem as a :class:`Problem` (the contract's records make them so)."""
    if isinstance(text, FieldProblem):
        return text
    path, _, rest = text.partition(": ")
    found, _, action = rest.rpartition("; ")
    return FieldProblem(path, found, action)


Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_time(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


#: The nested sections the operator decides from, each parsed by its contract record (whose ``from_status``
#: names every field it drops): one definition of each shape, for the harness and the operator alike.
SECTIONS: Final[dict[str, Callable[[Any], Any]]] = {
    CONTROL: ControlSection.from_status,
    POLICY: PolicySection.from_status,
    PLACEMENT: PlacementSection.from_status,
    ENERGY: EnergySection.from_status,
    KUEUE: KueueSection.from_status,
    FORECAST: ForecastSection.from_status,
}
#: Top-level objects whose inner shape the operator does not decide from (rebuilt every pass).
OPAQUE_MAPS: Final = ("replicaStatuses", "workload")
CONDITION_STATUSES: Final = ("True", "False", "Unknown")


def repair_status(
    status: Mapping[str, Any],
    *,
    pod_generations: Iterable[int] = (),
    pod_start_times: Iterable[str | None] = (),
) -> tuple[dict[str, Any], list[Problem]]:
    """Return a copy of ``status`` the pass can decide from, and the problems repaired (pure).

    ``pod_generations`` (the gang generation of each of the job's own pods) and ``pod_start_times`` are
    what the pods show, used when ``restarts`` or ``startTime`` must be replaced.
    """
    out: dict[str, Any] = copy.deepcopy(dict(status))
    problems: list[Problem] = []

    def drop(key: str, action: str) -> None:
        problems.append(Problem(f"status.{key}", describe_value(out.pop(key)), action))

    _repair_conditions(out, problems)
    phase = out.get("phase")
    if phase is not None and phase not in c.PHASES:
        finished = _finished_phase(out.get("conditions"))
        drop("phase", f"{finished}, as its condition says" if finished else "derived again from the pods")
        if finished is not None:
            out["phase"] = finished
    if "observedGeneration" in out and not _is_count(out["observedGeneration"]):
        drop("observedGeneration", "set again by this pass")
    if "restarts" in out and not _is_count(out["restarts"]):
        generations = [g for g in pod_generations if g >= 0]
        drop("restarts", f"taken from the pods' gang generation ({max(generations, default=0)})")
        out["restarts"] = max(generations, default=0)
    if "startTime" in out and not _is_time(out["startTime"]):
        starts = sorted(t for t in pod_start_times if isinstance(t, str) and _is_time(t))
        drop("startTime", "taken from the earliest pod start" if starts else "set again when pods run")
        if starts:
            out["startTime"] = starts[0]
    if "completionTime" in out and not _is_time(out["completionTime"]):
        drop("completionTime", "set again to now if the job has finished")
    if "stage" in out and not _is_str(out["stage"]):
        drop("stage", "set again from the workload's report")
    for key in OPAQUE_MAPS:
        if key in out and out[key] is not None and not _is_map(out[key]):
            drop(key, "rebuilt by this pass")
    for key, parse in SECTIONS.items():
        value = out.get(key)
        if value is None:
            continue
        if not _is_map(value):
            drop(key, "started afresh" if key != ENERGY else "energy accounting starts afresh from here")
            continue
        record = parse(value)
        if record.problems:
            # The record dropped what it could not read (named by path) and kept the rest.
            problems.extend(_as_problem(text) for text in record.problems)
            out[key] = record.to_status()
    return out, problems


def _finished_phase(conditions: Any) -> str | None:
    """Succeeded or Failed when that condition is True (a finished job stays finished)."""
    if not isinstance(conditions, list):
        return None
    for entry in conditions:
        if isinstance(entry, Mapping) and entry.get("status") == "True":
            if entry.get("type") == ConditionType.SUCCEEDED:
                return Phase.SUCCEEDED.value
            if entry.get("type") == ConditionType.FAILED:
                return Phase.FAILED.value
    return None


def _repair_conditions(out: dict[str, Any], problems: list[Problem]) -> None:
    conditions = out.get("conditions")
    if conditions is None:
        return
    if not isinstance(conditions, list):
        problems.append(Problem("status.conditions", describe_value(out.pop("conditions")), "set again by this pass"))
        return
    kept: list[Any] = []
    for index, entry in enumerate(conditions):
        if (
            isinstance(entry, Mapping)
            and isinstance(entry.get("type"), str)
            and entry.get("status") in CONDITION_STATUSES
            and all(isinstance(entry.get(k), str) for k in ("reason", "message", "lastTransitionTime") if k in entry)
        ):
            kept.append(entry)
        else:
            problems.append(Problem(f"status.conditions[{index}]", describe_value(entry), "dropped"))
    out["conditions"] = kept
