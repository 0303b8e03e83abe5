"""Worker pods get no privilege from the operator, except SYS_ADMIN on the trainer where the pod sets GPU limits.

The builders are checked across spec variants (every power mode, a power budget alone or with a mode, templates
with their own security settings and a sidecar) and with the node agent on and off (``OperatorConfig.node_agent``,
the chart's ``nodeAgent.enabled``): the operator's pod differs from the user's template in privileges by exactly
nothing, or by SYS_ADMIN in the trainer's capabilities.add. Without the agent that is every power-managed job
(Fixed, Auto, a budget); with it none: every mode's limits are the agent's (Auto's harness asks for its candidates
in its report), so every pod carries no capability, needs no root and fits the Pod Security ``baseline`` level
(docs/security.md).
"""

from __future__ import annotations

import copy
import itertools

import pytest

from etj_operator import builders, contract
from etj_operator.models import parse_spec

from jobs import job_manifest

POWER = {
    "absent": None,
    "unmanaged": {"mode": "Unmanaged"},
    "budget-only": {"mode": "Unmanaged", "budgetWatts": 1200},
    "fixed": {"mode": "Fixed", "limitWatts": 300},
    "auto": {"mode": "Auto", "auto": {"eta": 0.5}},
    "fixed-budget": {"mode": "Fixed", "limitWatts": 300, "budgetWatts": 1200},
    "auto-budget": {"mode": "Auto", "budgetWatts": 1200},
}
MANAGED = {"budget-only", "fixed", "auto", "fixed-budget", "auto-budget"}
#: With the node agent, the pods whose harness sets limits itself: none (Auto asks the agent through its report).
SETS_LIMITS_WITH_AGENT: set[str] = set()
AGENT = {"off": builders.PodOptions(), "on": builders.PodOptions(node_agent=True)}

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


def build(power, trainer_extra, sidecar=True, options=None):
    body = job_manifest("secure", namespace="ml")
    containers = body["spec"]["template"]["spec"]["containers"]
    containers[0].update(copy.deepcopy(trainer_extra))
    if sidecar:
        containers.append({"name": "logship", "image": "example.org/logship:1"})
    if power is not None:
        body["spec"]["energy"] = {"power": copy.deepcopy(power)}
    job = builders.JobRef.from_body(body)
    spec = parse_spec(body["spec"], "secure")
    return body["spec"]["template"], [builders.build_worker_pod(job, spec, i, 0, options) for i in range(2)]


def container(spec, name):
    return next(x for x in spec["containers"] if x["name"] == name)


def sys_admin_expected(power, agent):
    return power in (SETS_LIMITS_WITH_AGENT if agent == "on" else MANAGED)


@pytest.mark.parametrize(("power", "template", "agent"), list(itertools.product(POWER, TEMPLATES, AGENT)))
def test_only_sys_admin_and_only_where_the_pod_sets_limits(power, template, agent):
    source, pods = build(POWER[power], TEMPLATES[template], options=AGENT[agent])
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
        assert added == before + (["SYS_ADMIN"] if sys_admin_expected(power, agent) else [])
        assert (got.get("capabilities") or {}).get("drop") == (wanted.get("capabilities") or {}).get("drop")
        # the sidecar is never touched
        assert container(spec, "logship") == {"name": "logship", "image": "example.org/logship:1"}
        # the pods run as the job's own ServiceAccount (bound to the per-job Role), not a shared one
        assert spec["serviceAccountName"] == "secure-etj"


def test_sys_admin_is_added_once_even_if_the_template_asks_for_it():
    _, pods = build(POWER["fixed"], {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}})
    assert container(pods[0]["spec"], "trainer")["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]


def test_the_sys_admin_table():
    """The table docs/security.md gives, spelled out: which trainers carry SYS_ADMIN (and so must run as root)."""
    table = {
        (power, agent): "SYS_ADMIN" in str(container(build(POWER[power], {}, options=AGENT[agent])[1][0]["spec"],
                                                      "trainer").get("securityContext"))
        for power in POWER for agent in AGENT
    }
    assert {key for key, sys_admin in table.items() if sys_admin} == {
        ("budget-only", "off"), ("fixed", "off"), ("auto", "off"), ("fixed-budget", "off"), ("auto-budget", "off"),
    }


#: The capabilities Pod Security's baseline level lets a container add (kubernetes.io, Pod Security Standards).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def baseline_violations(pod):
    """What Pod Security's baseline level refuses in a pod (the controls the operator could touch)."""
    spec = pod["spec"]
    found = [f for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
    found += [f"volume {v['name']}: hostPath" for v in spec.get("volumes") or [] if "hostPath" in v]
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{c['name']}: privileged")
        extra = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        found += [f"{c['name']}: capability {cap}" for cap in sorted(extra)]
        found += [f"{c['name']}: hostPort" for p in c.get("ports") or [] if p.get("hostPort")]
    return found


@pytest.mark.parametrize(("power", "template"), list(itertools.product(sorted(POWER), ("plain", "hardened"))))
def test_with_the_agent_every_power_modes_pods_fit_baseline_and_need_no_root(power, template):
    """Every mode, Auto included: no SYS_ADMIN, no root asked, the template's non-root settings kept as they are."""
    assert set(POWER) >= {"absent", "unmanaged", "fixed", "auto", "budget-only", "fixed-budget", "auto-budget"}
    _, pods = build(POWER[power], TEMPLATES[template], options=AGENT["on"])
    for pod in pods:
        assert pod["spec"].get("securityContext") is None  # nothing at the pod's level either
        assert baseline_violations(pod) == []
        for c in pod["spec"]["containers"]:
            sc = c.get("securityContext") or {}
            assert "SYS_ADMIN" not in str(sc.get("capabilities")), c["name"]
            assert sc.get("runAsUser") != 0 and sc.get("privileged") is not True, c["name"]
        trainer = container(pod["spec"], "trainer")
        # nothing needs the template's settings undone: no capability to be root for
        assert trainer.get("securityContext") == TEMPLATES[template].get("securityContext")
        env = {v["name"]: v.get("value") for v in trainer["env"]}
        assert env[contract.ENV_ETJ_POWER_ENFORCER] == contract.POWER_ENFORCER_AGENT  # the harness sets no limit


@pytest.mark.parametrize("power", sorted(MANAGED))
def test_without_the_agent_power_managed_pods_are_outside_baseline(power):
    """As documented: a baseline namespace refuses them (SYS_ADMIN), so they need a privileged one."""
    _, pods = build(POWER[power], {}, options=AGENT["off"])
    assert baseline_violations(pods[0]) == ["trainer: capability SYS_ADMIN"]
    env = {v["name"] for v in container(pods[0]["spec"], "trainer")["env"]}
    assert contract.ENV_ETJ_POWER_ENFORCER not in env  # unset: the harness sets the limits (pods as before)


def test_auto_with_the_agent_has_no_sys_admin_and_is_told_the_agent_is_there():
    _, pods = build(POWER["auto"], {}, options=AGENT["on"])
    trainer = container(pods[0]["spec"], "trainer")
    assert "securityContext" not in trainer  # its harness asks for candidates in its report; the agent sets them
    env = {v["name"]: v.get("value") for v in trainer["env"]}
    assert env[contract.ENV_ETJ_POWER_ENFORCER] == contract.POWER_ENFORCER_AGENT


@pytest.mark.parametrize("agent", AGENT)
def test_the_template_cannot_choose_who_enforces(agent):
    _, pods = build(POWER["fixed"], {"env": [{"name": contract.ENV_ETJ_POWER_ENFORCER, "value": "agent"}]},
                    options=AGENT[agent])
    env = [v for v in container(pods[0]["spec"], "trainer")["env"] if v["name"] == contract.ENV_ETJ_POWER_ENFORCER]
    assert env == ([{"name": contract.ENV_ETJ_POWER_ENFORCER, "value": "agent"}] if agent == "on" else [])
    sys_admin = "SYS_ADMIN" in str(container(pods[0]["spec"], "trainer").get("securityContext"))
    assert sys_admin is (agent == "off")  # without the agent the harness must set the limit, and can
