"""One reconcile pass's decision as one pure function: :func:`decide_pass`, from an observation to a plan.

The reconciler (:mod:`etj_operator.reconciler`) observes (the job's body, its pods from the informer, its
report, the telemetry hub's latest cycle, the nodes under power pressure), calls :func:`decide_pass`, and acts
on the result (writes the status, posts the Events, creates and deletes pods, exports metrics). Everything in
between is here, in this order, and reads no clock and does no I/O (``tests/unit/test_import_contract.py``):

1. **The status to decide from**: the job's status as found, with the keys this process wrote last
   (:data:`OWNED_KEYS`, from :attr:`PassObservation.last_written`) laid over it, because the watched body lags
   our own writes by one watch event; then repaired (:func:`~etj_operator.status_repair.repair_status`).
2. **The workload's word**: the job's own report, parsed defensively into ``status.workload``.
3. **Energy and policies**: the telemetry cycle is integrated into ``status.energy``
   (:func:`~etj_operator.energy.integrate`), and the policies decide (:func:`~etj_operator.policies.decide`):
   control, policy bookkeeping, placement, conditions, and what the pods must do.
4. **Lifecycle**: :func:`~etj_operator.lifecycle.reconcile` turns pods and policies into phase, conditions and
   pod actions.
5. **Settle**: what depends on the lifecycle's result (:func:`settle`), then the forecast for the pass's final
   phase (``status.forecast``, :func:`~etj_operator.forecast.forecast`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from etj_contract import (
    CONTROL,
    ENERGY,
    ENERGY_KEYS,
    FORECAST,
    KUEUE,
    PLACEMENT,
    POLICY,
    TERMINAL,
    WORKLOAD,
    ConditionType,
    ControlSection,
    EnergySection,
    ForecastSection,
    Phase,
    PlacementSection,
    PolicySection,
    WorkloadReport,
)
from etj_operator import breakdown, builders, kueue
from etj_operator import conditions as cond
from etj_operator.energy import integrate
from etj_operator.forecast import forecast
from etj_operator.lifecycle import Event, Observation, Plan, PodView, reconcile, to_rfc3339
from etj_operator.models import InvalidSpecError, JobSpec, parse_spec
from etj_operator.policies import RESCHEDULING, PolicyInputs, PolicyOutcome, PolicySettings, decide
from etj_operator.status_repair import Problem, repair_status
from etj_operator.telemetry.base import AgentFindings, JobTelemetry

__all__ = [
    "HELD_PHASES",
    "OWNED_KEYS",
    "REASON_STATUS_REPAIRED",
    "PassObservation",
    "PassResult",
    "decide_pass",
    "settle",
    "split_by_owner",
]

#: The status keys only the operator writes (docs/security.md); each pass writes those that changed.
OWNED_KEYS: Final = (
    "phase",
    "conditions",
    "observedGeneration",
    "startTime",
    "completionTime",
    "restarts",
    "replicaStatuses",
    ENERGY,
    CONTROL,
    POLICY,
    PLACEMENT,
    "stage",
    WORKLOAD,
    KUEUE,
    FORECAST,
)
#: Phases in which no pod runs: nothing to read telemetry from.
HELD_PHASES: Final = (Phase.SUSPENDED, Phase.PAUSED, Phase.QUEUED, *TERMINAL)
#: Warning Event reason: a malformed status value was replaced (etj_operator.status_repair).
REASON_STATUS_REPAIRED: Final = "StatusRepaired"
#: Phases in which every pod of the gang runs (a reschedule is over).
_RUNNING_PHASES: Final = (Phase.RUNNING, Phase.THROTTLED)


@dataclass(frozen=True)
class PassObservation:
    """Everything one pass decides from (one job, one moment)."""

    #: The job as the watch last showed it.
    body: Mapping[str, Any]
    #: The pods under the job's labels, its own and any others (:func:`split_by_owner` tells them apart).
    pods: Sequence[PodView]
    now: datetime
    settings: PolicySettings = field(default_factory=PolicySettings)
    #: The owned keys this process wrote last (None: nothing yet, e.g. after a restart: the body is the truth).
    last_written: Mapping[str, Any] | None = None
    #: The job's own ``EfficientTrainingJobReport`` (its controller is the job's UID); None: none seen, keep
    #: the ``status.workload`` mirrored last.
    report: Mapping[str, Any] | None = None
    #: A telemetry cycle for this job that arrived since the last pass; None: none.
    telemetry: JobTelemetry | None = None
    #: Nodes running the job's pods that carry the power-pressure annotation.
    pressured_nodes: frozenset[str] = frozenset()
    #: GPUs seen in the job's last telemetry cycle (the throttle divides the budget among them); 0: unknown.
    gpu_count: int = 0
    #: The job in Kueue (its Workload, the flavors), when the operator is Kueue's integration (ETJ_KUEUE); None:
    #: it is not (etj_operator.kueue).
    kueue: kueue.KueueView | None = None


@dataclass
class PassResult:
    """The decision of one pass: the lifecycle's plan (``plan.status`` is the status to write) and context."""

    plan: Plan
    #: The status as found (with :attr:`PassObservation.last_written` laid over it): the write's diff base.
    before: dict[str, Any]
    spec: JobSpec | None
    #: The job's own pods, and the others under its labels (an older job's of the same name, orphans).
    pods: list[PodView]
    foreign_pods: list[PodView]
    outcome: PolicyOutcome | None
    #: Values of the status that were malformed and replaced (each is also a StatusRepaired Warning Event).
    repaired: list[Problem]
    #: What the parse of the workload's report dropped, by field path.
    report_problems: tuple[str, ...]
    #: GPUs seen in this pass's telemetry (else the observation's count).
    gpu_count: int
    #: Whether the job has a status object at all (the first write creates it).
    status_exists: bool
    #: Kueue's step (with ETJ_KUEUE): what to write to the job's Workload, how its pods are placed.
    kueue: kueue.KueueStep | None = None


def split_by_owner(pods: Sequence[PodView], uid: str) -> tuple[list[PodView], list[PodView]]:
    """The job's own pods (controller ownerReference = the job's UID) and the others under its labels.

    The others are an older job's of the same name (its garbage collection pending) or orphans: never this
    job's, whatever their name or labels say.
    """
    owned: list[PodView] = []
    foreign: list[PodView] = []
    for pod in pods:
        (owned if uid and pod.owner_uid == uid else foreign).append(pod)
    return owned, foreign


def decide_pass(obs: PassObservation) -> PassResult:
    """Decide one pass for a job (pure: no clock, no I/O; ``obs.now`` is the time)."""
    body = obs.body
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    uid = str(meta.get("uid") or "")
    generation = int(meta.get("generation") or 1)
    pods, foreign = split_by_owner(obs.pods, uid)
    status_exists = isinstance(body.get("status"), Mapping) or obs.last_written is not None
    spec: JobSpec | None = None
    error: InvalidSpecError | None = None
    try:
        spec = parse_spec(body.get("spec"), name)
    except InvalidSpecError as e:
        error = e

    status = dict(body.get("status") or {})
    if obs.last_written is not None:
        status.update(obs.last_written)
        for key in OWNED_KEYS:
            if key not in obs.last_written:
                status.pop(key, None)
    before = dict(status)
    # A malformed value (written by hand, by an older operator) is named and repaired, never fatal: the
    # repaired keys differ from ``before``, so this pass writes them back.
    status, repaired = repair_status(
        status,
        pod_generations=[p.gang_generation for p in pods],
        pod_start_times=[p.start_time for p in pods],
    )
    report = _mirror_report(status, obs.report)

    outcome: PolicyOutcome | None = None
    gpu_count = obs.gpu_count
    # the forecast the policies saw, and the phase it is for (the one written is for the pass's final phase)
    forecast_seen: tuple[Any, ForecastSection] | None = None
    if spec is not None and not spec.suspend and status.get("phase") not in TERMINAL:
        phase_found = status.get("phase")
        outcome, gpu_count, seen = _run_policies(spec, status, pods, obs, report)
        forecast_seen = (phase_found, seen)
        for change in outcome.conditions:
            status["conditions"] = cond.set_condition(
                list(status.get("conditions") or []),
                change.type,
                change.status,
                change.reason,
                change.message,
                to_rfc3339(obs.now),
                generation,
            )
    # Kueue's gate (etj_operator.kueue): no pod before the job's Workload is admitted; then as many as admitted.
    step: kueue.KueueStep | None = None
    if obs.kueue is not None and spec is not None and status.get("phase") not in TERMINAL:
        step = kueue.decide(
            obs.kueue,
            builders.JobRef.from_body(body),
            spec,
            status,
            pods,
            now=obs.now,
            generation=generation,
            report=report,
            checkpoint_timeout_seconds=obs.settings.checkpoint_timeout_seconds,
        )
        if step.replicas is not None:
            spec = dataclasses.replace(spec, replicas=step.replicas)
    hold = Phase.QUEUED if step is not None and step.queued else (outcome.hold if outcome else None)
    fail = outcome.fail if outcome is not None and outcome.fail is not None else (step.fail if step else None)
    placement = PlacementSection.from_status(status.get(PLACEMENT))
    plan = reconcile(
        Observation(
            name=name,
            generation=generation,
            spec=spec,
            spec_error=error,
            status=status,
            pods=pods,
            now=obs.now,
            hold=hold,
            fail=fail,
            recreate=outcome.recreate_pods if outcome else False,
            throttled=outcome.throttled if outcome else False,
            rescheduling=placement.rescheduling,
            foreign_pods=foreign,
        )
    )
    if repaired:
        message = "status repaired: " + "; ".join(str(problem) for problem in repaired)
        plan.events.append(Event("Warning", REASON_STATUS_REPAIRED, message))
    if outcome is not None:
        plan.events.extend(outcome.events)
    if step is not None and step.managed and step.placement is None and plan.create_pods:
        # never a pod without an admission (while an evicted job drains, the lifecycle may not replace a pod)
        plan.status["replicaStatuses"]["Worker"]["pending"] -= len(plan.create_pods)
        plan.create_pods = []
    if obs.kueue is not None:
        step = step or kueue.KueueStep()  # a finished job (or an invalid spec): its Workload is marked Finished
        plan.events.extend(step.events)
        kueue.after_lifecycle(obs.kueue, step, plan.status, obs.now)
    settle(plan, obs.now, generation, report)
    _write_forecast(plan.status, before, report, obs.now, spec, forecast_seen)
    return PassResult(
        plan=plan,
        before=before,
        spec=spec,
        pods=pods,
        foreign_pods=foreign,
        outcome=outcome,
        repaired=repaired,
        report_problems=report.problems,
        gpu_count=gpu_count,
        status_exists=status_exists,
        kueue=step,
    )


def _mirror_report(status: dict[str, Any], report: Mapping[str, Any] | None) -> WorkloadReport:
    """The workload's word for this pass, parsed defensively; mirrored into ``status.workload``.

    From the job's report when there is one (the only object the job's pods may write); else the
    ``status.workload`` this operator wrote last (only the operator writes the job's status). A malformed
    field is dropped and named in the record's ``problems``, never fatal.
    """
    source = status.get(WORKLOAD) if report is None else report.get("status")
    parsed = WorkloadReport.from_status(source, "status" if report is not None else f"status.{WORKLOAD}")
    workload = parsed.to_status()
    if workload:
        status[WORKLOAD] = workload
    else:
        status.pop(WORKLOAD, None)
    return parsed


def _run_policies(
    spec: JobSpec,
    status: dict[str, Any],
    pods: list[PodView],
    obs: PassObservation,
    report: WorkloadReport,
) -> tuple[PolicyOutcome, int, ForecastSection]:
    """Integrate the telemetry cycle, run the policies, and write their sections into ``status``.

    Returns the policies' outcome, the GPU count, and the forecast they saw (after this pass's integration, as
    of the phase found).
    """
    telemetry = obs.telemetry
    energy = EnergySection.from_status(status.get(ENERGY))
    control = ControlSection.from_status(status.get(CONTROL))
    carbon = spec.energy.carbon
    intensity = None
    if carbon is not None:
        intensity = carbon.intensity_grams_per_kwh
        if carbon.intensity_query is not None:
            intensity = telemetry.intensity_grams_per_kwh if telemetry else None
    gpu_count = obs.gpu_count
    # The limits the GPUs report (read back by the node agent or dcgm-exporter): what the cap is verified
    # against (and what integrate records in the history), never the limit asked.
    applied = [s.power_limit_watts for s in telemetry.samples if s.power_limit_watts is not None] if telemetry else []
    joules_before = energy.joules
    if telemetry is not None:
        integrate(
            energy,
            telemetry.samples,
            source=telemetry.source,
            intensity_grams_per_kwh=intensity,
            now_seconds=obs.now.timestamp(),  # samples stamped beyond it (plus a tolerance) are refused
            settings=obs.settings.accounting,
        )
        gpus = {s.series for s in telemetry.samples}
        if gpus:
            gpu_count = len(gpus)
    if energy.measured:  # the energy split by the harness's timing windows (etj_operator.breakdown)
        energy.breakdown = breakdown.attribute(
            energy.breakdown,
            joules_before=joules_before,
            joules_after=energy.joules,
            communication=report.communication,
            topology=_topology(spec, report),
        )
    placement = PlacementSection.from_status(status.get(PLACEMENT))
    live = [p for p in pods if not p.terminating]
    pressured = sorted(
        p.node_name
        for p in live
        if p.node_name and p.node_name in obs.pressured_nodes and p.node_name not in placement.avoided_nodes
    )
    # the forecast as of the phase found, after this pass's integration (the budget foresight's input)
    forecast_found = forecast(
        ForecastSection.from_status(status.get(FORECAST)),
        report,
        energy,
        obs.now.timestamp(),
        phase=status.get("phase"),
        telemetry_interval_seconds=spec.energy.telemetry.interval_seconds,
    )
    outcome = decide(
        PolicyInputs(
            spec=spec,
            energy=energy,
            now_seconds=obs.now.timestamp(),
            control=control,
            policy=PolicySection.from_status(status.get(POLICY)),
            placement=placement,
            workload=report,  # the parsed report (_mirror_report), never the job's status as found
            fresh_telemetry=telemetry is not None,
            telemetry_ok=telemetry.ok if telemetry else False,
            telemetry_reason=telemetry.reason if telemetry else "",
            telemetry_cause=telemetry.cause if telemetry else "",
            telemetry_lost_reason=_lost_reason(status),
            intensity_refused=telemetry.intensity_refused if telemetry else "",
            condition_reasons={
                str(x.get("type")): str(x.get("reason") or "")
                for x in status.get("conditions") or []
                if isinstance(x, Mapping)
            },
            gpu_count=gpu_count or spec.world_size,
            intensity_grams_per_kwh=intensity,
            pods_exist=bool(live),
            pressured_nodes=sorted(set(pressured)),
            applied_limits_watts=applied,
            agent=telemetry.agent if telemetry else AgentFindings(),
            forecast=forecast_found,
            settings=obs.settings,
        )
    )
    # Written from the first pass on: a job nobody has measured yet shows "-" (unknown), not nothing.
    status[ENERGY] = energy.to_status()
    status[CONTROL] = outcome.control.to_status()
    status[POLICY] = outcome.policy.to_status()
    if not outcome.placement.empty:
        status[PLACEMENT] = outcome.placement.to_status()
    return outcome, gpu_count, forecast_found


def _topology(spec: JobSpec, report: WorkloadReport) -> breakdown.Topology:
    """The job's placement for the network model: its pods x spec.nprocPerNode ranks.

    The pods: the report's world size over the ranks per pod when it divides (an elastic job may run fewer pods
    than asked), else spec.replicas.
    """
    per_pod = max(1, spec.nproc_per_node)
    world = report.communication.world_size if report.communication is not None else None
    pods = world // per_pod if world and world % per_pod == 0 else spec.replicas
    return breakdown.Topology(pods=max(1, pods), ranks_per_pod=per_pod)


def _write_forecast(
    status: dict[str, Any],
    before: Mapping[str, Any],
    report: WorkloadReport,
    now: datetime,
    spec: JobSpec | None,
    seen: tuple[Any, ForecastSection] | None,
) -> None:
    """Write ``status.forecast`` for the pass's final phase (etj_operator.forecast).

    ``seen``: the phase and forecast the policies saw; reused when the phase stayed the same, else computed again.
    The figures move only with their inputs (a new step count, a telemetry cycle, a phase), each of which the
    pass writes anyway. So that the forecast never costs a write of its own, a pass in which no other owned key
    changed keeps the forecast found unless its reason changed (docs/energy.md, "Forecast").
    """
    found = status.get(FORECAST)
    previous = ForecastSection.from_status(found)
    if seen is not None and seen[0] == status.get("phase"):
        section = seen[1]  # nothing the forecast reads changed since the policies saw it
    else:
        section = forecast(
            previous,
            report,
            EnergySection.from_status(status.get(ENERGY)),
            now.timestamp(),
            phase=status.get("phase"),
            telemetry_interval_seconds=spec.energy.telemetry.interval_seconds if spec is not None else 15,
        )
    others_changed = any(status.get(key) != before.get(key) for key in OWNED_KEYS if key != FORECAST)
    if found is not None and found == before.get(FORECAST) and not others_changed and section.reason == previous.reason:
        return
    status[FORECAST] = section.to_status()


def _lost_reason(status: Mapping[str, Any]) -> str | None:
    """The reason of the job's TelemetryAvailable condition when it is False (None: True or absent)."""
    found = cond.find(list(status.get("conditions") or []), ConditionType.TELEMETRY_AVAILABLE)
    if found is None or found.get("status") != "False":
        return None
    return str(found.get("reason") or "")


def settle(plan: Plan, now: datetime, generation: int, report: WorkloadReport | None = None) -> None:
    """Status touches that depend on the lifecycle's result (pure; updates ``plan.status``).

    A reschedule ends once the gang runs again; a finished job draws no power and has no cap in force; the
    Stage column shows the report's last kept stage. ``report``: the parsed report; None reads the plan's
    ``status.workload``.
    """
    status = plan.status
    phase = status.get("phase")
    if status.get(PLACEMENT) is not None:
        placement = PlacementSection.from_status(status.get(PLACEMENT))
        if placement.rescheduling and phase in TERMINAL:
            placement.rescheduling = False  # the job ended first; its conditions are final
            status[PLACEMENT] = placement.to_status()
        elif placement.rescheduling and phase in _RUNNING_PHASES:
            placement.rescheduling = False
            status[PLACEMENT] = placement.to_status()
            status["conditions"] = cond.set_condition(
                list(status.get("conditions") or []),
                RESCHEDULING,
                False,
                "Rescheduled",
                f"all pods run again, avoiding {', '.join(placement.avoided_nodes)}",
                to_rfc3339(now),
                generation,
            )
    if phase in TERMINAL:
        # Nothing runs any more: no power draw, and no cap in force (the harness restored its GPUs' limits).
        # Known, not unknown: a finished job draws 0 W (and kubectl's display says so, not the last reading).
        energy = status.get(ENERGY)
        if isinstance(energy, Mapping) and energy.get(ENERGY_KEYS["current_watts"]) != 0:
            section = EnergySection.from_status(energy)
            section.current_watts = 0.0
            status[ENERGY] = section.to_status()
        control = ControlSection.from_status(status.get(CONTROL))
        if control.power_limit_watts_per_gpu is not None or control.auto_limit_watts_per_gpu is not None:
            ended = dataclasses.replace(control, power_limit_watts_per_gpu=None, auto_limit_watts_per_gpu=None)
            status[CONTROL] = ended.to_status()
    if report is None:
        report = WorkloadReport.from_status(status.get(WORKLOAD))
    if report.last_kept_stage is not None:
        status["stage"] = report.last_kept_stage
