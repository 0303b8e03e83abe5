"""Which GPU series count for a pod: label schemes per series, the GPUs it requested, the node agent's map,
duplicates of one GPU, and the labels named when nothing matches (the Prometheus source, answers canned)."""

import asyncio

import pytest

from etj_operator.energy import EnergyState, integrate
from etj_operator.telemetry.base import PodTarget, rfc3339_seconds
from etj_operator.telemetry.prometheus import PrometheusTelemetry

START = "2024-05-01T12:00:00Z"
T0 = rfc3339_seconds(START)
NODE = "gpu-node-1"
REAL = "GPU-ffff-real"  # the GPU the kubelet gave the pod: its UUID sorts after every forged one
FORGED = [f"GPU-0000-forged-{i}" for i in range(7)]


def pod(name="j-worker-0", *, gpus=None, node=NODE, uid="uid-1", namespace="ml"):
    return PodTarget(namespace, name, "j", uid=uid, node=node, start_time=START, gpus=gpus)


def gpu_series(uuid, *, watts, mj, scraped, labels=None, host=NODE, job="dcgm", instance="10.0.0.1:9400", index="0"):
    """Power and energy series (with their scrape-time twins) of one GPU under ``labels`` (default pod labels)."""
    base = {"UUID": uuid, "gpu": index, "Hostname": host, "job": job, "instance": instance}
    base.update({"namespace": "ml", "pod": "j-worker-0"} if labels is None else labels)
    out = {"POWER_USAGE": [], "TOTAL_ENERGY": []}
    for metric, value in (("POWER_USAGE", watts), ("TOTAL_ENERGY", mj)):
        out[metric].append({"metric": dict(base), "value": [scraped + 1, str(value)]})
        out[metric].append({"metric": {**base, "etj_sample": "time"}, "value": [scraped + 1, str(scraped)]})
    return out


def agent_series(uuid, *, host=NODE, pod_labels=None, index="0"):
    """The node agent's desired-limit series for a GPU held by ``pod_labels`` (none: a GPU nobody holds)."""
    labels = {"UUID": uuid, "gpu": index, "Hostname": host, "etj_sample": "agent", **(pod_labels or {})}
    return {"POWER_USAGE": [{"metric": labels, "value": [T0 + 100, "700"]}]}


def merged(*answers):
    out = {"POWER_USAGE": [], "TOTAL_ENERGY": [], "MGMT_LIMIT": []}
    for answer in answers:
        for metric, rows in answer.items():
            out[metric].extend(rows)
    return out


class Canned(PrometheusTelemetry):
    def __init__(self, answers, **options):
        super().__init__("http://prometheus.invalid:9090", **options)
        self.answers = answers

    def _query_blocking(self, slot, promql):
        return next((answer for metric, answer in self.answers.items() if metric in promql), [])


def collect(answers, targets, **options):
    return asyncio.run(Canned(answers, **options).collect(targets))


# --- label schemes, without configuration ---------------------------------------------------------------
HOLDER = {"exported_namespace": "ml", "exported_pod": "j-worker-0"}
EXPORTER_POD = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-7xk2p"}


@pytest.mark.parametrize(
    "labels",
    [
        {"namespace": "ml", "pod": "j-worker-0"},  # honor_labels: true
        {**HOLDER, **EXPORTER_POD},  # honor_labels: false: the series' own pod is the exporter's
        {"pod_namespace": "ml", "pod_name": "j-worker-0"},  # dcgm-exporter before 2.0
        {"pod_namespace": "ml", "pod_name": "j-worker-0", **EXPORTER_POD},  # ... scraped with honor_labels: false
    ],
    ids=["pod", "exported_pod", "pod_name", "pod_name-under-exporter-pod"],
)
def test_every_label_scheme_is_read_without_configuration(labels):
    result = collect(gpu_series(REAL, watts=300, mj=1000, scraped=T0 + 10, labels=labels), [pod()])
    (sample,) = result.samples
    assert (sample.pod, sample.gpu, sample.uid, sample.power_watts) == ("j-worker-0", REAL, "uid-1", 300.0)
    assert result.rejected == 0 and result.labels_seen == ()


def test_the_exporters_own_pod_is_not_the_holder_when_exported_labels_name_one():
    # under honor_labels: false the series says pod=<the exporter>; a job pod named like it gets nothing
    exporter = pod("nvidia-dcgm-exporter-7xk2p", namespace="gpu-operator")
    answers = gpu_series(REAL, watts=300, mj=1000, scraped=T0 + 10, labels={**HOLDER, **EXPORTER_POD})
    assert collect(answers, [exporter]).samples == []
    # an idle GPU (no holder) under the same exporter does resolve to the exporter's pod: not a managed pod
    idle = gpu_series("GPU-idle", watts=60, mj=5, scraped=T0 + 10, labels=EXPORTER_POD)
    assert [s.gpu for s in collect(merged(answers, idle), [pod()]).samples] == [REAL]


def test_a_configured_scheme_reads_only_its_labels():
    answers = gpu_series(REAL, watts=300, mj=1000, scraped=T0 + 10, labels={**HOLDER, **EXPORTER_POD})
    assert collect(answers, [pod()], pod_label="pod", namespace_label="namespace").samples == []
    assert len(collect(answers, [pod()], pod_label="exported_pod").samples) == 1


def test_labels_seen_names_the_labels_when_no_gpu_series_names_any_pod():
    labels_part = {
        "metric": {"UUID": "GPU-x", "gpu": "0", "Hostname": NODE, "k8s_pod": "j-worker-0", "etj_sample": "labels"},
        "value": [T0, "300"],
    }
    result = collect({"POWER_USAGE": [labels_part]}, [pod()])
    assert result.samples == [] and result.labels_seen == ("Hostname", "UUID", "gpu", "k8s_pod")
    # once any GPU series names a pod, a pod without series is a missing series, not a label mismatch
    other = gpu_series("GPU-o", watts=1, mj=1, scraped=T0 + 10, labels={"namespace": "ml", "pod": "other"})
    assert collect(merged({"POWER_USAGE": [labels_part]}, other), [pod()]).labels_seen == ()


# --- the GPUs a pod requested ----------------------------------------------------------------------------
def spoofed(host):
    """Seven forged GPUs at 5 MW each, served under the pod's name (its own /metrics through a PodMonitor)."""
    return merged(
        *(
            gpu_series(u, watts=5_000_000, mj=9e12, scraped=T0 + 10, host=host, job="workers", instance="10.1.0.7:9400")
            for u in FORGED
        )
    )


def real_gpu(scraped=T0 + 10, mj=1_000_000):
    return gpu_series(REAL, watts=350, mj=mj, scraped=scraped)


@pytest.mark.parametrize("forged_host", ["j-worker-0", NODE], ids=["pod-host-name", "node-name"])
def test_no_more_gpus_count_than_the_pod_requested(forged_host):
    result = collect(merged(real_gpu(), spoofed(forged_host)), [pod(gpus=1)])
    assert [s.gpu for s in result.samples] == [REAL if forged_host == "j-worker-0" else FORGED[0]]
    assert result.rejected_by_kind == {"too_many_gpus": 7}
    assert "8 GPU series for a pod that requested 1 nvidia.com/gpu" in result.rejected_reasons["ml/j-worker-0"]
    # deterministic: the same choice every cycle
    again = collect(merged(spoofed(forged_host), real_gpu()), [pod(gpus=1)])
    assert [s.gpu for s in again.samples] == [s.gpu for s in result.samples]


def test_without_a_request_every_series_counts_and_with_one_the_job_keeps_its_gpu_count():
    assert len(collect(merged(real_gpu(), spoofed(NODE)), [pod(gpus=None)]).samples) == 8
    state = EnergyState()
    for scraped, mj in ((T0 + 10, 1_000_000), (T0 + 20, 4_500_000)):
        result = collect(merged(real_gpu(scraped, mj), spoofed("j-worker-0")), [pod(gpus=1)])
        integrate(state, result.samples, source="Prometheus")
    # the throttle splits the job's budget over the GPUs read: one, not eight
    assert {s.series for s in result.samples} == {f"uid-1/{REAL}"}
    assert state.joules == 3500.0


# --- the node agent's pod->GPU map -------------------------------------------------------------------------
HELD = {"namespace": "ml", "pod": "j-worker-0", "container": "trainer"}


def test_the_node_agents_map_is_the_authority_on_the_pods_gpus():
    answers = merged(real_gpu(), spoofed(NODE), agent_series(REAL, pod_labels=HELD), agent_series("GPU-idle"))
    result = collect(answers, [pod(gpus=1)])
    # the forged GPUs sort first and claim the node's name: the agent's map still picks the pod's own GPU
    assert [s.gpu for s in result.samples] == [REAL]
    assert result.rejected_by_kind == {"not_held": 7}
    reason = result.rejected_reasons["ml/j-worker-0"]
    assert reason.startswith("the node agent on gpu-node-1 does not list GPU GPU-0000-forged-") and REAL in reason
    # also without a GPU request: no forged GPU counts
    assert [s.gpu for s in collect(answers, [pod(gpus=None)]).samples] == [REAL]


def test_the_agents_map_is_read_under_any_scheme_and_matched_by_index_without_a_uuid():
    honor_false = {**HOLDER, "namespace": "etj-system", "pod": "etj-node-agent-x"}
    answers = merged(real_gpu(), spoofed(NODE), agent_series(REAL, pod_labels=honor_false))
    assert [s.gpu for s in collect(answers, [pod()]).samples] == [REAL]
    no_uuid = gpu_series("", watts=350, mj=1, scraped=T0 + 10, index="3")
    answers = merged(no_uuid, agent_series(REAL, pod_labels=HELD, index="3"))
    assert [s.gpu for s in collect(answers, [pod()]).samples] == ["3"]


def test_a_node_without_the_agent_is_not_judged_by_another_nodes_agent():
    answers = merged(real_gpu(), agent_series("GPU-elsewhere", host="gpu-node-2", pod_labels=HELD))
    assert [s.gpu for s in collect(answers, [pod()]).samples] == [REAL]
    # the agent runs on the pod's node but does not (yet) list the pod: nothing counts there
    answers = merged(real_gpu(), agent_series("GPU-idle"))
    result = collect(answers, [pod()])
    assert result.samples == [] and result.rejected_by_kind == {"not_held": 1}
    assert "(it lists none)" in result.rejected_reasons["ml/j-worker-0"]
    # a pod of unknown node is not checked against any agent
    assert len(collect(answers, [pod(node=None)]).samples) == 1


def test_without_the_agent_metric_the_map_is_neither_asked_nor_read():
    answers = merged(real_gpu(), agent_series("GPU-idle"))
    assert len(collect(answers, [pod()], agent_metric=None).samples) == 1
    assert "etj_node_agent" not in Canned({}, agent_metric=None).queries[0].promql


# --- duplicates of one GPU ------------------------------------------------------------------------------------
def test_one_gpu_read_from_two_scrape_targets_counts_once_from_the_newest_scrape():
    older = gpu_series(REAL, watts=350, mj=1_000_000, scraped=T0 + 10, job="dcgm-a", instance="10.0.0.1:9400")
    newer = gpu_series(REAL, watts=351, mj=1_003_500, scraped=T0 + 20, job="dcgm-b", instance="10.0.0.1:9400")
    for answers in (merged(older, newer), merged(newer, older)):
        result = collect(answers, [pod()])
        (sample,) = result.samples
        assert (sample.energy_mj, sample.timestamp_seconds) == (1_003_500, T0 + 20)
        assert result.rejected_by_kind == {"duplicate": 1}
        assert result.rejected_reasons["ml/j-worker-0"] == (
            f"GPU {REAL} also read from dcgm-a/10.0.0.1:9400: kept the series from dcgm-b/10.0.0.1:9400"
        )


def test_the_nodes_exporter_wins_over_the_pods_own_copy_even_a_newer_higher_one():
    node = gpu_series(REAL, watts=350, mj=1_000_000, scraped=T0 + 10)
    own = gpu_series(REAL, watts=9e6, mj=9e12, scraped=T0 + 30, host="j-worker-0", job="workers", instance="p:9400")
    result = collect(merged(own, node), [pod()])
    (sample,) = result.samples
    assert (sample.energy_mj, sample.node) == (1_000_000, NODE)
    assert result.rejected_by_kind == {"duplicate": 1}


def test_equal_copies_are_resolved_in_a_fixed_order():
    a = gpu_series(REAL, watts=350, mj=1_000_000, scraped=T0 + 10, job="b-job", instance="i")
    b = gpu_series(REAL, watts=350, mj=1_000_000, scraped=T0 + 10, job="a-job", instance="i")
    kept = {collect(answers, [pod()]).rejected_reasons["ml/j-worker-0"] for answers in (merged(a, b), merged(b, a))}
    assert kept == {f"GPU {REAL} also read from b-job/i: kept the series from a-job/i"}


def test_a_target_serving_only_the_limit_fills_it_in_and_is_no_duplicate():
    # the node agent exports DCGM_FI_DEV_POWER_MGMT_LIMIT with the holder's labels, beside dcgm-exporter's series
    agent_limit = {
        "MGMT_LIMIT": [
            {
                "metric": {**HELD, "UUID": REAL, "gpu": "0", "Hostname": NODE, "job": "agent", "instance": "a:9401"},
                "value": [T0 + 40, "450"],
            }
        ]
    }
    result = collect(merged(real_gpu(), agent_limit), [pod(gpus=1)])
    (sample,) = result.samples
    assert (sample.energy_mj, sample.power_limit_watts) == (1_000_000, 450.0)
    assert result.rejected == 0
