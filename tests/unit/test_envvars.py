import json

import pytest

from etj_operator import contract as c
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
    assert plan["stages"][0] == stages[0]
    assert plan["accuracyGuard"] == {"maxDrop": 0.01, "action": "Stop"}


def test_gang_generation_is_passed():
    assert env_of(generation=3)[c.ENV_ETJ_GANG_GENERATION] == "3"
