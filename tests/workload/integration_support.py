"""Helpers for the framework integration tests: an example script as a real 2-rank gloo world on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from workload_support import REPO, FakeJobApiServer, base_env, free_port

EXAMPLES = REPO / "workloads" / "examples"

#: A pruned Linear weight of the exported model: the share of zeros a 30% l1Unstructured stage leaves.
PRUNED_SHARE = 0.3


@dataclass
class Ranks:
    procs: list[subprocess.Popen[str]]

    def wait(self, timeout: float = 240) -> tuple[list[int], list[str]]:
        outputs = []
        try:
            for p in self.procs:
                out, _ = p.communicate(timeout=timeout)
                outputs.append(out)
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
        return [p.returncode for p in self.procs], outputs


def start_script(script: str, args: Sequence[str], env: Mapping[str, str], world_size: int = 2) -> Ranks:
    """Start ``workloads/examples/SCRIPT ARGS`` as ``world_size`` ranks (env:// rendezvous, as torchrun's workers)."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        rank_env = base_env(env)
        rank_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), HF_HUB_OFFLINE="1")
        cmd = [sys.executable, str(EXAMPLES / script), *args]
        procs.append(subprocess.Popen(cmd, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return Ranks(procs)


def run_script(script: str, args: Sequence[str], env: Mapping[str, str]) -> tuple[list[int], list[str]]:
    return start_script(script, args, env).wait()


def job_env(api: FakeJobApiServer, checkpoints: Path, *, plan: dict[str, Any] | None = None,
            power: dict[str, Any] | None = None, poll_steps: int = 5) -> dict[str, str]:
    """The operator's environment for a job whose API is ``api``: control, report, checkpoints, plan, policy."""
    env = {
        "KUBECONFIG": str(api.kubeconfig),  # type: ignore[attr-defined]
        "ETJ_NAME": api.name,
        "ETJ_NAMESPACE": api.namespace,
        "ETJ_CHECKPOINT_DIR": str(checkpoints),
        "ETJ_CONTROL_POLL_STEPS": str(poll_steps),
        "ETJ_POWER_POLICY": json.dumps(power or {"mode": "Fixed", "limitWatts": 500}),
    }
    if plan is not None:
        env["ETJ_COMPRESSION_PLAN"] = json.dumps(plan)
    return env


def assert_exit(codes: list[int], outputs: list[str], expected: int = 0) -> None:
    assert codes == [expected] * len(codes), "\n".join(o[-4000:] for o in outputs)


def wait_until(condition: Callable[[], bool], ranks: Ranks, what: str, seconds: float = 180) -> None:
    """Poll ``condition`` while the ranks run (a rank that exits first fails the test)."""
    deadline = time.monotonic() + seconds
    while not condition():
        for p in ranks.procs:
            assert p.poll() is None, f"a rank exited ({p.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {seconds:.0f} s"
        time.sleep(0.1)


def patched(api: FakeJobApiServer, key: str) -> list[Any]:
    """Every value of ``key`` the harness wrote into the report, in order."""
    return [body["status"][key] for _, body in api.patches if key in body.get("status", {})]


def zero_share(model_file: Path, suffix: str) -> dict[str, float]:
    """The share of zeros of each tensor named ``*SUFFIX`` in an exported state dict (weights_only load)."""
    state = torch.load(model_file, weights_only=True)
    return {k: float((v == 0).float().mean()) for k, v in state.items() if k.endswith(suffix)}
