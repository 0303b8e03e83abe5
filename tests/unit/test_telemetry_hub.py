import asyncio
import dataclasses

from etj_operator.config import OperatorConfig
from etj_operator.metrics import REGISTRY
from etj_operator.telemetry.base import GpuSample, PodTarget, TelemetryCause, TelemetryResult
from etj_operator.telemetry.hub import JobRegistration, SourceAccess, TelemetryHub


class FakeSource:
    name = "Prometheus"

    def __init__(self, fail=False):
        self.calls = 0
        self.scalar_calls = 0
        self.fail = fail

    async def collect(self, targets):
        self.calls += 1
        if self.fail:
            return TelemetryResult(error="connection refused", requests=1)
        samples = [GpuSample(t.namespace, t.pod, "GPU-0", 100.0, power_watts=300, energy_mj=1000) for t in targets]
        return TelemetryResult(samples=samples, requests=2)

    async def query_scalar(self, promql):
        self.scalar_calls += 1
        return 420.0


def registration(job, pods=2, interval=0.0, query=None, url="http://prom"):
    targets = tuple(PodTarget("ns", f"{job}-worker-{i}", job) for i in range(pods))
    return JobRegistration(("ns", job), "Prometheus", url, targets, query, interval)


def test_one_read_per_source_for_all_jobs_and_one_query_per_distinct_carbon_query():
    sources = {}

    def factory(kind, url):
        return sources.setdefault((kind, url), FakeSource())

    woken = []
    hub = TelemetryHub(factory, woken.append)
    for j in range(50):
        hub.register(registration(f"j{j}", query="carbon" if j % 2 else None))
    stats = asyncio.run(hub.run_cycle())
    assert len(sources) == 1 and sources[("Prometheus", "http://prom")].calls == 1
    assert sources[("Prometheus", "http://prom")].scalar_calls == 1
    assert stats.requests == 2 + 1 and stats.jobs == 50
    assert len(woken) == 50
    delivery = hub.take(("ns", "j1"))
    assert delivery.ok and len(delivery.samples) == 2 and delivery.intensity_grams_per_kwh == 420.0
    assert hub.take(("ns", "j1")) is None  # taken once


def test_source_failure_is_delivered_as_a_reason():
    hub = TelemetryHub(lambda kind, url: FakeSource(fail=True))
    hub.register(registration("a"))
    asyncio.run(hub.run_cycle())
    delivery = hub.take(("ns", "a"))
    assert not delivery.ok and "unavailable: connection refused" in delivery.reason


def test_job_interval_is_honoured():
    source = FakeSource()
    hub = TelemetryHub(lambda kind, url: source)
    hub.register(registration("slow", interval=3600))
    hub.register(registration("fast", interval=0))
    asyncio.run(hub.run_cycle())
    assert hub.take(("ns", "slow")) is not None and hub.take(("ns", "fast")) is not None
    asyncio.run(hub.run_cycle())
    assert hub.take(("ns", "slow")) is None and hub.take(("ns", "fast")) is not None


def test_unregistered_jobs_are_not_read():
    source = FakeSource()
    hub = TelemetryHub(lambda kind, url: source)
    hub.register(registration("gone"))
    hub.unregister(("ns", "gone"))
    asyncio.run(hub.run_cycle())
    assert source.calls == 0


class AttributingSource(FakeSource):
    """Attributes each target's reading to the target's UID, as the real sources do."""

    async def collect(self, targets):
        self.calls += 1
        samples = [GpuSample(t.namespace, t.pod, "GPU-0", 100.0, energy_mj=1000, uid=t.uid) for t in targets]
        return TelemetryResult(samples=samples, requests=2)


def test_readings_go_to_the_job_whose_pod_they_were_attributed_to_not_to_a_same_name_pod():
    # job "old" is still registered for a cycle while its re-created namesake "new" has a same-name pod
    hub = TelemetryHub(lambda kind, url: AttributingSource())
    for job, uid in (("old", "uid-a"), ("new", "uid-b")):
        target = PodTarget("ns", "j-worker-0", "j", uid=uid)
        hub.register(JobRegistration(("ns", job), "Prometheus", "http://prom", (target,)))
    asyncio.run(hub.run_cycle())
    assert [s.uid for s in hub.take(("ns", "old")).samples] == ["uid-a"]
    assert [s.uid for s in hub.take(("ns", "new")).samples] == ["uid-b"]


class RejectingSource(FakeSource):
    async def collect(self, targets):
        result = TelemetryResult(requests=2)
        for target in targets:
            result.reject(target, "series from node 'n2', the pod runs on 'n1'")
        return result


def test_a_job_whose_series_were_all_rejected_is_told_why():
    hub = TelemetryHub(lambda kind, url: RejectingSource())
    hub.register(registration("a", pods=1))
    asyncio.run(hub.run_cycle())
    delivery = hub.take(("ns", "a"))
    assert not delivery.ok and "not this pod's series (series from node 'n2'" in delivery.reason


# --- what the operator allows a job's spec to name ------------------------------------------------------------
def test_by_default_a_job_may_name_only_the_operators_own_prometheus_and_no_query():
    access = SourceAccess.from_config(OperatorConfig(prometheus_url="http://prometheus.monitoring:9090"))
    assert access.refusal(None, None) == ""
    assert access.refusal("HTTP://Prometheus.Monitoring:9090/", None) == ""  # the same URL, spelled otherwise
    refused = access.refusal("http://attacker.example:9090", None)
    assert refused.startswith("spec.energy.telemetry.prometheusURL 'http://attacker.example:9090' is not allowed")
    assert "ETJ_PROMETHEUS_ALLOWED_URLS" in refused and "telemetry.prometheus.allowedUrls" in refused
    query = access.refusal(None, "vector(0)")
    assert query.startswith("spec.energy.carbon.intensityQuery is not allowed")
    assert "ETJ_PROMETHEUS_INTENSITY_QUERIES" in query and "telemetry.prometheus.intensityQueries" in query
    assert "ETJ_PROMETHEUS_ALLOW_ANY_INTENSITY_QUERY" in query


def test_allowlisted_urls_and_queries_and_the_switch():
    config = OperatorConfig(
        prometheus_url="http://p:9090",
        prometheus_allowed_urls=("https://thanos.example/",),
        prometheus_intensity_queries=('avg(grid{zone="DE"})',),
    )
    access = SourceAccess.from_config(config)
    assert access.refusal("https://thanos.example", ' avg(grid{zone="DE"})') == ""
    assert access.refusal("https://thanos.example:8443", None) != ""  # another port is another server
    assert access.refusal(None, 'avg(grid{zone="FR"})') != ""
    switch = SourceAccess.from_config(OperatorConfig(prometheus_allow_any_intensity_query=True))
    assert switch.refusal(None, "anything_at_all") == ""


def test_a_refused_url_is_never_read_and_a_refused_query_never_run_while_the_gpus_are_read():
    source = FakeSource()
    hub = TelemetryHub(lambda kind, url: source)
    access = SourceAccess.create("http://prom")
    for job, url, query in (("url", "http://evil:9090", None), ("query", None, "vector(0)"), ("fine", None, None)):
        reg = registration(job, query=query, url=url or "http://prom")
        hub.register(
            dataclasses.replace(reg, refused=access.refusal(url, None), intensity_refused=access.refusal(None, query))
        )
    stats = asyncio.run(hub.run_cycle())
    # one batched read for "query" and "fine"; the refused URL is not asked, the refused query not run
    assert source.calls == 1 and source.scalar_calls == 0 and stats.requests == 2
    delivery = hub.take(("ns", "url"))
    assert not delivery.ok and delivery.samples == [] and delivery.cause == TelemetryCause.NOT_ALLOWED
    assert delivery.reason.startswith("spec.energy.telemetry.prometheusURL")
    assert delivery.reason.endswith("no request was made")
    query = hub.take(("ns", "query"))
    assert query.ok and query.intensity_grams_per_kwh is None
    assert query.intensity_refused.startswith("spec.energy.carbon.intensityQuery")
    assert hub.take(("ns", "fine")).ok


# --- causes and the rejected-series counter ---------------------------------------------------------------------
class ResultSource(FakeSource):
    def __init__(self, result):
        super().__init__()
        self.result = result

    async def collect(self, targets):
        return self.result


def delivered(result, pods=1):
    hub = TelemetryHub(lambda kind, url: ResultSource(result))
    hub.register(registration("a", pods=pods))
    asyncio.run(hub.run_cycle())
    return hub.take(("ns", "a"))


def test_the_delivery_names_the_cause():
    failed = TelemetryResult(
        requests=3,
        error="Prometheus at http://prom failed: DCGM_FI_DEV_POWER_USAGE: HTTP 401: Prometheus did not accept ...",
        status_code=401,
        error_cause=TelemetryCause.QUERY_FAILED,
    )
    delivery = delivered(failed)
    assert delivery.cause == TelemetryCause.QUERY_FAILED and "HTTP 401" in delivery.reason
    mismatch = delivered(TelemetryResult(requests=3, labels_seen=("Hostname", "UUID", "k8s_pod")))
    assert mismatch.cause == TelemetryCause.LABEL_MISMATCH
    assert mismatch.reason.endswith("carry the labels Hostname, UUID, k8s_pod")
    assert delivered(TelemetryResult(requests=3)).cause == TelemetryCause.NO_SERIES


def test_rejected_series_are_counted_by_source_and_kind():
    def value(reason):
        labels = {"source": "Prometheus", "reason": reason}
        return REGISTRY.get_sample_value("etj_telemetry_rejected_series_total", labels) or 0.0

    before = {kind: value(kind) for kind in ("too_many_gpus", "duplicate")}
    result = TelemetryResult(requests=3)
    target = PodTarget("ns", "a-worker-0", "a")
    for _ in range(7):
        result.reject(target, "8 GPU series for a pod that requested 1 nvidia.com/gpu", "too_many_gpus")
    result.reject(target, "GPU X also read from b: kept a", "duplicate")
    delivery = delivered(result)
    assert delivery.cause == TelemetryCause.NOT_ATTRIBUTED and "kept a" in delivery.reason
    assert value("too_many_gpus") - before["too_many_gpus"] == 7 and value("duplicate") - before["duplicate"] == 1
