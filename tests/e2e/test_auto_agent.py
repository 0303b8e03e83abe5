"""Mode Auto through the node agent, end to end in the sandbox: no SYS_ADMIN, and the choice is on the GPUs.

The operator runs with the node agent (the sandbox's default), so the job's pods carry no capability. Their
harness asks for each candidate in its report, the operator answers in ``status.control.autoLimitWattsPerGPU``,
the agent sets the node GPUs the pods hold, and the harness's simulated GPU reads the node GPU's limit back.
The test ends when the workload reports a choice and the node GPUs its pods hold report that limit. Nothing
waits on wall time: every wait is for a condition, with a timeout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator import contract as c
from etj_operator.sandbox.agents import agent_gpus
from etj_operator.sandbox.kubelet import tagged_processes
from etj_operator.sandbox.sandbox import REPO_ROOT, Sandbox, SandboxOptions

from emulated import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NS = "default"
JOB = "auto-agent"
EXAMPLE = REPO_ROOT / "workloads" / "examples" / "digits-ddp.yaml"


def wait_for(predicate: Callable[[], Any], what: str, seconds: float = 240) -> Any:
    return wait_until(predicate, seconds, what)  # the tests' one poll loop (tests/emulated.py)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    state = tmp_path_factory.mktemp("auto-agent") / "state"
    options = SandboxOptions(state_dir=state, port=0, gpus_per_node=2, max_grace_seconds=5,
                             node_agent_interval_seconds=0.3, prometheus=False,
                             operator_env={"ETJ_CONTROL_POLL_STEPS": "2"})
    with Sandbox(options) as sb:
        yield sb
    assert tagged_processes(state) == []


def auto_job() -> dict[str, Any]:
    job = copy.deepcopy(next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == c.KIND))
    job["metadata"]["name"] = JOB
    del job["spec"]["compression"]
    job["spec"]["checkpoint"]["volume"] = {"emptyDir": {}}
    job["spec"]["energy"]["power"] = {
        "mode": "Auto", "auto": {"eta": 0.5, "warmupSteps": 2, "profileSteps": 4, "stepWatts": 100}
    }
    [trainer] = job["spec"]["template"]["spec"]["containers"]
    trainer["command"] = [*trainer["command"][:-4], "--epochs", "400", "--lr", "3e-3"]  # runs until the test ends
    return job


def test_auto_profiles_through_the_agent_without_sys_admin(sandbox: Sandbox):
    sandbox.api.create(c.PLURAL, auto_job(), namespace=NS)

    def pods() -> list[dict[str, Any]]:
        found = sandbox.api.list("pods", namespace=NS, label_selector=f"{n.LABEL_JOB_NAME}={JOB}")
        return [p for p in found if (p.get("status") or {}).get("phase") == "Running"]

    running = wait_for(lambda: pods() if len(pods()) == 2 else None, "both workers running", seconds=120)
    for pod in running:
        for container in pod["spec"]["containers"]:
            assert "SYS_ADMIN" not in str(container.get("securityContext")), container["name"]
            env = {v["name"]: v.get("value") for v in container.get("env") or []}
            assert env.get(n.ENV_ETJ_POWER_ENFORCER) == n.POWER_ENFORCER_AGENT

    def chosen() -> tuple[int, dict[str, Any]] | None:
        job = sandbox.api.get(c.PLURAL, NS, JOB) or {}
        status = job.get("status") or {}
        profile = (status.get(n.WORKLOAD) or {}).get(n.WORKLOAD_POWER_PROFILE) or {}
        watts = profile.get("chosenWatts")
        return (watts, status) if watts is not None else None

    watts, status = wait_for(chosen, "the workload reports an Auto choice")
    profile = status[n.WORKLOAD][n.WORKLOAD_POWER_PROFILE]
    # every candidate was measured only once the GPUs showed it: several limits went through the agent
    assert len({x["watts"] for x in profile["candidates"]}) >= 2, profile
    assert profile["requestSeq"] >= len(profile["candidates"]) and profile["requestedWatts"] == watts, profile

    def on_the_gpus() -> bool:
        job = sandbox.api.get(c.PLURAL, NS, JOB) or {}
        control = (job.get("status") or {}).get(n.CONTROL) or {}
        if control.get(n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU) != watts:
            return False
        [agent] = sandbox.node_agents
        held = [g for g in agent_gpus(agent.metrics()) if any(pod.startswith(JOB) for _, pod in g.pods)]
        return len(held) == 2 and all(g.reason == a.REASON_AUTO_CANDIDATE and g.limit_watts is not None
                                      and abs(g.limit_watts - watts) <= 1.0 for g in held)

    wait_for(on_the_gpus, f"the GPUs the job holds report {watts} W (AutoCandidate)", seconds=60)
