"""The telemetry cycle: one batched read for all jobs, results handed to each job's lifecycle loop.

Job loops :meth:`TelemetryHub.register` what they need read (their pods, their source). Every cycle the hub
groups the registrations by source (Prometheus URL, or Direct), asks each source once for *all* its pods,
splits the readings per job, evaluates each distinct carbon-intensity query once, and delivers a
:class:`JobTelemetry` per job (``take``), waking the job's loop. The hub holds no accounting state: energy
totals live in each job's status, written by the job's own loop (one writer per job).

A job's spec may name its own Prometheus URL and carbon-intensity query; :class:`SourceAccess` (operator
settings) says which ones the operator accepts. A registration the operator refused (``refused``) is never
read: its delivery says ``SourceNotAllowed`` and no request is made for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from etj_operator.metrics import TELEMETRY_CYCLE_SECONDS, TELEMETRY_ERRORS, TELEMETRY_REQUESTS
from etj_operator.telemetry.base import (
    AgentFindings,
    GpuSample,
    JobTelemetry,
    PodTarget,
    TelemetryCause,
    TelemetrySource,
)
from etj_operator.telemetry.metrics import TELEMETRY_REJECTED_SERIES

if TYPE_CHECKING:
    from etj_operator.config import OperatorConfig

logger = logging.getLogger(__name__)

JobKey = tuple[str, str]
SourceKey = tuple[str, str]  # (kind, Prometheus URL or "")


@dataclass(frozen=True)
class JobRegistration:
    """What a job needs read each cycle."""

    key: JobKey
    source: str  # "Prometheus" | "Direct"
    prometheus_url: str
    targets: tuple[PodTarget, ...]
    intensity_query: str | None = None
    #: The job's own spec.energy.telemetry.intervalSeconds: it is read on the first cycle at least this long
    #: after its previous read (so its effective interval is the larger of this and the hub's).
    interval_seconds: float = 0.0
    #: Why the operator refuses the Prometheus URL the job's spec names (:class:`SourceAccess`); set: the job
    #: is not read at all.
    refused: str = ""
    #: Why it refuses the job's carbon-intensity query; set: the query is never run, the GPUs are still read
    #: (a refused query must not switch off the job's energy accounting and budget).
    intensity_refused: str = ""


def _normal_url(url: str) -> str:
    """A URL as compared with the allowlist: scheme and host in lower case, no trailing slash."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


@dataclass(frozen=True)
class SourceAccess:
    """Which Prometheus URLs and carbon-intensity queries a job's spec may name (operator settings).

    A job may name the operator's own Prometheus (``default_url``) or one of ``allowed_urls``, and a query of
    ``intensity_queries`` (exact text) or, with ``any_intensity_query``, any query. Anything else is refused
    before a request is made: a URL could point the operator's credentials at any server, and a query could
    read any series of the operator's Prometheus into the job's status.
    """

    default_url: str
    allowed_urls: frozenset[str] = frozenset()
    intensity_queries: frozenset[str] = frozenset()
    any_intensity_query: bool = False

    @classmethod
    def create(
        cls,
        default_url: str,
        allowed_urls: Collection[str] = (),
        intensity_queries: Collection[str] = (),
        *,
        any_intensity_query: bool = False,
    ) -> SourceAccess:
        """The access with URLs compared normalised and queries stripped."""
        return cls(
            _normal_url(default_url),
            frozenset(_normal_url(u) for u in allowed_urls),
            frozenset(q.strip() for q in intensity_queries),
            any_intensity_query,
        )

    @classmethod
    def from_config(cls, config: OperatorConfig) -> SourceAccess:
        """From ETJ_PROMETHEUS_URL, _ALLOWED_URLS, _INTENSITY_QUERIES and _ALLOW_ANY_INTENSITY_QUERY."""
        return cls.create(
            config.prometheus_url,
            config.prometheus_allowed_urls,
            config.prometheus_intensity_queries,
            any_intensity_query=config.prometheus_allow_any_intensity_query,
        )

    def refusal(self, prometheus_url: str | None, intensity_query: str | None) -> str:
        """Why the spec's URL or query is refused (naming the field and the setting that allows it), or ""."""
        if prometheus_url and _normal_url(prometheus_url) not in {self.default_url, *self.allowed_urls}:
            shown = prometheus_url if len(prometheus_url) <= 120 else prometheus_url[:117] + "..."
            return (
                f"spec.energy.telemetry.prometheusURL {shown!r} is not allowed: the operator queries its own"
                " Prometheus (ETJ_PROMETHEUS_URL) and the URLs of ETJ_PROMETHEUS_ALLOWED_URLS (chart value"
                " telemetry.prometheus.allowedUrls) only; no request was made"
            )
        if intensity_query and not self.any_intensity_query and intensity_query.strip() not in self.intensity_queries:
            return (
                "spec.energy.carbon.intensityQuery is not allowed: the operator runs the queries of"
                " ETJ_PROMETHEUS_INTENSITY_QUERIES (chart value telemetry.prometheus.intensityQueries) only, or any"
                " with ETJ_PROMETHEUS_ALLOW_ANY_INTENSITY_QUERY=true (telemetry.prometheus.allowAnyIntensityQuery);"
                " use intensityGramsPerKWh, or ask for the query to be allowed; no request was made"
            )
        return ""


@dataclass
class CycleStats:
    """What one cycle cost."""

    cycle: int
    jobs: int
    requests: int
    seconds: float


SourceFactory = Callable[[str, str], TelemetrySource]


class TelemetryHub:
    """Runs telemetry cycles for every registered job."""

    def __init__(self, factory: SourceFactory, on_delivery: Callable[[JobKey], None] | None = None) -> None:
        self._factory = factory
        self._sources: dict[SourceKey, TelemetrySource] = {}
        self._jobs: dict[JobKey, JobRegistration] = {}
        self._inbox: dict[JobKey, JobTelemetry] = {}
        self._on_delivery = on_delivery
        self._last_read: dict[JobKey, float] = {}
        self.cycle = 0

    def register(self, registration: JobRegistration) -> None:
        """Add or update a job's registration (called by the job's loop on every reconcile)."""
        self._jobs[registration.key] = registration

    def unregister(self, key: JobKey) -> None:
        """Stop reading a job (finished, deleted, or its loop stopped)."""
        self._jobs.pop(key, None)
        self._inbox.pop(key, None)
        self._last_read.pop(key, None)

    def take(self, key: JobKey) -> JobTelemetry | None:
        """The job's newest undelivered readings, or None."""
        return self._inbox.pop(key, None)

    def source(self, kind: str, url: str) -> TelemetrySource:
        """The (cached) source for a kind and URL."""
        skey = (kind, url if kind == "Prometheus" else "")
        if skey not in self._sources:
            self._sources[skey] = self._factory(*skey)
        return self._sources[skey]

    async def run_cycle(self) -> CycleStats:
        """Read every registered job once."""
        started = time.perf_counter()
        self.cycle += 1
        now = time.time()
        groups: dict[SourceKey, list[JobRegistration]] = defaultdict(list)
        for reg in self._jobs.values():
            last = self._last_read.get(reg.key)
            # 5% slack: a job whose interval equals the hub's is read every cycle despite timer jitter
            if last is not None and now - last < 0.95 * reg.interval_seconds:
                continue
            self._last_read[reg.key] = now
            if reg.refused:
                # no request at all for what the operator does not allow
                self._inbox[reg.key] = JobTelemetry(
                    self.cycle, now, reg.source, reason=reg.refused, cause=TelemetryCause.NOT_ALLOWED
                )
                continue
            groups[(reg.source, reg.prometheus_url if reg.source == "Prometheus" else "")].append(reg)
        requests = 0
        results = await asyncio.gather(*(self._read_group(skey, regs, now) for skey, regs in groups.items()))
        for group_requests in results:
            requests += group_requests
        requests += await self._intensities(now)
        for key in list(self._inbox):
            if self._on_delivery is not None:
                self._on_delivery(key)
        elapsed = time.perf_counter() - started
        TELEMETRY_CYCLE_SECONDS.observe(elapsed)
        return CycleStats(self.cycle, len(self._jobs), requests, elapsed)

    async def _read_group(self, skey: SourceKey, regs: Sequence[JobRegistration], now: float) -> int:
        source = self.source(*skey)
        targets = [t for reg in regs for t in reg.targets]
        result = await source.collect(targets)
        TELEMETRY_REQUESTS.labels(source=skey[0]).inc(result.requests)
        for kind, count in result.rejected_by_kind.items():
            TELEMETRY_REJECTED_SERIES.labels(source=skey[0], reason=kind).inc(count)
        if result.error:
            TELEMETRY_ERRORS.labels(source=skey[0]).inc()
            logger.warning("telemetry from %s failed: %s", skey[0], result.error)
        # Split by the pod a reading was attributed to (its UID): a same-name pod of another job, or a
        # pod's predecessor still registered, gets none of it.
        by_owner: dict[str, list[GpuSample]] = defaultdict(list)
        for sample in result.samples:
            by_owner[sample.owner].append(sample)
        for reg in regs:
            samples = [s for t in reg.targets for s in by_owner.get(t.owner, [])]
            agent = AgentFindings.combine(result.agent[t.owner] for t in reg.targets if t.owner in result.agent)
            delivery = JobTelemetry(
                self.cycle, now, skey[0], samples, intensity_refused=reg.intensity_refused, agent=agent
            )
            if result.error:
                delivery.reason = f"{skey[0]} unavailable: {result.error}"
                delivery.cause = result.error_cause or TelemetryCause.QUERY_FAILED
            elif not reg.targets:
                delivery.reason = "no running pods to read"
                delivery.cause = TelemetryCause.NO_RUNNING_PODS
            elif not samples:
                pods = [f"{t.namespace}/{t.pod}" for t in reg.targets]
                errors = [result.pod_errors[p] for p in pods if p in result.pod_errors]
                errors += [
                    f"not this pod's series ({result.rejected_reasons[p]})"
                    for p in pods
                    if p in result.rejected_reasons
                ]
                delivery.reason = f"no GPU readings for this job's pods{': ' + errors[0] if errors else ''}"
                if any(p in result.pod_errors for p in pods):
                    delivery.cause = TelemetryCause.SCRAPE_FAILED
                elif any(p in result.rejected_reasons for p in pods):
                    delivery.cause = TelemetryCause.NOT_ATTRIBUTED
                elif result.labels_seen:
                    delivery.cause = TelemetryCause.LABEL_MISMATCH
                    delivery.reason += (
                        "; the GPU series Prometheus has carry the labels " + ", ".join(result.labels_seen)
                    )
                else:
                    delivery.cause = TelemetryCause.NO_SERIES
            delivery.ok = bool(samples)
            self._inbox[reg.key] = delivery
        return result.requests

    async def _intensities(self, now: float) -> int:
        """Evaluate each distinct carbon-intensity query once and attach the value to its jobs."""
        wanted: dict[tuple[str, str], list[JobKey]] = defaultdict(list)
        for reg in self._jobs.values():
            if reg.intensity_query and not reg.refused and not reg.intensity_refused and reg.key in self._inbox:
                wanted[(reg.prometheus_url, reg.intensity_query)].append(reg.key)
        for (url, query), keys in wanted.items():
            value = await self.source("Prometheus", url).query_scalar(query)
            for key in keys:
                delivery = self._inbox.get(key)
                if delivery is not None:
                    delivery.intensity_grams_per_kwh = value
        return len(wanted)

    async def run_forever(self, interval_seconds: float, stopped: asyncio.Event) -> None:
        """Run cycles until ``stopped`` is set; a failing cycle is logged and the next one runs."""
        while not stopped.is_set():
            try:
                await self.run_cycle()
            except Exception:  # a bug in one cycle must not end telemetry for good
                logger.exception("telemetry cycle failed")
            try:
                await asyncio.wait_for(stopped.wait(), timeout=interval_seconds)
            except TimeoutError:
                pass
