"""``etj sandbox up|down|status|logs``: the whole loop on one machine, no cluster, no GPU.

A sandbox is the API emulator (with the CRD and server-side validation), the process kubelet, each node's
simulated DCGM exporter (:mod:`etj_operator.sandbox.dcgm`) and the real operator, all in one foreground
process, plus the pods' processes, one node agent process per node (``etj node-agent --backend simulated``,
:mod:`etj_operator.sandbox.agents`) and, when the binary is installed, a real Prometheus scraping the node
exporters (:mod:`etj_operator.sandbox.prometheus`; the operator's ``ETJ_PROMETHEUS_URL`` points at it). Its
state directory (default ``.etj-sandbox/``) holds:

* ``sandbox.json``: the pid of the process that serves it, the API URL and the kubeconfig path;
* ``kubeconfig``: point kubectl at it with ``export KUBECONFIG=<state>/kubeconfig``;
* ``pods/<namespace>/<pod>/<uid>/``: each pod's log (``trainer.log``), working dir and emptyDir volumes;
* ``nodes/<node>/``: the node's simulated GPUs (``gpus.json``), its PodResources socket
  (``pod-resources/kubelet.sock``) and its agent's log (``node-agent.log``);
* ``volumes/``: persistentVolumeClaim volumes (one per claim object); ``shim/``: the pods' ``sitecustomize``;
* ``prometheus/``: the sandbox's Prometheus (config, TSDB, log), when it runs.

With ``kueue`` (``etj sandbox up --kueue``), the API also serves Kueue's CRDs, a stand-in for Kueue's admission
(:mod:`etj_operator.sandbox.kueue_standin`, not Kueue) admits Workloads of the LocalQueue :data:`KUEUE_QUEUE`
(namespace ``default``) by the node's GPUs as quota, and the operator is Kueue's integration (``ETJ_KUEUE``).

Every process a pod starts, every node agent and the Prometheus process carry the state directory in its environment, so
``down``, Ctrl-C, SIGTERM and a later ``up`` after a crash find and stop all of them
(:func:`~etj_operator.sandbox.kubelet.kill_tagged`). A new sandbox starts with fresh node GPUs (``nodes/`` is
made anew, as ``pods/`` is).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etj_operator.packagedata import data_path
from etj_operator.sandbox.agents import AGENT_TAG_PREFIX, NodeAgentProcess
from etj_operator.sandbox.dcgm import NodeDcgmExporter
from etj_operator.sandbox.kubelet import KubeletConfig, ProcessKubelet, iter_pod_logs, kill_tagged, tagged_processes
from etj_operator.sandbox.prometheus import INSTALL_HINT, PROMETHEUS_TAG, SandboxPrometheus, find_prometheus

if TYPE_CHECKING:
    from etj_operator.runner import OperatorThread
    from etj_operator.sandbox.emulator import EmulatorServer, KubeApiEmulator
    from etj_operator.sandbox.kueue_standin import StandInKueue

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_STATE_DIR",
    "Sandbox",
    "SandboxError",
    "SandboxOptions",
    "crd_path",
    "down",
    "read_state",
    "status",
    "up",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_STATE_DIR = Path(".etj-sandbox")
DEFAULT_PORT = 6443
STATE_FILE = "sandbox.json"

#: The operator's settings in the sandbox (each may be overridden from the environment of ``etj sandbox``).
OPERATOR_ENV_DEFAULTS: Mapping[str, str] = {
    "ETJ_METRICS_PORT": "0",  # the operator's own /metrics: off (port 8080 is often taken on a dev machine)
    "ETJ_GPU_BACKEND": "simulated",
    "ETJ_RECONCILE_INTERVAL_SECONDS": "2",
    "ETJ_TELEMETRY_INTERVAL_SECONDS": "1",
    "ETJ_CONTROL_POLL_STEPS": "5",
    # a quick poll (the product's default is 1 s): the sandbox's CPU jobs are short, and Auto through the agent
    # waits for a report per candidate
    "ETJ_CONTROL_POLL_SECONDS": "0.2",
}


#: Tells the operator that node agents apply the power limits (its config reads it).
ENV_NODE_AGENT = "ETJ_NODE_AGENT"
#: The operator's default Prometheus: the sandbox's own, when it runs.
ENV_PROMETHEUS_URL = "ETJ_PROMETHEUS_URL"
#: The operator as Kueue's integration (``kueue``).
ENV_KUEUE = "ETJ_KUEUE"
#: With ``kueue``: the LocalQueue jobs name (``kueue.x-k8s.io/queue-name``), its ClusterQueue and its one flavor.
KUEUE_QUEUE = "team-a"
KUEUE_CLUSTER_QUEUE = "sandbox"
KUEUE_FLAVOR = "sandbox-gpu"


class SandboxError(RuntimeError):
    """The sandbox cannot start or be reached; the message says what to do."""


def crd_path() -> Path:
    """Where the CRDs are: $ETJ_CRD_PATH (a file or a folder), else the packaged CRDs (the repository's crds/).

    The sandbox loads every CRD there: the job's and its report's (the operator needs both).
    """
    override = os.environ.get("ETJ_CRD_PATH")
    return Path(override) if override else data_path("crds")


@dataclass(frozen=True)
class SandboxOptions:
    """How to start a sandbox."""

    state_dir: Path = DEFAULT_STATE_DIR
    host: str = "127.0.0.1"
    #: API port; 0 picks a free one (written to the kubeconfig and ``sandbox.json``).
    port: int = DEFAULT_PORT
    crds: tuple[Path, ...] = ()
    #: Cap of the pods' termination grace period (s).
    max_grace_seconds: float = 30.0
    #: Extra env defaults for every pod (e.g. ETJ_SIMULATED_STEP_SECONDS).
    pod_env: Mapping[str, str] = field(default_factory=dict)
    #: Operator settings on top of :data:`OPERATOR_ENV_DEFAULTS`.
    operator_env: Mapping[str, str] = field(default_factory=dict)
    #: Run the operator (False: emulator and kubelet only).
    operator: bool = True
    #: Simulated GPUs of each node (0: nodes without GPUs, and no node agent).
    gpus_per_node: int = 4
    #: Run ``etj node-agent --backend simulated`` per node, and tell the operator so (``ETJ_NODE_AGENT=1``).
    node_agent: bool = True
    #: The agents' ``--interval`` (s): short, so that a cap follows the throttle within a few seconds.
    node_agent_interval_seconds: float = 2.0
    #: Run each node's simulated DCGM exporter (nodes with GPUs): every GPU's power, energy and limit, for any
    #: program (:mod:`etj_operator.sandbox.dcgm`).
    dcgm_exporter: bool = True
    #: How often the exporters sample (s).
    dcgm_interval_seconds: float = 0.5
    #: Run a real Prometheus scraping the node exporters, when the ``prometheus`` binary is found (and the node
    #: exporters run), and point the operator's ``ETJ_PROMETHEUS_URL`` at it. False: never.
    prometheus: bool = True
    #: Its scrape interval (s).
    prometheus_scrape_interval_seconds: float = 1.0
    #: Queue jobs through Kueue: Kueue's CRDs, the stand-in admission (one flavor, the node's GPUs as quota) and
    #: the operator as Kueue's integration (``ETJ_KUEUE=1``).
    kueue: bool = False


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The ``sandbox.json`` of ``state_dir``, or None."""
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        text = stat.read_text()
        return not text[text.rfind(")") + 2:].startswith(("Z", "X"))
    return True


class Sandbox:
    """Emulator + validation + kubelet + operator in this process; ``start()``/``stop()`` or ``with``."""

    def __init__(self, options: SandboxOptions | None = None) -> None:
        self.options = options or SandboxOptions()
        self.state_dir = Path(self.options.state_dir).resolve()
        self.server: EmulatorServer | None = None
        self.kubelet: ProcessKubelet | None = None
        self.operator: OperatorThread | None = None
        #: One per node while running (the sandbox has one node).
        self.node_agents: list[NodeAgentProcess] = []
        #: Each node's simulated DCGM exporter, while running.
        self.dcgm_exporters: list[NodeDcgmExporter] = []
        #: The sandbox's Prometheus, while it runs (None: off, or no binary; :attr:`prometheus_note` says why).
        self.prometheus: SandboxPrometheus | None = None
        self.prometheus_note = ""
        #: The stand-in for Kueue's admission, while it runs (``kueue``).
        self.kueue: StandInKueue | None = None
        self._agent_kubeconfig: Path | None = None
        self.kubeconfig = self.state_dir / "kubeconfig"
        self._saved_env: dict[str, str | None] = {}
        self._saved_kube_default: str | None = None

    # ----- start and stop ------------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Refuse when a live sandbox owns the state dir; otherwise stop a crashed one's leftovers and clean up.

        Returns the pids of leftover processes that were stopped.
        """
        state = read_state(self.state_dir)
        if state is not None:
            pid = int(state.get("pid", 0))
            if pid and pid != os.getpid() and _alive(pid):
                raise SandboxError(
                    f"a sandbox (pid {pid}) already uses {self.state_dir}; stop it with `etj sandbox down"
                    f" --state-dir {self.options.state_dir}` or pick another --state-dir"
                )
        killed = kill_tagged(self.state_dir, grace_seconds=2.0)
        if killed:
            log.warning("stopped %d processes left by a previous sandbox in %s", len(killed), self.state_dir)
        for sub in ("pods", "volumes", "shim", "nodes", "prometheus"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()
        return killed

    def start(self) -> Sandbox:
        """Start everything; on any failure, stop what was started and raise SandboxError."""
        from etj_operator.sandbox.emulator import EmulatorServer
        from etj_operator.sandbox.emulator.authn import ADMIN

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.recover()
        crds = self.options.crds or (crd_path(),)
        try:
            # RBAC as on a cluster: the operator runs as the chart's ServiceAccount under the chart's rules, each
            # pod as its own ServiceAccount; kubectl sends no token over plain HTTP, so requests without one act
            # as the administrator (what the legacy insecure port of kube-apiserver did).
            self.server = EmulatorServer(host=self.options.host, port=self.options.port, crds=crds, rbac=True,
                                         anonymous=ADMIN, owner_references_permission_enforcement=True).start()
        except RuntimeError as e:
            self.server = None
            cause = e.__cause__ or e
            raise SandboxError(
                f"cannot serve the API on {self.options.host}:{self.options.port}: {cause}"
                " (another sandbox? use --port 0 for a free port)"
            ) from e
        try:
            # The emulator validates custom resources (CRD schema and CEL rules) by default, as a real server.
            self.server.write_kubeconfig(self.kubeconfig)
            self.kubelet = ProcessKubelet(
                self.server,
                KubeletConfig(state_dir=self.state_dir, kubeconfig=self.kubeconfig,
                              max_grace_seconds=self.options.max_grace_seconds, env_defaults=self.options.pod_env,
                              pod_token=self.server.service_account_token, api_url=self.server.url,
                              gpus=self.options.gpus_per_node),
            ).start()
            self.server.emulator.pod_log_reader = self.kubelet.read_log
            if self.options.dcgm_exporter and self.options.gpus_per_node > 0:
                self._start_dcgm_exporters()
            self._start_prometheus()
            if self.options.node_agent and self.options.gpus_per_node > 0:
                self._start_node_agents()
            if self.options.kueue:
                self._start_kueue()
            if self.options.operator:
                self._start_operator()
            for agent in self.node_agents:
                try:
                    agent.wait_ready()
                except RuntimeError as e:
                    raise SandboxError(str(e)) from e
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_dcgm_exporters(self) -> None:
        """Start the node's simulated DCGM exporter (in this process: it reads the kubelet's allocation)."""
        assert self.kubelet is not None
        kubelet = self.kubelet
        if kubelet.node_gpus_file is None:
            return
        exporter = NodeDcgmExporter(kubelet.config.node_name, kubelet.node_gpus_file, kubelet.gpu_holders,
                                    state_dir=self.state_dir, interval_seconds=self.options.dcgm_interval_seconds)
        self.dcgm_exporters.append(exporter.start())

    def _start_prometheus(self) -> None:
        """Start Prometheus over the node exporters when asked and the binary is found; else say why not."""
        if not self.options.prometheus:
            self.prometheus_note = "off (SandboxOptions.prometheus=False)"
            return
        if not self.dcgm_exporters:
            self.prometheus_note = "off: no node has simulated GPUs, so there is no DCGM exporter to scrape"
            return
        binary = find_prometheus()
        if binary is None:
            self.prometheus_note = (f"not started: no prometheus binary ({INSTALL_HINT}); jobs with"
                                    " telemetry.source Prometheus get no readings, Direct ones are measured as before")
            log.warning("sandbox: Prometheus %s", self.prometheus_note)
            return
        prometheus = SandboxPrometheus(self.state_dir, [e.address for e in self.dcgm_exporters], binary,
                                       scrape_interval_seconds=self.options.prometheus_scrape_interval_seconds)
        try:
            self.prometheus = prometheus.start()
        except (OSError, RuntimeError) as e:
            raise SandboxError(f"cannot start Prometheus ({binary}): {e}") from e
        self.prometheus_note = (f"{self.prometheus.url}, scraping the node DCGM exporters every"
                                f" {self.options.prometheus_scrape_interval_seconds:g} s")

    def _start_kueue(self) -> None:
        """Serve Kueue's CRDs, make the sandbox's queue (one flavor, the node's GPUs) and run the stand-in."""
        from etj_operator.sandbox.kueue_standin import QueueSetup, StandInKueue

        assert self.server is not None and self.kubelet is not None
        standin = StandInKueue(self.server, interval_seconds=0.2).install()
        standin.add_queue(QueueSetup(
            flavor=KUEUE_FLAVOR, node_labels={"kubernetes.io/hostname": self.kubelet.config.node_name},
            cluster_queue=KUEUE_CLUSTER_QUEUE, local_queue=KUEUE_QUEUE, namespace="default",
            quota={"nvidia.com/gpu": max(self.options.gpus_per_node, 0)},
        ))
        self.kueue = standin.start()

    def _start_node_agents(self) -> None:
        """Start the node's agent as a process, with its own ServiceAccount (waited for in :meth:`start`)."""
        from etj_operator.sandbox.identities import install_operator_identity, node_agent_rbac_objects

        assert self.server is not None and self.kubelet is not None
        kubelet = self.kubelet
        if kubelet.pod_resources_socket is None:
            raise SandboxError("the node agent needs the kubelet's PodResources socket (pip install grpcio)")
        if self._agent_kubeconfig is None:
            token = install_operator_identity(self.server, node_agent_rbac_objects())
            kubeconfig = self.server.write_kubeconfig(self.state_dir / "node-agent-kubeconfig", token=token)
            kubeconfig.chmod(0o600)
            self._agent_kubeconfig = kubeconfig
        agent = NodeAgentProcess(node=kubelet.config.node_name, node_dir=kubelet.node_dir,
                                 socket=kubelet.pod_resources_socket, kubeconfig=self._agent_kubeconfig,
                                 sandbox_state_dir=self.state_dir, gpus=self.options.gpus_per_node,
                                 interval_seconds=self.options.node_agent_interval_seconds)
        self.node_agents.append(agent.start())

    def stop_node_agents(self) -> list[int | None]:
        """Stop every node agent (SIGTERM: each puts the GPUs it capped back to their default); exit codes.

        What a node looks like when its agent is gone (an uninstalled DaemonSet): nothing enforces the
        operator's caps any more, and the GPUs report their default limits. :meth:`start_node_agents` brings
        them back. The operator is not told (``ETJ_NODE_AGENT`` stays as it was): it sees it in the limits.
        """
        codes = [agent.stop() for agent in self.node_agents]
        self.node_agents = []
        return codes

    def start_node_agents(self) -> None:
        """Start the node agents again (after :meth:`stop_node_agents`) and wait for their first cycle."""
        if self.node_agents or self.options.gpus_per_node <= 0:
            return
        self._start_node_agents()
        for agent in self.node_agents:
            try:
                agent.wait_ready()
            except RuntimeError as e:
                raise SandboxError(str(e)) from e

    def operator_settings(self, kubeconfig: Path) -> dict[str, str]:
        """The operator's environment: the defaults, ``ETJ_NODE_AGENT``, then ``operator_env``, and its kubeconfig.

        ``ETJ_NODE_AGENT`` is "1" when the node agents run (they apply the power limits), else "0";
        ``ETJ_PROMETHEUS_URL`` is the sandbox's Prometheus when it runs (a job's ``prometheusURL`` still wins).
        """
        runs_agent = self.options.node_agent and self.options.gpus_per_node > 0
        prometheus = {ENV_PROMETHEUS_URL: self.prometheus.url} if self.prometheus is not None else {}
        return {**OPERATOR_ENV_DEFAULTS, ENV_NODE_AGENT: "1" if runs_agent else "0", **self.options.operator_env,
                **prometheus, ENV_KUEUE: "1" if self.options.kueue else "0", "KUBECONFIG": str(kubeconfig)}

    def _start_operator(self) -> None:
        import kubernetes

        from etj_operator.runner import OperatorThread
        from etj_operator.sandbox.identities import chart_rbac_objects, install_operator_identity

        assert self.server is not None
        # the chart's ServiceAccount and rules (with kueue.enabled when the sandbox queues through Kueue)
        token = install_operator_identity(self.server, chart_rbac_objects(kueue=self.options.kueue))
        operator_kubeconfig = self.server.write_kubeconfig(self.state_dir / "operator-kubeconfig", token=token)
        settings = self.operator_settings(operator_kubeconfig)
        # what the sandbox itself decides: never the caller's leftovers
        forced = ("KUBECONFIG", ENV_NODE_AGENT, ENV_KUEUE,
                  *((ENV_PROMETHEUS_URL,) if self.prometheus is not None else ()))
        for name, value in settings.items():
            if name in forced or name in self.options.operator_env or name not in os.environ:
                self._saved_env.setdefault(name, os.environ.get(name))
                os.environ[name] = value
        # The kubernetes package reads $KUBECONFIG once at import (kopf imports it): point its default here too.
        kube_config = kubernetes.config.kube_config
        self._saved_kube_default = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(operator_kubeconfig)
        self.operator = OperatorThread(quiet=True).start()

    def _write_state(self) -> None:
        assert self.server is not None
        state = {"pid": os.getpid(), "url": self.server.url, "kubeconfig": str(self.kubeconfig),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "dcgmExporters": {e.node: e.metrics_url for e in self.dcgm_exporters},
                 "prometheus": self.prometheus.url if self.prometheus is not None else None}
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_dir / STATE_FILE)

    def stop(self) -> None:
        """Stop the operator, the node agents, every pod (SIGTERM, grace, SIGKILL), the API; remove ``sandbox.json``.

        The agents stop before the pods: on SIGTERM each resets the GPUs it capped, and the API and the kubelet
        are still there for it.
        """
        if self.operator is not None:
            try:
                self.operator.stop()
            except TimeoutError as e:
                log.warning("%s", e)
            self.operator = None
        if self.kueue is not None:
            self.kueue.stop()
            self.kueue = None
        for agent in self.node_agents:
            agent.stop()
        self.node_agents = []
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        for exporter in self.dcgm_exporters:
            exporter.stop()
        self.dcgm_exporters = []
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        kill_tagged(self.state_dir, grace_seconds=1.0)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        if self._saved_kube_default is not None:
            import kubernetes

            kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = self._saved_kube_default
            self._saved_kube_default = None
        state = read_state(self.state_dir)
        if state is not None and state.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / STATE_FILE).unlink()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- helpers --------------------------------------------------------------------------------------

    @property
    def api(self) -> EmulatorServer:
        """The running emulator (raises when stopped)."""
        if self.server is None:
            raise SandboxError("the sandbox is not running")
        return self.server

    def apply_file(self, path: Path) -> list[dict[str, Any]]:
        """Create every object of a YAML file (like ``kubectl create -f``), through admission; returns them."""
        import yaml

        created = []
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if not isinstance(doc, dict) or not doc.get("kind"):
                continue
            kind = str(doc["kind"])
            namespaced = self.api.call(functools.partial(_namespaced, kind))
            namespace = ((doc.get("metadata") or {}).get("namespace") or "default") if namespaced else None
            created.append(self.api.create(kind, doc, namespace=namespace))
        return created


def _namespaced(kind: str, emulator: KubeApiEmulator) -> bool:
    return emulator.resource_type(kind).namespaced


# ----- the commands ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[threading.Event]:
    """Turn SIGTERM and SIGHUP into a stop request (Ctrl-C raises KeyboardInterrupt as usual)."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def up(options: SandboxOptions, *, out: Any = None) -> int:
    """Run a sandbox in the foreground until Ctrl-C, SIGTERM or ``etj sandbox down``."""
    out = out or sys.stdout
    with _terminate_on_sigterm() as stop:
        sandbox = Sandbox(options)
        try:
            sandbox.start()
        except SandboxError as e:
            print(f"etj sandbox: {e}", file=sys.stderr)
            return 1
        try:
            server = sandbox.api
            print(f"etj sandbox: API emulator on {server.url} (no cluster: an in-memory API server, the"
                  " process kubelet and the operator; GPUs are simulated)", file=out)
            print(f"  state dir:  {sandbox.state_dir}", file=out)
            for agent in sandbox.node_agents:
                print(f"  node agent: {agent.node} ({agent.gpus} simulated GPUs, every {agent.interval_seconds:g} s),"
                      f" metrics {agent.metrics_url}, log {agent.log_path}", file=out)
            for exporter in sandbox.dcgm_exporters:
                print(f"  DCGM exporter (simulated power): {exporter.node}, {exporter.metrics_url}", file=out)
            print(f"  Prometheus: {sandbox.prometheus_note or '-'}", file=out)
            if sandbox.kueue is not None:
                print(f"  Kueue:      a stand-in for Kueue's admission (not Kueue): LocalQueue {KUEUE_QUEUE} in"
                      f" default -> ClusterQueue {KUEUE_CLUSTER_QUEUE}, flavor {KUEUE_FLAVOR},"
                      f" {options.gpus_per_node} nvidia.com/gpu; label a job kueue.x-k8s.io/queue-name={KUEUE_QUEUE}"
                      " and watch `kubectl get etj,workloads`; preempt one with `kubectl annotate workload NAME"
                      " sandbox.efficienttraining.dev/preempt=now`", file=out)
            print("  point kubectl at it:", file=out)
            print(f"    export KUBECONFIG={sandbox.kubeconfig}", file=out)
            print("    kubectl apply -f workloads/examples/digits-ddp.yaml && kubectl get etj,pods", file=out)
            print(f"  pod logs:   etj sandbox logs POD --state-dir {options.state_dir} (or kubectl logs POD)",
                  file=out)
            print("  stop:       Ctrl-C here, or `etj sandbox down`", file=out, flush=True)
            while not stop.wait(0.5):
                pass
            print("etj sandbox: stopping", file=out, flush=True)
        except KeyboardInterrupt:
            print("\netj sandbox: stopping", file=out, flush=True)
        finally:
            sandbox.stop()
    return 0


def down(state_dir: Path, *, timeout_seconds: float = 60.0) -> int:
    """Stop the sandbox that serves ``state_dir`` (SIGTERM to its pid) and make sure nothing of it is left."""
    state_dir = Path(state_dir).resolve()
    state = read_state(state_dir)
    pid = int(state.get("pid", 0)) if state else 0
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            print(f"etj sandbox: pid {pid} did not stop in {timeout_seconds:.0f} s; sending SIGKILL", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(f"etj sandbox: stopped pid {pid}")
    else:
        print(f"etj sandbox: no sandbox runs for {state_dir}")
    leftovers = kill_tagged(state_dir, grace_seconds=2.0)
    if leftovers:
        print(f"etj sandbox: stopped {len(leftovers)} leftover pod processes")
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    return 0


def status(state_dir: Path) -> int:
    """Print whether a sandbox runs for ``state_dir``, its API and its pods' processes; 0 when it runs."""
    state_dir = Path(state_dir).resolve()
    state = read_state(state_dir)
    pid = int(state.get("pid", 0)) if state else 0
    if not (pid and _alive(pid)):
        print(f"no sandbox runs for {state_dir}")
        stale = tagged_processes(state_dir)
        if stale:
            print(f"{len(stale)} leftover pod processes ({', '.join(map(str, stale))}): run `etj sandbox down`")
        return 1
    assert state is not None
    print(f"sandbox pid {pid}, API {state.get('url')}, started {state.get('started')}")
    print(f"export KUBECONFIG={state.get('kubeconfig')}")
    pids = tagged_processes(state_dir)
    by_pod: dict[str, list[int]] = {}
    for p in pids:
        env = Path(f"/proc/{p}/environ")
        with contextlib.suppress(OSError):
            tag = next((item.split(b"=", 1)[1].decode() for item in env.read_bytes().split(b"\0")
                        if item.startswith(b"ETJ_SANDBOX_POD=")), "?")
            by_pod.setdefault(tag, []).append(p)
    if not by_pod:
        print("no pod processes run")
    for tag, members in sorted(by_pod.items()):
        if tag.startswith(AGENT_TAG_PREFIX):
            print(f"node agent of {tag.removeprefix(AGENT_TAG_PREFIX)} (simulated GPUs): pids"
                  f" {', '.join(map(str, members))}")
            continue
        if tag == PROMETHEUS_TAG:
            print(f"Prometheus (scraping the simulated DCGM exporters): pids {', '.join(map(str, members))}")
            continue
        namespace, name, _uid = [*tag.split("/"), "", "", ""][:3]
        print(f"pod {namespace}/{name}: pids {', '.join(map(str, members))}")
    return 0


def logs(state_dir: Path, pod: str, namespace: str | None = None, *, out: Any = None) -> int:
    """Print the newest log of ``pod`` (its trainer's stdout and stderr)."""
    out = out or sys.stdout
    found = next(iter_pod_logs(Path(state_dir).resolve(), pod, namespace), None)
    if found is None:
        print(f"etj sandbox: no log for pod {pod!r} in {Path(state_dir).resolve()}", file=sys.stderr)
        return 1
    out.write(found.read_text(errors="replace"))
    return 0
