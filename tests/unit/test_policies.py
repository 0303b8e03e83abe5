from hypothesis import given, settings
from hypothesis import strategies as st

from etj_contract import ControlSection, PlacementSection, PolicySection, WorkloadReport
from etj_operator.energy import JOULES_PER_KWH, EnergyState
from etj_operator.models import parse_spec
from etj_operator.policies import PolicyInputs, PolicySettings, decide, throttle_limit

from jobs import job_manifest


def spec(**overrides):
    return parse_spec(job_manifest(**overrides)["spec"], "digits")


def energy(kwh=0.0, watts=0.0):
    return EnergyState(joules=kwh * JOULES_PER_KWH, current_watts=watts)


def inputs(sp, en=None, **kw):
    base = dict(
        spec=sp,
        energy=en or energy(),
        now_seconds=1000.0,
        control=ControlSection(),
        policy=PolicySection(),
        placement=PlacementSection(),
        workload=WorkloadReport(),
        fresh_telemetry=True,
        telemetry_ok=True,
        gpu_count=4,
    )
    base.update(kw)
    return PolicyInputs(**base)


def cond(out, ctype):
    return next((x for x in out.conditions if x.type == ctype), None)


# --- throttle ----------------------------------------------------------------------------------------------
BUDGET = {"energy": {"power": {"budgetWatts": 1000}}}


CAPPED = (250.0,) * 4  # what the 4 GPUs report once the enforcer applied a 250 W cap


def test_throttle_caps_when_over_budget_and_releases_with_hysteresis():
    sp = spec(**BUDGET)
    out = decide(inputs(sp, energy(watts=1400), applied_limits_watts=CAPPED))
    assert out.control.power_limit_watts_per_gpu == 250 and out.throttled
    assert cond(out, "Throttled").status is True and cond(out, "PowerCapEnforced").status is True
    assert [e.reason for e in out.events] == ["ThrottleRequested"]
    control, policy = out.control, out.policy
    # at the cap the job draws about the budget: no release
    out = decide(inputs(sp, energy(watts=990), control=control, policy=policy, applied_limits_watts=CAPPED))
    assert out.control.power_limit_watts_per_gpu == 250 and out.policy.low_cycles == 0
    # demand drops: released only after 3 low cycles in a row
    for cycle in range(1, 4):
        out = decide(
            inputs(sp, energy(watts=500), control=out.control, policy=out.policy, applied_limits_watts=CAPPED)
        )
        if cycle < 3:
            assert out.control.power_limit_watts_per_gpu == 250
    assert out.control.power_limit_watts_per_gpu is None and not out.throttled
    assert cond(out, "Throttled").status is False
    assert cond(out, "PowerCapEnforced").reason == "NoCap" and out.policy.cap_watts is None


def test_no_throttle_decision_on_stale_or_missing_telemetry():
    sp = spec(**BUDGET)
    out = decide(inputs(sp, energy(watts=5000), telemetry_ok=False, telemetry_reason="Prometheus down"))
    assert out.control.power_limit_watts_per_gpu is None
    assert cond(out, "TelemetryAvailable").status is False
    assert "Prometheus down" in cond(out, "TelemetryAvailable").message
    capped = ControlSection(power_limit_watts_per_gpu=250)
    out = decide(inputs(sp, energy(watts=10), control=capped, fresh_telemetry=False))
    assert out.control == capped  # kept, not released on old data


def test_lost_telemetry_names_its_cause_in_the_condition_and_warns_once_per_cause():
    sp = spec()
    lost = dict(telemetry_ok=False, telemetry_cause="NoSeries", telemetry_reason="no GPU readings for this job's pods")
    out = decide(inputs(sp, EnergyState(), **lost))
    found = cond(out, "TelemetryAvailable")
    assert found.status is False and found.reason == "NoSeries"
    assert "unknown (no reading yet)" in found.message
    warnings = [e for e in out.events if e.type == "Warning"]
    assert [(e.reason, e.message.split(":")[0]) for e in warnings] == [("TelemetryUnavailable", "NoSeries")]
    # the same cause on the next cycles: the condition stays, no second Event
    out = decide(inputs(sp, EnergyState(), telemetry_lost_reason="NoSeries", **lost))
    assert cond(out, "TelemetryAvailable").reason == "NoSeries" and out.events == []
    # another cause: warned again; energy measured before is said to be kept
    out = decide(
        inputs(sp, energy(kwh=0.5), telemetry_lost_reason="NoSeries", telemetry_ok=False, telemetry_cause="QueryFailed",
               telemetry_reason="Prometheus unavailable: HTTP 503")
    )
    assert [e.reason for e in out.events] == ["TelemetryUnavailable"]
    assert "energy so far is kept" in cond(out, "TelemetryAvailable").message
    # back: True with the cause SamplesReceived, and no Warning
    out = decide(inputs(sp, energy(watts=300), telemetry_lost_reason="QueryFailed"))
    back = cond(out, "TelemetryAvailable")
    assert back.status is True and back.reason == "SamplesReceived"
    assert not [e for e in out.events if e.type == "Warning"]


def test_a_cycle_without_power_readings_decides_no_throttle():
    sp = spec(**BUDGET)
    out = decide(inputs(sp, EnergyState(joules=10.0, current_watts=None)))
    assert out.control.power_limit_watts_per_gpu is None and not out.throttled


def test_budget_below_the_gpus_minimum_uses_the_minimum_and_says_so():
    sp = spec(energy={"power": {"budgetWatts": 500}})
    out = decide(inputs(sp, energy(watts=900)))
    assert out.control.power_limit_watts_per_gpu == 200
    assert "below 4 GPUs x 200 W" in next(e.message for e in out.events if e.reason == "ThrottleRequested")


@settings(max_examples=500, deadline=None)
@given(
    st.integers(min_value=1, max_value=100_000),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=50, max_value=400),
    st.integers(min_value=0, max_value=600),
)
def test_throttle_never_exceeds_the_budget_and_stays_in_range(budget, gpus, min_w, extra):
    max_w = min_w + extra
    limit, reachable = throttle_limit(budget, gpus, min_w, max_w)
    assert min_w <= limit <= max_w
    if reachable:
        assert limit * gpus <= budget
    else:
        assert budget < gpus * min_w


# --- energy budget -------------------------------------------------------------------------------------------
def budget_spec(action, checkpoint=True):
    extra = {"checkpoint": {"path": "/ckpt"}} if checkpoint else {}
    return spec(energy={"energyBudget": {"kilowattHours": 1.0, "action": action}}, **extra)


def test_budget_stop_requests_a_checkpoint_first_then_fails():
    sp = budget_spec("Stop")
    out = decide(inputs(sp, energy(kwh=1.2)))
    assert out.fail is None
    assert out.control.checkpoint_requested == 1 and out.control.stop_requested is True
    assert cond(out, "BudgetExceeded").status is True
    # not acknowledged yet: still waiting
    out = decide(inputs(sp, energy(kwh=1.2), control=out.control, policy=out.policy, now_seconds=1010))
    assert out.fail is None
    # acknowledged: stop
    ack = WorkloadReport.from_status({"checkpoint": {"acknowledged": 1}})
    out = decide(inputs(sp, energy(kwh=1.2), control=out.control, policy=out.policy, workload=ack, now_seconds=1020))
    assert out.fail is not None and out.fail[0] == "EnergyBudgetExceeded"


def test_budget_stop_goes_on_after_the_checkpoint_timeout():
    sp = budget_spec("Stop")
    out = decide(inputs(sp, energy(kwh=2)))
    later = 1000 + PolicySettings().checkpoint_timeout_seconds + 1
    out = decide(inputs(sp, energy(kwh=2), control=out.control, policy=out.policy, now_seconds=later))
    assert out.fail is not None
    assert any(e.reason == "CheckpointTimeout" for e in out.events)


def test_budget_without_checkpoint_spec_stops_at_once():
    out = decide(inputs(budget_spec("Stop", checkpoint=False), energy(kwh=1.0)))
    assert out.fail is not None


def test_budget_suspend_holds_until_the_budget_is_raised():
    sp = budget_spec("Suspend", checkpoint=False)
    out = decide(inputs(sp, energy(kwh=1.5)))
    assert out.hold == "Suspended"
    out = decide(inputs(sp, energy(kwh=1.5), policy=out.policy, control=out.control))
    assert out.hold == "Suspended"
    raised = spec(energy={"energyBudget": {"kilowattHours": 3.0, "action": "Suspend"}})
    out = decide(inputs(raised, energy(kwh=1.5), policy=out.policy, control=out.control))
    assert out.hold is None and cond(out, "BudgetExceeded").status is False


def test_budget_notify_only_records():
    sp = budget_spec("Notify")
    out = decide(inputs(sp, energy(kwh=1.5)))
    assert out.hold is None and out.fail is None and [e.reason for e in out.events] == ["EnergyBudgetExceeded"]
    out = decide(inputs(sp, energy(kwh=1.6), policy=out.policy))
    assert out.events == []


def test_energy_fraction_requests_the_stage_once():
    sp = spec(
        energy={"energyBudget": {"kilowattHours": 1.0, "action": "Notify"}},
        compression={"stages": [{"name": "late", "trigger": {"energyFraction": 0.5}, "quantize": {}}]},
    )
    out = decide(inputs(sp, energy(kwh=0.4)))
    assert out.control.stage_requested is None and out.control.energy_fraction == 0.4
    out = decide(inputs(sp, energy(kwh=0.6), control=out.control))
    assert out.control.stage_requested == "late"
    applied = WorkloadReport.from_status({"stages": [{"name": "late", "applied": True}]})
    out2 = decide(inputs(sp, energy(kwh=0.7), control=out.control, workload=applied))
    assert out2.events == []


# --- carbon ----------------------------------------------------------------------------------------------------
def test_carbon_pause_and_resume_with_dwell():
    sp = spec(energy={"carbon": {"intensityGramsPerKWh": 0, "maxGramsPerKWh": 300, "minDwellSeconds": 60}})
    out = decide(inputs(sp, intensity_grams_per_kwh=450))
    assert out.hold == "Paused" and cond(out, "Paused").status is True
    # still high, and low again too soon: stays paused
    out = decide(inputs(sp, intensity_grams_per_kwh=100, policy=out.policy, now_seconds=1030))
    assert out.hold == "Paused"
    out = decide(inputs(sp, intensity_grams_per_kwh=100, policy=out.policy, now_seconds=1061))
    assert out.hold is None and cond(out, "Paused").status is False
    # high again before the dwell passed: not paused yet
    out = decide(inputs(sp, intensity_grams_per_kwh=900, policy=out.policy, now_seconds=1070))
    assert out.hold is None


def test_carbon_unknown_intensity_changes_nothing():
    sp = spec(energy={"carbon": {"intensityQuery": "grid_intensity", "maxGramsPerKWh": 300}})
    out = decide(inputs(sp, intensity_grams_per_kwh=None))
    assert out.hold is None and out.events == []


# --- reschedule ---------------------------------------------------------------------------------------------
def test_power_pressure_reschedules_after_a_checkpoint():
    sp = spec(checkpoint={"path": "/ckpt"})
    out = decide(inputs(sp, pressured_nodes=["node-a"]))
    assert not out.recreate_pods and out.control.checkpoint_requested == 1
    ack = WorkloadReport.from_status({"checkpoint": {"acknowledged": 1}})
    out = decide(inputs(sp, pressured_nodes=["node-a"], control=out.control, policy=out.policy, workload=ack))
    assert out.recreate_pods
    assert out.placement.avoided_nodes == ("node-a",) and out.placement.reschedules == 1
    assert out.policy.drain is None and "drain" not in out.policy.to_status()


def test_power_pressure_ignored_when_disabled():
    sp = spec(energy={"placement": {"rescheduleOnPowerPressure": False}})
    out = decide(inputs(sp, pressured_nodes=["node-a"]))
    assert not out.recreate_pods and out.events == []


# --- verification: the cap asked against the limits the GPUs report --------------------------------------
def test_a_cap_no_gpu_shows_is_not_throttled_and_warned_once_after_the_grace():
    sp = spec(**BUDGET)
    out = decide(inputs(sp, energy(watts=1400), applied_limits_watts=(700.0,) * 4))
    assert out.control.power_limit_watts_per_gpu == 250 and not out.throttled
    assert cond(out, "PowerCapEnforced").reason == "Applying" and cond(out, "Throttled").status is False
    grace = PolicySettings().cap_grace_seconds
    later = dict(control=out.control, policy=out.policy, applied_limits_watts=(700.0,) * 4)
    out = decide(inputs(sp, energy(watts=1400), now_seconds=1000 + grace, **later))
    verdict = cond(out, "PowerCapEnforced")
    assert verdict.status is False and verdict.reason == "LimitNotApplied" and "700 W" in verdict.message
    assert [e.reason for e in out.events] == ["PowerCapNotEnforced"] and not out.throttled
    out = decide(inputs(sp, energy(watts=1400), now_seconds=1010 + grace, **{**later, "policy": out.policy}))
    assert out.events == []  # warned once per cap, not per cycle
    # the enforcer catches up: enforced, throttled, and said so
    out = decide(
        inputs(sp, energy(watts=990), control=out.control, policy=out.policy, applied_limits_watts=CAPPED,
               now_seconds=1020 + grace)
    )
    assert out.throttled and cond(out, "PowerCapEnforced").status is True
    assert [e.reason for e in out.events] == ["PowerCapEnforced"]


def test_no_limit_readings_at_all_is_named_as_the_cause():
    sp = spec(**BUDGET)
    out = decide(inputs(sp, energy(watts=1400)))
    late = 1000 + PolicySettings().cap_grace_seconds
    out = decide(inputs(sp, energy(watts=1400), control=out.control, policy=out.policy, now_seconds=late))
    assert cond(out, "PowerCapEnforced").reason == "NoLimitReadings" and not out.throttled


def test_a_gpu_that_does_not_report_keeps_the_cap_unverified():
    out = decide(inputs(spec(**BUDGET), energy(watts=1400), applied_limits_watts=(250.0,) * 3))
    assert not out.throttled and "3 of 4 GPUs" in cond(out, "PowerCapEnforced").message


def test_a_fixed_limit_is_verified_too():
    sp = spec(energy={"power": {"mode": "Fixed", "limitWatts": 300}})
    out = decide(inputs(sp, energy(watts=900), applied_limits_watts=(300.0,) * 4))
    assert cond(out, "PowerCapEnforced").status is True and not out.throttled  # Fixed is no throttle
    out = decide(inputs(sp, energy(watts=900), applied_limits_watts=(300.4, 301.0, 299.0, 300.0)))
    assert cond(out, "PowerCapEnforced").status is True  # within the 1 W tolerance
    out = decide(inputs(sp, energy(watts=900), applied_limits_watts=(300.0, 302.0, 300.0, 300.0)))
    assert cond(out, "PowerCapEnforced").status is False


def test_stale_telemetry_keeps_the_last_verdict():
    sp = spec(**BUDGET)
    out = decide(inputs(sp, energy(watts=1400), applied_limits_watts=CAPPED))
    out = decide(inputs(sp, energy(watts=1400), control=out.control, policy=out.policy, fresh_telemetry=False))
    assert out.throttled and cond(out, "PowerCapEnforced") is None


def test_a_refused_intensity_query_is_shown_once_and_decides_no_pause():
    sp = spec(energy={"carbon": {"intensityQuery": "grid", "maxGramsPerKWh": 300}})
    refused = "spec.energy.carbon.intensityQuery is not allowed: ... no request was made"
    out = decide(inputs(sp, energy(watts=100), intensity_refused=refused))
    paused = cond(out, "Paused")
    assert paused.status is False and paused.reason == "IntensityQueryNotAllowed" and paused.message == refused
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "IntensityQueryNotAllowed")]
    assert not out.policy.carbon_paused and out.hold is None
    again = decide(inputs(sp, energy(watts=100), intensity_refused=refused,
                          condition_reasons={"Paused": "IntensityQueryNotAllowed"}))
    assert cond(again, "Paused").reason == "IntensityQueryNotAllowed" and again.events == []


def test_refusals_that_persist_are_shown_on_the_condition_and_warned_once():
    sp = spec()
    refusing = EnergyState(joules=50.0, current_watts=300.0, rejected_samples={"counter_decrease": 4},
                           rejecting_since_seconds=1000.0 - 30)
    out = decide(inputs(sp, refusing))
    assert cond(out, "TelemetryAvailable").reason == "SamplesReceived"  # 30 s: not yet news
    refusing.rejecting_since_seconds = 1000.0 - 61
    out = decide(inputs(sp, refusing))
    shown = cond(out, "TelemetryAvailable")
    assert shown.status is True and shown.reason == "SamplesRejected" and "counter_decrease 4" in shown.message
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "TelemetryRejected")]
    again = decide(inputs(sp, refusing, condition_reasons={"TelemetryAvailable": "SamplesRejected"}))
    assert cond(again, "TelemetryAvailable").reason == "SamplesRejected" and again.events == []
    refusing.rejecting_since_seconds = None  # a cycle refused nothing
    assert cond(decide(inputs(sp, refusing)), "TelemetryAvailable").reason == "SamplesReceived"
