"""Worker pods get no privilege from the operator, except SYS_ADMIN on the trainer when power is managed.

The builders are checked across spec variants (every power mode, a power budget alone, templates with their
own security settings and a sidecar): the operator's pod differs from the user's template in privileges by
exactly nothing, or by SYS_ADMIN in the trainer's capabilities.add when ``energy.power`` is managed.
"""

from __future__ import annotations

import copy
import itertools

import pytest

from etj_operator import builders
from etj_operator.models import parse_spec

from jobs import job_manifest

POWER = {
    "absent": None,
    "unmanaged": {"mode": "Unmanaged"},
    "budget-only": {"mode": "Unmanaged", "budgetWatts": 1200},
    "fixed": {"mode": "Fixed", "limitWatts": 300},
    "auto": {"mode": "Auto", "auto": {"eta": 0.5}},
}
MANAGED = {"budget-only", "fixed", "auto"}

TEMPLATES = {
    "plain": {},
    "hardened": {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    },
    "own-capability": {"securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}},
}

#: Fields of a pod or container that grant privilege; the operator must never set any of them.
POD_PRIVILEGE_FIELDS = ("hostNetwork", "hostPID", "hostIPC", "hostUsers", "securityContext", "shareProcessNamespace")
CONTAINER_PRIVILEGE_FIELDS = ("privileged", "allowPrivilegeEscalation", "runAsUser", "runAsNonRoot", "runAsGroup",
                              "readOnlyRootFilesystem", "seccompProfile", "appArmorProfile", "procMount",
                              "seLinuxOptions")


def build(power, trainer_extra, sidecar=True):
    body = job_manifest("secure", namespace="ml")
    containers = body["spec"]["template"]["spec"]["containers"]
    containers[0].update(copy.deepcopy(trainer_extra))
    if sidecar:
        containers.append({"name": "logship", "image": "example.org/logship:1"})
    if power is not None:
        body["spec"]["energy"] = {"power": copy.deepcopy(power)}
    job = builders.JobRef.from_body(body)
    spec = parse_spec(body["spec"], "secure")
    return body["spec"]["template"], [builders.build_worker_pod(job, spec, i, 0) for i in range(2)]


def container(spec, name):
    return next(x for x in spec["containers"] if x["name"] == name)


@pytest.mark.parametrize(("power", "template"), list(itertools.product(POWER, TEMPLATES)))
def test_only_sys_admin_and_only_when_power_is_managed(power, template):
    source, pods = build(POWER[power], TEMPLATES[template])
    wanted = TEMPLATES[template].get("securityContext", {})
    for pod in pods:
        spec = pod["spec"]
        for field in POD_PRIVILEGE_FIELDS:
            assert spec.get(field) == source["spec"].get(field), field
        assert not any("hostPath" in v for v in spec.get("volumes") or [])
        trainer = container(spec, "trainer")
        got = trainer.get("securityContext") or {}
        for field in CONTAINER_PRIVILEGE_FIELDS:
            assert got.get(field) == wanted.get(field), field
        added = list((got.get("capabilities") or {}).get("add") or [])
        before = list((wanted.get("capabilities") or {}).get("add") or [])
        assert added == before + (["SYS_ADMIN"] if power in MANAGED else [])
        assert (got.get("capabilities") or {}).get("drop") == (wanted.get("capabilities") or {}).get("drop")
        # the sidecar is never touched
        assert container(spec, "logship") == {"name": "logship", "image": "example.org/logship:1"}
        # the pods run as the job's own ServiceAccount (bound to the per-job Role), not a shared one
        assert spec["serviceAccountName"] == "secure-etj"


def test_sys_admin_is_added_once_even_if_the_template_asks_for_it():
    _, pods = build(POWER["fixed"], {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}})
    assert container(pods[0]["spec"], "trainer")["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
