import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etj_operator.models import MAX_JOB_NAME_LENGTH, InvalidSpecError, parse_spec

from jobs import job_manifest


def spec_of(**overrides):
    return job_manifest(**overrides)["spec"]


def test_defaults_match_the_crd():
    spec = parse_spec(spec_of(), "digits")
    assert spec.replicas == 2 and spec.nproc_per_node == 1 and spec.world_size == 2
    assert spec.run_policy.backoff_limit == 3
    assert spec.run_policy.clean_pod_policy == "Running"
    assert spec.energy.telemetry.source == "Prometheus"
    assert spec.energy.telemetry.interval_seconds == 15
    assert spec.energy.power.mode == "Unmanaged" and not spec.energy.power.managed
    assert spec.compression.stages == ()


def test_full_spec_parses():
    spec = parse_spec(
        spec_of(
            replicas=3,
            nprocPerNode=2,
            elastic={"minReplicas": 2, "maxReplicas": 4},
            runPolicy={"backoffLimit": 1, "activeDeadlineSeconds": 60, "cleanPodPolicy": "All"},
            checkpoint={"path": "/ckpt", "volume": {"emptyDir": {}}},
            energy={
                "power": {"mode": "Auto", "auto": {"eta": 0.8}, "budgetWatts": 1200},
                "energyBudget": {"kilowattHours": 2.5, "action": "Suspend"},
                "carbon": {"intensityGramsPerKWh": 300, "maxGramsPerKWh": 400},
            },
            compression={
                "stages": [
                    {"name": "prune", "trigger": {"epoch": 2}, "prune": {"amount": 0.5}},
                    {"name": "int8", "trigger": {"energyFraction": 0.8}, "quantize": {"dtype": "int8"}},
                ],
                "accuracyGuard": {"maxDrop": 0.02},
            },
        ),
        "digits",
    )
    assert spec.world_size == 6
    assert spec.elastic is not None and spec.elastic.max_restarts == 3
    assert spec.energy.power.auto is not None and spec.energy.power.auto.eta == 0.8
    assert spec.energy.power.auto.step_watts == 25
    assert spec.energy.power.managed
    assert spec.energy.energy_budget is not None and spec.energy.energy_budget.action == "Suspend"
    assert [s.name for s in spec.compression.stages] == ["prune", "int8"]
    assert spec.compression.stages[1].trigger_kind == "energyFraction"
    assert spec.compression.max_accuracy_drop == 0.02


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"replicas": 0}, "spec.replicas"),
        ({"replicas": "two"}, "spec.replicas"),
        ({"nprocPerNode": 65}, "spec.nprocPerNode"),
        ({"elastic": {"minReplicas": 3, "maxReplicas": 2}}, "spec.elastic.minReplicas"),
        ({"elastic": {"minReplicas": 3, "maxReplicas": 4}}, "spec.replicas"),
        ({"template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}}, "spec.template.spec.containers"),
        ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
        ({"runPolicy": {"cleanPodPolicy": "Some"}}, "spec.runPolicy.cleanPodPolicy"),
        ({"runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit"),
        ({"checkpoint": {"path": "relative/dir"}}, "spec.checkpoint.path"),
        ({"energy": {"power": {"mode": "Fixed"}}}, "spec.energy.power.limitWatts"),
        ({"energy": {"power": {"mode": "Auto", "limitWatts": 300}}}, "spec.energy.power.limitWatts"),
        ({"energy": {"power": {"mode": "Fixed", "limitWatts": 300, "auto": {}}}}, "spec.energy.power.auto"),
        ({"energy": {"power": {"mode": "Turbo"}}}, "spec.energy.power.mode"),
        ({"energy": {"energyBudget": {"kilowattHours": 0}}}, "spec.energy.energyBudget.kilowattHours"),
        ({"energy": {"carbon": {"maxGramsPerKWh": 100}}}, "spec.energy.carbon"),
        ({"energy": {"telemetry": {"prometheusURL": "prometheus:9090"}}}, "spec.energy.telemetry.prometheusURL"),
        (
            {"compression": {"stages": [{"name": "a", "trigger": {"energyFraction": 0.5}, "prune": {"amount": 0.5}}]}},
            "spec.compression.stages[0].trigger.energyFraction",
        ),
        (
            {"compression": {"stages": [{"name": "a", "trigger": {"epoch": 1, "step": 3}, "prune": {"amount": 0.5}}]}},
            "spec.compression.stages[0].trigger",
        ),
        (
            {"compression": {"stages": [{"name": "a", "trigger": {"epoch": 1}, "prune": {"amount": 1.0}}]}},
            "spec.compression.stages[0].prune.amount",
        ),
        (
            {"compression": {"stages": [{"name": "a", "trigger": {"epoch": 1}}]}},
            "spec.compression.stages[0]",
        ),
        (
            {
                "compression": {
                    "stages": [
                        {"name": "a", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}},
                        {"name": "a", "trigger": {"epoch": 2}, "quantize": {}},
                    ]
                }
            },
            "spec.compression.stages[1].name",
        ),
    ],
)
def test_invalid_specs_name_the_field(overrides, path):
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(spec_of(**overrides), "digits")
    paths = [p.path for p in info.value.problems]
    assert path in paths, paths
    assert all(p.fix for p in info.value.problems)
    assert path in str(info.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(spec_of(replicas=0, runPolicy={"backoffLimit": -2}), "digits")
    assert {p.path for p in info.value.problems} >= {"spec.replicas", "spec.runPolicy.backoffLimit"}


def test_long_names_are_rejected_before_pods_would_fail():
    parse_spec(spec_of(), "a" * MAX_JOB_NAME_LENGTH)
    with pytest.raises(InvalidSpecError, match=r"metadata\.name"):
        parse_spec(spec_of(), "a" * (MAX_JOB_NAME_LENGTH + 1))


def test_missing_spec():
    with pytest.raises(InvalidSpecError, match="spec"):
        parse_spec(None, "x")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
spec_keys = st.sampled_from(
    ["replicas", "nprocPerNode", "suspend", "elastic", "template", "runPolicy", "checkpoint", "energy", "compression"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(spec_keys, json_values, max_size=6), st.text(max_size=80))
def test_arbitrary_specs_never_crash_the_parser(raw, name):
    try:
        parse_spec(raw, name)
    except InvalidSpecError as e:
        assert e.problems


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "energy": st.fixed_dictionaries(
                {},
                optional={
                    "power": st.dictionaries(
                        st.sampled_from(["mode", "limitWatts", "auto", "budgetWatts"]), json_values
                    ),
                    "energyBudget": st.dictionaries(st.sampled_from(["kilowattHours", "action"]), json_values),
                    "carbon": st.dictionaries(st.sampled_from(["intensityQuery", "maxGramsPerKWh"]), json_values),
                },
            ),
            "compression": st.fixed_dictionaries(
                {"stages": st.lists(st.dictionaries(st.text(max_size=8), json_values))}
            ),
        },
    )
)
def test_nested_garbage_never_crashes_the_parser(overrides):
    try:
        parse_spec(spec_of(**overrides), "digits")
    except InvalidSpecError as e:
        assert e.problems


def test_the_budgets_on_forecast_defaults_to_notify_and_takes_the_crds_values():
    spec = parse_spec(spec_of(energy={"energyBudget": {"kilowattHours": 1.0}}), "digits")
    assert spec.energy.energy_budget is not None and spec.energy.energy_budget.on_forecast == "Notify"
    spec = parse_spec(spec_of(energy={"energyBudget": {"kilowattHours": 1.0, "onForecast": "Suspend"}}), "digits")
    assert spec.energy.energy_budget is not None and spec.energy.energy_budget.on_forecast == "Suspend"
    with pytest.raises(InvalidSpecError) as raised:
        parse_spec(spec_of(energy={"energyBudget": {"kilowattHours": 1.0, "onForecast": "Stop"}}), "digits")
    assert "spec.energy.energyBudget.onForecast" in str(raised.value)
