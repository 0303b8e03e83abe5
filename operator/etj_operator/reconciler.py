"""Observe, decide, act: one pass of a job, with the decision in the pure :func:`~etj_operator.jobpass.decide_pass`.

One :class:`JobReconciler` serves all jobs; each job's loop (:mod:`etj_operator.supervisor`) calls it with
the job's body, its pods from the pod informer, its report from the report informer and the telemetry hub's
latest cycle. A pass:

1. **observes**: what this process last wrote for the job (:class:`JobState`), which of the pods' nodes carry
   the power-pressure annotation;
2. **decides** (pure, :mod:`etj_operator.jobpass`): status repair, the report's mirror, energy integration,
   the policies, the lifecycle and the settle step, into one plan;
3. **acts**: writes the owned status keys that changed (a JSON patch testing the job's UID), posts the pass's
   Events through an :class:`EventSink` (:class:`~etj_operator.events.EventPoster` in production), creates the
   children and creates or deletes pods through the :class:`~etj_operator.ports.JobWriter`, never one twice in
   flight; a request the API server refuses is shown on the job (``ApiRequestRefused``);
4. **exports** the job's metrics and registers its pods with the telemetry hub.

Because the job's watched body lags our own writes by one watch event, the owned keys
(:data:`~etj_operator.jobpass.OWNED_KEYS`) are taken from :class:`JobState` once this process has written them,
so a pass never acts on its own stale status (for example counting a restart twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from etj_contract import PLACEMENT, PlacementSection
from etj_operator import builders, contract, kueue
from etj_operator import conditions as cond
from etj_operator.config import OperatorConfig
from etj_operator.energy import AccountingSettings
from etj_operator.errors import ApiStatusError, JobGone, PermanentApiError
from etj_operator.jobpass import (
    HELD_PHASES,
    OWNED_KEYS,
    REASON_STATUS_REPAIRED,
    PassObservation,
    decide_pass,
    split_by_owner,
)
from etj_operator.leader import NotLeader
from etj_operator.lifecycle import Event, Plan, PodView, controller_uid, to_rfc3339
from etj_operator.metrics import (
    GANG_RESTARTS,
    JOBS_BY_PHASE,
    POLICY_DECISIONS,
    RECONCILE_SECONDS,
    export_job,
    forget_job,
)
from etj_operator.models import InvalidSpecError, JobSpec, parse_spec
from etj_operator.policies import PolicyOutcome, PolicySettings
from etj_operator.ports import JobWriter, WorkloadWriter
from etj_operator.telemetry.base import JobTelemetry, PodTarget
from etj_operator.telemetry.hub import JobRegistration, SourceAccess, TelemetryHub

logger = logging.getLogger(__name__)

__all__ = [
    "HELD_PHASES",
    "OWNED_KEYS",
    "REASON_STATUS_REPAIRED",
    "EventSink",
    "JobReconciler",
    "JobState",
    "KueueAccess",
    "KueueIndex",
    "pod_view",
    "split_by_owner",
]

IN_FLIGHT_EXPIRY_SECONDS: Final = 30.0


class EventSink(Protocol):
    """Where Kubernetes Events go (:class:`~etj_operator.events.EventPoster` in production, a list in tests)."""

    def __call__(self, body: Mapping[str, Any], event: Event) -> None:
        """Record ``event`` on the object ``body``."""


class KueueIndex(Protocol):
    """Kueue's objects as the informers see them (:class:`~etj_operator.kueuewatch.KueueInformers`)."""

    def workload(self, key: tuple[str, str], job_uid: str | None, /) -> Mapping[str, Any] | None:
        """The job's own Workload (its controller is ``job_uid``), or None."""

    def all_flavors(self) -> Mapping[str, Mapping[str, Any]]:
        """The ResourceFlavors by name."""


@dataclass(frozen=True)
class KueueAccess:
    """With ETJ_KUEUE: where the reconciler reads Kueue's objects, and the writer of the jobs' Workloads."""

    index: KueueIndex
    api: WorkloadWriter


@dataclass
class JobState:
    """What this process last wrote for one job (lost on restart; then the job's status is the truth)."""

    owned: dict[str, Any] | None = None
    children_ensured: bool = False
    last_phase: str | None = None
    #: GPUs seen in the last telemetry cycle (the throttle divides the budget among them).
    gpu_count: int = 0
    #: Pods this process created or deleted that the pod index does not reflect yet (name -> monotonic
    #: time of the request): the index lags our own writes by one watch event, and re-sending the same
    #: create/delete would only earn a 409/404. After IN_FLIGHT_EXPIRY_SECONDS the request is sent again.
    creating: dict[str, float] = field(default_factory=dict)
    deleting: dict[str, float] = field(default_factory=dict)
    #: Children whose names another owner holds, as last warned about (one Warning Event each, not per pass).
    foreign_children: set[str] = field(default_factory=set)
    #: What the last parse of the job's report dropped (logged when it changes, not on every pass).
    report_problems: tuple[str, ...] = ()
    #: The leader term this process stamped the job with (status.leaderTerm); its later writes test it.
    stamped_term: str | None = None


@dataclass
class PhaseCounter:
    """Jobs by phase for the etj_jobs gauge."""

    phases: dict[tuple[str, str], str] = field(default_factory=dict)

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        """Record a job's phase (None: the job is gone) and refresh the gauge."""
        if phase is None:
            self.phases.pop(key, None)
        else:
            self.phases[key] = phase
        counts: dict[str, int] = dict.fromkeys(contract.PHASES, 0)
        for value in self.phases.values():
            counts[value] = counts.get(value, 0) + 1
        for name, count in counts.items():
            JOBS_BY_PHASE.labels(phase=name).set(count)


def _settle_in_flight(state: JobState, pods: list[PodView]) -> None:
    """Forget in-flight creates the index now shows, and in-flight deletes it no longer shows (live)."""
    live = {p.name for p in pods if not p.terminating}
    for pod_name in [n for n in state.creating if n in live]:
        del state.creating[pod_name]
    for pod_name in [n for n in state.deleting if n not in live]:
        del state.deleting[pod_name]


def _drop_failed(names: list[str], results: list[Any], in_flight: dict[str, float]) -> None:
    """Requests that failed are not in flight: forget them (the next pass sends them again); raise the first."""
    errors = [r for r in results if isinstance(r, BaseException)]
    for pod_name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            in_flight.pop(pod_name, None)
    if errors:
        raise errors[0]


def _placement_directive(spec: JobSpec, placement: PlacementSection) -> builders.PlacementDirective:
    return builders.PlacementDirective(
        avoid_nodes=placement.avoided_nodes,
        preferred_pools=spec.energy.placement.preferred_node_pools,
        pool_label=spec.energy.placement.node_pool_label,
    )


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """Summarise a pod for the lifecycle."""
    return PodView.from_pod(
        pod, contract.LABEL_REPLICA_INDEX, contract.ANNOTATION_GANG_GENERATION, contract.ANNOTATION_WORLD
    )


class JobReconciler:
    """Observe -> decide -> act, for any job."""

    def __init__(
        self,
        api: JobWriter,
        config: OperatorConfig,
        events: EventSink,
        hub: TelemetryHub | None = None,
        node_pressure: Callable[[str], bool] | None = None,
        leader_term: Callable[[], str | None] | None = None,
        kueue: KueueAccess | None = None,
    ) -> None:
        self.api = api
        #: With ETJ_KUEUE: the operator is Kueue's integration for jobs that name a queue (etj_operator.kueue).
        self.kueue = kueue
        self.config = config
        self.events = events
        self.hub = hub
        #: With leader election: the term this process leads in (None: it does not lead). Every status write
        #: is fenced by it (:meth:`_fencing`). None: no election, writes are not fenced.
        self.leader_term = leader_term
        self.node_pressure = node_pressure or (lambda _node: False)
        self.phase_counter = PhaseCounter()
        self.policy_settings = PolicySettings(
            gpu_min_limit_watts=config.gpu_min_limit_watts,
            gpu_max_limit_watts=config.gpu_max_limit_watts,
            checkpoint_timeout_seconds=config.checkpoint_timeout_seconds,
            cap_grace_seconds=config.cap_grace_seconds,
            node_agent=config.node_agent,
            accounting=AccountingSettings(
                max_gpu_watts=config.max_gpu_watts,
                power_bound_tolerance=config.power_bound_tolerance,
                future_tolerance_seconds=config.future_sample_tolerance_seconds,
            ),
        )

    async def reconcile(
        self,
        body: Mapping[str, Any],
        pods: Iterable[PodView],
        state: JobState,
        now: datetime | None = None,
        telemetry: JobTelemetry | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> Plan:
        """Run one reconcile of the job ``body`` given its current ``pods``; update ``state``.

        ``report``: the job's own ``EfficientTrainingJobReport`` (its controller is this job's UID), as the
        report informer last saw it; None keeps the ``status.workload`` this operator mirrored last.
        """
        started = time.perf_counter()
        now = now or datetime.now(UTC)
        meta = body.get("metadata") or {}
        name, namespace = meta["name"], meta.get("namespace") or "default"
        uid = str(meta.get("uid") or "")
        pods = list(pods)
        nodes = {p.node_name for p in pods if p.node_name and not p.terminating}
        view = await self._kueue_view(body, namespace, name, uid) if self.kueue is not None else None
        decided = decide_pass(
            PassObservation(
                body=body,
                pods=pods,
                now=now,
                settings=self.policy_settings,
                last_written=state.owned,
                report=report,
                telemetry=telemetry,
                pressured_nodes=frozenset(node for node in nodes if self.node_pressure(node)),
                gpu_count=state.gpu_count,
                kueue=view,
            )
        )
        plan, outcome, spec = decided.plan, decided.outcome, decided.spec
        pods, foreign = decided.pods, decided.foreign_pods
        state.gpu_count = decided.gpu_count
        self._log_report_problems(namespace, name, decided.report_problems, state)
        if decided.repaired:
            logger.warning(
                "%s/%s: status repaired: %s", namespace, name, "; ".join(str(problem) for problem in decided.repaired)
            )
        try:
            # The status (e.g. restarts + 1 for a gang restart) is written before any pod is touched: if the
            # write fails or the operator dies right after, no pod was deleted or created on an unrecorded
            # decision.
            await self._write_status(
                namespace,
                name,
                decided.before,
                plan.status,
                state,
                uid=uid or None,
                status_exists=decided.status_exists,
                body=body,
            )
            # The pass's Events (and decision counts) go out as soon as the decision is recorded, before any
            # pod is touched: a pod action that fails half-way must not lose them (JobCreated was lost when the
            # first pod create failed), and the retry cannot post them twice, because it starts from the
            # written status and so does not derive the same transition again. A failed status write posts
            # nothing: the retry derives the transition anew and posts it then.
            self._record_decisions(body, plan, outcome)
            if decided.kueue is not None:
                await self._write_workload(namespace, decided.kueue.writes)
            await self._apply_children_and_pods(
                builders.JobRef.from_body(body), spec, plan, pods, state, body=body, foreign=foreign,
                kueue_step=decided.kueue,
            )
        except PermanentApiError as refused:
            # Shown on the job in this very pass; the supervisor then retries the pass slowly.
            await self._show_refusal(body, state, refused, now)
            raise
        await self._clear_refusal(body, plan, state, now)
        self._register_telemetry(namespace, name, spec, plan, pods)
        self._export(namespace, name, plan)
        if plan.delete_job:
            await self.api.delete(contract.KIND, namespace, name)
            self.forget(namespace, name)
        else:
            self.phase_counter.set((namespace, name), plan.status.get("phase"))
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return plan

    async def _kueue_view(self, body: Mapping[str, Any], namespace: str, name: str, uid: str) -> kueue.KueueView | None:
        """The job in Kueue, from the informers: its Workload and the flavors; None when Kueue has nothing of it.

        The one read: the priority class the job names, only when its Workload is to be made (once per Workload).
        """
        assert self.kueue is not None
        labels = (body.get("metadata") or {}).get("labels") or {}
        queue = kueue.queue_name(labels)
        workload = self.kueue.index.workload((namespace, name), uid or None)
        if not queue and workload is None:
            return None
        priority: kueue.Priority | None = None
        problem = ""
        if queue and workload is None:
            try:
                spec: JobSpec | None = parse_spec(body.get("spec"), name)
            except InvalidSpecError:
                spec = None
            ref = kueue.priority_class_of(labels, spec) if spec is not None and not spec.suspend else None
            if ref is not None:
                try:
                    found = kueue.priority_from(ref, await self.api.get(ref.kind, None, ref.name))
                except ApiStatusError as e:
                    found = f"{ref.kind} {ref.name!r} could not be read: {e}"
                if isinstance(found, str):
                    problem = found
                else:
                    priority = found
        return kueue.KueueView(
            queue_name=queue,
            workload=workload,
            flavors=self.kueue.index.all_flavors(),
            priority=priority,
            priority_problem=problem,
        )

    async def _write_workload(self, namespace: str, writes: kueue.WorkloadWrites) -> None:
        """Write the job's Workload as the pass decided (after the job's status, before any pod)."""
        if writes.empty or self.kueue is None:
            return
        api = self.kueue.api
        if writes.delete is not None:
            name, uid = writes.delete
            await api.delete(kueue.WORKLOAD_KIND, namespace, name, uid=uid or None)
        if writes.create is not None:
            await api.create(writes.create)  # 409: it exists (the informer shows it on a later pass)
        if writes.status is not None:
            name, version, status = writes.status
            await api.patch_status(kueue.WORKLOAD_KIND, namespace, name, status, resource_version=version)

    def _record_decisions(self, body: Mapping[str, Any], plan: Plan, outcome: PolicyOutcome | None) -> None:
        """Post the plan's Events and count its gang restarts and policy decisions (once per decision)."""
        meta = body.get("metadata") or {}
        name, namespace = meta["name"], meta.get("namespace") or "default"
        for event in plan.events:
            self.events(body, event)
            if event.reason == "GangRestarted":
                GANG_RESTARTS.labels(namespace=namespace, job_name=name).inc()
        if outcome is not None:
            for decision in outcome.decisions:
                POLICY_DECISIONS.labels(namespace=namespace, job_name=name, decision=decision).inc()

    async def _apply_children_and_pods(
        self,
        job: builders.JobRef,
        spec: JobSpec | None,
        plan: Plan,
        pods: list[PodView],
        state: JobState,
        *,
        body: Mapping[str, Any] | None = None,
        foreign: list[PodView] | None = None,
        kueue_step: kueue.KueueStep | None = None,
    ) -> None:
        """Create the children once, then the plan's pod deletions and creations, never one twice in flight.

        Deletions need no spec (an invalid job's pods are deleted); children and creations do. No pod is
        created while another owner holds a child's name (an older job of the same name, its garbage
        collection pending): the pods would run as that ServiceAccount, under that Service, and lose both
        when the collector deletes them.
        """
        if spec is not None and (plan.ensure_children or plan.create_pods) and not state.children_ensured:
            # Also after an operator restart, before its first pod create: the children may predate this
            # process (then each create is a 409, and a read shows that they are the job's).
            in_use = any(p.terminating or p.phase not in ("Succeeded", "Failed") for p in foreign or ())
            taken = await self._ensure_children(job, spec, replace_orphans=not in_use)
            state.children_ensured = not taken
            where = body or {"metadata": {"name": job.name, "namespace": job.namespace, "uid": job.uid}}
            self._warn_foreign_children(where, state, [t for t in taken if t])
        _settle_in_flight(state, pods)
        clock = time.monotonic()
        deletions = [n for n in plan.delete_pods if clock - state.deleting.get(n, -1e9) > IN_FLIGHT_EXPIRY_SECONDS]
        for pod_name in deletions:
            state.deleting[pod_name] = clock
        # Only the pod the pass saw (its UID as a precondition): a late delete never hits a newer pod of its name.
        uids = {p.name: p.uid for p in pods if p.uid}
        results = await asyncio.gather(
            *(self.api.delete("Pod", job.namespace, n, uid=uids.get(n)) for n in deletions), return_exceptions=True
        )
        _drop_failed(deletions, results, state.deleting)
        if spec is None or not plan.create_pods or not state.children_ensured:
            return
        generation = int(plan.status.get("restarts") or 0)
        options = builders.PodOptions(
            control_poll_steps=self.config.control_poll_steps,
            gpu_backend=self.config.gpu_backend,
            control_poll_seconds=self.config.control_poll_seconds,
            node_agent=self.config.node_agent,
        )
        directive = _placement_directive(spec, PlacementSection.from_status(plan.status.get(PLACEMENT)))
        manifests = []
        for index in plan.create_pods:
            manifest = builders.build_worker_pod(job, spec, index, generation, options, directive)
            if kueue_step is not None and kueue_step.managed:
                kueue.shape_pod(manifest, kueue_step.placement)  # the admission's flavors; no pod-integration label
            pod_name = manifest["metadata"]["name"]
            if clock - state.creating.get(pod_name, -1e9) > IN_FLIGHT_EXPIRY_SECONDS:
                state.creating[pod_name] = clock
                manifests.append(manifest)
        results = await asyncio.gather(*(self.api.create(m) for m in manifests), return_exceptions=True)
        _drop_failed([m["metadata"]["name"] for m in manifests], results, state.creating)

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone (or its loop stopped): drop its phase, telemetry registration and per-job series.

        Every series of every per-job metric family goes (:func:`~etj_operator.metrics.forget_job`).
        """
        self.phase_counter.set((namespace, name), None)
        if self.hub is not None:
            self.hub.unregister((namespace, name))
        forget_job(namespace, name)

    @staticmethod
    def _log_report_problems(namespace: str, name: str, problems: tuple[str, ...], state: JobState) -> None:
        """Log what the report's parse dropped, when that changes (not on every pass)."""
        if problems != state.report_problems:
            state.report_problems = problems
            if problems:
                logger.warning(
                    "%s/%s: the workload's report has malformed fields, ignored: %s",
                    namespace,
                    name,
                    "; ".join(problems),
                )

    def _register_telemetry(
        self, namespace: str, name: str, spec: JobSpec | None, plan: Plan, pods: list[PodView]
    ) -> None:
        if self.hub is None:
            return
        key = (namespace, name)
        if spec is None or plan.delete_job or plan.status.get("phase") in HELD_PHASES:
            self.hub.unregister(key)
            return
        telemetry = spec.energy.telemetry
        carbon = spec.energy.carbon
        targets = tuple(
            # The pod's UID, node and start: a series is this pod's only from its node and after its start.
            PodTarget(
                namespace,
                p.name,
                name,
                p.pod_ip,
                contract.DEFAULT_METRICS_PORT,
                uid=p.uid,
                node=p.node_name,
                start_time=p.start_time,
                gpus=p.gpus,  # no more GPU series count for the pod than it requested
            )
            for p in pods
            if not p.terminating and p.phase == "Running"
        )
        if not targets and not (carbon and carbon.intensity_query):
            # Nothing runs, so there is nothing to read (and no TelemetryAvailable verdict to give).
            self.hub.unregister(key)
            return
        intensity_query = carbon.intensity_query if carbon else None
        access = SourceAccess.from_config(self.config)
        self.hub.register(
            JobRegistration(
                key=key,
                source=telemetry.source,
                prometheus_url=telemetry.prometheus_url or self.config.prometheus_url,
                targets=targets,
                intensity_query=intensity_query,
                interval_seconds=float(telemetry.interval_seconds),
                # a URL of the spec the operator's settings do not allow: never read (SourceNotAllowed); a query
                # it does not allow: never run, while the GPUs are still read
                refused=access.refusal(telemetry.prometheus_url, None),
                intensity_refused=access.refusal(None, intensity_query),
            )
        )

    def _export(self, namespace: str, name: str, plan: Plan) -> None:
        """Expose the figures of the status just decided (energy, carbon, power, cap, rejected samples).

        Read from the status (:func:`~etj_operator.metrics.export_job`): what was never measured (no
        ``joules`` yet, no ``currentWatts`` this cycle, no cap) has no series, never a 0.
        """
        export_job(namespace, name, plan.status)

    async def _ensure_children(
        self, job: builders.JobRef, spec: JobSpec, *, replace_orphans: bool = True
    ) -> list[str]:
        """Create the job's children in dependency order: the RoleBinding only once its Role exists.

        A real API server checks a RoleBinding against the rules of the Role it names (escalation
        prevention): a writer without ``bind`` gets 404 while that Role does not exist yet. So the
        ServiceAccount, the Role and the Service go out together, the RoleBinding after them.

        Returns the children that are not the job's yet (:meth:`_ensure_child` says why); empty: all are.
        """
        first = await asyncio.gather(
            self._ensure_child(job, builders.build_service_account(job), replace_orphans),
            self._ensure_child(job, builders.build_role(job), replace_orphans),
            self._ensure_child(job, builders.build_service(job), replace_orphans),
            self._ensure_child(job, builders.build_report(job), replace_orphans),
        )
        binding = await self._ensure_child(
            job, builders.build_role_binding(job, builders.pod_service_account(spec, job)), replace_orphans
        )
        return [r for r in (*first, binding) if r is not None]

    async def _ensure_child(
        self, job: builders.JobRef, manifest: Mapping[str, Any], replace_orphans: bool
    ) -> str | None:
        """Create one child; None when the job owns it now, else why not ("": nothing to warn about yet).

        A create that finds the name taken (409) reads the object: its controller ownerReference says whose it
        is. The job's own (made before an operator restart): done. Another job's (an older job of the same
        name, its garbage collection pending): never adopted (the collector would delete it under the new
        job); the pods wait. An orphan the operator made for a job of this name (``kubectl delete
        --cascade=orphan``): deleted, by UID, once no pod of another job is left to use it (``replace_orphans``),
        and made anew on a later pass. Anything else (not the operator's): left alone; the pods wait.
        """
        if await self.api.create(manifest):
            return None
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        existing = await self.api.get(kind, job.namespace, name)
        if existing is None:
            return ""  # gone since the create: made on the next pass
        meta = existing.get("metadata") or {}
        owner = controller_uid(meta)
        if owner == job.uid:
            return None
        labels = meta.get("labels") or {}
        made_for_this_name = (
            labels.get(contract.LABEL_MANAGED_BY) == contract.MANAGED_BY
            and labels.get(contract.LABEL_JOB_NAME) == job.name
        )
        if owner is None and made_for_this_name:
            if replace_orphans:
                await self.api.delete(kind, job.namespace, name, uid=meta.get("uid") or None)
                return ""
            return (
                f"{kind} {name} has no owner (orphaned) and pods of another job still use it: not adopted;"
                " it is replaced once those pods are gone"
            )
        if owner is not None:
            return (
                f"{kind} {name} belongs to another job (uid {owner}): not adopted; the job's pods wait until the"
                " garbage collector has deleted it"
            )
        return f"{kind} {name} exists and was not made by the operator for this job: delete or rename it"

    def _warn_foreign_children(self, body: Mapping[str, Any], state: JobState, taken: list[str]) -> None:
        """One Warning Event per child whose name another owner holds, when first seen (not every pass)."""
        for message in taken:
            if message not in state.foreign_children:
                self.events(body, Event("Warning", cond.REASON_CHILD_NAME_TAKEN, message))
        state.foreign_children = set(taken)

    async def _show_refusal(
        self, body: Mapping[str, Any], state: JobState, error: PermanentApiError, now: datetime
    ) -> None:
        """The API server refused a request of the pass (403, 422...): say so on the job, naming the object.

        Sets the ApiRequestRefused condition True with the server's message, and posts a Warning Event
        (``Failed<Verb>``: FailedCreate, FailedPatch...) when the condition changed: it turned True, or another
        object or message is refused. A slow retry of the same refusal adds no Event. A condition write that
        fails too is logged; the Event and the log still say it, and the next retry writes it again.
        """
        meta = body.get("metadata") or {}
        code = f"{error.code} {error.reason}".strip()
        message = f"{error.verb} {error.object_ref} refused ({code}): {error.message}"
        if error.causes:
            message += " [" + "; ".join(f"{c.field}: {c.message}" if c.field else c.message for c in error.causes) + "]"
        if await self._set_refused(body, state, True, error.reason or "Refused", message, now):
            self.events(body, Event("Warning", f"Failed{error.verb.capitalize()}", message))
        logger.warning("%s/%s: %s", meta.get("namespace") or "default", meta.get("name"), message)

    async def _clear_refusal(self, body: Mapping[str, Any], plan: Plan, state: JobState, now: datetime) -> None:
        """Every request of the pass was accepted: ApiRequestRefused goes False if it was True."""
        if cond.is_true(list(plan.status.get("conditions") or []), cond.API_REQUEST_REFUSED):
            message = "the API server accepted every request of the job's last pass"
            if await self._set_refused(body, state, False, cond.REASON_REQUESTS_ACCEPTED, message, now):
                plan.status["conditions"] = (state.owned or {}).get("conditions")

    async def _set_refused(
        self, body: Mapping[str, Any], state: JobState, value: bool, reason: str, message: str, now: datetime
    ) -> bool:
        """Write the ApiRequestRefused condition alone; return whether it changed (written or not)."""
        meta = body.get("metadata") or {}
        name, namespace = meta["name"], meta.get("namespace") or "default"
        status = dict(body.get("status") or {})
        if state.owned is not None:
            status = {k: v for k, v in status.items() if k not in OWNED_KEYS} | state.owned
        conditions = list(status.get("conditions") or [])
        generation = int(meta.get("generation") or 1)
        updated = cond.set_condition(
            conditions, cond.API_REQUEST_REFUSED, value, reason, message, to_rfc3339(now), generation
        )
        if updated == conditions:
            return False
        fencing = self._fencing(body, state)
        try:
            written = await self.api.patch_job_status(
                namespace,
                name,
                {"conditions": updated},
                uid=str(meta.get("uid") or "") or None,
                status_exists=isinstance(body.get("status"), Mapping) or state.owned is not None,
                **fencing,
            )
            if not written:
                return True  # the job is gone: nothing to show it on
        except ApiStatusError as e:
            logger.warning("%s/%s: could not write the %s condition: %s", namespace, name, cond.API_REQUEST_REFUSED, e)
            return True
        status["conditions"] = updated
        state.owned = {k: status[k] for k in OWNED_KEYS if status.get(k) is not None}
        state.stamped_term = fencing.get("term")
        return True

    def _fencing(self, body: Mapping[str, Any], state: JobState) -> dict[str, Any]:
        """The fencing arguments of a status write: none without election; else the term, and the stamp.

        The first write of a term on a job stamps it (``status.leaderTerm``, conditional on the
        resourceVersion the pass read); every later one tests the stamp (docs/reliability.md, "Failover").
        """
        if self.leader_term is None:
            return {}
        term = self.leader_term()
        if term is None:
            raise NotLeader("this operator does not lead: no status is written")
        if state.stamped_term == term:
            return {"term": term}
        status = body.get("status")
        if isinstance(status, Mapping) and status.get(contract.STATUS_LEADER_TERM) == term:
            return {"term": term}  # stamped in this term already (by an earlier loop of this process)
        version = (body.get("metadata") or {}).get("resourceVersion")
        return {"term": term, "stamp_resource_version": str(version) if version else None}

    async def _write_status(
        self,
        namespace: str,
        name: str,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        state: JobState,
        *,
        uid: str | None = None,
        status_exists: bool = True,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the owned keys that changed, on the job of ``uid`` only (never on a new job of the name).

        With leader election the first pass of a term writes even when nothing changed: it stamps the job.
        """
        patch: dict[str, Any] = {}
        for key in OWNED_KEYS:
            if after.get(key) != before.get(key):
                patch[key] = after.get(key)  # None removes the key
        fencing = self._fencing(body, state) if body is not None else {}
        try:
            written = not (patch or "stamp_resource_version" in fencing) or await self.api.patch_job_status(
                namespace, name, patch, uid=uid, status_exists=status_exists, **fencing
            )
        except NotLeader:
            state.stamped_term = None  # another term stamped the job: stamp again (read anew) if still leading
            raise
        if not written:
            raise JobGone(f"{namespace}/{name}")
        state.owned = {k: after[k] for k in OWNED_KEYS if after.get(k) is not None}
        if fencing:
            state.stamped_term = fencing["term"]
