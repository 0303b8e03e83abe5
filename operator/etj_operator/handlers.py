"""Every Kopf handler of the operator, in one place. Each is a guard plus one call into a domain module.

* ``job_watch``: hands every added or changed job to the supervisor (:mod:`etj_operator.supervisor`),
  which starts, wakes or stops the job's reconcile loop.
* ``job_deleted``: stops the loop of a deleted job.
* ``node_power_pressure``: tracks nodes annotated for power pressure (placement policy).

The operator's pods are not watched through Kopf but by :class:`~etj_operator.podwatch.PodInformer`
(started here at startup), which costs a fraction of Kopf's per-event processing; the jobs' reports likewise by
:class:`~etj_operator.reportwatch.ReportInformer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import kopf

from etj_operator import contract
from etj_operator.config import OperatorConfig
from etj_operator.events import EventPoster
from etj_operator.kubeapi import USER_AGENT, KubeApi, load_connection
from etj_operator.kueuewatch import KueueInformers
from etj_operator.leader import ElectionSettings, LeaderElector
from etj_operator.metrics import serve
from etj_operator.podwatch import PodInformer
from etj_operator.policies import POWER_PRESSURE_ANNOTATION
from etj_operator.readiness import serve_readiness
from etj_operator.reconciler import JobReconciler, KueueAccess
from etj_operator.reportwatch import ReportInformer, all_set
from etj_operator.supervisor import JobSupervisor, Wakers
from etj_operator.telemetry.base import TelemetrySource
from etj_operator.telemetry.direct import DirectTelemetry
from etj_operator.telemetry.hub import TelemetryHub
from etj_operator.telemetry.prometheus import ClientSettings, PrometheusTelemetry

logger = logging.getLogger(__name__)

#: The operator's own registry: importing this module never adds handlers to kopf's process-wide default
#: registry (tests run other kopf operators in the same process).
REGISTRY = kopf.OperatorRegistry()

#: The finalizer earlier versions of the operator put on every job (for their per-job Kopf daemons); never added now.
LEGACY_FINALIZER = f"{contract.GROUP}/operator"
#: The namespace of the pod's service account (mounted into every pod that automounts its token).
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: How long a stopping operator lets each job loop finish the pass it is in before cancelling it.
LOOP_STOP_GRACE_SECONDS = 10.0


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf keeps no "last handled" copy of objects: no handler of this operator reacts to diffs.

    Kopf would otherwise deep-copy every pod and job body on every watch event to compute a diff nobody
    reads (a measurable share of the event loop in a burst of jobs, bench/operator_scale.py). Valid only
    while the operator has no on.create/update/delete/field/resume handlers, daemons or timers; a unit
    test checks that.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        """An empty essence: every event looks like "no change" to Kopf."""
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """No stored base."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Store nothing (no annotation written)."""
        return None


class NoProgress(kopf.ProgressStorage):
    """Kopf stores no per-handler progress on objects: event handlers and indexers keep none (see above)."""

    def fetch(self, *, key: Any, body: kopf.Body) -> Any:
        """No stored progress."""
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        """Store nothing."""
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        """Nothing to purge."""
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        """Nothing to touch."""
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        """Nothing of ours to clear from the essence."""
        return essence


@kopf.on.login(registry=REGISTRY)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """$KUBECONFIG when set (read now, not at import), else the pod's service account, else ~/.kube/config."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_via_client(**kwargs)


@kopf.on.startup(registry=REGISTRY)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator settings, the API wrapper and the metrics endpoint."""
    config = OperatorConfig.from_env()
    # No handler needs a finalizer any more; naming the one earlier versions put on jobs makes Kopf take it
    # off each such job on its first event (an upgrade leaves no job undeletable).
    settings.persistence.finalizer = LEGACY_FINALIZER
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.progress_storage = NoProgress()
    settings.execution.max_workers = config.max_workers
    settings.posting.level = logging.WARNING  # the operator posts its own Events (events.py); kopf only problems
    settings.posting.reporting_component = contract.MANAGED_BY  # "From" in `kubectl describe`
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "local")
    settings.posting.event_name_prefix = "etj-event-"
    settings.watching.server_timeout = 300
    memo.config = config
    memo.wakers = Wakers()  # per operator run: asyncio events must not outlive their event loop
    memo.api = KubeApi(load_connection(), max_connections=config.max_workers)
    # With leader election, every write but the Lease's goes through the elector's fence (etj_operator.leader).
    elector = LeaderElector(memo.api, election_settings(config)) if config.leader_election else None
    memo.elector = elector
    if elector is not None:
        memo.api.fence = elector.check
        memo.api.user_agent = f"{USER_AGENT} ({elector.settings.identity})"
    memo.pressured_nodes = set()
    memo.hub = TelemetryHub(lambda kind, url: make_source(config, kind, url), memo.wakers.wake)
    memo.events = EventPoster(
        memo.api, component=contract.MANAGED_BY, instance=settings.posting.reporting_instance or "local"
    )  # it yields to reconcile passes: its idle event is the supervisor's, set below
    # With ETJ_KUEUE the operator is Kueue's integration (etj_operator.kueue): Workloads and flavors are followed.
    memo.kueue = KueueInformers(memo.api, getattr(memo, "namespaces", ()), memo.wakers.wake) if config.kueue else None
    memo.reconciler = JobReconciler(
        memo.api,
        config,
        memo.events,
        hub=memo.hub,
        node_pressure=memo.pressured_nodes.__contains__,
        leader_term=None if elector is None else (lambda: elector.term if elector.valid() else None),
        kueue=None if memo.kueue is None else KueueAccess(memo.kueue, memo.api),
    )
    memo.pods = PodInformer(memo.api, getattr(memo, "namespaces", ()), memo.wakers.wake)
    memo.pods_task = asyncio.create_task(memo.pods.run(), name="etj-pod-informer")
    memo.reports = ReportInformer(memo.api, getattr(memo, "namespaces", ()), memo.wakers.wake)
    memo.reports_task = asyncio.create_task(memo.reports.run(), name="etj-report-informer")
    memo.synced = asyncio.Event()  # no job loop makes a pass before every informer has listed everything
    listed = [memo.pods.synced, memo.reports.synced]
    if memo.kueue is not None:
        memo.kueue_task = asyncio.create_task(memo.kueue.run(), name="etj-kueue-informers")
        listed.append(memo.kueue.synced)
    memo.synced_task = asyncio.create_task(all_set(memo.synced, *listed), name="etj-informers-synced")
    memo.supervisor = JobSupervisor(
        memo.reconciler,
        memo.wakers,
        memo.pods,
        interval_seconds=config.reconcile_interval_seconds,
        debounce_seconds=config.reconcile_debounce_seconds,
        max_concurrent_passes=config.max_concurrent_reconciles,
        ready=memo.synced,
        reports=memo.reports,
        leadership=elector,
    )
    memo.events.idle = memo.supervisor.idle
    memo.election_stop = asyncio.Event()
    if elector is not None:
        # A standby campaigns with its informers synced and its job loops waiting: a failover is one lease.
        memo.election_task = asyncio.create_task(
            elector.run(memo.election_stop, on_stopped=memo.supervisor.step_down), name="etj-leader-election"
        )
    memo.readiness = await serve_readiness(
        config.readiness_port, lambda: memo.synced.is_set() or (elector is not None and elector.valid())
    )
    memo.telemetry_stop = asyncio.Event()
    memo.telemetry_task = asyncio.create_task(
        memo.hub.run_forever(config.telemetry_interval_seconds, memo.telemetry_stop), name="etj-telemetry"
    )
    serve(config.metrics_port)


def election_settings(config: OperatorConfig) -> ElectionSettings:
    """The Lease's place and this process's identity.

    From the settings, else the pod's own (downward API), else the service account's namespace and this
    host's name and pid (a process started by hand).
    """
    namespace = config.leader_election_namespace
    if not namespace:
        try:
            namespace = Path(SERVICE_ACCOUNT_NAMESPACE_FILE).read_text().strip()
        except OSError:
            namespace = "default"
    identity = config.leader_election_identity or f"{socket.gethostname()}-{os.getpid()}"
    return ElectionSettings(
        namespace=namespace,
        identity=identity,
        name=config.leader_election_lease_name,
        lease_duration_seconds=config.lease_duration_seconds,
        renew_deadline_seconds=config.renew_deadline_seconds,
        retry_period_seconds=config.retry_period_seconds,
    )


def make_source(config: OperatorConfig, kind: str, url: str) -> TelemetrySource:
    """A telemetry source for spec.energy.telemetry.source (and a Prometheus URL)."""
    client = ClientSettings.from_config(config)  # credentials, TLS and headers (ETJ_PROMETHEUS_*)
    if kind == "Direct":
        return DirectTelemetry(carbon_prometheus_url=url or None, prometheus_client=client)
    return PrometheusTelemetry(
        url or config.prometheus_url,
        client=client,
        # empty: every label scheme dcgm-exporter is seen with, resolved per series
        pod_label=config.prometheus_pod_label or None,
        namespace_label=config.prometheus_namespace_label or None,
        limit_metric=config.prometheus_limit_metric or None,
        extra_matchers=config.prometheus_extra_matchers,
        node_label=config.prometheus_node_label or None,
        # newer dcgm-exporter builds write `hostname`; a label of the user's choosing has no fallback
        fallback_node_label="hostname" if config.prometheus_node_label == "Hostname" else None,
    )


@kopf.on.cleanup(registry=REGISTRY)
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Stop the job loops (each ends its current pass), post pending Events, stop telemetry, close the API."""
    supervisor = getattr(memo, "supervisor", None)
    if isinstance(supervisor, JobSupervisor):
        await supervisor.close(LOOP_STOP_GRACE_SECONDS)
    events = getattr(memo, "events", None)
    if isinstance(events, EventPoster):
        await events.drain()
    election_stop, election = getattr(memo, "election_stop", None), getattr(memo, "election_task", None)
    if isinstance(election_stop, asyncio.Event) and isinstance(election, asyncio.Task):
        election_stop.set()  # after the loops' last passes and the Events: then the Lease is released
        await election
    readiness = getattr(memo, "readiness", None)
    if readiness is not None:
        await readiness.cleanup()
    for name in ("pods_task", "reports_task", "kueue_task", "synced_task"):
        informer_task = getattr(memo, name, None)
        if isinstance(informer_task, asyncio.Task):
            informer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await informer_task
    stop = getattr(memo, "telemetry_stop", None)
    task = getattr(memo, "telemetry_task", None)
    if isinstance(stop, asyncio.Event) and isinstance(task, asyncio.Task):
        stop.set()
        await task
    api = getattr(memo, "api", None)
    if isinstance(api, KubeApi):
        await api.aclose()


@kopf.index(contract.GROUP, contract.VERSION, contract.PLURAL, registry=REGISTRY)
async def job_watch(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Hand every added or changed job to the supervisor (starts, wakes or stops its loop); index nothing.

    An indexing function, not an event handler, on purpose: Kopf calls indexing functions first and at a
    fraction of an event handler's cost, and without waiting for other resources' initial listings (the
    loops wait for the pod informer themselves). Async, so the supervisor runs on the event loop's thread.
    """
    supervisor: JobSupervisor = memo.supervisor
    supervisor.observe(body)


def _known_job_deleted(namespace: str | None, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> bool:
    supervisor: JobSupervisor = memo.supervisor
    return type == "DELETED" and supervisor.knows((namespace or "", name))


@kopf.on.event(contract.GROUP, contract.VERSION, contract.PLURAL, when=_known_job_deleted, registry=REGISTRY)
async def job_deleted(namespace: str | None, name: str, uid: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Stop the loop of a deleted job (Kopf does not call indexing functions for deletions), by its UID."""
    supervisor: JobSupervisor = memo.supervisor
    supervisor.gone((namespace or "", name), uid or None)


@kopf.on.event("nodes", registry=REGISTRY)
async def node_power_pressure(
    name: str, annotations: Mapping[str, str], type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Track nodes annotated efficienttraining.dev/power-pressure="true" (placement policy)."""
    pressured: set[str] = memo.pressured_nodes
    if type != "DELETED" and annotations.get(POWER_PRESSURE_ANNOTATION) == "true":
        pressured.add(name)
    else:
        pressured.discard(name)
