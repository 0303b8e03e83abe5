"""The Prometheus source without a server: its queries, label schemes, env settings and failure handling."""

import asyncio

import pytest
from prometheus_server import free_port

from etj_operator.energy import EnergyState, integrate
from etj_operator.telemetry.base import (
    AgentFindings,
    AgentGpuError,
    AgentUnknownDevice,
    PodTarget,
    TelemetryCause,
    rfc3339_seconds,
)
from etj_operator.telemetry.prometheus import PrometheusHTTPError, PrometheusTelemetry

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


def test_one_query_per_metric_reads_every_label_scheme_and_filters_out_gpus_without_a_pod():
    source = PrometheusTelemetry("http://p:9090/")
    assert source.url == "http://p:9090"
    assert source.schemes == (
        ("exported_pod", "exported_namespace"),
        ("pod_name", "pod_namespace"),
        ("pod", "namespace"),
    )
    by = (
        "max by (exported_namespace, exported_pod, pod_namespace, pod_name, namespace, pod,"
        " UUID, gpu, Hostname, hostname, source, job, instance)"
    )

    def labelled(metric):
        return [f'{metric}{{exported_pod!=""}}', f'{metric}{{pod_name!=""}}', f'{metric}{{pod!=""}}']

    def unlabelled(metric):
        sample = f'topk(1, {metric}{{exported_pod="",pod_name="",pod=""}})'
        return f'label_replace({sample}, "etj_sample", "labels", "", "")'

    def stamped(metric):
        stamps = " or ".join(f"timestamp({s})" for s in labelled(metric))
        return (
            f"{by} ({' or '.join(labelled(metric))})"
            # the series' scrape time comes back in the same query, marked by a label
            f' or label_replace({by} ({stamps}), "etj_sample", "time", "", "")'
            f" or {unlabelled(metric)}"
        )

    agent = (
        'label_replace(max by (exported_namespace, exported_pod, pod_namespace, pod_name, namespace, pod, UUID, gpu,'
        ' Hostname) (etj_node_agent_desired_power_limit_watts), "etj_sample", "agent", "", "")'
        # the agent's failed operations and the devices it does not find ride in the same query
        ' or label_replace(max by (UUID, gpu, Hostname, operation, error) (etj_node_agent_gpu_error == 1),'
        ' "etj_sample", "agent_error", "", "")'
        ' or label_replace(max by (exported_namespace, exported_pod, pod_namespace, pod_name, namespace, pod,'
        ' device_id, Hostname) (etj_node_agent_unknown_device == 1), "etj_sample", "agent_unknown", "", "")'
    )
    limit = "DCGM_FI_DEV_POWER_MGMT_LIMIT"
    assert [q.promql for q in source.queries] == [
        f"{stamped('DCGM_FI_DEV_POWER_USAGE')} or {agent}",
        stamped("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
        f"{by} ({' or '.join(labelled(limit))}) or {unlabelled(limit)}",
    ]
    # without a node label the node check is off and the label leaves the aggregation
    assert "hostname" not in PrometheusTelemetry("http://p", node_label=None).queries[1].promql
    assert "etj_node_agent" not in PrometheusTelemetry("http://p", agent_metric=None).queries[0].promql


def test_the_counter_sample_is_stamped_with_its_scrape_time():
    stamp = series("a-worker-0", "0", 995.25, uuid="GPU-a0", t=1001.0)
    stamp["metric"]["etj_sample"] = "time"
    source = Canned({"TOTAL_ENERGY": [series("a-worker-0", "0", 5000, uuid="GPU-a0", t=1001.0), stamp]})
    (sample,) = asyncio.run(source.collect(TARGETS)).samples
    assert sample.energy_mj == 5000.0 and sample.timestamp_seconds == 995.25


def test_a_configured_label_scheme_and_extra_matchers_shape_the_query():
    source = PrometheusTelemetry(
        "http://p",
        pod_label="exported_pod",
        namespace_label="exported_namespace",
        limit_metric=None,
        extra_matchers='job="dcgm"',
    )
    assert source.schemes == (("exported_pod", "exported_namespace"),) and len(source.queries) == 2
    assert source.queries[0].promql.startswith(
        "max by (exported_namespace, exported_pod, UUID, gpu, Hostname, hostname, source, job, instance) "
        '(DCGM_FI_DEV_POWER_USAGE{exported_pod!="",job="dcgm"}) or '
    )
    assert 'topk(1, DCGM_FI_DEV_POWER_USAGE{exported_pod="",job="dcgm"})' in source.queries[0].promql
    # a known scheme's pod label brings its namespace label
    assert PrometheusTelemetry("http://p", pod_label="pod_name").schemes == (("pod_name", "pod_namespace"),)


@pytest.mark.parametrize(
    "bad",
    [
        {"pod_label": "pod-name", "namespace_label": "ns"},
        {"pod_label": "k8s_pod"},  # not a known scheme: its namespace label must be named
        {"namespace_label": "namespace"},
        {"power_metric": "9bad"},
        {"timeout_seconds": 0},
    ],
)
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
    source = Canned({"TOTAL_ENERGY": PrometheusHTTPError(503)})
    result = asyncio.run(source.collect(TARGETS))
    assert result.samples == [] and result.requests == 3
    assert result.error == (
        "Prometheus at http://prometheus.invalid:9090 failed: DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION:"
        " HTTP 503: Prometheus is unavailable"
    )
    assert (result.status_code, result.error_cause) == (503, TelemetryCause.QUERY_FAILED)


def test_a_malformed_answer_is_an_error_that_quotes_nothing_of_it():
    result = asyncio.run(
        Canned({"POWER_USAGE": [{"metric": {"pod": "a-worker-0", "namespace": "ml"}}]}).collect(TARGETS)
    )
    assert result.samples == [] and "malformed" in result.error
    quoted = asyncio.run(Canned({"POWER_USAGE": [series("a-worker-0", "0", "hunter2")]}).collect(TARGETS))
    assert quoted.error == "Prometheus at http://prometheus.invalid:9090 gave a malformed answer (ValueError)"


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
            "ETJ_PROMETHEUS_NODE_LABEL": "",
        }
    )
    source = make_source(config, "Prometheus", "http://prom:9090")
    assert isinstance(source, PrometheusTelemetry)
    assert source.node_labels == ()  # the node check off
    assert (source.schemes, len(source.queries)) == ((("exported_pod", "exported_namespace"),), 2)
    assert all('job="dcgm"' in q.promql for q in source.queries)
    default = make_source(OperatorConfig.from_env({}), "Prometheus", "http://p")
    assert len(default.queries) == 3 and default.node_labels == ("Hostname", "hostname")
    assert len(default.schemes) == 3  # every scheme, without configuration
    custom = make_source(OperatorConfig.from_env({"ETJ_PROMETHEUS_NODE_LABEL": "node"}), "Prometheus", "http://p")
    assert custom.node_labels == ("node",)


# --- energy identity: a same-name pod of a re-created job on the same GPU ------------------------------
# Job A's pod j-worker-0 (UID uid-a) ran on GPU-UUID-1 of node n1 until its counter read X; the job was
# re-created as B, whose new j-worker-0 (UID uid-b) landed on the same GPU. dcgm-exporter labels the series
# with the pod's name only, and Prometheus keeps answering with A's last sample for a while.

START_A = "2024-05-01T12:00:00Z"
START_B = "2024-05-01T12:10:00Z"
T_A = rfc3339_seconds(START_A)
T_B = rfc3339_seconds(START_B)
X_MJ = 5_000_000  # A's last counter reading
POD_A = PodTarget("ml", "j-worker-0", "j", uid="uid-a", node="n1", start_time=START_A)
POD_B = PodTarget("ml", "j-worker-0", "j", uid="uid-b", node="n1", start_time=START_B)


def gpu_answers(*readings, evaluated):
    """Canned answers for (pod, UUID, Hostname, counter mJ, watts, scraped at) readings, with scrape stamps."""
    answers = {"POWER_USAGE": [], "TOTAL_ENERGY": []}
    for pod, uuid, host, mj, watts, scraped in readings:
        labels = {"namespace": "ml", "pod": pod, "gpu": "0", "UUID": uuid, "Hostname": host}
        for metric, value in (("POWER_USAGE", watts), ("TOTAL_ENERGY", mj)):
            answers[metric].append({"metric": labels, "value": [evaluated, str(value)]})
            answers[metric].append({"metric": {**labels, "etj_sample": "time"}, "value": [evaluated, str(scraped)]})
    return answers


def test_a_stale_same_name_series_is_not_the_new_pods_and_adds_no_foreign_energy():
    job_a, job_b = EnergyState(), EnergyState()
    # A's own readings, then A is gone (its last counter: X)
    for scraped, mj in ((T_A + 100, 1_000_000), (T_A + 200, X_MJ)):
        cycle = gpu_answers(("j-worker-0", "GPU-UUID-1", "n1", mj, 400, scraped), evaluated=scraped + 1)
        result = asyncio.run(Canned(cycle).collect([POD_A]))
        assert [s.uid for s in result.samples] == ["uid-a"]
        integrate(job_a, result.samples, source="Prometheus")
    assert job_a.joules == 4000.0

    other_node = ("j-worker-0", "GPU-UUID-2", "n2", 77_000_000, 650, T_B + 4)
    # B's first cycle: Prometheus still answers with A's last sample (older than B's start), and a
    # same-name series from another node: neither is B's
    stale = Canned(gpu_answers(("j-worker-0", "GPU-UUID-1", "n1", X_MJ, 400, T_A + 200), other_node, evaluated=T_B + 5))
    result = asyncio.run(stale.collect([POD_B]))
    assert result.error is None and result.samples == []
    assert result.rejected == 2 and "ml/j-worker-0" in result.rejected_reasons
    integrate(job_b, result.samples, source="Prometheus")

    # B's own readings: the GPU's counter went on meanwhile (the gap: 4000 J that were never B's)
    for scraped, mj in ((T_B + 15, 9_000_000), (T_B + 30, 12_000_000)):
        answers = gpu_answers(("j-worker-0", "GPU-UUID-1", "n1", mj, 200, scraped), other_node, evaluated=scraped + 1)
        result = asyncio.run(Canned(answers).collect([POD_B]))
        (sample,) = result.samples
        assert (sample.uid, sample.gpu, sample.node, sample.pod_start_seconds) == ("uid-b", "GPU-UUID-1", "n1", T_B)
        assert result.rejected == 1 and "node 'n2'" in result.rejected_reasons["ml/j-worker-0"]
        integrate(job_b, result.samples, source="Prometheus")
    # only what B's pod drew since its first own reading: not X, not the gap, nothing from n2
    assert job_b.joules == 3000.0
    assert set(job_b.series) == {"uid-b/GPU-UUID-1"} and job_b.series["uid-b/GPU-UUID-1"].since_seconds == T_B + 15
    assert job_a.joules == 4000.0


def test_with_both_same_name_pods_registered_each_reading_goes_to_the_pod_that_held_the_name():
    # A's registration may linger a cycle after B's pod exists: A's last sample is A's, B's sample is B's
    answers = gpu_answers(("j-worker-0", "GPU-UUID-1", "n1", X_MJ, 400, T_A + 200), evaluated=T_B + 5)
    (sample,) = asyncio.run(Canned(answers).collect([POD_B, POD_A])).samples
    assert sample.uid == "uid-a"
    answers = gpu_answers(("j-worker-0", "GPU-UUID-1", "n1", 9_000_000, 200, T_B + 15), evaluated=T_B + 16)
    (sample,) = asyncio.run(Canned(answers).collect([POD_A, POD_B])).samples
    assert sample.uid == "uid-b"


def test_unknown_node_or_start_skips_that_check_and_hostnames_compare_case_insensitively():
    answers = gpu_answers(("j-worker-0", "GPU-UUID-1", "N1", X_MJ, 400, T_A + 200), evaluated=T_B + 5)
    unknown = PodTarget("ml", "j-worker-0", "j", uid="uid-b")
    assert [s.uid for s in asyncio.run(Canned(answers).collect([unknown])).samples] == ["uid-b"]
    # the node name in another case is the same node (A ran then: accepted)
    assert [s.uid for s in asyncio.run(Canned(answers).collect([POD_A])).samples] == ["uid-a"]
    # node check off: another node's series is accepted
    answers = gpu_answers(("j-worker-0", "GPU-UUID-2", "n2", 1, 1, T_B + 15), evaluated=T_B + 16)
    assert asyncio.run(Canned(answers).collect([POD_B])).samples == []
    assert len(asyncio.run(Canned(answers, node_label=None).collect([POD_B])).samples) == 1


def test_a_power_only_series_is_checked_by_its_own_scrape_time():
    answers = gpu_answers(("j-worker-0", "GPU-UUID-1", "n1", 0, 400, T_A + 200), evaluated=T_B + 5)
    del answers["TOTAL_ENERGY"]
    result = asyncio.run(Canned(answers).collect([POD_B]))
    assert result.samples == [] and result.rejected == 1
    (sample,) = asyncio.run(Canned(answers).collect([POD_A])).samples
    assert sample.energy_mj is None and sample.timestamp_seconds == T_A + 200


def test_a_series_the_pod_serves_itself_names_the_pods_host_not_a_node():
    # the harness's /metrics through a PodMonitor: Hostname is the pod's host name (spec.hostname = pod name)
    answers = gpu_answers(("j-worker-0", "GPU-UUID-1", "j-worker-0", 9_000_000, 200, T_B + 15), evaluated=T_B + 16)
    assert [s.uid for s in asyncio.run(Canned(answers).collect([POD_B])).samples] == ["uid-b"]
    stale = gpu_answers(("j-worker-0", "GPU-UUID-1", "j-worker-0", X_MJ, 400, T_A + 200), evaluated=T_B + 16)
    assert asyncio.run(Canned(stale).collect([POD_B])).samples == []  # its time is still checked


# --- the node agent's word on the job's nodes and GPUs ------------------------------------------------------------
def agent_answers():
    """One power answer: dcgm-exporter's GPUs on n1, n2 and n3; the agent on n1 (its map, a refused set on
    GPU-1, an unknown device of a-worker-0) and on n2 (its map only; an error on a GPU nobody of the job holds)."""

    def gpu(pod, uuid, host):
        labels = {"namespace": "ml", "pod": pod, "gpu": "0", "UUID": uuid, "Hostname": host}
        return {"metric": labels, "value": [1000.0, "300"]}

    def agent(part, **labels):
        return {"metric": {**labels, "etj_sample": part}, "value": [1000.0, "1"]}

    return {
        "POWER_USAGE": [
            gpu("a-worker-0", "GPU-1", "n1"),
            gpu("b-worker-0", "GPU-2", "n2"),
            gpu("c-worker-0", "GPU-3", "n3"),
            agent("agent", namespace="ml", pod="a-worker-0", UUID="GPU-1", gpu="0", Hostname="n1"),
            agent("agent", namespace="ml", pod="b-worker-0", UUID="GPU-2", gpu="0", Hostname="n2"),
            agent("agent_error", UUID="GPU-1", gpu="0", Hostname="n1", operation="set", error="NoPermission"),
            agent("agent_error", UUID="GPU-9", gpu="3", Hostname="n2", operation="set", error="NotSupported"),
            agent("agent_unknown", namespace="ml", pod="a-worker-0", device_id="MIG-7", Hostname="n1"),
        ]
    }


def test_the_agents_series_name_missing_agents_refused_sets_and_unknown_devices_per_pod():
    a = PodTarget("ml", "a-worker-0", "a", uid="uid-a", node="n1")
    b = PodTarget("ml", "b-worker-0", "b", uid="uid-b", node="n2")
    c = PodTarget("ml", "c-worker-0", "c", uid="uid-c", node="n3")
    source = Canned(agent_answers())
    result = asyncio.run(source.collect([a, b, c]))
    assert len(source.asked) == 3  # no query added: the agent's series ride in the power query
    assert result.agent["uid-a"] == AgentFindings(
        read=True,
        gpu_errors=(AgentGpuError("n1", "GPU-1", "set", "NoPermission"),),
        unknown_devices=(AgentUnknownDevice("n1", "ml/a-worker-0", "MIG-7"),),
    )
    # the agent on n2 publishes; its error is on a GPU it does not list as b's: not b's
    assert result.agent["uid-b"] == AgentFindings(read=True)
    assert result.agent["uid-c"] == AgentFindings(read=True, nodes_without_agent=("n3",))
    # the readings themselves are unchanged: each pod keeps its GPU
    owners = sorted((s.uid, s.gpu) for s in result.samples)
    assert owners == [("uid-a", "GPU-1"), ("uid-b", "GPU-2"), ("uid-c", "GPU-3")]
    combined = AgentFindings.combine(result.agent.values())
    assert combined.nodes_without_agent == ("n3",) and len(combined.gpu_errors) == 1 and combined.read


def test_a_node_whose_agent_only_reports_errors_has_an_agent():
    gpu = {"namespace": "ml", "pod": "a-worker-0", "UUID": "GPU-1", "Hostname": "n1"}
    error = {"Hostname": "N1", "operation": "discover", "error": "LibraryError", "etj_sample": "agent_error"}
    answers = {"POWER_USAGE": [{"metric": gpu, "value": [1, "9"]}, {"metric": error, "value": [1, "1"]}]}
    result = asyncio.run(Canned(answers).collect([PodTarget("ml", "a-worker-0", "a", uid="u", node="n1")]))
    assert result.agent["u"] == AgentFindings(read=True)  # an agent is there (host names compare case-insensitively)
    assert [s.gpu for s in result.samples] == ["GPU-1"]  # its map lists nothing, and rejects nothing


def test_without_the_agents_metric_nothing_is_said_of_the_agent():
    source = Canned(agent_answers(), agent_metric=None)
    result = asyncio.run(source.collect([PodTarget("ml", "c-worker-0", "c", node="n3")]))
    assert result.agent == {} and len(result.samples) == 1
    # no agent series from any node: this Prometheus may not scrape the agents, so nothing is said either
    dcgm_only = {"POWER_USAGE": [x for x in agent_answers()["POWER_USAGE"] if "etj_sample" not in x["metric"]]}
    result = asyncio.run(Canned(dcgm_only).collect([PodTarget("ml", "c-worker-0", "c", node="n3")]))
    assert result.agent == {} and len(result.samples) == 1
