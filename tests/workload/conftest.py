"""Helpers for the workload tests: launch real 2-rank gloo worlds as subprocesses on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join([str(REPO / "workloads"), str(REPO / "operator")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETJ_", "PET_"))}
    env.update(
        PYTHONPATH=PYTHONPATH,
        ETJ_GPU_BACKEND="simulated",
        ETJ_SIMULATED_SLEEP="0",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass
class WorldResult:
    returncodes: list[int]
    outputs: list[str]
    result: dict[str, Any] | None


def run_world(
    args: Sequence[str],
    tmp_path: Path,
    *,
    world_size: int = 2,
    env: Mapping[str, str] | None = None,
    timeout: float = 240,
) -> WorldResult:
    """Run ``python -m etj_workload train ARGS`` as ``world_size`` ranks (env:// rendezvous, gloo)."""
    result_file = tmp_path / f"result-{free_port()}.json"
    port = free_port()
    procs = []
    for rank in range(world_size):
        rank_env = base_env(env)
        rank_env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world_size),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size),
        )
        cmd = [sys.executable, "-m", "etj_workload", "train", *args, "--result-file", str(result_file)]
        procs.append(subprocess.Popen(cmd, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return WorldResult([p.returncode for p in procs], outputs, result)


def assert_ok(world: WorldResult) -> dict[str, Any]:
    assert world.returncodes == [0] * len(world.returncodes), "\n".join(o[-3000:] for o in world.outputs)
    assert world.result is not None
    return world.result


@pytest.fixture
def launch(tmp_path: Path) -> Any:
    def _launch(args: Sequence[str], **kwargs: Any) -> WorldResult:
        return run_world(args, tmp_path, **kwargs)

    return _launch
