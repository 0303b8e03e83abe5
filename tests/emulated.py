"""Fixtures' plumbing for running the real operator against the API emulator (not a test module)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etj_operator import contract as c
from etj_operator.sandbox.emulator import EmulatorServer

ROOT = Path(__file__).resolve().parents[1]
NS = "default"


def wait_until(predicate: Callable[[], Any], timeout_seconds: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
        time.sleep(0.05)


class Cluster:
    """The emulator plus helpers to read jobs and pods the way a test wants them."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.server.create(c.PLURAL, body, namespace=body["metadata"].get("namespace", NS))

    def job(self, name: str) -> dict[str, Any] | None:
        return self.server.get(c.PLURAL, NS, name)

    def status(self, name: str) -> dict[str, Any]:
        job = self.job(name)
        return (job or {}).get("status") or {}

    def pods(self, job: str) -> list[dict[str, Any]]:
        pods = self.server.list("pods", NS, label_selector=f"{c.LABEL_JOB_NAME}={job}")
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def live_pods(self, job: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(job) if not p["metadata"].get("deletionTimestamp")]

    def wait_phase(self, name: str, phase: str, timeout_seconds: float = 20.0) -> dict[str, Any]:
        return wait_until(
            lambda: self.status(name) if self.status(name).get("phase") == phase else None,
            timeout_seconds,
            f"{name} to reach phase {phase} (now {self.status(name).get('phase')})",
        )

    def wait_pods(self, job: str, count: int, generation: int = 0, timeout_seconds: float = 20.0) -> list[dict]:
        def ready() -> list[dict] | None:
            pods = self.live_pods(job)
            gens = {p["metadata"]["annotations"][c.ANNOTATION_GANG_GENERATION] for p in pods}
            return pods if len(pods) == count and gens == {str(generation)} else None

        return wait_until(ready, timeout_seconds, f"{count} pods of generation {generation} for {job}")

    def set_phase(self, job: str, phase: str, indices: list[int] | None = None, exit_code: int | None = None) -> None:
        for pod in self.live_pods(job):
            index = int(pod["metadata"]["labels"][c.LABEL_REPLICA_INDEX])
            if indices is None or index in indices:
                self.server.set_pod_phase(NS, pod["metadata"]["name"], phase, exit_code=exit_code)

    def pod_creations(self, job: str) -> int:
        return sum(
            1
            for r in self.server.requests
            if r.method == "POST"
            and r.resource == "pods"
            and r.status == 201
            and (r.path or "").endswith("/pods")
            and job in str(r.query) + r.path + (r.name or "")
        )
