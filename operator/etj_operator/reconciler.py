"""Applies lifecycle plans: observe a job and its pods, decide (pure), act through the API wrapper.

One :class:`JobReconciler` serves all jobs; one :class:`JobState` per job holds what this operator process
last wrote. The lifecycle owns a fixed set of status keys (:data:`OWNED_KEYS`); other writers own the rest
(the harness: ``status.workload``; telemetry: ``status.energy``). Because the job's watched body lags our
own writes by one watch event, the owned keys are taken from :class:`JobState` once this process has
written them, so a reconcile never acts on its own stale status (for example counting a restart twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from etj_operator import builders, contract
from etj_operator.config import OperatorConfig
from etj_operator.kubeapi import KubeApi
from etj_operator.lifecycle import Event, Observation, Plan, PodView, reconcile
from etj_operator.metrics import GANG_RESTARTS, JOBS_BY_PHASE, RECONCILE_SECONDS
from etj_operator.models import InvalidSpecError, JobSpec, parse_spec

logger = logging.getLogger(__name__)

OWNED_KEYS: Final = (
    "phase",
    "conditions",
    "observedGeneration",
    "startTime",
    "completionTime",
    "restarts",
    "replicaStatuses",
)


class EventSink(Protocol):
    """Where Kubernetes Events go (kopf's poster in production, a list in tests)."""

    def __call__(self, body: Mapping[str, Any], event: Event) -> None:
        """Record ``event`` on the object ``body``."""


@dataclass
class JobState:
    """What this process last wrote for one job (lost on restart; then the job's status is the truth)."""

    owned: dict[str, Any] | None = None
    children_ensured: bool = False
    last_phase: str | None = None


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


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """Summarise a pod for the lifecycle."""
    return PodView.from_pod(pod, contract.LABEL_REPLICA_INDEX, contract.ANNOTATION_GANG_GENERATION)


class JobReconciler:
    """Observe -> decide -> act, for any job."""

    def __init__(self, api: KubeApi, config: OperatorConfig, events: EventSink) -> None:
        self.api = api
        self.config = config
        self.events = events
        self.phase_counter = PhaseCounter()

    async def reconcile(
        self, body: Mapping[str, Any], pods: Iterable[PodView], state: JobState, now: datetime | None = None
    ) -> Plan:
        """Run one reconcile of the job ``body`` given its current ``pods``; update ``state``."""
        started = time.perf_counter()
        meta = body.get("metadata") or {}
        name, namespace = meta["name"], meta.get("namespace") or "default"
        spec: JobSpec | None = None
        error: InvalidSpecError | None = None
        try:
            spec = parse_spec(body.get("spec"), name)
        except InvalidSpecError as e:
            error = e
        status = dict(body.get("status") or {})
        if state.owned is not None:
            status.update(state.owned)
            for key in OWNED_KEYS:
                if key not in state.owned:
                    status.pop(key, None)
        obs = Observation(
            name=name,
            generation=int(meta.get("generation") or 1),
            spec=spec,
            spec_error=error,
            status=status,
            pods=list(pods),
            now=now or datetime.now(UTC),
        )
        plan = reconcile(obs)
        job = builders.JobRef.from_body(body)
        if plan.ensure_children and spec is not None and not state.children_ensured:
            await self._ensure_children(job, spec)
            state.children_ensured = True
        for pod_name in plan.delete_pods:
            await self.api.delete("Pod", namespace, pod_name)
        if plan.create_pods and spec is not None:
            if not state.children_ensured:  # after an operator restart: children may predate us; cheap if so
                await self._ensure_children(job, spec)
                state.children_ensured = True
            generation = int(plan.status.get("restarts") or 0)
            options = builders.PodOptions(self.config.control_poll_steps, self.config.gpu_backend)
            for index in plan.create_pods:
                await self.api.create(builders.build_worker_pod(job, spec, index, generation, options))
        await self._write_status(namespace, name, status, plan.status, state)
        for event in plan.events:
            self.events(body, event)
            if event.reason == "GangRestarted":
                GANG_RESTARTS.labels(namespace=namespace, job=name).inc()
        if plan.delete_job:
            await self.api.delete(contract.KIND, namespace, name)
            self.phase_counter.set((namespace, name), None)
        else:
            self.phase_counter.set((namespace, name), plan.status.get("phase"))
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return plan

    async def _ensure_children(self, job: builders.JobRef, spec: JobSpec) -> None:
        await self.api.create(builders.build_service_account(job))
        await self.api.create(builders.build_role(job))
        await self.api.create(builders.build_role_binding(job, builders.pod_service_account(spec, job)))
        await self.api.create(builders.build_service(job))

    async def _write_status(
        self,
        namespace: str,
        name: str,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        state: JobState,
    ) -> None:
        patch: dict[str, Any] = {}
        for key in OWNED_KEYS:
            if after.get(key) != before.get(key):
                patch[key] = after.get(key)  # None removes the key (merge patch)
        if patch:
            await self.api.patch_job_status(namespace, name, patch)
        state.owned = {k: after[k] for k in OWNED_KEYS if after.get(k) is not None}
