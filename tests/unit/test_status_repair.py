"""The status read back defensively: each malformed value is reported by path and repaired, never fatal."""

from __future__ import annotations

from typing import Any

import pytest

from etj_contract import ControlSection, EnergySection, PlacementSection, PolicySection
from etj_operator.status_repair import repair_status

SECTIONS: dict[str, Any] = {
    "control": ControlSection,
    "policy": PolicySection,
    "placement": PlacementSection,
    "energy": EnergySection,
}

GOOD: dict[str, Any] = {
    "phase": "Running",
    "observedGeneration": 2,
    "startTime": "2026-12-01T10:00:00Z",
    "restarts": 1,
    "stage": "prune",
    "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning", "message": "ok"}],
    "replicaStatuses": {"Worker": {"active": 2}},
    "energy": {"joules": 10.0, "series": {"a": {"t": 1.0}}, "history": [], "source": "Prometheus"},
    "control": {"powerLimitWattsPerGPU": 300, "checkpointRequested": 2, "stopRequested": False},
    "policy": {"drain": {"reason": "carbon", "requested": 2, "since": 5.0}, "lowCycles": 1},
    "placement": {"rescheduling": False, "avoidedNodes": ["n1"], "reschedules": 1},
    "workload": {"step": 5},
}


def test_a_well_formed_status_passes_unchanged_and_is_not_aliased() -> None:
    repaired, problems = repair_status(GOOD)
    assert problems == []
    assert repaired == GOOD
    repaired["policy"]["lowCycles"] = 9
    assert GOOD["policy"]["lowCycles"] == 1


@pytest.mark.parametrize(
    ("key", "value", "path", "expected"),
    [
        ("energy", [], "status.energy", None),
        ("control", "x", "status.control", None),
        ("policy", [1, 2], "status.policy", None),
        ("placement", 5, "status.placement", None),
        ("replicaStatuses", [], "status.replicaStatuses", None),
        ("workload", "forged", "status.workload", None),
        ("conditions", {"type": "Running"}, "status.conditions", None),
        ("observedGeneration", "two", "status.observedGeneration", None),
        ("stage", ["prune"], "status.stage", None),
        ("completionTime", "yesterday", "status.completionTime", None),
    ],
)
def test_a_malformed_top_level_value_is_dropped_and_named(key: str, value: Any, path: str, expected: Any) -> None:
    repaired, problems = repair_status({**GOOD, key: value})
    assert [p.path for p in problems] == [path]
    assert repaired.get(key) == expected
    untouched = {k: v for k, v in GOOD.items() if k != key}
    assert {k: repaired[k] for k in untouched} == untouched


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("control", "powerLimitWattsPerGPU", "300"),
        ("control", "checkpointRequested", -1),
        ("control", "stopRequested", "yes"),
        ("policy", "drain", []),
        ("policy", "lowCycles", True),
        ("placement", "avoidedNodes", "n1"),
        ("placement", "avoidedNodes", [1]),
        ("placement", "reschedules", 1.5),
        ("energy", "series", ["a"]),
        ("energy", "joules", float("nan")),
        ("energy", "lastSampleTime", "now"),
    ],
)
def test_a_malformed_nested_value_drops_only_that_field(key: str, field: str, value: Any) -> None:
    status = {**GOOD, key: {**GOOD[key], field: value}}
    repaired, problems = repair_status(status)
    # the field itself, or its one bad item (avoidedNodes[0])
    assert [p.path.partition("[")[0] for p in problems] == [f"status.{key}.{field}"]
    assert repaired[key].get(field) != value
    # the rest of the section is kept, written back in the record's own form
    record = SECTIONS[key]
    without = {k: v for k, v in GOOD[key].items() if k != field}
    assert repaired[key] == record.from_status(without).to_status()
    assert record.from_status(repaired[key]).problems == ()


def test_a_nested_problem_says_what_was_expected_and_what_was_found() -> None:
    _, problems = repair_status({**GOOD, "control": {"powerLimitWattsPerGPU": -5}})
    assert [str(p) for p in problems] == [
        "status.control.powerLimitWattsPerGPU: expected a finite number >= 0, found a number -5; dropped"
    ]


def test_a_drain_with_an_unreadable_request_number_is_dropped() -> None:
    repaired, problems = repair_status({**GOOD, "policy": {"drain": {"reason": "carbon", "requested": "2"}}})
    assert [str(p) for p in problems] == [
        "status.policy.drain: an object {'reason': 'carbon', 'requested': '2'}; dropped (requested, since unreadable)"
    ]
    assert repaired["policy"] == {}


def test_unreadable_restarts_fall_back_to_the_pods_gang_generation_never_to_zero() -> None:
    repaired, problems = repair_status({**GOOD, "restarts": [0]}, pod_generations=[3, 3])
    assert repaired["restarts"] == 3
    assert problems[0].path == "status.restarts" and "(3)" in problems[0].action
    repaired, _ = repair_status({**GOOD, "restarts": "0"})
    assert repaired["restarts"] == 0  # no pods: nothing better is known


def test_an_unreadable_start_time_falls_back_to_the_earliest_pod_start() -> None:
    starts = ["2026-12-01T10:05:00Z", None, "2026-12-01T10:01:00Z"]
    repaired, problems = repair_status({**GOOD, "startTime": 17}, pod_start_times=starts)
    assert repaired["startTime"] == "2026-12-01T10:01:00Z"
    assert [p.path for p in problems] == ["status.startTime"]


def test_a_malformed_phase_of_a_finished_job_stays_finished() -> None:
    conditions = [{"type": "Succeeded", "status": "True", "reason": "JobSucceeded", "message": "done"}]
    repaired, problems = repair_status({**GOOD, "phase": ["Succeeded"], "conditions": conditions})
    assert repaired["phase"] == "Succeeded"
    assert [p.path for p in problems] == ["status.phase"]
    repaired, _ = repair_status({**GOOD, "phase": "Finished"})
    assert "phase" not in repaired  # derived again by the lifecycle from the pods


def test_malformed_condition_entries_are_dropped_one_by_one() -> None:
    conditions = [GOOD["conditions"][0], "Running", {"type": "Paused", "status": "maybe"}, {"status": "True"}]
    repaired, problems = repair_status({**GOOD, "conditions": conditions})
    assert repaired["conditions"] == [GOOD["conditions"][0]]
    assert [p.path for p in problems] == ["status.conditions[1]", "status.conditions[2]", "status.conditions[3]"]
