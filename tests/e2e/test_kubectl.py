"""kubectl against the sandbox: apply (with server-side validation), get, describe, logs, delete."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from etj_operator.sandbox.kubelet import tagged_processes
from etj_operator.sandbox.sandbox import REPO_ROOT, Sandbox, SandboxOptions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("kubectl") is None and not os.environ.get("ETJ_REQUIRE_SYSTEM_TOOLS"),
                       reason="kubectl is not installed"),
]

EXAMPLE = REPO_ROOT / "workloads" / "examples" / "digits-ddp.yaml"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    state = tmp_path_factory.mktemp("kubectl") / "state"
    with Sandbox(SandboxOptions(state_dir=state, port=0, max_grace_seconds=5)) as sb:
        yield sb
    assert tagged_processes(state) == []


def kubectl(sandbox, *args, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig)}
    done = subprocess.run(["kubectl", *args], input=stdin, env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def light_job(name: str) -> dict:
    """The example with its trainer replaced by a short program that prints and waits (no torch)."""
    job = copy.deepcopy(next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == "EfficientTrainingJob"))
    job["metadata"]["name"] = name
    del job["spec"]["compression"]
    job["spec"]["checkpoint"]["volume"] = {"emptyDir": {}}  # the example's claim is not created here
    trainer = job["spec"]["template"]["spec"]["containers"][0]
    trainer["command"] = [sys.executable, "-c", "import os, time; print('trainer at', os.environ['MASTER_ADDR'],"
                          " flush=True); time.sleep(120)"]
    return job


def test_an_invalid_manifest_is_rejected_with_the_fields_named(sandbox):
    job = light_job("broken")
    job["spec"]["replicas"] = 0
    job["spec"]["energy"]["power"]["mode"] = "Turbo"
    done = kubectl(sandbox, "apply", "-f", "-", stdin=yaml.safe_dump(job), check=False)
    assert done.returncode != 0
    assert 'The EfficientTrainingJob "broken" is invalid' in done.stderr
    assert "spec.replicas" in done.stderr and "greater than or equal to 1" in done.stderr
    assert "spec.energy.power.mode" in done.stderr and "Turbo" in done.stderr
    assert sandbox.api.get("etj", "default", "broken") is None


def test_a_rule_beyond_the_schema_is_rejected_too(sandbox):
    job = light_job("no-trainer")
    job["spec"]["template"]["spec"]["containers"][0]["name"] = "main"
    done = kubectl(sandbox, "apply", "-f", "-", stdin=yaml.safe_dump(job), check=False)
    assert done.returncode != 0
    assert "spec.template.spec.containers" in done.stderr and "trainer" in done.stderr


def test_apply_get_describe_logs_delete(sandbox, tmp_path):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(light_job("light")))
    assert "created" in kubectl(sandbox, "apply", "-f", str(manifest)).stdout

    server = sandbox.api
    server.wait_for("pods", "default", "light-worker-1",
                    lambda p: bool(p) and p["status"].get("phase") == "Running", timeout_seconds=60)
    table = kubectl(sandbox, "get", "etj").stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "REPLICAS", "POWER", "ENERGY", "STAGE", "AGE"]
    row = table.splitlines()[1].split()
    assert row[:3] == ["light", "Running", "2"]
    # power and energy are a measurement with its unit, or "-" while unknown: never a bare 0
    assert re.fullmatch(r"-|\d+W", row[3]) and re.fullmatch(r"-|[0-9.e+-]+kWh", row[4]), row

    pods = kubectl(sandbox, "get", "pods", "-o", "wide").stdout
    rows = {line.split()[0]: line.split() for line in pods.splitlines()[1:]}
    assert set(rows) == {"light-worker-0", "light-worker-1"}
    assert all(r[2] == "Running" and r[5].startswith("127.") for r in rows.values())

    described = kubectl(sandbox, "describe", "etj", "light").stdout
    assert "Name:         light" in described and "Budget Watts:" in described

    master_ip = rows["light-worker-0"][5]
    server.wait_for("pods", "default", "light-worker-1",
                    lambda _: "trainer at" in kubectl(sandbox, "logs", "light-worker-1").stdout, timeout_seconds=30)
    assert f"trainer at {master_ip}" in kubectl(sandbox, "logs", "light-worker-1").stdout

    uids = [server.get("pods", "default", f"light-worker-{i}")["metadata"]["uid"] for i in range(2)]
    assert "deleted" in kubectl(sandbox, "delete", "etj", "light").stdout
    server.wait_for("pods", "default", "light-worker-0", lambda p: p is None, timeout_seconds=60)
    server.wait_for("pods", "default", "light-worker-1", lambda p: p is None, timeout_seconds=60)
    state = Path(sandbox.state_dir)
    for i, uid in enumerate(uids):
        server.wait_for("pods", "default", f"light-worker-{i}",
                        lambda _, u=uid, n=i: not tagged_processes(state, f"default/light-worker-{n}/{u}"),
                        timeout_seconds=30)
    assert "No resources found" in kubectl(sandbox, "get", "etj").stderr


def test_everyday_commands_create_namespace_configmap_events_and_logs_follow(sandbox):
    server = sandbox.server
    # typed commands: kubectl sends these bodies as protobuf
    assert "created" in kubectl(sandbox, "create", "namespace", "team-a").stdout
    assert "created" in kubectl(sandbox, "create", "configmap", "settings", "--from-literal=lr=0.1",
                                "-n", "team-a").stdout
    assert server.get("configmaps", "team-a", "settings")["data"] == {"lr": "0.1"}

    job = light_job("short")
    job["spec"]["replicas"] = 1
    job["spec"]["template"]["spec"]["containers"][0]["command"] = [
        sys.executable, "-c", "import time; print('first', flush=True); time.sleep(2); print('last', flush=True)"]
    kubectl(sandbox, "apply", "-f", "-", stdin=yaml.safe_dump(job))
    server.wait_for("pods", "default", "short-worker-0",
                    lambda p: p is not None and (p.get("status") or {}).get("phase") in ("Running", "Succeeded"),
                    timeout_seconds=60)
    followed = kubectl(sandbox, "logs", "-f", "short-worker-0").stdout  # returns when the worker ends
    assert "first" in followed and "last" in followed
    assert server.get("pods", "default", "short-worker-0")["status"]["phase"] == "Succeeded"

    events = kubectl(sandbox, "get", "events", "--field-selector", "involvedObject.name=short").stdout
    header = events.splitlines()[0].split()
    assert header[:5] == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT"], events
    assert "efficienttrainingjob/short" in events

    # kubectl auth can-i, answered by the sandbox's RBAC: the job's pods may patch their report's status, not their
    # job's status, and not delete the job
    account = server.get("pods", "default", "short-worker-0")["spec"]["serviceAccountName"]
    assert account == "short-etj"
    pod_user = f"system:serviceaccount:default:{account}"
    can = kubectl(sandbox, "auth", "can-i", "patch", "efficienttrainingjobreports/short", "--subresource=status",
                  "--as", pod_user, check=False)
    assert can.stdout.strip() == "yes", (can.stdout, can.stderr)
    for denied in (["patch", "efficienttrainingjobs/short", "--subresource=status"],
                   ["delete", "efficienttrainingjobs/short"]):
        cannot = kubectl(sandbox, "auth", "can-i", *denied, "--as", pod_user, check=False)
        assert cannot.stdout.strip() == "no", (denied, cannot.stdout, cannot.stderr)
    assert "short" in kubectl(sandbox, "get", "etjreport").stdout  # the report's printer columns
    kubectl(sandbox, "delete", "etj", "short")
