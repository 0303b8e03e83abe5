"""Hypothesis-generated bad specs: one field of a valid job replaced by a value of any type or size.

* Offline, against the CRD's schema and the operator's parser: the parser never crashes (only
  InvalidSpecError, every problem naming a field path under spec or metadata), and it refuses everything
  the schema refuses, so an API server that skips validation still gets the job failed, not run.
* Through the real operator with no admission: a seeded batch of generated specs each ends Failed with the
  Invalid condition naming the field, and no pod is created for any of them.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml
from badinput_support import invalid_condition, post, set_admission
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etj_operator import contract as c
from etj_operator.models import InvalidSpecError, parse_spec
from etj_operator.runner import OperatorThread
from etj_operator.sandbox.emulator import EmulatorServer, prune_and_default
from etj_operator.sandbox.emulator.admission import SchemaValidator

from emulated import NS, ROOT, Cluster, wait_until
from jobs import job_manifest

CRD = yaml.safe_load((ROOT / "crds" / "efficienttrainingjobs.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
VALIDATOR = SchemaValidator(SCHEMA)

#: Fields to break, with the context each needs to be reachable (e.g. limitWatts only means something
#: under mode Fixed). Paths are dotted from spec.
FIELDS = [
    ("replicas", {}),
    ("nprocPerNode", {}),
    ("suspend", {}),
    ("runPolicy.backoffLimit", {}),
    ("runPolicy.activeDeadlineSeconds", {}),
    ("runPolicy.ttlSecondsAfterFinished", {}),
    ("runPolicy.cleanPodPolicy", {}),
    ("elastic.minReplicas", {"elastic": {"minReplicas": 1, "maxReplicas": 4}}),
    ("elastic.maxRestarts", {"elastic": {"minReplicas": 1, "maxReplicas": 4}}),
    ("checkpoint.path", {"checkpoint": {"path": "/ckpt"}}),
    ("energy.telemetry.source", {}),
    ("energy.telemetry.intervalSeconds", {}),
    ("energy.telemetry.prometheusURL", {}),
    ("energy.power.mode", {}),
    ("energy.power.limitWatts", {"energy": {"power": {"mode": "Fixed", "limitWatts": 300}}}),
    ("energy.power.budgetWatts", {}),
    ("energy.power.auto.eta", {"energy": {"power": {"mode": "Auto", "auto": {}}}}),
    ("energy.power.auto.maxSlowdown", {"energy": {"power": {"mode": "Auto", "auto": {}}}}),
    ("energy.energyBudget.kilowattHours", {"energy": {"energyBudget": {"kilowattHours": 1}}}),
    ("energy.energyBudget.action", {"energy": {"energyBudget": {"kilowattHours": 1}}}),
    ("energy.carbon.intensityGramsPerKWh", {"energy": {"carbon": {"intensityGramsPerKWh": 300}}}),
    ("energy.carbon.maxGramsPerKWh", {"energy": {"carbon": {"intensityGramsPerKWh": 300}}}),
    ("energy.placement.rescheduleOnPowerPressure", {}),
    ("compression.accuracyGuard.maxDrop", {}),
    ("compression.accuracyGuard.action", {}),
]

values = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=80),
    st.booleans(),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def broken(field_index: int, value) -> tuple[dict, str]:
    path, context = FIELDS[field_index]
    body = job_manifest("generated", replicas=2)
    del body["metadata"]["uid"], body["metadata"]["generation"]
    merge(body["spec"], context)
    node = body["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return body, f"spec.{path}"


def schema_causes(body):
    return VALIDATOR.causes(prune_and_default(copy.deepcopy(body), SCHEMA))


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(FIELDS) - 1), values)
def test_the_parser_never_crashes_and_refuses_all_the_schema_refuses(field_index, value):
    body, _ = broken(field_index, value)
    try:
        parse_spec(body["spec"], body["metadata"]["name"])
        problems = []
    except InvalidSpecError as e:
        problems = e.problems
    for problem in problems:
        assert problem.path.startswith(("spec", "metadata")), problem
        assert problem.message
    if schema_causes(body):
        assert problems, f"the schema refuses {body['spec']} but the operator would run it"


def generated_batch(size: int) -> list[tuple[dict, str]]:
    """A seeded batch of specs the operator refuses (derandomized hypothesis draws)."""
    batch: list[tuple[dict, str]] = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.integers(min_value=0, max_value=len(FIELDS) - 1), values)
    def collect(field_index, value):
        if len(batch) >= size or (isinstance(value, float) and not math.isfinite(value)):
            return
        body, field = broken(field_index, value)
        try:
            parse_spec(body["spec"], "generated")
        except InvalidSpecError as e:
            if any(p.path == field or p.path.startswith(field) for p in e.problems):
                body["metadata"]["name"] = f"gen-{len(batch):02d}"
                batch.append((body, field))

    collect()
    return batch


@pytest.mark.slow
def test_generated_specs_fail_on_status_and_create_no_pods(tmp_path, monkeypatch):
    batch = generated_batch(20)
    assert len(batch) == 20
    with EmulatorServer(crds=[ROOT / "crds"]) as server:  # the job's CRD and its report's
        set_admission(server, "none")
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("ETJ_RECONCILE_INTERVAL_SECONDS", "0.5")
        monkeypatch.setenv("ETJ_METRICS_PORT", "0")
        with OperatorThread(quiet=True) as operator:
            cluster = Cluster(server)
            for body, _ in batch:
                answer = post(server, body, strict=False)
                assert answer.code == 201, answer.text
            for body, field in batch:
                name = body["metadata"]["name"]
                invalid = wait_until(lambda name=name: invalid_condition(server, name), 20, f"{name} Invalid")
                assert field in invalid["message"], (body["spec"], invalid["message"])
                assert cluster.pods(name) == []
            assert not any(r.method == "POST" and r.resource == "pods" for r in server.requests)
            good = job_manifest("still-works", replicas=1)
            del good["metadata"]["uid"], good["metadata"]["generation"]
            server.create(c.PLURAL, good, namespace=NS)
            cluster.wait_pods("still-works", 1)
            assert operator.error is None
