"""The job lifecycle as one pure function: what is observed in, what to do out.

:func:`reconcile` takes an :class:`Observation` (the job's parsed spec, its current status, its pods as
the operator's pod informer sees them, the time, and what the energy policies decided: hold, fail, recreate,
throttled) and returns a :class:`Plan`: children to create, pods to create or delete, the new status,
events, whether to delete the job, and when to look again. :class:`~etj_operator.reconciler.JobReconciler`
applies plans; nothing here does I/O, so every transition is unit-tested.

Gang semantics: every pod carries the gang generation it was created for (``status.restarts`` at the
time). A failed pod fails the whole gang: all pods are deleted, ``restarts`` goes up by one and a new gang
is created once the old pods are gone.

"Gone" means gone from the API, not merely Terminating: on a node, a deleted pod keeps running for its
grace period (``deletionTimestamp`` set, the kubelet stopping its containers), and its headless-Service
name still resolves to it. A new worker created beside a terminating worker 0 resolved the master address
to the dying pod on a real cluster and the new gang deadlocked. So no pod is created while any pod of the
job is terminating or is being deleted in the same pass (gang restarts, suspend and resume, pauses,
reschedules, stale or scaled-down pods alike); terminating pods are counted in
``replicaStatuses.Worker.terminating`` meanwhile.

Identity: only the pods whose controller ownerReference is this job's UID are the job's
(:attr:`Observation.pods`; the reconciler sorts them). Pods of another job of the same name (an older one
whose pods the garbage collector has not removed yet) or orphans (``kubectl delete --cascade=orphan``) are
:attr:`Observation.foreign_pods`: never counted, adopted, deleted or reported as this job's. While one of them
holds a name of the gang, or still runs under the job's DNS names, no pod is created (the same rule as for
terminating pods): condition ``PodNameTaken`` True and one Warning Event per episode, phase Pending.

Spec changes: every pod carries the spec's world (:func:`~etj_operator.builders.world_of`: the fields that
shape its world and env). When a live pod carries another world, the whole gang is deleted and the new one is
created once all old pods are gone; it resumes from the checkpoint. Not counted in ``restarts``; condition
``Restarting`` with reason ``SpecChanged`` and one Event say what changed. The other fields apply at once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from etj_contract import Phase
from etj_contract.agent import RESOURCE_NVIDIA_GPU as GPU_RESOURCE
from etj_operator import builders, contract
from etj_operator import conditions as cond
from etj_operator.envvars import worker_pod_name
from etj_operator.models import InvalidSpecError, JobSpec

# The job's phases, under the names this module has always used (members of the contract's Phase).
PENDING: Final = Phase.PENDING
RUNNING: Final = Phase.RUNNING
RESTARTING: Final = Phase.RESTARTING
SUSPENDED: Final = Phase.SUSPENDED
SUCCEEDED: Final = Phase.SUCCEEDED
FAILED: Final = Phase.FAILED
PAUSED: Final = Phase.PAUSED
THROTTLED: Final = Phase.THROTTLED
RESCHEDULING: Final = Phase.RESCHEDULING
QUEUED: Final = Phase.QUEUED


@dataclass(frozen=True)
class PodView:
    """What the lifecycle needs to know of one worker pod."""

    name: str
    index: int
    gang_generation: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    terminating: bool = False
    exit_code: int | None = None
    reason: str | None = None
    node_name: str | None = None
    pod_ip: str | None = None
    #: The pod's own UID (``metadata.uid``) and its controller ownerReference's UID (None: no controller).
    uid: str = ""
    owner_uid: str | None = None
    #: ``status.startTime`` (RFC 3339) once the kubelet has accepted the pod.
    start_time: str | None = None
    #: The spec's world the pod was made for (``field -> value`` pairs, sorted); empty: unknown (an older
    #: operator's pod), which counts as current.
    world: tuple[tuple[str, str], ...] = ()
    #: GPUs the pod requested (``nvidia.com/gpu``, each container's limit, else its request, summed); None
    #: when no container names the resource. A telemetry source counts no more GPU series for the pod.
    gpus: int | None = None

    @classmethod
    def from_pod(
        cls,
        pod: Mapping[str, Any],
        index_label: str,
        generation_annotation: str,
        world_annotation: str | None = None,
    ) -> PodView:
        """Summarise a Pod object (as a dict)."""
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        exit_code, reason = _terminated(status)
        return cls(
            name=meta.get("name", ""),
            index=_int(labels.get(index_label), -1),
            gang_generation=_int(annotations.get(generation_annotation), 0),
            phase=status.get("phase") or "Pending",
            terminating=bool(meta.get("deletionTimestamp")),
            exit_code=exit_code,
            reason=reason,
            node_name=(pod.get("spec") or {}).get("nodeName"),
            pod_ip=status.get("podIP"),
            uid=str(meta.get("uid") or ""),
            owner_uid=controller_uid(meta),
            start_time=status.get("startTime"),
            world=tuple(sorted(builders.parse_world(annotations.get(world_annotation)).items()))
            if world_annotation
            else (),
            gpus=requested_gpus(pod.get("spec") or {}),
        )


def requested_gpus(spec: Mapping[str, Any]) -> int | None:
    """The ``nvidia.com/gpu`` a pod spec's containers ask (limit, else request), summed; None when none names it.

    Extended resources are not overcommitted: where both are set they are equal. A malformed quantity counts
    as none asked by that container.
    """
    total: int | None = None
    for container in spec.get("containers") or ():
        if not isinstance(container, Mapping):
            continue
        resources = container.get("resources")
        if not isinstance(resources, Mapping):
            continue
        limits, requests = resources.get("limits"), resources.get("requests")
        raw = limits.get(GPU_RESOURCE) if isinstance(limits, Mapping) else None
        if raw is None and isinstance(requests, Mapping):
            raw = requests.get(GPU_RESOURCE)
        if raw is None:
            continue
        try:
            count = int(str(raw))
        except ValueError:
            count = 0
        total = (total or 0) + max(count, 0)
    return total


def controller_uid(meta: Mapping[str, Any]) -> str | None:
    """The UID of the object's controller ownerReference (the one with ``controller: true``), else None."""
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            uid = ref.get("uid")
            return str(uid) if uid else None
    return None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _terminated(status: Mapping[str, Any]) -> tuple[int | None, str | None]:
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and cs.get("name") == contract.TRAINER_CONTAINER:
            return term.get("exitCode"), term.get("reason")
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode"):
            return term.get("exitCode"), term.get("reason")
    return None, status.get("reason")


@dataclass(frozen=True)
class Observation:
    """Everything the lifecycle decides from."""

    name: str
    generation: int
    spec: JobSpec | None
    spec_error: InvalidSpecError | None
    status: Mapping[str, Any]
    pods: Sequence[PodView]
    now: datetime
    #: From the energy policies: keep the pods deleted and show this phase (Paused | Suspended); from Kueue
    #: (etj_operator.kueue): Queued, while the job's Workload is not admitted.
    hold: str | None = None
    #: From the energy policies: finish the job as Failed with (reason, message).
    fail: tuple[str, str] | None = None
    #: From the energy policies: delete the gang now and recreate it (reschedule), without a restart.
    recreate: bool = False
    #: The job's GPUs are capped by the power budget (Running shows as Throttled).
    throttled: bool = False
    #: A reschedule is under way (not-yet-running gangs show as Rescheduling).
    rescheduling: bool = False
    #: Pods under the job's labels that it does not own (another job's UID as controller, or none): never
    #: counted or touched; while one holds a gang name or still runs, no pod is created.
    foreign_pods: Sequence[PodView] = ()


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the job."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What the reconciler should do, in this order: status, events, children, deletions, creations, job deletion."""

    status: dict[str, Any]
    ensure_children: bool = False
    create_pods: list[int] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after_seconds: float | None = None


def to_rfc3339(moment: datetime) -> str:
    """Kubernetes' timestamp format (UTC, seconds, Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(text: str | None) -> datetime | None:
    """Parse a Kubernetes timestamp; None for missing or unreadable values."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class _Builder:
    """Accumulates the new status and the plan's actions."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.now = to_rfc3339(obs.now)
        self.status: dict[str, Any] = copy.deepcopy(dict(obs.status))
        self.plan = Plan(status=self.status)
        self.old_phase = self.status.get("phase")

    @property
    def conditions(self) -> list[dict[str, Any]]:
        return list(self.status.get("conditions") or [])

    def condition(self, ctype: str, value: bool, reason: str, message: str) -> None:
        self.status["conditions"] = cond.set_condition(
            self.conditions, ctype, value, reason, message, self.now, self.obs.generation
        )

    def phase(self, phase: str, event: Event | None = None) -> None:
        if self.status.get("phase") != phase and event is not None:
            self.plan.events.append(event)
        self.status["phase"] = phase

    def finish(self, phase: str, reason: str, message: str) -> None:
        warning = phase == FAILED
        self.condition(phase, True, reason, message)
        self.phase(phase, Event("Warning" if warning else "Normal", reason, message))
        self.status.setdefault("completionTime", self.now)

    def delete(self, pods: Sequence[PodView]) -> None:
        for pod in pods:
            if not pod.terminating and pod.name not in self.plan.delete_pods:
                self.plan.delete_pods.append(pod.name)


def reconcile(obs: Observation) -> Plan:
    """Decide the next actions and status for one job."""
    b = _Builder(obs)
    b.status["observedGeneration"] = obs.generation
    b.status.setdefault("restarts", 0)
    _replica_statuses(b)

    if obs.spec is None or obs.spec_error is not None:
        _invalid(b, obs.spec_error)
        return b.plan
    spec = obs.spec
    if cond.is_true(b.conditions, cond.INVALID):
        b.condition(cond.INVALID, False, cond.REASON_SPEC_FIXED, "the spec is valid now")
        b.status["conditions"] = cond.clear_final(b.conditions)
        b.status.pop("completionTime", None)
        b.status["phase"] = PENDING
    if b.status.get("phase") in (SUCCEEDED, FAILED):
        _finished(b, spec)
        return b.plan
    if spec.suspend:
        _suspend(b)
        return b.plan
    if cond.is_true(b.conditions, cond.SUSPENDED):
        b.condition(cond.SUSPENDED, False, cond.REASON_RESUMED, "spec.suspend is false; pods are recreated")
        b.plan.events.append(Event("Normal", cond.REASON_RESUMED, "job resumed"))
    if _deadline_passed(b, spec):
        return b.plan
    if obs.fail is not None:
        reason, message = obs.fail
        b.delete(b.obs.pods)
        b.finish(FAILED, reason, message)
        _finished(b, spec)
        return b.plan
    if obs.hold is not None:
        b.delete(b.obs.pods)
        if obs.hold == QUEUED:
            _queued(b)
        b.phase(obs.hold)
        return b.plan
    if obs.recreate:
        b.delete(b.obs.pods)
    _run(b, spec)
    return b.plan


def _replica_statuses(b: _Builder) -> None:
    counts = {"active": 0, "pending": 0, "succeeded": 0, "failed": 0, "terminating": 0}
    for pod in b.obs.pods:
        if pod.terminating:
            # still on its node (stopping, or its kubelet has not removed it yet): shown, never as active
            counts["terminating"] += 1
            continue
        key = {"Running": "active", "Succeeded": "succeeded", "Failed": "failed"}.get(pod.phase, "pending")
        counts[key] += 1
    b.status["replicaStatuses"] = {"Worker": counts}


def _invalid(b: _Builder, error: InvalidSpecError | None) -> None:
    message = str(error) if error else "spec is missing"
    b.condition(cond.INVALID, True, cond.REASON_INVALID_SPEC, message)
    b.delete(b.obs.pods)
    if b.status.get("phase") != FAILED or not cond.is_true(b.conditions, cond.FAILED):
        b.status["conditions"] = cond.clear_final(b.conditions)
    b.finish(FAILED, cond.REASON_INVALID_SPEC, message)


def _finished(b: _Builder, spec: JobSpec) -> None:
    policy = spec.run_policy.clean_pod_policy
    if policy == "All":
        b.delete(b.obs.pods)
    elif policy == "Running":
        b.delete([p for p in b.obs.pods if p.phase in ("Running", "Pending", "Unknown")])
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = from_rfc3339(b.status.get("completionTime"))
    if ttl is not None and done is not None:
        left = ttl - (b.obs.now - done).total_seconds()
        if left <= 0:
            b.plan.delete_job = True
        else:
            b.plan.requeue_after_seconds = left


def _suspend(b: _Builder) -> None:
    b.delete(b.obs.pods)
    message = "spec.suspend is true; the job's pods are deleted"
    if not cond.is_true(b.conditions, cond.SUSPENDED):
        b.condition(cond.SUSPENDED, True, cond.REASON_SUSPENDED, message)
        for ctype in (cond.RUNNING, cond.RESTARTING):
            if cond.find(b.conditions, ctype) is not None:
                b.condition(ctype, False, cond.REASON_SUSPENDED, message)
    # Kueue semantics: a suspended job's clock stops; activeDeadlineSeconds counts again from the resume.
    b.status.pop("startTime", None)
    b.phase(SUSPENDED, Event("Normal", cond.REASON_SUSPENDED, message))


def _queued(b: _Builder) -> None:
    """Waiting for Kueue's admission: as for a suspended job, the clock stops and nothing runs or restarts.

    ``activeDeadlineSeconds`` counts again from the next start (Kueue's semantics for a job it suspends); the
    Queued condition itself, with Kueue's reason and message, is set by :mod:`etj_operator.kueue`.
    """
    b.status.pop("startTime", None)
    for ctype in (cond.RUNNING, cond.RESTARTING):
        if cond.is_true(b.conditions, ctype):
            b.condition(ctype, False, cond.REASON_QUEUED, "the job's Workload is not admitted: its pods are deleted")


def _deadline_passed(b: _Builder, spec: JobSpec) -> bool:
    deadline = spec.run_policy.active_deadline_seconds
    start = from_rfc3339(b.status.get("startTime"))
    if deadline is None or start is None:
        return False
    left = deadline - (b.obs.now - start).total_seconds()
    if left > 0:
        b.plan.requeue_after_seconds = left
        return False
    b.delete(b.obs.pods)
    b.finish(FAILED, cond.REASON_DEADLINE_EXCEEDED, f"the job ran longer than activeDeadlineSeconds={deadline}")
    _finished(b, spec)
    return True


def _env_overridden(b: _Builder, spec: JobSpec) -> None:
    """Once per job generation: a Warning Event naming the template's variables the operator replaces."""
    if b.obs.status.get("observedGeneration") == b.obs.generation:
        return
    replaced = builders.env_overrides(spec)
    if replaced:
        b.plan.events.append(
            Event(
                "Warning",
                cond.REASON_ENV_OVERRIDDEN,
                f"the trainer container's env sets {', '.join(replaced)}, which the operator sets itself in every"
                " worker pod: the template's values are replaced by the operator's (docs/api.md, 'Environment')",
            )
        )


def _run(b: _Builder, spec: JobSpec) -> None:
    restarts = int(b.status.get("restarts") or 0)
    live = [p for p in b.obs.pods if not p.terminating]
    stale = [p for p in live if p.gang_generation != restarts or not 0 <= p.index < spec.replicas]
    b.delete(stale)
    gang = {p.index: p for p in live if p not in stale}
    blockers = _name_takers(b, spec)
    _env_overridden(b, spec)

    if not cond.is_true(b.conditions, cond.CREATED):
        b.plan.ensure_children = True
        b.condition(cond.CREATED, True, cond.REASON_JOB_CREATED, f"{spec.replicas} worker pod(s) requested")
        b.plan.events.append(Event("Normal", cond.REASON_JOB_CREATED, f"creating {spec.replicas} worker pod(s)"))

    changes = _world_changes(spec, live)
    failed = sorted((p for p in gang.values() if p.phase == "Failed"), key=lambda p: p.index)
    if failed and not changes:  # a pod of the old world failing is no restart: that gang goes anyway
        _gang_failed(b, spec, failed[0], restarts)
        return

    worker0 = gang.get(0)
    if worker0 is not None and worker0.phase == "Succeeded":
        b.finish(SUCCEEDED, cond.REASON_JOB_SUCCEEDED, f"{worker0.name} completed")
        _finished(b, spec)
        return

    if changes:
        _spec_changed(b, spec, changes)
        gang = {}

    if not _going_away(b) and not blockers:
        b.plan.create_pods = [i for i in range(spec.replicas) if i not in gang]
    # Pods about to be created count as pending now: one status write instead of a second one when the
    # watch shows them.
    b.status["replicaStatuses"]["Worker"]["pending"] += len(b.plan.create_pods)
    if (b.plan.create_pods or gang) and not b.status.get("startTime"):
        b.status["startTime"] = b.now
        if spec.run_policy.active_deadline_seconds is not None:
            b.plan.requeue_after_seconds = float(spec.run_policy.active_deadline_seconds)

    all_running = (
        not b.obs.recreate
        and len(gang) == spec.replicas
        and all(p.phase == "Running" for p in gang.values())
    )
    if all_running:
        b.condition(cond.RUNNING, True, cond.REASON_PODS_RUNNING, f"all {spec.replicas} worker pod(s) are running")
        if b.status.get("phase") not in (RUNNING, THROTTLED):
            b.plan.events.append(Event("Normal", cond.REASON_PODS_RUNNING, "all worker pods are running"))
        b.phase(THROTTLED if b.obs.throttled else RUNNING)
    elif cond.is_true(b.conditions, cond.RESTARTING):
        b.phase(RESTARTING)
    elif b.obs.rescheduling or b.obs.recreate:
        b.phase(RESCHEDULING)
    elif gang and b.status.get("phase") in (RUNNING, THROTTLED) and all(
        p.phase in ("Running", "Succeeded") for p in gang.values()
    ):
        # Workers finishing one after another (worker 0 decides success): still running, not pending. A gang
        # whose pods are all terminating is not running.
        pass
    else:
        # New, resumed, or a pod of a running gang went missing (deleted by hand, evicted): recreated.
        b.phase(PENDING)


def _world_changes(spec: JobSpec, live: Sequence[PodView]) -> list[str]:
    """How the live pods' worlds differ from the spec's (phrases, each once); empty: every pod is current.

    A pod without a world (an older operator's) counts as current.
    """
    if not any(pod.world for pod in live):
        return []
    world = builders.world_of(spec)
    changes: list[str] = []
    for pod in sorted(live, key=lambda p: p.index):
        for change in builders.world_changes(dict(pod.world), world):
            if change not in changes:
                changes.append(change)
    return changes


def _spec_changed(b: _Builder, spec: JobSpec, changes: Sequence[str]) -> None:
    """Live pods of another world: delete the whole gang; condition Restarting (SpecChanged), one Event.

    The new gang is created once every old pod is gone (:func:`_going_away`) and resumes from the checkpoint;
    ``restarts`` does not change (no backoffLimit is spent on a change the user asked for).
    """
    b.delete(b.obs.pods)
    resume = (
        "from the checkpoint"
        if spec.checkpoint is not None
        else "(no spec.checkpoint: training starts from the beginning)"
    )
    message = f"{', '.join(changes)}: restarting the gang with the new world {resume}"
    conditions = b.conditions
    restarting = cond.find(conditions, cond.RESTARTING)
    already = (
        restarting is not None
        and restarting.get("status") == "True"
        and restarting.get("reason") == cond.REASON_SPEC_CHANGED
        and restarting.get("message") == message
    )
    b.condition(cond.RESTARTING, True, cond.REASON_SPEC_CHANGED, message)
    if not already:
        b.plan.events.append(Event("Normal", cond.REASON_SPEC_CHANGED, message))


def _name_takers(b: _Builder, spec: JobSpec) -> list[PodView]:
    """Foreign pods the new gang must wait for; sets or clears ``PodNameTaken`` (one Warning per episode).

    A foreign pod blocks when it holds one of the gang's pod names (a create would get 409, and its DNS name
    is the gang's), or when it still runs, whatever its index: it lives under the job's headless Service and
    its rendezvous address is this job's worker 0, so a new gang beside it could meet it.
    """
    names = {worker_pod_name(b.obs.name, i) for i in range(spec.replicas)}
    blockers = sorted(
        (
            p
            for p in b.obs.foreign_pods
            if p.name in names or (not p.terminating and p.phase in ("Pending", "Running", "Unknown"))
        ),
        key=lambda p: p.name,
    )
    taken = cond.is_true(b.conditions, cond.POD_NAME_TAKEN)
    if not blockers:
        if taken:
            b.condition(cond.POD_NAME_TAKEN, False, cond.REASON_POD_NAMES_FREE, "no other job's pod is in the way")
        return []
    described = [_describe_foreign(p) for p in blockers[:5]]
    if len(blockers) > 5:
        described.append(f"{len(blockers) - 5} more")
    message = (
        f"{'; '.join(described)}: the job does not own {'it' if len(blockers) == 1 else 'them'}, so no worker pod"
        " is created until they are deleted"
    )
    b.condition(cond.POD_NAME_TAKEN, True, cond.REASON_POD_NAME_TAKEN, message)
    if not taken:
        b.plan.events.append(Event("Warning", cond.REASON_POD_NAME_TAKEN, message))
    return blockers


def _describe_foreign(pod: PodView) -> str:
    owner = f"owned by uid {pod.owner_uid}" if pod.owner_uid else "no owner"
    state = "terminating" if pod.terminating else pod.phase
    return f"pod {pod.name} ({owner}, {state})"


def _going_away(b: _Builder) -> list[PodView]:
    """Pods of the job that are terminating, or deleted by this plan: while any exists, nothing is created.

    A new pod beside a dying one would find the dying one under the job's DNS names (worker 0 is the
    rendezvous master) and could reuse its name; the old generation must be gone from the API first.
    """
    return [p for p in b.obs.pods if p.terminating or p.name in b.plan.delete_pods]


def _gang_failed(b: _Builder, spec: JobSpec, pod: PodView, restarts: int) -> None:
    code = "unknown" if pod.exit_code is None else str(pod.exit_code)
    why = f" ({pod.reason})" if pod.reason else ""
    cause = f"pod {pod.name} failed with exit code {code}{why}"
    limit = spec.run_policy.backoff_limit
    if restarts < limit:
        b.delete(b.obs.pods)
        b.status["restarts"] = restarts + 1
        message = f"{cause}; restarting the whole gang ({restarts + 1}/{limit})"
        b.condition(cond.RESTARTING, True, cond.REASON_POD_FAILED, message)
        b.phase(RESTARTING)
        b.plan.events.append(Event("Warning", cond.REASON_GANG_RESTARTED, message))
        return
    message = f"{cause}; backoffLimit {limit} reached after {restarts} restart(s)"
    b.finish(FAILED, cond.REASON_BACKOFF_LIMIT_EXCEEDED, message)
    # A failed DDP rank fails the world, so running pods are always stopped (Kubeflow leaves them running);
    # cleanPodPolicy then decides whether the finished pods stay for their logs.
    b.delete([p for p in b.obs.pods if p.phase in ("Running", "Pending", "Unknown")])
    _finished(b, spec)
