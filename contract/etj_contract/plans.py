"""What the operator hands the harness through the pod environment, as typed records, and the numbers both apply.

Two plans travel as JSON in one env var each:

* :class:`PowerPolicy` (with :class:`AutoPolicy`): ``spec.energy.power`` as ``ETJ_POWER_POLICY``.
* :class:`CompressionPlan` (with :class:`CompressionStage`, :class:`StageTrigger`, :class:`PruneSpec`,
  :class:`QuantizeSpec`, :class:`AccuracyGuard`): ``spec.compression`` as ``ETJ_COMPRESSION_PLAN``.

The operator builds a record from its parsed spec (``etj_operator.envvars``; the contract does not know the
operator's models) and sets ``record.to_env()``: canonical JSON, sorted keys, every field stated (the spec's
defaults already applied). The harness reads it back with ``Record.from_env(text)`` (``etj_workload.config``),
which applies the defaults below to absent fields (an older operator, or an env written by hand), checks every
field against the bounds below, ignores keys it does not know (a newer operator's additions), and raises
:class:`PlanError` naming the variable and the field path (``ETJ_POWER_POLICY.auto.eta: ...``). So
``Record.from_env(record.to_env()) == record`` for every record the operator builds.

The defaults, bounds and enumerations are the CRD's (``crds/efficienttrainingjobs.yaml``, ``spec.energy.power``
and ``spec.compression``): the operator applies them when it parses a spec (``etj_operator.models``), the harness
when it reads a plan, so the harness accepts exactly what the API server does; ``tests/contract/test_plans.py``
checks the three agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, get_args

from etj_contract import names as n

__all__ = [
    "AUTO_BOUNDS",
    "AUTO_DEFAULTS",
    "AUTO_KEYS",
    "COMPRESSION_BOUNDS",
    "COMPRESSION_DEFAULTS",
    "COMPRESSION_KEYS",
    "COMPRESSION_STAGE_KEYS",
    "GUARD_ACTIONS",
    "GUARD_KEYS",
    "POWER_BOUNDS",
    "POWER_DEFAULTS",
    "POWER_KEYS",
    "POWER_MODES",
    "PRUNE_KEYS",
    "PRUNE_METHODS",
    "QUANTIZE_DTYPES",
    "QUANTIZE_KEYS",
    "STAGE_ACTIONS",
    "TRIGGER_KINDS",
    "AccuracyGuard",
    "AutoPolicy",
    "AutoPowerBounds",
    "AutoPowerDefaults",
    "CompressionBounds",
    "CompressionDefaults",
    "CompressionPlan",
    "CompressionStage",
    "GuardAction",
    "IntRange",
    "NumberRange",
    "PlanError",
    "PowerBounds",
    "PowerDefaults",
    "PowerMode",
    "PowerPolicy",
    "PruneMethod",
    "PruneSpec",
    "QuantizeDtype",
    "QuantizeSpec",
    "StageAction",
    "StageTrigger",
    "TriggerKind",
]


class PlanError(ValueError):
    """A plan (an env value) the harness cannot use; the message names the variable and the field path.

    ``path`` is that path alone (``ETJ_COMPRESSION_PLAN.stages[1].prune.amount``), empty where the message was
    given whole. ``etj_workload.config.ConfigError`` is this class.
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --- ranges --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntRange:
    """An inclusive range of integers (the CRD's ``minimum`` and ``maximum``)."""

    minimum: int
    maximum: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.minimum <= value <= self.maximum

    def __str__(self) -> str:
        return f"{self.minimum}..{self.maximum}"


@dataclass(frozen=True)
class NumberRange:
    """A range of numbers (the CRD's ``minimum``/``maximum``, with ``exclusiveMinimum``/``exclusiveMaximum``)."""

    minimum: float
    maximum: float
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        below = value < self.maximum if self.exclusive_maximum else value <= self.maximum
        return above and below

    def __str__(self) -> str:
        if not (self.exclusive_minimum or self.exclusive_maximum):
            return f"{self.minimum:g}..{self.maximum:g}"
        left, right = "(" if self.exclusive_minimum else "[", ")" if self.exclusive_maximum else "]"
        return f"{left}{self.minimum:g}, {self.maximum:g}{right}"


# --- enumerations (the CRD's enums) --------------------------------------------------------------------------
PowerMode = Literal["Unmanaged", "Fixed", "Auto"]
TriggerKind = Literal["epoch", "step", "energyFraction"]
StageAction = Literal["prune", "quantize"]
PruneMethod = Literal["l1Unstructured", "lnStructured"]
QuantizeDtype = Literal["int8"]
GuardAction = Literal["Rollback", "Stop"]

#: ``spec.energy.power.mode``: Unmanaged leaves the limits alone, Fixed sets ``limitWatts``, Auto profiles.
POWER_MODES: Final[tuple[PowerMode, ...]] = get_args(PowerMode)
#: The keys of a stage's ``trigger``, of which a trigger holds exactly one.
TRIGGER_KINDS: Final[tuple[TriggerKind, ...]] = get_args(TriggerKind)
#: The keys of a stage's action, of which a stage holds exactly one.
STAGE_ACTIONS: Final[tuple[StageAction, ...]] = get_args(StageAction)
#: ``prune.method``: ``torch.nn.utils.prune``'s l1_unstructured or ln_structured.
PRUNE_METHODS: Final[tuple[PruneMethod, ...]] = get_args(PruneMethod)
#: ``quantize.dtype``: int8 weight-only is the one supported.
QUANTIZE_DTYPES: Final[tuple[QuantizeDtype, ...]] = get_args(QuantizeDtype)
#: ``accuracyGuard.action``: roll the stage back, or roll it back and stop the job.
GUARD_ACTIONS: Final[tuple[GuardAction, ...]] = get_args(GuardAction)


# --- defaults and bounds (the CRD's default, minimum, maximum, maxItems, maxLength, pattern) -------------------
@dataclass(frozen=True)
class AutoPowerDefaults:
    """What applies when a field of ``spec.energy.power.auto`` is absent (the CRD's ``default``)."""

    #: Weight of energy against time in the cost ``eta*E + (1-eta)*P_max*T`` (1 = energy only).
    eta: float = 0.5
    #: Unmeasured steps before profiling (more while the step time still speeds up), up to 2 after a limit change.
    warmup_steps: int = 5
    #: The least measured steps at a limit (in windows of half of it); noisy step times get more.
    profile_steps: int = 10
    #: The grid the limits are searched on (W); a final fine step refines the choice to 1 W.
    step_watts: int = 25
    #: Optional: step time at most this factor of the step time at the maximum limit; None: no constraint.
    max_slowdown: float | None = None


@dataclass(frozen=True)
class AutoPowerBounds:
    """The inclusive bounds of each field of ``spec.energy.power.auto``."""

    eta: NumberRange = NumberRange(0.0, 1.0)
    warmup_steps: IntRange = IntRange(0, 100_000)
    profile_steps: IntRange = IntRange(1, 100_000)
    step_watts: IntRange = IntRange(5, 500)
    max_slowdown: NumberRange = NumberRange(1.0, 10.0)


@dataclass(frozen=True)
class PowerDefaults:
    """What applies when a field of ``spec.energy.power`` is absent (``limitWatts``, ``budgetWatts``: none)."""

    mode: PowerMode = "Unmanaged"


@dataclass(frozen=True)
class PowerBounds:
    """The inclusive bounds of the numbers of ``spec.energy.power`` (``auto``'s are :class:`AutoPowerBounds`)."""

    #: Per-GPU limit of mode Fixed (W); the harness clamps it to the GPU's own range.
    limit_watts: IntRange = IntRange(50, 2000)
    #: Job-wide ceiling (W).
    budget_watts: IntRange = IntRange(1, 10_000_000)


@dataclass(frozen=True)
class CompressionDefaults:
    """What applies when a field of ``spec.compression`` is absent (the CRD's ``default``)."""

    prune_method: PruneMethod = "l1Unstructured"
    quantize_dtype: QuantizeDtype = "int8"
    #: Largest accuracy drop a stage may cause (fraction: 0.01 = one percentage point).
    max_drop: float = 0.01
    guard_action: GuardAction = "Rollback"


@dataclass(frozen=True)
class CompressionBounds:
    """The bounds of ``spec.compression``: list and name limits, trigger values, prune amount, guard."""

    #: ``stages`` holds at most this many (``maxItems``).
    max_stages: int = 16
    #: A stage's name is a DNS label: at most this long (``maxLength``), matching :attr:`name_pattern`.
    max_name_length: int = 63
    name_pattern: str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    #: ``trigger.epoch``: once this many epochs are complete.
    epoch: IntRange = IntRange(1, 1_000_000)
    #: ``trigger.step``: once this many global steps are done.
    step: IntRange = IntRange(1, 1_000_000_000)
    #: ``trigger.energyFraction``: once this fraction of ``spec.energy.energyBudget`` is used.
    energy_fraction: NumberRange = NumberRange(0.0, 1.0, exclusive_minimum=True)
    #: ``prune.amount``: the fraction of each weight tensor removed.
    prune_amount: NumberRange = NumberRange(0.0, 1.0, exclusive_minimum=True, exclusive_maximum=True)
    #: ``accuracyGuard.maxDrop``.
    max_drop: NumberRange = NumberRange(0.0, 1.0)

    def trigger(self, kind: TriggerKind) -> IntRange | NumberRange:
        """The bounds of a trigger of ``kind``."""
        if kind == "epoch":
            return self.epoch
        if kind == "step":
            return self.step
        return self.energy_fraction


AUTO_DEFAULTS: Final = AutoPowerDefaults()
AUTO_BOUNDS: Final = AutoPowerBounds()
POWER_DEFAULTS: Final = PowerDefaults()
POWER_BOUNDS: Final = PowerBounds()
COMPRESSION_DEFAULTS: Final = CompressionDefaults()
COMPRESSION_BOUNDS: Final = CompressionBounds()

# --- the camelCase key of each field (the spec's and the env's; attribute -> key) ----------------------------
#: ``spec.energy.power.auto`` and ``ETJ_POWER_POLICY``'s ``auto``.
AUTO_KEYS: Final[dict[str, str]] = {
    "eta": "eta",
    "warmup_steps": "warmupSteps",
    "profile_steps": "profileSteps",
    "step_watts": "stepWatts",
    "max_slowdown": "maxSlowdown",
}
#: ``spec.energy.power`` and ``ETJ_POWER_POLICY``.
POWER_KEYS: Final[dict[str, str]] = {
    "mode": "mode",
    "limit_watts": "limitWatts",
    "auto": "auto",
    "budget_watts": "budgetWatts",
}
#: ``spec.compression`` and ``ETJ_COMPRESSION_PLAN``.
COMPRESSION_KEYS: Final[dict[str, str]] = {"stages": "stages", "guard": "accuracyGuard"}
#: An item of ``stages``.
COMPRESSION_STAGE_KEYS: Final[dict[str, str]] = {
    "name": "name",
    "trigger": "trigger",
    "prune": "prune",
    "quantize": "quantize",
}
#: A stage's ``prune``.
PRUNE_KEYS: Final[dict[str, str]] = {"amount": "amount", "method": "method"}
#: A stage's ``quantize``.
QUANTIZE_KEYS: Final[dict[str, str]] = {"dtype": "dtype"}
#: ``accuracyGuard``.
GUARD_KEYS: Final[dict[str, str]] = {"max_drop": "maxDrop", "action": "action"}

_NAME: Final = re.compile(COMPRESSION_BOUNDS.name_pattern)
_TRIGGER_ATTRS: Final[dict[TriggerKind, str]] = {"epoch": "epoch", "step": "step", "energyFraction": "energy_fraction"}


# --- reading JSON values, naming the path at fault -----------------------------------------------------------
def _fail(path: str, message: str) -> NoReturn:
    raise PlanError(message, path)


def _decode(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(f"not valid JSON ({e})", where) from e


def _object(value: Any, path: str, what: str = "expected an object") -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _fail(path, what)
    return value


def _integer(value: Any, path: str, bounds: IntRange | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(path, f"expected an integer, got {value!r}")
    if bounds is not None and value not in bounds:
        _fail(path, f"must be within {bounds}, got {value}")
    return int(value)


def _number(value: Any, path: str, bounds: NumberRange | None = None) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        _fail(path, f"expected a number, got {value!r}")
    if bounds is not None and value not in bounds:
        _fail(path, f"must be within {bounds}, got {value}")
    return float(value)


def _choice(value: Any, path: str, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        _fail(path, f"must be {'|'.join(allowed)}, got {value!r}")
    return value


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


# --- ETJ_POWER_POLICY ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoPolicy:
    """Parameters of the Zeus-style Auto profiler (``spec.energy.power.auto``).

    ``eta`` weighs energy against time in the cost ``eta*E + (1-eta)*P_max*T``; ``max_slowdown`` (e.g. 1.1)
    instead restricts the choice to limits whose step time is at most that factor of the max-limit time.
    The defaults are the CRD's (:data:`AUTO_DEFAULTS`).
    """

    eta: float = AUTO_DEFAULTS.eta
    warmup_steps: int = AUTO_DEFAULTS.warmup_steps
    profile_steps: int = AUTO_DEFAULTS.profile_steps
    step_watts: int = AUTO_DEFAULTS.step_watts
    max_slowdown: float | None = AUTO_DEFAULTS.max_slowdown

    def to_json(self) -> dict[str, Any]:
        """The ``auto`` object: every key, ``maxSlowdown`` null when unset."""
        return {key: getattr(self, attr) for attr, key in AUTO_KEYS.items()}

    @classmethod
    def from_json(cls, data: Any, path: str) -> AutoPolicy:
        """Read an ``auto`` object (null or absent keys: the defaults); ``path`` names it in errors."""
        raw = _object(data or {}, path)
        d, b, k = AUTO_DEFAULTS, AUTO_BOUNDS, AUTO_KEYS
        max_slowdown = raw.get(k["max_slowdown"], d.max_slowdown)
        return cls(
            eta=_number(raw.get(k["eta"], d.eta), f"{path}.{k['eta']}", b.eta),
            warmup_steps=_integer(
                raw.get(k["warmup_steps"], d.warmup_steps), f"{path}.{k['warmup_steps']}", b.warmup_steps
            ),
            profile_steps=_integer(
                raw.get(k["profile_steps"], d.profile_steps), f"{path}.{k['profile_steps']}", b.profile_steps
            ),
            step_watts=_integer(raw.get(k["step_watts"], d.step_watts), f"{path}.{k['step_watts']}", b.step_watts),
            max_slowdown=None
            if max_slowdown is None
            else _number(max_slowdown, f"{path}.{k['max_slowdown']}", b.max_slowdown),
        )


@dataclass(frozen=True)
class PowerPolicy:
    """``spec.energy.power``, handed over as ``ETJ_POWER_POLICY``.

    ``auto`` always holds the profiler's parameters (the defaults unless mode is Auto); it is written to the
    env only in mode Auto. ``budget_watts`` is the job-wide ceiling, which the operator enforces through
    ``status.control`` (the harness reads it but does not act on it; a change of it restarts no pod).
    """

    mode: PowerMode = POWER_DEFAULTS.mode
    limit_watts: int | None = None
    auto: AutoPolicy = field(default_factory=AutoPolicy)
    budget_watts: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object: ``mode``, ``budgetWatts`` (null when unset), ``limitWatts`` when set, ``auto`` in Auto."""
        k = POWER_KEYS
        data: dict[str, Any] = {k["mode"]: self.mode, k["budget_watts"]: self.budget_watts}
        if self.limit_watts is not None:
            data[k["limit_watts"]] = self.limit_watts
        if self.mode == "Auto":
            data[k["auto"]] = self.auto.to_json()
        return data

    def to_env(self) -> str:
        """The value of ``ETJ_POWER_POLICY``: canonical JSON (sorted keys)."""
        return _dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str = n.ENV_ETJ_POWER_POLICY) -> PowerPolicy:
        """Read the decoded JSON object; errors name ``where`` and the field."""
        raw = _object(data, where, "expected a JSON object")
        k, b = POWER_KEYS, POWER_BOUNDS
        mode: PowerMode = _choice(raw.get(k["mode"], POWER_DEFAULTS.mode), f"{where}.{k['mode']}", POWER_MODES)
        limit_raw = raw.get(k["limit_watts"])
        limit = None if limit_raw is None else _integer(limit_raw, f"{where}.{k['limit_watts']}", b.limit_watts)
        if mode == "Fixed" and limit is None:
            _fail(f"{where}.{k['limit_watts']}", "required when mode is Fixed")
        budget_raw = raw.get(k["budget_watts"])
        budget = None if budget_raw is None else _integer(budget_raw, f"{where}.{k['budget_watts']}", b.budget_watts)
        auto = AutoPolicy.from_json(raw.get(k["auto"]), f"{where}.{k['auto']}")
        return cls(mode=mode, limit_watts=limit, auto=auto, budget_watts=budget)

    @classmethod
    def from_env(cls, text: str | None, where: str = n.ENV_ETJ_POWER_POLICY) -> PowerPolicy:
        """Parse ``ETJ_POWER_POLICY``; unset or empty means Unmanaged."""
        if not text:
            return cls()
        return cls.from_json(_decode(text, where), where)


# --- ETJ_COMPRESSION_PLAN ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageTrigger:
    """When a stage fires: exactly one field is set (:attr:`kind` names it, :attr:`value` holds it).

    ``epoch``: once that many epochs are done (an epoch equal to the job's epoch count fires after training);
    ``step``: once that many global steps are done; ``energy_fraction``: the operator (its one owner) requests
    the stage through ``status.control.stageRequested`` once the job has used that fraction of its energy
    budget, and the harness applies what is requested.
    """

    epoch: int | None = None
    step: int | None = None
    energy_fraction: float | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.epoch, self.step, self.energy_fraction)) != 1:
            raise PlanError("needs exactly one of epoch, step or energy_fraction", type(self).__name__)

    @classmethod
    def of(cls, kind: TriggerKind, value: float) -> StageTrigger:
        """The trigger of ``kind`` (a key of :data:`TRIGGER_KINDS`) at ``value``."""
        if kind == "epoch":
            return cls(epoch=int(value))
        if kind == "step":
            return cls(step=int(value))
        if kind == "energyFraction":
            return cls(energy_fraction=float(value))
        raise PlanError(f"unknown trigger kind {kind!r}; use {'|'.join(TRIGGER_KINDS)}", cls.__name__)

    @property
    def kind(self) -> TriggerKind:
        """The key of the field that is set."""
        return next(kind for kind, attr in _TRIGGER_ATTRS.items() if getattr(self, attr) is not None)

    @property
    def value(self) -> float:
        """The value of the field that is set (an int for epoch and step)."""
        value: float = getattr(self, _TRIGGER_ATTRS[self.kind])
        return value

    def to_json(self) -> dict[str, Any]:
        """The ``trigger`` object: its one key."""
        return {self.kind: self.value}

    @classmethod
    def from_json(cls, data: Any, path: str) -> StageTrigger:
        """Read a ``trigger`` object: exactly one known key, its value within the CRD's bounds."""
        if not isinstance(data, dict) or len(data) != 1:
            _fail(path, f"expected exactly one of {', '.join(TRIGGER_KINDS)}")
        ((kind, value),) = data.items()
        if kind not in TRIGGER_KINDS:
            _fail(path, f"unknown trigger {sorted(data)}; use epoch, step or energyFraction")
        bounds = COMPRESSION_BOUNDS.trigger(kind)
        if isinstance(bounds, IntRange):
            return cls.of(kind, _integer(value, f"{path}.{kind}", bounds))
        return cls.of(kind, _number(value, f"{path}.{kind}", bounds))


@dataclass(frozen=True)
class PruneSpec:
    """Prune ``amount`` (0 < amount < 1) of each weight tensor with ``method``."""

    amount: float
    method: PruneMethod = COMPRESSION_DEFAULTS.prune_method

    def to_json(self) -> dict[str, Any]:
        """The ``prune`` object, ``method`` always stated."""
        return {PRUNE_KEYS["amount"]: self.amount, PRUNE_KEYS["method"]: self.method}

    @classmethod
    def from_json(cls, data: Any, path: str) -> PruneSpec:
        """Read a ``prune`` object (``amount`` required)."""
        raw = _object(data, path)
        amount_key, method_key = PRUNE_KEYS["amount"], PRUNE_KEYS["method"]
        amount = _number(raw.get(amount_key), f"{path}.{amount_key}", COMPRESSION_BOUNDS.prune_amount)
        method = _choice(raw.get(method_key, COMPRESSION_DEFAULTS.prune_method), f"{path}.{method_key}", PRUNE_METHODS)
        return cls(amount, method)


@dataclass(frozen=True)
class QuantizeSpec:
    """Quantize weights to ``dtype`` (only int8 weight-only is supported)."""

    dtype: QuantizeDtype = COMPRESSION_DEFAULTS.quantize_dtype

    def to_json(self) -> dict[str, Any]:
        """The ``quantize`` object, ``dtype`` always stated."""
        return {QUANTIZE_KEYS["dtype"]: self.dtype}

    @classmethod
    def from_json(cls, data: Any, path: str) -> QuantizeSpec:
        """Read a ``quantize`` object."""
        raw = _object(data, path)
        key = QUANTIZE_KEYS["dtype"]
        return cls(_choice(raw.get(key, COMPRESSION_DEFAULTS.quantize_dtype), f"{path}.{key}", QUANTIZE_DTYPES))


@dataclass(frozen=True)
class CompressionStage:
    """One stage of the plan: a name (a DNS label), a trigger, and exactly one of ``prune`` or ``quantize``."""

    name: str
    trigger: StageTrigger
    prune: PruneSpec | None = None
    quantize: QuantizeSpec | None = None

    def __post_init__(self) -> None:
        if (self.prune is None) == (self.quantize is None):
            raise PlanError("needs exactly one of prune or quantize", f"{type(self).__name__} {self.name!r}")

    @property
    def action(self) -> StageAction:
        """``prune`` or ``quantize``."""
        return "prune" if self.prune is not None else "quantize"

    def to_json(self) -> dict[str, Any]:
        """The stage object."""
        k = COMPRESSION_STAGE_KEYS
        data: dict[str, Any] = {k["name"]: self.name, k["trigger"]: self.trigger.to_json()}
        if self.prune is not None:
            data[k["prune"]] = self.prune.to_json()
        if self.quantize is not None:
            data[k["quantize"]] = self.quantize.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any, path: str) -> CompressionStage:
        """Read a stage object."""
        raw = _object(data, path)
        k, b = COMPRESSION_STAGE_KEYS, COMPRESSION_BOUNDS
        name = raw.get(k["name"])
        if not isinstance(name, str) or not name:
            _fail(f"{path}.{k['name']}", "required non-empty string")
        if len(name) > b.max_name_length or not _NAME.match(name):
            _fail(
                f"{path}.{k['name']}",
                f"must be a DNS label of at most {b.max_name_length} characters "
                f"(lowercase letters, digits and '-'), got {name!r}",
            )
        trigger = StageTrigger.from_json(raw.get(k["trigger"]), f"{path}.{k['trigger']}")
        has_prune, has_quantize = k["prune"] in raw, k["quantize"] in raw
        if has_prune == has_quantize:
            _fail(path, "needs exactly one of prune or quantize")
        if has_prune:
            return cls(name, trigger, prune=PruneSpec.from_json(raw[k["prune"]], f"{path}.{k['prune']}"))
        return cls(name, trigger, quantize=QuantizeSpec.from_json(raw[k["quantize"]], f"{path}.{k['quantize']}"))


@dataclass(frozen=True)
class AccuracyGuard:
    """Roll a stage back (or stop) when accuracy drops by more than ``max_drop`` (fraction, 0.01 = 1 point)."""

    max_drop: float = COMPRESSION_DEFAULTS.max_drop
    action: GuardAction = COMPRESSION_DEFAULTS.guard_action

    def to_json(self) -> dict[str, Any]:
        """The ``accuracyGuard`` object, every key."""
        return {GUARD_KEYS["max_drop"]: self.max_drop, GUARD_KEYS["action"]: self.action}

    @classmethod
    def from_json(cls, data: Any, path: str) -> AccuracyGuard:
        """Read an ``accuracyGuard`` object (null or absent keys: the defaults)."""
        raw = _object(data or {}, path)
        drop_key, action_key = GUARD_KEYS["max_drop"], GUARD_KEYS["action"]
        d = COMPRESSION_DEFAULTS
        return cls(
            max_drop=_number(raw.get(drop_key, d.max_drop), f"{path}.{drop_key}", COMPRESSION_BOUNDS.max_drop),
            action=_choice(raw.get(action_key, d.guard_action), f"{path}.{action_key}", GUARD_ACTIONS),
        )


@dataclass(frozen=True)
class CompressionPlan:
    """``spec.compression``, handed over as ``ETJ_COMPRESSION_PLAN``: the stages in order and the guard.

    The operator sets the variable only when there are stages; unset or empty means no stages.
    """

    stages: tuple[CompressionStage, ...] = ()
    guard: AccuracyGuard = field(default_factory=AccuracyGuard)

    def stage(self, name: str) -> CompressionStage | None:
        """Return the stage called ``name``, or None."""
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``{"stages": [...], "accuracyGuard": {...}}``."""
        return {
            COMPRESSION_KEYS["stages"]: [s.to_json() for s in self.stages],
            COMPRESSION_KEYS["guard"]: self.guard.to_json(),
        }

    def to_env(self) -> str:
        """The value of ``ETJ_COMPRESSION_PLAN``: canonical JSON (sorted keys)."""
        return _dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str = n.ENV_ETJ_COMPRESSION_PLAN) -> CompressionPlan:
        """Read the decoded JSON: the object, or a bare list of stages; errors name ``where`` and the field."""
        if isinstance(data, list):
            data = {COMPRESSION_KEYS["stages"]: data}
        raw = _object(data, where, "expected a JSON object")
        stages_key, guard_key = COMPRESSION_KEYS["stages"], COMPRESSION_KEYS["guard"]
        stages_raw = raw.get(stages_key) or []
        if not isinstance(stages_raw, list):
            _fail(f"{where}.{stages_key}", "expected a list")
        if len(stages_raw) > COMPRESSION_BOUNDS.max_stages:
            _fail(f"{where}.{stages_key}", f"at most {COMPRESSION_BOUNDS.max_stages} stages, got {len(stages_raw)}")
        stages = tuple(CompressionStage.from_json(s, f"{where}.{stages_key}[{i}]") for i, s in enumerate(stages_raw))
        names = [s.name for s in stages]
        if len(names) != len(set(names)):
            _fail(f"{where}.{stages_key}", f"stage names must be unique: {names}")
        return cls(stages, AccuracyGuard.from_json(raw.get(guard_key), f"{where}.{guard_key}"))

    @classmethod
    def from_env(cls, text: str | None, where: str = n.ENV_ETJ_COMPRESSION_PLAN) -> CompressionPlan:
        """Parse ``ETJ_COMPRESSION_PLAN``; unset or empty means no stages."""
        if not text:
            return cls()
        return cls.from_json(_decode(text, where), where)
