"""The sandbox's node agents: ``etj node-agent --backend simulated`` as a process per node, as a DaemonSet runs it.

Each agent runs as its own ServiceAccount (``etj-node-agent``, read-only rules:
:func:`~etj_operator.sandbox.identities.node_agent_rbac_objects`) with a kubeconfig of its own, reads the node's
PodResources socket that the sandbox kubelet serves, and drives the node's simulated GPUs (the kubelet's
``nodes/<node>/gpus.json``). Its log is ``nodes/<node>/node-agent.log``; its metrics are served on a free port
of 127.0.0.1. Like the pods' processes, it carries the sandbox's state directory in its environment, so a
later sandbox (or ``etj sandbox down``) stops it if the sandbox that started it crashed.

:func:`parse_metrics` reads its exposition (the demo and the tests use it to say which caps the agent applied).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from etj_contract import agent as a
from etj_contract import names as n
from etj_operator.sandbox.kubelet import ENV_POD_TAG, ENV_STATE_TAG, _free_port

__all__ = [
    "AGENT_CAP_REASONS",
    "AGENT_TAG_PREFIX",
    "AgentGpu",
    "NodeAgentProcess",
    "Series",
    "agent_gpus",
    "node_gpu_limits",
    "parse_metrics",
]

log = logging.getLogger(__name__)

#: ``ETJ_SANDBOX_POD`` of an agent process: ``node-agent:<node>`` (pods have ``namespace/name/uid``).
AGENT_TAG_PREFIX: Final = "node-agent:"

_SERIES = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(\{(?P<labels>.*)\})?\s+(?P<value>\S+)$')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Series:
    """One sample of a Prometheus text exposition."""

    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Series]:
    """The samples of a text exposition (comments skipped; enough for the agent's own output)."""
    found: list[Series] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SERIES.match(line.strip())
        if match is None:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in _LABEL.findall(match.group("labels") or "")}
        with contextlib.suppress(ValueError):
            found.append(Series(match.group("name"), labels, float(match.group("value"))))
    return found


#: The agent's reasons for a limit it set on a job's behalf (the others leave a GPU alone or reset it).
AGENT_CAP_REASONS: Final = frozenset(
    {a.REASON_JOB_LIMIT, a.REASON_JOB_LIMIT_CLAMPED, a.REASON_JOB_CEILING, a.REASON_AUTO_CANDIDATE}
)


@dataclass(frozen=True)
class AgentGpu:
    """One GPU as one scrape of the agent shows it: the limit read back, why, and the pods that hold it."""

    uuid: str
    hostname: str
    #: ``DCGM_FI_DEV_POWER_MGMT_LIMIT``: what the card's limit is after the agent's cycle. Units: W.
    limit_watts: float | None
    #: The agent's decision (``etj_node_agent_desired_power_limit_watts``'s ``reason``).
    reason: str | None
    #: ``(namespace, pod)`` of each container holding it.
    pods: tuple[tuple[str, str], ...]
    source: str

    @property
    def capped_by_agent(self) -> bool:
        """Whether the limit in force is one the agent applied for a job."""
        return self.reason in AGENT_CAP_REASONS and self.limit_watts is not None


def agent_gpus(series: list[Series]) -> list[AgentGpu]:
    """The agent's view of each GPU, from its samples (by UUID, in the order first seen)."""
    limits: dict[str, float] = {}
    reasons: dict[str, str] = {}
    pods: dict[str, list[tuple[str, str]]] = {}
    hosts: dict[str, str] = {}
    sources: dict[str, str] = {}
    for s in series:
        uuid = s.labels.get(a.LABEL_UUID)
        if not uuid or s.name not in (n.METRIC_POWER_MGMT_LIMIT, a.METRIC_AGENT_DESIRED_LIMIT):
            continue
        hosts.setdefault(uuid, s.labels.get(a.LABEL_HOSTNAME, ""))
        sources.setdefault(uuid, s.labels.get(a.LABEL_SOURCE, ""))
        holders = pods.setdefault(uuid, [])
        holder = (s.labels.get(a.LABEL_NAMESPACE, ""), s.labels.get(a.LABEL_POD, ""))
        if holder[1] and holder not in holders:
            holders.append(holder)
        if s.name == n.METRIC_POWER_MGMT_LIMIT:
            limits[uuid] = s.value
        elif a.LABEL_REASON in s.labels:
            reasons[uuid] = s.labels[a.LABEL_REASON]
    return [AgentGpu(uuid, hosts[uuid], limits.get(uuid), reasons.get(uuid), tuple(pods[uuid]), sources[uuid])
            for uuid in hosts]


def node_gpu_limits(gpus_file: Path) -> dict[str, tuple[int, int]]:
    """``UUID -> (limit, default)`` of a simulated node's GPUs, read from its state file. Units: mW."""
    data = json.loads(Path(gpus_file).read_text())
    return {str(g["uuid"]): (int(g["limitMilliwatts"]), int(g["defaultLimitMilliwatts"])) for g in data["gpus"]}


@dataclass
class NodeAgentProcess:
    """``etj node-agent`` of one sandbox node, as a process; :meth:`start`, :meth:`wait_ready`, :meth:`stop`."""

    node: str
    #: The node's directory (``--simulated-state-dir``: its ``gpus.json``).
    node_dir: Path
    #: The kubelet's PodResources socket of the node.
    socket: Path
    #: The agent's own credentials (its ServiceAccount's token).
    kubeconfig: Path
    #: The sandbox's state directory (the process tag).
    sandbox_state_dir: Path
    gpus: int
    interval_seconds: float = 2.0
    grace_seconds: float = 120.0
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default=Path())
    _log: IO[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        """Where the agent serves its metrics."""
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def tag(self) -> str:
        """The agent process's ``ETJ_SANDBOX_POD``."""
        return f"{AGENT_TAG_PREFIX}{self.node}"

    def argv(self) -> list[str]:
        """The command line: the DaemonSet's ``etj node-agent``, with the simulated backend and this node's paths."""
        return [sys.executable, "-m", "etj_operator", "node-agent", "--node", self.node,
                "--backend", "simulated", "--simulated-state-dir", str(self.node_dir),
                "--simulated-gpus", str(self.gpus), "--pod-resources-socket", str(self.socket),
                "--interval", f"{self.interval_seconds:g}", "--grace", f"{self.grace_seconds:g}",
                "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port), "--kubeconfig", str(self.kubeconfig)]

    def start(self) -> NodeAgentProcess:
        """Start the process (returns at once; :meth:`wait_ready` waits for its first cycle)."""
        if not self.port:
            self.port = _free_port()
        self.log_path = self.node_dir / "node-agent.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), a.ENV_NODE_NAME: self.node,
               "PYTHONUNBUFFERED": "1", ENV_STATE_TAG: str(self.sandbox_state_dir), ENV_POD_TAG: self.tag}
        self._log = self.log_path.open("ab")
        self._log.write(f"# etj sandbox: node agent of {self.node} (simulated GPUs): {' '.join(self.argv())}\n"
                        .encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.argv(), env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("node agent of %s: pid %d, metrics %s", self.node, self.proc.pid, self.metrics_url)
        return self

    def metrics_text(self, timeout_seconds: float = 2.0) -> str | None:
        """The agent's /metrics now, or None when it does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=timeout_seconds) as answer:
                return str(answer.read().decode())
        except OSError:
            return None

    def metrics(self) -> list[Series]:
        """The agent's samples now (empty when it does not answer)."""
        text = self.metrics_text()
        return parse_metrics(text) if text else []

    def cycles(self) -> int | None:
        """How many cycles the agent has run (None: it does not answer)."""
        text = self.metrics_text()
        if text is None:
            return None
        counts = [s.value for s in parse_metrics(text) if s.name == a.METRIC_AGENT_CYCLES]
        return int(counts[0]) if counts else 0

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the agent's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, timeout_seconds: float = 60.0) -> None:
        """Return once the agent has run a cycle; RuntimeError (with its log) if it exits or takes too long."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"the node agent of {self.node} exited ({code}):\n{self.log_tail()}")
            if (self.cycles() or 0) >= 1:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the node agent of {self.node} ran no cycle in {timeout_seconds:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout_seconds: float = 15.0) -> int | None:
        """SIGTERM (the agent resets the GPUs it capped), SIGKILL after the timeout; returns the exit code."""
        proc = self.proc
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_seconds)
                except subprocess.TimeoutExpired:
                    log.warning("node agent of %s did not stop in %.0f s: SIGKILL", self.node, timeout_seconds)
                    proc.kill()
                    proc.wait(timeout=10)
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code
