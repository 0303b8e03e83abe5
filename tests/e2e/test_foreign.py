"""A foreign DDP program under a 500 W budget: measured by the node, capped by the node agent, verified by status.

The program (workloads/examples/foreign_ddp.py) is plain torchrun DDP that knows nothing of the project: no
harness, no metrics, no report. The sandbox's node DCGM exporter measures the node's simulated GPUs (power from
the pods' CPU use, capped by each GPU's limit in force), the sandbox's real Prometheus scrapes it, and the
operator reads the job's power and the GPUs' limits from Prometheus (``telemetry.source: Prometheus``). Under
the budget the operator asks a cap, the node agent applies it, and status says it is enforced; with the agent
stopped (it resets the GPUs it capped), the GPUs report their 700 W default again and status says it is not.

Nothing waits on wall time: every wait is for a condition, with a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from prometheus_server import require_prometheus

from etj_contract import ConditionType, Phase
from etj_contract import names as n
from etj_operator import contract as c
from etj_operator.sandbox.agents import node_gpu_limits, parse_metrics
from etj_operator.sandbox.kubelet import tagged_processes
from etj_operator.sandbox.sandbox import REPO_ROOT, Sandbox, SandboxOptions

from emulated import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NS = "default"
JOB = "foreign-ddp"
EXAMPLE = REPO_ROOT / "workloads" / "examples" / "foreign-ddp.yaml"
BUDGET = 500.0


def wait_for(predicate: Callable[[], Any], what: str, seconds: float = 120) -> Any:
    return wait_until(predicate, seconds, what)  # the tests' one poll loop (tests/emulated.py)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    require_prometheus()  # skips with the reason when the binary is missing (make test / CI installs it)
    state = tmp_path_factory.mktemp("foreign") / "state"
    options = SandboxOptions(state_dir=state, port=0, max_grace_seconds=5, node_agent_interval_seconds=1,
                             operator_env={"ETJ_CAP_GRACE_SECONDS": "3"})
    with Sandbox(options) as sb:
        assert sb.prometheus is not None, sb.prometheus_note
        yield sb
    assert tagged_processes(state) == []  # pods, agent and Prometheus all stopped with the sandbox


def job(sandbox: Sandbox) -> dict[str, Any]:
    found = sandbox.api.get(c.PLURAL, NS, JOB)
    assert found is not None
    return found


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((x for x in (obj.get("status") or {}).get("conditions") or [] if x.get("type") == kind), {})


def energy(obj: dict[str, Any]) -> dict[str, Any]:
    return dict((obj.get("status") or {}).get("energy") or {})


def fresh_samples(sandbox: Sandbox, count: int, after: str | None) -> list[dict[str, Any]]:
    """The job as it was at each of the next ``count`` telemetry cycles after ``after`` (lastSampleTime)."""
    seen: list[dict[str, Any]] = []
    last = after

    def next_cycle() -> bool:
        nonlocal last
        now = job(sandbox)
        stamp = energy(now).get("lastSampleTime")
        if stamp and stamp != last:
            last = stamp
            seen.append(now)
        return len(seen) >= count

    wait_for(next_cycle, f"{count} more telemetry cycles", seconds=60)
    return seen


def exporter_view(sandbox: Sandbox) -> dict[str, tuple[float, float]]:
    """``pod -> (power W, limit W)`` of the job's GPUs, from one scrape of the node's DCGM exporter."""
    [exporter] = sandbox.dcgm_exporters
    text = exporter.render()
    power: dict[str, float] = {}
    limit: dict[str, float] = {}
    for s in parse_metrics(text):
        pod = s.labels.get("pod", "")
        if not pod.startswith(JOB):
            continue
        assert s.labels["source"] == "simulated" and s.labels["Hostname"] == "sandbox"
        if s.name == n.METRIC_POWER_USAGE:
            power[pod] = s.value
        elif s.name == n.METRIC_POWER_MGMT_LIMIT:
            limit[pod] = s.value
    return {pod: (power[pod], limit.get(pod, float("nan"))) for pod in power}


def test_a_foreign_program_is_measured_capped_and_verified(sandbox: Sandbox):
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    spec = next(d for d in docs if d["kind"] == c.KIND)["spec"]
    assert spec["energy"]["power"]["budgetWatts"] == BUDGET
    [container] = spec["template"]["spec"]["containers"]
    container["command"] = [*container["command"][:2], "--steps", "1000000"]  # runs until the test ends
    for doc in docs:
        sandbox.api.create("configmaps" if doc["kind"] == "ConfigMap" else c.PLURAL, doc, namespace=NS)
    kubelet = sandbox.kubelet
    assert kubelet is not None and kubelet.node_gpus_file is not None

    # 1. measured from the node, over budget: the operator asks a cap, the agent applies it, status says so
    def enforced() -> dict[str, Any] | None:
        now = job(sandbox)
        cap = condition(now, ConditionType.POWER_CAP_ENFORCED)
        return now if cap.get("status") == "True" and (now.get("status") or {}).get("phase") == Phase.THROTTLED \
            else None

    capped = wait_for(enforced, "PowerCapEnforced=True and phase Throttled", seconds=240)
    status = capped["status"]
    per_gpu = status["control"]["powerLimitWattsPerGPU"]
    assert per_gpu * 2 <= BUDGET
    assert condition(capped, ConditionType.THROTTLED)["status"] == "True"
    assert condition(capped, ConditionType.POWER_CAP_ENFORCED)["reason"] == "LimitsApplied"
    assert energy(capped)["source"].startswith("Prometheus") and energy(capped).get("simulated") is True
    assert (status.get("workload") or {}) == {}  # the program reports nothing: all of this came from the node
    peak_before = energy(capped)["peakWatts"]
    assert peak_before > BUDGET  # it drew more than the budget before the cap
    held = {h.pod: h.uuids for h in kubelet.gpu_holders() if h.pod.startswith(JOB)}
    limits = node_gpu_limits(kubelet.node_gpus_file)
    assert sorted(limits[u][0] for uuids in held.values() for u in uuids) == [per_gpu * 1000] * 2

    # the job's measured power, after the cap (one cycle of lag allowed: the cycles after the one that saw it)
    after = fresh_samples(sandbox, 3, energy(capped).get("lastSampleTime"))[1:]
    watts = [energy(x)["currentWatts"] for x in after]
    assert all(w <= BUDGET + 1e-6 for w in watts), watts
    assert all(condition(x, ConditionType.POWER_CAP_ENFORCED)["status"] == "True" for x in after)
    view = exporter_view(sandbox)
    assert len(view) == 2 and all(p <= per_gpu and lim == per_gpu for p, lim in view.values()), view
    print(f"\nforeign job under a {BUDGET:.0f} W budget: cap {per_gpu} W/GPU enforced; measured job power"
          f" {', '.join(f'{w:.1f}' for w in watts)} W (peak before the cap {peak_before:.1f} W); node exporter"
          f" {view}")

    # 2. the node agent stopped: it resets the GPUs it capped (SIGTERM), they report 700 W, status says so
    assert sandbox.stop_node_agents() == [0]
    limits = node_gpu_limits(kubelet.node_gpus_file)
    assert all(limit == default == 700_000 for limit, default in limits.values()), limits

    def not_enforced() -> dict[str, Any] | None:
        now = job(sandbox)
        return now if condition(now, ConditionType.POWER_CAP_ENFORCED).get("status") == "False" else None

    uncapped = wait_for(not_enforced, "PowerCapEnforced=False with the agent stopped", seconds=60)
    cap = condition(uncapped, ConditionType.POWER_CAP_ENFORCED)
    assert cap["reason"] in ("Applying", "LimitNotApplied") and "700 W" in cap["message"], cap
    assert uncapped["status"]["control"]["powerLimitWattsPerGPU"] == per_gpu  # still asked, no longer in force
    assert uncapped["status"]["phase"] == Phase.RUNNING
    assert condition(uncapped, ConditionType.THROTTLED)["status"] == "False"
    later = fresh_samples(sandbox, 2, energy(uncapped).get("lastSampleTime"))
    settled = condition(later[-1], ConditionType.POWER_CAP_ENFORCED)
    assert settled["status"] == "False" and settled["reason"] == "LimitNotApplied", settled  # past the 3 s grace
    print(f"agent stopped: PowerCapEnforced {settled['status']} ({settled['reason']}: {settled['message']});"
          f" job power {energy(later[-1])['currentWatts']:.1f} W; node exporter {exporter_view(sandbox)}")

    # 3. the agent back: it re-applies the cap on its first cycle, and status says it is enforced again
    sandbox.start_node_agents()
    again = wait_for(enforced, "PowerCapEnforced=True again with the agent back", seconds=60)
    print(f"agent back: PowerCapEnforced {condition(again, ConditionType.POWER_CAP_ENFORCED)['status']},"
          f" phase {again['status']['phase']}")

    sandbox.api.delete(c.PLURAL, NS, JOB)
    wait_for(lambda: not [p for p in sandbox.api.list("pods") if p["metadata"]["name"].startswith(JOB)],
             "the job's pods to go", seconds=60)
    wait_for(lambda: all(limit == default for limit, default in node_gpu_limits(kubelet.node_gpus_file).values()),
             "the agent to reset the node GPUs after the job", seconds=30)
