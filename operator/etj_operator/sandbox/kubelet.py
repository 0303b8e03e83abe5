"""The sandbox's process "kubelet": runs each Pod's ``trainer`` container as a local process.

There are no images, containers or network namespaces here, so the kubelet approximates a node:

* **Addresses.** Each pod gets its own loopback address ``127.0.x.y`` (all of ``127.0.0.0/8`` is on ``lo``),
  reported as ``status.podIP``. A small ``sitecustomize`` shim, put on the pod's ``PYTHONPATH``, binds Python
  sockets that ask for every address (``0.0.0.0``) to the pod's address instead, and makes
  ``socket.gethostname()`` answer the pod's hostname: what the pod's network and UTS namespaces would do. So
  two pods can both serve ``/metrics`` on port 9400, each on its own address.
* **DNS.** Env values that name a pod through its headless Service (``<hostname>.<subdomain>.<ns>.svc``,
  optionally ``.cluster.local``, or ``<hostname>.<subdomain>`` in the same namespace), alone or as
  ``host:port``, are rewritten to that pod's address. Only a running, not terminating pod answers (the
  newest, if several carry the name). A pod whose peers have no such address yet waits (Pending).
* **Ports.** torchrun's TCPStore (C++) binds its port on every address, which the shim cannot redirect; so
  each pod's container ports named ``rendezvous`` get a free host port, and the rewrite applies it to the
  ports that go with a rewritten name (``MASTER_PORT``/``PET_MASTER_PORT`` beside ``MASTER_ADDR``/
  ``PET_MASTER_ADDR``, the port of a ``host:port`` value). Several jobs can then run at once.
* **Volumes.** There are no mount namespaces: a volume is a directory (or a file) of this machine, and env
  values, ``workingDir`` and the words of ``command``/``args`` under a mount path (a whole word, or the value
  of a ``--flag=PATH`` word) are rewritten to it (e.g. ``ETJ_CHECKPOINT_DIR=/checkpoints``,
  ``python /workspace/train.py``); ``subPath`` selects a path inside the volume. ``emptyDir`` is a per-pod
  directory. ``persistentVolumeClaim`` is a directory per claim object (by its UID, kept across pods until the
  sandbox restarts; a re-created claim starts empty, as a new dynamically provisioned volume does); a pod whose
  claim does not exist stays Pending until it does. ``hostPath`` is the path itself, this machine being the
  sandbox's one node, checked by its ``type`` as a kubelet does (``Directory`` and ``File`` must exist,
  ``DirectoryOrCreate``/``FileOrCreate`` are created, no type: created as a directory when missing); a failed
  check keeps the pod Pending. A ``projected`` volume (the API server adds the ServiceAccount's
  ``kube-api-access-*`` one to every pod) gets the pod's token and namespace files, as a kubelet writes them
  (no ``ca.crt``: the sandbox serves plain HTTP). A ``configMap`` volume gets the ConfigMap's keys as files
  (``items`` select and rename keys), written when the pod starts (later changes are not synced); a pod
  whose ConfigMap does not exist stays Pending until it does, as on a node (unless ``optional``). Other
  volume types are not mounted.
* **Credentials.** ``KUBECONFIG`` points at a kubeconfig of the pod's own (``<pod dir>/kubeconfig``) with a token
  of its ServiceAccount (``spec.serviceAccountName``), as the projected token volume gives a pod on a node; none
  with ``automountServiceAccountToken: false``. Without ``KubeletConfig.pod_token``, the sandbox's kubeconfig.
* **Simulated GPUs, node hardware.** The node has ``KubeletConfig.gpus`` simulated GPUs: their state is the
  node agent's simulated backend file (``<state>/nodes/<node>/gpus.json``, :class:`~etj_operator.nodeagent.gpus
  .SimulatedBackend`), so a limit set on one outlives the pod that ran there, as a real card's does. The
  kubelet allocates them as the device plugin and the device manager do: each container gets the number its
  ``nvidia.com/gpu`` limit (or request) asks, lowest free index first, and its env gets
  ``NVIDIA_VISIBLE_DEVICES=<UUIDs>`` (what the NVIDIA device plugin sets) and ``ETJ_SIMULATED_NODE_GPUS``
  (the node's state file), from which the harness's simulated GPU takes its UUID and the node GPU's limit.
  A pod that asks for more GPUs than are free is not bound and stays Pending with ``PodScheduled=False``,
  reason ``Unschedulable``, as a scheduler leaves a pod no node fits (a simplification: the sandbox's
  kubelet is also its scheduler, and there is one node). GPUs are freed once the pod's processes are gone.
  The kubelet serves the node's ``v1.PodResourcesLister`` on a unix socket
  (``<state>/nodes/<node>/pod-resources/kubelet.sock``, :class:`~etj_operator.nodeagent.podresources
  .PodResourcesServer`): each pod that holds GPUs, its containers and their device ids (UUIDs), which is
  what the node agent reads. ``ETJ_GPU_BACKEND=simulated`` is forced (there is no real GPU);
  ``OMP_NUM_THREADS=1``, ``GLOO_SOCKET_IFNAME=lo`` and ``ETJ_SIMULATED_SLEEP=1`` are defaults the pod's env
  may override.
* **Lifecycle.** A pod the kubelet runs is first bound to its node (``spec.nodeName``, as the scheduler's
  binding would; the sandbox is one node, ``sandbox``), so the API deletes it gracefully, as on a real
  cluster. Pending until started, Running with the address, then Succeeded or Failed with the exit code in
  ``containerStatuses`` (a signal ``n`` reads ``128+n``). Nothing is restarted (the operator restarts
  gangs). When the container's main process exits, whatever it left running is killed, as a container's
  PID namespace would be.
* **Termination.** A pod with a ``deletionTimestamp`` is Terminating: its processes get SIGTERM at once and
  SIGKILL when its grace period (``deletionGracePeriodSeconds``, capped by ``max_grace_seconds``) runs
  out; a later DELETE with a shorter grace period brings the SIGKILL forward. Once they have exited, the
  kubelet writes the terminal phase and removes the pod with a grace-0 DELETE carrying the pod's UID (as
  the kubelet's status manager does); only then can a pod of the same name be created. A pod removed from
  the API at once (a forced delete) gets a short grace (:data:`FORCED_GRACE_SECONDS`). A terminating or
  finished pod is never the answer to a name (see DNS): a new worker never finds a dying master.
* **Process tracking.** torchrun starts its workers in sessions of their own, so a process group does not
  hold a pod. Every process of a pod inherits ``ETJ_SANDBOX_STATE`` (the state directory) and
  ``ETJ_SANDBOX_POD`` (namespace/name/uid) in its environment; the kubelet finds a pod's processes, and a
  later sandbox the leftovers of a crashed one, by reading ``/proc/<pid>/environ`` (see
  :func:`tagged_processes`).

The kubelet talks to the emulator through its in-process, thread-safe accessors (``list`` and
``set_pod_phase``), polling: it always lives in the process that hosts the emulator (``etj sandbox up``,
the demo, the tests), a level-triggered poll cannot miss an event or need watch resumption, and it keeps
the kubelet independent of client configuration. Only the pods' own processes use HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from etj_operator import contract

__all__ = [
    "ENV_NVIDIA_VISIBLE_DEVICES",
    "ENV_POD_TAG",
    "ENV_SIMULATED_NODE_GPUS",
    "ENV_STATE_TAG",
    "GPU_RESOURCE",
    "KubeletConfig",
    "PodApi",
    "PodGpus",
    "ProcessKubelet",
    "expand_references",
    "kill_tagged",
    "tagged_processes",
]

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: Environment marker carried by every process of every pod: the sandbox's state directory.
ENV_STATE_TAG = "ETJ_SANDBOX_STATE"
#: Environment marker of one pod: ``namespace/name/uid``.
ENV_POD_TAG = "ETJ_SANDBOX_POD"
ENV_POD_IP = "ETJ_SANDBOX_POD_IP"
ENV_POD_HOSTNAME = "ETJ_SANDBOX_POD_HOSTNAME"
#: What the NVIDIA device plugin sets in a container: the UUIDs of its GPUs.
ENV_NVIDIA_VISIBLE_DEVICES: Final = "NVIDIA_VISIBLE_DEVICES"
#: The node's simulated GPU state, for the harness's simulated GPU (``etj_workload.gpu.ENV_SIMULATED_NODE_GPUS``).
ENV_SIMULATED_NODE_GPUS: Final = "ETJ_SIMULATED_NODE_GPUS"
#: The device-plugin resource of the node's GPUs.
GPU_RESOURCE: Final = "nvidia.com/gpu"
#: A unix socket's path must fit ``sun_path`` (108 bytes on Linux, with its NUL).
_MAX_SOCKET_PATH: Final = 100

#: Put on each pod's PYTHONPATH: the pod's network and UTS namespaces, as far as Python sockets go.
SHIM_SOURCE = '''"""Written by the etj sandbox kubelet: emulates a pod's own network address and hostname."""
import os
import socket

_ip = os.environ.get("ETJ_SANDBOX_POD_IP")
_hostname = os.environ.get("ETJ_SANDBOX_POD_HOSTNAME")
if _ip:
    _bind = socket.socket.bind

    def _pod_bind(self, address):
        if self.family == socket.AF_INET and isinstance(address, tuple) and address[0] in ("", "0.0.0.0"):
            address = (_ip, *address[1:])
        return _bind(self, address)

    socket.socket.bind = _pod_bind
if _hostname:
    socket.gethostname = lambda: _hostname
'''

_SVC_NAME = re.compile(
    r"^(?P<host>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<sub>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"(\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?)?$"
)
#: Port variables that belong to an address variable: rewritten with the resolved pod's port map.
PORT_FOR_ADDRESS: Mapping[str, str] = {
    contract.ENV_MASTER_PORT: contract.ENV_MASTER_ADDR,
    contract.ENV_PET_MASTER_PORT: contract.ENV_PET_MASTER_ADDR,
}


class PodApi(Protocol):
    """What the kubelet needs from the API (``EmulatorServer`` provides it)."""

    def list(self, resource: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[Json]:
        """List objects (deep copies)."""
        ...

    def set_pod_phase(self, namespace: str, name: str, phase: str, *, exit_code: int | Mapping[str, int] | None = None,
                      pod_ip: str | None = None, reason: str | None = None) -> Json:
        """Write a pod's phase and container statuses."""
        ...

    def bind_pod(self, namespace: str, name: str, node: str) -> Json:
        """Assign a pod to a node (``pods/binding``)."""
        ...

    def delete_pod(self, namespace: str, name: str, *, grace_period_seconds: int | None = None,
                   uid: str | None = None) -> Json | None:
        """Delete a pod with a grace period and a UID precondition."""
        ...

    def patch_status(self, resource: str, namespace: str | None, name: str, status: Mapping[str, Any]) -> Json:
        """Merge-patch an object's status (a pod no node fits: ``PodScheduled=False``)."""
        ...


@dataclass(frozen=True)
class KubeletConfig:
    """How the process kubelet runs pods."""

    #: The sandbox's state directory: pod dirs, logs and volumes go under ``pods/`` and ``volumes/``.
    state_dir: Path
    #: kubeconfig the pods' processes use to reach the sandbox API (``KUBECONFIG``).
    kubeconfig: Path
    #: Seconds between two looks at the pods.
    poll_seconds: float = 0.2
    #: Upper bound of a pod's termination grace period (its terminationGracePeriodSeconds, default 30).
    max_grace_seconds: float = 30.0
    #: How long a pod waits for the pods its env names to get an address before starting anyway.
    resolve_timeout_seconds: float = 60.0
    #: Extra environment defaults for every pod (the pod's own env wins), e.g. ETJ_SIMULATED_* knobs.
    env_defaults: Mapping[str, str] = field(default_factory=dict)
    #: First loopback address handed out (then the next free ones).
    first_address: str = "127.0.1.1"
    #: Container port names that get a distinct host port per pod (sockets bound on every address).
    remapped_port_names: tuple[str, ...] = ("rendezvous",)
    #: Directory with the interpreter and console scripts (``torchrun``) first on the pods' PATH.
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    #: ``(namespace, service account) -> token`` (e.g. ``EmulatorServer.service_account_token``): each pod gets a
    #: kubeconfig of its own with its ServiceAccount's token, as the projected token volume gives a pod on a
    #: node (None: every pod uses ``kubeconfig``, the sandbox's own credentials).
    pod_token: Callable[[str, str], str] | None = None
    #: The API URL written into the pods' own kubeconfigs (with ``pod_token``).
    api_url: str = ""
    #: The node the kubelet binds the pods it runs to (``spec.nodeName``).
    node_name: str = "sandbox"
    #: Simulated GPUs of the node (see the module; 0: a node without GPUs). Four: the demo's two workers of one
    #: GPU each, with room for a second such job.
    gpus: int = 4
    #: Serve the node's PodResources API on a unix socket (needs grpcio) when the node has GPUs.
    pod_resources: bool = True


@dataclass(frozen=True)
class PodGpus:
    """The node GPUs one container of a pod holds now (:meth:`ProcessKubelet.gpu_holders`)."""

    namespace: str
    pod: str
    uid: str
    container: str
    #: The GPUs' UUIDs, in the order the device plugin gave them (``NVIDIA_VISIBLE_DEVICES``).
    uuids: tuple[str, ...]

    @property
    def tag(self) -> str:
        """The ``ETJ_SANDBOX_POD`` marker every process of the pod carries (:func:`tagged_processes`)."""
        return f"{self.namespace}/{self.pod}/{self.uid}"


#: The grace of a pod removed from the API without waiting for its kubelet (a forced delete): the kubelet
#: still gives its containers a short one (2 s is its minimum per container kill).
FORCED_GRACE_SECONDS = 2.0


# ----- processes, found by their environment -----------------------------------------------------------


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def tagged_processes(state_dir: Path, pod_tag: str | None = None) -> list[int]:
    """Pids of live processes started by the sandbox of ``state_dir`` (only one pod's with ``pod_tag``).

    Reads ``/proc/<pid>/environ`` of the user's own processes (others' are unreadable and skipped).
    """
    state = str(Path(state_dir).resolve()).encode()
    pod = pod_tag.encode() if pod_tag is not None else None
    found: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        env = _environ(int(entry.name))
        mine = env.get(ENV_STATE_TAG.encode()) == state and (pod is None or env.get(ENV_POD_TAG.encode()) == pod)
        if mine and not _is_zombie(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].startswith(("Z", "X"))


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tagged(state_dir: Path, pod_tag: str | None = None, *, grace_seconds: float = 5.0) -> list[int]:
    """SIGTERM every process tagged with ``state_dir`` (and ``pod_tag``), SIGKILL what is left after the grace.

    Returns the pids that were signalled. Used on shutdown and to clean up after a crashed sandbox.
    """
    pids = tagged_processes(state_dir, pod_tag)
    if not pids:
        return []
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and tagged_processes(state_dir, pod_tag):
        time.sleep(0.1)
    left = tagged_processes(state_dir, pod_tag)
    _signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and tagged_processes(state_dir, pod_tag):
        time.sleep(0.05)
    return pids


# ----- env helpers ---------------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_references(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``, others stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, value)


def _field_ref(pod: Mapping[str, Any], path: str, ip: str) -> str | None:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName") or "sandbox",
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": ip,
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        value = simple[path]
        return None if value is None else str(value)
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2))
    return None


# ----- one pod --------------------------------------------------------------------------------------------


@dataclass
class _PodRun:
    namespace: str
    name: str
    uid: str
    hostname: str
    subdomain: str
    ip: str
    pod_dir: Path
    ports: dict[int, int]
    seen_at: float
    #: The pod's terminationGracePeriodSeconds (capped), for a pod removed before its termination began.
    grace_seconds: float = 30.0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    finished: bool = False
    terminating: bool = False
    gone: bool = False
    #: When the termination began (SIGTERM), and when SIGKILL is due (the kubelet's clock).
    terminating_since: float = 0.0
    kill_at: float = 0.0
    killed: bool = False
    #: The grace-0 DELETE that removes the pod has been sent.
    removed: bool = False
    #: The pod's ServiceAccount token, issued once (kubeconfig and projected token volume).
    token: str | None = None
    #: The node GPUs (UUIDs) each container holds, and whether they were given back.
    gpus: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gpus_released: bool = False
    #: What keeps the pod from starting (a volume that cannot be set up yet), as last logged.
    waiting_for: str = ""

    @property
    def tag(self) -> str:
        return f"{self.namespace}/{self.name}/{self.uid}"


class _Unresolved(Exception):
    """A name in the pod's env points at a pod that has no address yet."""


class _MountFailed(Exception):
    """A volume cannot be set up yet: the pod stays Pending (a node leaves it in ContainerCreating)."""


class _MissingConfigMap(_MountFailed):
    """A configMap volume names a ConfigMap that does not exist (and is not optional)."""


class ProcessKubelet:
    """Runs pods of the API as local processes (see the module docstring). ``start()``/``stop()``."""

    def __init__(self, api: PodApi, config: KubeletConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.config = config
        self.state_dir = Path(config.state_dir).resolve()
        #: Seconds, monotonic: grace periods and resolve timeouts are measured on it (tests pass a fake one).
        self.clock = clock
        self._runs: dict[str, _PodRun] = {}
        self._latest: dict[tuple[str, str], _PodRun] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_address = _address_to_int(config.first_address)
        self._shim_dir = self.state_dir / "shim"
        self.error: BaseException | None = None
        #: The node's directory: its simulated GPUs (``gpus.json``) and its PodResources socket.
        self.node_dir = self.state_dir / "nodes" / config.node_name
        #: The node's GPU UUIDs by index, once started.
        self.gpu_uuids: tuple[str, ...] = ()
        self._free_gpus: list[str] = []
        #: Pods no node fits now (uid -> the message written), so a message is written once.
        self._unschedulable: dict[str, str] = {}
        self._pod_resources: Any = None
        self._socket_tmp: Path | None = None
        self.pod_resources_socket: Path | None = None

    # ----- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> ProcessKubelet:
        """Write the shim, make the node's GPUs, serve PodResources, and start watching pods in a thread."""
        self._shim_dir.mkdir(parents=True, exist_ok=True)
        (self._shim_dir / "sitecustomize.py").write_text(SHIM_SOURCE)
        self._start_node()
        self._thread = threading.Thread(target=self._main, name="etj-sandbox-kubelet", daemon=True)
        self._thread.start()
        return self

    @property
    def node_gpus_file(self) -> Path | None:
        """The node's simulated GPU state (the node agent's ``--simulated-state-dir`` holds it); None: no GPUs."""
        if not self.config.gpus:
            return None
        from etj_operator.nodeagent.gpus import SIMULATED_STATE_FILE

        return self.node_dir / SIMULATED_STATE_FILE

    def _start_node(self) -> None:
        """The node's simulated GPUs (made once; an existing state keeps its GPUs) and its PodResources server."""
        if self.config.gpus <= 0:
            return
        from etj_operator.nodeagent.gpus import SimulatedBackend

        backend = SimulatedBackend(self.node_dir, self.config.node_name, count=self.config.gpus)
        devices = sorted(backend.inventory().devices, key=lambda d: d.index)
        self.gpu_uuids = tuple(d.uuid for d in devices)
        self._free_gpus = list(self.gpu_uuids)
        log.info("node %s: %d simulated GPUs (%s)", self.config.node_name, len(devices), backend.path)
        if not self.config.pod_resources:
            return
        from etj_operator.nodeagent.podresources import PodResourcesServer

        socket_path = self.node_dir / "pod-resources" / "kubelet.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:  # e.g. a deep test directory: a short one instead
            import tempfile

            self._socket_tmp = Path(tempfile.mkdtemp(prefix="etj-pod-resources-"))
            socket_path = self._socket_tmp / "kubelet.sock"
        self._pod_resources = PodResourcesServer(socket_path).start()
        self.pod_resources_socket = socket_path

    def _stop_node(self) -> None:
        if self._pod_resources is not None:
            self._pod_resources.stop()
            self._pod_resources = None
        if self._socket_tmp is not None:
            shutil.rmtree(self._socket_tmp, ignore_errors=True)
            self._socket_tmp = None

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop watching, terminate every pod's processes (SIGTERM, grace, SIGKILL) and wait for them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        grace = self.config.max_grace_seconds if grace_seconds is None else grace_seconds
        with self._lock:
            running = [r for r in self._runs.values() if r.proc is not None and not r.finished]
        threads = [threading.Thread(target=self._terminate, args=(r, grace), daemon=True) for r in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.config.max_grace_seconds + 15)
        kill_tagged(self.state_dir, grace_seconds=1.0)  # anything that escaped its pod
        self._stop_node()

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- queries ------------------------------------------------------------------------------------

    def pod_ip(self, namespace: str, name: str) -> str | None:
        """The address given to the newest pod of that name."""
        with self._lock:
            run = self._latest.get((namespace, name))
            return run.ip if run else None

    def log_path(self, namespace: str, name: str) -> Path | None:
        """The log file of the newest pod of that name (None before it started)."""
        with self._lock:
            run = self._latest.get((namespace, name))
            return run.log_path if run else None

    def read_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """The pod's log (stdout and stderr of its trainer); for ``kubectl logs`` through the emulator."""
        path = self.log_path(namespace, name)
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    def gpu_allocations(self) -> dict[tuple[str, str], dict[str, tuple[str, ...]]]:
        """``(namespace, pod) -> {container: GPU UUIDs}`` of every pod that holds node GPUs now."""
        with self._lock:
            runs = list(self._runs.values())
        return {(r.namespace, r.name): dict(r.gpus) for r in runs if r.gpus and not r.gpus_released}

    def gpu_holders(self) -> list[PodGpus]:
        """Every container that holds node GPUs now, with its pod's UID (its processes' tag), by first GPU index."""
        with self._lock:
            runs = list(self._runs.values())
        index = {u: i for i, u in enumerate(self.gpu_uuids)}
        held = [PodGpus(r.namespace, r.name, r.uid, container, uuids)
                for r in runs if r.gpus and not r.gpus_released for container, uuids in r.gpus.items() if uuids]
        return sorted(held, key=lambda h: index.get(h.uuids[0], len(index)))

    def free_gpus(self) -> tuple[str, ...]:
        """The node GPUs no pod holds, by index."""
        with self._lock:
            free = set(self._free_gpus)
        return tuple(u for u in self.gpu_uuids if u in free)

    # ----- the loop -----------------------------------------------------------------------------------

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as e:  # the API being stopped, or a bug: keep going, log once per kind
                if not self._stop.is_set():
                    log.warning("kubelet sync failed: %r", e)
                    self.error = e
            self._stop.wait(self.config.poll_seconds)

    def sync(self) -> None:
        """One look at the pods: admit new ones, start, report, and carry terminations on (the loop's body)."""
        pods = self.api.list("pods")
        live = {p["metadata"]["uid"]: p for p in pods}
        self._release_ended()  # before admitting: a GPU whose pod is gone is free for a new one
        for listed in pods:
            meta = listed["metadata"]
            uid = meta["uid"]
            if uid in self._runs:
                continue
            if meta.get("deletionTimestamp"):
                self._remove_unstarted(listed)
                continue
            if (listed.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue  # finished before this kubelet started: nothing to run
            self._admit(listed)
        for run in list(self._runs.values()):
            pod = live.get(run.uid)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                self._terminating(run, pod)
                continue
            if run.finished or run.terminating:
                continue
            if run.proc is None:
                self._try_start(run, pod)
            elif run.proc.poll() is not None:
                self._report_exit(run)
        self._release_ended()
        self._publish_allocations(live)

    def _forget(self, run: _PodRun) -> None:
        self._release_gpus(run)
        with self._lock:
            self._runs.pop(run.uid, None)

    # ----- the node's GPUs ----------------------------------------------------------------------------

    def _gpu_requests(self, spec: Mapping[str, Any]) -> dict[str, int]:
        """``container -> GPUs`` asked: the ``nvidia.com/gpu`` limit, else the request.

        Extended resources cannot be overcommitted, so the two are equal when both are set.
        """
        asked: dict[str, int] = {}
        for container in spec.get("containers") or []:
            resources = container.get("resources") or {}
            raw = (resources.get("limits") or {}).get(GPU_RESOURCE, (resources.get("requests") or {}).get(GPU_RESOURCE))
            try:
                count = int(str(raw)) if raw is not None else 0
            except ValueError:
                count = 0
            if count > 0:
                asked[str(container.get("name") or "")] = count
        return asked

    def _fits(self, pod: Json, asked: Mapping[str, int]) -> bool:
        """Whether the node has the GPUs the pod asks; if not, say so in the pod's status (once)."""
        total = sum(asked.values())
        with self._lock:
            free = len(self._free_gpus)
        meta = pod["metadata"]
        uid = meta["uid"]
        if total <= free:
            self._unschedulable.pop(uid, None)
            return True
        message = (f"0/1 nodes are available: 1 Insufficient {GPU_RESOURCE} (the sandbox node"
                   f" {self.config.node_name} has {len(self.gpu_uuids)} simulated GPUs, {free} free; the pod asks"
                   f" {total})")
        if self._unschedulable.get(uid) != message:
            self._unschedulable[uid] = message
            log.info("pod %s/%s: %s", meta.get("namespace"), meta["name"], message)
            status = {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                 "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}
            try:
                self.api.patch_status("pods", meta.get("namespace") or "default", meta["name"], status)
            except Exception as e:  # deleted meanwhile: the next sync forgets it
                log.debug("pod %s: unschedulable status not written: %r", meta["name"], e)
        return False

    def _reserve_gpus(self, asked: Mapping[str, int]) -> dict[str, tuple[str, ...]]:
        """Take the asked GPUs, lowest index first (the caller checked they are free)."""
        given: dict[str, tuple[str, ...]] = {}
        with self._lock:
            for container, count in asked.items():
                given[container], self._free_gpus = tuple(self._free_gpus[:count]), self._free_gpus[count:]
        return given

    def _release_gpus(self, run: _PodRun) -> None:
        """Give the run's GPUs back (once)."""
        if not run.gpus or run.gpus_released:
            return
        run.gpus_released = True
        with self._lock:
            held = {u for uuids in run.gpus.values() for u in uuids}
            free = set(self._free_gpus) | held
            self._free_gpus = [u for u in self.gpu_uuids if u in free]
        log.info("pod %s/%s: GPUs freed (%s)", run.namespace, run.name, ", ".join(sorted(held)))

    def _release_ended(self) -> None:
        """Free the GPUs of runs that ended once their processes are gone (a leftover may still hold a GPU)."""
        for run in list(self._runs.values()):
            ended = run.gpus and not run.gpus_released and run.finished
            if ended and (run.proc is None or not tagged_processes(self.state_dir, run.tag)):
                self._release_gpus(run)

    def _publish_allocations(self, live: Mapping[str, Json]) -> None:
        """What the PodResources API answers now: each container's GPUs, for every pod that holds some."""
        for uid in [u for u in self._unschedulable if u not in live]:
            del self._unschedulable[uid]
        if self._pod_resources is None:
            return
        from etj_operator.nodeagent.records import ContainerAllocation

        table = [ContainerAllocation(r.namespace, r.name, container, GPU_RESOURCE, uuids)
                 for r in list(self._runs.values()) if r.gpus and not r.gpus_released
                 for container, uuids in r.gpus.items()]
        if tuple(table) != self._pod_resources.allocations():
            self._pod_resources.set_allocations(table)

    # ----- termination --------------------------------------------------------------------------------

    def _grace(self, run: _PodRun, pod: Json | None) -> float:
        """The pod's grace period now: its deletionGracePeriodSeconds (else its spec's), capped."""
        if pod is None:
            return min(run.grace_seconds, FORCED_GRACE_SECONDS)
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        period = meta.get("deletionGracePeriodSeconds")
        if period is None:
            period = spec.get("terminationGracePeriodSeconds", run.grace_seconds)
        return min(max(float(period), 0.0), self.config.max_grace_seconds)

    def _terminating(self, run: _PodRun, pod: Json | None) -> None:
        """Carry a deleted pod's termination one step: SIGTERM, SIGKILL at the deadline, report, remove."""
        run.gone = pod is None
        now = self.clock()
        proc = run.proc
        alive = proc is not None and proc.poll() is None
        if not run.terminating:
            run.terminating = True  # from now on no name resolves to this run
            run.terminating_since = now
            run.kill_at = now + self._grace(run, pod)
            if proc is not None and alive:
                log.info("pod %s/%s: terminating (grace %.0f s)", run.namespace, run.name, run.kill_at - now)
                _signal_all(tagged_processes(self.state_dir, run.tag) or [proc.pid], signal.SIGTERM)
        else:
            # a later DELETE may have shortened the grace period (never lengthened)
            run.kill_at = min(run.kill_at, run.terminating_since + self._grace(run, pod))
        if proc is not None and alive:
            if now >= run.kill_at and not run.killed:
                log.warning("pod %s/%s: still running at the end of its grace period: SIGKILL", run.namespace,
                            run.name)
                _signal_all(tagged_processes(self.state_dir, run.tag) or [proc.pid], signal.SIGKILL)
                run.killed = True
            return  # stopping: look again on the next sync
        if run.proc is not None and not run.finished:  # exited during its termination
            self._report_exit(run)
        if pod is None:
            self._forget(run)
        elif not run.removed:  # once: a pod its finalizers still hold stays until they go
            run.removed = self._remove_pod(run.namespace, run.name, run.uid)

    def _remove_unstarted(self, pod: Json) -> None:
        """A bound pod deleted before this kubelet ran anything of it: nothing to stop, so it goes at once.

        The sandbox's kubelet stands for every node, so a pod bound elsewhere (``nodeName`` in its
        template) is its to remove too; an unbound pod never waits for a kubelet.
        """
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if spec.get("nodeName"):
            self._remove_pod(meta.get("namespace") or "default", meta["name"], meta["uid"])

    def _remove_pod(self, namespace: str, name: str, uid: str) -> bool:
        """The pod's containers have stopped: delete it for good (grace 0, only this UID); False if that failed."""
        try:
            self.api.delete_pod(namespace, name, grace_period_seconds=0, uid=uid)
        except Exception as e:  # the API is going away, or a fault: the next sync tries again
            log.debug("pod %s/%s: not removed: %r", namespace, name, e)
            return False
        return True

    # ----- admitting and starting a pod ----------------------------------------------------------------

    def _admit(self, pod: Json) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        namespace, name, uid = meta.get("namespace") or "default", meta["name"], meta["uid"]
        asked = self._gpu_requests(spec)
        if asked and not self._fits(pod, asked):
            return  # Pending, unbound: looked at again on every sync
        pod_dir = self.state_dir / "pods" / namespace / name / uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        container = _main_container(spec)
        remap = set(self.config.remapped_port_names)
        ports: dict[int, int] = {}
        for port in (container or {}).get("ports") or []:
            if port.get("name") in remap and isinstance(port.get("containerPort"), int):
                ports[port["containerPort"]] = _free_port()
        try:
            address, problem = self._allocate_address(container), ""
        except RuntimeError as e:
            address, problem = "", str(e)
        if not spec.get("nodeName"):
            try:  # as the scheduler's binding does; from now on the API deletes the pod gracefully
                self.api.bind_pod(namespace, name, self.config.node_name)
            except Exception as e:  # deleted meanwhile, or bound by someone else: the next sync sees which
                log.debug("pod %s/%s: not bound: %r", namespace, name, e)
                return
        grace = min(max(float(spec.get("terminationGracePeriodSeconds", 30)), 0.0), self.config.max_grace_seconds)
        run = _PodRun(namespace=namespace, name=name, uid=uid, hostname=spec.get("hostname") or name,
                      subdomain=spec.get("subdomain") or "", ip=address, pod_dir=pod_dir,
                      ports=ports, seen_at=self.clock(), grace_seconds=grace, gpus=self._reserve_gpus(asked))
        with self._lock:
            self._runs[uid] = run
            self._latest[(namespace, name)] = run
        if problem:
            self._fail(run, 128, "AddressUnavailable", problem)
        else:
            gpus = "; GPUs " + ", ".join(u for uuids in run.gpus.values() for u in uuids) if run.gpus else ""
            log.info("pod %s/%s: address %s%s", namespace, name, run.ip, gpus)

    def _allocate_address(self, container: Json | None) -> str:
        """The next loopback address where none of the container's ports is taken (e.g. by another sandbox)."""
        remapped = set(self.config.remapped_port_names)
        declared = (container or {}).get("ports") or []
        ports = [p["containerPort"] for p in declared
                 if isinstance(p.get("containerPort"), int) and p.get("name") not in remapped]
        taken = {r.ip for r in self._runs.values()}
        for _ in range(4096):
            candidate = _int_to_address(self._next_address)
            self._next_address += 1
            if (self._next_address & 0xFF) in (0, 255):
                self._next_address += 2
            if candidate not in taken and all(_can_bind(candidate, p) for p in ports):
                return candidate
        raise RuntimeError(f"no loopback address has the container's ports {ports} free (does a process listen"
                           " on 0.0.0.0 at one of them?)")

    def _resolve_host(self, host: str, namespace: str, *, strict: bool) -> _PodRun | None:
        """The pod a headless-service name points at; None when ``host`` is no such name.

        ``<host>.<sub>.<ns>.svc[.cluster.local]`` is always a service name (``_Unresolved`` while its pod has
        no address, unless not ``strict``); the short ``<host>.<sub>`` only when a pod of the namespace has
        that subdomain (so that values such as ``0.5`` are left alone).
        """
        match = _SVC_NAME.match(host)
        if match is None:
            return None
        ns = match.group("ns") or namespace
        runs = list(self._runs.values())
        if match.group("ns") is None and not any(r.namespace == ns and r.subdomain == match.group("sub") for r in runs):
            return None
        # Never a terminating or finished run: a new worker must not find a dying master (on a real cluster
        # the operator waits until the old gang is gone; here the name waits for a live pod too).
        named = [r for r in runs if r.namespace == ns and r.hostname == match.group("host")
                 and r.subdomain == match.group("sub") and not (r.terminating or r.finished or r.gone)]
        if named:
            return max(named, key=lambda r: r.seen_at)
        if strict:
            raise _Unresolved(host)
        return None

    def _rewrite_endpoint(self, value: str, namespace: str, *, strict: bool) -> tuple[str, _PodRun | None]:
        host, sep, port = value.rpartition(":") if ":" in value else (value, "", "")
        target = self._resolve_host(host, namespace, strict=strict)
        if target is None:
            return value, None
        if sep and port.isdigit():
            return f"{target.ip}:{target.ports.get(int(port), int(port))}", target
        return target.ip, target

    def pod_environment(self, run: _PodRun, pod: Json, container: Json, *, strict: bool = True) -> dict[str, str]:
        """The process environment of a pod's container, with the sandbox's rewrites (see the module doc).

        Raises ``_Unresolved`` when ``strict`` and a service name in it points at a pod without an address.
        """
        cfg = self.config
        env: dict[str, str] = {
            "PATH": f"{cfg.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(run.pod_dir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": run.hostname,
            "POD_NAME": run.name,
            "KUBECONFIG": self._pod_kubeconfig(run, pod),
            "PYTHONPATH": str(self._shim_dir),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo",
            "ETJ_SIMULATED_SLEEP": "1",
            "ETJ_SIMULATED_GPU_STATE_FILE": str(run.pod_dir / "simulated-gpu.json"),
        }
        env.update(cfg.env_defaults)
        mounts = self._mounts(run, pod, container)
        resolved: dict[str, _PodRun] = {}
        for var in container.get("env") or []:
            name = var.get("name")
            if not name:
                continue
            if "value" in var:
                value = expand_references(str(var.get("value") or ""), env)
            elif ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath"):
                found = _field_ref(pod, var["valueFrom"]["fieldRef"]["fieldPath"], run.ip)
                if found is None:
                    log.warning("pod %s/%s: env %s: unsupported fieldRef, left unset", run.namespace, run.name, name)
                    continue
                value = found
            else:
                log.warning("pod %s/%s: env %s: only value and fieldRef are supported here, left unset",
                            run.namespace, run.name, name)
                continue
            value, target = self._rewrite_endpoint(value, run.namespace, strict=strict)
            if target is not None:
                resolved[name] = target
            env[name] = _rewrite_paths(value, mounts)
        for port_var, addr_var in PORT_FOR_ADDRESS.items():
            target = resolved.get(addr_var)
            if target is not None and env.get(port_var, "").isdigit():
                env[port_var] = str(target.ports.get(int(env[port_var]), int(env[port_var])))
        devices = run.gpus.get(str(container.get("name") or ""), ())
        if devices and self.node_gpus_file is not None:  # the device plugin's env, which the pod cannot override
            env[ENV_NVIDIA_VISIBLE_DEVICES] = ",".join(devices)
            env[ENV_SIMULATED_NODE_GPUS] = str(self.node_gpus_file)
        env.update({
            contract.ENV_ETJ_GPU_BACKEND: "simulated",  # there is no real GPU in the sandbox
            ENV_STATE_TAG: str(self.state_dir),
            ENV_POD_TAG: run.tag,
            ENV_POD_IP: run.ip,
            ENV_POD_HOSTNAME: run.hostname,
        })
        return env

    def _pod_kubeconfig(self, run: _PodRun, pod: Json) -> str:
        """The pod's credentials: a kubeconfig with its ServiceAccount's token (see ``KubeletConfig.pod_token``)."""
        cfg = self.config
        if cfg.pod_token is None:
            return str(Path(cfg.kubeconfig).resolve())
        from etj_operator.sandbox.identities import pod_kubeconfig

        return str(pod_kubeconfig(cfg.api_url, self._pod_token(run, pod), run.namespace,
                                  run.pod_dir / "kubeconfig").resolve())

    def _pod_token(self, run: _PodRun, pod: Json) -> str | None:
        """A token of the pod's ServiceAccount (issued once per run), or None: no automount, or no such account."""
        if run.token is not None or self.config.pod_token is None:
            return run.token
        spec = pod.get("spec") or {}
        account = str(spec.get("serviceAccountName") or "default")
        if spec.get("automountServiceAccountToken") is False:
            return None
        try:
            run.token = self.config.pod_token(run.namespace, account)
        except Exception as e:  # the ServiceAccount does not exist: the pod acts anonymously
            log.warning("pod %s/%s: no token for ServiceAccount %s: %s", run.namespace, run.name, account, e)
        return run.token

    def _projected(self, run: _PodRun, pod: Json, volume: Json, host: Path) -> None:
        """Fill a projected volume as the kubelet does: the ServiceAccount token and the namespace.

        The sandbox serves plain HTTP, so there is no cluster CA: a ``kube-root-ca.crt`` source is left out.
        """
        host.mkdir(parents=True, exist_ok=True)
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                token = self._pod_token(run, pod)
                if token:
                    path = host / str((source["serviceAccountToken"] or {}).get("path") or "token")
                    path.write_text(token)
                    path.chmod(0o600)
            for item in (source.get("downwardAPI") or {}).get("items") or []:
                if (item.get("fieldRef") or {}).get("fieldPath") == "metadata.namespace" and item.get("path"):
                    (host / str(item["path"])).write_text(run.namespace)

    def _config_map(self, run: _PodRun, volume: Json, host: Path) -> None:
        """Write a configMap volume's files (each key, or the ``items`` chosen); raise if the ConfigMap is missing.

        ``binaryData`` values are base64, as the API stores them. Files get ``defaultMode`` (or an item's
        ``mode``), 0644 by default, as the kubelet's atomic writer does (without its ``..data`` symlinks).
        """
        import base64

        source = volume.get("configMap") or {}
        name = str(source.get("name") or "")
        found = [m for m in self.api.list("configmaps", namespace=run.namespace)
                 if (m.get("metadata") or {}).get("name") == name]
        host.mkdir(parents=True, exist_ok=True)
        if not found:
            if source.get("optional"):
                return
            raise _MissingConfigMap(f'configmap "{name}" not found')
        files: dict[str, bytes] = {k: str(v).encode() for k, v in (found[0].get("data") or {}).items()}
        files.update({k: base64.b64decode(str(v)) for k, v in (found[0].get("binaryData") or {}).items()})
        default_mode = int(source.get("defaultMode", 0o644))
        items = source.get("items")
        chosen = ([(str(i["key"]), str(i.get("path") or i["key"]), int(i.get("mode", default_mode)))
                   for i in items if i.get("key") in files] if items
                  else [(key, key, default_mode) for key in files])
        for key, relative, mode in chosen:
            path = (host / relative).resolve()
            if not path.is_relative_to(host.resolve()):  # an item path that climbs out of the volume
                log.warning("pod %s/%s: configMap item path %r leaves its volume: skipped", run.namespace,
                            run.name, relative)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[key])
            path.chmod(mode & 0o777)

    def _volumes_ready(self, run: _PodRun, pod: Json) -> bool:
        """Whether every volume the pod mounts can be set up (else the pod stays Pending, said once)."""
        container = _main_container(pod.get("spec") or {}) or {}
        try:
            self._mounts(run, pod, container)
        except _MountFailed as e:
            if run.waiting_for != str(e):
                run.waiting_for = str(e)
                log.warning("pod %s/%s: MountVolume.SetUp failed: %s (the pod stays Pending until it can be)",
                            run.namespace, run.name, e)
            return False
        return True

    def _claim(self, run: _PodRun, volume: Json) -> Path:
        """A persistentVolumeClaim's directory: one per claim object (its UID), so a re-created claim is empty."""
        claim = str((volume["persistentVolumeClaim"] or {}).get("claimName") or volume["name"])
        found = [c for c in self.api.list("persistentvolumeclaims", namespace=run.namespace)
                 if (c.get("metadata") or {}).get("name") == claim]
        if not found:
            raise _MountFailed(f'persistentvolumeclaim "{claim}" not found')
        uid = str((found[0].get("metadata") or {}).get("uid") or "")
        host = self.state_dir / "volumes" / run.namespace / f"pvc-{claim}-{uid[:8]}"
        host.mkdir(parents=True, exist_ok=True)
        return host

    @staticmethod
    def _host_path(source: Json) -> Path:
        """A hostPath volume as a kubelet sets it up on its node (this machine): the path, checked by its type."""
        path, kind = Path(str(source.get("path") or "")), str(source.get("type") or "")
        if not path.is_absolute():
            raise _MountFailed(f"hostPath {str(path)!r} is not an absolute path")
        checks = {"": None, "Directory": Path.is_dir, "DirectoryOrCreate": Path.is_dir, "File": Path.is_file,
                  "FileOrCreate": Path.is_file, "Socket": Path.is_socket, "CharDevice": Path.is_char_device,
                  "BlockDevice": Path.is_block_device}
        if kind not in checks:
            raise _MountFailed(f"hostPath {path}: unknown type {kind!r}")
        try:
            if not path.exists() and kind in ("", "DirectoryOrCreate"):  # no type: the runtime makes a directory
                path.mkdir(mode=0o755, parents=True)
            elif not path.exists() and kind == "FileOrCreate":
                path.touch(mode=0o644)  # its directory must exist, as on a node
        except OSError as e:
            raise _MountFailed(f"hostPath {path}: {e.strerror}") from e
        check = checks[kind]
        if check is not None and not check(path):
            raise _MountFailed(f"hostPath type check failed: {path} is not a {kind.removesuffix('OrCreate')}")
        return path

    def _mounts(self, run: _PodRun, pod: Json, container: Json) -> list[tuple[str, Path]]:
        volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name"))
            path = mount.get("mountPath")
            if volume is None or not path:
                continue
            own = run.pod_dir / "volumes" / str(volume["name"])
            if "emptyDir" in volume:
                host = own
                host.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                host = self._claim(run, volume)
            elif "projected" in volume:
                host = own
                self._projected(run, pod, volume, host)
            elif "configMap" in volume:
                host = own
                self._config_map(run, volume, host)
            elif "hostPath" in volume:
                host = self._host_path(volume["hostPath"] or {})
            else:
                log.warning("pod %s/%s: volume %s: this type is not mounted in the sandbox",
                            run.namespace, run.name, volume.get("name"))
                continue
            sub = str(mount.get("subPath") or "")
            if sub:
                if Path(sub).is_absolute() or ".." in Path(sub).parts:
                    raise _MountFailed(f"subPath {sub!r} must be a relative path without '..'")
                host = host / sub
                if not host.exists():  # a kubelet makes a missing subPath a directory
                    host.mkdir(parents=True, exist_ok=True)
            mounts.append((str(path).rstrip("/") or "/", host))
        return sorted(mounts, key=lambda m: -len(m[0]))

    def _try_start(self, run: _PodRun, pod: Json) -> None:
        container = _main_container(pod.get("spec") or {})
        if container is None:
            self._fail(run, 128, "StartError", "the pod has no containers")
            return
        if not self._volumes_ready(run, pod):
            return  # looked at again on the next sync
        try:
            env = self.pod_environment(run, pod, container)
        except _Unresolved as e:
            if self.clock() - run.seen_at < self.config.resolve_timeout_seconds:
                return  # its peers have no address yet; look again on the next sync
            log.warning("pod %s/%s: %s has no address; starting anyway", run.namespace, run.name, e)
            env = self.pod_environment(run, pod, container, strict=False)
        words = (container.get("command") or []) + (container.get("args") or [])
        if not container.get("command"):
            self._fail(run, 128, "StartError", "the sandbox runs no images: the container needs a command")
            return
        mounts = self._mounts(run, pod, container)
        argv = [_rewrite_argument(expand_references(str(a), env), mounts) for a in words]
        workdir = Path(_rewrite_paths(container["workingDir"], mounts)) if container.get("workingDir") else None
        cwd = workdir if workdir is not None and workdir.is_dir() else run.pod_dir / "work"
        cwd.mkdir(parents=True, exist_ok=True)
        executable = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
        if executable is None:
            self._fail(run, 127, "StartError", f"executable file not found in $PATH: {argv[0]}")
            return
        run.log_path = run.pod_dir / f"{container.get('name', 'trainer')}.log"
        restart = (pod.get("spec") or {}).get("restartPolicy", "Always")
        with run.log_path.open("ab") as out:
            out.write(f"# etj sandbox: {run.namespace}/{run.name} at {run.ip} (restartPolicy {restart}: the sandbox"
                      f" restarts nothing); cwd {cwd}\n".encode())
            out.flush()
            try:
                run.proc = subprocess.Popen([executable, *argv[1:]], env=env, cwd=cwd, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
            except OSError as e:
                self._fail(run, 128, "StartError", f"cannot start {argv[0]}: {e}")
                return
        log.info("pod %s/%s: started pid %d", run.namespace, run.name, run.proc.pid)
        self._set_phase(run, "Running")

    # ----- finishing --------------------------------------------------------------------------------------

    def _set_phase(self, run: _PodRun, phase: str, *, exit_code: int | None = None, reason: str | None = None) -> None:
        try:
            self.api.set_pod_phase(run.namespace, run.name, phase, exit_code=exit_code, pod_ip=run.ip or None,
                                   reason=reason)
        except Exception as e:  # the pod was deleted meanwhile (404) or the API is going away
            log.debug("pod %s/%s: status %s not written: %r", run.namespace, run.name, phase, e)

    def _fail(self, run: _PodRun, code: int, reason: str, message: str) -> None:
        log.warning("pod %s/%s: %s: %s", run.namespace, run.name, reason, message)
        path = run.pod_dir / f"{contract.TRAINER_CONTAINER}.log"
        with path.open("a") as out:
            out.write(f"# etj sandbox: {reason}: {message}\n")
        run.log_path = path
        run.finished = True
        self._set_phase(run, "Failed", exit_code=code, reason=reason)

    def _report_exit(self, run: _PodRun) -> None:
        assert run.proc is not None
        rc = run.proc.returncode
        code = 128 - rc if rc < 0 else rc
        run.finished = True
        leftovers = tagged_processes(self.state_dir, run.tag)
        if leftovers:  # a container's processes end with its main process
            _signal_all(leftovers, signal.SIGKILL)
        log.info("pod %s/%s: exited with %d", run.namespace, run.name, code)
        self._set_phase(run, "Succeeded" if code == 0 else "Failed", exit_code=code)

    def _terminate(self, run: _PodRun, grace: float) -> None:
        """SIGTERM the pod's processes, SIGKILL after ``grace`` seconds; report the end if the pod still exists."""
        proc = run.proc
        if proc is None:
            return
        log.info("pod %s/%s: terminating (grace %.0f s)", run.namespace, run.name, grace)
        _signal_all(tagged_processes(self.state_dir, run.tag) or [proc.pid], signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("pod %s/%s: still running after %.0f s: SIGKILL", run.namespace, run.name, grace)
        _signal_all(tagged_processes(self.state_dir, run.tag), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        run.finished = True
        if not run.gone and not self._stop.is_set():
            rc = proc.returncode if proc.returncode is not None else -9
            code = 128 - rc if rc < 0 else rc
            self._set_phase(run, "Succeeded" if code == 0 else "Failed", exit_code=code)

    def running_pods(self) -> list[tuple[str, str, str, int]]:
        """``(namespace, name, ip, pid)`` of every pod whose process runs now."""
        with self._lock:
            runs = list(self._runs.values())
        return [(r.namespace, r.name, r.ip, r.proc.pid) for r in runs
                if r.proc is not None and r.proc.poll() is None]


# ----- small helpers --------------------------------------------------------------------------------------


def _main_container(spec: Mapping[str, Any]) -> Json | None:
    containers = list(spec.get("containers") or [])
    for c in containers:
        if c.get("name") == contract.TRAINER_CONTAINER:
            return dict(c)
    return dict(containers[0]) if containers else None


def _rewrite_paths(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
    for mount_path, host in mounts:
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(host) + value[len(mount_path):]
    return value


def _rewrite_argument(word: str, mounts: Sequence[tuple[str, Path]]) -> str:
    """A command word under a mount path, whole (``/workspace/train.py``) or as ``--flag=/workspace/x``."""
    rewritten = _rewrite_paths(word, mounts)
    if rewritten != word:
        return rewritten
    flag, equals, value = word.partition("=")
    if equals and flag.startswith("-") and value.startswith("/"):
        return f"{flag}={_rewrite_paths(value, mounts)}"
    return word


def _address_to_int(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big")


def _int_to_address(number: int) -> str:
    address = socket.inet_ntoa(number.to_bytes(4, "big"))
    if not address.startswith("127."):
        raise RuntimeError("the sandbox ran out of loopback addresses")
    return address


def _can_bind(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def iter_pod_logs(state_dir: Path, name: str, namespace: str | None = None) -> Iterator[Path]:
    """Log files of pods called ``name`` under ``state_dir``, newest first (for ``etj sandbox logs``)."""
    pattern = f"pods/{namespace or '*'}/{name}/*/*.log"
    yield from sorted(Path(state_dir).glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
