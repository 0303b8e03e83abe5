"""What a job registers for telemetry: its pods with the GPUs they requested, and what its spec may not name."""

import asyncio

import pytest

from etj_operator.config import OperatorConfig
from etj_operator.lifecycle import Plan, PodView, requested_gpus
from etj_operator.models import parse_spec
from etj_operator.reconciler import JobReconciler
from etj_operator.telemetry.base import TelemetryCause
from etj_operator.telemetry.hub import TelemetryHub

from jobs import job_manifest


def container(limits=None, requests=None):
    resources = {}
    if limits is not None:
        resources["limits"] = limits
    if requests is not None:
        resources["requests"] = requests
    return {"name": "c", "image": "i", "resources": resources}


@pytest.mark.parametrize(
    ("containers", "gpus"),
    [
        ([container({"nvidia.com/gpu": 4, "cpu": "2"})], 4),
        ([container(requests={"nvidia.com/gpu": "2"})], 2),  # a request alone (limits default to it)
        ([container({"nvidia.com/gpu": "1"}), container({"nvidia.com/gpu": 2}), container({"cpu": "1"})], 3),
        ([container({"cpu": "1"}), {"name": "bare", "image": "i"}], None),  # asks the device plugin nothing
        ([container({"nvidia.com/gpu": "lots"})], 0),
        ([], None),
    ],
)
def test_the_gpus_a_pod_requested(containers, gpus):
    assert requested_gpus({"containers": containers}) == gpus
    pod = {"metadata": {"name": "j-worker-0", "uid": "u"}, "spec": {"containers": containers}, "status": {}}
    assert PodView.from_pod(pod, "index", "generation").gpus == gpus


class NoApi:
    """The registration makes no API call."""


def registered(config, **spec_overrides):
    hub = TelemetryHub(lambda kind, url: None)  # never asked for a source: no cycle runs
    reconciler = JobReconciler(NoApi(), config, lambda body, event: None, hub=hub)
    spec = parse_spec(job_manifest("j", "ml", **spec_overrides)["spec"], "j")
    pods = [
        PodView("j-worker-0", 0, 0, "Running", node_name="n1", uid="u0", gpus=2),
        PodView("j-worker-1", 1, 0, "Running", node_name="n2", uid="u1"),
        PodView("j-worker-2", 2, 0, "Pending", uid="u2", gpus=8),
    ]
    reconciler._register_telemetry("ml", "j", spec, Plan(status={"phase": "Running"}), pods)
    return hub, hub._jobs[("ml", "j")]


def test_targets_carry_the_gpus_their_pods_requested():
    _, registration = registered(OperatorConfig())
    targets = [(t.pod, t.node, t.gpus) for t in registration.targets]
    assert targets == [("j-worker-0", "n1", 2), ("j-worker-1", "n2", None)]
    assert registration.refused == ""


def test_a_url_or_query_the_operator_does_not_allow_is_refused_at_registration_and_never_read():
    telemetry = {"telemetry": {"source": "Prometheus", "prometheusURL": "http://collector.team-b:9090"}}
    hub, registration = registered(OperatorConfig(), energy=telemetry)
    assert registration.refused.startswith("spec.energy.telemetry.prometheusURL 'http://collector.team-b:9090'")
    asyncio.run(hub.run_cycle())  # the factory would fail if the hub asked it for a source
    delivery = hub.take(("ml", "j"))
    assert delivery.cause == TelemetryCause.NOT_ALLOWED and delivery.samples == []

    carbon = {"carbon": {"intensityQuery": 'max(grid_intensity{zone="DE"})', "maxGramsPerKWh": 300}}
    _, refused = registered(OperatorConfig(), energy=carbon)
    # a refused query is never run, but the GPUs are still read: the energy account and budget go on
    assert refused.refused == ""
    assert refused.intensity_refused.startswith("spec.energy.carbon.intensityQuery is not allowed")
    allowed = OperatorConfig(
        prometheus_allowed_urls=("http://collector.team-b:9090",),
        prometheus_intensity_queries=('max(grid_intensity{zone="DE"})',),
    )
    both = registered(allowed, energy={**telemetry, **carbon})[1]
    assert both.refused == "" and both.intensity_refused == ""
