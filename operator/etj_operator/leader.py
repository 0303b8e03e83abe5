"""Leader election on a ``coordination.k8s.io/v1`` Lease, with the semantics of client-go's leaderelection.

Several operator processes may run at once: the chart's two replicas, a node whose kubelet died keeping the
old pod running while a new one starts, ``kubectl scale``, a developer's local ``etj operator``. Only the
leader makes reconcile passes; the others (standbys) keep their informers synced and their job loops
waiting, so a failover costs one lease duration and no cold start.

The rules, as client-go's ``tryAcquireOrRenew``:

* the Lease's ``holderIdentity`` is the leader; it renews ``renewTime`` every ``retry_period``;
* a candidate takes the Lease only when it is free (no holder: released) or when the record it last read
  has not changed for ``lease_duration`` *by its own monotonic clock* (the record's times are written by
  another machine's clock and are not compared with ours);
* every write of the Lease carries the ``resourceVersion`` it read: two candidates cannot both win;
* a leader that has not renewed within ``renew_deadline`` of its last successful renewal stops acting
  (:meth:`LeaderElector.valid` turns False at once, then the loops are cancelled). ``renew_deadline`` is
  shorter than ``lease_duration``: the old leader has stopped before anyone may take the Lease;
* a leader that stops cleanly releases the Lease (no holder, a 1 s duration), so its standby takes over
  within a retry period instead of a lease duration (a rolling update's handover).

The **term** of a leadership (:attr:`LeaderElector.term`: the transition count, the holder and the
acquisition time) is what the operator's writes are fenced with: see docs/reliability.md and
:func:`etj_operator.kubeapi.status_operations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from prometheus_client import Counter, Gauge

from etj_operator.errors import ApiStatusError, ConflictError
from etj_operator.metrics import REGISTRY

__all__ = [
    "FENCED_WRITES",
    "LEADER",
    "LEADER_TERMS",
    "LEASE_API_VERSION",
    "ElectionSettings",
    "LeaderElector",
    "LeaseClient",
    "LeaseRecord",
    "NotLeader",
]

logger = logging.getLogger(__name__)

LEASE_API_VERSION: Final = "coordination.k8s.io/v1"
LEADER = Gauge("etj_leader", "1 while this operator process leads (holds the Lease and renewed it in time).",
               registry=REGISTRY)
LEADER_TERMS = Counter("etj_leader_terms_total", "Leaderships this process began.", registry=REGISTRY)
FENCED_WRITES = Counter(
    "etj_fenced_writes_total",
    "Status writes refused because another leader term had stamped the job since (a stale leader's write).",
    registry=REGISTRY,
)

#: client-go's JitterFactor: a candidate waits a retry period plus up to this fraction more between tries.
JITTER_FACTOR: Final = 1.2


class NotLeader(Exception):
    """The operator is not the leader (or no longer knows that it is): nothing was written."""


@dataclass(frozen=True)
class ElectionSettings:
    """Where the Lease is and how long a leadership lasts (client-go's LeaderElectionConfig)."""

    namespace: str
    identity: str
    name: str = "etj-operator"
    #: How long a standby waits, after the record last changed, before it takes the Lease.
    lease_duration_seconds: float = 15.0
    #: How long the leader tries to renew before it stops acting.
    renew_deadline_seconds: float = 10.0
    #: Time between two tries (to acquire, or to renew).
    retry_period_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not self.namespace or not self.identity or not self.name:
            raise ValueError("leader election needs a namespace, a lease name and an identity")
        if self.retry_period_seconds <= 0:
            raise ValueError("the retry period must be positive")
        if self.renew_deadline_seconds <= JITTER_FACTOR * self.retry_period_seconds:
            raise ValueError(
                f"the renew deadline ({self.renew_deadline_seconds:g} s) must be longer than "
                f"{JITTER_FACTOR} x the retry period ({self.retry_period_seconds:g} s)"
            )
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            raise ValueError(
                f"the lease duration ({self.lease_duration_seconds:g} s) must be longer than the renew deadline "
                f"({self.renew_deadline_seconds:g} s): a leader must stop before its lease can be taken"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as the election reads and writes it."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        """The record in a Lease object (missing or odd fields read as empty)."""
        spec = lease.get("spec") if isinstance(lease.get("spec"), Mapping) else {}
        assert isinstance(spec, Mapping)

        def integer(key: str) -> int:
            value = spec.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def text(key: str) -> str | None:
            value = spec.get(key)
            return value if isinstance(value, str) and value else None

        return cls(
            holder=text("holderIdentity") or "",
            duration_seconds=integer("leaseDurationSeconds"),
            acquire_time=text("acquireTime"),
            renew_time=text("renewTime"),
            transitions=integer("leaseTransitions"),
        )

    def to_spec(self) -> dict[str, Any]:
        """The Lease's ``spec`` (holderIdentity left out when empty: a released Lease)."""
        spec: dict[str, Any] = {"leaseDurationSeconds": self.duration_seconds, "leaseTransitions": self.transitions}
        if self.holder:
            spec["holderIdentity"] = self.holder
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec

    @property
    def term(self) -> str:
        """The leadership's name: ``<transitions>/<holder>/<acquireTime>`` (unique per acquisition)."""
        return f"{self.transitions}/{self.holder}/{self.acquire_time or ''}"


class LeaseClient(Protocol):
    """The three Lease calls the election makes (``etj_operator.kubeapi.KubeApi`` implements them)."""

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None when there is none."""
        ...

    async def create_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Lease; :class:`ConflictError` when it exists."""
        ...

    async def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the Lease (PUT, with the resourceVersion read); :class:`ConflictError` when it changed."""
        ...


def _micro_time(moment: datetime) -> str:
    """A MicroTime as the API writes it: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Sleeper = Callable[[asyncio.Event, float], Awaitable[None]]


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


class LeaderElector:
    """Campaigns for the Lease, renews it while leading, and says at every moment whether writes may go out.

    ``clock`` (monotonic seconds), ``wall`` (the time written into the Lease) and ``sleep`` are the only
    timing seams; tests give a fake clock and a sleep that advances it.
    """

    def __init__(
        self,
        client: LeaseClient,
        settings: ElectionSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Sleeper = _sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rng = rng or random.Random()
        #: Set while this process leads (and :meth:`valid`); cleared the moment it stops.
        self.leading = asyncio.Event()
        #: The term this process leads in (None while it does not lead).
        self.term: str | None = None
        #: How many times this process became leader, and lost (or gave up) the leadership.
        self.terms_started = 0
        self.terms_lost = 0
        self._renewed_at: float | None = None
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._resource_version: str | None = None

    # --- the fence ------------------------------------------------------------------------------------
    def valid(self) -> bool:
        """Whether this process may write now: it leads, and renewed within the renew deadline."""
        return (
            self.leading.is_set()
            and self._renewed_at is not None
            and self._clock() - self._renewed_at < self.settings.renew_deadline_seconds
        )

    def check(self) -> None:
        """Raise :class:`NotLeader` unless :meth:`valid`: called before every write the operator sends."""
        if not self.valid():
            raise NotLeader(f"{self.settings.identity} does not lead (lease {self._where})")

    @property
    def _where(self) -> str:
        return f"{self.settings.namespace}/{self.settings.name}"

    @property
    def holder(self) -> str:
        """The holder of the Lease as last read ("" when free or unknown)."""
        return self._observed.holder if self._observed is not None else ""

    # --- one try ----------------------------------------------------------------------------------------
    async def try_acquire_or_renew(self) -> bool:
        """One attempt to take or keep the Lease; True when this process holds it now."""
        s = self.settings
        started = self._clock()
        now = _micro_time(self._wall())
        me = s.identity
        duration = max(1, round(s.lease_duration_seconds))
        try:
            lease = await self.client.get_lease(s.namespace, s.name)
            if lease is None:
                record = LeaseRecord(me, duration, now, now, 0)
                created = await self.client.create_lease(self._lease(record, None))
                self._took(record, created, started)
                return True
            current = LeaseRecord.from_lease(lease)
            if current != self._observed:
                self._observed, self._observed_at = current, self._clock()
            self._resource_version = (lease.get("metadata") or {}).get("resourceVersion")
            held = current.holder and current.holder != me
            if held and self._observed_at + max(current.duration_seconds, 1) > self._clock():
                return False  # held, and renewed within its duration as far as we can tell
            if current.holder == me and self.leading.is_set():
                record = LeaseRecord(me, duration, current.acquire_time, now, current.transitions)
            else:
                # a new leadership: a new transition (also when the Lease names us from an earlier run)
                record = LeaseRecord(me, duration, now, now, current.transitions + 1)
            replaced = await self.client.replace_lease(self._lease(record, self._resource_version))
        except ConflictError:
            return False  # someone else wrote the Lease since we read it
        except ApiStatusError as e:
            logger.warning("lease %s: %s", self._where, e)
            return False
        self._took(record, replaced, started)
        return True

    def _lease(self, record: LeaseRecord, resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.settings.name, "namespace": self.settings.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": LEASE_API_VERSION, "kind": "Lease", "metadata": metadata, "spec": record.to_spec()}

    def _took(self, record: LeaseRecord, answer: Mapping[str, Any], started: float) -> None:
        # Validity counts from before the request went out: the Lease may have been written at any moment
        # of the round trip, and standbys count its duration from when they see the change.
        self._renewed_at = started
        self._observed, self._observed_at = record, self._clock()
        self._resource_version = (answer.get("metadata") or {}).get("resourceVersion") if answer else None
        if self.term is None or not self.leading.is_set():
            self.term = record.term

    # --- the campaign -------------------------------------------------------------------------------------
    async def run(
        self,
        stop: asyncio.Event,
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        """Campaign, lead, renew; when a renewal misses its deadline, stop leading and campaign again.

        Returns when ``stop`` is set, releasing the Lease if this process leads.
        """
        s = self.settings
        while not stop.is_set():
            while not stop.is_set():
                if await self.try_acquire_or_renew():
                    break
                await self._sleep(stop, s.retry_period_seconds * (1 + self._rng.random() * (JITTER_FACTOR - 1)))
            if stop.is_set():
                break
            self.leading.set()
            self.terms_started += 1
            LEADER.set(1)
            LEADER_TERMS.inc()
            logger.info("became the leader (lease %s, term %s)", self._where, self.term)
            if on_started is not None:
                on_started()
            while not stop.is_set() and await self._renew(stop):
                pass
            self._step_down(on_stopped, "stopping" if stop.is_set() else "could not renew the lease")
        await self.release()

    async def _renew(self, stop: asyncio.Event) -> bool:
        """Wait a retry period, then renew, retrying until the renew deadline; False when that failed."""
        s = self.settings
        await self._sleep(stop, s.retry_period_seconds)
        if stop.is_set():
            return False
        while self.valid():
            assert self._renewed_at is not None
            # An attempt may take no longer than what is left of the deadline (client-go gives each its own
            # timeout too): a renewal hanging on a dead connection must not keep this process "leading".
            left = self._renewed_at + s.renew_deadline_seconds - self._clock()
            try:
                renewed = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=max(left, 0.001))
            except TimeoutError:
                renewed = False
            if renewed and self.holder == s.identity:
                return True
            if not self.valid():
                break
            assert self._renewed_at is not None
            left = self._renewed_at + s.renew_deadline_seconds - self._clock()
            await self._sleep(stop, min(s.retry_period_seconds, max(left, 0.0)))
            if stop.is_set():
                return False
        return False

    def _step_down(self, on_stopped: Callable[[], None] | None, why: str) -> None:
        self.leading.clear()
        LEADER.set(0)
        self.terms_lost += 1
        logger.warning("stopped leading (lease %s, term %s): %s", self._where, self.term, why)
        self.term = None
        if on_stopped is not None:
            on_stopped()

    async def release(self) -> None:
        """Give the Lease up if this process holds it (as client-go's ReleaseOnCancel): no holder, 1 s."""
        if self._observed is None or self._observed.holder != self.settings.identity or self._renewed_at is None:
            return
        now = _micro_time(self._wall())
        record = LeaseRecord("", 1, now, now, self._observed.transitions)
        try:
            await self.client.replace_lease(self._lease(record, self._resource_version))
        except ApiStatusError as e:
            logger.warning("lease %s: not released: %s", self._where, e)
            return
        self._observed, self._renewed_at = record, None
        logger.info("released the lease %s", self._where)
