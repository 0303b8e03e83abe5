"""The pure pass, table-driven: scenarios of successive passes, each fed what the previous one wrote.

Each scenario is a job (spec overrides) and a list of :class:`Step`: what the pass observes (its pods, a
telemetry cycle, the workload's report, pressured nodes, the time) and what it must decide (phase, the cap in
``status.control``, conditions, Events, pod deletions and creations). The status each pass writes is the next
pass's ``last_written``, as the reconciler's :class:`~etj_operator.reconciler.JobState` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etj_contract import ControlSection, PlacementSection, PolicySection
from etj_operator import conditions as cond
from etj_operator.jobpass import OWNED_KEYS, PassObservation, PassResult, decide_pass
from etj_operator.lifecycle import Plan, PodView
from etj_operator.telemetry.base import GpuSample, JobTelemetry

from jobs import job_manifest

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
UID = "uid-digits"
KWH = 3.6e6


def pods(phase: str = "Running", nodes: tuple[str, ...] = ("node-a", "node-b"), gen: int = 0) -> list[PodView]:
    """The job's two workers (its own: controller = the job's UID)."""
    return [
        PodView(
            f"digits-worker-{i}",
            i,
            gen,
            phase,
            node_name=nodes[i],
            uid=f"pod-{gen}-{i}",
            owner_uid=UID,
            start_time="2026-12-01T11:59:00Z",
        )
        for i in range(2)
    ]


def cycle(at: float, watts: float, *, limit: float | None = 700.0, intensity: float | None = None) -> JobTelemetry:
    """One telemetry cycle: both GPUs at ``watts`` (power only, no counter), reporting ``limit`` (W)."""
    t = (T0 + timedelta(seconds=at)).timestamp()
    samples = [
        GpuSample(
            "default",
            f"digits-worker-{i}",
            f"GPU-{i}",
            t,
            power_watts=watts,
            power_limit_watts=limit,
            uid=f"pod-0-{i}",
            node=n,
        )
        for i, n in enumerate(("node-a", "node-b"))
    ]
    return JobTelemetry(1, t, "Prometheus", samples, ok=True, intensity_grams_per_kwh=intensity)


@dataclass(frozen=True)
class Step:
    """One pass: what it observes, and what it must decide (None: not checked)."""

    at: float = 0.0
    pods: list[PodView] = field(default_factory=pods)
    telemetry: JobTelemetry | None = None
    report: dict[str, Any] | None = None
    pressured: frozenset[str] = frozenset()
    #: Merged into the status before the pass (as if an earlier pass had written it).
    preset: dict[str, Any] | None = None
    phase: str | None = None
    limit: int | str | None = "unchecked"
    conditions: dict[str, bool] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    no_events: tuple[str, ...] = ()
    deletes: bool | None = None
    creates: bool | None = None
    check: Any = None  # a callable(result) for anything else


def run(spec: dict[str, Any], steps: list[Step]) -> list[PassResult]:
    body = job_manifest(**spec)
    written: dict[str, Any] | None = None
    results = []
    for number, s in enumerate(steps):
        last = dict(written or {})
        if s.preset:
            last.update(s.preset)
        result = decide_pass(
            PassObservation(
                body=body,
                pods=s.pods,
                now=T0 + timedelta(seconds=s.at),
                last_written=last if (written is not None or s.preset) else None,
                report=None if s.report is None else {"status": s.report},
                telemetry=s.telemetry,
                pressured_nodes=s.pressured,
                gpu_count=results[-1].gpu_count if results else 0,
            )
        )
        status, plan = result.plan.status, result.plan
        where = f"step {number}"
        if s.phase is not None:
            assert status.get("phase") == s.phase, where
        if s.limit != "unchecked":
            assert ControlSection.from_status(status.get("control")).power_limit_watts_per_gpu == s.limit, where
        for ctype, value in s.conditions.items():
            assert cond.is_true(status.get("conditions") or [], ctype) is value, f"{where}: {ctype}"
        reasons = [e.reason for e in plan.events]
        assert set(s.events) <= set(reasons), f"{where}: {reasons}"
        assert not set(s.no_events) & set(reasons), f"{where}: {reasons}"
        if s.deletes is not None:
            assert bool(plan.delete_pods) is s.deletes, f"{where}: {plan.delete_pods}"
        if s.creates is not None:
            assert bool(plan.create_pods) is s.creates, f"{where}: {plan.create_pods}"
        if s.check is not None:
            s.check(result)
        written = {k: status[k] for k in OWNED_KEYS if status.get(k) is not None}
        results.append(result)
    return results


def policy(result: PassResult) -> PolicySection:
    return PolicySection.from_status(result.plan.status.get("policy"))


def placement(result: PassResult) -> PlacementSection:
    return PlacementSection.from_status(result.plan.status.get("placement"))


def control(result: PassResult) -> ControlSection:
    return ControlSection.from_status(result.plan.status.get("control"))


CHECKPOINT = {"checkpoint": {"path": "/ckpt"}}

SCENARIOS: dict[str, tuple[dict[str, Any], list[Step]]] = {
    "throttle: capped over budget, held near it, released after three low cycles": (
        {"energy": {"power": {"budgetWatts": 500}}},
        [
            Step(pods=[], phase="Pending", creates=True, limit=None),
            Step(at=1, phase="Running", limit=None),
            # asked, but the GPUs still report 700 W: not Throttled yet, the cap is being applied
            Step(at=10, telemetry=cycle(10, 400), phase="Running", limit=250, events=("ThrottleRequested",),
                 conditions={"Throttled": False, "PowerCapEnforced": False, "TelemetryAvailable": True}),
            # the GPUs report the cap: Throttled, as measured
            Step(at=20, telemetry=cycle(20, 240, limit=250), phase="Throttled", limit=250,
                 conditions={"Throttled": True, "PowerCapEnforced": True}, no_events=("ThrottleReleased",)),
            Step(at=30, telemetry=cycle(30, 150, limit=250), limit=250, check=lambda r: policy(r).low_cycles == 1),
            Step(at=40, telemetry=cycle(40, 150, limit=250), limit=250),
            Step(at=50, telemetry=cycle(50, 150, limit=250), phase="Running", limit=None,
                 events=("ThrottleReleased",), conditions={"Throttled": False, "PowerCapEnforced": False}),
        ],
    ),
    "throttle: a cap nothing applies is never shown as Throttled, and is warned about after the grace": (
        {"energy": {"power": {"budgetWatts": 500}}},
        [
            Step(pods=[]),
            Step(at=10, telemetry=cycle(10, 400, limit=None), phase="Running", limit=250,
                 conditions={"PowerCapEnforced": False}, no_events=("PowerCapNotEnforced",)),
            Step(at=40, telemetry=cycle(40, 400, limit=None), phase="Running", no_events=("PowerCapNotEnforced",)),
            Step(at=75, telemetry=cycle(75, 400, limit=None), phase="Running", events=("PowerCapNotEnforced",),
                 check=lambda r: cond.find(r.plan.status["conditions"], "PowerCapEnforced")["reason"]
                 == "NoLimitReadings"),
            Step(at=85, telemetry=cycle(85, 400, limit=None), phase="Running", no_events=("PowerCapNotEnforced",)),
            # the history records the limit measured (none), never the limit asked
            Step(at=95, telemetry=cycle(95, 400, limit=None),
                 check=lambda r: all(point[2] is None for point in r.plan.status["energy"]["history"])),
        ],
    ),
    "throttle: stale telemetry changes no cap": (
        {"energy": {"power": {"budgetWatts": 500}}},
        [
            Step(pods=[]),
            Step(at=10, telemetry=cycle(10, 400, limit=250), limit=250, phase="Throttled"),
            # no new cycle: the job's draw is unknown, the cap stays, nothing is released
            Step(at=20, limit=250, phase="Throttled", no_events=("ThrottleReleased",)),
            Step(at=30, limit=250, phase="Throttled", no_events=("ThrottleReleased",)),
        ],
    ),
    "budget drain: a checkpoint first, then the job fails with the pods gone": (
        {"energy": {"energyBudget": {"kilowattHours": 1.0, "action": "Stop"}}, **CHECKPOINT},
        [
            Step(pods=[]),
            Step(at=1, preset={"energy": {"joules": 1.2 * KWH}}, phase="Running", deletes=False,
                 events=("CheckpointRequested",), conditions={"BudgetExceeded": True},
                 check=lambda r: control(r).checkpoint_requested == 1 and control(r).stop_requested
                 and policy(r).drain is not None),
            # not acknowledged yet: the pods keep running
            Step(at=5, phase="Running", deletes=False, no_events=("CheckpointRequested",)),
            Step(at=9, report={"checkpoint": {"acknowledged": 1}}, phase="Failed", deletes=True,
                 check=lambda r: policy(r).drain is None
                 and cond.find(r.plan.status["conditions"], cond.FAILED)["reason"] == "EnergyBudgetExceeded"),
        ],
    ),
    "budget drain: no acknowledgement within the timeout, the stop goes on": (
        {"energy": {"energyBudget": {"kilowattHours": 1.0, "action": "Stop"}}, **CHECKPOINT},
        [
            Step(pods=[]),
            Step(at=1, preset={"energy": {"joules": 1.2 * KWH}}, phase="Running"),
            Step(at=200, phase="Failed", deletes=True, events=("CheckpointTimeout",)),
        ],
    ),
    "budget suspend: held Suspended until the budget is raised": (
        {"energy": {"energyBudget": {"kilowattHours": 1.0, "action": "Suspend"}}},
        [
            Step(pods=[]),
            Step(at=1, preset={"energy": {"joules": 1.5 * KWH}}, phase="Suspended", deletes=True,
                 check=lambda r: policy(r).budget_suspended),
            Step(at=5, pods=[], phase="Suspended", creates=False),
        ],
    ),
    "carbon pause: paused above the limit, resumed after the dwell": (
        {"energy": {"carbon": {"intensityQuery": "grid", "maxGramsPerKWh": 300, "minDwellSeconds": 60}}},
        [
            Step(pods=[]),
            Step(at=1, telemetry=cycle(1, 100, intensity=450), phase="Paused", deletes=True, events=("Paused",),
                 conditions={"Paused": True}),
            # low again, but within the dwell: stays paused, nothing created
            Step(at=30, pods=[], telemetry=cycle(30, 0, intensity=100), phase="Paused", creates=False),
            Step(at=70, pods=[], telemetry=cycle(70, 0, intensity=100), creates=True, events=("Resumed",),
                 conditions={"Paused": False}, check=lambda r: not policy(r).carbon_paused),
        ],
    ),
    "reschedule: a checkpoint, then the pods move off the pressured node": (
        CHECKPOINT,
        [
            Step(pods=[]),
            Step(at=1, pressured=frozenset({"node-a"}), deletes=False, events=("CheckpointRequested",)),
            Step(at=5, pressured=frozenset({"node-a"}), report={"checkpoint": {"acknowledged": 1}}, deletes=True,
                 events=("Rescheduling",), conditions={"Rescheduling": True},
                 check=lambda r: placement(r).avoided_nodes == ("node-a",) and placement(r).rescheduling
                 and placement(r).last_reschedule_seconds == (T0 + timedelta(seconds=5)).timestamp()),
            # the old pods are gone, the new ones not yet running: still Rescheduling (not Pending)
            Step(at=8, pods=[], creates=True, phase="Rescheduling", conditions={"Rescheduling": True}),
            # all run again, elsewhere: the reschedule is over
            Step(at=20, pods=pods(nodes=("node-c", "node-b")), phase="Running", conditions={"Rescheduling": False},
                 check=lambda r: not placement(r).rescheduling and placement(r).reschedules == 1),
        ],
    ),
    "finish: worker 0 succeeds; no power drawn and no cap left in force": (
        {"energy": {"power": {"budgetWatts": 500}}},
        [
            Step(pods=[]),
            Step(at=10, telemetry=cycle(10, 400), limit=250),
            Step(at=20, pods=pods("Succeeded"), report={"stages": [{"name": "prune", "applied": True}]},
                 phase="Succeeded", limit=None, conditions={"Succeeded": True},
                 check=lambda r: r.plan.status["energy"]["currentWatts"] == 0.0 and r.plan.status["stage"] == "prune"
                 and r.plan.status["energy"]["display"]["power"] == "0W"),  # kubectl shows 0 W, not the last draw
            # a finished job decides nothing more: no policy runs, nothing is created
            Step(at=30, pods=pods("Succeeded"), telemetry=cycle(30, 400), phase="Succeeded", limit=None,
                 creates=False, check=lambda r: r.outcome is None),
        ],
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario(scenario: str) -> None:
    spec, steps = SCENARIOS[scenario]
    run(spec, steps)


def test_the_pass_is_a_function_of_its_observation() -> None:
    """The same observation twice gives the same plan (nothing is read from a clock or kept in between)."""
    obs = PassObservation(body=job_manifest(), pods=pods(), now=T0, telemetry=cycle(0, 300))
    first, second = decide_pass(obs), decide_pass(obs)
    assert first.plan == second.plan and first.before == second.before


def test_a_malformed_status_is_repaired_and_said_in_the_same_pass() -> None:
    body = {**job_manifest(), "status": {"policy": {"lowCycles": "three"}, "phase": "Running"}}
    result = decide_pass(PassObservation(body=body, pods=pods(), now=T0))
    assert [p.path for p in result.repaired] == ["status.policy.lowCycles"]
    assert "StatusRepaired" in [e.reason for e in result.plan.events]
    assert "lowCycles" not in result.plan.status["policy"]


def test_foreign_pods_never_count_as_the_jobs() -> None:
    stranger = [PodView("digits-worker-0", 0, 0, "Running", uid="x", owner_uid="uid-older")]
    result = decide_pass(PassObservation(body=job_manifest(), pods=stranger, now=T0))
    assert result.pods == [] and result.foreign_pods == stranger
    assert result.plan.create_pods == []  # the name is taken: the gang waits
    assert cond.is_true(result.plan.status["conditions"], cond.POD_NAME_TAKEN)


def test_a_status_written_before_the_time_rule_is_read_and_written_anew() -> None:
    old = {
        "phase": "Paused",
        "policy": {"carbonPaused": True, "carbonSince": T0.timestamp() - 10},
        "placement": {"avoidedNodes": ["n1"], "reschedules": 1, "lastTime": T0.timestamp() - 100},
        "energy": {"joules": 5.0, "lastSampleTime": T0.timestamp() - 5},
    }
    spec = {"energy": {"carbon": {"intensityGramsPerKWh": 500, "maxGramsPerKWh": 300, "minDwellSeconds": 60}}}
    result = decide_pass(PassObservation(body={**job_manifest(**spec), "status": old}, pods=[], now=T0))
    status = result.plan.status
    assert result.repaired == []
    assert status["phase"] == "Paused"  # still within the dwell: the carbon pause holds
    assert status["policy"] == {"carbonPaused": True, "carbonSinceUnixSeconds": T0.timestamp() - 10}
    assert placement(result).last_reschedule_seconds == T0.timestamp() - 100
    assert status["placement"]["lastRescheduleTime"] == "2026-12-01T11:58:20.000000Z"
    assert status["energy"]["lastSampleTime"] == "2026-12-01T11:59:55.000000Z"


@pytest.mark.parametrize("last_watts", [400.0, None])
def test_a_finished_job_shows_0_w_in_its_status_and_kubectls_display(last_watts):
    from etj_contract.sections import EnergySection
    from etj_operator.jobpass import settle

    plan = Plan(status={"phase": "Succeeded",
                        "energy": EnergySection(joules=10.0, current_watts=last_watts, last_sample_seconds=1.0)
                        .to_status()})
    settle(plan, datetime.now(UTC), 1)
    assert plan.status["energy"]["currentWatts"] == 0.0 and plan.status["energy"]["display"]["power"] == "0W"
