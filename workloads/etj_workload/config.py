"""Typed views of the environment the operator and torchrun give each pod.

Everything here is standard library only, so the operator, the sandbox and tests can parse a pod's
environment without importing torch. Parsing errors name the variable and the field at fault. The plans the
operator hands over (``ETJ_POWER_POLICY``, ``ETJ_COMPRESSION_PLAN``) are the contract's records
(:mod:`etj_contract.plans`), re-exported here under the harness's names (``Stage``, ``Trigger``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import etj_contract as contract
from etj_contract.plans import (
    AccuracyGuard,
    AutoPolicy,
    CompressionPlan,
    GuardAction,
    PlanError,
    PowerMode,
    PowerPolicy,
    PruneMethod,
    PruneSpec,
    QuantizeSpec,
)
from etj_contract.plans import CompressionStage as Stage
from etj_contract.plans import StageTrigger as Trigger

__all__ = [
    "ENV_COMM_TIMING",
    "ENV_SIMULATED_COMPUTE_FRACTION",
    "ENV_SIMULATED_SLEEP",
    "ENV_SIMULATED_STATE_FILE",
    "ENV_SIMULATED_STEP_SECONDS",
    "AccuracyGuard",
    "AutoPolicy",
    "CompressionPlan",
    "ConfigError",
    "DistEnv",
    "GuardAction",
    "HarnessEnv",
    "PowerEnforcer",
    "PowerMode",
    "PowerPolicy",
    "PruneMethod",
    "PruneSpec",
    "QuantizeSpec",
    "Stage",
    "Trigger",
    "parse_comm_timing",
    "parse_compression_plan",
    "parse_power_enforcer",
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

# Harness-local switch (not set by the operator): "false" stops reading DDP's communication statistics.
#: Whether the harness reports gradient communication (:mod:`etj_workload.commtiming`); default on.
ENV_COMM_TIMING = "ETJ_COMM_TIMING"

GpuBackendName = Literal["auto", "nvml", "simulated"]
#: Who sets the limits of a Fixed policy and of the operator's throttle (``ETJ_POWER_ENFORCER``).
PowerEnforcer = Literal["agent", "pod"]

#: An environment value the harness cannot use; the message names the variable and the field. It is the
#: contract's :class:`etj_contract.plans.PlanError`, which the plans' ``from_env`` raise.
ConfigError = PlanError


def parse_power_policy(raw: str | None, where: str = contract.ENV_ETJ_POWER_POLICY) -> PowerPolicy:
    """Parse ``ETJ_POWER_POLICY`` JSON; unset or empty means Unmanaged (:meth:`PowerPolicy.from_env`)."""
    return PowerPolicy.from_env(raw, where)


def parse_power_enforcer(raw: str | None, where: str = contract.ENV_ETJ_POWER_ENFORCER) -> PowerEnforcer:
    """Parse ``ETJ_POWER_ENFORCER``; unset or empty means ``pod``.

    ``agent``: the node agent sets Fixed limits and the throttle, and the harness only reports them. ``pod``: the
    harness sets them through NVML.
    """
    value = (raw or "").strip() or contract.POWER_ENFORCER_POD
    if value == contract.POWER_ENFORCER_AGENT:
        return "agent"
    if value == contract.POWER_ENFORCER_POD:
        return "pod"
    raise ConfigError(f"{where}: must be {contract.POWER_ENFORCER_AGENT}|{contract.POWER_ENFORCER_POD}, got {raw!r}")


def parse_comm_timing(raw: str | None, where: str = ENV_COMM_TIMING) -> bool:
    """Parse ``ETJ_COMM_TIMING``: ``false``/``0``/``no``/``off`` switch the timing off; unset or empty: on."""
    value = (raw or "").strip().lower()
    if value in ("", "true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{where}: must be true|false, got {raw!r}")


def parse_compression_plan(raw: str | None, where: str = contract.ENV_ETJ_COMPRESSION_PLAN) -> CompressionPlan:
    """Parse ``ETJ_COMPRESSION_PLAN`` JSON (``{"stages": [...], "accuracyGuard": {...}}`` or a bare list).

    Unset or empty means no stages (:meth:`CompressionPlan.from_env`).
    """
    return CompressionPlan.from_env(raw, where)


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
    #: About this many seconds between two control polls (``ETJ_CONTROL_POLL_SECONDS``); 0: every
    #: ``control_poll_steps`` steps.
    control_poll_seconds: float = 0.0
    gpu_backend: GpuBackendName = "auto"
    gang_generation: int = 0
    power: PowerPolicy = field(default_factory=PowerPolicy)
    compression: CompressionPlan = field(default_factory=CompressionPlan)
    #: Time gradient communication with a DDP hook (``ETJ_COMM_TIMING``).
    comm_timing: bool = True

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
        poll_seconds_raw = env.get(contract.ENV_ETJ_CONTROL_POLL_SECONDS, "")
        try:
            poll_seconds = float(poll_seconds_raw) if poll_seconds_raw else 0.0
        except ValueError as e:
            raise ConfigError(
                f"{contract.ENV_ETJ_CONTROL_POLL_SECONDS}: expected a number of seconds, got {poll_seconds_raw!r}"
            ) from e
        if not 0.0 <= poll_seconds <= contract.MAX_CONTROL_POLL_SECONDS:
            raise ConfigError(
                f"{contract.ENV_ETJ_CONTROL_POLL_SECONDS}: must be between 0 and "
                f"{contract.MAX_CONTROL_POLL_SECONDS:g}, got {poll_seconds_raw!r}"
            )
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
            control_poll_seconds=poll_seconds,
            gpu_backend=backend,  # type: ignore[arg-type]
            gang_generation=integer(contract.ENV_ETJ_GANG_GENERATION, 0),
            power=parse_power_policy(env.get(contract.ENV_ETJ_POWER_POLICY)),
            compression=parse_compression_plan(env.get(contract.ENV_ETJ_COMPRESSION_PLAN)),
            comm_timing=parse_comm_timing(env.get(ENV_COMM_TIMING)),
        )
