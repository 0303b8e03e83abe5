"""The Grafana dashboard asks only for metrics the project exports (operator, harness) or dcgm-exporter serves."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from chart_support import CHART

from etj_operator.metrics import REGISTRY
from etj_workload import metrics as harness_metrics
from etj_workload.gpu import GpuReading

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))

#: dcgm-exporter's default counters (its etc/default-counters.csv) that the dashboard may use. The harness serves
#: POWER_USAGE, TOTAL_ENERGY_CONSUMPTION and POWER_MGMT_LIMIT under the same names; dcgm-exporter serves
#: POWER_MGMT_LIMIT only when it is added to its counters CSV (docs/deploy.md).
DCGM_EXPORTER_DEFAULTS = {
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
}

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}


def operator_metric_names() -> set[str]:
    """Series names the operator's registry exposes (labelled families included before they have children)."""
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def harness_metric_names() -> set[str]:
    """Series names a worker's /metrics shows, rendered by the harness itself."""
    gpu = GpuReading(
        index=0, uuid="GPU-0", name="sim", source="simulated", power_mw=1000, energy_mj=5, power_limit_mw=700000
    )
    progress = dict.fromkeys(harness_metrics._PROGRESS_HELP, 1.0)
    text = harness_metrics.render(harness_metrics.MetricsSnapshot(gpus=[gpu], progress=progress, job="j"))
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def exported_names() -> set[str]:
    return operator_metric_names() | harness_metric_names() | DCGM_EXPORTER_DEFAULTS


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed), by stripping everything that is not one."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\$\{\w+(:\w+)?\}|\$\w+", "", e)  # Grafana variables
    e = re.sub(r"\{[^{}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    e = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", "", e)  # numbers (3.6e6)
    found = set()
    for name, call in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        if not call and name not in _KEYWORDS:
            found.add(name)
    return found


def template_query_names(query: str) -> set[str]:
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    if match:
        return metric_names(match.group(1))
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return set()
    return metric_names(query)


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
    return found


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (phase) (etj_jobs{phase=~"Throttled|Paused"})', {"etj_jobs"}),
        ('etj_job_energy_joules_total{namespace=~"$namespace"} / 3.6e6', {"etj_job_energy_joules_total"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(etj_reconcile_duration_seconds_bucket[$__rate_interval])))",
            {"etj_reconcile_duration_seconds_bucket"},
        ),
        ('rate(X{${pod_label}=~"a"}[5m]) / on (pod) group_left (gpu) Y', {"X", "Y"}),
        ("up and not_up or time()", {"up", "not_up"}),
    ],
)
def test_metric_name_extraction(expr, names):
    assert metric_names(expr) == names


def test_the_exported_names_are_read_from_the_code():
    names = exported_names()
    assert {"etj_jobs", "etj_reconcile_errors_total", "etj_reconcile_duration_seconds_bucket"} <= names
    assert {"DCGM_FI_DEV_POWER_MGMT_LIMIT", "etj_training_samples_per_second"} <= harness_metric_names()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_names_exported_metrics_only(path):
    dashboard = json.loads(path.read_text())
    exported = exported_names()
    used: set[str] = set()
    unknown = []
    for where, expr in queries(dashboard):
        names = template_query_names(expr) if where.startswith("variable") else metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        used |= names
        unknown += [f"{where}: {name}" for name in sorted(names - exported)]
    assert unknown == [], "metrics nobody exports"
    # the views the dashboard exists for: energy per job, power vs. limit per GPU, phases, policy decisions
    assert {
        "etj_job_energy_joules_total",
        "etj_job_carbon_grams_total",
        "etj_telemetry_rejected_samples_total",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "etj_jobs",
        "etj_policy_decisions_total",
        # the forecast and the energy breakdown (the network's figure modelled, and labelled so)
        "etj_job_forecast_remaining_seconds",
        "etj_job_forecast_energy_at_completion_joules",
        "etj_job_energy_compute_joules_total",
        "etj_job_energy_communication_joules_total",
        "etj_job_network_energy_modelled_joules",
    } <= used


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_queries_the_selected_prometheus(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def label_names_by_metric(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched or grouped by) for each selector of a metric with matchers, and each
    ``by (...)`` of the expression (under the name ``by``)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    found = [
        (name, set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers)))
        for name, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}", e)
    ]
    found += [("by", {label.strip() for label in labels.split(",")}) for labels in re.findall(r"\bby\s*\(([^)]*)\)", e)]
    return found


def test_label_names_by_metric():
    assert label_names_by_metric('sum by (namespace, job_name) (x_total{namespace=~"a", job_name="b"})') == [
        ("x_total", {"namespace", "job_name"}),
        ("by", {"namespace", "job_name"}),
    ]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_operator_and_harness_metrics_are_selected_by_job_name_never_by_job(path):
    """``job`` is Prometheus' scrape-job label: the operator and the harness name a job ``job_name`` (a harness
    gauge labelled ``job`` would be renamed ``exported_job`` by a scrape with ``honor_labels: false``)."""
    dashboard = json.loads(path.read_text())
    operator = operator_metric_names() | harness_metric_names()
    wrong = []
    for where, expr in queries(dashboard):
        names = template_query_names(expr) if where.startswith("variable") else metric_names(expr)
        if not names or not names <= operator:
            continue
        for name, labels in label_names_by_metric(expr):
            if "job" in labels:
                wrong.append(f"{where}: {name} by/with job in {expr!r}")
        grouped = re.fullmatch(r"\s*label_values\(.*,\s*(\w+)\s*\)\s*", expr)
        if grouped and grouped.group(1) == "job":
            wrong.append(f"{where}: label_values(..., job)")
    assert wrong == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_the_modelled_network_energy_is_labelled_modelled(path):
    """Whatever panel shows the modelled network energy says so in its title and legend: it is not measured."""
    dashboard = json.loads(path.read_text())
    shown = [
        (panel, target)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "etj_job_network_energy_modelled_joules" in metric_names(target["expr"])
    ]
    assert shown
    for panel, target in shown:
        assert "MODELLED" in panel["title"] and "modelled" in target["legendFormat"]
