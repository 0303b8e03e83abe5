"""etj_contract.plans: one definition of the Auto power mode's defaults and bounds, used by CRD, operator, harness."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from etj_contract.plans import AUTO_BOUNDS, AUTO_DEFAULTS, AUTO_KEYS, IntRange, NumberRange
from etj_operator.envvars import EnvContext, power_env
from etj_operator.models import AutoPowerSpec, InvalidSpecError, parse_spec
from etj_workload.config import AutoPolicy, ConfigError, parse_power_policy

from jobs import job_manifest

FIELDS = [f.name for f in dataclasses.fields(AUTO_DEFAULTS)]


def _auto_schema(schema: dict[str, Any]) -> dict[str, Any]:
    power = schema["properties"]["spec"]["properties"]["energy"]["properties"]["power"]
    return power["properties"]["auto"]["properties"]


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
