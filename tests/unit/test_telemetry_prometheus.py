"""The Prometheus source without a server: its queries, label schemes, env settings and failure handling."""

import asyncio

import pytest
from prometheus_server import free_port

from etj_operator.telemetry.base import PodTarget
from etj_operator.telemetry.prometheus import PrometheusTelemetry

TARGETS = [PodTarget("ml", "a-worker-0", "a"), PodTarget("ml", "b-worker-0", "b")]


def series(pod, gpu, value, *, namespace="ml", uuid=None, source=None, t=1000.0):
    labels = {"namespace": namespace, "pod": pod, "gpu": gpu}
    if uuid:
        labels["UUID"] = uuid
    if source:
        labels["source"] = source
    return {"metric": labels, "value": [t, str(value)]}


class Canned(PrometheusTelemetry):
    """Answers queries from a dict metric -> result instead of HTTP, and records them."""

    def __init__(self, answers, **options):
        super().__init__("http://prometheus.invalid:9090", **options)
        self.answers = answers
        self.asked = []

    def _query_blocking(self, slot, promql):
        self.asked.append(promql)
        for metric, answer in self.answers.items():
            if metric in promql:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return []


def test_one_aggregated_query_per_metric_filters_out_gpus_without_a_pod():
    source = PrometheusTelemetry("http://p:9090/")
    assert source.url == "http://p:9090"
    by = "max by (namespace, pod, UUID, gpu, source)"
    energy = 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{pod!=""}'
    assert [q.promql for q in source.queries] == [
        f'{by} (DCGM_FI_DEV_POWER_USAGE{{pod!=""}})',
        # the counter's scrape time comes back in the same query, marked by a label
        f'{by} ({energy}) or label_replace({by} (timestamp({energy})), "etj_sample", "time", "", "")',
        f'{by} (DCGM_FI_DEV_POWER_MGMT_LIMIT{{pod!=""}})',
    ]


def test_the_counter_sample_is_stamped_with_its_scrape_time():
    stamp = series("a-worker-0", "0", 995.25, uuid="GPU-a0", t=1001.0)
    stamp["metric"]["etj_sample"] = "time"
    source = Canned({"TOTAL_ENERGY": [series("a-worker-0", "0", 5000, uuid="GPU-a0", t=1001.0), stamp]})
    (sample,) = asyncio.run(source.collect(TARGETS)).samples
    assert sample.energy_mj == 5000.0 and sample.timestamp_seconds == 995.25


def test_label_scheme_and_extra_matchers_shape_the_query():
    source = PrometheusTelemetry(
        "http://p",
        pod_label="exported_pod",
        namespace_label="exported_namespace",
        limit_metric=None,
        extra_matchers='job="dcgm"',
    )
    assert len(source.queries) == 2
    assert source.queries[0].promql == (
        "max by (exported_namespace, exported_pod, UUID, gpu, source) "
        '(DCGM_FI_DEV_POWER_USAGE{exported_pod!="",job="dcgm"})'
    )


@pytest.mark.parametrize("bad", [{"pod_label": "pod-name"}, {"power_metric": "9bad"}, {"timeout_seconds": 0}])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        PrometheusTelemetry("http://p", **bad)


def test_series_are_mapped_to_known_pods_and_merged_per_gpu():
    source = Canned(
        {
            "POWER_USAGE": [
                series("a-worker-0", "0", 300.5, uuid="GPU-a0", source="simulated"),
                series("a-worker-0", "1", 310.0, uuid="GPU-a1", source="simulated"),
                series("b-worker-0", "0", 200.0),  # no UUID: named by index
                series("stranger", "0", 999.0, uuid="GPU-s"),
                series("a-worker-0", "0", 1.0, namespace="other", uuid="GPU-o"),
            ],
            "TOTAL_ENERGY": [series("a-worker-0", "0", 5000, uuid="GPU-a0", source="simulated", t=1001.0)],
            "MGMT_LIMIT": [series("b-worker-0", "0", 400.0)],
        }
    )
    result = asyncio.run(source.collect(TARGETS))
    assert result.error is None and result.requests == 3 and len(source.asked) == 3
    by_gpu = {(s.pod, s.gpu): s for s in result.samples}
    assert set(by_gpu) == {("a-worker-0", "GPU-a0"), ("a-worker-0", "GPU-a1"), ("b-worker-0", "0")}
    a0 = by_gpu[("a-worker-0", "GPU-a0")]
    assert (a0.power_watts, a0.energy_mj, a0.power_limit_watts, a0.simulated) == (300.5, 5000.0, None, True)
    assert a0.timestamp_seconds == 1001.0
    b0 = by_gpu[("b-worker-0", "0")]
    assert (b0.power_watts, b0.power_limit_watts, b0.simulated) == (200.0, 400.0, False)


def test_the_query_count_does_not_grow_with_the_number_of_jobs():
    source = Canned({})
    many = [PodTarget("ml", f"j{i}-worker-{r}", f"j{i}") for i in range(500) for r in range(4)]
    assert asyncio.run(source.collect(many)).requests == 3
    assert asyncio.run(source.collect(many[:1])).requests == 3
    assert len(source.asked) == 6


def test_no_targets_no_queries():
    source = Canned({})
    result = asyncio.run(source.collect([]))
    assert (result.requests, result.samples, result.error) == (0, [], None)
    assert source.asked == []


def test_one_failed_query_fails_the_cycle_without_raising():
    source = Canned({"TOTAL_ENERGY": RuntimeError("HTTP Status Code 503")})
    result = asyncio.run(source.collect(TARGETS))
    assert result.samples == [] and result.requests == 3
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in result.error and "503" in result.error


def test_a_malformed_answer_is_an_error():
    result = asyncio.run(
        Canned({"POWER_USAGE": [{"metric": {"pod": "a-worker-0", "namespace": "ml"}}]}).collect(TARGETS)
    )
    assert result.samples == [] and "malformed" in result.error


def test_an_unreachable_prometheus_is_an_error_result():
    source = PrometheusTelemetry(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    result = asyncio.run(source.collect(TARGETS))
    assert result.samples == [] and result.requests == 3
    assert result.error is not None and "ConnectionError" in result.error
    assert asyncio.run(source.query_scalar("vector(1)")) is None
    source.close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([1000.0, "412.5"], 412.5),  # a scalar
        ([series("x", "0", 97.0)], 97.0),  # a one-element vector
        ([], None),
        ([1000.0, "NaN"], None),
        ({"unexpected": 1}, None),
    ],
)
def test_query_scalar(answer, expected):
    assert asyncio.run(Canned({"carbon": answer}).query_scalar("carbon_intensity")) == expected


def test_operator_settings_shape_the_source():
    from etj_operator.config import OperatorConfig
    from etj_operator.handlers import make_source

    config = OperatorConfig.from_env(
        {
            "ETJ_PROMETHEUS_POD_LABEL": "exported_pod",
            "ETJ_PROMETHEUS_NAMESPACE_LABEL": "exported_namespace",
            "ETJ_PROMETHEUS_LIMIT_METRIC": "",
            "ETJ_PROMETHEUS_EXTRA_MATCHERS": 'job="dcgm"',
        }
    )
    source = make_source(config, "Prometheus", "http://prom:9090")
    assert isinstance(source, PrometheusTelemetry)
    assert (source.pod_label, source.namespace_label, len(source.queries)) == ("exported_pod", "exported_namespace", 2)
    assert all('job="dcgm"' in q.promql for q in source.queries)
    assert len(make_source(OperatorConfig.from_env({}), "Prometheus", "http://p").queries) == 3
