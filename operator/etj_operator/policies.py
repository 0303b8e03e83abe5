"""Energy policies as pure functions: throttle, energy budget, carbon pause, reschedule, energy-triggered stages.

:func:`decide` takes what the operator knows about a job this cycle (:class:`PolicyInputs`) and returns a
:class:`PolicyOutcome`: the new ``status.control`` (what the harness obeys), the policy's own bookkeeping
(``status.policy``), ``status.placement``, conditions and events, and what the lifecycle must do with the
pods (hold them deleted as Paused/Suspended, fail the job, or recreate them elsewhere).

Every section is the contract's typed record (:class:`~etj_contract.ControlSection`,
:class:`~etj_contract.PolicySection`, :class:`~etj_contract.PlacementSection`, the parsed
:class:`~etj_contract.WorkloadReport`): no status key is spelled here.

Actions that stop pods first ask the harness for a checkpoint (``control.checkpointRequested`` = n + 1)
and wait until the harness acknowledges it (``status.workload.checkpoint.acknowledged`` >= n + 1) or a
timeout passes: this is the "drain" below. A job without ``spec.checkpoint`` is drained at once.

The energy-fraction stages have one owner, this module: it asks for the next one through
``control.stageRequested`` (in plan order, one at a time, once the fraction reaches its trigger and the
report does not list it yet); the harness applies what is requested and decides nothing from the fraction.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from etj_contract import (
    ConditionType,
    ControlSection,
    Drain,
    ForecastSection,
    Phase,
    PlacementSection,
    PolicySection,
    WorkloadReport,
    format_duration,
)
from etj_contract import agent as agent_names
from etj_operator import contract as c
from etj_operator.autolimit import answer_auto_request
from etj_operator.energy import AccountingSettings, EnergyState
from etj_operator.lifecycle import Event, to_rfc3339
from etj_operator.models import JobSpec
from etj_operator.telemetry.base import AgentFindings, TelemetryCause

# Condition types owned by the policies.
TELEMETRY_AVAILABLE: Final = ConditionType.TELEMETRY_AVAILABLE
THROTTLED: Final = ConditionType.THROTTLED
BUDGET_EXCEEDED: Final = ConditionType.BUDGET_EXCEEDED
PAUSED: Final = ConditionType.PAUSED
RESCHEDULING: Final = ConditionType.RESCHEDULING
POWER_CAP_ENFORCED: Final = ConditionType.POWER_CAP_ENFORCED
ENERGY_FORECAST: Final = ConditionType.ENERGY_FORECAST
#: A measured limit this far above the cap still counts as the cap (NVML works in mW; exporters round).
CAP_TOLERANCE_WATTS: Final = 1.0
POWER_PRESSURE_ANNOTATION: Final = f"{c.GROUP}/power-pressure"

DRAIN_BUDGET_STOP: Final = "EnergyBudgetStop"
DRAIN_BUDGET_SUSPEND: Final = "EnergyBudgetSuspend"
DRAIN_CARBON: Final = "CarbonPause"
DRAIN_RESCHEDULE: Final = "PowerPressure"
DRAIN_FORECAST_SUSPEND: Final = "EnergyForecastSuspend"


@dataclass(frozen=True)
class PolicySettings:
    """Operator-wide constants of the policies."""

    gpu_min_limit_watts: int = 200
    gpu_max_limit_watts: int = 700
    #: A budget cap is released once the job draws less than this fraction of the budget ...
    release_fraction: float = 0.85
    #: ... for this many consecutive telemetry cycles (hysteresis against oscillation).
    release_after_cycles: int = 3
    checkpoint_timeout_seconds: float = 120.0
    #: How long the GPUs' enforcer (the node agent, or the harness in the pod) may take to apply a new cap
    #: before the job says the cap is not enforced, with a Warning: an agent cycle and a scrape or two.
    cap_grace_seconds: float = 60.0
    #: The operator runs with the node agent (ETJ_NODE_AGENT): the agent enforces caps, so its absence from a
    #: node, its failed sets and the GPUs it does not find are causes PowerCapEnforced names.
    node_agent: bool = False
    #: The energy accounting's bounds (ETJ_MAX_GPU_WATTS and neighbours), used where the pass integrates.
    accounting: AccountingSettings = field(default_factory=AccountingSettings)


@dataclass(frozen=True)
class PolicyInputs:
    """What the policies decide from (one job, one cycle)."""

    spec: JobSpec
    energy: EnergyState
    now_seconds: float
    control: ControlSection
    policy: PolicySection
    placement: PlacementSection
    #: The workload's report as parsed (its word: stage results, checkpoint acknowledgements).
    workload: WorkloadReport
    #: A telemetry cycle for this job arrived since the last decision.
    fresh_telemetry: bool
    #: This job's GPUs had readings in the latest cycle; else why not.
    telemetry_ok: bool
    telemetry_reason: str = ""
    #: What ``telemetry_reason`` is (the TelemetryAvailable condition's reason, a TelemetryCause value).
    telemetry_cause: str = ""
    #: The reason of the job's TelemetryAvailable condition as found when it is False (None: True or absent):
    #: a Warning Event is sent when the telemetry is lost, or lost for another cause, not on every cycle.
    telemetry_lost_reason: str | None = None
    #: Why the job's carbon-intensity query was not run (the operator does not allow it); "" otherwise.
    intensity_refused: str = ""
    #: The reason of each of the job's conditions as found (type -> reason): a Warning goes once per cause.
    condition_reasons: Mapping[str, str] = field(default_factory=dict)
    gpu_count: int = 0
    intensity_grams_per_kwh: float | None = None
    pods_exist: bool = True
    #: Nodes running this job's pods that carry the power-pressure annotation.
    pressured_nodes: Sequence[str] = ()
    #: The per-GPU power limits the job's GPUs report in this telemetry cycle (DCGM_FI_DEV_POWER_MGMT_LIMIT,
    #: as measured: read back by the node agent or dcgm-exporter, never the limit asked); empty: none report.
    applied_limits_watts: Sequence[float] = ()
    #: What the node agent's series said of the job's nodes and GPUs in this telemetry cycle (empty: not read).
    agent: AgentFindings = field(default_factory=AgentFindings)
    #: The job's forecast this pass (etj_operator.forecast), for the budget foresight; None: not computed.
    forecast: ForecastSection | None = None
    settings: PolicySettings = field(default_factory=PolicySettings)


@dataclass
class ConditionChange:
    """A condition to set on the job."""

    type: str
    #: None: Unknown.
    status: bool | None
    reason: str
    message: str


@dataclass
class PolicyOutcome:
    """The policies' decisions for one cycle."""

    control: ControlSection
    policy: PolicySection
    placement: PlacementSection
    conditions: list[ConditionChange] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Pods must not run: Paused | Suspended (the lifecycle deletes them and shows this phase).
    hold: Phase | None = None
    #: Finish the job as Failed with (reason, message).
    fail: tuple[str, str] | None = None
    #: Delete the pods now so the lifecycle recreates them (reschedule).
    recreate_pods: bool = False
    #: A throttle cap is asked *and* the GPUs' measured limits show it (the phase is Throttled only then).
    throttled: bool = False
    decisions: list[str] = field(default_factory=list)


def throttle_limit(
    budget_watts: float, gpu_count: int, min_watts: int, max_watts: int
) -> tuple[int, bool]:
    """Per-GPU limit that keeps ``gpu_count`` GPUs under ``budget_watts``: (limit, budget_reachable)."""
    share = math.floor(budget_watts / gpu_count)
    if share < min_watts:
        return min_watts, False
    return min(share, max_watts), True


def decide(inputs: PolicyInputs) -> PolicyOutcome:
    """Run every policy for one job and cycle."""
    out = PolicyOutcome(
        control=inputs.control,  # frozen: replaced, never changed in place
        policy=copy.deepcopy(inputs.policy),
        placement=copy.deepcopy(inputs.placement),
    )
    _telemetry_condition(inputs, out)
    _energy_fraction(inputs, out)
    _budget(inputs, out)
    _foresight(inputs, out)
    if out.fail is None and out.hold is None:
        _carbon(inputs, out)
    if out.fail is None and out.hold is None:
        _reschedule(inputs, out)
    _throttle(inputs, out)
    _auto_limit(inputs, out)
    _verify_cap(inputs, out)
    _finish_drain(inputs, out)
    return out


# --- telemetry ------------------------------------------------------------------------------------------
#: Refused samples are shown on the job once they have gone on this long (one lagging scrape is no news).
REJECTIONS_PERSIST_SECONDS: Final = 60.0
#: The TelemetryAvailable reason (condition True) while readings arrive but some are refused for that long.
SAMPLES_REJECTED: Final = "SamplesRejected"


def _telemetry_condition(i: PolicyInputs, out: PolicyOutcome) -> None:
    if not i.fresh_telemetry:
        return
    since = i.energy.rejecting_since_seconds
    if i.telemetry_ok and since is not None and i.now_seconds - since >= REJECTIONS_PERSIST_SECONDS:
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(i.energy.rejected_samples.items()))
        started = to_rfc3339(datetime.fromtimestamp(since, UTC))
        message = (
            f"GPU readings arrive, but some are refused since {started} ({counts} in all, "
            "status.energy.rejectedSamples): only readings within the physical bound are counted"
        )
        out.conditions.append(ConditionChange(TELEMETRY_AVAILABLE, True, SAMPLES_REJECTED, message))
        if i.condition_reasons.get(TELEMETRY_AVAILABLE) != SAMPLES_REJECTED:
            out.events.append(Event("Warning", "TelemetryRejected", message))
        return
    if i.telemetry_ok:
        out.conditions.append(
            ConditionChange(TELEMETRY_AVAILABLE, True, TelemetryCause.SAMPLES_RECEIVED, "GPU readings arrive")
        )
        return
    cause = i.telemetry_cause or TelemetryCause.NO_SERIES
    reason = i.telemetry_reason or "no GPU readings for this job's pods"
    if i.energy.measured:
        message = f"{reason}; the job's power is unknown until readings return, energy so far is kept"
    else:
        message = f"{reason}; the job's power and energy are unknown (no reading yet)"
    out.conditions.append(ConditionChange(TELEMETRY_AVAILABLE, False, cause, message))
    if i.telemetry_lost_reason != cause:
        out.events.append(Event("Warning", "TelemetryUnavailable", f"{cause}: {message}"))


# --- energy-fraction stages -----------------------------------------------------------------------------
def _energy_fraction(i: PolicyInputs, out: PolicyOutcome) -> None:
    budget = i.spec.energy.energy_budget
    if budget is None:
        return
    fraction = i.energy.kilowatt_hours / budget.kilowatt_hours
    out.control = dataclasses.replace(out.control, energy_fraction=round(fraction, 6))
    done = {s.name for s in i.workload.stages or ()}
    for stage in i.spec.compression.stages:
        if stage.trigger_kind == "energyFraction" and stage.name not in done and fraction >= stage.trigger_value:
            if out.control.stage_requested != stage.name:
                out.control = dataclasses.replace(out.control, stage_requested=stage.name)
                out.events.append(
                    Event("Normal", "StageRequested", f"stage {stage.name}: {fraction:.0%} of the energy budget used")
                )
                out.decisions.append("stage")
            return


# --- drains (checkpoint before stopping pods) ------------------------------------------------------------
def _drain(i: PolicyInputs, out: PolicyOutcome, reason: str) -> bool:
    """Ask for a checkpoint for ``reason``; True once it is safe to stop the pods."""
    drain = out.policy.drain
    if drain is None or drain.reason != reason:
        if i.spec.checkpoint is None or not i.pods_exist:
            return True
        seq = out.control.checkpoint_requested + 1
        out.control = dataclasses.replace(out.control, checkpoint_requested=seq)
        out.policy.drain = Drain(reason=reason, requested=seq, since_seconds=i.now_seconds)
        out.events.append(Event("Normal", "CheckpointRequested", f"checkpoint {seq} requested before {reason}"))
        out.decisions.append("checkpoint")
        return False
    ack = i.workload.acknowledged_checkpoint
    if ack is not None and ack >= drain.requested:
        return True
    if not i.pods_exist:
        return True
    if i.now_seconds - drain.since_seconds >= i.settings.checkpoint_timeout_seconds:
        out.events.append(
            Event("Warning", "CheckpointTimeout", f"no checkpoint acknowledged within "
                  f"{i.settings.checkpoint_timeout_seconds:.0f} s; going on with {reason}")
        )
        return True
    return False


def _finish_drain(i: PolicyInputs, out: PolicyOutcome) -> None:
    if out.policy.drain is not None and out.policy.drain.done:
        out.policy.drain = None


def _mark_drained(out: PolicyOutcome) -> None:
    if out.policy.drain is not None:
        out.policy.drain.done = True


# --- energy budget ----------------------------------------------------------------------------------------
def _budget(i: PolicyInputs, out: PolicyOutcome) -> None:
    budget = i.spec.energy.energy_budget
    if budget is None:
        return
    used = i.energy.kilowatt_hours
    exceeded = used >= budget.kilowatt_hours
    message = f"{used:.6f} kWh used of a {budget.kilowatt_hours:g} kWh budget (action {budget.action})"
    if not exceeded:
        if out.policy.budget_suspended:
            out.policy.budget_suspended = False
            out.events.append(Event("Normal", "BudgetRaised", f"energy budget no longer exceeded: {message}"))
            out.decisions.append("resume")
        if out.policy.budget_notified or budget.action != "Notify":
            out.policy.budget_notified = False
            out.conditions.append(ConditionChange(BUDGET_EXCEEDED, False, "WithinBudget", message))
        return
    out.conditions.append(ConditionChange(BUDGET_EXCEEDED, True, "EnergyBudgetExceeded", message))
    if budget.action == "Notify":
        if not out.policy.budget_notified:
            out.policy.budget_notified = True
            out.events.append(Event("Warning", "EnergyBudgetExceeded", message))
            out.decisions.append("notify")
        return
    if budget.action == "Suspend":
        if out.policy.budget_suspended:
            out.hold = Phase.SUSPENDED
            return
        if _drain(i, out, DRAIN_BUDGET_SUSPEND):
            _mark_drained(out)
            out.policy.budget_suspended = True
            out.hold = Phase.SUSPENDED
            out.events.append(Event("Warning", "EnergyBudgetExceeded", f"suspending: {message}"))
            out.decisions.append("suspend")
        return
    out.control = dataclasses.replace(out.control, stop_requested=True)
    if _drain(i, out, DRAIN_BUDGET_STOP):
        _mark_drained(out)
        out.fail = ("EnergyBudgetExceeded", message)
        out.decisions.append("stop")


# --- budget foresight: the forecast energy at completion against the budget ------------------------------------
#: Over the budget once the forecast exceeds it; within it again only once the forecast is at most this fraction
#: of it (hysteresis: a forecast at the budget does not flap, nor does a suspended job resume on a raise that only
#: just fits).
FORECAST_FIT_FRACTION: Final = 0.95
REASON_FORECAST_OVER: Final = "ForecastOverBudget"
REASON_FORECAST_WITHIN: Final = "ForecastWithinBudget"
REASON_FORECAST_NOT_MATURE: Final = "ForecastNotMature"
REASON_NO_BUDGET: Final = "NoBudget"


def _foresight(i: PolicyInputs, out: PolicyOutcome) -> None:
    """The EnergyForecast condition, and ``onForecast``'s action, from a mature forecast (docs/energy.md).

    One Warning Event ``EnergyForecastOverBudget`` when the condition turns True (the reason as found tells).
    ``Suspend`` checkpoints and suspends the job like the budget's own Suspend, and holds it until the forecast
    fits the budget; the forecast is kept as it was while the job is held (it makes no progress and draws no
    power). The hard budget wins: once the measured energy reaches the budget, its own action decides.
    """
    fc = i.forecast
    held = out.policy.forecast_suspended
    budget = i.spec.energy.energy_budget
    found = i.condition_reasons.get(ENERGY_FORECAST)
    if budget is None or fc is None:
        if held:
            _forecast_release(out, "no energy budget: resuming")
        if budget is None and found is not None and found != REASON_NO_BUDGET:
            message = "the job has no spec.energy.energyBudget"
            out.conditions.append(ConditionChange(ENERGY_FORECAST, False, REASON_NO_BUDGET, message))
        return
    kwh = fc.energy_at_completion_kwh
    if kwh is None or not fc.mature:
        if kwh is None:
            reason, message = fc.reason or "Unknown", f"the forecast is unknown: {fc.message or fc.reason}"
        else:
            reason = REASON_FORECAST_NOT_MATURE
            message = f"{_foresight_text(fc, budget.kilowatt_hours)}; not acted on yet: {fc.message}"
        out.conditions.append(ConditionChange(ENERGY_FORECAST, None, reason, message))
        if held:  # the forecast it was held on is lost (a repaired status): measure again
            _forecast_release(out, f"resuming: {message}")
        return
    over_before = found == REASON_FORECAST_OVER
    over = kwh > (FORECAST_FIT_FRACTION * budget.kilowatt_hours if over_before else budget.kilowatt_hours)
    text = _foresight_text(fc, budget.kilowatt_hours)
    if over and kwh <= budget.kilowatt_hours:
        text += f"; over until the forecast is at most {FORECAST_FIT_FRACTION * budget.kilowatt_hours:.3g} kWh"
    spent = i.energy.kilowatt_hours >= budget.kilowatt_hours
    if not over:
        out.conditions.append(ConditionChange(ENERGY_FORECAST, False, REASON_FORECAST_WITHIN, text))
        if out.policy.drain is not None and out.policy.drain.reason == DRAIN_FORECAST_SUSPEND:
            out.policy.drain = None  # the budget was raised while the checkpoint was asked: no suspension
        if held:
            _forecast_release(out, f"resuming: {text}")
        return
    suspend = budget.on_forecast == "Suspend"
    if held:
        fit = kwh / FORECAST_FIT_FRACTION
        text = f"{text}; suspended until the budget fits it (at least {fit:.3g} kWh)"
    out.conditions.append(ConditionChange(ENERGY_FORECAST, True, REASON_FORECAST_OVER, text))
    if not over_before:
        action = "; checkpointing and suspending the job (onForecast: Suspend)" if suspend and not spent else ""
        out.events.append(Event("Warning", "EnergyForecastOverBudget", text + action))
        out.decisions.append("notify")
    if spent or out.fail is not None or out.hold is not None or not suspend:
        # the hard budget (measured) decides from here, or Notify: no hold of the foresight's
        if held:
            _forecast_release(out, f"the energy budget's own action applies: {text}")
        return
    if held:
        out.hold = Phase.SUSPENDED
        return
    if _drain(i, out, DRAIN_FORECAST_SUSPEND):
        _mark_drained(out)
        out.policy.forecast_suspended = True
        out.hold = Phase.SUSPENDED
        out.decisions.append("suspend")


def _forecast_release(out: PolicyOutcome, message: str) -> None:
    out.policy.forecast_suspended = False
    out.events.append(Event("Normal", REASON_FORECAST_WITHIN, message))
    out.decisions.append("resume")


def _foresight_text(fc: ForecastSection, budget_kwh: float) -> str:
    """``forecast 1.32 kWh at completion (0.41 used, 0.91 to go at 812 W for 1h07m) over the 1 kWh budget``."""
    at = fc.energy_at_completion_kwh or 0.0
    to_go = fc.energy_to_completion_kwh or 0.0
    parts = [f"{at - to_go:.3g} used", f"{to_go:.3g} to go"]
    if fc.power_watts:
        run = format_duration(to_go * 3.6e6 / fc.power_watts)
        parts[-1] += f" at {fc.power_watts:.0f} W for {run}"
    where = "over" if at > budget_kwh else "within"
    return f"forecast {at:.3g} kWh at completion ({', '.join(parts)}) {where} the {budget_kwh:g} kWh budget"


# --- carbon -----------------------------------------------------------------------------------------------
def _carbon(i: PolicyInputs, out: PolicyOutcome) -> None:
    carbon = i.spec.energy.carbon
    if carbon is None or carbon.max_grams_per_kwh is None:
        return
    paused = out.policy.carbon_paused
    since = out.policy.carbon_since_seconds or 0.0
    dwell_ok = i.now_seconds - since >= carbon.min_dwell_seconds
    intensity = i.intensity_grams_per_kwh
    if i.intensity_refused and i.fresh_telemetry:
        # the spec's query is not one the operator runs: say so (once as a Warning); no carbon decision
        out.conditions.append(ConditionChange(PAUSED, paused, REASON_QUERY_NOT_ALLOWED, i.intensity_refused))
        if i.condition_reasons.get(PAUSED) != REASON_QUERY_NOT_ALLOWED:
            out.events.append(Event("Warning", REASON_QUERY_NOT_ALLOWED, i.intensity_refused))
    if intensity is None:
        if paused:
            out.hold = Phase.PAUSED
        return
    limit = carbon.max_grams_per_kwh
    if paused:
        if intensity <= limit and dwell_ok:
            out.policy.carbon_paused = False
            out.policy.carbon_since_seconds = i.now_seconds
            message = f"carbon intensity {intensity:g} g/kWh <= {limit:g}: resuming"
            out.conditions.append(ConditionChange(PAUSED, False, "CarbonIntensityLow", message))
            out.events.append(Event("Normal", "Resumed", message))
            out.decisions.append("resume")
            return
        out.hold = Phase.PAUSED
        return
    if intensity > limit and dwell_ok and _drain(i, out, DRAIN_CARBON):
        _mark_drained(out)
        out.policy.carbon_paused = True
        out.policy.carbon_since_seconds = i.now_seconds
        message = f"carbon intensity {intensity:g} g/kWh > {limit:g}: pausing"
        out.conditions.append(ConditionChange(PAUSED, True, "CarbonIntensityHigh", message))
        out.events.append(Event("Normal", "Paused", message))
        out.decisions.append("pause")
        out.hold = Phase.PAUSED


#: The Paused condition's reason (and the Warning Event's) while the spec's intensity query is refused.
REASON_QUERY_NOT_ALLOWED: Final = "IntensityQueryNotAllowed"


# --- reschedule on node power pressure ---------------------------------------------------------------------
def _reschedule(i: PolicyInputs, out: PolicyOutcome) -> None:
    placement = i.spec.energy.placement
    # A reschedule in progress ends when the new gang runs (etj_operator.jobpass.settle), not when the old
    # pods are gone: between the two, the job shows Rescheduling.
    if not placement.reschedule_on_power_pressure or not i.pressured_nodes:
        return
    nodes = sorted(set(i.pressured_nodes))
    if _drain(i, out, DRAIN_RESCHEDULE):
        _mark_drained(out)
        out.placement.avoided_nodes = tuple(sorted(set(out.placement.avoided_nodes) | set(nodes)))
        out.placement.reschedules += 1
        out.placement.last_reason = f"power pressure on {', '.join(nodes)}"
        out.placement.last_reschedule_seconds = i.now_seconds
        out.placement.rescheduling = True
        out.recreate_pods = True
        message = f"node power pressure on {', '.join(nodes)}: moving the job's pods"
        out.conditions.append(ConditionChange(RESCHEDULING, True, "NodePowerPressure", message))
        out.events.append(Event("Normal", "Rescheduling", message))
        out.decisions.append("reschedule")


# --- throttle -----------------------------------------------------------------------------------------------
def _throttle(i: PolicyInputs, out: PolicyOutcome) -> None:
    budget = i.spec.energy.power.budget_watts
    current = out.control.power_limit_watts_per_gpu
    if budget is None:
        if current is not None:
            out.control = dataclasses.replace(out.control, power_limit_watts_per_gpu=None)
            out.conditions.append(ConditionChange(THROTTLED, False, "NoBudget", "spec.energy.power.budgetWatts unset"))
        return
    if not i.fresh_telemetry or not i.telemetry_ok or i.gpu_count <= 0:
        return  # never decide on stale or missing data; keep whatever cap is in force
    s = i.settings
    limit, reachable = throttle_limit(budget, i.gpu_count, s.gpu_min_limit_watts, s.gpu_max_limit_watts)
    watts = i.energy.current_watts
    if watts is None:
        return  # no power reading this cycle: nothing to decide on
    if current is None:
        if watts > budget:
            out.control = dataclasses.replace(out.control, power_limit_watts_per_gpu=limit)
            out.policy.low_cycles = 0
            note = "" if reachable else f" (the budget is below {i.gpu_count} GPUs x {s.gpu_min_limit_watts} W)"
            message = f"job draws {watts:.0f} W over its {budget} W budget: asking {limit} W per GPU{note}"
            out.events.append(Event("Normal", "ThrottleRequested", message))
            out.decisions.append("throttle")
        return
    if current != limit:  # the budget or the GPU count changed
        out.control = dataclasses.replace(out.control, power_limit_watts_per_gpu=limit)
        out.events.append(Event("Normal", "ThrottleRequested", f"asking {limit} W per GPU for a {budget} W budget"))
        out.decisions.append("throttle")
    if watts < s.release_fraction * budget:
        out.policy.low_cycles += 1
        if out.policy.low_cycles >= s.release_after_cycles:
            out.control = dataclasses.replace(out.control, power_limit_watts_per_gpu=None)
            out.policy.low_cycles = 0
            message = f"job draws {watts:.0f} W, under {s.release_fraction:.0%} of its {budget} W budget: cap released"
            out.conditions.append(ConditionChange(THROTTLED, False, "UnderBudget", message))
            out.events.append(Event("Normal", "ThrottleReleased", message))
            out.decisions.append("release")
    else:
        out.policy.low_cycles = 0


# --- Auto through the node agent: the answer to the harness's candidate limit (etj_operator.autolimit) ---------
def _auto_limit(i: PolicyInputs, out: PolicyOutcome) -> None:
    s = i.settings
    out.control, events = answer_auto_request(
        i.spec.energy.power.mode, out.control, i.workload.power_profile, i.workload.problems,
        min_watts=s.gpu_min_limit_watts, max_watts=s.gpu_max_limit_watts,
    )
    out.events.extend(events)


# --- verification: the cap asked, against the limits the GPUs report -----------------------------------------
def asked_cap_watts(i: PolicyInputs, control: ControlSection) -> int | None:
    """The per-GPU cap asked of the GPUs' enforcer: the throttle's, mode Fixed's limit, or the lower of both."""
    caps = [control.power_limit_watts_per_gpu]
    power = i.spec.energy.power
    if power.mode == "Fixed":
        caps.append(power.limit_watts)
    known = [cap for cap in caps if cap is not None]
    return min(known) if known else None


#: PowerCapEnforced's reasons from the node agent's series, in the order they are chosen.
NO_AGENT_ON_NODE: Final = "NoAgentOnNode"
AGENT_APPLY_FAILED: Final = "AgentApplyFailed"
GPU_NOT_FOUND: Final = "GpuNotFound"
AGENT_CAUSES: Final = (NO_AGENT_ON_NODE, AGENT_APPLY_FAILED, GPU_NOT_FOUND)


def _agent_cause(agent: AgentFindings) -> tuple[str, str] | None:
    """Why the node agent does not enforce the cap, by its own series: (reason, words), or None.

    The first that holds: no agent publishes on a node of the job's pods; the agent's last set on one of the
    job's GPUs failed (NVML refused it: the error kind); the agent does not find a GPU of the job (an
    allocated device that is none of the node's GPUs, or NVML's GpuNotFound).
    """
    if not agent.read:
        return None
    if agent.nodes_without_agent:
        nodes = ", ".join(agent.nodes_without_agent)
        plural = "s" if len(agent.nodes_without_agent) > 1 else ""
        return NO_AGENT_ON_NODE, f"no node agent publishes on node{plural} {nodes}, so nothing there applies the cap"
    not_found = agent_names.ERROR_GPU_NOT_FOUND
    refused = [e for e in agent.gpu_errors if e.operation == agent_names.OPERATION_SET and e.kind != not_found]
    if refused:
        words = ", ".join(f"GPU {e.gpu} on {e.node}: {e.kind}" for e in refused)
        return AGENT_APPLY_FAILED, f"NVML refused the node agent's limit ({words})"
    missing = [f"GPU {e.gpu} on {e.node}" for e in agent.gpu_errors if e.kind == not_found]
    missing += [f"device {u.device_id} of pod {u.pod} on {u.node}" for u in agent.unknown_devices]
    if missing:
        return GPU_NOT_FOUND, f"the node agent does not find {', '.join(dict.fromkeys(missing))}"
    return None


def _verify_cap(i: PolicyInputs, out: PolicyOutcome) -> None:
    """Say whether the cap asked is in force, from the limits the GPUs report (status says what was measured).

    PowerCapEnforced is True when every GPU that reports a limit reports one at or under the cap (within
    :data:`CAP_TOLERANCE_WATTS`) and all the job's GPUs report; the Throttled condition and phase follow it.
    Within ``cap_grace_seconds`` of a new cap the enforcer is still applying it (False, ``Applying``); after
    that, False names the cause, the first that holds of: the node agent's (:func:`_agent_cause`, only with
    ``settings.node_agent``), ``LimitNotApplied`` (a GPU reports more, or fewer GPUs report than the job has)
    and ``NoLimitReadings`` (no GPU reports a limit, so nothing can show the cap). One Warning Event
    ``PowerCapNotEnforced`` says the cap is not being enforced: once per cap, and once more each time the
    condition turns to another of the agent's causes. Without a fresh telemetry cycle the last verdict stands.
    """
    policy = out.policy
    cap = asked_cap_watts(i, out.control)
    throttle = out.control.power_limit_watts_per_gpu
    if cap is None:
        if policy.cap_watts is not None:
            out.conditions.append(ConditionChange(POWER_CAP_ENFORCED, False, "NoCap", "no power cap is asked"))
        policy.cap_watts, policy.cap_since_seconds = None, None
        policy.cap_enforced = policy.cap_warned = False
        out.throttled = False
        return
    if policy.cap_watts != cap:  # a new cap: the enforcer's grace starts now
        policy.cap_watts, policy.cap_since_seconds = cap, i.now_seconds
        policy.cap_enforced = policy.cap_warned = False
    if i.fresh_telemetry and i.telemetry_ok:
        readings = [w for w in i.applied_limits_watts if math.isfinite(w)]
        over = sorted({round(w) for w in readings if w > cap + CAP_TOLERANCE_WATTS})
        gpus = max(i.gpu_count, 1)
        if readings and not over and len(readings) >= gpus:
            if not policy.cap_enforced and policy.cap_warned:
                out.events.append(Event("Normal", "PowerCapEnforced", f"the GPUs now report <= {cap} W"))
            policy.cap_enforced, policy.cap_warned = True, False
            message = f"all {len(readings)} GPUs report a limit <= {cap} W (asked {cap} W per GPU)"
            out.conditions.append(ConditionChange(POWER_CAP_ENFORCED, True, "LimitsApplied", message))
        else:
            policy.cap_enforced = False
            if not readings:
                reason = "NoLimitReadings"
                found = (
                    "no GPU of the job reports a power limit (DCGM_FI_DEV_POWER_MGMT_LIMIT): is the node agent"
                    " or dcgm-exporter running on its nodes?"
                )
            elif over:
                reason = "LimitNotApplied"
                found = f"GPUs report {', '.join(f'{w} W' for w in over)}"
            else:
                reason = "LimitNotApplied"
                found = f"only {len(readings)} of {gpus} GPUs report a limit"
            agent_cause = _agent_cause(i.agent) if i.settings.node_agent else None
            if agent_cause is not None:
                reason, why = agent_cause
                found = f"{why}; {found}"
            waited = i.now_seconds - (policy.cap_since_seconds or i.now_seconds)
            if waited < i.settings.cap_grace_seconds:
                message = f"asked {cap} W per GPU {waited:.0f} s ago, still being applied: {found}"
                out.conditions.append(ConditionChange(POWER_CAP_ENFORCED, False, "Applying", message))
            else:
                message = f"asked {cap} W per GPU {waited:.0f} s ago and not in force: {found}"
                out.conditions.append(ConditionChange(POWER_CAP_ENFORCED, False, reason, message))
                found_reason = i.condition_reasons.get(POWER_CAP_ENFORCED)
                if not policy.cap_warned or (reason in AGENT_CAUSES and found_reason != reason):
                    policy.cap_warned = True
                    warning = f"the power cap is not enforced: {message}"
                    out.events.append(Event("Warning", "PowerCapNotEnforced", warning))
    out.throttled = throttle is not None and policy.cap_enforced
    if throttle is not None and i.fresh_telemetry and i.telemetry_ok:
        budget = i.spec.energy.power.budget_watts
        if out.throttled:
            message = f"{throttle} W per GPU for a {budget} W budget, in force (the GPUs report it)"
            out.conditions.append(ConditionChange(THROTTLED, True, "PowerBudget", message))
        else:
            message = f"{throttle} W per GPU asked for a {budget} W budget, not in force yet (see PowerCapEnforced)"
            out.conditions.append(ConditionChange(THROTTLED, False, "CapNotEnforced", message))
