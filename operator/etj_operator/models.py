"""Typed models of an EfficientTrainingJob's spec, parsed from the custom resource.

The CRD schema rejects most bad input at admission. This parser re-checks everything the operator relies
on, because a job can reach the operator without passing that schema (an older CRD, an API server without
CEL, the sandbox), and because some checks need the whole object. Every problem becomes a
:class:`SpecProblem` naming the field path and the fix; :func:`parse_spec` raises them all at once in
:class:`InvalidSpecError`. Defaults here equal the CRD's defaults.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from etj_contract.plans import AUTO_BOUNDS, AUTO_DEFAULTS, COMPRESSION_BOUNDS, COMPRESSION_DEFAULTS, POWER_BOUNDS
from etj_operator import contract

PowerMode = Literal["Unmanaged", "Fixed", "Auto"]
TelemetrySource = Literal["Prometheus", "Direct"]
BudgetAction = Literal["Stop", "Suspend", "Notify"]
#: spec.energy.energyBudget.onForecast: what the budget foresight does when the forecast exceeds the budget.
ForecastAction = Literal["Notify", "Suspend"]
CleanPodPolicy = Literal["None", "Running", "All"]
GuardAction = Literal["Rollback", "Stop"]
PruneMethod = Literal["l1Unstructured", "lnStructured"]

_DNS_LABEL = re.compile(COMPRESSION_BOUNDS.name_pattern)
_RFC1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Pod names are "<job>-worker-<index>"; a pod name is at most 63 characters for its hostname.
MAX_JOB_NAME_LENGTH = 63 - len("-worker-") - 4


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a job's spec: where, what, and how to fix it."""

    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} (fix: {self.fix})"


class InvalidSpecError(ValueError):
    """The spec cannot be run as it is; ``problems`` lists every reason with its field path."""

    def __init__(self, problems: Sequence[SpecProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class ElasticSpec:
    """torchrun elastic settings (c10d rendezvous)."""

    min_replicas: int
    max_replicas: int
    max_restarts: int = 3


@dataclass(frozen=True)
class RunPolicy:
    """How failures, deadlines and cleanup are handled."""

    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    clean_pod_policy: CleanPodPolicy = "Running"


@dataclass(frozen=True)
class CheckpointSpec:
    """Where checkpoints live inside the trainer container."""

    path: str
    volume: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TelemetrySpec:
    """Where power and energy readings come from."""

    source: TelemetrySource = "Prometheus"
    interval_seconds: int = 15
    prometheus_url: str | None = None


@dataclass(frozen=True)
class AutoPowerSpec:
    """Zeus-style profiling of candidate power limits."""

    eta: float = AUTO_DEFAULTS.eta
    warmup_steps: int = AUTO_DEFAULTS.warmup_steps
    profile_steps: int = AUTO_DEFAULTS.profile_steps
    step_watts: int = AUTO_DEFAULTS.step_watts
    max_slowdown: float | None = AUTO_DEFAULTS.max_slowdown


@dataclass(frozen=True)
class PowerSpec:
    """GPU power management."""

    mode: PowerMode = "Unmanaged"
    limit_watts: int | None = None
    auto: AutoPowerSpec | None = None
    budget_watts: int | None = None

    @property
    def managed(self) -> bool:
        """Whether the harness changes GPU power limits (then pods need SYS_ADMIN for NVML)."""
        return self.mode != "Unmanaged" or self.budget_watts is not None


@dataclass(frozen=True)
class EnergyBudgetSpec:
    """A ceiling on the job's energy and what to do when it is reached."""

    kilowatt_hours: float
    action: BudgetAction = "Stop"
    #: What to do when the forecast energy at completion exceeds the budget (etj_operator.policies, foresight).
    on_forecast: ForecastAction = "Notify"


@dataclass(frozen=True)
class CarbonSpec:
    """Carbon intensity source and the pause threshold."""

    intensity_query: str | None = None
    intensity_grams_per_kwh: float | None = None
    max_grams_per_kwh: float | None = None
    min_dwell_seconds: int = 300


@dataclass(frozen=True)
class PlacementSpec:
    """When and where to move the job's pods."""

    reschedule_on_power_pressure: bool = True
    node_pool_label: str = "efficienttraining.dev/node-pool"
    preferred_node_pools: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnergySpec:
    """Everything under spec.energy."""

    telemetry: TelemetrySpec = field(default_factory=TelemetrySpec)
    power: PowerSpec = field(default_factory=PowerSpec)
    energy_budget: EnergyBudgetSpec | None = None
    carbon: CarbonSpec | None = None
    placement: PlacementSpec = field(default_factory=PlacementSpec)


@dataclass(frozen=True)
class StageSpec:
    """One compression stage; ``raw`` is the stage as written (``envvars`` makes the contract's plan of it)."""

    name: str
    trigger_kind: Literal["epoch", "step", "energyFraction"]
    trigger_value: float
    kind: Literal["prune", "quantize"]
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class CompressionSpec:
    """Compression stages and the accuracy guard."""

    stages: tuple[StageSpec, ...] = ()
    max_accuracy_drop: float = 0.01
    guard_action: GuardAction = "Rollback"


@dataclass(frozen=True)
class JobSpec:
    """The parsed spec of an EfficientTrainingJob."""

    template: Mapping[str, Any]
    replicas: int = 1
    nproc_per_node: int = 1
    suspend: bool = False
    elastic: ElasticSpec | None = None
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    checkpoint: CheckpointSpec | None = None
    energy: EnergySpec = field(default_factory=EnergySpec)
    compression: CompressionSpec = field(default_factory=CompressionSpec)

    @property
    def world_size(self) -> int:
        """Total training processes when every replica runs."""
        return self.replicas * self.nproc_per_node


T = TypeVar("T")


class _Reader:
    """Reads typed values out of nested dicts and collects problems instead of raising at the first."""

    def __init__(self) -> None:
        self.problems: list[SpecProblem] = []

    def problem(self, path: str, message: str, fix: str) -> None:
        self.problems.append(SpecProblem(path, message, fix))

    def mapping(self, obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(f"{path}.{key}", f"must be an object, got {type(value).__name__}", "write a mapping")
            return None
        return value

    def integer(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        default: int | None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        value = obj.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.problem(f"{path}.{key}", f"must be an integer, got {value!r}", "write a whole number")
                return default
        return self._bounded(value, f"{path}.{key}", minimum, maximum, default)

    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        default: float | None,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
        exclusive_maximum: bool = False,
    ) -> float | None:
        value = obj.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.problem(f"{path}.{key}", f"must be a finite number, got {value!r}", "write a number")
            return default
        where = f"{path}.{key}"
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            relation = ">" if exclusive_minimum else ">="
            self.problem(where, f"must be {relation} {minimum}, got {value}", f"use a value {relation} {minimum}")
            return default
        if maximum is not None and (value >= maximum if exclusive_maximum else value > maximum):
            relation = "<" if exclusive_maximum else "<="
            self.problem(where, f"must be {relation} {maximum}, got {value}", f"use a value {relation} {maximum}")
            return default
        return float(value)

    def _bounded(
        self, value: int, where: str, minimum: int | None, maximum: int | None, default: int | None
    ) -> int | None:
        if minimum is not None and value < minimum:
            self.problem(where, f"must be >= {minimum}, got {value}", f"use a value of at least {minimum}")
            return default
        if maximum is not None and value > maximum:
            self.problem(where, f"must be <= {maximum}, got {value}", f"use a value of at most {maximum}")
            return default
        return value

    def boolean(self, obj: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = obj.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{path}.{key}", f"must be true or false, got {value!r}", "write true or false")
            return default
        return value

    def string(self, obj: Mapping[str, Any], key: str, path: str, default: str | None) -> str | None:
        value = obj.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(f"{path}.{key}", f"must be a string, got {value!r}", "quote the value")
            return default
        return value

    def choice(self, obj: Mapping[str, Any], key: str, path: str, default: T, allowed: Sequence[T]) -> T:
        value = obj.get(key, default)
        if value not in allowed:
            options = ", ".join(str(a) for a in allowed)
            self.problem(f"{path}.{key}", f"must be one of {options}; got {value!r}", f"use one of {options}")
            return default
        return value  # type: ignore[no-any-return]


def parse_spec(spec: Mapping[str, Any] | None, name: str | None = None) -> JobSpec:
    """Parse and check ``spec`` (and the job's ``name``); raise InvalidSpecError listing every problem."""
    r = _Reader()
    if not isinstance(spec, Mapping):
        raise InvalidSpecError([SpecProblem("spec", "is missing or not an object", "add a spec with a template")])
    if name is not None and len(name) > MAX_JOB_NAME_LENGTH:
        r.problem(
            "metadata.name",
            f"is {len(name)} characters; pod names <name>-worker-<i> must fit in 63",
            f"use a name of at most {MAX_JOB_NAME_LENGTH} characters",
        )
    if name is not None and not _RFC1035_LABEL.match(name[:MAX_JOB_NAME_LENGTH] or "-"):
        # the job's headless Service is named after it, and a Service name is an RFC 1035 label
        r.problem("metadata.name", f"{name!r} is not an RFC 1035 label (its Service is named after it)",
                  "use lowercase letters, digits and '-', starting with a letter")

    p = "spec"
    replicas = r.integer(spec, "replicas", p, 1, 1, 1024) or 1
    nproc = r.integer(spec, "nprocPerNode", p, 1, 1, 64) or 1
    suspend = r.boolean(spec, "suspend", p, False)
    elastic = _parse_elastic(r, spec, replicas)
    template = _parse_template(r, spec)
    _check_service_account(r, template, name)
    run_policy = _parse_run_policy(r, spec)
    checkpoint = _parse_checkpoint(r, spec)
    energy = _parse_energy(r, spec)
    compression = _parse_compression(r, spec, energy)
    if r.problems:
        raise InvalidSpecError(r.problems)
    return JobSpec(
        template=template,
        replicas=replicas,
        nproc_per_node=nproc,
        suspend=suspend,
        elastic=elastic,
        run_policy=run_policy,
        checkpoint=checkpoint,
        energy=energy,
        compression=compression,
    )


def _parse_elastic(r: _Reader, spec: Mapping[str, Any], replicas: int) -> ElasticSpec | None:
    raw = r.mapping(spec, "elastic", "spec")
    if raw is None:
        return None
    p = "spec.elastic"
    lo = r.integer(raw, "minReplicas", p, None, 1, 1024)
    hi = r.integer(raw, "maxReplicas", p, None, 1, 1024)
    restarts = r.integer(raw, "maxRestarts", p, 3, 0, 100) or 0
    if lo is None or hi is None:
        r.problem(p, "needs minReplicas and maxReplicas", "set both, with minReplicas <= maxReplicas")
        return None
    if lo > hi:
        r.problem(f"{p}.minReplicas", f"{lo} exceeds maxReplicas {hi}", "make minReplicas <= maxReplicas")
        return None
    if not lo <= replicas <= hi:
        r.problem("spec.replicas", f"{replicas} is outside [{lo}, {hi}]", "set replicas within the elastic range")
    return ElasticSpec(lo, hi, restarts)


def _parse_template(r: _Reader, spec: Mapping[str, Any]) -> Mapping[str, Any]:
    template = r.mapping(spec, "template", "spec")
    if template is None:
        r.problem("spec.template", "is required", "add a pod template with a container named 'trainer'")
        return {}
    pod_spec = r.mapping(template, "spec", "spec.template")
    containers = pod_spec.get("containers") if pod_spec else None
    if not isinstance(containers, list) or not containers:
        r.problem(
            "spec.template.spec.containers", "must be a non-empty list", "add a container named 'trainer'"
        )
        return template
    names = []
    for i, c in enumerate(containers):
        if not isinstance(c, Mapping) or not isinstance(c.get("name"), str):
            r.problem(f"spec.template.spec.containers[{i}].name", "is required", "name every container")
            continue
        names.append(c["name"])
        if not c.get("image") and not c.get("command"):
            r.problem(
                f"spec.template.spec.containers[{i}]",
                "has neither image nor command",
                "set the container image (and optionally its command)",
            )
    if contract.TRAINER_CONTAINER not in names:
        r.problem(
            "spec.template.spec.containers",
            f"has no container named {contract.TRAINER_CONTAINER!r} (found {names})",
            "rename the container that runs the training program to 'trainer'",
        )
    if len(set(names)) != len(names):
        r.problem("spec.template.spec.containers", "container names repeat", "give each container a unique name")
    return template


def _check_service_account(r: _Reader, template: Mapping[str, Any], name: str | None) -> None:
    """Pods run as the job's own ServiceAccount ``<name>-etj``: a template naming another one is refused.

    The job's report may be written by the job's pods alone; pods of two jobs sharing a ServiceAccount could
    write each other's (docs/security.md). The CRD refuses it too (a root CEL rule).
    """
    pod_spec = template.get("spec")
    if not isinstance(pod_spec, Mapping):
        return
    own = f"{name}-etj" if name is not None else None
    for key in ("serviceAccountName", "serviceAccount"):
        value = pod_spec.get(key)
        if value is not None and value != own:
            r.problem(
                f"spec.template.spec.{key}",
                f"names the ServiceAccount {value!r}; pods run as the job's own ServiceAccount "
                f"{own or '<job name>-etj'}, so that only the job's pods can write the job's report",
                f"remove spec.template.spec.{key}",
            )


def _parse_run_policy(r: _Reader, spec: Mapping[str, Any]) -> RunPolicy:
    raw = r.mapping(spec, "runPolicy", "spec") or {}
    p = "spec.runPolicy"
    policy: CleanPodPolicy = r.choice(raw, "cleanPodPolicy", p, "Running", ("None", "Running", "All"))
    return RunPolicy(
        backoff_limit=r.integer(raw, "backoffLimit", p, 3, 0, 1000) or 0,
        active_deadline_seconds=r.integer(raw, "activeDeadlineSeconds", p, None, 1, None),
        ttl_seconds_after_finished=r.integer(raw, "ttlSecondsAfterFinished", p, None, 0, None),
        clean_pod_policy=policy,
    )


def _parse_checkpoint(r: _Reader, spec: Mapping[str, Any]) -> CheckpointSpec | None:
    raw = r.mapping(spec, "checkpoint", "spec")
    if raw is None:
        return None
    path = r.string(raw, "path", "spec.checkpoint", None)
    if not path or not path.startswith("/"):
        r.problem("spec.checkpoint.path", f"must be an absolute path, got {path!r}", "write e.g. /checkpoints")
        return None
    volume = r.mapping(raw, "volume", "spec.checkpoint")
    return CheckpointSpec(path=path, volume=volume)


def _parse_energy(r: _Reader, spec: Mapping[str, Any]) -> EnergySpec:
    raw = r.mapping(spec, "energy", "spec") or {}
    p = "spec.energy"
    tele = r.mapping(raw, "telemetry", p) or {}
    tp = f"{p}.telemetry"
    source: TelemetrySource = r.choice(tele, "source", tp, "Prometheus", ("Prometheus", "Direct"))
    url = r.string(tele, "prometheusURL", tp, None)
    if url is not None and not url.startswith(("http://", "https://")):
        r.problem(f"{tp}.prometheusURL", f"{url!r} is not an http(s) URL", "write e.g. http://prometheus:9090")
    telemetry = TelemetrySpec(
        source=source,
        interval_seconds=r.integer(tele, "intervalSeconds", tp, 15, 1, 3600) or 15,
        prometheus_url=url,
    )
    power = _parse_power(r, r.mapping(raw, "power", p) or {}, f"{p}.power")
    budget_raw = r.mapping(raw, "energyBudget", p)
    budget = None
    if budget_raw is not None:
        bp = f"{p}.energyBudget"
        kwh = r.number(budget_raw, "kilowattHours", bp, None, 0, 1e6, exclusive_minimum=True)
        action: BudgetAction = r.choice(budget_raw, "action", bp, "Stop", ("Stop", "Suspend", "Notify"))
        on_forecast: ForecastAction = r.choice(budget_raw, "onForecast", bp, "Notify", ("Notify", "Suspend"))
        if kwh is None:
            r.problem(f"{bp}.kilowattHours", "is required", "set the budget in kWh, e.g. 0.5")
        else:
            budget = EnergyBudgetSpec(kwh, action, on_forecast)
    carbon = _parse_carbon(r, r.mapping(raw, "carbon", p), f"{p}.carbon")
    placement = _parse_placement(r, r.mapping(raw, "placement", p) or {}, f"{p}.placement")
    return EnergySpec(telemetry, power, budget, carbon, placement)


def _parse_power(r: _Reader, raw: Mapping[str, Any], p: str) -> PowerSpec:
    mode: PowerMode = r.choice(raw, "mode", p, "Unmanaged", ("Unmanaged", "Fixed", "Auto"))
    limit = r.integer(raw, "limitWatts", p, None, POWER_BOUNDS.limit_watts.minimum, POWER_BOUNDS.limit_watts.maximum)
    if mode == "Fixed" and limit is None and "limitWatts" not in raw:
        r.problem(f"{p}.limitWatts", "is required by mode Fixed", "set the per-GPU limit in watts, e.g. 300")
    if mode != "Fixed" and "limitWatts" in raw:
        r.problem(f"{p}.limitWatts", f"applies only to mode Fixed (mode is {mode})", "remove it or set mode: Fixed")
    auto = None
    auto_raw = r.mapping(raw, "auto", p)
    if auto_raw is not None and mode != "Auto":
        r.problem(f"{p}.auto", f"applies only to mode Auto (mode is {mode})", "remove it or set mode: Auto")
    if mode == "Auto":
        a = auto_raw or {}
        ap = f"{p}.auto"
        d, b = AUTO_DEFAULTS, AUTO_BOUNDS  # the contract's, which the harness applies too
        auto = AutoPowerSpec(
            eta=r.number(a, "eta", ap, d.eta, b.eta.minimum, b.eta.maximum) or 0.0,
            warmup_steps=r.integer(a, "warmupSteps", ap, d.warmup_steps, b.warmup_steps.minimum, b.warmup_steps.maximum)
            or 0,
            profile_steps=r.integer(
                a, "profileSteps", ap, d.profile_steps, b.profile_steps.minimum, b.profile_steps.maximum
            )
            or b.profile_steps.minimum,
            step_watts=r.integer(a, "stepWatts", ap, d.step_watts, b.step_watts.minimum, b.step_watts.maximum)
            or d.step_watts,
            max_slowdown=r.number(a, "maxSlowdown", ap, d.max_slowdown, b.max_slowdown.minimum, b.max_slowdown.maximum),
        )
    budget = r.integer(
        raw, "budgetWatts", p, None, POWER_BOUNDS.budget_watts.minimum, POWER_BOUNDS.budget_watts.maximum
    )
    return PowerSpec(mode=mode, limit_watts=limit, auto=auto, budget_watts=budget)


def _parse_carbon(r: _Reader, raw: Mapping[str, Any] | None, p: str) -> CarbonSpec | None:
    if raw is None:
        return None
    query = r.string(raw, "intensityQuery", p, None)
    static = r.number(raw, "intensityGramsPerKWh", p, None, 0, 5000)
    if (query is None) == (static is None) and ("intensityQuery" in raw) == ("intensityGramsPerKWh" in raw):
        r.problem(p, "needs exactly one of intensityQuery or intensityGramsPerKWh", "keep one of the two")
    r.choice(raw, "action", p, "Pause", ("Pause",))
    return CarbonSpec(
        intensity_query=query,
        intensity_grams_per_kwh=static,
        max_grams_per_kwh=r.number(raw, "maxGramsPerKWh", p, None, 0, 5000),
        min_dwell_seconds=r.integer(raw, "minDwellSeconds", p, 300, 0, 86400) or 0,
    )


def _parse_placement(r: _Reader, raw: Mapping[str, Any], p: str) -> PlacementSpec:
    pools = raw.get("preferredNodePools", [])
    if not isinstance(pools, list) or not all(isinstance(x, str) for x in pools):
        r.problem(f"{p}.preferredNodePools", "must be a list of strings", "list node pool names")
        pools = []
    return PlacementSpec(
        reschedule_on_power_pressure=r.boolean(raw, "rescheduleOnPowerPressure", p, True),
        node_pool_label=r.string(raw, "nodePoolLabel", p, "efficienttraining.dev/node-pool") or "",
        preferred_node_pools=tuple(pools),
    )


def _parse_compression(r: _Reader, spec: Mapping[str, Any], energy: EnergySpec) -> CompressionSpec:
    raw = r.mapping(spec, "compression", "spec")
    if raw is None:
        return CompressionSpec()
    p = "spec.compression"
    guard = r.mapping(raw, "accuracyGuard", p) or {}
    gp = f"{p}.accuracyGuard"
    drop = COMPRESSION_BOUNDS.max_drop
    max_drop = r.number(guard, "maxDrop", gp, COMPRESSION_DEFAULTS.max_drop, drop.minimum, drop.maximum)
    action: GuardAction = r.choice(guard, "action", gp, "Rollback", ("Rollback", "Stop"))
    stages_raw = raw.get("stages", [])
    if not isinstance(stages_raw, list):
        r.problem(f"{p}.stages", "must be a list", "write a list of stages")
        stages_raw = []
    if len(stages_raw) > COMPRESSION_BOUNDS.max_stages:
        most = COMPRESSION_BOUNDS.max_stages
        r.problem(f"{p}.stages", f"has {len(stages_raw)} stages; at most {most}", "merge or drop stages")
    stages: list[StageSpec] = []
    seen: set[str] = set()
    for i, s in enumerate(stages_raw):
        sp = f"{p}.stages[{i}]"
        if not isinstance(s, Mapping):
            r.problem(sp, "must be an object", "write name, trigger and prune or quantize")
            continue
        stage = _parse_stage(r, s, sp, energy)
        if stage is None:
            continue
        if stage.name in seen:
            r.problem(f"{sp}.name", f"{stage.name!r} repeats", "give each stage a unique name")
        seen.add(stage.name)
        stages.append(stage)
    return CompressionSpec(tuple(stages), max_drop if max_drop is not None else 0.01, action)


def _parse_stage(r: _Reader, s: Mapping[str, Any], sp: str, energy: EnergySpec) -> StageSpec | None:
    name = r.string(s, "name", sp, None)
    if not name or not _DNS_LABEL.match(name) or len(name) > COMPRESSION_BOUNDS.max_name_length:
        r.problem(f"{sp}.name", f"{name!r} is not a DNS label", "use lowercase letters, digits and '-'")
        return None
    trigger = r.mapping(s, "trigger", sp)
    kinds = [k for k in ("epoch", "step", "energyFraction") if trigger and k in trigger]
    if trigger is None or len(kinds) != 1:
        r.problem(f"{sp}.trigger", "needs exactly one of epoch, step or energyFraction", "keep one trigger")
        return None
    kind = kinds[0]
    tp = f"{sp}.trigger"
    value: float | None
    if kind == "energyFraction":
        value = r.number(trigger, kind, tp, None, 0, 1, exclusive_minimum=True)
        if energy.energy_budget is None:
            r.problem(
                f"{tp}.energyFraction",
                "needs spec.energy.energyBudget (the fraction is of that budget)",
                "add spec.energy.energyBudget.kilowattHours or trigger by epoch or step",
            )
    else:
        bounds = COMPRESSION_BOUNDS.epoch if kind == "epoch" else COMPRESSION_BOUNDS.step
        value = r.integer(trigger, kind, tp, None, bounds.minimum, bounds.maximum)
    if value is None:
        return None
    has_prune, has_quant = "prune" in s, "quantize" in s
    if has_prune == has_quant:
        r.problem(sp, "needs exactly one of prune or quantize", "keep one action per stage")
        return None
    if has_prune:
        prune = r.mapping(s, "prune", sp) or {}
        r.number(prune, "amount", f"{sp}.prune", None, 0, 1, exclusive_minimum=True, exclusive_maximum=True)
        if "amount" not in prune:
            r.problem(f"{sp}.prune.amount", "is required", "set the fraction of weights to prune, e.g. 0.5")
        r.choice(prune, "method", f"{sp}.prune", "l1Unstructured", ("l1Unstructured", "lnStructured"))
    else:
        quant = r.mapping(s, "quantize", sp) or {}
        r.choice(quant, "dtype", f"{sp}.quantize", "int8", ("int8",))
    trigger_kind: Literal["epoch", "step", "energyFraction"] = kind  # type: ignore[assignment]
    return StageSpec(name, trigger_kind, value, "prune" if has_prune else "quantize", dict(s))
