import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from etj_operator import contract
from etj_workload.gpu import GpuReading
from etj_workload.metrics import MetricsServer, MetricsSnapshot, render

READING = GpuReading(0, "GPU-simulated-00000000", "Simulated H100", "simulated", 612_481, 319_159_391, 500_000)


def snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(
        gpus=[READING],
        progress={"training_step": 42.0, "training_accuracy": 0.97},
        job="j",
        namespace="ns",
        pod="j-worker-0",
        hostname="node-a",
    )


def test_render_uses_dcgm_names_units_and_labels() -> None:
    text = render(snapshot())
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
    line = next(x for x in text.splitlines() if x.startswith(contract.METRIC_POWER_USAGE + "{"))
    assert line.startswith('DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-simulated-00000000",pci_bus_id=""')
    assert line.endswith(" 612.481000") and 'source="simulated"' in line and 'pod="j-worker-0"' in line
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text and text.count(" 319159391\n") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["etj_training_step"].samples[0].value == 42.0
    assert families["DCGM_FI_DEV_POWER_MGMT_LIMIT"].samples[0].value == 500.0


def test_training_gauges_name_the_job_job_name_never_job() -> None:
    """``job`` is the scrape job's label in Prometheus; a gauge's own ``job`` would become ``exported_job``."""
    families = {f.name: f for f in text_string_to_metric_families(render(snapshot()))}
    labels = families["etj_training_step"].samples[0].labels
    assert labels == {"job_name": "j", "namespace": "ns", "pod": "j-worker-0"}


def test_server_serves_metrics() -> None:
    server = MetricsServer(snapshot, port=0, host="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain")
        assert "etj_training_accuracy" in body and contract.METRIC_TOTAL_ENERGY_CONSUMPTION in body
    finally:
        server.close()
