"""Direct telemetry: parsing dcgm-exporter's format (and its variants) and scraping pods over HTTP."""

import asyncio
import dataclasses
from pathlib import Path

import pytest
from dcgm_exporter import DcgmExporter

from etj_operator.telemetry.base import PodTarget
from etj_operator.telemetry.direct import DirectTelemetry, parse_dcgm_text

# A copy of ../shared/data/dcgm-exporter-scrape.prom (a real dcgm-exporter scrape in Kubernetes).
SCRAPE = Path(__file__).resolve().parents[1] / "data" / "dcgm-exporter-scrape.prom"
WORKER0_UUID = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"


def parse(text: str, **options):
    return parse_dcgm_text(text, namespace="ml", pod="resnet-ddp-worker-0", timestamp_seconds=100.0, **options)


def test_the_shared_scrape_gives_every_gpu_with_power_and_energy():
    samples = {s.gpu: s for s in parse(SCRAPE.read_text())}
    # Three GPUs on the node (one without a pod); SM clock and utilisation are not ours to read.
    assert len(samples) == 3
    worker0 = samples[WORKER0_UUID]
    assert worker0.power_watts == pytest.approx(612.481)
    assert worker0.energy_mj == 319159391
    assert worker0.power_limit_watts is None  # not in dcgm-exporter's default counters
    assert worker0.simulated is False
    assert (worker0.namespace, worker0.pod, worker0.timestamp_seconds) == ("ml", "resnet-ddp-worker-0", 100.0)


def test_a_node_wide_exporter_can_be_narrowed_to_the_pods_own_series():
    samples = parse(SCRAPE.read_text(), own_pod_label="pod")
    assert [s.gpu for s in samples] == [WORKER0_UUID]


@pytest.mark.parametrize(
    "text",
    [
        # dcgm-exporter 2.x+: UUID and a space after each comma, lowercase hostname, no modelName
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
        'DCGM_FI_DEV_POWER_USAGE{gpu="3", UUID="GPU-x", device="nvidia3", hostname="n", pod="p"} 250.500000\n'
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="3", UUID="GPU-x", device="nvidia3", hostname="n", pod="p"} 42\n',
        # old exporter: pod_name/pod_namespace, no HELP/TYPE lines at all
        'DCGM_FI_DEV_POWER_USAGE{gpu="3",UUID="GPU-x",pod_name="p",pod_namespace="ml"} 250.5\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="3",UUID="GPU-x",pod_name="p",pod_namespace="ml"} 42\n',
    ],
    ids=["spaced-labels", "pod_name-untyped"],
)
def test_label_variants_parse_to_the_same_sample(text):
    (sample,) = parse(text)
    assert (sample.gpu, sample.power_watts, sample.energy_mj) == ("GPU-x", 250.5, 42)


def test_gpu_index_names_the_gpu_when_there_is_no_uuid_and_simulated_is_recognised():
    text = (
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",source="simulated"} 100.0\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="1",source="nvml"} 200.0\n'
        'DCGM_FI_DEV_POWER_MGMT_LIMIT{gpu="1",source="nvml"} 350.0\n'
    )
    samples = {s.gpu: s for s in parse(text)}
    assert samples["0"].simulated and not samples["1"].simulated
    assert samples["0"].energy_mj is None and samples["1"].power_limit_watts == 350.0


def test_nan_readings_are_dropped_and_sample_timestamps_win():
    text = 'DCGM_FI_DEV_POWER_USAGE{gpu="0"} NaN\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 7 1700000000000\n'
    (sample,) = parse(text)
    assert sample.power_watts is None and sample.energy_mj == 7
    assert sample.timestamp_seconds == pytest.approx(1_700_000_000.0)


def test_custom_metric_names():
    text = 'my_power{gpu="0"} 12\nmy_energy_total{gpu="0"} 34\n'
    (sample,) = parse(text, power_metric="my_power", energy_metric="my_energy", limit_metric=None)
    assert (sample.power_watts, sample.energy_mj) == (12, 34)


def test_malformed_text_raises_value_error():
    with pytest.raises(ValueError):
        parse('DCGM_FI_DEV_POWER_USAGE{gpu="0" 12\n')


def test_scrapes_every_pod_and_reports_each_failure_separately():
    with DcgmExporter(simulated=True) as good, DcgmExporter() as broken:
        good.add_pod("ml", "job-worker-0", gpus=2, watts=321.0, limit_watts=500.0)
        broken.fail_scrapes = True
        targets = [
            PodTarget("ml", "job-worker-0", "job", pod_ip="127.0.0.1", metrics_port=good.port),
            PodTarget("ml", "job-worker-1", "job", pod_ip="127.0.0.1", metrics_port=broken.port),
            PodTarget("ml", "job-worker-2", "job", pod_ip=None),
        ]
        telemetry = DirectTelemetry(timeout_seconds=2.0, max_concurrency=2)
        result = asyncio.run(telemetry.collect(targets))
        assert result.error is None
        assert result.requests == 2  # the pod without an IP is not scraped
        assert set(result.pod_errors) == {"ml/job-worker-1", "ml/job-worker-2"}
        assert "503" in result.pod_errors["ml/job-worker-1"]
        assert sorted(s.gpu for s in result.samples) == sorted(good.gpu_uuids("ml", "job-worker-0"))
        for sample in result.samples:
            assert sample.pod == "job-worker-0" and sample.simulated
            assert sample.power_watts == 321.0 and sample.power_limit_watts == 500.0
            assert sample.energy_mj is not None and sample.energy_mj >= 0
        assert good.scrapes == 1 and broken.scrapes == 1


def test_a_refused_connection_is_a_pod_error_not_an_exception():
    with DcgmExporter() as exporter:
        port = exporter.port
    result = asyncio.run(
        DirectTelemetry().collect([PodTarget("ml", "w-0", "j", pod_ip="127.0.0.1", metrics_port=port)])
    )
    assert result.samples == [] and result.requests == 1
    assert "ml/w-0" in result.pod_errors


def test_no_promql_without_a_prometheus_url():
    assert asyncio.run(DirectTelemetry().query_scalar("vector(1)")) is None


def test_ipv6_pod_addresses_are_bracketed():
    url = DirectTelemetry().url_of(PodTarget("ml", "w-0", "j", pod_ip="fd00::5", metrics_port=9400))
    assert url == "http://[fd00::5]:9400/metrics"


class FixedText(DcgmExporter):
    """Serves a fixed exposition (with the sample timestamps the test chose)."""

    def __init__(self, text):
        super().__init__()
        self.text = text

    def render(self, when_s=None):
        return self.text


def test_samples_carry_the_pods_identity_and_none_from_before_the_pods_start():
    # 1700000000 = 2023-11-14T22:13:20Z: GPU-old's sample predates the pod (an earlier pod's), GPU-new's not
    text = (
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-old",Hostname="elsewhere"} 5 1699999990000\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-new",Hostname="elsewhere"} 7 1700000010000\n'
    )
    with FixedText(text) as exporter:
        start = "2023-11-14T22:13:20Z"
        target = PodTarget(
            "ml", "j-worker-0", "j", "127.0.0.1", exporter.port, uid="uid-b", node="n1", start_time=start
        )
        result = asyncio.run(DirectTelemetry().collect([target]))
    (sample,) = result.samples
    # the endpoint is the pod's own: its node is the pod's whatever the exporter calls its host
    assert (sample.gpu, sample.uid, sample.node, sample.pod_start_seconds) == ("GPU-new", "uid-b", "n1", 1_700_000_000)
    assert result.rejected == 1 and "older than the pod's start" in result.rejected_reasons["ml/j-worker-0"]
    assert result.rejected_by_kind == {"before_start": 1}
    assert result.pod_errors == {}


def test_a_pod_serving_more_gpus_than_it_requested_gets_the_first_ones_it_asked_for():
    with DcgmExporter() as exporter:
        uuids = exporter.add_pod("ml", "j-worker-0", gpus=8, watts=5_000_000.0)
        target = PodTarget("ml", "j-worker-0", "j", "127.0.0.1", exporter.port, uid="uid-1", gpus=2)
        first = asyncio.run(DirectTelemetry().collect([target]))
        second = asyncio.run(DirectTelemetry().collect([target]))
        unlimited = asyncio.run(DirectTelemetry().collect([dataclasses.replace(target, gpus=None)]))
    assert [s.gpu for s in first.samples] == sorted(uuids)[:2] == [s.gpu for s in second.samples]
    assert first.rejected_by_kind == {"too_many_gpus": 6}
    assert "8 GPUs served by a pod that requested 2 nvidia.com/gpu" in first.rejected_reasons["ml/j-worker-0"]
    assert len(unlimited.samples) == 8


def test_an_unparseable_answer_is_named_without_quoting_it():
    with FixedText('DCGM_FI_DEV_POWER_USAGE{gpu="0" 12 injected: trust me\n') as exporter:
        target = PodTarget("ml", "w-0", "j", "127.0.0.1", exporter.port)
        result = asyncio.run(DirectTelemetry().collect([target]))
    error = result.pod_errors["ml/w-0"]
    assert error.endswith("the answer is not in the Prometheus text format") and "trust me" not in error
