"""etj_contract.status: the phase and condition-type enums agree with the CRD and with the operator's constants."""

from __future__ import annotations

import json
from typing import Any

from etj_contract import names
from etj_contract.status import TERMINAL, ConditionType, Phase
from etj_operator import conditions, lifecycle, policies


def test_the_crds_phase_enum_is_phase_in_order(schema: dict[str, Any]) -> None:
    assert schema["properties"]["status"]["properties"]["phase"]["enum"] == [p.value for p in Phase]


def test_the_phase_names_are_the_enums_values() -> None:
    assert tuple(Phase) == names.PHASES
    assert all(type(p) is str for p in names.PHASES)  # plain strings, as metric labels and status values
    assert names.TERMINAL_PHASES == ("Succeeded", "Failed") == TERMINAL
    assert [p for p in Phase if p.terminal] == list(TERMINAL)


def test_a_member_is_its_string() -> None:
    assert Phase.RUNNING == "Running" and Phase("Running") is Phase.RUNNING
    assert json.dumps({"phase": Phase.PAUSED}) == '{"phase": "Paused"}'
    assert f"{ConditionType.API_REQUEST_REFUSED}" == "ApiRequestRefused"


def test_the_lifecycles_phase_constants_are_the_contracts() -> None:
    for phase in Phase:
        assert getattr(lifecycle, phase.name) == phase, phase


def test_the_condition_constants_of_the_operator_are_the_contracts() -> None:
    assert set(conditions.CONDITION_TYPES) <= set(ConditionType)
    for ctype in conditions.CONDITION_TYPES:
        name = ConditionType(ctype).name
        assert getattr(conditions, name) == ctype, name
    policy_types = {policies.TELEMETRY_AVAILABLE, policies.THROTTLED, policies.BUDGET_EXCEEDED}
    policy_types |= {policies.PAUSED, policies.RESCHEDULING, policies.POWER_CAP_ENFORCED, policies.ENERGY_FORECAST}
    for ctype in policy_types:
        assert getattr(policies, ConditionType(ctype).name) == ctype
    # every member is one the operator sets: the lifecycle's and the policies'
    assert set(ConditionType) == set(conditions.CONDITION_TYPES) | policy_types
