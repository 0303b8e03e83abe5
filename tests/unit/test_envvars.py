import json

import pytest

from etj_operator import contract as c
from etj_operator.config import OperatorConfig
from etj_operator.envvars import EnvContext, worker_env
from etj_operator.models import parse_spec

from jobs import job_manifest


def env_of(index=0, generation=0, **overrides):
    spec = parse_spec(job_manifest(**overrides)["spec"], "digits")
    ctx = EnvContext(job_name="digits", namespace="ml", spec=spec, replica_index=index, gang_generation=generation)
    return {v["name"]: v["value"] for v in worker_env(ctx)}


MASTER = "digits-worker-0.digits.ml.svc"

# Table: name, overrides, replica index, expected subset, names that must be absent.
CASES = [
    (
        "static rendezvous, worker 0",
        {"replicas": 2, "nprocPerNode": 4},
        0,
        {
            c.ENV_MASTER_ADDR: MASTER,
            c.ENV_MASTER_PORT: "29500",
            c.ENV_WORLD_SIZE: "8",
            c.ENV_RANK: "0",
            c.ENV_NODE_RANK: "0",
            c.ENV_PET_NNODES: "2",
            c.ENV_PET_NPROC_PER_NODE: "4",
            c.ENV_PET_NODE_RANK: "0",
            c.ENV_PET_MASTER_ADDR: MASTER,
            c.ENV_PET_MASTER_PORT: "29500",
        },
        [c.ENV_PET_RDZV_ENDPOINT, c.ENV_ETJ_COMPRESSION_PLAN, c.ENV_ETJ_CHECKPOINT_DIR],
    ),
    (
        "static rendezvous, worker 1",
        {"replicas": 3},
        1,
        {c.ENV_RANK: "1", c.ENV_NODE_RANK: "1", c.ENV_PET_NODE_RANK: "1", c.ENV_WORLD_SIZE: "3"},
        [],
    ),
    (
        "elastic",
        {"replicas": 2, "elastic": {"minReplicas": 1, "maxReplicas": 3, "maxRestarts": 5}},
        1,
        {
            c.ENV_PET_NNODES: "1:3",
            c.ENV_PET_RDZV_BACKEND: "c10d",
            c.ENV_PET_RDZV_ENDPOINT: f"{MASTER}:29500",
            c.ENV_PET_MAX_RESTARTS: "5",
            c.ENV_PET_RDZV_ID: "ml-digits-0",
        },
        [c.ENV_RANK, c.ENV_WORLD_SIZE, c.ENV_PET_NODE_RANK],
    ),
    (
        "harness identity",
        {},
        1,
        {
            c.ENV_ETJ_NAME: "digits",
            c.ENV_ETJ_NAMESPACE: "ml",
            c.ENV_ETJ_REPLICA_INDEX: "1",
            c.ENV_ETJ_GPU_BACKEND: "auto",
        },
        [],
    ),
    ("checkpoint", {"checkpoint": {"path": "/ckpt"}}, 0, {c.ENV_ETJ_CHECKPOINT_DIR: "/ckpt"}, []),
]


@pytest.mark.parametrize(("name", "overrides", "index", "expected", "absent"), CASES, ids=[c[0] for c in CASES])
def test_env_table(name, overrides, index, expected, absent):
    env = env_of(index=index, **overrides)
    for key, value in expected.items():
        assert env.get(key) == value, key
    for key in absent:
        assert key not in env


def test_power_policy_json():
    env = env_of(energy={"power": {"mode": "Auto", "auto": {"eta": 0.7}, "budgetWatts": 900}})
    policy = json.loads(env[c.ENV_ETJ_POWER_POLICY])
    assert policy == {
        "mode": "Auto",
        "auto": {"eta": 0.7, "warmupSteps": 5, "profileSteps": 10, "stepWatts": 25, "maxSlowdown": None},
        "budgetWatts": 900,
    }


def test_compression_plan_json_keeps_stage_order_and_guard():
    stages = [
        {"name": "prune", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}},
        {"name": "int8", "trigger": {"step": 300}, "quantize": {"dtype": "int8"}},
    ]
    env = env_of(compression={"stages": stages, "accuracyGuard": {"action": "Stop"}})
    plan = json.loads(env[c.ENV_ETJ_COMPRESSION_PLAN])
    assert [s["name"] for s in plan["stages"]] == ["prune", "int8"]
    # every field stated: the method the spec left out is the default the API server would have filled in
    assert plan["stages"][0] == {**stages[0], "prune": {"amount": 0.5, "method": "l1Unstructured"}}
    assert plan["stages"][1] == stages[1]
    assert plan["accuracyGuard"] == {"maxDrop": 0.01, "action": "Stop"}


# --- the wire format is the one the operator wrote before the plans were contract records --------------------
def _legacy_power_policy(spec):
    """ETJ_POWER_POLICY as envvars.power_env built it as a dict (before etj_contract.plans.PowerPolicy)."""
    power = spec.energy.power
    policy = {"mode": power.mode}
    if power.limit_watts is not None:
        policy["limitWatts"] = power.limit_watts
    if power.auto is not None:
        a = power.auto
        policy["auto"] = {
            "eta": a.eta,
            "warmupSteps": a.warmup_steps,
            "profileSteps": a.profile_steps,
            "stepWatts": a.step_watts,
            "maxSlowdown": a.max_slowdown,
        }
    policy["budgetWatts"] = power.budget_watts
    return json.dumps(policy, sort_keys=True)


def _legacy_compression_plan(spec):
    """ETJ_COMPRESSION_PLAN as envvars.compression_env built it: the stages as written, and the guard."""
    comp = spec.compression
    plan = {
        "stages": [dict(s.raw) for s in comp.stages],
        "accuracyGuard": {"maxDrop": comp.max_accuracy_drop, "action": comp.guard_action},
    }
    return json.dumps(plan, sort_keys=True)


WIRE_POWER = [
    {},
    {"power": {"mode": "Unmanaged"}},
    {"power": {"mode": "Unmanaged", "budgetWatts": 1200}},
    {"power": {"mode": "Fixed", "limitWatts": 300}},
    {"power": {"mode": "Fixed", "limitWatts": 2000, "budgetWatts": 1}},
    {"power": {"mode": "Auto"}},
    {"power": {"mode": "Auto", "auto": {"eta": 0.25, "warmupSteps": 0, "maxSlowdown": 1.1}, "budgetWatts": 900}},
    {"power": {"mode": "Auto", "auto": {"eta": 1, "profileSteps": 3, "stepWatts": 5}}},
]
# As an API server stores them: the CRD's defaults (method, dtype, the guard) filled in.
WIRE_COMPRESSION = [
    {
        "stages": [
            {"name": "p", "trigger": {"epoch": 2}, "prune": {"amount": 0.5, "method": "l1Unstructured"}},
            {"name": "q", "trigger": {"step": 300}, "quantize": {"dtype": "int8"}},
        ],
        "accuracyGuard": {"maxDrop": 0.01, "action": "Rollback"},
    },
    {
        "stages": [
            {"name": "e", "trigger": {"energyFraction": 0.5}, "prune": {"amount": 0.3, "method": "lnStructured"}}
        ],
        "accuracyGuard": {"maxDrop": 0.05, "action": "Stop"},
    },
]


@pytest.mark.parametrize("energy", WIRE_POWER, ids=[json.dumps(e, sort_keys=True) for e in WIRE_POWER])
def test_the_power_policy_is_byte_for_byte_what_the_operator_wrote_before(energy):
    spec = parse_spec(job_manifest(energy=energy)["spec"], "digits")
    ctx = EnvContext(job_name="digits", namespace="ml", spec=spec, replica_index=0, gang_generation=0)
    assert {v["name"]: v["value"] for v in worker_env(ctx)}[c.ENV_ETJ_POWER_POLICY] == _legacy_power_policy(spec)


@pytest.mark.parametrize("compression", WIRE_COMPRESSION, ids=["epoch-step", "energyFraction"])
def test_the_compression_plan_is_byte_for_byte_what_the_operator_wrote_before(compression):
    energy = {"energyBudget": {"kilowattHours": 1.0}}
    spec = parse_spec(job_manifest(energy=energy, compression=compression)["spec"], "digits")
    ctx = EnvContext(job_name="digits", namespace="ml", spec=spec, replica_index=0, gang_generation=0)
    value = {v["name"]: v["value"] for v in worker_env(ctx)}[c.ENV_ETJ_COMPRESSION_PLAN]
    assert value == _legacy_compression_plan(spec)


def test_a_whole_float_trigger_goes_over_as_the_integer_the_operator_read():
    """The parser takes ``epoch: 2.0`` as 2; the stage as written carried 2.0, which the harness refuses."""
    stages = [{"name": "p", "trigger": {"epoch": 2.0}, "prune": {"amount": 0.5}}]
    plan = json.loads(env_of(compression={"stages": stages})[c.ENV_ETJ_COMPRESSION_PLAN])
    assert plan["stages"][0]["trigger"] == {"epoch": 2} and isinstance(plan["stages"][0]["trigger"]["epoch"], int)


def test_gang_generation_is_passed():
    assert env_of(generation=3)[c.ENV_ETJ_GANG_GENERATION] == "3"


def test_the_control_poll_settings_reach_the_pod():
    spec = parse_spec(job_manifest()["spec"], "digits")
    ctx = EnvContext(job_name="digits", namespace="ml", spec=spec, replica_index=0, gang_generation=0)
    env = {v["name"]: v["value"] for v in worker_env(ctx)}
    assert (env[c.ENV_ETJ_CONTROL_POLL_SECONDS], env[c.ENV_ETJ_CONTROL_POLL_STEPS]) == ("1", "10")  # the defaults
    tuned = EnvContext(job_name="digits", namespace="ml", spec=spec, replica_index=0, gang_generation=0,
                       control_poll_steps=4, control_poll_seconds=2.5)
    env = {v["name"]: v["value"] for v in worker_env(tuned)}
    assert (env[c.ENV_ETJ_CONTROL_POLL_SECONDS], env[c.ENV_ETJ_CONTROL_POLL_STEPS]) == ("2.5", "4")


def test_the_operator_reads_and_bounds_the_poll_seconds():
    assert OperatorConfig.from_env({}).control_poll_seconds == 1.0
    assert OperatorConfig.from_env({"ETJ_CONTROL_POLL_SECONDS": "0"}).control_poll_seconds == 0.0
    assert OperatorConfig.from_env({"ETJ_CONTROL_POLL_SECONDS": "600"}).control_poll_seconds == 60.0
