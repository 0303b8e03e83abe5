"""The node agent's loop: every cycle, bring every GPU of the node to the limit it should have.

Level-triggered: a cycle reads everything afresh and converges, so an agent started (or restarted) mid-job
re-applies every cap on its first cycle, and a GPU whose worker was SIGKILLed, whose pod finished or whose job
was deleted goes back to its default limit on the next cycle. One cycle:

1. list the node's GPUs (the backend);
2. read the kubelet's allocations (PodResources ``List``), the node's pods (``spec.nodeName``) and the jobs
   those pods' controller ownerReferences name (read by name, kept only when the UID matches);
3. decide every GPU's limit (:func:`~etj_operator.nodeagent.plan.plan_node`);
4. set a limit only where the one read back differs (by more than ``tolerance_mw``), read it back again;
5. publish the metrics snapshot; log what changed (a decision, a limit set, an error), never every cycle.

Failures:

* **An input that fails** (the kubelet's socket, the API): the last good answer is used for up to
  ``grace_seconds`` after it was read, so a blip neither uncaps a job nor caps anything new. An input never
  read since the agent started keeps every limit it governs as it is (``InputsPending``) for the grace, counted
  from the start. Past the grace the input is *expired*: the GPUs that depend on it go back to their default
  limit (``InputsExpired``), since the agent can no longer say whose cap it would keep. The kubelet's answer
  alone suffices to reset a GPU nobody holds. ``etj_node_agent_input_up``, ``_input_age_seconds`` and
  ``_input_expired`` show it; the log says it once per change.
* **A GPU that refuses a limit** (NVML's error): counted in ``etj_node_agent_apply_errors_total``, shown in
  ``etj_node_agent_gpu_error`` while it lasts, and retried with a backoff (one cycle, then 2, 4, ... up to
  ``retry_cap_seconds``), at once when the wanted limit changes. Never a hot loop.
* **Shutdown** (SIGTERM): with ``reset_on_exit`` (the default) every GPU goes back to its default limit, except
  the GPUs of Auto pods whose harness chose the limit (``PodManaged``: the pod owns it and resets it when it
  ends; if it is killed, the next agent resets the GPU once the kubelet no longer lists it). The agent cannot
  tell an upgrade from an uninstall, and an uninstall must not leave GPUs capped; during an upgrade the caps
  are off for the seconds until the new agent's first cycle.

The clock and every reader are injected (tests drive cycles with a fake clock; nothing here sleeps but
:meth:`NodeAgent.run`, through the clock).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from etj_contract import agent as a
from etj_operator.nodeagent.gpus import GpuBackend, GpuError, Inventory, LimitReading
from etj_operator.nodeagent.intent import job_intent
from etj_operator.nodeagent.metrics import AgentSnapshot, GpuStatus, InputStatus, render
from etj_operator.nodeagent.plan import plan_node
from etj_operator.nodeagent.records import (
    ContainerAllocation,
    Decision,
    GpuDevice,
    JobIntent,
    NodePlan,
    PodInfo,
    Unavailable,
    UnknownDevice,
)

__all__ = ["AgentSettings", "AllocationSource", "Clock", "ClusterReader", "NodeAgent", "SystemClock"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Clock(Protocol):
    """Time as the agent sees it (tests use a fake one)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Return when ``event`` is set or ``seconds`` have passed."""


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Wait for the event, at most ``seconds``."""
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            pass


class AllocationSource(Protocol):
    """The kubelet's allocations (:class:`~etj_operator.nodeagent.podresources.PodResourcesClient`)."""

    def list(self) -> list[ContainerAllocation]:
        """Every (pod, container, resource) allocation of the node; raises on failure."""


class ClusterReader(Protocol):
    """The API as the agent reads it (:class:`~etj_operator.nodeagent.kube.KubeClusterReader`)."""

    async def pods_on_node(self, node: str) -> list[PodInfo]:
        """The pods bound to ``node``; raises on failure."""

    async def job(self, namespace: str, name: str, uid: str) -> Mapping[str, Any] | None:
        """The job of that name whose UID is ``uid``; None when there is none (gone, or re-created); raises."""


@dataclass(frozen=True)
class AgentSettings:
    """How the agent runs."""

    #: The node's name (the pods' ``spec.nodeName``; the metrics' ``Hostname``).
    node: str
    #: Seconds between cycles.
    interval_seconds: float = 10.0
    #: How long the last good answer of a failing input is used, and how long an input never read keeps the
    #: limits in force. Units: s.
    grace_seconds: float = 120.0
    #: Device-plugin resources whose devices are GPUs.
    resources: tuple[str, ...] = (a.RESOURCE_NVIDIA_GPU,)
    #: First retry delay after a GPU refused a limit (None: one interval), and the largest. Units: s.
    retry_base_seconds: float | None = None
    retry_cap_seconds: float = 300.0
    #: Reset the GPUs to their default limits when the agent stops (see the module).
    reset_on_exit: bool = True
    #: A limit read back within this of the wanted one counts as applied. Units: mW.
    tolerance_mw: int = 500


@dataclass
class _Input(Generic[T]):
    """An input's last good value, when it was read, and whether the latest read worked."""

    name: str
    ok_at: float
    value: T | None = None
    up: bool = False
    #: Whether the failure (and its expiry) were logged: each is logged once, when it begins.
    failing_logged: bool = False
    expired_logged: bool = False

    def state(self, now: float, grace: float) -> T | Unavailable:
        if now - self.ok_at > grace:
            return Unavailable.EXPIRED
        if self.value is None:
            return Unavailable.PENDING
        return self.value


@dataclass
class _JobEntry:
    """A job's intent as last read (``ok_at`` None: never read yet)."""

    namespace: str
    name: str
    since: float
    intent: JobIntent | None = None
    ok_at: float | None = None
    problems: tuple[str, ...] = ()


@dataclass
class _Failure:
    """A GPU that refused ``target_mw``: how often, and when to try again."""

    target_mw: int
    attempts: int
    retry_at: float
    error: GpuError


@dataclass
class _Counters:
    applies: dict[str, int] = field(default_factory=dict)
    apply_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    cycles: int = 0


def _w(milliwatts: int | None) -> str:
    return "?" if milliwatts is None else f"{milliwatts / 1000:g} W"


def _describe(d: Decision) -> str:
    who = ", ".join(f"{h.namespace}/{h.pod}" for h in d.holders) or "no pod"
    job = f" job uid {d.job_uid}" if d.job_uid else ""
    note = f"; {d.note}" if d.note else ""
    return f"{d.reason} ({who}{job}{note})"


class NodeAgent:
    """The agent of one node (see the module). Call :meth:`cycle` (tests) or :meth:`run` (the command)."""

    def __init__(
        self,
        settings: AgentSettings,
        gpus: GpuBackend,
        allocations: AllocationSource,
        cluster: ClusterReader,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.gpus = gpus
        self.allocations = allocations
        self.cluster = cluster
        self.clock: Clock = clock or SystemClock()
        now = self.clock.monotonic()
        self.started_at = now
        self._kubelet: _Input[list[ContainerAllocation]] = _Input(a.INPUT_KUBELET, now)
        self._pods: _Input[list[PodInfo]] = _Input(a.INPUT_API, now)
        self._jobs: dict[str, _JobEntry] = {}
        self._failures: dict[str, _Failure] = {}
        self._last_decisions: dict[str, tuple[object, ...]] = {}
        #: GPUs an Auto job's ceiling lowered: uuid -> (job UID, the ceiling set, the limit it replaced), in mW.
        #: When the cap is lifted while the GPU is still at that ceiling, the replaced limit (the pod's own
        #: choice) is given back. Lost on an agent restart: the GPU then keeps the ceiling until its pod ends.
        self._lowered: dict[str, tuple[str | None, int, int]] = {}
        self._unknown_logged: set[UnknownDevice] = set()
        self._inventory_error_text = ""
        self._counters = _Counters()
        self.last_cycle_at: float | None = None
        self.plan: NodePlan | None = None
        self.snapshot = AgentSnapshot(hostname=settings.node, source=gpus.source)
        self.metrics_text = render(self.snapshot)

    # --- inputs ------------------------------------------------------------------------------------------------
    def _read_failed(self, item: _Input[Any], now: float, error: BaseException) -> None:
        item.up = False
        if not item.failing_logged:
            item.failing_logged = True
            kept = "the last good answer" if item.value is not None else "the limits in force"
            logger.warning("%s unreadable: %s; keeping %s for up to %g s", item.name, error, kept,
                           self.settings.grace_seconds - (now - item.ok_at))
        if now - item.ok_at > self.settings.grace_seconds and not item.expired_logged:
            item.expired_logged = True
            logger.error("%s unreadable for more than %g s (%s): the GPUs it governs go back to their default "
                         "limits", item.name, self.settings.grace_seconds, error)

    def _read_ok(self, item: _Input[T], now: float, value: T) -> None:
        if item.failing_logged:
            logger.info("%s readable again", item.name)
        item.value, item.ok_at, item.up = value, now, True
        item.failing_logged = item.expired_logged = False

    async def _read_allocations(self, now: float) -> None:
        try:
            value = await asyncio.to_thread(self.allocations.list)
        except Exception as e:  # any failure of the kubelet's answer is the same to the agent
            self._read_failed(self._kubelet, now, e)
        else:
            self._read_ok(self._kubelet, now, value)

    async def _read_pods(self, now: float) -> None:
        try:
            value = await self.cluster.pods_on_node(self.settings.node)
        except Exception as e:
            self._read_failed(self._pods, now, e)
        else:
            self._read_ok(self._pods, now, value)

    async def _read_jobs(self, now: float, allocations: list[ContainerAllocation] | Unavailable,
                         pods: list[PodInfo] | Unavailable) -> tuple[dict[str, JobIntent | Unavailable], bool]:
        """The intent of every job whose pods hold an allocation here; and whether every read worked."""
        if isinstance(allocations, Unavailable) or isinstance(pods, Unavailable):
            return {}, True
        holding = {(c.namespace, c.pod) for c in allocations if c.resource in self.settings.resources}
        needed: dict[str, tuple[str, str]] = {}
        for pod in pods:
            if pod.job_uid and pod.job_name and (pod.namespace, pod.name) in holding:
                needed[pod.job_uid] = (pod.namespace, pod.job_name)
        for uid in list(self._jobs):
            if uid not in needed:
                del self._jobs[uid]
        for uid, (namespace, name) in needed.items():
            self._jobs.setdefault(uid, _JobEntry(namespace, name, since=now))
        uids = list(needed)
        results = await asyncio.gather(
            *(self.cluster.job(needed[uid][0], needed[uid][1], uid) for uid in uids), return_exceptions=True
        )
        intents: dict[str, JobIntent | Unavailable] = {}
        all_ok = True
        grace = self.settings.grace_seconds
        for uid, result in zip(uids, results, strict=True):
            entry = self._jobs[uid]
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                all_ok = False
                logger.debug("job %s/%s (uid %s) unreadable: %s", entry.namespace, entry.name, uid, result)
                if entry.ok_at is not None and now - entry.ok_at <= grace:
                    if entry.intent is not None:
                        intents[uid] = entry.intent  # else: gone when last read
                elif entry.ok_at is None and now - entry.since <= grace:
                    intents[uid] = Unavailable.PENDING
                else:
                    intents[uid] = Unavailable.EXPIRED
                continue
            entry.ok_at = now
            if result is None:
                entry.intent = None
                continue
            intent = job_intent(result)
            entry.intent = intent
            intents[uid] = intent
            if intent.problems != entry.problems:
                entry.problems = intent.problems
                for problem in intent.problems:
                    logger.warning("job %s/%s (uid %s): %s", entry.namespace, entry.name, uid, problem)
        return intents, all_ok

    # --- one cycle -------------------------------------------------------------------------------------------
    def _inventory(self) -> Inventory | GpuError:
        try:
            inventory = self.gpus.inventory()
        except GpuError as e:
            if str(e) != self._inventory_error_text:
                self._inventory_error_text = str(e)
                logger.error("cannot list the node's GPUs: %s", e)
            return e
        text = "; ".join(str(e) for e in inventory.errors)
        if text != self._inventory_error_text:
            self._inventory_error_text = text
            if text:
                logger.error("some GPUs cannot be listed: %s", text)
            else:
                logger.info("every GPU of the node is listed (%d)", len(inventory.devices))
        return inventory

    def _read_limit(self, device: GpuDevice) -> LimitReading | GpuError:
        try:
            return self.gpus.read_limit(device)
        except GpuError as e:
            return e

    def _retry_delay(self, attempts: int) -> float:
        base = self.settings.retry_base_seconds or self.settings.interval_seconds
        return float(min(self.settings.retry_cap_seconds, base * 2 ** min(attempts - 1, 32)))

    def _wanted(self, decision: Decision, reading: LimitReading) -> int | None:
        """The limit to set now, or None when the one in force will do."""
        target, tolerance = decision.target_mw, self.settings.tolerance_mw
        if decision.action == "leave" or target is None:
            return None
        if decision.action == "ceiling":
            return target if reading.limit_mw > target + tolerance else None
        return target if abs(reading.limit_mw - target) > tolerance else None

    def _lift(self, decision: Decision) -> Decision:
        """``decision``, or, for an Auto GPU whose ceiling was lifted, the limit the ceiling had replaced."""
        lowered = self._lowered.get(decision.device.uuid)
        if lowered is None:
            return decision
        job_uid, ceiling_mw, previous_mw = lowered
        if decision.action == "ceiling" and decision.job_uid == job_uid:
            return decision  # still capped: keep the record
        del self._lowered[decision.device.uuid]
        if decision.reason != a.REASON_POD_MANAGED or decision.job_uid != job_uid:
            return decision  # another owner or another verdict now decides the GPU
        reading = self._read_limit(decision.device)
        if isinstance(reading, GpuError) or abs(reading.limit_mw - ceiling_mw) > self.settings.tolerance_mw:
            return decision  # the pod has set its own limit since: leave it
        return dataclasses.replace(decision, action="set", target_mw=previous_mw, reason=a.REASON_CEILING_LIFTED)

    def _apply(self, decision: Decision, now: float) -> GpuStatus:
        decision = self._lift(decision)
        device = decision.device
        uuid = device.uuid
        key = (decision.action, decision.target_mw, decision.reason, decision.job_uid,
               tuple((h.namespace, h.pod) for h in decision.holders))
        if self._last_decisions.get(uuid) != key:
            self._last_decisions[uuid] = key
            target = "keep the limit in force" if decision.action == "leave" else (
                f"at most {_w(decision.target_mw)}" if decision.action == "ceiling" else _w(decision.target_mw))
            logger.info("GPU %d (%s): %s: %s", device.index, uuid, target, _describe(decision))
        reading = self._read_limit(device)
        if isinstance(reading, GpuError):
            return GpuStatus(device, decision, None, (reading,))
        wanted = self._wanted(decision, reading)
        if wanted is None:
            self._failures.pop(uuid, None)
            return GpuStatus(device, decision, reading)
        failure = self._failures.get(uuid)
        if failure is not None and failure.target_mw == wanted and now < failure.retry_at:
            return GpuStatus(device, decision, reading, (failure.error,))
        try:
            self.gpus.set_limit(device, wanted)
        except GpuError as e:
            attempts = failure.attempts + 1 if failure is not None and failure.target_mw == wanted else 1
            delay = self._retry_delay(attempts)
            self._failures[uuid] = _Failure(wanted, attempts, now + delay, e)
            errors_key = (uuid, e.kind)
            self._counters.apply_errors[errors_key] = self._counters.apply_errors.get(errors_key, 0) + 1
            logger.warning("GPU %d (%s): cannot set %s (attempt %d, next in %g s): %s", device.index, uuid,
                           _w(wanted), attempts, delay, e)
            return GpuStatus(device, decision, reading, (e,))
        self._failures.pop(uuid, None)
        if decision.action == "ceiling":
            self._lowered[uuid] = (decision.job_uid, wanted, reading.limit_mw)
        self._counters.applies[uuid] = self._counters.applies.get(uuid, 0) + 1
        logger.info("GPU %d (%s): limit %s -> %s (%s)", device.index, uuid, _w(reading.limit_mw), _w(wanted),
                    decision.reason)
        after = self._read_limit(device)
        if isinstance(after, GpuError):
            return GpuStatus(device, decision, None, (after,))
        return GpuStatus(device, decision, after)

    def _inputs(self, now: float, api_ok: bool) -> tuple[InputStatus, ...]:
        grace = self.settings.grace_seconds
        return tuple(
            InputStatus(item.name, up, now - item.ok_at, now - item.ok_at > grace)
            for item, up in ((self._kubelet, self._kubelet.up), (self._pods, self._pods.up and api_ok))
        )

    def _publish(self, snapshot: AgentSnapshot) -> AgentSnapshot:
        self.snapshot = snapshot
        self.metrics_text = render(snapshot)
        return snapshot

    async def cycle(self) -> AgentSnapshot:
        """One reconcile of every GPU of the node; returns (and publishes) the metrics snapshot."""
        now = self.clock.monotonic()
        self._counters.cycles += 1
        inventory = self._inventory()
        await self._read_allocations(now)
        await self._read_pods(now)
        grace = self.settings.grace_seconds
        allocations = self._kubelet.state(now, grace)
        pods = self._pods.state(now, grace)
        intents, jobs_ok = await self._read_jobs(now, allocations, pods)
        common: dict[str, Any] = {
            "hostname": self.settings.node,
            "source": self.gpus.source,
            "inputs": self._inputs(now, jobs_ok),
            "applies": dict(self._counters.applies),
            "apply_errors": dict(self._counters.apply_errors),
            "cycles": self._counters.cycles,
        }
        if isinstance(inventory, GpuError):
            self.last_cycle_at = now
            return self._publish(AgentSnapshot(inventory_errors=(inventory,), **common))
        plan = plan_node(inventory.devices, allocations, pods, intents, self.settings.resources)
        self.plan = plan
        for unknown in set(plan.unknown_devices) - self._unknown_logged:
            logger.warning("%s/%s container %s holds device %s, which is no GPU of this node", unknown.namespace,
                           unknown.pod, unknown.container, unknown.device_id)
        self._unknown_logged = set(plan.unknown_devices)
        statuses = [self._apply(decision, now) for decision in plan.decisions]
        present = {d.uuid for d in inventory.devices}
        for uuid in set(self._last_decisions) - present:
            del self._last_decisions[uuid]
            self._failures.pop(uuid, None)
        common["applies"] = dict(self._counters.applies)
        common["apply_errors"] = dict(self._counters.apply_errors)
        self.last_cycle_at = now
        return self._publish(AgentSnapshot(gpus=tuple(statuses), inventory_errors=inventory.errors,
                                           unknown_devices=plan.unknown_devices, **common))

    # --- the loop ------------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """Whether a cycle finished within the last three intervals (the liveness probe)."""
        if self.last_cycle_at is None:
            return self.clock.monotonic() - self.started_at <= 3 * self.settings.interval_seconds + 30
        return self.clock.monotonic() - self.last_cycle_at <= 3 * self.settings.interval_seconds + 30

    def release(self) -> int:
        """Reset every GPU to its default limit, except those an Auto pod's harness manages; the number set."""
        inventory = self._inventory()
        if isinstance(inventory, GpuError):
            return 0
        decisions = self.plan.by_uuid() if self.plan else {}
        count = 0
        for device in inventory.devices:
            last = decisions.get(device.uuid)
            if last is not None and last.reason == a.REASON_POD_MANAGED:
                continue
            reading = self._read_limit(device)
            if isinstance(reading, GpuError):
                logger.warning("on exit: %s", reading)
                continue
            if abs(reading.limit_mw - device.default_mw) <= self.settings.tolerance_mw:
                continue
            try:
                self.gpus.set_limit(device, device.default_mw)
            except GpuError as e:
                logger.error("on exit: GPU %d (%s) stays at %s: %s", device.index, device.uuid,
                             _w(reading.limit_mw), e)
                continue
            count += 1
            logger.info("on exit: GPU %d (%s): limit %s -> default %s", device.index, device.uuid,
                        _w(reading.limit_mw), _w(device.default_mw))
        return count

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle every ``interval_seconds`` until ``stop`` is set; then release the GPUs (``reset_on_exit``)."""
        logger.info("node agent for %s: %s GPUs, every %g s, grace %g s", self.settings.node, self.gpus.source,
                    self.settings.interval_seconds, self.settings.grace_seconds)
        try:
            while not stop.is_set():
                started = self.clock.monotonic()
                try:
                    await self.cycle()
                except Exception:
                    logger.exception("node agent cycle failed")
                elapsed = self.clock.monotonic() - started
                await self.clock.wait(stop, max(0.0, self.settings.interval_seconds - elapsed))
        finally:
            if self.settings.reset_on_exit:
                released = await asyncio.to_thread(self.release)
                logger.info("node agent stopped; %d GPU limit(s) reset to default", released)
            else:
                logger.info("node agent stopped; GPU limits left as they are (reset_on_exit off)")
