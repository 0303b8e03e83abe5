"""JobSupervisor: the per-job loops start, stop and survive as documented (a fake reconciler, no API)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import pytest

from etj_operator import metrics
from etj_operator.backoff import Backoff
from etj_operator.errors import JobGone, PermanentApiError, TransientApiError
from etj_operator.lifecycle import Plan, PodView
from etj_operator.reconciler import JobState
from etj_operator.supervisor import MIN_REQUEUE_SECONDS, JobSupervisor, Wakers
from etj_operator.telemetry.base import JobTelemetry

KEY = ("ns", "job")


class FakeReconciler:
    """Records each pass; the test decides what a pass returns or raises."""

    hub = None

    def __init__(self, outcome: Callable[[int], Plan] | None = None) -> None:
        self.passes: list[tuple[Mapping[str, Any], list[Any]]] = []
        self.forgotten: list[tuple[str, str]] = []
        self.outcome = outcome or (lambda n: Plan(status={}))
        self.block: asyncio.Event | None = None
        self.reports: list[Any] = []

    async def reconcile(
        self,
        body: Mapping[str, Any],
        pods: Iterable[PodView],
        state: JobState,
        now: datetime | None = None,
        telemetry: JobTelemetry | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> Plan:
        self.passes.append((body, list(pods)))
        self.reports.append(report)
        if self.block is not None:
            await self.block.wait()
        return self.outcome(len(self.passes))

    def forget(self, namespace: str, name: str) -> None:
        self.forgotten.append((namespace, name))


def job(uid: str = "u1", terminating: bool = False, generation: int = 1) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": KEY[1], "namespace": KEY[0], "uid": uid, "generation": generation}
    if terminating:
        meta["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    return {"metadata": meta}


def make(reconciler: FakeReconciler, interval: float = 30.0, **options: Any) -> JobSupervisor:
    return JobSupervisor(
        reconciler,
        Wakers(),
        {KEY: ["pod-a", "pod-b"]},
        interval_seconds=interval,
        debounce_seconds=0,
        **options,
    )


class FakeTime:
    """The supervisor's clock and waiter: every wait is recorded and passes at once on the fake clock.

    After ``limit`` waits, a wait blocks until the loop is woken or closed (no timeout), so a test sees an
    exact, finite schedule. ``on_wait(index, seconds)`` may act (wake the loop, edit the job) and return how
    much fake time passes before that wait ends (default: all of it).
    """

    def __init__(self, limit: int, on_wait: Callable[[int, float], float | None] | None = None) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.limit = limit
        self.on_wait = on_wait or (lambda index, seconds: None)

    def clock(self) -> float:
        return self.now

    async def wait(self, waker: asyncio.Event, closing: asyncio.Event, seconds: float) -> None:
        if len(self.waits) >= self.limit or seconds == math.inf:
            futures = {asyncio.ensure_future(waker.wait()), asyncio.ensure_future(closing.wait())}
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            for future in futures:
                future.cancel()
            return
        self.waits.append(seconds)
        elapsed = self.on_wait(len(self.waits) - 1, seconds)
        self.now += seconds if elapsed is None else elapsed
        await asyncio.sleep(0)


def timed(reconciler: FakeReconciler, fake: FakeTime, **options: Any) -> JobSupervisor:
    """A supervisor on fake time, with jitter-free policies (rng 0: every delay is its ceiling)."""
    return make(
        reconciler,
        clock=fake.clock,
        wait=fake.wait,
        transient_backoff=Backoff(1.0, 8.0, jitter=0.5, rng=lambda: 0.0),
        permanent_backoff=Backoff(5.0, 300.0, jitter=0.5, rng=lambda: 0.0),
        **options,
    )


async def until(predicate: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_a_loop_reconciles_the_latest_body_and_pods_and_wakes_on_changes():
    reconciler = FakeReconciler()
    supervisor = make(reconciler)
    assert not supervisor.knows(KEY)
    first = job()
    supervisor.observe(first)  # what the job watch does on ADDED
    assert supervisor.knows(KEY) and KEY in supervisor.running
    await until(lambda: len(reconciler.passes) == 1)
    assert reconciler.passes[0] == (first, ["pod-a", "pod-b"])
    edited = job() | {"spec": {"edited": True}}
    supervisor.observe(edited)  # MODIFIED: the same loop, woken
    await until(lambda: len(reconciler.passes) == 2)
    assert reconciler.passes[1][0] is edited
    await supervisor.close()
    assert reconciler.forgotten == [KEY]


@pytest.mark.asyncio
async def test_a_pass_gets_the_jobs_own_report_by_the_jobs_uid():
    class Reports:
        def __init__(self) -> None:
            self.asked: list[tuple[Any, Any]] = []

        def get(self, key: Any, job_uid: Any) -> Any:
            self.asked.append((key, job_uid))
            return {"status": {"step": 3}} if job_uid == "u1" else None  # a stale report of an older u0

    reports = Reports()
    reconciler = FakeReconciler()
    supervisor = make(reconciler, reports=reports)
    supervisor.observe(job(uid="u1"))
    await until(lambda: len(reconciler.passes) == 1)
    assert reconciler.reports == [{"status": {"step": 3}}] and reports.asked == [(KEY, "u1")]
    supervisor.observe(job(uid="u0"))
    await until(lambda: len(reconciler.passes) == 2)
    assert reconciler.reports[1] is None
    await supervisor.close()
    without = FakeReconciler()  # no report index: no report is passed
    plain = make(without)
    plain.observe(job())
    await until(lambda: len(without.passes) == 1)
    assert without.reports == [None]
    await plain.close()


@pytest.mark.asyncio
async def test_no_pass_before_the_pod_index_is_ready():
    ready = asyncio.Event()
    reconciler = FakeReconciler()
    supervisor = make(reconciler, ready=ready)
    supervisor.observe(job())
    await asyncio.sleep(0.05)
    assert reconciler.passes == []  # a restarted operator must see existing pods before deciding anything
    ready.set()
    await until(lambda: len(reconciler.passes) == 1)
    await supervisor.close()


@pytest.mark.asyncio
async def test_deleted_and_terminating_jobs_stop_their_loop():
    reconciler = FakeReconciler()
    supervisor = make(reconciler)
    supervisor.observe(job())
    await until(lambda: len(reconciler.passes) == 1)
    supervisor.observe(job(terminating=True))  # a foreground deletion waits for the pods: keep off them
    await until(lambda: KEY not in supervisor.running)
    assert len(reconciler.passes) == 1
    supervisor.observe(job(terminating=True))
    assert KEY not in supervisor.running
    supervisor.gone(KEY)
    assert not supervisor.knows(KEY)


@pytest.mark.asyncio
async def test_a_loop_that_deleted_its_job_by_ttl_is_not_restarted_until_the_job_is_gone():
    reconciler = FakeReconciler(lambda n: Plan(status={}, delete_job=True))
    supervisor = make(reconciler)
    supervisor.observe(job())
    await until(lambda: KEY not in supervisor.running)
    supervisor.observe(job())  # events of the job until the deletion lands
    assert KEY not in supervisor.running and len(reconciler.passes) == 1
    assert supervisor.knows(KEY)
    supervisor.gone(KEY)
    supervisor.observe(job(uid="u2"))  # a new job of the same name gets a loop
    await until(lambda: len(reconciler.passes) == 2)
    await supervisor.close()


@pytest.mark.asyncio
async def test_errors_are_counted_and_retried_with_growing_delays_without_ending_the_loop():
    def outcome(n: int) -> Plan:
        if n in (1, 2, 4):
            raise TransientApiError("API unavailable", code=503)
        if n == 3:
            raise ValueError("a bug")
        return Plan(status={})

    errors_before = metrics.RECONCILE_ERRORS._value.get()
    reconciler, fake = FakeReconciler(outcome), FakeTime(limit=6)
    supervisor = timed(reconciler, fake)
    supervisor.observe(job())
    await until(lambda: len(fake.waits) == 6 and len(reconciler.passes) == 7)
    assert KEY in supervisor.running
    assert metrics.RECONCILE_ERRORS._value.get() - errors_before == 4
    # 1, 2, 4, 8 s (a bug backs off like a transient error), then the cap; a good pass: the interval
    assert fake.waits == [1.0, 2.0, 4.0, 8.0, 30.0, 30.0]
    assert len(reconciler.passes) == 7  # one after each wait
    await supervisor.close()


@pytest.mark.asyncio
async def test_a_refused_request_is_retried_slowly_and_retry_after_is_a_floor():
    def outcome(n: int) -> Plan:
        if n <= 3:
            raise PermanentApiError("pods is forbidden", code=403, reason="Forbidden")
        if n == 5:
            raise TransientApiError("slow down", code=429, retry_after_seconds=6.0)
        return Plan(status={})

    reconciler, fake = FakeReconciler(outcome), FakeTime(limit=6)
    supervisor = timed(reconciler, fake)
    supervisor.observe(job())
    await until(lambda: len(fake.waits) == 6 and len(reconciler.passes) == 7)
    # refused: 5, 10, 20 s; a good pass resets the schedule; a 429's Retry-After (6 s) beats the 1 s backoff
    assert fake.waits == [5.0, 10.0, 20.0, 30.0, 6.0, 30.0]
    await supervisor.close()


@pytest.mark.asyncio
async def test_a_backing_off_loop_ignores_wake_ups_but_a_new_generation_retries_at_once():
    supervisor: JobSupervisor

    def on_wait(index: int, seconds: float) -> float | None:
        if index == 0:  # a pod event (or our own status echo) 1 s into the 5 s backoff: keep backing off
            supervisor.wakers.wake(KEY)
            return 1.0
        if index == 2:  # 2 s into the 10 s backoff, the user fixes the spec: retry now, schedule reset
            supervisor.observe(job(generation=2))
            return 2.0
        return None

    def outcome(n: int) -> Plan:
        if n <= 4:
            raise PermanentApiError("pods is forbidden", code=403)
        return Plan(status={})

    reconciler, fake = FakeReconciler(outcome), FakeTime(limit=5, on_wait=on_wait)
    supervisor = timed(reconciler, fake)
    supervisor.observe(job())
    await until(lambda: len(fake.waits) == 5 and len(reconciler.passes) == 5)
    # 5 s (a wake-up 1 s in changes nothing: 4 s more), 10 s cut short by the new spec, then 5 s, 10 s again
    assert fake.waits == [5.0, 4.0, 10.0, 5.0, 10.0]
    assert [body["metadata"]["generation"] for body, _ in reconciler.passes] == [1, 1, 2, 2, 2]
    await supervisor.close()


@pytest.mark.asyncio
async def test_requeue_is_honoured_with_a_floor():
    reconciler, fake = FakeReconciler(lambda n: Plan(status={}, requeue_after_seconds=0.0)), FakeTime(limit=5)
    supervisor = timed(reconciler, fake)
    supervisor.observe(job())
    await until(lambda: len(fake.waits) == 5 and len(reconciler.passes) == 6)
    await supervisor.close()
    # a 0 s requeue waits MIN_REQUEUE_SECONDS (50 ms) each time, not a busy loop
    assert fake.waits == [MIN_REQUEUE_SECONDS] * 5 and len(reconciler.passes) == 6


@pytest.mark.asyncio
async def test_close_lets_a_pass_finish_and_cancels_one_past_the_grace_period():
    reconciler = FakeReconciler()
    reconciler.block = asyncio.Event()
    supervisor = make(reconciler)
    supervisor.observe(job())
    await until(lambda: len(reconciler.passes) == 1)
    closing = asyncio.create_task(supervisor.close(grace_seconds=5))
    await asyncio.sleep(0.05)
    assert not closing.done()  # waits for the pass in flight
    reconciler.block.set()
    await asyncio.wait_for(closing, 1)
    assert supervisor.running == frozenset() and len(reconciler.passes) == 1
    supervisor.observe(job())  # a stopping operator starts nothing
    assert supervisor.running == frozenset()

    stuck = FakeReconciler()
    stuck.block = asyncio.Event()  # never set
    supervisor = make(stuck)
    supervisor.observe(job())
    await until(lambda: len(stuck.passes) == 1)
    await asyncio.wait_for(supervisor.close(grace_seconds=0.05), 1)
    assert supervisor.running == frozenset() and stuck.forgotten == [KEY]


@pytest.mark.asyncio
async def test_a_job_applied_again_while_its_old_loop_ends_gets_a_new_loop():
    reconciler = FakeReconciler()
    reconciler.block = asyncio.Event()
    supervisor = make(reconciler)
    supervisor.observe(job())
    await until(lambda: len(reconciler.passes) == 1)  # the pass is in flight
    supervisor.gone(KEY)  # the old loop is asked to stop ...
    supervisor.observe(job(uid="u2"))  # ... and before it has, the job is created again
    reconciler.block.set()
    await until(lambda: len(reconciler.passes) == 2)
    assert reconciler.passes[1][0]["metadata"]["uid"] == "u2"
    assert KEY in supervisor.running
    await supervisor.close()


@pytest.mark.asyncio
async def test_at_most_the_configured_number_of_passes_run_at_once():
    running, peak = 0, 0
    release = asyncio.Event()

    class Counting(FakeReconciler):
        async def reconcile(
            self, body: dict[str, Any], pods: list[Any], state: Any, telemetry: Any = None, report: Any = None
        ) -> Plan:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1
            return await super().reconcile(body, pods, state, telemetry=telemetry)

    reconciler = Counting()
    supervisor = make(reconciler, max_concurrent_passes=2)
    for i in range(5):
        supervisor.observe({"metadata": {"name": f"job-{i}", "namespace": "ns", "uid": str(i)}})
    await asyncio.sleep(0.05)
    assert running == 2  # the other three wait for a slot
    release.set()
    await until(lambda: len(reconciler.passes) == 5)
    assert peak == 2
    await supervisor.close()


@pytest.mark.asyncio
async def test_a_job_found_gone_by_its_status_write_ends_its_loop():
    def outcome(n: int) -> Plan:
        raise JobGone("ns/job")

    reconciler = FakeReconciler(outcome)
    supervisor = make(reconciler)
    supervisor.observe(job())
    await until(lambda: KEY not in supervisor.running)
    assert len(reconciler.passes) == 1 and not supervisor.knows(KEY)


@pytest.mark.asyncio
async def test_wake_ups_of_jobs_without_a_loop_leave_nothing_behind():
    reconciler = FakeReconciler(lambda n: Plan(status={}, delete_job=True))
    supervisor = make(reconciler)
    supervisor.observe(job())
    await until(lambda: KEY not in supervisor.running)  # TTL: the loop ended, the job still exists
    for i in range(100):  # pod events of deleted jobs, job events after the loop ended
        supervisor.wakers.wake(("ns", f"gone-{i}"))
    supervisor.observe(job())
    assert len(supervisor.wakers) == 0


@pytest.mark.asyncio
async def test_a_job_replaced_by_one_of_another_uid_gets_a_new_loop_with_a_fresh_state():
    """Deleted and applied again before the DELETED event came: the old loop's state must not carry over."""
    states: list[tuple[str, Any, Any]] = []

    class Recording(FakeReconciler):
        async def reconcile(self, body: dict[str, Any], pods: list[Any], state: Any, **_: Any) -> Plan:
            states.append((body["metadata"]["uid"], state, state.owned))
            state.owned = {"restarts": 4}  # what this loop wrote for its job
            return await super().reconcile(body, pods, state)

    reconciler = Recording()
    supervisor = make(reconciler)
    supervisor.observe(job(uid="u1"))
    await until(lambda: len(states) == 1)
    supervisor.observe(job(uid="u2"))  # no gone(): the DELETED event of u1 was missed
    await until(lambda: len(states) == 2)
    (first_uid, first_state, _), (second_uid, second_state, seen) = states
    assert (first_uid, second_uid) == ("u1", "u2")
    assert second_state is not first_state and seen is None  # a new JobState: nothing the u1 loop wrote
    assert reconciler.forgotten == [KEY]  # the u1 loop ended (its telemetry and series dropped) ...
    assert KEY in supervisor.running  # ... and u2's loop runs
    await supervisor.close()


class Leadership:
    """A stand-in elector: ``leading`` as the elector sets it, ``ok`` for whether writes may go out."""

    def __init__(self) -> None:
        self.leading = asyncio.Event()
        self.ok = False

    def valid(self) -> bool:
        return self.ok and self.leading.is_set()


@pytest.mark.asyncio
async def test_a_standby_makes_no_pass_until_it_leads_and_a_late_leader_polls_instead_of_spinning():
    reconciler = FakeReconciler()
    leadership = Leadership()
    waits: list[tuple[bool, float]] = []  # (the event waited on was set already: a busy loop, seconds)

    async def wait(waker: asyncio.Event, closing: asyncio.Event, seconds: float) -> None:
        waits.append((waker.is_set(), seconds))
        futures = {asyncio.ensure_future(waker.wait()), asyncio.ensure_future(closing.wait())}
        await asyncio.wait(futures, timeout=0.01, return_when=asyncio.FIRST_COMPLETED)  # time "passes" at once
        for future in futures:
            future.cancel()

    supervisor = make(reconciler, wait=wait, leadership=leadership)
    supervisor.observe(job())
    await until(lambda: len(waits) >= 3)
    assert reconciler.passes == []  # a standby waits, makes no pass
    leadership.ok = True
    leadership.leading.set()
    await until(lambda: len(reconciler.passes) >= 1)
    # the renewal is late: leading is still set, writes may not go out: polls, no pass, no busy loop
    leadership.ok = False
    await asyncio.sleep(0.05)
    passes, late_from = len(reconciler.passes), len(waits)
    await until(lambda: len(waits) >= late_from + 3)
    assert len(reconciler.passes) == passes
    late = waits[late_from:]
    assert all(not already and seconds == pytest.approx(1.0) for already, seconds in late), late
    # the step-down cancels the loop; the job gets a waiting loop again
    leadership.leading.clear()
    supervisor.step_down()
    await until(lambda: KEY in supervisor.running)
    await supervisor.close(0.1)


@pytest.mark.asyncio
async def test_a_late_deleted_event_of_an_older_job_does_not_stop_the_new_job_of_its_name():
    """Kopf hands DELETED to an event handler and ADDED to the indexing hook: the old job's DELETED may come
    after the new job's ADDED. The new job keeps its body and gets its loop."""
    reconciler = FakeReconciler()
    supervisor = make(reconciler)
    supervisor.observe(job(uid="u1"))
    await until(lambda: len(reconciler.passes) >= 1)
    supervisor.observe(job(uid="u2"))  # re-applied: the ADDED of u2 came first
    supervisor.gone(KEY, "u1")  # ... then the DELETED of u1
    await until(lambda: any(b["metadata"]["uid"] == "u2" for b, _ in reconciler.passes))
    assert KEY in supervisor.running and supervisor.knows(KEY)
    supervisor.gone(KEY, "u2")  # its own deletion stops it
    await until(lambda: KEY not in supervisor.running)
    await supervisor.close(0.1)


@pytest.mark.asyncio
async def test_a_new_job_of_the_name_of_a_job_ended_by_its_ttl_gets_a_loop_before_the_old_ones_deleted_event():
    ended = {"done": False}

    def outcome(n: int) -> Plan:
        if not ended["done"]:
            ended["done"] = True
            return Plan(status={}, delete_job=True)  # u1's TTL: the loop ends for good
        return Plan(status={})

    reconciler = FakeReconciler(outcome)
    supervisor = make(reconciler)
    supervisor.observe(job(uid="u1"))
    await until(lambda: ended["done"] and KEY not in supervisor.running)
    supervisor.observe(job(uid="u1"))  # an event of the deleted job itself: no new loop
    await asyncio.sleep(0.01)
    assert KEY not in supervisor.running
    supervisor.observe(job(uid="u2"))  # applied again before u1's DELETED event arrived
    await until(lambda: KEY in supervisor.running)
    await until(lambda: any(b["metadata"]["uid"] == "u2" for b, _ in reconciler.passes))
    await supervisor.close(0.1)
