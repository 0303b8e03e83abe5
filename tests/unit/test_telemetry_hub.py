import asyncio

from etj_operator.telemetry.base import GpuSample, PodTarget, TelemetryResult
from etj_operator.telemetry.hub import JobRegistration, TelemetryHub


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
