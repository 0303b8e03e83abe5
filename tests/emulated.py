"""Fixtures' plumbing for running the real operator against the API emulator (not a test module)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from etj_operator import contract as c
from etj_operator.sandbox.emulator import EmulatorServer
from etj_operator.sandbox.identities import OPERATOR_NAME, OPERATOR_NAMESPACE, install_operator_identity

ROOT = Path(__file__).resolve().parents[1]
NS = "default"
CRD = ROOT / "crds" / "efficienttrainingjobs.yaml"
#: Every CRD the operator needs: the job's and its report's (the emulator loads each YAML file of the folder).
CRDS = ROOT / "crds"

#: The user the operator runs as in the integration and chaos suites: the chart's ServiceAccount.
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_NAME}"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def chart_rbac(watch_namespaces: Iterable[str] = (), *, kueue: bool = False) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC objects, rendered with the Helm engine (tests/chart/chart_support).

    ``kueue``: with ``kueue.enabled`` (the operator as Kueue's integration).
    """
    chart_tests = str(ROOT / "tests" / "chart")
    if chart_tests not in sys.path:
        sys.path.insert(0, chart_tests)
    from chart_support import render

    values: dict[str, Any] = {"watchNamespaces": list(watch_namespaces)}
    if kueue:
        values["kueue"] = {"enabled": True}
    return [o for o in render(values) if o["kind"] in RBAC_KINDS]


def rbac_server(**options: Any) -> EmulatorServer:
    """An emulator serving the CRDs with RBAC and OwnerReferencesPermissionEnforcement on (as OpenShift has)."""
    options.setdefault("crds", [CRDS])
    return EmulatorServer(rbac=True, owner_references_permission_enforcement=True, **options)


def operator_kubeconfig(
    server: EmulatorServer,
    path: Path,
    *,
    watch_namespaces: Iterable[str] = (),
    objects: list[dict[str, Any]] | None = None,
    kueue: bool = False,
) -> Path:
    """Load the chart's RBAC (or ``objects``) into the server; a kubeconfig with the chart's ServiceAccount token."""
    if objects is None:
        objects = chart_rbac(watch_namespaces, kueue=kueue)
    token = install_operator_identity(server, objects)
    return server.write_kubeconfig(path, token=token)


#: The clients whose requests are the operator's: kopf, and the operator's own API wrapper (KubeApi).
OPERATOR_USER_AGENTS = ("kopf/", "etj-operator/")


def operator_refusals(server: EmulatorServer, user: str = OPERATOR_USER) -> list[str]:
    """What the server refused the operator: denied authorizations (requests and admission checks) and any
    401/403 answer to its requests (escalation prevention refuses in storage, not in the authorizer)."""
    denied = [f"{p.verb} {p.resource} ({p.group or 'core'}) in {p.namespace or 'the cluster'}"
              for p in server.access.checked(user) if not p.allowed]
    answered = [f"{r.method} {r.path}: {r.status}" for r in server.requests
                if r.status in (401, 403) and r.user_agent.startswith(OPERATOR_USER_AGENTS)]
    return sorted(set(denied)) + sorted(set(answered))


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

    # ----- playing the scheduler and the kubelet of graceful deletion -----------------------------------

    def bind(self, job: str, node: str = "node-1") -> None:
        """Schedule the job's unbound live pods onto ``node`` (as ``pods/binding`` does)."""
        for pod in self.live_pods(job):
            if not pod["spec"].get("nodeName"):
                self.server.bind_pod(NS, pod["metadata"]["name"], node)

    def terminating_pods(self, job: str) -> list[dict[str, Any]]:
        """The job's pods that have a deletionTimestamp and are still there (Terminating)."""
        return [p for p in self.pods(job) if p["metadata"].get("deletionTimestamp")]

    def finish_terminations(self, job: str, exit_code: int = 143) -> int:
        """Play the kubelet: every terminating pod of the job has stopped; report it and remove it."""
        done = 0
        for pod in self.terminating_pods(job):
            if self.server.finish_termination(NS, pod["metadata"]["name"], exit_code=exit_code) is not None:
                done += 1
        return done

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
