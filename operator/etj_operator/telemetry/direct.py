"""Telemetry read straight from each worker pod's DCGM-format ``/metrics`` endpoint (no Prometheus).

The operator scrapes ``http://<pod IP>:<metrics port>/metrics`` of every target, a bounded number at a
time with a short timeout, and parses the text with prometheus_client's parser. The harness serves its
GPUs there under dcgm-exporter's names and units (W, mJ) with a ``source`` label (``nvml`` or
``simulated``); a dcgm-exporter sidecar in the pod would serve the same format. Every GPU series a pod
serves is attributed to that pod (its UID and node): the endpoint belongs to it, so the node is the pod's
by construction. A sample stamped before the pod's ``status.startTime`` is still not counted
(:func:`~etj_operator.telemetry.base.attribution_problem`), nor, since the pod serves what it likes, more
GPUs than it requested (``PodTarget.gpus``; the first ones by GPU name count, the same ones every cycle).

A pod that cannot be read (no IP yet, refused, timed out, HTTP error, unparseable text) is reported in
``TelemetryResult.pod_errors`` under ``"<namespace>/<pod>"``; the other pods' samples still come back.
Direct has no PromQL: :meth:`DirectTelemetry.query_scalar` answers None unless a Prometheus URL was given
for carbon intensity.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from etj_operator.telemetry.base import (
    REJECT_BEFORE_START,
    REJECT_TOO_MANY_GPUS,
    GpuSample,
    PodTarget,
    TelemetryResult,
    attribution_problem,
)
from etj_operator.telemetry.prometheus import (
    DEFAULT_ENERGY_METRIC,
    DEFAULT_LIMIT_METRIC,
    DEFAULT_POWER_METRIC,
    SIMULATED_SOURCE,
)

if TYPE_CHECKING:
    from etj_operator.telemetry.prometheus import ClientSettings, PrometheusTelemetry

__all__ = ["DirectTelemetry", "parse_dcgm_text"]

log = logging.getLogger(__name__)

#: Largest /metrics body read from one pod (a pod's few GPUs take a few kB).
MAX_BODY_BYTES = 4 * 1024 * 1024


def _base_name(name: str) -> str:
    # prometheus_client's parser names the samples of a ``counter`` family ``<family>_total``, although
    # dcgm-exporter's counters carry no suffix; compare names without it.
    return name.removesuffix("_total")


def parse_dcgm_text(
    text: str,
    *,
    namespace: str,
    pod: str,
    timestamp_seconds: float,
    power_metric: str = DEFAULT_POWER_METRIC,
    energy_metric: str = DEFAULT_ENERGY_METRIC,
    limit_metric: str | None = DEFAULT_LIMIT_METRIC,
    gpu_label: str = "UUID",
    fallback_gpu_label: str = "gpu",
    own_pod_label: str | None = None,
    uid: str = "",
    node: str | None = None,
    pod_start_seconds: float | None = None,
) -> list[GpuSample]:
    """Turn one DCGM-format exposition into per-GPU samples of ``namespace/pod``.

    Other metrics are ignored; a GPU is named by ``gpu_label`` (UUID) or, without it, ``fallback_gpu_label``.
    With ``own_pod_label`` (e.g. ``"pod"``), only series whose label of that name equals ``pod`` are kept
    (for a node-wide exporter); by default every GPU series is the pod's own.
    A sample timestamp in the text wins over ``timestamp_seconds``. ``uid``, ``node`` and
    ``pod_start_seconds`` describe the pod the samples are attributed to. Raises ValueError on malformed text.
    """
    fields = {_base_name(power_metric): "power_watts", _base_name(energy_metric): "energy_mj"}
    if limit_metric:
        fields[_base_name(limit_metric)] = "power_limit_watts"
    gpus: dict[str, dict[str, float]] = {}
    simulated: dict[str, bool] = {}
    stamps: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = fields.get(_base_name(sample.name))
            if field is None:
                continue
            if own_pod_label is not None and sample.labels.get(own_pod_label) != pod:
                continue
            value = float(sample.value)
            if math.isnan(value):
                continue
            gpu = sample.labels.get(gpu_label) or sample.labels.get(fallback_gpu_label) or ""
            gpus.setdefault(gpu, {})[field] = value
            simulated[gpu] = simulated.get(gpu, False) or sample.labels.get("source") == SIMULATED_SOURCE
            if sample.timestamp is not None:
                stamps[gpu] = float(sample.timestamp)
    return [
        GpuSample(
            namespace=namespace,
            pod=pod,
            gpu=gpu,
            timestamp_seconds=stamps.get(gpu, timestamp_seconds),
            power_watts=values.get("power_watts"),
            energy_mj=values.get("energy_mj"),
            power_limit_watts=values.get("power_limit_watts"),
            simulated=simulated[gpu],
            uid=uid,
            node=node,
            pod_start_seconds=pod_start_seconds,
        )
        for gpu, values in sorted(gpus.items())
    ]


class DirectTelemetry:
    """Scrapes every worker pod's DCGM-format endpoint, ``max_concurrency`` pods at a time."""

    name = "Direct"

    def __init__(
        self,
        *,
        timeout_seconds: float = 2.0,
        max_concurrency: int = 32,
        path: str = "/metrics",
        power_metric: str = DEFAULT_POWER_METRIC,
        energy_metric: str = DEFAULT_ENERGY_METRIC,
        limit_metric: str | None = DEFAULT_LIMIT_METRIC,
        gpu_label: str = "UUID",
        fallback_gpu_label: str = "gpu",
        own_pod_label: str | None = None,
        carbon_prometheus_url: str | None = None,
        prometheus_client: ClientSettings | None = None,
    ) -> None:
        """Configure the scrapes.

        ``own_pod_label`` keeps only series whose label of that name is the target pod (see
        :func:`parse_dcgm_text`); ``carbon_prometheus_url`` enables :meth:`query_scalar` through Prometheus,
        reached with ``prometheus_client``'s credentials.
        """
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.timeout_seconds = timeout_seconds
        self.max_concurrency = max_concurrency
        self.path = path if path.startswith("/") else f"/{path}"
        self.power_metric = power_metric
        self.energy_metric = energy_metric
        self.limit_metric = limit_metric
        self.gpu_label = gpu_label
        self.fallback_gpu_label = fallback_gpu_label
        self.own_pod_label = own_pod_label
        self._carbon: PrometheusTelemetry | None = None
        if carbon_prometheus_url:
            from etj_operator.telemetry.prometheus import PrometheusTelemetry

            self._carbon = PrometheusTelemetry(carbon_prometheus_url, limit_metric=None, client=prometheus_client)

    def url_of(self, target: PodTarget) -> str:
        """The metrics URL of a target (IPv6 addresses bracketed)."""
        host = f"[{target.pod_ip}]" if target.pod_ip and ":" in target.pod_ip else target.pod_ip
        return f"http://{host}:{target.metrics_port}{self.path}"

    async def collect(self, targets: Sequence[PodTarget]) -> TelemetryResult:
        """Scrape every target; per-pod failures go to ``pod_errors``, never raised."""
        result = TelemetryResult()
        if not targets:
            return result
        limit = asyncio.Semaphore(self.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            outcomes = await asyncio.gather(*(self._scrape(session, limit, t) for t in targets))
        for target, (scraped, samples, error) in zip(targets, outcomes, strict=True):
            result.requests += scraped
            if error is not None:
                result.pod_errors[f"{target.namespace}/{target.pod}"] = error
            kept: list[GpuSample] = []
            for sample in samples:
                # the endpoint is the pod's own, so the node is the pod's; the time may still predate the pod
                problem = attribution_problem(target, node=None, timestamp_seconds=sample.timestamp_seconds)
                if problem is None:
                    kept.append(sample)
                else:
                    result.reject(target, problem, REJECT_BEFORE_START)
            if target.gpus is not None and len(kept) > target.gpus:
                # the pod serves what it likes: no more GPUs than it requested, the same ones every cycle
                kept.sort(key=lambda s: s.gpu)
                names = ", ".join(s.gpu for s in kept[: target.gpus]) or "none"
                for _ in kept[target.gpus :]:
                    result.reject(
                        target,
                        f"{len(kept)} GPUs served by a pod that requested {target.gpus} nvidia.com/gpu: kept {names}",
                        REJECT_TOO_MANY_GPUS,
                    )
                kept = kept[: target.gpus]
            result.samples.extend(kept)
        if result.rejected:
            log.debug("Direct: %d GPU series not attributed: %s", result.rejected, result.rejected_reasons)
        return result

    async def _scrape(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, target: PodTarget
    ) -> tuple[int, list[GpuSample], str | None]:
        """One pod: (requests made, samples, error or None)."""
        if not target.pod_ip:
            return 0, [], "pod has no IP yet"
        url = self.url_of(target)
        async with limit:
            try:
                async with session.get(url) as response:
                    if response.status != 200:
                        return 1, [], f"GET {url}: HTTP {response.status}"
                    body = await response.content.read(MAX_BODY_BYTES + 1)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                return 1, [], f"GET {url}: {type(e).__name__}: {e}"
        if len(body) > MAX_BODY_BYTES:
            return 1, [], f"GET {url}: body larger than {MAX_BODY_BYTES} bytes"
        try:
            samples = parse_dcgm_text(
                body.decode("utf-8", errors="replace"),
                namespace=target.namespace,
                pod=target.pod,
                timestamp_seconds=time.time(),
                power_metric=self.power_metric,
                energy_metric=self.energy_metric,
                limit_metric=self.limit_metric,
                gpu_label=self.gpu_label,
                fallback_gpu_label=self.fallback_gpu_label,
                own_pod_label=self.own_pod_label,
                uid=target.uid,
                node=target.node,
                pod_start_seconds=target.start_seconds,
            )
        except ValueError:
            # not the parser's message: it quotes the offending line, and the pod wrote that line
            return 1, [], f"GET {url}: the answer is not in the Prometheus text format"
        if not samples:
            return 1, [], f"GET {url}: no GPU series"
        return 1, samples, None

    async def query_scalar(self, promql: str) -> float | None:
        """None (Direct has no PromQL) unless built with ``carbon_prometheus_url``."""
        if self._carbon is None:
            return None
        return await self._carbon.query_scalar(promql)

    def close(self) -> None:
        """Release the carbon query's HTTP session, if any."""
        if self._carbon is not None:
            self._carbon.close()
