"""One reconcile loop per job, run and stopped by the operator itself (not by Kopf daemons).

Each job gets an asyncio task that loops observe -> decide -> act (:meth:`JobReconciler.reconcile`) every
``reconcile_interval_seconds`` or as soon as it is woken (a watch event of the job or of one of its pods, or
new telemetry). The loop reads the job's latest body, which the supervisor keeps from Kopf's job watch
(:meth:`JobSupervisor.observe`), its pods from the pod informer (:mod:`etj_operator.podwatch`) and its
report from the report informer (:mod:`etj_operator.reportwatch`): a pass costs no API read.

Why not a Kopf daemon per job (the first design): a daemon makes Kopf put a finalizer on every job (two
extra PATCH requests per job lifecycle and one more watch event each) and run its spawning machinery on
every event of every job; in bench/operator_scale.py that was most of the operator's CPU in a burst of
jobs. The loops here need neither: deleting a job needs no cleanup the API server does not do itself
(pods and children carry ownerReferences; the harness restores the GPUs' default power limit when its pod
is stopped, docs/harness.md).

Life of a loop:

* started by :meth:`JobSupervisor.observe` on the first event of a job. Its first pass waits for
  ``ready`` (the pod and report informers have listed every watched namespace), so a restarted operator's
  first pass already sees every existing pod (no duplicate pods after a restart) and every report.
* stopped when the job gets a ``deletionTimestamp`` (a foreground deletion waits for the pods to go: the
  loop must not recreate them), is deleted (:meth:`JobSupervisor.gone`), is found gone by its own status
  write (:class:`~etj_operator.errors.JobGone`; the write tests the job's UID), is replaced by a job of the
  same name with another UID (deleted and applied again before its DELETED event came: a loop is one job's,
  and its state, what it wrote and what it has in flight, must not carry over; the new job gets a new loop
  at once), has been deleted by its TTL, or when the operator stops
  (:meth:`JobSupervisor.close`: loops finish the pass they are in, within a grace period, then are cancelled).
* at most ``max_concurrent_passes`` passes run at once over all jobs.
* a pass that raises is logged and counted and retried with a growing delay (:mod:`etj_operator.backoff`),
  never ending the loop (nor the operator): a request the API server refused
  (:class:`~etj_operator.errors.PermanentApiError`, already shown on the job by the reconciler) on
  :data:`PERMANENT_BACKOFF`, up to minutes apart; any other error (5xx, 429, no answer, a conflict, a bug)
  on :data:`TRANSIENT_BACKOFF`. The server's Retry-After is a floor. While it backs off, the loop ignores
  wake-ups (its own status echo, pod events, telemetry) except a change of the job's generation: a user who
  fixes the spec gets a pass at once, with the backoff reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from etj_operator.backoff import Backoff
from etj_operator.errors import ApiStatusError, JobGone, PermanentApiError
from etj_operator.leader import NotLeader
from etj_operator.lifecycle import PodView
from etj_operator.metrics import RECONCILE_ERRORS
from etj_operator.ports import JobPasses
from etj_operator.reconciler import JobState

logger = logging.getLogger(__name__)

Key = tuple[str, str]


class PodIndex(Protocol):
    """The operator's pods by job key (:class:`~etj_operator.podwatch.PodInformer`, or a dict in tests)."""

    def get(self, key: Key, default: Iterable[PodView], /) -> Iterable[PodView]:
        """The job's pods, or ``default``."""


class Leadership(Protocol):
    """Whether this process leads (:class:`~etj_operator.leader.LeaderElector`); only the leader makes passes."""

    @property
    def leading(self) -> asyncio.Event:
        """Set while this process leads."""
        ...

    def valid(self) -> bool:
        """Whether it leads and renewed in time (writes may go out now)."""
        ...


class ReportIndex(Protocol):
    """The jobs' reports (:class:`~etj_operator.reportwatch.ReportInformer`, or a stub in tests)."""

    def get(self, key: Key, job_uid: str | None, /) -> Mapping[str, Any] | None:
        """The job's own report (its controller is ``job_uid``), or None."""

#: Retries of a pass that failed on a transient error (5xx, 429, no answer, a conflict) or a bug: 0.25-0.5 s
#: at first, doubling, at most 30 s apart.
TRANSIENT_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=30.0, jitter=0.5)
#: Retries of a pass whose request the API server refused (403, 422): 2.5-5 s at first, doubling, at most
#: 5 minutes apart. Retried at all because the cause may lie outside the job (RBAC, an admission policy).
PERMANENT_BACKOFF = Backoff(base_seconds=5.0, cap_seconds=300.0, jitter=0.5)
#: How often a standby's loop looks again whether this process leads (it also wakes when it becomes leader).
STANDBY_POLL_SECONDS = 1.0
#: Shortest requeue a plan may ask for (keeps a wrong plan from spinning the loop).
MIN_REQUEUE_SECONDS = 0.05

#: Sleep until the first event is set, the second (the operator stopping) is set, or the seconds pass.
Waiter = Callable[[asyncio.Event, asyncio.Event, float], Awaitable[None]]


class Wakers:
    """One asyncio.Event per job: set by watch events and telemetry, awaited by the job's loop."""

    def __init__(self) -> None:
        self._events: dict[Key, asyncio.Event] = {}

    def get(self, key: Key) -> asyncio.Event:
        """The job's event (created on first use)."""
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: Key) -> None:
        """Wake the job's loop if it has one (a new loop makes its first pass at once anyway).

        Creates nothing for a job without a loop: pod events of deleted jobs, and events of jobs whose
        loop has ended, would otherwise leave one event behind per job for the life of the operator.
        """
        event = self._events.get(key)
        if event is not None:
            event.set()

    def __len__(self) -> int:
        return len(self._events)

    def forget(self, key: Key) -> None:
        """Drop the job's event (its loop stopped)."""
        self._events.pop(key, None)


def is_terminating(body: Mapping[str, Any]) -> bool:
    """The job has a deletionTimestamp (deleted, waiting for finalizers or its dependents)."""
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


class JobSupervisor:
    """Starts, tracks and stops the per-job reconcile loops of one operator run."""

    def __init__(
        self,
        reconciler: JobPasses,
        wakers: Wakers,
        pods: PodIndex,
        *,
        interval_seconds: float,
        debounce_seconds: float,
        max_concurrent_passes: int = 0,
        ready: asyncio.Event | None = None,
        reports: ReportIndex | None = None,
        transient_backoff: Backoff | None = None,
        permanent_backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Waiter | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.reconciler = reconciler
        #: With leader election: loops make passes only while this process leads (a standby's loops wait,
        #: with the informers warm); :meth:`step_down` cancels every pass at once. None: always leads.
        self._leadership = leadership
        self.wakers = wakers
        self.interval_seconds = interval_seconds
        self.debounce_seconds = debounce_seconds
        #: The latest body of every job seen (from Kopf's job watch), by key.
        self._bodies: dict[Key, Mapping[str, Any]] = {}
        self._pods = pods
        #: The jobs' reports (None: no report is passed, the reconciler keeps the mirrored status.workload).
        self._reports = reports
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._stop_requested: set[Key] = set()
        #: Jobs whose loop ended for good while the object still exists (TTL deletion sent): not restarted.
        #: (by key, the UID of the job that finished: a new job of the name is not that job)
        self._finished: dict[Key, str | None] = {}
        self._closing = asyncio.Event()
        #: Set when the pod index holds every existing pod; no loop makes a pass before (no duplicates).
        self._ready = ready
        #: At most this many passes run at once (0: no limit). In a burst of new jobs, a limit makes jobs
        #: finish their creation pass one after the other instead of all of them near the end.
        self._passes: asyncio.Semaphore | contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(max_concurrent_passes) if max_concurrent_passes > 0 else contextlib.nullcontext()
        )
        self._active_passes = 0
        #: Set while no pass runs or waits: lower-priority work (Events) goes then (:class:`EventPoster`).
        self.idle = asyncio.Event()
        self.idle.set()
        #: Retry policies of failed passes (the module's defaults when None, read at construction).
        self.transient_backoff = transient_backoff or TRANSIENT_BACKOFF
        self.permanent_backoff = permanent_backoff or PERMANENT_BACKOFF
        #: The loops' only timing seams (tests inject a fake clock and a waiter that advances it).
        self._clock = clock
        self._wait = wait or _wait

    # ----- called from Kopf handlers ------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        """A job was added or changed: keep its body, start its loop (or stop it if being deleted), wake it."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        self._bodies[key] = body
        if is_terminating(body):
            self.stop(key)
        else:
            self.ensure(key)
        self.wakers.wake(key)

    def knows(self, key: Key) -> bool:
        """Whether the job has a body, a loop or a finished mark here (a DELETED event then matters)."""
        return key in self._bodies or key in self._tasks or key in self._finished

    def gone(self, key: Key, uid: str | None = None) -> None:
        """The job of ``uid`` was deleted: forget it and stop its loop.

        A DELETED event can come after the ADDED event of a new job of the same name (Kopf hands deletions to
        an event handler, additions to the indexing hook that calls :meth:`observe`): when the job kept here
        has another UID, that newer job stays, with its loop (an older loop still running ends on its own
        when it sees the UID change).
        """
        body = self._bodies.get(key)
        if uid is not None and body is not None and _uid(body) not in (None, uid):
            return
        self._bodies.pop(key, None)
        self._finished.pop(key, None)
        self.stop(key)

    def ensure(self, key: Key) -> None:
        """Start the job's loop unless it runs (or ended for good, or the operator is stopping)."""
        body = self._bodies.get(key)
        if key in self._finished and (body is None or _uid(body) == self._finished[key]):
            return  # that job's loop ended for good (TTL deletion sent)
        self._finished.pop(key, None)  # a new job of the name
        if key in self._tasks or self._closing.is_set():
            return
        self._stop_requested.discard(key)
        self._tasks[key] = asyncio.create_task(self._loop(key), name=f"etj-job-{key[0]}/{key[1]}")

    def stop(self, key: Key) -> None:
        """Ask the job's loop to end after its current pass (it is woken to notice at once)."""
        if key in self._tasks:
            self._stop_requested.add(key)
            self.wakers.wake(key)

    def step_down(self) -> None:
        """The process stopped leading: cancel every loop now (a pass in flight must not write on).

        Each cancelled loop's job is started again at once as a waiting loop with a fresh state, which makes
        its first pass when this process leads again (then from the job's status, as after a restart).
        """
        for task in list(self._tasks.values()):
            task.cancel()

    @property
    def running(self) -> frozenset[Key]:
        """Keys of the jobs whose loop runs now."""
        return frozenset(self._tasks)

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Stop every loop: each finishes its current pass within the grace period, then is cancelled."""
        self._closing.set()
        tasks = list(self._tasks.values())
        for key in list(self._tasks):
            self.wakers.wake(key)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pending:
            logger.warning(
                "%d job loops did not finish their pass in %.0f s and were cancelled", len(pending), grace_seconds
            )

    # ----- the loop -------------------------------------------------------------------------------------

    def _body(self, key: Key) -> Mapping[str, Any] | None:
        return self._bodies.get(key)

    def _should_end(self, key: Key) -> bool:
        return key in self._stop_requested or self._closing.is_set()

    async def _loop(self, key: Key) -> None:
        namespace, name = key
        state = JobState()
        waker = self.wakers.get(key)
        hub = self.reconciler.hub
        failures = 0  # consecutive failed passes of the same generation: the backoff's attempt number
        failed_generation: int | None = None
        own_uid: str | None = None  # the job this loop is for: the first body's UID
        started = False
        try:
            if self._ready is not None and not self._ready.is_set():
                await self._wait(self._ready, self._closing, math.inf)
            while not self._should_end(key):
                if self._leadership is not None and not self._leadership.valid():
                    # A standby waits to lead; a leader whose renewal is late (its step-down is near: the
                    # elector clears ``leading`` when the renewal returns) waits a poll, not on ``leading``,
                    # which is still set and would return at once.
                    late = self._leadership.leading.is_set()
                    await self._wait(asyncio.Event() if late else self._leadership.leading, self._closing,
                                     STANDBY_POLL_SECONDS)
                    continue
                waker.clear()
                body = self._body(key)
                if body is None or is_terminating(body):
                    return  # deleted (or being deleted): nothing more to do for it
                if not started:
                    own_uid, started = _uid(body), True
                elif _uid(body) != own_uid:
                    return  # another job of the same name: it gets its own loop (below)
                delay = self.interval_seconds
                backoff: Backoff | None = None
                retry_after: float | None = None
                try:
                    pods = list(self._pods.get(key, ()))
                    report = self._reports.get(key, _uid(body)) if self._reports is not None else None
                    telemetry = hub.take(key) if hub is not None else None
                    self._active_passes += 1
                    self.idle.clear()
                    try:
                        async with self._passes:
                            plan = await self.reconciler.reconcile(
                                body, pods, state, telemetry=telemetry, report=report
                            )
                    finally:
                        self._active_passes -= 1
                        if self._active_passes == 0:
                            self.idle.set()
                    if plan.delete_job:
                        self._finished[key] = _uid(body)
                        return
                    if plan.requeue_after_seconds is not None:
                        delay = max(MIN_REQUEUE_SECONDS, min(delay, plan.requeue_after_seconds))
                    failures, failed_generation = 0, None
                except JobGone:  # deleted under our feet (a missed DELETED event): create nothing more
                    self._bodies.pop(key, None)
                    return
                except NotLeader as e:  # the leadership ended, or another term stamped the job: write nothing
                    logger.info("pass of %s/%s stopped: %s", namespace, name, e)
                    await self._wait(asyncio.Event(), self._closing, STANDBY_POLL_SECONDS)
                    continue
                except PermanentApiError as e:  # the reconciler has shown it on the job: retry slowly
                    RECONCILE_ERRORS.inc()
                    backoff, retry_after = self.permanent_backoff, e.retry_after_seconds
                    problem: BaseException = e
                except ApiStatusError as e:
                    RECONCILE_ERRORS.inc()
                    backoff, retry_after, problem = self.transient_backoff, e.retry_after_seconds, e
                except Exception as e:  # a bug must not end the job's loop: log it, count it, try again
                    RECONCILE_ERRORS.inc()
                    backoff, problem = self.transient_backoff, e
                    logger.exception("reconcile of %s/%s failed unexpectedly", namespace, name)
                if self._should_end(key):
                    return
                if backoff is not None:
                    generation = _generation(body)
                    if generation != failed_generation:  # a new spec starts a new schedule
                        failures, failed_generation = 0, generation
                    delay = backoff.delay_seconds(failures, retry_after)
                    failures += 1
                    logger.warning(
                        "reconcile of %s/%s failed (%d in a row), retrying in %.1f s: %s",
                        namespace,
                        name,
                        failures,
                        delay,
                        problem,
                    )
                    await self._back_off(key, waker, delay, generation)
                    continue
                await self._wait(waker, self._closing, delay)
                if waker.is_set() and self.debounce_seconds > 0 and not self._should_end(key):
                    # Events come in bursts (a gang's pods, our own status echo): one pass handles them all.
                    await asyncio.sleep(self.debounce_seconds)
        finally:
            self._tasks.pop(key, None)
            self._stop_requested.discard(key)
            self.wakers.forget(key)
            self.reconciler.forget(namespace, name)
            # A job of the same name created while this loop was ending (delete and re-apply) gets its own.
            body = self._body(key)
            if body is not None and not is_terminating(body) and not self._closing.is_set():
                self.ensure(key)


    async def _back_off(self, key: Key, waker: asyncio.Event, seconds: float, generation: int) -> None:
        """Wait ``seconds`` after a failed pass, deaf to wake-ups but a new generation, a stop, or the deletion."""
        deadline = self._clock() + seconds
        while not self._should_end(key):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            waker.clear()
            await self._wait(waker, self._closing, remaining)
            body = self._body(key)
            if body is None or is_terminating(body) or _generation(body) != generation:
                return


def _uid(body: Mapping[str, Any]) -> str | None:
    uid = (body.get("metadata") or {}).get("uid")
    return uid if isinstance(uid, str) and uid else None


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


async def _wait(waker: asyncio.Event, closing: asyncio.Event, seconds: float) -> None:
    """Sleep until woken, the operator stops, or the timeout passes."""
    wake = asyncio.ensure_future(waker.wait())
    stop = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({wake, stop}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wake, stop):
            task.cancel()
