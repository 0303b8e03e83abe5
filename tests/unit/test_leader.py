"""Leader election on a Lease (etj_operator.leader) with a fake clock and an in-memory Lease store that keeps
resourceVersions as the API server does (a write with a stale one is a 409)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from datetime import UTC, datetime, timedelta

import pytest

from etj_operator.errors import ConflictError, TransientApiError
from etj_operator.leader import ElectionSettings, LeaderElector, LeaseRecord, NotLeader


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=self.now)


class LeaseStore:
    """One Lease, with resourceVersion preconditions; ``down`` makes every call fail as unreachable."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.rv = 0
        self.down: set[str] = set()  # identities cut off from the "server"
        self.writes: list[str] = []

    def client(self, identity: str) -> Client:
        return Client(self, identity)


class Client:
    def __init__(self, store: LeaseStore, identity: str) -> None:
        self.store, self.identity = store, identity

    def _reach(self) -> None:
        if self.identity in self.store.down:
            raise TransientApiError("unreachable", code=None)

    async def get_lease(self, namespace, name):
        self._reach()
        return copy.deepcopy(self.store.lease)

    async def create_lease(self, lease):
        self._reach()
        if self.store.lease is not None:
            raise ConflictError("exists", code=409)
        return self._store(lease)

    async def replace_lease(self, lease):
        self._reach()
        assert self.store.lease is not None
        if lease["metadata"].get("resourceVersion") != self.store.lease["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified", code=409)
        return self._store(lease)

    def _store(self, lease):
        self.store.rv += 1
        stored = copy.deepcopy(dict(lease))
        stored["metadata"] = {**stored["metadata"], "resourceVersion": str(self.store.rv)}
        self.store.lease = stored
        self.store.writes.append(self.identity)
        return copy.deepcopy(stored)


def settings(identity: str) -> ElectionSettings:
    return ElectionSettings(namespace="etj-system", identity=identity, lease_duration_seconds=15,
                            renew_deadline_seconds=10, retry_period_seconds=2)


def elector(store: LeaseStore, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(store.client(identity), settings(identity), clock=clock, wall=clock.wall)


def run(coro):
    return asyncio.run(coro)


def test_the_first_candidate_creates_the_lease_and_leads_in_term_zero():
    store, clock = LeaseStore(), Clock()
    a = elector(store, clock, "op-a")
    assert run(a.try_acquire_or_renew()) is True
    record = LeaseRecord.from_lease(store.lease)
    assert record.holder == "op-a" and record.transitions == 0 and record.duration_seconds == 15
    assert record.acquire_time == record.renew_time and record.renew_time.endswith("Z")
    assert a.term == record.term and a.term.startswith("0/op-a/")


def test_a_standby_waits_a_lease_duration_by_its_own_clock_then_takes_over_in_a_new_term():
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "op-a"), elector(store, clock, "op-b")
    assert run(a.try_acquire_or_renew())
    a.leading.set()
    first_term = a.term
    assert run(b.try_acquire_or_renew()) is False  # held
    # a renews every 2 s: b never gets it
    for _ in range(20):
        clock.now += 2
        assert run(a.try_acquire_or_renew()) and a.term == first_term
        assert run(b.try_acquire_or_renew()) is False
    # a stops renewing (dead); b saw the record last change now, so it waits 15 s by its own clock
    clock.now += 14.9
    assert run(b.try_acquire_or_renew()) is False
    assert not a.valid()  # a's renew deadline (10 s) passed long before b may take the Lease
    clock.now += 0.2
    assert run(b.try_acquire_or_renew()) is True
    record = LeaseRecord.from_lease(store.lease)
    assert record.holder == "op-b" and record.transitions == 1 and b.term != first_term


def test_the_records_own_times_are_never_compared_with_the_local_clock():
    """A renewTime far in the past (another machine's clock) does not make a live leader's Lease free."""
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "op-a"), elector(store, clock, "op-b")
    run(a.try_acquire_or_renew())
    store.lease["spec"]["renewTime"] = "2001-01-01T00:00:00.000000Z"  # skewed writer
    assert run(b.try_acquire_or_renew()) is False


def test_a_released_lease_is_taken_at_once():
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "op-a"), elector(store, clock, "op-b")
    run(a.try_acquire_or_renew())
    a.leading.set()
    run(b.try_acquire_or_renew())
    run(a.release())
    assert "holderIdentity" not in store.lease["spec"] and store.lease["spec"]["leaseDurationSeconds"] == 1
    assert not a.valid()
    clock.now += 0.5
    assert run(b.try_acquire_or_renew()) is True


def test_two_candidates_racing_for_a_free_lease_cannot_both_win():
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "op-a"), elector(store, clock, "op-b")
    run(a.try_acquire_or_renew())
    run(a.release())
    # b read the free Lease at the same moment as a, but writes after a: its resourceVersion is stale
    stale = run(b.client.get_lease("etj-system", "etj-operator"))

    async def stale_read(namespace, name):
        return copy.deepcopy(stale)

    assert run(a.try_acquire_or_renew()) is True
    b.client.get_lease = stale_read
    assert run(b.try_acquire_or_renew()) is False
    assert LeaseRecord.from_lease(store.lease).holder == "op-a" and store.writes[-1] == "op-a"


def test_a_leader_cut_off_from_the_server_stops_acting_before_anyone_may_take_over():
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "op-a"), elector(store, clock, "op-b")
    run(a.try_acquire_or_renew())
    a.leading.set()
    run(b.try_acquire_or_renew())
    a.check()  # leads: writes may go
    store.down.add("op-a")
    for _ in range(4):
        clock.now += 2
        assert run(a.try_acquire_or_renew()) is False
        assert run(b.try_acquire_or_renew()) is False
    clock.now += 2.5  # 10.5 s since a's last renewal
    assert not a.valid()
    with pytest.raises(NotLeader):
        a.check()
    clock.now += 5  # 15.5 s: only now may b take it
    assert run(b.try_acquire_or_renew()) is True


def test_a_paused_leader_is_not_valid_the_moment_it_resumes():
    store, clock = LeaseStore(), Clock()
    a = elector(store, clock, "op-a")
    run(a.try_acquire_or_renew())
    a.leading.set()
    assert a.valid()
    clock.now += 30  # SIGSTOP for 30 s: the monotonic clock kept running
    assert not a.valid()


class Sleeper:
    """A sleep that advances the fake clock (and lets other tasks run)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def __call__(self, stop: asyncio.Event, seconds: float) -> None:
        self.clock.now += seconds
        await asyncio.sleep(0)


def test_run_leads_renews_steps_down_when_cut_off_and_campaigns_again():
    store, clock = LeaseStore(), Clock()
    a = LeaderElector(store.client("op-a"), settings("op-a"), clock=clock, wall=clock.wall, sleep=Sleeper(clock))
    log: list[str] = []

    async def until(predicate) -> None:
        for _ in range(10_000):
            if predicate():
                return
            await asyncio.sleep(0)
        raise AssertionError("never happened")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop, lambda: log.append("started"), lambda: log.append("stopped")))
        await until(lambda: "started" in log)
        renewals = len(store.writes)
        await until(lambda: len(store.writes) >= renewals + 3)  # renews every retry period
        assert a.valid()
        store.down.add("op-a")
        await until(lambda: "stopped" in log)
        assert not a.valid() and a.term is None and not a.leading.is_set()
        store.down.discard("op-a")
        await until(lambda: log.count("started") == 2)
        stop.set()
        await task

    run(scenario())
    assert log == ["started", "stopped", "started", "stopped"]
    assert a.terms_started == 2 and LeaseRecord.from_lease(store.lease).transitions == 1
    assert "holderIdentity" not in store.lease["spec"]  # released on stop


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"lease_duration_seconds": 10, "renew_deadline_seconds": 10}, "longer than the renew deadline"),
        ({"renew_deadline_seconds": 2, "retry_period_seconds": 2}, "1.2 x the retry period"),
        ({"identity": ""}, "identity"),
    ],
)
def test_settings_that_would_let_two_leaders_overlap_are_refused(kw, words):
    base = {"namespace": "ns", "identity": "me"} | kw
    with pytest.raises(ValueError, match=words):
        ElectionSettings(**base)


def test_a_renewal_that_hangs_ends_the_leadership_at_the_renew_deadline():
    """A renewal request on a dead connection does not keep the process leading until its HTTP timeout."""
    store = LeaseStore()
    fast = ElectionSettings(namespace="etj-system", identity="op-a", lease_duration_seconds=0.6,
                            renew_deadline_seconds=0.3, retry_period_seconds=0.05)
    client = store.client("op-a")
    hang = asyncio.Event()

    async def replace_hanging(lease):
        if hang.is_set():
            await asyncio.Event().wait()  # never answers
        return await Client.replace_lease(client, lease)

    client.replace_lease = replace_hanging
    a = LeaderElector(client, fast)
    log: list[str] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop, lambda: log.append("started"), lambda: log.append("stopped")))
        for _ in range(2000):
            if "started" in log:
                break
            await asyncio.sleep(0.005)
        hang.set()
        for _ in range(2000):  # stepped down by the deadline, not after the (endless) request
            if "stopped" in log:
                break
            await asyncio.sleep(0.005)
        assert log == ["started", "stopped"] and not a.valid()
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run(scenario())
