"""Helpers for the workload tests: real 2-rank gloo worlds as subprocesses on 127.0.0.1, a fake job API."""

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


def run_script_ranks(script: str, out: Path, *args: str, world_size: int = 2, timeout: float = 120) -> list[Any]:
    """Run ``python -c SCRIPT OUT ARGS...`` as ``world_size`` ranks (env:// rendezvous); each rank writes JSON to
    ``OUT.<rank>``. Returns the ranks' results, after checking every rank exited 0."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        extra = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size), "RANK": str(rank)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, str(out), *args],
                env=base_env(extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * world_size, "\n".join(outputs)
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(world_size)]


def assert_ok(world: WorldResult) -> dict[str, Any]:
    assert world.returncodes == [0] * len(world.returncodes), "\n".join(o[-3000:] for o in world.outputs)
    assert world.result is not None
    return world.result


class FakeJobApiServer:
    """A minimal Kubernetes API for one EfficientTrainingJob and its report: GET the job, merge-PATCH the report's
    status (the harness may write nothing else, docs/security.md; anything else is a 404 here).

    Real HTTP, so the harness's real API client (etj_workload.kubeclient) is exercised; ``patches`` records
    every body and content type. Not an emulator of anything else.
    """

    def __init__(self, name: str = "job", namespace: str = "ns") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from etj_workload.control import merge_patch

        self.name, self.namespace = name, namespace
        self.obj: dict[str, Any] = {
            "apiVersion": "efficienttraining.dev/v1alpha1",
            "kind": "EfficientTrainingJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {},
            "status": {"control": {}},
        }
        self.report: dict[str, Any] = {
            "apiVersion": "efficienttraining.dev/v1alpha1",
            "kind": "EfficientTrainingJobReport",
            "metadata": {"name": name, "namespace": namespace},
        }
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        api = f"/apis/efficienttraining.dev/v1alpha1/namespaces/{namespace}"
        base = f"{api}/efficienttrainingjobs/{name}"
        report = f"{api}/efficienttrainingjobreports/{name}"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.split("?")[0] != base:
                    self._send(404, {"kind": "Status", "code": 404})
                    return
                with outer.lock:
                    self._send(200, outer.obj)

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.split("?")[0] != report + "/status":
                    self._send(404, {"kind": "Status", "code": 404})
                    return
                with outer.lock:
                    outer.patches.append((self.headers["Content-Type"], body))
                    merge_patch(outer.report, {"status": body.get("status", {})})
                    self._send(200, outer.report)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_control(self, **control: Any) -> None:
        with self.lock:
            self.obj["status"]["control"].update(control)

    def workload(self) -> dict[str, Any]:
        """The report's status (what the harness wrote)."""
        with self.lock:
            return dict(self.report.get("status", {}))

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u", "namespace": "ns"}}],
                    "current-context": "c",
                }
            )
        )
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeClock:
    """A clock the test moves by hand (``now``, in seconds), called like ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
