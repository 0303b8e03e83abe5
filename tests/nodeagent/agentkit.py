"""Helpers of the node agent's tests: a fake clock, a fake API and kubelet, job and pod objects."""

from __future__ import annotations

import asyncio
from typing import Any

from etj_contract import names as n
from etj_operator.nodeagent.intent import pod_info
from etj_operator.nodeagent.records import ContainerAllocation, PodInfo

NODE = "gpu-node-a"
NS = "ml"
GPU = "nvidia.com/gpu"


class FakeClock:
    """Time moves only when a test (or the agent's wait) moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakeCluster:
    """The API as the agent reads it: pods by node, jobs by name then UID; can fail on demand."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.fail = False
        self.job_reads = 0

    def add_job(self, job: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        self.jobs[(meta["namespace"], meta["name"])] = job
        return job

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        meta = pod["metadata"]
        self.pods[(meta["namespace"], meta["name"])] = pod
        return pod

    async def pods_on_node(self, node: str) -> list[PodInfo]:
        if self.fail:
            raise ConnectionError("API unreachable (test)")
        infos = [pod_info(p) for p in self.pods.values() if p["spec"].get("nodeName") == node]
        return [p for p in infos if p is not None]

    async def job(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        self.job_reads += 1
        if self.fail:
            raise ConnectionError("API unreachable (test)")
        job = self.jobs.get((namespace, name))
        return job if job is not None and job["metadata"]["uid"] == uid else None


class FakeAllocations:
    """The kubelet's allocations as a settable list; ``fail`` makes List raise."""

    def __init__(self) -> None:
        self.table: list[ContainerAllocation] = []
        self.fail = False

    def list(self) -> list[ContainerAllocation]:
        if self.fail:
            raise ConnectionError("kubelet unreachable (test)")
        return list(self.table)


def job(name: str, uid: str, *, mode: str = "Fixed", limit: int | None = 300, cap: int | None = None,
        phase: str = "Running", namespace: str = NS, auto: int | None = None, seq: int = 1) -> dict[str, Any]:
    """A job object; ``auto``: the operator's answer to an Auto request (status.control.autoLimitWattsPerGPU)."""
    power: dict[str, Any] = {"mode": mode}
    if mode == "Fixed" and limit is not None:
        power["limitWatts"] = limit
    status: dict[str, Any] = {"phase": phase}
    if cap is not None:
        status[n.CONTROL] = {n.CONTROL_POWER_LIMIT_WATTS_PER_GPU: cap}
    if auto is not None:
        status.setdefault(n.CONTROL, {}).update({n.CONTROL_AUTO_LIMIT_WATTS_PER_GPU: auto,
                                                n.CONTROL_AUTO_REQUEST_SEQ: seq})
    return {
        "apiVersion": n.API_VERSION,
        "kind": n.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"replicas": 1, "energy": {"power": power}},
        "status": status,
    }


def pod(name: str, uid: str, owner: dict[str, Any] | None, *, node: str = NODE, phase: str = "Running",
        namespace: str = NS, own_limits: bool = False) -> dict[str, Any]:
    """A pod object; ``own_limits``: its trainer has SYS_ADMIN (built for the in-pod NVML path)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "labels": {n.LABEL_ROLE: "worker"}}
    if owner is not None:
        om = owner["metadata"]
        meta["ownerReferences"] = [{"apiVersion": owner.get("apiVersion", n.API_VERSION),
                                    "kind": owner.get("kind", n.KIND), "name": om["name"], "uid": om["uid"],
                                    "controller": True, "blockOwnerDeletion": True}]
    trainer: dict[str, Any] = {"name": "trainer", "image": "example.org/train:1"}
    if own_limits:
        trainer["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"nodeName": node, "containers": [trainer]},
            "status": {"phase": phase}}


def holds(pod_name: str, *device_ids: str, container: str = "trainer", namespace: str = NS,
          resource: str = GPU) -> ContainerAllocation:
    return ContainerAllocation(namespace, pod_name, container, resource, tuple(device_ids))


class FakeApiServer:
    """A stand-in API server (stdlib HTTP, its own thread) serving pods by ``spec.nodeName`` and jobs by name."""

    def __init__(self, cluster: FakeCluster) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        self.cluster = cluster
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                body: Any
                if url.path == "/api/v1/pods":
                    selector = parse_qs(url.query).get("fieldSelector", [""])[0]
                    node = selector.removeprefix("spec.nodeName=")
                    items = [p for p in outer.cluster.pods.values() if p["spec"].get("nodeName") == node]
                    code, body = 200, {"kind": "PodList", "apiVersion": "v1", "items": items}
                elif parts[:3] == ["apis", n.GROUP, n.VERSION] and len(parts) == 7 and parts[5] == n.PLURAL:
                    found = outer.cluster.jobs.get((parts[4], parts[6]))
                    code, body = (200, found) if found else (404, {"kind": "Status", "code": 404,
                                                                   "reason": "NotFound", "message": "not found"})
                else:
                    code, body = 404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": self.path}
                if outer.cluster.fail:
                    code, body = 503, {"kind": "Status", "code": 503, "reason": "ServiceUnavailable", "message": "x"}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
