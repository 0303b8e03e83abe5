"""Telemetry from Prometheus scraping NVIDIA dcgm-exporter: one instant query per metric per cycle.

Each cycle asks Prometheus for every GPU series of each metric at once, aggregated by the labels that
identify a GPU of a pod::

    max by (namespace, pod, UUID, gpu, Hostname, hostname, source) (DCGM_FI_DEV_POWER_USAGE{pod!=""})

and maps the answer onto the operator's pods through an index ``{(namespace, pod): [targets]}``. Series of
pods the operator does not manage (other workloads, idle GPUs, the exporter's own pod) are dropped. The
number of queries per cycle is therefore the number of metrics (2 or 3), whatever the number of jobs.

dcgm-exporter labels a series with the pod's name, never its UID, so a series is attributed to a target
only when it also comes from the target's node (``Hostname``) and was scraped no earlier than the pod's
start (:func:`~etj_operator.telemetry.base.attribution_problem`): Prometheus keeps answering with a vanished
series' last sample for a while (its lookback), and that sample belongs to an earlier pod of that name.
The power and energy queries carry each series' scrape time for that check.

``max by`` (not ``sum by``) keeps one series per GPU even when two scrape jobs read the same exporter,
and still gives every GPU its own counter so that accounting can handle counter resets per GPU.

The blocking HTTP client (prometheus-api-client over requests) runs in worker threads
(:func:`asyncio.to_thread`), never on the event loop. Failures (Prometheus down, timeouts, HTTP errors,
malformed answers) come back as ``TelemetryResult(error=...)``; :meth:`PrometheusTelemetry.collect`
never raises for them.

Label schemes (see ``LABEL_SCHEMES``): dcgm-exporter's own ``pod``/``namespace`` (scraped with
``honor_labels: true``), ``exported_pod``/``exported_namespace`` (scraped with ``honor_labels: false``
from a target that carries its own ``pod``/``namespace`` labels, the usual ServiceMonitor case), and
the ``pod_name``/``pod_namespace`` of dcgm-exporter releases before 2.0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from etj_operator import contract
from etj_operator.telemetry.base import GpuSample, PodTarget, TelemetryResult, attribution_problem

__all__ = [
    "DEFAULT_ENERGY_METRIC",
    "DEFAULT_LIMIT_METRIC",
    "DEFAULT_POWER_METRIC",
    "LABEL_SCHEMES",
    "SIMULATED_SOURCE",
    "PrometheusTelemetry",
]

log = logging.getLogger(__name__)

#: dcgm-exporter's power draw gauge (W).
DEFAULT_POWER_METRIC: Final = contract.METRIC_POWER_USAGE
#: dcgm-exporter's cumulative energy counter (mJ since the driver loaded; resets on reload).
DEFAULT_ENERGY_METRIC: Final = contract.METRIC_TOTAL_ENERGY_CONSUMPTION
#: The power management limit in force (W): DCGM field 157. Not in dcgm-exporter's default counter list
#: (add it to the exporter's counters CSV); the project's harness always exports it.
DEFAULT_LIMIT_METRIC: Final = contract.METRIC_POWER_MGMT_LIMIT
#: Value of the ``source`` label on series produced by the simulated GPU (the harness's and test exporters').
SIMULATED_SOURCE: Final = "simulated"

#: Known label schemes: name -> (pod label, namespace label).
LABEL_SCHEMES: Final[Mapping[str, tuple[str, str]]] = {
    "pod": ("pod", "namespace"),
    "exported_pod": ("exported_pod", "exported_namespace"),
    "pod_name": ("pod_name", "pod_namespace"),
}

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METRIC_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")


def _check_name(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{what} {value!r} is not a valid Prometheus name")
    return value


@dataclass(frozen=True)
class _Query:
    """One metric and the PromQL that reads it for all pods."""

    field: str  # "power_watts" | "energy_mj" | "power_limit_watts"
    metric: str
    promql: str


@dataclass
class _GpuReadings:
    timestamp_seconds: float
    simulated: bool
    power_watts: float | None = None
    energy_mj: float | None = None
    power_limit_watts: float | None = None
    #: When each field's series was scraped (not when the query was evaluated): "energy_mj", "power_watts".
    scraped_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def sample_seconds(self) -> float:
        """The reading's time: the counter's scrape, else the power gauge's, else the evaluation time."""
        scraped = self.scraped_seconds
        return scraped.get("energy_mj") or scraped.get("power_watts") or self.timestamp_seconds


#: The fields whose query also returns each series' scrape time (the others are stamped with evaluation time).
_STAMPED_FIELDS: Final = frozenset({"energy_mj", "power_watts"})


#: Label that marks the scrape-time series in the power and energy queries' answers (see PrometheusTelemetry).
SAMPLE_TIME_LABEL = "etj_sample"


class PrometheusTelemetry:
    """Reads GPU power, energy and limits of many pods from Prometheus with one query per metric."""

    name = "Prometheus"

    def __init__(
        self,
        url: str,
        *,
        pod_label: str = "pod",
        namespace_label: str = "namespace",
        power_metric: str = DEFAULT_POWER_METRIC,
        energy_metric: str = DEFAULT_ENERGY_METRIC,
        limit_metric: str | None = DEFAULT_LIMIT_METRIC,
        gpu_label: str = "UUID",
        fallback_gpu_label: str = "gpu",
        node_label: str | None = "Hostname",
        fallback_node_label: str | None = "hostname",
        extra_matchers: str = "",
        timeout_seconds: float = 5.0,
        headers: Mapping[str, str] | None = None,
        disable_ssl: bool = False,
    ) -> None:
        """Configure the source.

        ``extra_matchers`` is added inside each selector's braces (e.g. ``job="dcgm-exporter"``) to narrow
        the series Prometheus returns; ``limit_metric=None`` skips the limit query (2 queries per cycle).
        A GPU is named by ``gpu_label`` (the UUID, stable across pod moves) or, when a series lacks it,
        by ``fallback_gpu_label`` (the index). A series' node is its ``node_label`` (dcgm-exporter's
        ``Hostname``, the node name where the exporter's ``NODE_NAME`` is set, as its chart does) or
        ``fallback_node_label`` (``hostname`` on newer builds); ``node_label=None`` skips the node check.
        """
        if not url:
            raise ValueError("a Prometheus URL is required")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.url = url.rstrip("/")
        self.pod_label = _check_name(_LABEL_NAME, pod_label, "pod label")
        self.namespace_label = _check_name(_LABEL_NAME, namespace_label, "namespace label")
        self.gpu_label = _check_name(_LABEL_NAME, gpu_label, "GPU label")
        self.fallback_gpu_label = _check_name(_LABEL_NAME, fallback_gpu_label, "GPU fallback label")
        self.node_labels: tuple[str, ...] = tuple(
            _check_name(_LABEL_NAME, label, "node label")
            for label in ((node_label, fallback_node_label) if node_label else ())
            if label
        )
        self.timeout_seconds = timeout_seconds
        self._headers = dict(headers or {})
        self._disable_ssl = disable_ssl
        matchers = f'{self.pod_label}!=""' + (f",{extra_matchers}" if extra_matchers else "")
        by = ", ".join(
            dict.fromkeys(
                [self.namespace_label, self.pod_label, self.gpu_label, self.fallback_gpu_label, *self.node_labels]
            )
        )
        metrics = [("power_watts", power_metric), ("energy_mj", energy_metric)]
        if limit_metric:
            metrics.append(("power_limit_watts", limit_metric))
        for _, metric in metrics:
            _check_name(_METRIC_NAME, metric, "metric")
        def promql(field: str, metric: str) -> str:
            value = f"max by ({by}, source) ({metric}{{{matchers}}})"
            if field not in _STAMPED_FIELDS:
                return value
            # The series' own scrape time rides along in the same query: an instant query stamps every
            # value with the evaluation time, and integrating counters between evaluation times would misplace
            # up to one scrape interval of energy at each end of a window; the scrape time also tells a
            # vanished pod's last sample (older than the pod now of that name) apart. The union (`or`) keeps
            # both series apart through the extra label.
            stamp = f"max by ({by}, source) (timestamp({metric}{{{matchers}}}))"
            return f'{value} or label_replace({stamp}, "{SAMPLE_TIME_LABEL}", "time", "", "")'

        self.queries: tuple[_Query, ...] = tuple(
            _Query(field, metric, promql(field, metric)) for field, metric in metrics
        )
        # One HTTP client per concurrent query: requests.Session is not documented as thread-safe.
        self._clients: dict[int, Any] = {}
        self._clients_lock = threading.Lock()

    # --- the blocking part (worker threads) -----------------------------------------------------------
    def _client(self, slot: int) -> Any:
        with self._clients_lock:
            client = self._clients.get(slot)
            if client is None:
                from prometheus_api_client import PrometheusConnect
                from urllib3.util.retry import Retry

                client = PrometheusConnect(
                    url=self.url,
                    headers=self._headers or None,
                    disable_ssl=self._disable_ssl,
                    # No client-side retries: the next cycle is the retry, and an outage must show quickly.
                    retry=Retry(total=0, raise_on_status=False),
                )
                self._clients[slot] = client
            return client

    def _query_blocking(self, slot: int, promql: str) -> Any:
        client = self._client(slot)
        return client.custom_query(
            promql,
            params={"timeout": f"{self.timeout_seconds:g}s"},
            timeout=self.timeout_seconds,
        )

    def close(self) -> None:
        """Close the HTTP sessions (a later call opens new ones)."""
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # --- the interface ---------------------------------------------------------------------------------
    async def collect(self, targets: Sequence[PodTarget]) -> TelemetryResult:
        """Read every target's GPUs with one query per metric; errors land in ``result.error``."""
        index: dict[tuple[str, str], list[PodTarget]] = {}
        for target in targets:
            index.setdefault((target.namespace, target.pod), []).append(target)
        if not index:
            return TelemetryResult()
        answers = await asyncio.gather(
            *(asyncio.to_thread(self._query_blocking, slot, q.promql) for slot, q in enumerate(self.queries)),
            return_exceptions=True,
        )
        result = TelemetryResult(requests=len(self.queries))
        failures = [
            f"{q.metric}: {_describe(a)}"
            for q, a in zip(self.queries, answers, strict=True)
            if isinstance(a, BaseException)
        ]
        if failures:
            result.error = f"Prometheus at {self.url} failed: " + "; ".join(failures)
            return result
        readings: dict[tuple[str, str, str, str], _GpuReadings] = {}
        try:
            for query, answer in zip(self.queries, answers, strict=True):
                self._merge(query, answer, index, readings)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            result.error = f"Prometheus at {self.url} gave a malformed answer: {e}"
            return result
        for (ns, pod, node, gpu), r in sorted(readings.items()):
            t = r.sample_seconds
            owner = _attribute(index[(ns, pod)], node or None, t, result)
            if owner is None:
                continue
            result.samples.append(
                GpuSample(
                    namespace=ns,
                    pod=pod,
                    gpu=gpu,
                    timestamp_seconds=t,
                    power_watts=r.power_watts,
                    energy_mj=r.energy_mj,
                    power_limit_watts=r.power_limit_watts,
                    simulated=r.simulated,
                    uid=owner.uid,
                    node=node or owner.node,
                    pod_start_seconds=owner.start_seconds,
                )
            )
        if result.rejected:
            log.debug(
                "Prometheus at %s: %d GPU series not attributed: %s", self.url, result.rejected, result.rejected_reasons
            )
        return result

    def _merge(
        self,
        query: _Query,
        answer: Any,
        index: Mapping[tuple[str, str], Sequence[PodTarget]],
        readings: dict[tuple[str, str, str, str], _GpuReadings],
    ) -> None:
        if not isinstance(answer, list):
            raise ValueError(f"{query.metric}: expected a vector, got {type(answer).__name__}")
        for series in answer:
            labels: Mapping[str, str] = series["metric"]
            key_pod = (labels.get(self.namespace_label, ""), labels.get(self.pod_label, ""))
            if key_pod not in index:
                continue
            gpu = labels.get(self.gpu_label) or labels.get(self.fallback_gpu_label) or ""
            node = next((labels[n] for n in self.node_labels if labels.get(n)), "")
            timestamp_seconds, raw = series["value"]
            value = float(raw)
            if math.isnan(value):
                continue
            key = (key_pod[0], key_pod[1], node, gpu)
            entry = readings.get(key)
            if entry is None:
                entry = readings[key] = _GpuReadings(float(timestamp_seconds), False)
            entry.timestamp_seconds = max(entry.timestamp_seconds, float(timestamp_seconds))
            entry.simulated = entry.simulated or labels.get("source") == SIMULATED_SOURCE
            if labels.get(SAMPLE_TIME_LABEL) == "time":
                entry.scraped_seconds[query.field] = value
            else:
                setattr(entry, query.field, value)

    async def query_scalar(self, promql: str) -> float | None:
        """Evaluate ``promql`` (e.g. grid carbon intensity in gCO2/kWh); None when empty, NaN or failed."""
        try:
            answer = await asyncio.to_thread(self._query_blocking, len(self.queries), promql)
        except Exception as e:
            log.warning("Prometheus query %r failed: %s", promql, _describe(e))
            return None
        return _scalar(answer)


def _attribute(
    candidates: Sequence[PodTarget], node: str | None, timestamp_seconds: float, result: TelemetryResult
) -> PodTarget | None:
    """The target a GPU reading belongs to, or None (counted in ``result.rejected``).

    Of the targets of that namespace/pod (usually one; two while a re-created pod's predecessor is still
    registered), those on the series' node and started no later than the reading qualify, and the one
    started last wins: it is the pod that held the name when the reading was taken.
    """
    fitting: list[PodTarget] = []
    reason = ""
    for target in candidates:
        problem = attribution_problem(target, node=node, timestamp_seconds=timestamp_seconds)
        if problem is None:
            fitting.append(target)
        else:
            reason = problem
    if not fitting:
        result.reject(candidates[0], reason)
        return None
    return max(fitting, key=lambda t: -math.inf if t.start_seconds is None else t.start_seconds)


def _scalar(answer: Any) -> float | None:
    """The number in an instant-query answer: a scalar ``[t, "v"]`` or the first element of a vector."""
    try:
        if isinstance(answer, list) and len(answer) == 2 and not isinstance(answer[0], dict):
            value = float(answer[1])
        elif isinstance(answer, list) and answer and isinstance(answer[0], dict):
            if len(answer) > 1:
                log.warning("scalar query returned %d series; using the first", len(answer))
            value = float(answer[0]["value"][1])
        else:
            return None
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"

