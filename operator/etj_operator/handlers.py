"""Every Kopf handler of the operator, in one place. Each is a guard plus one call into a domain module.

* ``worker_pods``: an index of the operator's pods by job, kept current by Kopf's pod watch (fully
  populated before any handler runs, so a restarted operator sees every existing pod).
* ``job_events``: wakes the job's lifecycle loop when the job changed (``worker_pods`` does it for pods).
* ``node_power_pressure``: tracks nodes annotated for power pressure (placement policy).
* ``job_lifecycle``: one daemon per job; a level-triggered loop of observe -> decide -> act
  (:mod:`etj_operator.reconciler`), every ``reconcile_interval_seconds`` or as soon as it is woken.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf

from etj_operator import contract
from etj_operator.config import OperatorConfig
from etj_operator.kubeapi import KubeApi, make_api_client
from etj_operator.lifecycle import Event, PodView
from etj_operator.metrics import RECONCILE_ERRORS, serve
from etj_operator.policies import POWER_PRESSURE_ANNOTATION
from etj_operator.reconciler import JobReconciler, JobState, pod_view
from etj_operator.telemetry.base import TelemetrySource
from etj_operator.telemetry.direct import DirectTelemetry
from etj_operator.telemetry.hub import TelemetryHub
from etj_operator.telemetry.prometheus import PrometheusTelemetry

logger = logging.getLogger(__name__)

#: The operator's own registry: importing this module never adds handlers to kopf's process-wide default
#: registry (tests run other kopf operators in the same process).
REGISTRY = kopf.OperatorRegistry()

OPERATOR_PODS: dict[str, Any] = {contract.LABEL_JOB_NAME: kopf.PRESENT, contract.LABEL_MANAGED_BY: contract.MANAGED_BY}


class Wakers:
    """One asyncio.Event per job: set by watch events, awaited by the job's lifecycle loop."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}

    def get(self, key: tuple[str, str]) -> asyncio.Event:
        """The job's event (created on first use)."""
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: tuple[str, str]) -> None:
        """Wake the job's loop if it exists (or make it run at once when it starts)."""
        self.get(key).set()

    def forget(self, key: tuple[str, str]) -> None:
        """Drop the job's event (its daemon stopped)."""
        self._events.pop(key, None)


def post_event(body: Mapping[str, Any], event: Event) -> None:
    """Record a Kubernetes Event on the job through Kopf's event poster."""
    kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)


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
    settings.persistence.finalizer = f"{contract.GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=contract.GROUP)
    settings.execution.max_workers = config.max_workers
    settings.posting.level = logging.WARNING  # the operator posts its own Events; kopf posts only problems
    settings.posting.reporting_component = contract.MANAGED_BY  # "From" in `kubectl describe`
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "local")
    settings.posting.event_name_prefix = "etj-event-"
    settings.watching.server_timeout = 300
    memo.config = config
    memo.wakers = Wakers()  # per operator run: asyncio events must not outlive their event loop
    memo.api = KubeApi(make_api_client(), max_workers=config.max_workers)
    memo.pressured_nodes = set()
    memo.hub = TelemetryHub(lambda kind, url: make_source(config, kind, url), memo.wakers.wake)
    memo.reconciler = JobReconciler(
        memo.api, config, post_event, hub=memo.hub, node_pressure=memo.pressured_nodes.__contains__
    )
    memo.telemetry_stop = asyncio.Event()
    memo.telemetry_task = asyncio.create_task(
        memo.hub.run_forever(config.telemetry_interval_seconds, memo.telemetry_stop), name="etj-telemetry"
    )
    serve(config.metrics_port)


def make_source(config: OperatorConfig, kind: str, url: str) -> TelemetrySource:
    """A telemetry source for spec.energy.telemetry.source (and a Prometheus URL)."""
    if kind == "Direct":
        return DirectTelemetry(carbon_prometheus_url=url or None)
    return PrometheusTelemetry(
        url or config.prometheus_url,
        pod_label=config.prometheus_pod_label,
        namespace_label=config.prometheus_namespace_label,
        limit_metric=config.prometheus_limit_metric or None,
        extra_matchers=config.prometheus_extra_matchers,
    )


@kopf.on.cleanup(registry=REGISTRY)
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Stop the telemetry cycle and release the API wrapper's threads."""
    stop = getattr(memo, "telemetry_stop", None)
    task = getattr(memo, "telemetry_task", None)
    if isinstance(stop, asyncio.Event) and isinstance(task, asyncio.Task):
        stop.set()
        await task
    api = getattr(memo, "api", None)
    if isinstance(api, KubeApi):
        api.close()


@kopf.index("pods", labels=OPERATOR_PODS, registry=REGISTRY)
async def worker_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> Any:
    """Index pods by (namespace, job name), as compact PodView summaries; wake the pod's job loop.

    Kopf calls indexing functions on every event of every matching object, before handlers, at a fraction
    of a handler's cost (no per-call logging or outcome bookkeeping): the wake-up rides along here
    instead of in a separate event handler. Measured with bench/operator_scale.py, see docs/benchmarks.md.
    It is async on purpose: Kopf runs sync functions in a thread pool, and asyncio events must be set from
    the event loop's own thread.
    """
    key = (namespace or "", labels[contract.LABEL_JOB_NAME])
    memo.wakers.wake(key)
    return {key: pod_view(body)}


@kopf.index(contract.GROUP, contract.VERSION, contract.PLURAL, registry=REGISTRY)
async def job_events(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Wake the job's loop on every event of the job (spec edited, status written by others); index nothing."""
    memo.wakers.wake((namespace or "", name))


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


@kopf.daemon(contract.GROUP, contract.VERSION, contract.PLURAL, cancellation_timeout=10.0, registry=REGISTRY)
async def job_lifecycle(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    worker_pods: kopf.Index[tuple[str, str], PodView] | None = None,
    **_: Any,
) -> None:
    """Reconcile one job until it is deleted or the operator stops."""
    key = (namespace or "", name)
    reconciler: JobReconciler = memo.reconciler
    config: OperatorConfig = memo.config
    state = JobState()
    wakers: Wakers = memo.wakers
    waker = wakers.get(key)
    try:
        while not stopped:
            waker.clear()
            delay = config.reconcile_interval_seconds
            try:
                pods = list(worker_pods.get(key, [])) if worker_pods is not None else []
                telemetry = reconciler.hub.take(key) if reconciler.hub is not None else None
                plan = await reconciler.reconcile(body, pods, state, telemetry=telemetry)
                if plan.delete_job:
                    return
                if plan.requeue_after_seconds is not None:
                    delay = max(0.05, min(delay, plan.requeue_after_seconds))
            except (kopf.TemporaryError, kopf.PermanentError) as e:
                RECONCILE_ERRORS.inc()
                logger.warning("reconcile of %s/%s failed, retrying: %s", namespace, name, e)
                delay = min(delay, 2.0)
            await _wait(stopped, waker, delay)
            if waker.is_set() and config.reconcile_debounce_seconds > 0:
                # Events come in bursts (a gang's pods, our own status echo): one pass handles them all.
                await asyncio.sleep(config.reconcile_debounce_seconds)
    finally:
        wakers.forget(key)
        reconciler.forget(*key)


async def _wait(stopped: kopf.DaemonStopped, waker: asyncio.Event, seconds: float) -> None:
    """Sleep until woken, stopped, or the timeout passes."""
    wake = asyncio.ensure_future(waker.wait())
    stop = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({wake, stop}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wake, stop):
            task.cancel()
