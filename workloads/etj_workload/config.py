"""Typed views of the environment the operator and torchrun give each pod.

Everything here is standard library only, so the operator, the sandbox and tests can parse a pod's
environment without importing torch. Parsing errors name the variable and the field at fault.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import etj_contract as contract
from etj_contract.plans import AUTO_BOUNDS, AUTO_DEFAULTS

__all__ = [
    "ENV_SIMULATED_COMPUTE_FRACTION",
    "ENV_SIMULATED_SLEEP",
    "ENV_SIMULATED_STATE_FILE",
    "ENV_SIMULATED_STEP_SECONDS",
    "AccuracyGuard",
    "AutoPolicy",
    "CompressionPlan",
    "ConfigError",
    "DistEnv",
    "HarnessEnv",
    "PowerPolicy",
    "PruneSpec",
    "QuantizeSpec",
    "Stage",
    "Trigger",
    "parse_compression_plan",
    "parse_power_policy",
]

# Harness-local knobs of the simulated GPU. They are not part of the operator contract: only the
# sandbox, tests and benchmarks set them.
#: Path of a JSON file the simulated GPU rewrites (atomically) whenever its power limit changes.
ENV_SIMULATED_STATE_FILE = "ETJ_SIMULATED_GPU_STATE_FILE"
#: "1" (default) to sleep the modelled slowdown under a power cap, "0" to only account for it.
ENV_SIMULATED_SLEEP = "ETJ_SIMULATED_SLEEP"
#: Fixed full-clock step time of the simulated GPU in seconds (deterministic runs); unset: measured.
ENV_SIMULATED_STEP_SECONDS = "ETJ_SIMULATED_STEP_SECONDS"
#: Fraction of a step that is compute-bound and slows with the clock (0..1).
ENV_SIMULATED_COMPUTE_FRACTION = "ETJ_SIMULATED_COMPUTE_FRACTION"

PowerMode = Literal["Unmanaged", "Fixed", "Auto"]
GpuBackendName = Literal["auto", "nvml", "simulated"]
PruneMethod = Literal["l1Unstructured", "lnStructured"]
GuardAction = Literal["Rollback", "Stop"]


class ConfigError(ValueError):
    """An environment value the harness cannot use; the message names the variable and the field."""


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


def _number(value: Any, where: str) -> float:
    _require(isinstance(value, int | float) and not isinstance(value, bool), where, f"expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool), where, f"expected an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class AutoPolicy:
    """Parameters of the Zeus-style Auto profiler (spec.energy.power.auto).

    ``eta`` weighs energy against time in the cost ``eta*E + (1-eta)*P_max*T``; ``max_slowdown`` (e.g. 1.1)
    instead restricts the choice to limits whose step time is at most that factor of the max-limit time.
    The defaults are the CRD's (``etj_contract.plans.AUTO_DEFAULTS``).
    """

    eta: float = AUTO_DEFAULTS.eta
    warmup_steps: int = AUTO_DEFAULTS.warmup_steps
    profile_steps: int = AUTO_DEFAULTS.profile_steps
    step_watts: int = AUTO_DEFAULTS.step_watts
    max_slowdown: float | None = AUTO_DEFAULTS.max_slowdown


@dataclass(frozen=True)
class PowerPolicy:
    """spec.energy.power as the harness uses it."""

    mode: PowerMode = "Unmanaged"
    limit_watts: int | None = None
    auto: AutoPolicy = field(default_factory=AutoPolicy)
    budget_watts: int | None = None


def parse_power_policy(raw: str | None, where: str = contract.ENV_ETJ_POWER_POLICY) -> PowerPolicy:
    """Parse ``ETJ_POWER_POLICY`` JSON; unset or empty means Unmanaged."""
    if not raw:
        return PowerPolicy()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e})") from e
    _require(isinstance(data, dict), where, "expected a JSON object")
    mode = data.get("mode", "Unmanaged")
    _require(mode in ("Unmanaged", "Fixed", "Auto"), f"{where}.mode", f"must be Unmanaged|Fixed|Auto, got {mode!r}")
    limit_watts = data.get("limitWatts")
    if limit_watts is not None:
        limit_watts = _integer(limit_watts, f"{where}.limitWatts")
    _require(mode != "Fixed" or limit_watts is not None, f"{where}.limitWatts", "required when mode is Fixed")
    auto_raw = data.get("auto") or {}
    _require(isinstance(auto_raw, dict), f"{where}.auto", "expected an object")
    defaults = AutoPolicy()
    bounds = AUTO_BOUNDS  # the CRD's, so the harness accepts exactly what the API server does
    eta = _number(auto_raw.get("eta", defaults.eta), f"{where}.auto.eta")
    _require(eta in bounds.eta, f"{where}.auto.eta", f"must be within {bounds.eta}, got {eta}")
    warmup = _integer(auto_raw.get("warmupSteps", defaults.warmup_steps), f"{where}.auto.warmupSteps")
    profile = _integer(auto_raw.get("profileSteps", defaults.profile_steps), f"{where}.auto.profileSteps")
    step_watts = _integer(auto_raw.get("stepWatts", defaults.step_watts), f"{where}.auto.stepWatts")
    _require(warmup in bounds.warmup_steps, f"{where}.auto.warmupSteps", f"must be within {bounds.warmup_steps}")
    _require(profile in bounds.profile_steps, f"{where}.auto.profileSteps", f"must be within {bounds.profile_steps}")
    _require(step_watts in bounds.step_watts, f"{where}.auto.stepWatts", f"must be within {bounds.step_watts}")
    max_slowdown_raw = auto_raw.get("maxSlowdown", defaults.max_slowdown)
    max_slowdown = None
    if max_slowdown_raw is not None:
        max_slowdown = _number(max_slowdown_raw, f"{where}.auto.maxSlowdown")
        _require(
            max_slowdown in bounds.max_slowdown,
            f"{where}.auto.maxSlowdown",
            f"must be within {bounds.max_slowdown}, got {max_slowdown}",
        )
    budget = data.get("budgetWatts")
    if budget is not None:
        budget = _integer(budget, f"{where}.budgetWatts")
    return PowerPolicy(
        mode=mode,
        limit_watts=limit_watts,
        auto=AutoPolicy(eta, warmup, profile, step_watts, max_slowdown),
        budget_watts=budget,
    )


@dataclass(frozen=True)
class Trigger:
    """When a stage fires (exactly one field is set).

    ``epoch``: at the start of that 0-based epoch, i.e. once that many epochs are done (an epoch equal to
    the job's epoch count fires after training); ``step``: once that many global steps are done;
    ``energy_fraction``: once ``status.control.energyFraction`` reaches it.
    """

    epoch: int | None = None
    step: int | None = None
    energy_fraction: float | None = None


@dataclass(frozen=True)
class PruneSpec:
    """Prune ``amount`` (0..1) of each weight tensor with ``method``."""

    amount: float
    method: PruneMethod = "l1Unstructured"


@dataclass(frozen=True)
class QuantizeSpec:
    """Quantize weights to ``dtype`` (only int8 weight-only is supported)."""

    dtype: Literal["int8"] = "int8"


@dataclass(frozen=True)
class Stage:
    """One compression stage of the plan."""

    name: str
    trigger: Trigger
    prune: PruneSpec | None = None
    quantize: QuantizeSpec | None = None


@dataclass(frozen=True)
class AccuracyGuard:
    """Roll a stage back (or stop) when accuracy drops by more than ``max_drop`` (fraction, 0.01 = 1 point)."""

    max_drop: float = 0.01
    action: GuardAction = "Rollback"


@dataclass(frozen=True)
class CompressionPlan:
    """spec.compression as the harness uses it."""

    stages: tuple[Stage, ...] = ()
    guard: AccuracyGuard = field(default_factory=AccuracyGuard)

    def stage(self, name: str) -> Stage | None:
        """Return the stage called ``name``, or None."""
        return next((s for s in self.stages if s.name == name), None)


def _parse_trigger(raw: Any, where: str) -> Trigger:
    _require(isinstance(raw, dict) and len(raw) == 1, where, "expected exactly one of epoch, step, energyFraction")
    if "epoch" in raw:
        epoch = _integer(raw["epoch"], f"{where}.epoch")
        _require(epoch >= 0, f"{where}.epoch", "must be >= 0")
        return Trigger(epoch=epoch)
    if "step" in raw:
        step = _integer(raw["step"], f"{where}.step")
        _require(step >= 0, f"{where}.step", "must be >= 0")
        return Trigger(step=step)
    if "energyFraction" in raw:
        fraction = _number(raw["energyFraction"], f"{where}.energyFraction")
        _require(0.0 <= fraction <= 1.0, f"{where}.energyFraction", "must be within 0..1")
        return Trigger(energy_fraction=fraction)
    raise ConfigError(f"{where}: unknown trigger {sorted(raw)}; use epoch, step or energyFraction")


def _parse_stage(raw: Any, where: str) -> Stage:
    _require(isinstance(raw, dict), where, "expected an object")
    name = raw.get("name")
    _require(isinstance(name, str) and bool(name), f"{where}.name", "required non-empty string")
    trigger = _parse_trigger(raw.get("trigger"), f"{where}.trigger")
    has_prune, has_quantize = "prune" in raw, "quantize" in raw
    _require(has_prune != has_quantize, where, "needs exactly one of prune or quantize")
    if has_prune:
        prune_raw = raw["prune"]
        _require(isinstance(prune_raw, dict), f"{where}.prune", "expected an object")
        amount = _number(prune_raw.get("amount"), f"{where}.prune.amount")
        _require(0.0 < amount < 1.0, f"{where}.prune.amount", f"must be within (0, 1), got {amount}")
        method = prune_raw.get("method", "l1Unstructured")
        _require(
            method in ("l1Unstructured", "lnStructured"),
            f"{where}.prune.method",
            f"must be l1Unstructured|lnStructured, got {method!r}",
        )
        return Stage(str(name), trigger, prune=PruneSpec(amount, method))
    quantize_raw = raw["quantize"]
    _require(isinstance(quantize_raw, dict), f"{where}.quantize", "expected an object")
    dtype = quantize_raw.get("dtype", "int8")
    _require(dtype == "int8", f"{where}.quantize.dtype", f"only int8 is supported, got {dtype!r}")
    return Stage(str(name), trigger, quantize=QuantizeSpec())


def parse_compression_plan(raw: str | None, where: str = contract.ENV_ETJ_COMPRESSION_PLAN) -> CompressionPlan:
    """Parse ``ETJ_COMPRESSION_PLAN`` JSON (``{"stages": [...], "accuracyGuard": {...}}`` or a bare list)."""
    if not raw:
        return CompressionPlan()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e})") from e
    if isinstance(data, list):
        data = {"stages": data}
    _require(isinstance(data, dict), where, "expected a JSON object")
    stages_raw = data.get("stages") or []
    _require(isinstance(stages_raw, list), f"{where}.stages", "expected a list")
    stages = tuple(_parse_stage(s, f"{where}.stages[{i}]") for i, s in enumerate(stages_raw))
    names = [s.name for s in stages]
    _require(len(names) == len(set(names)), f"{where}.stages", f"stage names must be unique: {names}")
    guard_raw = data.get("accuracyGuard") or {}
    _require(isinstance(guard_raw, dict), f"{where}.accuracyGuard", "expected an object")
    max_drop = _number(guard_raw.get("maxDrop", 0.01), f"{where}.accuracyGuard.maxDrop")
    _require(0.0 <= max_drop <= 1.0, f"{where}.accuracyGuard.maxDrop", "must be within 0..1")
    action = guard_raw.get("action", "Rollback")
    _require(action in ("Rollback", "Stop"), f"{where}.accuracyGuard.action", "must be Rollback|Stop")
    return CompressionPlan(stages, AccuracyGuard(max_drop, action))


@dataclass(frozen=True)
class DistEnv:
    """The process's place in the DDP world, from torchrun's (or the operator's) environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether there is more than one rank."""
        return self.world_size > 1


@dataclass(frozen=True)
class HarnessEnv:
    """Everything the harness reads from its environment."""

    dist: DistEnv = field(default_factory=DistEnv)
    job_name: str | None = None
    job_namespace: str | None = None
    replica_index: int = 0
    checkpoint_dir: str | None = None
    metrics_port: int | None = None
    control_poll_steps: int = 10
    gpu_backend: GpuBackendName = "auto"
    gang_generation: int = 0
    power: PowerPolicy = field(default_factory=PowerPolicy)
    compression: CompressionPlan = field(default_factory=CompressionPlan)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HarnessEnv:
        """Read the harness's settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env

        def integer(name: str, default: int) -> int:
            value = env.get(name, "")
            if value == "":
                return default
            try:
                return int(value)
            except ValueError as e:
                raise ConfigError(f"{name}: expected an integer, got {value!r}") from e

        # Under torchrun, RANK/WORLD_SIZE are per process; the operator's pod-level RANK (node rank) and
        # WORLD_SIZE (pods) are overwritten by torchrun for its workers, so the values here are right in both cases.
        world_size = integer(contract.ENV_WORLD_SIZE, 1)
        dist = DistEnv(
            rank=integer(contract.ENV_RANK, 0),
            world_size=world_size,
            local_rank=integer("LOCAL_RANK", 0),
            local_world_size=integer("LOCAL_WORLD_SIZE", 1),
        )
        backend = env.get(contract.ENV_ETJ_GPU_BACKEND, "auto") or "auto"
        if backend not in ("auto", "nvml", "simulated"):
            raise ConfigError(f"{contract.ENV_ETJ_GPU_BACKEND}: must be auto|nvml|simulated, got {backend!r}")
        poll_steps = integer(contract.ENV_ETJ_CONTROL_POLL_STEPS, 10)
        if poll_steps < 1:
            raise ConfigError(f"{contract.ENV_ETJ_CONTROL_POLL_STEPS}: must be >= 1, got {poll_steps}")
        metrics_port_raw = env.get(contract.ENV_ETJ_METRICS_PORT, "")
        metrics_port = integer(contract.ENV_ETJ_METRICS_PORT, 0) if metrics_port_raw else None
        return cls(
            dist=dist,
            job_name=env.get(contract.ENV_ETJ_NAME) or None,
            job_namespace=env.get(contract.ENV_ETJ_NAMESPACE) or None,
            replica_index=integer(contract.ENV_ETJ_REPLICA_INDEX, 0),
            checkpoint_dir=env.get(contract.ENV_ETJ_CHECKPOINT_DIR) or None,
            metrics_port=metrics_port,
            control_poll_steps=poll_steps,
            gpu_backend=backend,  # type: ignore[arg-type]
            gang_generation=integer(contract.ENV_ETJ_GANG_GENERATION, 0),
            power=parse_power_policy(env.get(contract.ENV_ETJ_POWER_POLICY)),
            compression=parse_compression_plan(env.get(contract.ENV_ETJ_COMPRESSION_PLAN)),
        )
