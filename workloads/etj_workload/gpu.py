"""GPUs behind one interface: NVML for real cards, a labelled simulator for CPU machines.

Error hierarchy (every NVML failure is mapped to one of these, with the NVML error chained)::

    GpuError
    ├── GpuLibraryError        the NVML library is missing or not initialised
    ├── GpuNotFoundError       no such device index / UUID
    ├── GpuPermissionError     setting limits needs root or CAP_SYS_ADMIN
    ├── GpuNotSupportedError   the device does not support the query or setting
    ├── GpuInvalidArgumentError a value outside the device's constraints
    ├── GpuLostError           the GPU fell off the bus or needs a reset
    └── GpuUnknownError        anything else

Units are in the names: ``_mw`` milliwatts and ``_mj`` millijoules (NVML's own units), ``_watts`` and
``_joules`` where converted.
"""

from __future__ import annotations

import abc
import importlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from etj_workload import power_model
from etj_workload.power_model import SimulatedPowerModel

__all__ = [
    "ENV_NVIDIA_VISIBLE_DEVICES",
    "ENV_SIMULATED_NODE_GPUS",
    "Gpu",
    "GpuError",
    "GpuInvalidArgumentError",
    "GpuLibraryError",
    "GpuLostError",
    "GpuNotFoundError",
    "GpuNotSupportedError",
    "GpuPermissionError",
    "GpuReading",
    "GpuUnknownError",
    "NvmlGpu",
    "SimulatedGpu",
    "limits_restored",
    "open_gpu",
]

log = logging.getLogger(__name__)

GpuSource = Literal["nvml", "simulated"]


class GpuError(RuntimeError):
    """Base of every GPU error."""


class GpuLibraryError(GpuError):
    """NVML is not installed, not loadable, or not initialised."""


class GpuNotFoundError(GpuError):
    """The requested device does not exist."""


class GpuPermissionError(GpuError):
    """The operation needs privileges (root or CAP_SYS_ADMIN in the container)."""


class GpuNotSupportedError(GpuError):
    """The device does not support this query or setting."""


class GpuInvalidArgumentError(GpuError):
    """A value outside what the device accepts (e.g. a limit outside its constraints)."""


class GpuLostError(GpuError):
    """The GPU is lost or needs a reset."""


class GpuUnknownError(GpuError):
    """An NVML error with no more specific mapping."""


@dataclass(frozen=True)
class GpuReading:
    """One snapshot of a GPU, as the metrics endpoint and the status report it."""

    index: int
    uuid: str
    name: str
    source: GpuSource
    power_mw: int
    energy_mj: int
    power_limit_mw: int

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (for collectives and tests)."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "source": self.source,
            "power_mw": self.power_mw,
            "energy_mj": self.energy_mj,
            "power_limit_mw": self.power_limit_mw,
        }


class Gpu(abc.ABC):
    """One GPU that this process drives. Implementations: :class:`NvmlGpu`, :class:`SimulatedGpu`."""

    #: "nvml" or "simulated"; reported wherever the readings go.
    source: GpuSource
    index: int

    @abc.abstractmethod
    def name(self) -> str:
        """Return the model name (e.g. "NVIDIA H100 80GB HBM3")."""

    @abc.abstractmethod
    def uuid(self) -> str:
        """Return the device UUID ("GPU-...")."""

    @abc.abstractmethod
    def power_mw(self) -> int:
        """Return the current power draw. Units: mW."""

    @abc.abstractmethod
    def energy_mj(self) -> int:
        """Return the total energy counter (monotonic since driver load or process start). Units: mJ."""

    @abc.abstractmethod
    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """Return the (min, max) settable power limit. Units: mW."""

    @abc.abstractmethod
    def default_power_limit_mw(self) -> int:
        """Return the default power limit. Units: mW."""

    @abc.abstractmethod
    def power_limit_mw(self) -> int:
        """Return the power limit in force. Units: mW."""

    @abc.abstractmethod
    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the power limit. Units: mW. Raises GpuPermissionError without privileges."""

    def restore_power_limit(self) -> None:
        """Set the default power limit back (idempotent)."""
        default_mw = self.default_power_limit_mw()
        if self.power_limit_mw() != default_mw:
            self.set_power_limit_mw(default_mw)

    def account_step(self, measured_seconds: float) -> float:
        """Tell the device a training step of ``measured_seconds`` (wall time) finished.

        Return the step's device time in seconds: real hardware returns ``measured_seconds`` unchanged;
        the simulator returns its modelled time (and accounts the step's energy).
        """
        return measured_seconds

    def reading(self) -> GpuReading:
        """Return a snapshot of the device."""
        return GpuReading(
            index=self.index,
            uuid=self.uuid(),
            name=self.name(),
            source=self.source,
            power_mw=self.power_mw(),
            energy_mj=self.energy_mj(),
            power_limit_mw=self.power_limit_mw(),
        )

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Release the device handle (the limit is not touched; call restore_power_limit first)."""


# --- NVML ------------------------------------------------------------------------------------------


def _nvml_error_class(pynvml: Any, error: Exception) -> type[GpuError]:
    value = getattr(error, "value", None)
    table: list[tuple[str, type[GpuError]]] = [
        ("NVML_ERROR_NO_PERMISSION", GpuPermissionError),
        ("NVML_ERROR_NOT_SUPPORTED", GpuNotSupportedError),
        ("NVML_ERROR_INVALID_ARGUMENT", GpuInvalidArgumentError),
        ("NVML_ERROR_NOT_FOUND", GpuNotFoundError),
        ("NVML_ERROR_GPU_IS_LOST", GpuLostError),
        ("NVML_ERROR_RESET_REQUIRED", GpuLostError),
        ("NVML_ERROR_UNINITIALIZED", GpuLibraryError),
        ("NVML_ERROR_LIBRARY_NOT_FOUND", GpuLibraryError),
        ("NVML_ERROR_DRIVER_NOT_LOADED", GpuLibraryError),
        ("NVML_ERROR_FUNCTION_NOT_FOUND", GpuLibraryError),
    ]
    for constant, cls in table:
        if value is not None and value == getattr(pynvml, constant, object()):
            return cls
    return GpuUnknownError


class NvmlGpu(Gpu):
    """A real NVIDIA GPU driven through nvidia-ml-py (``import pynvml``).

    Setting limits needs CAP_SYS_ADMIN in the container; the operator adds it when the power mode is not
    Unmanaged. ``pynvml`` is imported lazily so that importing this module needs no NVIDIA library.
    """

    source: GpuSource = "nvml"

    def __init__(self, index: int = 0, uuid: str | None = None, pynvml_module: Any | None = None) -> None:
        if pynvml_module is None:
            try:
                pynvml_module = importlib.import_module("pynvml")
            except ImportError as e:
                raise GpuLibraryError("nvidia-ml-py (pynvml) is not installed") from e
        self._nvml: Any = pynvml_module
        self.index = index
        self._call(self._nvml.nvmlInit)
        if uuid is not None:
            self._handle = self._call(self._nvml.nvmlDeviceGetHandleByUUID, uuid)
        else:
            self._handle = self._call(self._nvml.nvmlDeviceGetHandleByIndex, index)
        self._closed = False

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except self._nvml.NVMLError as e:
            cls = _nvml_error_class(self._nvml, e)
            raise cls(f"{getattr(function, '__name__', 'nvml')} on GPU {getattr(self, 'index', '?')}: {e}") from e

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def name(self) -> str:
        """Return the model name."""
        return self._text(self._call(self._nvml.nvmlDeviceGetName, self._handle))

    def uuid(self) -> str:
        """Return the device UUID."""
        return self._text(self._call(self._nvml.nvmlDeviceGetUUID, self._handle))

    def power_mw(self) -> int:
        """Return the power draw. Units: mW."""
        return int(self._call(self._nvml.nvmlDeviceGetPowerUsage, self._handle))

    def energy_mj(self) -> int:
        """Return the total energy counter since driver load (Volta and newer). Units: mJ."""
        return int(self._call(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle))

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """Return the (min, max) settable limit. Units: mW."""
        low, high = self._call(self._nvml.nvmlDeviceGetPowerManagementLimitConstraints, self._handle)
        return int(low), int(high)

    def default_power_limit_mw(self) -> int:
        """Return the default limit. Units: mW."""
        return int(self._call(self._nvml.nvmlDeviceGetPowerManagementDefaultLimit, self._handle))

    def power_limit_mw(self) -> int:
        """Return the limit in force. Units: mW."""
        return int(self._call(self._nvml.nvmlDeviceGetPowerManagementLimit, self._handle))

    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the limit. Units: mW."""
        low, high = self.power_limit_constraints_mw()
        if not low <= limit_mw <= high:
            raise GpuInvalidArgumentError(
                f"power limit {limit_mw} mW outside GPU {self.index}'s constraints [{low}, {high}] mW"
            )
        self._call(self._nvml.nvmlDeviceSetPowerManagementLimit, self._handle, int(limit_mw))

    def close(self) -> None:
        """Shut NVML down for this handle (NVML reference-counts nvmlInit)."""
        if not self._closed:
            self._closed = True
            self._call(self._nvml.nvmlShutdown)


# --- simulated -------------------------------------------------------------------------------------


#: Harness-local knobs of the simulated GPU that the sandbox kubelet sets (as a node's device plugin would):
#: the node's simulated GPU state, in the node agent's simulated-backend format (docs/node-agent.md).
ENV_SIMULATED_NODE_GPUS = "ETJ_SIMULATED_NODE_GPUS"
#: The GPUs the device plugin gave the container (UUIDs, comma-separated), as the NVIDIA device plugin sets it.
ENV_NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
#: How often the simulated GPU looks at its node GPU's limit at most. Units: s.
NODE_POLL_SECONDS = 0.5
_NODE_STATE_KIND = "etj-simulated-node-gpus"


class SimulatedGpu(Gpu):
    """A GPU that does not exist: the power and throughput model of :mod:`etj_workload.power_model`.

    Labelled ``simulated`` in every reading. The energy counter integrates the modelled busy power over
    the modelled time of each step (:meth:`account_step`) and the idle power over the wall time between
    steps. With ``sleep_slowdown`` the step's modelled slowdown under the cap is slept for real, so
    throughput visibly falls under a cap (the sandbox shows the trade-off that way). With
    ``fixed_step_seconds`` the full-clock step time is that constant instead of the measured one, which
    makes runs deterministic. With ``state_file`` the limit in force is mirrored to a JSON file
    (atomically), so another process (tests, the sandbox) can see it.

    **Node hardware.** With ``device_uuid`` and ``node_state_file`` (the sandbox kubelet gives a pod
    ``NVIDIA_VISIBLE_DEVICES`` and ``ETJ_SIMULATED_NODE_GPUS``, see :func:`open_gpu`) this simulator is a GPU
    of a simulated node: it takes that GPU's UUID, and the limit in force is ``min(own, node)``, where
    ``own`` is what :meth:`set_power_limit_mw` set in this process and ``node`` the node GPU's limit in the
    node's state file, which only the node agent writes (``--backend simulated``). So a cap the agent applies
    binds the pod, and the pod's own limit still works without an agent (the node GPU then stays at its
    default). The file is looked at once per ``node_poll_seconds`` at most (a ``stat``, and a read only when
    it changed); an unreadable file, or one without this GPU, counts as no node limit (logged once). The
    pod never writes the node's file: like a pod without ``CAP_SYS_ADMIN``, it cannot cap node hardware.

    With ``settle_steps`` a new limit takes that many steps to take effect (the steps run at the limit before
    it): a card whose power controller settles slowly, for the profiler's tests and benches.
    """

    source: GpuSource = "simulated"

    def __init__(
        self,
        index: int = 0,
        model: SimulatedPowerModel = power_model.H100_SXM,
        *,
        sleep_slowdown: bool = False,
        fixed_step_seconds: float | None = None,
        state_file: str | None = None,
        device_uuid: str | None = None,
        node_state_file: str | None = None,
        node_poll_seconds: float = NODE_POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        settle_steps: int = 0,
    ) -> None:
        self.index = index
        self.settle_steps = settle_steps
        self._settling_from_mw: int | None = None
        self._settling_left = 0
        self.model = model
        self._operating: tuple[power_model.SimulatedPowerModel, float, float, float] | None = None
        self.sleep_slowdown = sleep_slowdown
        self.fixed_step_seconds = fixed_step_seconds
        self._state_file = state_file
        self._device_uuid = device_uuid or None
        self._node_state_file = node_state_file if device_uuid else None
        self.node_poll_seconds = node_poll_seconds
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._node_lock = threading.Lock()
        self._limit_mw = int(model.default_limit_watts * 1000)
        self._node_limit_mw: int | None = None
        self._node_checked_at: float | None = None
        self._node_key: tuple[int, int, int] | None = None
        self._node_problem = ""
        self._mirrored_mw: int | None = None
        self._energy_mj = 0.0
        self._reported_mj = 0
        self._last_mark_seconds = clock()
        self._busy_until_seconds = -1.0
        self._effective_mw()  # reads the node GPU, writes the mirror

    def name(self) -> str:
        """Return the model's name (it says it is a model)."""
        return self.model.name

    def uuid(self) -> str:
        """Return the node GPU's UUID, or a stable fake one naming the simulator."""
        return self._device_uuid or f"GPU-simulated-{self.index:08d}"

    # --- the node GPU ------------------------------------------------------------------------------
    def _note_node_problem(self, problem: str) -> None:
        if problem and problem != self._node_problem:
            log.warning("simulated GPU %s: %s; only this process's own limit applies", self.uuid(), problem)
        elif not problem and self._node_problem:
            log.info("simulated GPU %s: the node's GPU state is readable again", self.uuid())
        self._node_problem = problem

    def _read_node_limit_mw(self, path: str) -> int | None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            self._note_node_problem(f"cannot read the node's GPU state {path}: {e}")
            return None
        if not isinstance(data, dict) or data.get("kind") != _NODE_STATE_KIND or not isinstance(data.get("gpus"), list):
            self._note_node_problem(f"{path} is not a simulated node's GPU state")
            return None
        for gpu in data["gpus"]:
            if isinstance(gpu, dict) and gpu.get("uuid") == self._device_uuid:
                try:
                    limit_mw = int(gpu["limitMilliwatts"])
                except (KeyError, TypeError, ValueError):
                    self._note_node_problem(f"{path}: GPU {self._device_uuid} has no readable limit")
                    return None
                self._note_node_problem("")
                return limit_mw
        self._note_node_problem(f"{path} lists no GPU {self._device_uuid}")
        return None

    def _refresh_node(self) -> None:
        """Look at the node GPU's limit if ``node_poll_seconds`` have passed (a stat; a read when it changed)."""
        path = self._node_state_file
        if path is None:
            return
        with self._node_lock:
            now = self._clock()
            if self._node_checked_at is not None and now - self._node_checked_at < self.node_poll_seconds:
                return
            self._node_checked_at = now
            try:
                st = os.stat(path)
            except OSError as e:
                self._node_key = None
                self._node_limit_mw = None
                self._note_node_problem(f"cannot read the node's GPU state {path}: {e}")
                return
            key = (st.st_ino, st.st_mtime_ns, st.st_size)  # the agent replaces the file: a new inode
            if key != self._node_key:
                self._node_key = key
                self._node_limit_mw = self._read_node_limit_mw(path)

    def node_power_limit_mw(self) -> int | None:
        """Return the node GPU's limit as last read (None: no node GPU, or unreadable). Units: mW."""
        self._refresh_node()
        return self._node_limit_mw

    def own_power_limit_mw(self) -> int:
        """Return the limit this process set (what :meth:`set_power_limit_mw` set). Units: mW."""
        return self._limit_mw

    def _effective_mw(self) -> int:
        if self._node_state_file is None:  # no node GPU: the own limit (no file to look at)
            effective = self._limit_mw
            if effective != self._mirrored_mw:
                self._write_state(effective)
            return effective
        node_mw = self.node_power_limit_mw()
        low, high = self.power_limit_constraints_mw()
        effective = self._limit_mw if node_mw is None else min(self._limit_mw, max(low, min(high, node_mw)))
        if effective != self._mirrored_mw:
            self._write_state(effective)
        return effective

    def _limit_watts(self) -> float:
        return self._effective_mw() / 1000.0

    # --- readings -----------------------------------------------------------------------------------
    def power_mw(self) -> int:
        """Return the modelled busy power shortly after a step, else the idle power. Units: mW."""
        limit_watts = self._limit_watts()
        with self._lock:
            busy = self._clock() <= self._busy_until_seconds
            watts = power_model.busy_power_watts(self.model, limit_watts) if busy else self.model.idle_watts
        return int(watts * 1000)

    def energy_mj(self) -> int:
        """Return the modelled energy since this simulator started. Units: mJ."""
        with self._lock:
            idle_seconds = max(0.0, self._clock() - self._last_mark_seconds)
            value = int(self._energy_mj + self.model.idle_watts * idle_seconds * 1000)
            self._reported_mj = max(self._reported_mj, value)  # a counter never goes back
            return self._reported_mj

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """Return the model's (min, max) limit. Units: mW."""
        return int(self.model.min_limit_watts * 1000), int(self.model.max_limit_watts * 1000)

    def default_power_limit_mw(self) -> int:
        """Return the model's default limit. Units: mW."""
        return int(self.model.default_limit_watts * 1000)

    def power_limit_mw(self) -> int:
        """Return the limit in force: ``min(own, node)`` on a node GPU, else the own limit. Units: mW."""
        return self._effective_mw()

    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set this process's own limit (validated like NVML does). Units: mW."""
        low, high = self.power_limit_constraints_mw()
        if not low <= limit_mw <= high:
            raise GpuInvalidArgumentError(
                f"power limit {limit_mw} mW outside the simulated GPU's constraints [{low}, {high}] mW"
            )
        if self.settle_steps > 0 and int(limit_mw) != self._limit_mw:
            self._settling_from_mw = self._effective_mw() if self._settling_left == 0 else self._settling_from_mw
            self._settling_left = self.settle_steps
        self._limit_mw = int(limit_mw)
        self._write_state(self._effective_mw())

    def restore_power_limit(self) -> None:
        """Put this process's own limit back to the default (the node GPU's limit is the agent's)."""
        if self._limit_mw != self.default_power_limit_mw():
            self.set_power_limit_mw(self.default_power_limit_mw())

    def account_step(self, measured_seconds: float) -> float:
        """Account one step's modelled time and energy; sleep the slowdown if configured."""
        full_clock_seconds = self.fixed_step_seconds if self.fixed_step_seconds is not None else measured_seconds
        limit_watts = self._limit_watts()
        if self._settling_left > 0 and self._settling_from_mw is not None:
            limit_watts = self._settling_from_mw / 1000.0  # the new limit has not taken effect yet
            self._settling_left -= 1
        time_factor, busy_watts = self._operating_point(limit_watts)
        modelled_seconds = full_clock_seconds * time_factor
        slowdown_seconds = modelled_seconds - full_clock_seconds
        if self.sleep_slowdown and slowdown_seconds > 0:
            self._sleep(slowdown_seconds)
        with self._lock:
            now = self._clock()
            wall_seconds = max(0.0, now - self._last_mark_seconds)
            # Wall time since the last mark that was not this step is idle time.
            stepped_seconds = measured_seconds + (slowdown_seconds if self.sleep_slowdown else 0.0)
            idle_seconds = max(0.0, wall_seconds - stepped_seconds)
            self._energy_mj += (self.model.idle_watts * idle_seconds + busy_watts * modelled_seconds) * 1000
            self._last_mark_seconds = now
            self._busy_until_seconds = now + max(1.0, 2 * modelled_seconds)
        return modelled_seconds

    def _operating_point(self, limit_watts: float) -> tuple[float, float]:
        """Return (step time factor, busy watts) of the model under ``limit_watts``.

        The last answer is kept: a step under the same limit as the one before is the rule, and each answer
        costs two bisections of the model.
        """
        cached = self._operating
        if cached is not None and cached[0] is self.model and cached[1] == limit_watts:
            return cached[2], cached[3]
        time_factor = power_model.step_seconds(self.model, limit_watts, 1.0)
        busy_watts = power_model.busy_power_watts(self.model, limit_watts)
        self._operating = (self.model, limit_watts, time_factor, busy_watts)
        return time_factor, busy_watts

    def _write_state(self, effective_mw: int | None = None) -> None:
        effective = self._limit_mw if effective_mw is None else effective_mw
        self._mirrored_mw = effective
        if not self._state_file:
            return
        state: dict[str, Any] = {
            "source": self.source,
            "uuid": self.uuid(),
            "powerLimitWatts": effective / 1000.0,
            "ownLimitWatts": self._limit_mw / 1000.0,
            "nodeLimitWatts": None if self._node_limit_mw is None else self._node_limit_mw / 1000.0,
            "defaultLimitWatts": self.model.default_limit_watts,
            "pid": os.getpid(),
        }
        directory = os.path.dirname(os.path.abspath(self._state_file))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpu-state-")
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self._state_file)


def _visible_simulated_devices() -> list[str]:
    """The GPU UUIDs in ``NVIDIA_VISIBLE_DEVICES`` (``all``, ``none``, ``void`` and indexes name none here)."""
    raw = os.environ.get(ENV_NVIDIA_VISIBLE_DEVICES, "")
    return [v.strip() for v in raw.split(",") if v.strip().startswith("GPU-")]


def _visible_nvml_target(local_rank: int) -> tuple[int, str | None]:
    """Map a local rank to an NVML device (index, or UUID) through CUDA_VISIBLE_DEVICES."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible or local_rank >= len(visible):
        return local_rank, None
    entry = visible[local_rank]
    if entry.isdigit():
        return int(entry), None
    return local_rank, entry  # a UUID (or MIG id); NVML resolves UUIDs


def open_gpu(
    backend: Literal["auto", "nvml", "simulated"],
    local_rank: int = 0,
    *,
    sleep_slowdown: bool = False,
    fixed_step_seconds: float | None = None,
    state_file: str | None = None,
    model: SimulatedPowerModel = power_model.H100_SXM,
    node_state_file: str | None = None,
) -> Gpu:
    """Open this rank's GPU. ``auto`` tries NVML and falls back to the simulator (and logs that it did).

    The simulator is this rank's GPU of a simulated node when ``NVIDIA_VISIBLE_DEVICES`` names GPU UUIDs
    (the ``local_rank``-th is this rank's) and the node's state file is given (``node_state_file``, else
    ``$ETJ_SIMULATED_NODE_GPUS``): see :class:`SimulatedGpu`. Otherwise it is a GPU of its own.
    """
    if backend in ("nvml", "auto"):
        index, uuid = _visible_nvml_target(local_rank)
        try:
            return NvmlGpu(index=index, uuid=uuid)
        except GpuError as e:
            if backend == "nvml":
                raise
            log.info("no NVML GPU for local rank %d (%s); using the simulated GPU", local_rank, e)
    visible = _visible_simulated_devices()
    device_uuid = visible[local_rank] if local_rank < len(visible) else None
    node_file = node_state_file or os.environ.get(ENV_SIMULATED_NODE_GPUS) or None
    if device_uuid and node_file:
        log.info("simulated GPU %s of the node (state %s): the node agent's limit binds this rank", device_uuid,
                 node_file)
    return SimulatedGpu(
        index=local_rank,
        model=model,
        sleep_slowdown=sleep_slowdown,
        fixed_step_seconds=fixed_step_seconds,
        state_file=state_file,
        device_uuid=device_uuid,
        node_state_file=node_file,
    )


@contextmanager
def limits_restored(gpu: Gpu) -> Iterator[Gpu]:
    """Restore the default power limit when the block exits, however it exits."""
    try:
        yield gpu
    finally:
        try:
            gpu.restore_power_limit()
        except GpuError as e:
            log.error("could not restore the default power limit of GPU %d: %s", gpu.index, e)
