import json

import pytest

from etj_workload.config import ConfigError, HarnessEnv, parse_compression_plan, parse_power_policy


def test_power_policy_defaults_to_unmanaged() -> None:
    assert parse_power_policy(None).mode == "Unmanaged"
    assert parse_power_policy("").mode == "Unmanaged"


def test_power_policy_auto_fields() -> None:
    raw = {
        "mode": "Auto",
        "auto": {"eta": 0.3, "warmupSteps": 1, "profileSteps": 4, "stepWatts": 50, "maxSlowdown": 1.1},
        "budgetWatts": 2000,
    }
    policy = parse_power_policy(json.dumps(raw))
    assert (policy.mode, policy.auto.eta, policy.auto.warmup_steps, policy.auto.profile_steps) == ("Auto", 0.3, 1, 4)
    assert (policy.auto.step_watts, policy.auto.max_slowdown, policy.budget_watts) == (50, 1.1, 2000)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('{"mode": "Fixed"}', "limitWatts"),
        ('{"mode": "Turbo"}', ".mode"),
        ('{"mode": "Auto", "auto": {"eta": 2}}', "auto.eta"),
        ('{"mode": "Auto", "auto": {"maxSlowdown": 0.5}}', "maxSlowdown"),
        ('{"mode": "Fixed", "limitWatts": 20}', r"limitWatts: must be within 50\.\.2000"),
        ('{"budgetWatts": 0}', "budgetWatts"),
        ("{not json", "not valid JSON"),
    ],
)
def test_power_policy_errors_name_the_field(raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_power_policy(raw)


def test_compression_plan_parses_triggers_and_guard() -> None:
    plan = parse_compression_plan(
        json.dumps(
            {
                "stages": [
                    {"name": "p", "trigger": {"epoch": 2}, "prune": {"amount": 0.5, "method": "lnStructured"}},
                    {"name": "s", "trigger": {"step": 10}, "prune": {"amount": 0.2}},
                    {"name": "q", "trigger": {"energyFraction": 0.5}, "quantize": {"dtype": "int8"}},
                ],
                "accuracyGuard": {"maxDrop": 0.02, "action": "Stop"},
            }
        )
    )
    assert [s.name for s in plan.stages] == ["p", "s", "q"]
    assert plan.stages[0].prune is not None and plan.stages[0].prune.method == "lnStructured"
    assert plan.stages[1].trigger.step == 10 and plan.stages[1].prune is not None
    assert plan.stages[1].prune.method == "l1Unstructured"
    assert plan.stages[2].trigger.energy_fraction == 0.5 and plan.stages[2].quantize is not None
    assert (plan.guard.max_drop, plan.guard.action) == (0.02, "Stop")
    assert plan.stage("q") is plan.stages[2] and plan.stage("zz") is None


@pytest.mark.parametrize(
    ("stage", "fragment"),
    [
        ({"name": "a", "trigger": {"epoch": 1}}, "exactly one of prune or quantize"),
        ({"name": "a", "trigger": {"epoch": 1, "step": 2}, "prune": {"amount": 0.5}}, "trigger"),
        ({"name": "a", "trigger": {"epoch": 1}, "prune": {"amount": 1.5}}, "amount"),
        ({"name": "a", "trigger": {"epoch": 1}, "quantize": {"dtype": "int4"}}, "int8"),
        # the CRD's bounds (etj_contract.plans.COMPRESSION_BOUNDS): what the API server refuses, the harness does
        ({"name": "a", "trigger": {"epoch": 0}, "prune": {"amount": 0.5}}, r"trigger\.epoch: must be within 1\.\."),
        ({"name": "a", "trigger": {"step": 0}, "prune": {"amount": 0.5}}, r"trigger\.step"),
        ({"name": "a", "trigger": {"energyFraction": 0}, "prune": {"amount": 0.5}}, r"energyFraction: .*\(0, 1\]"),
        ({"name": "a", "trigger": {"epoch": 1.0}, "prune": {"amount": 0.5}}, "expected an integer"),
        ({"name": "Big", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}}, r"stages\[0\]\.name: .*DNS label"),
    ],
)
def test_compression_plan_errors(stage: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_compression_plan(json.dumps({"stages": [stage]}))


def test_harness_env_reads_operator_and_torchrun_env() -> None:
    env = HarnessEnv.from_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "ETJ_NAME": "j",
            "ETJ_NAMESPACE": "n",
            "ETJ_CHECKPOINT_DIR": "/ckpt",
            "ETJ_METRICS_PORT": "9400",
            "ETJ_CONTROL_POLL_STEPS": "5",
            "ETJ_CONTROL_POLL_SECONDS": "1.5",
            "ETJ_GPU_BACKEND": "simulated",
            "ETJ_GANG_GENERATION": "2",
            "ETJ_POWER_POLICY": '{"mode": "Fixed", "limitWatts": 400}',
        }
    )
    assert (env.dist.rank, env.dist.world_size, env.dist.local_rank, env.dist.distributed) == (3, 4, 1, True)
    assert (env.job_name, env.job_namespace, env.checkpoint_dir, env.metrics_port) == ("j", "n", "/ckpt", 9400)
    assert (env.control_poll_steps, env.gpu_backend, env.gang_generation) == (5, "simulated", 2)
    assert env.control_poll_seconds == 1.5
    assert HarnessEnv.from_env({}).control_poll_seconds == 0.0  # unset: every N steps, as before
    assert env.power.limit_watts == 400


def test_harness_env_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="ETJ_GPU_BACKEND"):
        HarnessEnv.from_env({"ETJ_GPU_BACKEND": "cuda"})
    with pytest.raises(ConfigError, match="ETJ_CONTROL_POLL_STEPS"):
        HarnessEnv.from_env({"ETJ_CONTROL_POLL_STEPS": "x"})
    for bad in ("soon", "-1", "61", "nan"):
        with pytest.raises(ConfigError, match="ETJ_CONTROL_POLL_SECONDS"):
            HarnessEnv.from_env({"ETJ_CONTROL_POLL_SECONDS": bad})
