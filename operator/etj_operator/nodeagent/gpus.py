"""The node's GPUs as the agent drives them: a :class:`GpuBackend` protocol, over NVML or simulated.

* :class:`NvmlBackend`: real NVIDIA GPUs through nvidia-ml-py (``import pynvml``, imported when the backend is
  made, so importing this module needs no NVIDIA library). Setting a limit needs root (CAP_SYS_ADMIN) on the
  node: the agent's DaemonSet has it, user pods do not need it.
* :class:`SimulatedBackend`: the sandbox's node hardware, labelled ``simulated`` wherever it reports (the
  backend's ``source``, the model name, the metrics' ``source`` label). Its state is one JSON file in the node's
  directory, written atomically under a lock, so it outlives pods and agent restarts as a real card's limit
  does: a cap left behind stays visible until something resets it.

Every failure is a :class:`GpuError` that names the GPU, the operation and the NVML error, with ``kind`` one
of :data:`etj_contract.agent.ERROR_KINDS` (the metrics' ``error`` label). Units: mW, as NVML's.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from etj_contract import agent as a
from etj_operator.nodeagent.records import GpuDevice

__all__ = [
    "H100_LIKE",
    "SIMULATED_MODEL",
    "SIMULATED_STATE_FILE",
    "GpuBackend",
    "GpuError",
    "Inventory",
    "LimitReading",
    "NvmlBackend",
    "SimulatedBackend",
    "SimulatedConstraints",
    "simulated_uuid",
]


class GpuError(Exception):
    """An operation on a GPU (or on the GPU library) failed."""

    def __init__(
        self, message: str, *, kind: str, operation: str, uuid: str = "", index: int | None = None, code: str = ""
    ) -> None:
        super().__init__(message)
        #: One of etj_contract.agent.ERROR_KINDS.
        self.kind = kind
        #: etj_contract.agent.OPERATION_DISCOVER, OPERATION_READ or OPERATION_SET (or "init").
        self.operation = operation
        self.uuid = uuid
        self.index = index
        #: The library's own name of the error (``NVML_ERROR_NO_PERMISSION``), when it has one.
        self.code = code


@dataclass(frozen=True)
class LimitReading:
    """The limits in force on a GPU. Units: mW."""

    #: The power management limit (what was set; DCGM_FI_DEV_POWER_MGMT_LIMIT).
    limit_mw: int
    #: The limit the driver enforces after every limiter (DCGM_FI_DEV_ENFORCED_POWER_LIMIT); None when unknown.
    enforced_mw: int | None = None


@dataclass(frozen=True)
class Inventory:
    """The node's GPUs, and the GPUs that could not be listed (each as its error)."""

    devices: tuple[GpuDevice, ...]
    errors: tuple[GpuError, ...] = ()


class GpuBackend(Protocol):
    """What the agent needs of the node's GPUs."""

    #: "nvml" or "simulated": the ``source`` label of every series the agent exports.
    source: str

    def inventory(self) -> Inventory:
        """List the GPUs with their UUID, index and limit constraints; raises GpuError if none can be listed."""

    def read_limit(self, device: GpuDevice) -> LimitReading:
        """The limits in force on ``device``; raises GpuError."""

    def set_limit(self, device: GpuDevice, limit_mw: int) -> None:
        """Set ``device``'s power management limit; raises GpuError."""

    def close(self) -> None:
        """Release the library (the limits stay as they are)."""


# --- NVML -----------------------------------------------------------------------------------------------------
#: NVML's error constants, by the kind the agent reports.
_NVML_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("NVML_ERROR_NO_PERMISSION", a.ERROR_NO_PERMISSION),
    ("NVML_ERROR_NOT_SUPPORTED", a.ERROR_NOT_SUPPORTED),
    ("NVML_ERROR_INVALID_ARGUMENT", a.ERROR_INVALID_ARGUMENT),
    ("NVML_ERROR_NOT_FOUND", a.ERROR_GPU_NOT_FOUND),
    ("NVML_ERROR_GPU_NOT_FOUND", a.ERROR_GPU_NOT_FOUND),
    ("NVML_ERROR_GPU_IS_LOST", a.ERROR_GPU_LOST),
    ("NVML_ERROR_RESET_REQUIRED", a.ERROR_GPU_LOST),
    ("NVML_ERROR_TIMEOUT", a.ERROR_TIMEOUT),
    ("NVML_ERROR_UNINITIALIZED", a.ERROR_LIBRARY),
    ("NVML_ERROR_LIBRARY_NOT_FOUND", a.ERROR_LIBRARY),
    ("NVML_ERROR_DRIVER_NOT_LOADED", a.ERROR_LIBRARY),
    ("NVML_ERROR_FUNCTION_NOT_FOUND", a.ERROR_LIBRARY),
    ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", a.ERROR_LIBRARY),
)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """The node's NVIDIA GPUs through NVML (nvidia-ml-py). ``pynvml_module``: a stand-in, for tests."""

    source = "nvml"

    def __init__(self, pynvml_module: Any | None = None) -> None:
        if pynvml_module is None:
            try:
                pynvml_module = importlib.import_module("pynvml")
            except ImportError as e:
                raise GpuError(
                    "nvidia-ml-py (module pynvml) is not installed", kind=a.ERROR_LIBRARY, operation="init"
                ) from e
        self._nvml: Any = pynvml_module
        self._call("init", None, None, self._nvml.nvmlInit)
        self._closed = False

    def _error_code(self, error: Exception) -> tuple[str, str]:
        value = getattr(error, "value", None)
        names = [name for name in dir(self._nvml) if name.startswith("NVML_ERROR_")]
        code = next((name for name in names if getattr(self._nvml, name) == value), "") if value is not None else ""
        kind = next((k for constant, k in _NVML_KINDS if constant == code), a.ERROR_UNKNOWN)
        return code, kind

    def _call(self, operation: str, uuid: str | None, index: int | None, function: Callable[..., Any],
              *args: Any) -> Any:
        try:
            return function(*args)
        except self._nvml.NVMLError as e:
            code, kind = self._error_code(e)
            gpu = "NVML" if uuid is None and index is None else f"GPU {'?' if index is None else index}"
            if uuid:
                gpu += f" ({uuid})"
            name = getattr(function, "__name__", "nvml")
            raise GpuError(f"{operation} on {gpu}: {name}: {code or 'NVML error'}: {e}", kind=kind,
                           operation=operation, uuid=uuid or "", index=index, code=code) from e

    def inventory(self) -> Inventory:
        """Every GPU NVML lists; one that cannot be read is an error of the inventory, not a failure of all."""
        nvml = self._nvml
        count = int(self._call(a.OPERATION_DISCOVER, None, None, nvml.nvmlDeviceGetCount))
        devices: list[GpuDevice] = []
        errors: list[GpuError] = []
        for index in range(count):
            uuid = ""
            try:
                handle = self._call(a.OPERATION_DISCOVER, None, index, nvml.nvmlDeviceGetHandleByIndex, index)
                uuid = _text(self._call(a.OPERATION_DISCOVER, None, index, nvml.nvmlDeviceGetUUID, handle))
                name = _text(self._call(a.OPERATION_DISCOVER, uuid, index, nvml.nvmlDeviceGetName, handle))
                low, high = self._call(a.OPERATION_DISCOVER, uuid, index,
                                       nvml.nvmlDeviceGetPowerManagementLimitConstraints, handle)
                default = self._call(a.OPERATION_DISCOVER, uuid, index,
                                     nvml.nvmlDeviceGetPowerManagementDefaultLimit, handle)
                try:
                    pci = _text(getattr(self._call(a.OPERATION_DISCOVER, uuid, index, nvml.nvmlDeviceGetPciInfo,
                                                   handle), "busId", ""))
                except GpuError:
                    pci = ""  # a label only
                devices.append(GpuDevice(uuid, index, name, int(low), int(high), int(default), pci))
            except GpuError as e:
                errors.append(e)
        return Inventory(tuple(devices), tuple(errors))

    def _handle(self, operation: str, device: GpuDevice) -> Any:
        return self._call(operation, device.uuid, device.index, self._nvml.nvmlDeviceGetHandleByUUID, device.uuid)

    def read_limit(self, device: GpuDevice) -> LimitReading:
        """The management limit and the enforced limit."""
        handle = self._handle(a.OPERATION_READ, device)
        limit = int(self._call(a.OPERATION_READ, device.uuid, device.index,
                               self._nvml.nvmlDeviceGetPowerManagementLimit, handle))
        try:
            enforced: int | None = int(self._call(a.OPERATION_READ, device.uuid, device.index,
                                                  self._nvml.nvmlDeviceGetEnforcedPowerLimit, handle))
        except GpuError:
            enforced = None
        return LimitReading(limit, enforced)

    def set_limit(self, device: GpuDevice, limit_mw: int) -> None:
        """NvmlDeviceSetPowerManagementLimit (needs root / CAP_SYS_ADMIN)."""
        handle = self._handle(a.OPERATION_SET, device)
        self._call(a.OPERATION_SET, device.uuid, device.index, self._nvml.nvmlDeviceSetPowerManagementLimit, handle,
                   int(limit_mw))

    def close(self) -> None:
        """NvmlShutdown (NVML counts its inits); the limits stay as they are."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(GpuError):
                self._call("close", None, None, self._nvml.nvmlShutdown)


# --- simulated ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulatedConstraints:
    """A simulated card's limit range and default. Units: W."""

    min_watts: int = 200
    max_watts: int = 700
    default_watts: int = 700

    def __post_init__(self) -> None:
        if not 0 < self.min_watts <= self.default_watts <= self.max_watts:
            raise ValueError(f"need 0 < min <= default <= max, got {self.min_watts}, {self.default_watts}, "
                             f"{self.max_watts}")


#: H100 SXM-like: limits 200..700 W, default 700 W (docs/energy.md's simulated GPU).
H100_LIKE: Final = SimulatedConstraints()
SIMULATED_MODEL: Final = "Simulated H100 SXM (simulated)"
SIMULATED_STATE_FILE: Final = "gpus.json"
_STATE_KIND: Final = "etj-simulated-node-gpus"


def simulated_uuid(node: str, index: int) -> str:
    """The UUID of a simulated GPU: stable for (node, index), so a sandbox kubelet can hand out the same ids."""
    return "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"urn:etj:simulated-gpu:{node}:{index}"))


class SimulatedBackend:
    """Simulated GPUs of one node, their state in ``<state_dir>/gpus.json`` (see the module).

    The file is made on first use with ``count`` GPUs of ``constraints``; after that it is the node's hardware:
    its GPUs and limits are read from it on every call (what another process wrote is seen), and the
    arguments are ignored. ``refuse_set`` makes a GPU refuse to set limits as NVML would (tests, demos).
    """

    source = "simulated"

    def __init__(
        self,
        state_dir: str | Path,
        node: str,
        count: int = 8,
        constraints: SimulatedConstraints = H100_LIKE,
        model: str = SIMULATED_MODEL,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SIMULATED_STATE_FILE
        self.node = node
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self.path.exists():
                c = constraints
                self._save({
                    "kind": _STATE_KIND,
                    "simulated": True,
                    "node": node,
                    "gpus": [
                        {
                            "index": i,
                            "uuid": simulated_uuid(node, i),
                            "name": model,
                            "pciBusId": f"00000000:{i + 1:02X}:00.0",
                            "minLimitMilliwatts": c.min_watts * 1000,
                            "maxLimitMilliwatts": c.max_watts * 1000,
                            "defaultLimitMilliwatts": c.default_watts * 1000,
                            "limitMilliwatts": c.default_watts * 1000,
                            "refuseSet": None,
                        }
                        for i in range(count)
                    ],
                })
            self._load()  # a broken file fails here, at start

    # --- the state file ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.state_dir / (SIMULATED_STATE_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise GpuError(f"simulated GPUs of {self.node}: cannot read {self.path}: {e}", kind=a.ERROR_LIBRARY,
                           operation=a.OPERATION_DISCOVER) from e
        if not isinstance(data, dict) or data.get("kind") != _STATE_KIND or not isinstance(data.get("gpus"), list):
            raise GpuError(f"simulated GPUs of {self.node}: {self.path} is not a simulated node's GPU state",
                           kind=a.ERROR_LIBRARY, operation=a.OPERATION_DISCOVER)
        return data

    def _save(self, data: dict[str, Any]) -> None:
        fd, temp = tempfile.mkstemp(dir=self.state_dir, prefix=".gpus.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    @staticmethod
    def _device(gpu: dict[str, Any]) -> GpuDevice:
        return GpuDevice(
            uuid=str(gpu["uuid"]),
            index=int(gpu["index"]),
            name=str(gpu.get("name") or SIMULATED_MODEL),
            min_mw=int(gpu["minLimitMilliwatts"]),
            max_mw=int(gpu["maxLimitMilliwatts"]),
            default_mw=int(gpu["defaultLimitMilliwatts"]),
            pci_bus_id=str(gpu.get("pciBusId") or ""),
        )

    def _find(self, data: dict[str, Any], device: GpuDevice, operation: str) -> dict[str, Any]:
        for gpu in data["gpus"]:
            if isinstance(gpu, dict) and gpu.get("uuid") == device.uuid:
                return gpu
        raise GpuError(f"{operation} on GPU {device.index} ({device.uuid}): simulated NVML_ERROR_NOT_FOUND: "
                       f"no such GPU on {self.node}", kind=a.ERROR_GPU_NOT_FOUND, operation=operation,
                       uuid=device.uuid, index=device.index, code="NVML_ERROR_NOT_FOUND")

    # --- the backend ------------------------------------------------------------------------------------------
    def inventory(self) -> Inventory:
        """The GPUs of the state file."""
        devices: list[GpuDevice] = []
        errors: list[GpuError] = []
        for position, gpu in enumerate(self._load()["gpus"]):
            try:
                devices.append(self._device(gpu))
            except (KeyError, TypeError, ValueError) as e:
                errors.append(GpuError(f"simulated GPU #{position} of {self.node}: malformed state: {e!r}",
                                       kind=a.ERROR_UNKNOWN, operation=a.OPERATION_DISCOVER))
        return Inventory(tuple(devices), tuple(errors))

    def read_limit(self, device: GpuDevice) -> LimitReading:
        """The limit in the state file (a simulated card has no other limiter: enforced = set)."""
        gpu = self._find(self._load(), device, a.OPERATION_READ)
        limit = int(gpu["limitMilliwatts"])
        return LimitReading(limit, limit)

    def set_limit(self, device: GpuDevice, limit_mw: int) -> None:
        """Write the limit, or refuse as NVML would (out of range, or ``refuse_set``)."""
        with self._locked():
            data = self._load()
            gpu = self._find(data, device, a.OPERATION_SET)
            where = f"set on GPU {device.index} ({device.uuid})"
            refusal = gpu.get("refuseSet")
            if refusal:
                kind = refusal if refusal in a.ERROR_KINDS else a.ERROR_UNKNOWN
                raise GpuError(f"{where}: simulated refusal ({kind})", kind=kind, operation=a.OPERATION_SET,
                               uuid=device.uuid, index=device.index, code=f"simulated {kind}")
            low, high = int(gpu["minLimitMilliwatts"]), int(gpu["maxLimitMilliwatts"])
            if not low <= limit_mw <= high:
                raise GpuError(f"{where}: simulated NVML_ERROR_INVALID_ARGUMENT: {limit_mw} mW outside "
                               f"{low}..{high} mW", kind=a.ERROR_INVALID_ARGUMENT, operation=a.OPERATION_SET,
                               uuid=device.uuid, index=device.index, code="NVML_ERROR_INVALID_ARGUMENT")
            gpu["limitMilliwatts"] = int(limit_mw)
            self._save(data)

    def close(self) -> None:
        """Nothing to release (the state file keeps the limits)."""

    # --- for tests and demos ----------------------------------------------------------------------------------
    def refuse_set(self, uuid: str, kind: str | None = a.ERROR_NO_PERMISSION) -> None:
        """Make the GPU refuse ``set_limit`` with ``kind`` (None: accept again)."""
        with self._locked():
            data = self._load()
            for gpu in data["gpus"]:
                if isinstance(gpu, dict) and gpu.get("uuid") == uuid:
                    gpu["refuseSet"] = kind
                    self._save(data)
                    return
            raise KeyError(uuid)
