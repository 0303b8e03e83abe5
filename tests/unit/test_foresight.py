"""The budget foresight, through decide_pass over a simulated fixed-rate job (a fake clock: the passes' ``now``).

The job: two GPUs at 400 W each (800 W, energy counters), 1 step/s, 3600 steps planned: 0.8 kWh at completion.
Its report says the step count on every pass; the harness acknowledges each checkpoint on the pass after it was
asked. A pass every 15 s, each with a telemetry cycle while pods run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from etj_contract import ControlSection, EnergySection, ForecastSection, PolicySection, WorkloadReport
from etj_operator import conditions as cond
from etj_operator.jobpass import OWNED_KEYS, PassObservation, PassResult, decide_pass
from etj_operator.lifecycle import PodView
from etj_operator.models import parse_spec
from etj_operator.policies import FORECAST_FIT_FRACTION, PolicyInputs, decide
from etj_operator.telemetry.base import GpuSample, JobTelemetry

from jobs import job_manifest

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
UID = "uid-digits"
WATTS_PER_GPU = 400.0
TOTAL_STEPS = 3600
#: What the job draws in all: 800 W for 3600 s.
TRUE_KWH = 0.8


def running_pods(gen: int = 0) -> list[PodView]:
    return [
        PodView(f"digits-worker-{i}", i, gen, "Running", node_name=f"node-{i}", uid=f"pod-{gen}-{i}",
                owner_uid=UID, start_time="2026-12-01T11:59:00Z")
        for i in range(2)
    ]


def cycle(at: float, since: float, pods: list[PodView]) -> JobTelemetry:
    """Both GPUs' counters at ``at`` (the job's pods have drawn 400 W each since ``since``)."""
    t = (T0 + timedelta(seconds=at)).timestamp()
    samples = [
        GpuSample("default", p.name, f"GPU-{p.index}", t, power_watts=WATTS_PER_GPU,
                  energy_mj=WATTS_PER_GPU * (at - since) * 1000 + 1e6, uid=p.uid, node=p.node_name)
        for p in pods
    ]
    return JobTelemetry(1, t, "Prometheus", samples, ok=True)


@dataclass
class Job:
    """A simulated job driven through decide_pass; each pass is fed what the last one wrote."""

    budget: dict[str, Any]
    body: dict[str, Any] = field(init=False)
    written: dict[str, Any] | None = None
    pods: list[PodView] = field(default_factory=list)
    #: Seconds of training done (the step count is this at 1 step/s).
    trained: float = 0.0
    #: When the current pods started drawing power (their counters' zero).
    since: float = 0.0
    at: float = 0.0
    results: list[PassResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.set_budget(self.budget)

    def set_budget(self, budget: dict[str, Any]) -> None:
        self.body = job_manifest(energy={"energyBudget": budget}, checkpoint={"path": "/ckpt"})

    def step(self, seconds: float = 15.0) -> PassResult:
        self.at += seconds
        if self.pods:
            self.trained += seconds
        control = ControlSection.from_status((self.written or {}).get("control"))
        report = {
            "step": int(self.trained),
            "stepsTotal": TOTAL_STEPS,
            "samplesPerStep": 64,
            "checkpoint": {"acknowledged": control.checkpoint_requested},  # acknowledged on the next pass
        }
        result = decide_pass(
            PassObservation(
                body=self.body,
                pods=self.pods,
                now=T0 + timedelta(seconds=self.at),
                last_written=self.written,
                report={"status": report},
                telemetry=cycle(self.at, self.since, self.pods) if self.pods else None,
                gpu_count=2,
            )
        )
        status = result.plan.status
        if result.plan.delete_pods:
            self.pods = []
        elif result.plan.create_pods:
            self.pods, self.since = running_pods(), self.at
        self.written = {k: status[k] for k in OWNED_KEYS if status.get(k) is not None}
        self.results.append(result)
        return result

    def run_until(self, done: Callable[[PassResult], bool], limit: int = 400) -> PassResult:
        for _ in range(limit):
            result = self.step()
            if done(result):
                return result
        raise AssertionError("never")

    @property
    def status(self) -> dict[str, Any]:
        return self.results[-1].plan.status

    def forecast(self) -> ForecastSection:
        return ForecastSection.from_status(self.status.get("forecast"))

    def policy(self) -> PolicySection:
        return PolicySection.from_status(self.status.get("policy"))

    def condition(self) -> dict[str, Any] | None:
        return cond.find(self.status.get("conditions") or [], "EnergyForecast")

    def events(self, reason: str) -> list[str]:
        return [e.message for r in self.results for e in r.plan.events if e.reason == reason]

    def kwh(self) -> float:
        return EnergySection.from_status(self.status.get("energy")).kilowatt_hours


def over(result: PassResult) -> bool:
    found = cond.find(result.plan.status.get("conditions") or [], "EnergyForecast")
    return found is not None and found["status"] == "True"


def started(job: Job) -> None:
    job.step()  # creates the pods
    assert job.pods


def test_notify_says_so_once_before_the_budget_is_spent_and_the_job_runs_on() -> None:
    job = Job({"kilowattHours": 0.5, "action": "Stop", "onForecast": "Notify"})
    started(job)
    job.run_until(over)
    fc = job.forecast()
    assert fc.mature and fc.energy_at_completion_kwh is not None
    assert abs(fc.energy_at_completion_kwh - TRUE_KWH) <= 0.05 * TRUE_KWH
    assert job.kwh() < 0.1  # long before the 0.5 kWh are spent
    found = job.condition()
    assert found is not None and found["reason"] == "ForecastOverBudget"
    assert found["message"].startswith("forecast 0.") and "at 800 W for 5" in found["message"]
    assert "over the 0.5 kWh budget" in found["message"]
    # before it was mature, the condition was Unknown and nothing was done
    early = [cond.find(r.plan.status["conditions"], "EnergyForecast") for r in job.results[:-1]]
    assert all(c is None or c["status"] == "Unknown" for c in early)
    for _ in range(20):
        job.step()
    assert len(job.events("EnergyForecastOverBudget")) == 1  # one per transition, not per pass
    assert job.status["phase"] == "Running" and job.pods and not job.events("CheckpointRequested")


def test_suspend_checkpoints_and_suspends_before_the_budget_is_spent_and_keeps_the_forecast() -> None:
    job = Job({"kilowattHours": 0.5, "action": "Stop", "onForecast": "Suspend"})
    started(job)
    job.run_until(over)
    assert job.events("CheckpointRequested") and job.pods  # the checkpoint first
    job.run_until(lambda r: r.plan.status.get("phase") == "Suspended", limit=5)
    assert not job.pods and job.kwh() < 0.1
    suspended_on = job.forecast()
    assert job.policy().forecast_suspended and suspended_on.reason == "Suspended"
    assert suspended_on.remaining_seconds is None and suspended_on.energy_at_completion_kwh is not None
    for _ in range(40):  # 10 minutes suspended: no pods, no progress, the forecast stays what it was
        result = job.step()
        assert result.plan.status["phase"] == "Suspended" and not result.plan.create_pods
    held = job.forecast()
    assert held.energy_at_completion_kwh == suspended_on.energy_at_completion_kwh
    assert held.steps_remaining == suspended_on.steps_remaining and job.policy().forecast_suspended
    assert len(job.events("EnergyForecastOverBudget")) == 1
    assert "at least" in (job.condition() or {})["message"]  # says what budget would resume it


def test_a_raised_budget_resumes_the_job_with_hysteresis() -> None:
    job = Job({"kilowattHours": 0.5, "action": "Stop", "onForecast": "Suspend"})
    started(job)
    job.run_until(lambda r: r.plan.status.get("phase") == "Suspended")
    forecast_kwh = job.forecast().energy_at_completion_kwh
    assert forecast_kwh is not None
    # raised just above the forecast, but not to fit it with the margin: stays suspended (no flapping)
    job.set_budget({"kilowattHours": round(forecast_kwh * 1.01, 4), "action": "Stop", "onForecast": "Suspend"})
    for _ in range(3):
        result = job.step()
        assert result.plan.status["phase"] == "Suspended" and not result.plan.create_pods
    # raised so that it fits
    job.set_budget({"kilowattHours": round(forecast_kwh / FORECAST_FIT_FRACTION + 0.01, 4), "action": "Stop",
                    "onForecast": "Suspend"})
    result = job.step()
    assert result.plan.create_pods
    found = job.condition()
    assert found is not None and found["status"] == "False" and found["reason"] == "ForecastWithinBudget"
    assert job.events("ForecastWithinBudget") and not job.policy().forecast_suspended
    # running again: the speed is measured afresh (the suspension is no training time)
    job.run_until(lambda r: ForecastSection.from_status(r.plan.status["forecast"]).mature)
    assert job.status["phase"] == "Running" and len(job.events("EnergyForecastOverBudget")) == 1


def test_the_hard_budget_wins_over_the_foresight() -> None:
    spec = parse_spec(job_manifest(energy={"energyBudget": {"kilowattHours": 0.5, "action": "Stop",
                                                            "onForecast": "Suspend"}})["spec"], "digits")
    fc = ForecastSection(energy_at_completion_kwh=0.9, energy_to_completion_kwh=0.3, power_watts=800, mature=True,
                         reason="Forecasting")
    out = decide(PolicyInputs(
        spec=spec, energy=EnergySection(joules=0.6 * 3.6e6, last_sample_seconds=1.0), now_seconds=10.0,
        control=ControlSection(), policy=PolicySection(), placement=__import__("etj_contract").PlacementSection(),
        workload=WorkloadReport(), fresh_telemetry=False, telemetry_ok=False, forecast=fc,
    ))
    assert out.fail is not None and out.fail[0] == "EnergyBudgetExceeded"  # the budget's own Stop
    assert not out.policy.forecast_suspended and out.hold is None


def test_an_immature_forecast_is_never_acted_on() -> None:
    spec = parse_spec(job_manifest(energy={"energyBudget": {"kilowattHours": 0.5, "onForecast": "Suspend"}},
                                   checkpoint={"path": "/ckpt"})["spec"], "digits")
    fc = ForecastSection(energy_at_completion_kwh=5.0, energy_to_completion_kwh=4.9, power_watts=800, mature=False,
                         reason="Forecasting", message="not mature yet")
    out = decide(PolicyInputs(
        spec=spec, energy=EnergySection(joules=360.0, last_sample_seconds=1.0), now_seconds=10.0,
        control=ControlSection(), policy=PolicySection(), placement=__import__("etj_contract").PlacementSection(),
        workload=WorkloadReport(), fresh_telemetry=False, telemetry_ok=False, forecast=fc,
    ))
    change = next(c for c in out.conditions if c.type == "EnergyForecast")
    assert change.status is None and change.reason == "ForecastNotMature"
    assert out.hold is None and out.policy.drain is None and out.events == [] and not out.policy.forecast_suspended


def test_the_forecast_costs_no_write_of_its_own() -> None:
    job = Job({"kilowattHours": 5.0, "onForecast": "Notify"})
    started(job)
    for _ in range(20):
        job.step()
    assert job.forecast().reason == "Forecasting"
    # a pass with nothing new (no telemetry cycle, the same step count): nothing to write, the forecast neither
    same = job.written
    trained = job.trained
    result = decide_pass(PassObservation(
        body=job.body, pods=job.pods, now=T0 + timedelta(seconds=job.at + 7), last_written=same,
        report={"status": {"step": int(trained), "stepsTotal": TOTAL_STEPS, "samplesPerStep": 64,
                           "checkpoint": {"acknowledged": 0}}},
        gpu_count=2,
    ))
    changed = [k for k in OWNED_KEYS if result.plan.status.get(k) != result.before.get(k)]
    assert changed == []
