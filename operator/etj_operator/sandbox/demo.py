"""``make demo`` (for now): the real operator against the API emulator, on one machine, no cluster.

It starts the emulator with the CRD, runs the operator in a thread, applies an example job and prints what
the operator made: the pods with their distributed environment, the headless Service, the per-job RBAC and
the job's status. Pods are not executed here: the process "kubelet" that runs them comes with the sandbox.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from etj_operator import contract as c

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MANIFEST = REPO_ROOT / "workloads" / "examples" / "digits-ddp.yaml"


def crd_path() -> Path:
    """The CRD file: $ETJ_CRD_PATH, else the repository's crds/ folder."""
    override = os.environ.get("ETJ_CRD_PATH")
    return Path(override) if override else REPO_ROOT / "crds" / "efficienttrainingjobs.yaml"


def _wait(predicate: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return None


def run_demo(manifest: Path | None = None, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0 when the operator made every expected object)."""
    from etj_operator.sandbox.emulator import EmulatorServer

    console = console or Console()
    manifest = manifest or DEFAULT_MANIFEST
    job = yaml.safe_load(manifest.read_text())
    name, namespace = job["metadata"]["name"], job["metadata"].get("namespace", "default")
    replicas = int(job["spec"].get("replicas", 1))
    console.rule("[bold]EfficientTrainingJob operator: demo against the local API emulator")
    with tempfile.TemporaryDirectory(prefix="etj-demo-") as state, EmulatorServer(crds=[crd_path()]) as server:
        kubeconfig = server.write_kubeconfig(Path(state) / "kubeconfig")
        os.environ["KUBECONFIG"] = str(kubeconfig)
        os.environ.setdefault("ETJ_METRICS_PORT", "0")
        os.environ.setdefault("ETJ_RECONCILE_INTERVAL_SECONDS", "1")
        console.print(f"API emulator (test infrastructure, not a cluster) on {server.url}")

        from etj_operator.runner import OperatorThread

        operator = OperatorThread(quiet=True).start()
        try:
            console.print("operator started (kopf, all namespaces)")
            server.create(c.PLURAL, job, namespace=namespace)
            shown = manifest.relative_to(REPO_ROOT) if manifest.is_relative_to(REPO_ROOT) else manifest
            console.print(f"applied {shown}")
            selector = f"{c.LABEL_JOB_NAME}={name}"
            pods = _wait(lambda: (p := server.list("pods", namespace, selector)) and len(p) == replicas and p, 30)
            status = _wait(lambda: ((server.get(c.PLURAL, namespace, name) or {}).get("status") or {}), 30)
            if not pods:
                console.print(f"[red]the operator did not create {replicas} pods within 30 s")
                return 1
            _print(console, server, namespace, name, pods, status or {})
        finally:
            operator.stop()
    console.print(
        "[dim]Pods are not executed in this demo: there is no kubelet here. The sandbox's process kubelet "
        "(etj sandbox) runs them as local processes.[/]"
    )
    return 0


def _print(console: Console, server: Any, namespace: str, name: str, pods: list[dict[str, Any]],
           status: dict[str, Any]) -> None:
    table = Table(title="Pods the operator created")
    for column in ("pod", "replica", "gang", "service account", "capabilities", "owner"):
        table.add_column(column, no_wrap=True)
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        meta, spec = pod["metadata"], pod["spec"]
        trainer = next(x for x in spec["containers"] if x["name"] == c.TRAINER_CONTAINER)
        caps = ((trainer.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
        owner = meta["ownerReferences"][0]
        table.add_row(
            meta["name"],
            meta["labels"][c.LABEL_REPLICA_INDEX],
            meta["annotations"][c.ANNOTATION_GANG_GENERATION],
            spec.get("serviceAccountName", ""),
            ",".join(caps) or "-",
            f"{owner['kind']}/{owner['name']}",
        )
    console.print(table)

    first = sorted(pods, key=lambda p: p["metadata"]["name"])[0]
    trainer = next(x for x in first["spec"]["containers"] if x["name"] == c.TRAINER_CONTAINER)
    env = Table(title=f"Environment of {first['metadata']['name']} (trainer container)")
    env.add_column("name")
    env.add_column("value", overflow="fold")
    for var in trainer.get("env", []):
        env.add_row(var["name"], str(var.get("value", "")))
    console.print(env)
    console.print(f"command: {' '.join(trainer.get('command', []) + trainer.get('args', []))}")

    svc = server.get("services", namespace, name) or {}
    ports = ", ".join(f"{p['name']}:{p['port']}" for p in (svc.get("spec") or {}).get("ports", []))
    console.print(f"Service {namespace}/{name}: clusterIP={svc.get('spec', {}).get('clusterIP')} ports={ports}")
    role = server.get("roles", namespace, f"{name}-etj") or {}
    for rule in role.get("rules", []):
        console.print(
            f"Role {name}-etj: {','.join(rule['verbs'])} on {','.join(rule['resources'])} "
            f"(resourceNames={rule.get('resourceNames')})"
        )
    conds = ", ".join(f"{x['type']}={x['status']}" for x in status.get("conditions", []))
    console.print(
        f"Job status: phase={status.get('phase')} restarts={status.get('restarts')} "
        f"observedGeneration={status.get('observedGeneration')} conditions: {conds}"
    )
