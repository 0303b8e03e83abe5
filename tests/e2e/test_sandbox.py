"""`etj sandbox up|down|status|logs` as a user runs them: separate processes, crash recovery, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from etj_operator.sandbox.kubelet import tagged_processes
from etj_operator.sandbox.sandbox import read_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def etj(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etj_operator", *args], capture_output=True, text=True,
                          timeout=timeout)


def start_up(state: Path) -> subprocess.Popen[str]:
    """``etj sandbox up`` in the background; returns once its sandbox.json names it."""
    proc = subprocess.Popen([sys.executable, "-m", "etj_operator", "sandbox", "up", "--state-dir", str(state),
                             "--port", "0", "--grace", "5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        st = read_state(state)
        if st and st.get("pid") == proc.pid:
            return proc
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"sandbox up exited with {proc.returncode}: {output}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("sandbox up did not write its state in 90 s")


def create_sleeper_pod(state: Path, name: str) -> None:
    url = read_state(state)["url"]
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "trainer", "image": "unused", "command": [
                sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(300)"]}]}}
    request = urllib.request.Request(f"{url}/api/v1/namespaces/default/pods", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as response:
        assert response.status == 201


def wait_for(predicate, seconds: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_status_logs_crash_recovery_and_down(tmp_path):
    state = tmp_path / "state"
    first = start_up(state)
    try:
        status = etj("sandbox", "status", "--state-dir", str(state))
        assert status.returncode == 0 and f"KUBECONFIG={state}" in status.stdout

        second = etj("sandbox", "up", "--state-dir", str(state), "--port", "0")
        assert second.returncode == 1 and "already uses" in second.stderr

        create_sleeper_pod(state, "sleeper")
        wait_for(lambda: "sleeping" in etj("sandbox", "logs", "sleeper", "--state-dir", str(state)).stdout,
                 what="the pod's log")
        assert "pod default/sleeper" in etj("sandbox", "status", "--state-dir", str(state)).stdout
    finally:
        first.kill()  # a crash: the pod's process is orphaned
        first.wait(timeout=30)
    orphans = tagged_processes(state)
    assert orphans, "the crashed sandbox's pod should still run"
    stale = etj("sandbox", "status", "--state-dir", str(state))
    assert stale.returncode == 1 and "leftover pod processes" in stale.stdout

    recovered = start_up(state)  # cleans up what the crashed one left
    try:
        assert not any(pid in tagged_processes(state) for pid in orphans)
        create_sleeper_pod(state, "sleeper2")
        wait_for(lambda: bool(tagged_processes(state)), what="the new pod's process")
        down = etj("sandbox", "down", "--state-dir", str(state))
        assert down.returncode == 0 and f"stopped pid {recovered.pid}" in down.stdout
        assert recovered.wait(timeout=60) == 0
    finally:
        if recovered.poll() is None:
            recovered.kill()
    assert tagged_processes(state) == []
    assert read_state(state) is None


def test_ctrl_c_stops_everything(tmp_path):
    state = tmp_path / "state"
    proc = start_up(state)
    try:
        create_sleeper_pod(state, "sleeper")
        wait_for(lambda: bool(tagged_processes(state)), what="the pod's process")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert tagged_processes(state) == []
    assert "stopping" in (proc.stdout.read() if proc.stdout else "")
