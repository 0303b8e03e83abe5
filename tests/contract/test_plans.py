"""etj_contract.plans: one definition of the plans handed to the harness, and of their defaults and bounds.

The CRD, the operator's parser and the harness's reader apply the same defaults, bounds and enumerations; the
value the operator sets is the record it built, byte for byte, and the harness reads that record back.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from etj_contract import names
from etj_contract.plans import (
    AUTO_BOUNDS,
    AUTO_DEFAULTS,
    AUTO_KEYS,
    COMPRESSION_BOUNDS,
    COMPRESSION_DEFAULTS,
    COMPRESSION_KEYS,
    COMPRESSION_STAGE_KEYS,
    GUARD_ACTIONS,
    GUARD_KEYS,
    POWER_BOUNDS,
    POWER_DEFAULTS,
    POWER_KEYS,
    POWER_MODES,
    PRUNE_KEYS,
    PRUNE_METHODS,
    QUANTIZE_DTYPES,
    QUANTIZE_KEYS,
    STAGE_ACTIONS,
    TRIGGER_KINDS,
    AccuracyGuard,
    CompressionPlan,
    CompressionStage,
    IntRange,
    NumberRange,
    PlanError,
    PowerPolicy,
    PruneSpec,
    QuantizeSpec,
    StageTrigger,
)
from etj_operator.envvars import EnvContext, compression_plan_of, power_env, power_policy_of, worker_env
from etj_operator.models import AutoPowerSpec, InvalidSpecError, parse_spec
from etj_workload import config
from etj_workload.config import AutoPolicy, ConfigError, parse_compression_plan, parse_power_policy

from jobs import job_manifest

FIELDS = [f.name for f in dataclasses.fields(AUTO_DEFAULTS)]


def _auto_schema(schema: dict[str, Any]) -> dict[str, Any]:
    power = schema["properties"]["spec"]["properties"]["energy"]["properties"]["power"]
    auto: dict[str, Any] = power["properties"]["auto"]["properties"]
    return auto


def test_the_keys_are_the_crds_and_cover_every_field(schema: dict[str, Any]) -> None:
    assert list(AUTO_KEYS) == FIELDS == [f.name for f in dataclasses.fields(AUTO_BOUNDS)]
    assert set(AUTO_KEYS.values()) == _auto_schema(schema).keys()


@pytest.mark.parametrize("field", FIELDS)
def test_the_crds_default_minimum_and_maximum_are_the_contracts(schema: dict[str, Any], field: str) -> None:
    prop = _auto_schema(schema)[AUTO_KEYS[field]]
    default = getattr(AUTO_DEFAULTS, field)
    bounds = getattr(AUTO_BOUNDS, field)
    assert prop.get("default") == default  # absent in the CRD where the contract's default is None
    assert (prop["minimum"], prop["maximum"]) == (bounds.minimum, bounds.maximum)
    assert prop["type"] == ("integer" if isinstance(bounds, IntRange) else "number")
    assert default is None or default in bounds


def test_the_operators_and_the_harness_defaults_are_the_contracts() -> None:
    expected = dataclasses.asdict(AUTO_DEFAULTS)
    assert dataclasses.asdict(AutoPowerSpec()) == expected
    assert dataclasses.asdict(AutoPolicy()) == expected
    spec = parse_spec(job_manifest(energy={"power": {"mode": "Auto"}})["spec"], "digits")
    assert spec.energy.power.auto is not None and dataclasses.asdict(spec.energy.power.auto) == expected
    assert dataclasses.asdict(parse_power_policy('{"mode": "Auto"}').auto) == expected
    assert dataclasses.asdict(parse_power_policy('{"mode": "Auto", "auto": {}}').auto) == expected


def _edges(bounds: IntRange | NumberRange) -> tuple[list[float], list[float]]:
    """Values inside (the bounds themselves) and just outside."""
    step = 1 if isinstance(bounds, IntRange) else 0.01
    return [bounds.minimum, bounds.maximum], [bounds.minimum - step, bounds.maximum + step]


def _operator_accepts(key: str, value: float) -> bool:
    manifest = job_manifest(energy={"power": {"mode": "Auto", "auto": {key: value}}})
    try:
        parse_spec(manifest["spec"], "digits")
    except InvalidSpecError as e:
        assert any(key in p.path for p in e.problems), e
        return False
    return True


def _harness_accepts(key: str, value: float) -> bool:
    try:
        parse_power_policy(json.dumps({"mode": "Auto", "auto": {key: value}}))
    except ConfigError as e:
        assert key in str(e)
        return False
    return True


@pytest.mark.parametrize("field", FIELDS)
def test_the_operator_and_the_harness_accept_the_same_values(field: str) -> None:
    key, bounds = AUTO_KEYS[field], getattr(AUTO_BOUNDS, field)
    inside, outside = _edges(bounds)
    for value in inside:
        assert _operator_accepts(key, value) and _harness_accepts(key, value), (key, value)
        assert value in bounds
    for value in outside:
        assert not _operator_accepts(key, value) and not _harness_accepts(key, value), (key, value)
        assert value not in bounds


def test_what_the_operator_hands_over_the_harness_reads_back() -> None:
    auto = {"eta": 0.25, "warmupSteps": 0, "profileSteps": 3, "stepWatts": 5, "maxSlowdown": 1.5}
    spec = parse_spec(job_manifest(energy={"power": {"mode": "Auto", "auto": auto}})["spec"], "digits")
    ctx = EnvContext(job_name="digits", namespace="ml", spec=spec, replica_index=0, gang_generation=0)
    (var,) = power_env(ctx)
    policy = parse_power_policy(var["value"])
    assert spec.energy.power.auto is not None
    assert dataclasses.asdict(policy.auto) == dataclasses.asdict(spec.energy.power.auto)
    assert {AUTO_KEYS[k]: v for k, v in dataclasses.asdict(policy.auto).items()} == auto


def test_ranges_hold_numbers_not_booleans() -> None:
    assert True not in IntRange(0, 5) and 3 in IntRange(0, 5) and 3.0 not in IntRange(0, 5)
    assert 0.5 in NumberRange(0.0, 1.0) and 1 in NumberRange(0.0, 1.0) and "0.5" not in NumberRange(0.0, 1.0)
    assert str(AUTO_BOUNDS.step_watts) == "5..500" and str(AUTO_BOUNDS.eta) == "0..1"


# --- the plans: what the operator builds is what the harness reads ------------------------------------------
def _env(manifest_spec: dict[str, Any]) -> tuple[dict[str, str], Any]:
    spec = parse_spec(job_manifest(**manifest_spec)["spec"], "digits")
    ctx = EnvContext(job_name="digits", namespace="ml", spec=spec, replica_index=1, gang_generation=2)
    return {v["name"]: v["value"] for v in worker_env(ctx)}, spec


POWER_CASES: list[tuple[str, dict[str, Any], PowerPolicy]] = [
    ("no power section", {}, PowerPolicy()),
    ("Unmanaged", {"mode": "Unmanaged"}, PowerPolicy("Unmanaged")),
    ("Unmanaged with a budget", {"budgetWatts": 1200}, PowerPolicy("Unmanaged", budget_watts=1200)),
    ("Fixed", {"mode": "Fixed", "limitWatts": 300}, PowerPolicy("Fixed", limit_watts=300)),
    (
        "Fixed at the bounds, with a budget",
        {"mode": "Fixed", "limitWatts": 2000, "budgetWatts": 10_000_000},
        PowerPolicy("Fixed", limit_watts=2000, budget_watts=10_000_000),
    ),
    ("Auto, defaults", {"mode": "Auto"}, PowerPolicy("Auto")),
    ("Auto, empty auto", {"mode": "Auto", "auto": {}}, PowerPolicy("Auto", auto=AutoPolicy())),
    (
        "Auto without maxSlowdown",
        {"mode": "Auto", "auto": {"eta": 0.8, "warmupSteps": 0, "profileSteps": 3, "stepWatts": 50}},
        PowerPolicy("Auto", auto=AutoPolicy(0.8, 0, 3, 50, None)),
    ),
    (
        "Auto with maxSlowdown and a budget",
        {"mode": "Auto", "auto": {"eta": 0, "maxSlowdown": 1.1}, "budgetWatts": 900},
        PowerPolicy("Auto", auto=AutoPolicy(eta=0.0, max_slowdown=1.1), budget_watts=900),
    ),
    (
        "Auto at the upper bounds",
        {"mode": "Auto", "auto": {"eta": 1, "warmupSteps": 100_000, "profileSteps": 100_000, "stepWatts": 500,
                                  "maxSlowdown": 10}},
        PowerPolicy("Auto", auto=AutoPolicy(1.0, 100_000, 100_000, 500, 10.0)),
    ),
]


@pytest.mark.parametrize(("name", "power", "expected"), POWER_CASES, ids=[c[0] for c in POWER_CASES])
def test_the_harness_reads_back_the_power_policy_the_operator_built(
    name: str, power: dict[str, Any], expected: PowerPolicy
) -> None:
    env, spec = _env({"energy": {"power": power}} if power else {})
    built = power_policy_of(spec.energy.power)
    assert built == expected
    value = env[names.ENV_ETJ_POWER_POLICY]
    assert value == built.to_env()
    assert PowerPolicy.from_env(value) == built
    assert parse_power_policy(value) == built  # the harness's name for it
    assert config.HarnessEnv.from_env(env).power == built
    assert json.loads(value).keys() <= set(POWER_KEYS.values())


def _prune(name: str, trigger: dict[str, Any], **prune: Any) -> dict[str, Any]:
    return {"name": name, "trigger": trigger, "prune": prune}


COMPRESSION_CASES: list[tuple[str, dict[str, Any], CompressionPlan]] = [
    (
        "prune by epoch, defaults",
        {"stages": [_prune("p", {"epoch": 1}, amount=0.5)]},
        CompressionPlan((CompressionStage("p", StageTrigger(epoch=1), prune=PruneSpec(0.5)),)),
    ),
    (
        "prune by step, lnStructured, guard Stop",
        {
            "stages": [_prune("s", {"step": 300}, amount=0.2, method="lnStructured")],
            "accuracyGuard": {"maxDrop": 0.05, "action": "Stop"},
        },
        CompressionPlan(
            (CompressionStage("s", StageTrigger(step=300), prune=PruneSpec(0.2, "lnStructured")),),
            AccuracyGuard(0.05, "Stop"),
        ),
    ),
    (
        "quantize by energyFraction, dtype left out",
        {"stages": [{"name": "q", "trigger": {"energyFraction": 0.5}, "quantize": {}}]},
        CompressionPlan((CompressionStage("q", StageTrigger(energy_fraction=0.5), quantize=QuantizeSpec()),)),
    ),
    (
        "every trigger kind and both actions, in order",
        {
            "stages": [
                _prune("prune-early", {"epoch": 2}, amount=0.3, method="l1Unstructured"),
                _prune("prune-late", {"energyFraction": 1}, amount=0.9),
                {"name": "int8", "trigger": {"step": 1_000_000_000}, "quantize": {"dtype": "int8"}},
            ],
            "accuracyGuard": {"maxDrop": 0},
        },
        CompressionPlan(
            (
                CompressionStage("prune-early", StageTrigger(epoch=2), prune=PruneSpec(0.3)),
                CompressionStage("prune-late", StageTrigger(energy_fraction=1.0), prune=PruneSpec(0.9)),
                CompressionStage("int8", StageTrigger(step=1_000_000_000), quantize=QuantizeSpec("int8")),
            ),
            AccuracyGuard(0.0, "Rollback"),
        ),
    ),
    (
        "the most stages",
        {"stages": [_prune(f"s{i}", {"epoch": i + 1}, amount=0.1) for i in range(COMPRESSION_BOUNDS.max_stages)]},
        CompressionPlan(
            tuple(
                CompressionStage(f"s{i}", StageTrigger(epoch=i + 1), prune=PruneSpec(0.1))
                for i in range(COMPRESSION_BOUNDS.max_stages)
            )
        ),
    ),
]


@pytest.mark.parametrize(("name", "compression", "expected"), COMPRESSION_CASES, ids=[c[0] for c in COMPRESSION_CASES])
def test_the_harness_reads_back_the_compression_plan_the_operator_built(
    name: str, compression: dict[str, Any], expected: CompressionPlan
) -> None:
    env, spec = _env({"energy": {"energyBudget": {"kilowattHours": 1.0}}, "compression": compression})
    built = compression_plan_of(spec.compression)
    assert built == expected
    value = env[names.ENV_ETJ_COMPRESSION_PLAN]
    assert value == built.to_env()
    assert CompressionPlan.from_env(value) == built
    assert parse_compression_plan(value) == built
    assert config.HarnessEnv.from_env(env).compression == built


def test_no_stages_sets_no_plan_and_the_harness_reads_none() -> None:
    env, spec = _env({"compression": {"accuracyGuard": {"action": "Stop"}}})
    assert names.ENV_ETJ_COMPRESSION_PLAN not in env
    assert compression_plan_of(spec.compression).stages == ()
    assert CompressionPlan.from_env(None) == CompressionPlan.from_env("") == CompressionPlan()
    assert PowerPolicy.from_env(None) == PowerPolicy.from_env("") == PowerPolicy()


def test_the_env_value_is_canonical_json() -> None:
    plan = CompressionPlan((CompressionStage("p", StageTrigger(step=3), prune=PruneSpec(0.5)),))
    assert plan.to_env() == (
        '{"accuracyGuard": {"action": "Rollback", "maxDrop": 0.01}, '
        '"stages": [{"name": "p", "prune": {"amount": 0.5, "method": "l1Unstructured"}, "trigger": {"step": 3}}]}'
    )
    assert PowerPolicy("Fixed", limit_watts=300).to_env() == '{"budgetWatts": null, "limitWatts": 300, "mode": "Fixed"}'
    assert json.loads(PowerPolicy("Auto").to_env())["auto"] == {AUTO_KEYS[k]: v for k, v in
                                                                 dataclasses.asdict(AUTO_DEFAULTS).items()}


def test_the_harness_keeps_reading_what_older_operators_wrote() -> None:
    """Stages as written (defaults left out), a bare list of stages, unknown keys (a newer operator's)."""
    plan = CompressionPlan.from_env('[{"name": "p", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}, "x": 1}]')
    assert plan == CompressionPlan((CompressionStage("p", StageTrigger(epoch=1), prune=PruneSpec(0.5)),))
    policy = PowerPolicy.from_env('{"mode": "Auto", "auto": {"eta": 0.1}, "budgetWatts": null, "newKey": true}')
    assert policy == PowerPolicy("Auto", auto=AutoPolicy(eta=0.1))


def test_the_harness_error_is_the_contracts_and_names_the_variable_and_the_path() -> None:
    assert ConfigError is PlanError and issubclass(PlanError, ValueError)
    bad = '{"stages": [{"name": "p", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}}, ' \
          '{"name": "q", "trigger": {"step": 1}, "prune": {"amount": 1}}]}'
    with pytest.raises(ConfigError) as caught:
        parse_compression_plan(bad)
    assert caught.value.path == "ETJ_COMPRESSION_PLAN.stages[1].prune.amount"
    assert str(caught.value).startswith("ETJ_COMPRESSION_PLAN.stages[1].prune.amount: must be within (0, 1)")
    with pytest.raises(PlanError, match=r"^ETJ_POWER_POLICY\.mode: must be Unmanaged\|Fixed\|Auto"):
        PowerPolicy.from_env('{"mode": "Turbo"}')


def test_a_record_holds_exactly_one_trigger_and_one_action() -> None:
    with pytest.raises(PlanError):
        StageTrigger()
    with pytest.raises(PlanError):
        StageTrigger(epoch=1, step=2)
    with pytest.raises(PlanError):
        CompressionStage("p", StageTrigger(epoch=1))
    with pytest.raises(PlanError):
        CompressionStage("p", StageTrigger(epoch=1), prune=PruneSpec(0.5), quantize=QuantizeSpec())
    for kind, value in (("epoch", 3), ("step", 7), ("energyFraction", 0.25)):
        trigger = StageTrigger.of(kind, value)  # type: ignore[arg-type]
        assert (trigger.kind, trigger.value, trigger.to_json()) == (kind, value, {kind: value})
    assert CompressionStage("q", StageTrigger(step=1), quantize=QuantizeSpec()).action == "quantize"


def test_the_harness_re_exports_the_contracts_records() -> None:
    assert config.PowerPolicy is PowerPolicy and config.AutoPolicy is AutoPolicy
    assert config.CompressionPlan is CompressionPlan and config.Stage is CompressionStage
    assert config.Trigger is StageTrigger and config.PruneSpec is PruneSpec
    assert config.QuantizeSpec is QuantizeSpec and config.AccuracyGuard is AccuracyGuard


# --- the CRD's defaults, bounds and enumerations are the contract's, and both sides apply them ---------------
def _power_schema(schema: dict[str, Any]) -> dict[str, Any]:
    power: dict[str, Any] = schema["properties"]["spec"]["properties"]["energy"]["properties"]["power"]
    return power


def _compression_schema(schema: dict[str, Any]) -> dict[str, Any]:
    compression: dict[str, Any] = schema["properties"]["spec"]["properties"]["compression"]
    return compression


def _range_of(prop: dict[str, Any]) -> IntRange | NumberRange:
    if prop["type"] == "integer":
        return IntRange(prop["minimum"], prop["maximum"])
    return NumberRange(
        prop["minimum"],
        prop["maximum"],
        exclusive_minimum=prop.get("exclusiveMinimum", False),
        exclusive_maximum=prop.get("exclusiveMaximum", False),
    )


def test_the_crds_power_section_is_the_contracts(schema: dict[str, Any]) -> None:
    power = _power_schema(schema)
    props = power["properties"]
    assert set(POWER_KEYS.values()) == props.keys()
    assert tuple(props["mode"]["enum"]) == POWER_MODES
    assert props["mode"]["default"] == POWER_DEFAULTS.mode == power["default"]["mode"]
    assert _range_of(props["limitWatts"]) == POWER_BOUNDS.limit_watts
    assert _range_of(props["budgetWatts"]) == POWER_BOUNDS.budget_watts
    assert "default" not in props["limitWatts"] and "default" not in props["budgetWatts"]
    assert PowerPolicy() == PowerPolicy(POWER_DEFAULTS.mode, None, AutoPolicy(), None)
    assert parse_power_policy("{}") == PowerPolicy()


def test_the_crds_compression_section_is_the_contracts(schema: dict[str, Any]) -> None:
    compression = _compression_schema(schema)
    assert set(COMPRESSION_KEYS.values()) == compression["properties"].keys()
    stages = compression["properties"]["stages"]
    assert stages["maxItems"] == COMPRESSION_BOUNDS.max_stages
    item = stages["items"]["properties"]
    assert set(COMPRESSION_STAGE_KEYS.values()) == item.keys()
    assert set(STAGE_ACTIONS) == item.keys() - {"name", "trigger"}
    assert item["name"]["maxLength"] == COMPRESSION_BOUNDS.max_name_length
    assert item["name"]["pattern"] == COMPRESSION_BOUNDS.name_pattern
    trigger = item["trigger"]["properties"]
    assert tuple(trigger) == TRIGGER_KINDS
    for kind in TRIGGER_KINDS:
        assert _range_of(trigger[kind]) == COMPRESSION_BOUNDS.trigger(kind), kind
    prune, quantize = item["prune"]["properties"], item["quantize"]["properties"]
    assert set(PRUNE_KEYS.values()) == prune.keys() and set(QUANTIZE_KEYS.values()) == quantize.keys()
    assert _range_of(prune["amount"]) == COMPRESSION_BOUNDS.prune_amount
    assert tuple(prune["method"]["enum"]) == PRUNE_METHODS
    assert prune["method"]["default"] == COMPRESSION_DEFAULTS.prune_method
    assert tuple(quantize["dtype"]["enum"]) == QUANTIZE_DTYPES
    assert quantize["dtype"]["default"] == COMPRESSION_DEFAULTS.quantize_dtype
    guard = compression["properties"]["accuracyGuard"]["properties"]
    assert set(GUARD_KEYS.values()) == guard.keys()
    assert _range_of(guard["maxDrop"]) == COMPRESSION_BOUNDS.max_drop
    assert guard["maxDrop"]["default"] == COMPRESSION_DEFAULTS.max_drop
    assert tuple(guard["action"]["enum"]) == GUARD_ACTIONS
    assert guard["action"]["default"] == COMPRESSION_DEFAULTS.guard_action


def test_the_harness_applies_the_crds_compression_defaults(schema: dict[str, Any]) -> None:
    item = _compression_schema(schema)["properties"]["stages"]["items"]["properties"]
    guard = _compression_schema(schema)["properties"]["accuracyGuard"]["properties"]
    plan = parse_compression_plan(
        '{"stages": [{"name": "p", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}},'
        ' {"name": "q", "trigger": {"epoch": 2}, "quantize": {}}]}'
    )
    assert plan.stages[0].prune == PruneSpec(0.5, item["prune"]["properties"]["method"]["default"])
    assert plan.stages[1].quantize == QuantizeSpec(item["quantize"]["properties"]["dtype"]["default"])
    assert plan.guard == AccuracyGuard(guard["maxDrop"]["default"], guard["action"]["default"])
    assert AccuracyGuard() == plan.guard and PruneSpec(0.5) == plan.stages[0].prune


def _bounded_edges(bounds: IntRange | NumberRange) -> tuple[list[float], list[float]]:
    """Values just inside each end of ``bounds`` and just outside."""
    if isinstance(bounds, IntRange):
        return [bounds.minimum, bounds.maximum], [bounds.minimum - 1, bounds.maximum + 1]
    eps = 0.001
    lo, hi = bounds.minimum, bounds.maximum
    inside = [lo + eps if bounds.exclusive_minimum else lo, hi - eps if bounds.exclusive_maximum else hi]
    outside = [lo if bounds.exclusive_minimum else lo - eps, hi if bounds.exclusive_maximum else hi + eps]
    return inside, outside


_BUDGET = {"energyBudget": {"kilowattHours": 1.0}}


def _stage_with(trigger: dict[str, Any] | None = None, **prune: Any) -> dict[str, Any]:
    return _prune("p", trigger or {"epoch": 1}, **({"amount": 0.5} | prune))


#: field path -> bounds, the manifest overrides that set the value, and the (env var, JSON) handed to the harness.
BOUNDED: dict[str, tuple[IntRange | NumberRange, Any, Any]] = {
    "limitWatts": (
        POWER_BOUNDS.limit_watts,
        lambda v: {"energy": {"power": {"mode": "Fixed", "limitWatts": v}}},
        lambda v: (names.ENV_ETJ_POWER_POLICY, {"mode": "Fixed", "limitWatts": v}),
    ),
    "budgetWatts": (
        POWER_BOUNDS.budget_watts,
        lambda v: {"energy": {"power": {"budgetWatts": v}}},
        lambda v: (names.ENV_ETJ_POWER_POLICY, {"mode": "Unmanaged", "budgetWatts": v}),
    ),
    **{
        f"trigger.{kind}": (
            COMPRESSION_BOUNDS.trigger(kind),
            lambda v, kind=kind: {"energy": _BUDGET, "compression": {"stages": [_stage_with({kind: v})]}},
            lambda v, kind=kind: (names.ENV_ETJ_COMPRESSION_PLAN, {"stages": [_stage_with({kind: v})]}),
        )
        for kind in TRIGGER_KINDS
    },
    "prune.amount": (
        COMPRESSION_BOUNDS.prune_amount,
        lambda v: {"compression": {"stages": [_stage_with(amount=v)]}},
        lambda v: (names.ENV_ETJ_COMPRESSION_PLAN, {"stages": [_stage_with(amount=v)]}),
    ),
    "accuracyGuard.maxDrop": (
        COMPRESSION_BOUNDS.max_drop,
        lambda v: {"compression": {"stages": [_stage_with()], "accuracyGuard": {"maxDrop": v}}},
        lambda v: (names.ENV_ETJ_COMPRESSION_PLAN, {"stages": [_stage_with()], "accuracyGuard": {"maxDrop": v}}),
    ),
}


def _operator_takes(overrides: dict[str, Any], key: str) -> bool:
    try:
        parse_spec(job_manifest(**overrides)["spec"], "digits")
    except InvalidSpecError as e:
        assert any(p.path.endswith(key) for p in e.problems), e
        return False
    return True


def _harness_takes(variable: str, data: Any, key: str) -> bool:
    text = json.dumps(data)
    try:
        config.HarnessEnv.from_env({variable: text})
    except ConfigError as e:
        assert e.path.startswith(variable) and e.path.endswith(key), e
        return False
    return True


@pytest.mark.parametrize("key", BOUNDED)
def test_the_operator_and_the_harness_accept_the_same_plan_values(key: str) -> None:
    bounds, manifest, handed = BOUNDED[key]
    inside, outside = _bounded_edges(bounds)
    for value in inside:
        assert value in bounds
        variable, data = handed(value)
        assert _operator_takes(manifest(value), key), (key, value)
        assert _harness_takes(variable, data, key), (key, value)
    for value in outside:
        assert value not in bounds
        variable, data = handed(value)
        assert not _operator_takes(manifest(value), key), (key, value)
        assert not _harness_takes(variable, data, key), (key, value)


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("a", True), ("prune-50", True), ("x" * 63, True), ("x" * 64, False), ("Prune", False), ("-a", False),
     ("a-", False), ("a_b", False)],
)
def test_the_operator_and_the_harness_accept_the_same_stage_names(name: str, accepted: bool) -> None:
    stage = {**_stage_with(), "name": name}
    assert _operator_takes({"compression": {"stages": [stage]}}, "name") is accepted
    assert _harness_takes(names.ENV_ETJ_COMPRESSION_PLAN, {"stages": [stage]}, "name") is accepted


def test_the_operator_and_the_harness_accept_the_same_number_of_stages() -> None:
    most = COMPRESSION_BOUNDS.max_stages
    for count, accepted in ((most, True), (most + 1, False)):
        stages = [{**_stage_with({"epoch": i + 1}), "name": f"s{i}"} for i in range(count)]
        assert _operator_takes({"compression": {"stages": stages}}, "stages") is accepted
        assert _harness_takes(names.ENV_ETJ_COMPRESSION_PLAN, {"stages": stages}, "stages") is accepted


@pytest.mark.parametrize(
    ("key", "allowed", "manifest", "handed"),
    [
        (
            "mode",
            POWER_MODES,
            lambda v: {"energy": {"power": {"mode": v, **({"limitWatts": 300} if v == "Fixed" else {})}}},
            lambda v: {"mode": v, "limitWatts": 300},
        ),
        (
            "method",
            PRUNE_METHODS,
            lambda v: {"compression": {"stages": [_stage_with(method=v)]}},
            lambda v: {"stages": [_stage_with(method=v)]},
        ),
        (
            "dtype",
            QUANTIZE_DTYPES,
            lambda v: {"compression": {"stages": [{"name": "q", "trigger": {"epoch": 1}, "quantize": {"dtype": v}}]}},
            lambda v: {"stages": [{"name": "q", "trigger": {"epoch": 1}, "quantize": {"dtype": v}}]},
        ),
        (
            "action",
            GUARD_ACTIONS,
            lambda v: {"compression": {"stages": [_stage_with()], "accuracyGuard": {"action": v}}},
            lambda v: {"stages": [_stage_with()], "accuracyGuard": {"action": v}},
        ),
    ],
)
def test_the_operator_and_the_harness_accept_the_same_enumerations(
    key: str, allowed: tuple[str, ...], manifest: Any, handed: Any
) -> None:
    variable = names.ENV_ETJ_POWER_POLICY if key == "mode" else names.ENV_ETJ_COMPRESSION_PLAN
    for value in allowed:
        assert _operator_takes(manifest(value), key) and _harness_takes(variable, handed(value), key), value
    for value in ("Other", allowed[0].lower() + "x", ""):
        assert not _operator_takes(manifest(value), key) and not _harness_takes(variable, handed(value), key), value


def test_exclusive_ranges_say_so() -> None:
    assert 0.0 not in COMPRESSION_BOUNDS.prune_amount and 1.0 not in COMPRESSION_BOUNDS.prune_amount
    assert 1.0 in COMPRESSION_BOUNDS.energy_fraction and 0.0 not in COMPRESSION_BOUNDS.energy_fraction
    assert str(COMPRESSION_BOUNDS.prune_amount) == "(0, 1)" and str(COMPRESSION_BOUNDS.energy_fraction) == "(0, 1]"
    assert str(COMPRESSION_BOUNDS.max_drop) == "0..1"
