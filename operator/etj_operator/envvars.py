"""Environment of a worker pod's trainer container, one generator per feature.

Each generator takes an :class:`EnvContext` and returns ``V1EnvVar``-shaped dicts. Adding a feature adds a
generator to :data:`GENERATORS`; nothing else changes. Names come from :mod:`etj_operator.contract`; the plans
(``ETJ_POWER_POLICY``, ``ETJ_COMPRESSION_PLAN``) are the contract's records (:mod:`etj_contract.plans`), built
from the parsed spec here (the contract does not know the operator's models) and written with ``to_env()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from etj_contract.plans import (
    COMPRESSION_DEFAULTS,
    AccuracyGuard,
    AutoPolicy,
    CompressionPlan,
    CompressionStage,
    PowerPolicy,
    PruneSpec,
    QuantizeSpec,
    StageTrigger,
)
from etj_operator import contract as c
from etj_operator.models import CompressionSpec, JobSpec, PowerSpec, StageSpec

EnvVar = dict[str, str]


@dataclass(frozen=True)
class EnvContext:
    """What the generators need to know about one worker pod."""

    job_name: str
    namespace: str
    spec: JobSpec
    replica_index: int
    gang_generation: int
    control_poll_steps: int = 10
    control_poll_seconds: float = 1.0
    gpu_backend: str = "auto"
    metrics_port: int = c.DEFAULT_METRICS_PORT
    master_port: int = c.DEFAULT_MASTER_PORT

    @property
    def master_addr(self) -> str:
        """DNS name of worker 0 through the job's headless Service (pod hostname.subdomain)."""
        return f"{worker_pod_name(self.job_name, 0)}.{self.job_name}.{self.namespace}.svc"


def worker_pod_name(job_name: str, index: int) -> str:
    """Deterministic pod name: an operator restart recreates nothing under a new name."""
    return f"{job_name}-worker-{index}"


def _var(name: str, value: object) -> EnvVar:
    return {"name": name, "value": str(value)}


def torchrun_env(ctx: EnvContext) -> list[EnvVar]:
    """Static rendezvous variables, as torchrun and torch.distributed read them (not used when elastic)."""
    if ctx.spec.elastic is not None:
        return [_var(c.ENV_MASTER_ADDR, ctx.master_addr), _var(c.ENV_MASTER_PORT, ctx.master_port)]
    return [
        _var(c.ENV_MASTER_ADDR, ctx.master_addr),
        _var(c.ENV_MASTER_PORT, ctx.master_port),
        _var(c.ENV_WORLD_SIZE, ctx.spec.world_size),
        _var(c.ENV_RANK, ctx.replica_index),
        _var(c.ENV_NODE_RANK, ctx.replica_index),
        _var(c.ENV_PET_NNODES, ctx.spec.replicas),
        _var(c.ENV_PET_NPROC_PER_NODE, ctx.spec.nproc_per_node),
        _var(c.ENV_PET_NODE_RANK, ctx.replica_index),
        _var(c.ENV_PET_MASTER_ADDR, ctx.master_addr),
        _var(c.ENV_PET_MASTER_PORT, ctx.master_port),
    ]


def elastic_env(ctx: EnvContext) -> list[EnvVar]:
    """c10d rendezvous variables: torchrun assigns ranks, so no RANK or WORLD_SIZE is set."""
    elastic = ctx.spec.elastic
    if elastic is None:
        return []
    return [
        _var(c.ENV_PET_NNODES, f"{elastic.min_replicas}:{elastic.max_replicas}"),
        _var(c.ENV_PET_NPROC_PER_NODE, ctx.spec.nproc_per_node),
        _var(c.ENV_PET_RDZV_BACKEND, "c10d"),
        _var(c.ENV_PET_RDZV_ENDPOINT, f"{ctx.master_addr}:{ctx.master_port}"),
        _var(c.ENV_PET_RDZV_ID, f"{ctx.namespace}-{ctx.job_name}-{ctx.gang_generation}"),
        _var(c.ENV_PET_MAX_RESTARTS, elastic.max_restarts),
    ]


def harness_env(ctx: EnvContext) -> list[EnvVar]:
    """Identity of the job and the pod, and how the harness talks back to the operator."""
    return [
        _var(c.ENV_ETJ_NAME, ctx.job_name),
        _var(c.ENV_ETJ_NAMESPACE, ctx.namespace),
        _var(c.ENV_ETJ_REPLICA_INDEX, ctx.replica_index),
        _var(c.ENV_ETJ_GANG_GENERATION, ctx.gang_generation),
        _var(c.ENV_ETJ_CONTROL_POLL_STEPS, ctx.control_poll_steps),
        _var(c.ENV_ETJ_CONTROL_POLL_SECONDS, f"{ctx.control_poll_seconds:g}"),
        _var(c.ENV_ETJ_METRICS_PORT, ctx.metrics_port),
        _var(c.ENV_ETJ_GPU_BACKEND, ctx.gpu_backend),
    ]


def power_policy_of(power: PowerSpec) -> PowerPolicy:
    """The power policy the harness gets for ``spec.energy.power`` (its defaults already applied by the parser)."""
    auto = power.auto
    return PowerPolicy(
        mode=power.mode,
        limit_watts=power.limit_watts,
        auto=AutoPolicy()
        if auto is None
        else AutoPolicy(auto.eta, auto.warmup_steps, auto.profile_steps, auto.step_watts, auto.max_slowdown),
        budget_watts=power.budget_watts,
    )


def _stage_of(stage: StageSpec) -> CompressionStage:
    trigger = StageTrigger.of(stage.trigger_kind, stage.trigger_value)
    # The parser checked the action's object; it keeps it only as written (raw), defaults not filled in.
    if stage.kind == "prune":
        prune = stage.raw["prune"]
        method = prune.get("method", COMPRESSION_DEFAULTS.prune_method)
        return CompressionStage(stage.name, trigger, prune=PruneSpec(float(prune["amount"]), method))
    quantize = stage.raw.get("quantize") or {}
    return CompressionStage(
        stage.name, trigger, quantize=QuantizeSpec(quantize.get("dtype", COMPRESSION_DEFAULTS.quantize_dtype))
    )


def compression_plan_of(compression: CompressionSpec) -> CompressionPlan:
    """The compression plan the harness gets for ``spec.compression``: the stages in order, and the guard."""
    return CompressionPlan(
        stages=tuple(_stage_of(s) for s in compression.stages),
        guard=AccuracyGuard(compression.max_accuracy_drop, compression.guard_action),
    )


def power_env(ctx: EnvContext) -> list[EnvVar]:
    """The power policy (spec.energy.power) as JSON for the harness's power controller."""
    return [_var(c.ENV_ETJ_POWER_POLICY, power_policy_of(ctx.spec.energy.power).to_env())]


def compression_env(ctx: EnvContext) -> list[EnvVar]:
    """The compression plan (stages in order, with the accuracy guard) as JSON; absent when empty."""
    plan = compression_plan_of(ctx.spec.compression)
    if not plan.stages:
        return []
    return [_var(c.ENV_ETJ_COMPRESSION_PLAN, plan.to_env())]


def checkpoint_env(ctx: EnvContext) -> list[EnvVar]:
    """Where the harness saves and resumes; absent when the job has no checkpoint spec."""
    if ctx.spec.checkpoint is None:
        return []
    return [_var(c.ENV_ETJ_CHECKPOINT_DIR, ctx.spec.checkpoint.path)]


GENERATORS: tuple[Callable[[EnvContext], list[EnvVar]], ...] = (
    torchrun_env,
    elastic_env,
    harness_env,
    power_env,
    compression_env,
    checkpoint_env,
)


def worker_env(ctx: EnvContext) -> list[EnvVar]:
    """All generated variables, in generator order, each name once (a later generator wins)."""
    merged: dict[str, EnvVar] = {}
    for generate in GENERATORS:
        for var in generate(ctx):
            merged[var["name"]] = var
    return list(merged.values())
