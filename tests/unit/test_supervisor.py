"""JobSupervisor: the per-job loops start, stop and survive as documented (a fake reconciler, no API)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from etj_operator import metrics
from etj_operator.errors import JobGone, TransientApiError
from etj_operator.lifecycle import Plan
from etj_operator.supervisor import JobSupervisor, Wakers

KEY = ("ns", "job")


class FakeReconciler:
    """Records each pass; the test decides what a pass returns or raises."""

    hub = None

    def __init__(self, outcome: Callable[[int], Plan] | None = None) -> None:
        self.passes: list[tuple[dict[str, Any], list[Any]]] = []
        self.forgotten: list[tuple[str, str]] = []
        self.outcome = outcome or (lambda n: Plan(status={}))
        self.block: asyncio.Event | None = None

    async def reconcile(self, body: dict[str, Any], pods: list[Any], state: Any, telemetry: Any = None) -> Plan:
        self.passes.append((body, pods))
        if self.block is not None:
            await self.block.wait()
        return self.outcome(len(self.passes))

    def forget(self, namespace: str, name: str) -> None:
        self.forgotten.append((namespace, name))


def job(uid: str = "u1", terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": KEY[1], "namespace": KEY[0], "uid": uid}
    if terminating:
        meta["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    return {"metadata": meta}


def make(reconciler: FakeReconciler, interval: float = 30.0, **options: Any) -> JobSupervisor:
    return JobSupervisor(
        reconciler,  # type: ignore[arg-type]
        Wakers(),
        {KEY: ["pod-a", "pod-b"]},
        interval_seconds=interval,
        debounce_seconds=0,
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
async def test_errors_are_counted_and_retried_without_ending_the_loop(monkeypatch):
    monkeypatch.setattr("etj_operator.supervisor.ERROR_RETRY_SECONDS", 0.01)

    def outcome(n: int) -> Plan:
        if n == 1:
            raise TransientApiError("API unavailable", delay=1.0)
        if n == 2:
            raise ValueError("a bug")
        return Plan(status={})

    errors_before = metrics.RECONCILE_ERRORS._value.get()
    reconciler = FakeReconciler(outcome)
    supervisor = make(reconciler)
    supervisor.observe(job())
    await until(lambda: len(reconciler.passes) >= 3)
    assert KEY in supervisor.running
    assert metrics.RECONCILE_ERRORS._value.get() - errors_before == 2
    await supervisor.close()


@pytest.mark.asyncio
async def test_requeue_is_honoured_with_a_floor():
    reconciler = FakeReconciler(lambda n: Plan(status={}, requeue_after_seconds=0.0))
    supervisor = make(reconciler)
    supervisor.observe(job())
    await asyncio.sleep(0.3)
    await supervisor.close()
    # a 0 s requeue runs at most every 50 ms (MIN_REQUEUE_SECONDS), not in a busy loop
    assert 3 <= len(reconciler.passes) <= 8


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
        async def reconcile(self, body: dict[str, Any], pods: list[Any], state: Any, telemetry: Any = None) -> Plan:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1
            return await super().reconcile(body, pods, state, telemetry)

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
