"""The accounting bound's settings: the same defaults everywhere, and chart values -> environment -> config."""

from __future__ import annotations

import sys
from pathlib import Path

import helm_python as helm
import pytest

from etj_operator.config import OperatorConfig
from etj_operator.energy import DEFAULT_MAX_GPU_WATTS, AccountingSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
from chart_support import CHART, find, render  # the chart tests' helpers

VARIABLES = ("ETJ_MAX_GPU_WATTS", "ETJ_POWER_BOUND_TOLERANCE", "ETJ_FUTURE_SAMPLE_TOLERANCE_SECONDS")


def _env(values=None):
    (container,) = find(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_the_defaults_agree():
    config, settings = OperatorConfig(), AccountingSettings()
    assert config.max_gpu_watts == settings.max_gpu_watts == DEFAULT_MAX_GPU_WATTS == 1200
    assert config.power_bound_tolerance == settings.power_bound_tolerance
    assert config.future_sample_tolerance_seconds == settings.future_tolerance_seconds
    env = _env()
    assert OperatorConfig.from_env({k: env[k] for k in VARIABLES}) == config


def test_chart_values_reach_the_operators_config():
    accounting = {"maxGpuWatts": 1000, "powerBoundTolerance": 0.1, "futureSampleToleranceSeconds": 5}
    env = _env({"operator": {"accounting": accounting}})
    assert [env[k] for k in VARIABLES] == ["1000", "0.1", "5"]
    config = OperatorConfig.from_env({k: env[k] for k in VARIABLES})
    assert (config.max_gpu_watts, config.power_bound_tolerance, config.future_sample_tolerance_seconds) == (
        1000,
        0.1,
        5,
    )


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"maxGpuWatts": 0}, "maxGpuWatts"),
        ({"powerBoundTolerance": -0.1}, "powerBoundTolerance"),
        ({"maxGpuWats": 700}, "maxGpuWats"),
    ],
)
def test_the_schema_refuses_bad_accounting_values(values, complaint):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(chart.merge_values({"operator": {"accounting": values}}))


@pytest.mark.parametrize(
    ("env", "complaint"),
    [({"ETJ_MAX_GPU_WATTS": "0"}, "above 0"), ({"ETJ_POWER_BOUND_TOLERANCE": "-1"}, "negative")],
)
def test_the_operator_refuses_bad_accounting_settings(env, complaint):
    with pytest.raises(ValueError, match=complaint):
        OperatorConfig.from_env(env)
