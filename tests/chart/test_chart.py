"""The Helm chart through the real Helm engine: lint, render, schema, hardening, settings, Kubernetes validation."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from chart_support import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    PROFILES,
    RELEASE_REGISTRY,
    ROOT,
    chart_crds,
    find,
    kinds,
    render,
    render_files,
    rules_of,
)

from etj_operator import __version__, contract
from etj_operator.builders import JobRef, build_worker_pod
from etj_operator.models import parse_spec

from jobs import job_manifest

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


def test_chart_crds_are_byte_identical_to_the_repository_crds():
    repo = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo, "crds/ is empty"
    assert chart.keys() == repo.keys(), "the chart's crds/ must hold exactly the repository's CRD files"
    for name, data in repo.items():
        assert chart[name] == data, f"charts/.../crds/{name} differs from crds/{name}: cp crds/*.yaml {CHART}/crds/"


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_reports_no_warning(profile):
    report = helm.lint(CHART, PROFILES[profile], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[0]}")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert report["total_charts_linted"] == 1
    assert problems == [] and report["errors"] == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_rendered_object_validates_against_kubernetes(profile, version):
    objects = render(PROFILES[profile]) + chart_crds()
    assert "Deployment" in kinds(objects) and "CustomResourceDefinition" in kinds(objects)
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            _check_prometheus_operator_object(obj)  # no schema in kubernetes-validate; checked by hand below
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {where}: {e.message}"
            )


def _check_prometheus_operator_object(obj: dict[str, Any]) -> None:
    """The fields of ServiceMonitor/PodMonitor (monitoring.coreos.com/v1) that the chart sets, by their API docs."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "podMetricsEndpoints"}
    assert spec["selector"]["matchLabels"]
    endpoints = spec["endpoints"] if obj["kind"] == "ServiceMonitor" else spec["podMetricsEndpoints"]
    for endpoint in endpoints:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"(\d+(ms|s|m|h))+", endpoint["interval"])


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator": {"gpuBackend": "cuda"}}, "gpuBackend"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"telemetry": {"prometheusUrl": "prometheus:9090"}}, "prometheusUrl"),
        ({"metrics": {"port": 0}}, "port"),
        ({"replicas": 2}, "replicas"),  # the knob is replicaCount
        ({"replicaCount": 0}, "replicaCount"),
        ({"leaderElection": {"leaseSeconds": 15}}, "leaseSeconds"),
    ],
)
def test_values_schema_rejects_bad_values(values, complaint):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(chart.merge_values(values))


def test_every_profile_passes_the_values_schema():
    with helm.Chart.load(CHART) as chart:
        for values in PROFILES.values():
            chart.validate_schema(chart.merge_values(values))


def _deployment(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return find(render(values), "Deployment")


def test_deployment_is_hardened_replicas_with_liveness_readiness_and_metrics():
    deployment = _deployment()
    spec = deployment["spec"]
    # two replicas under the Lease; a rolling update starts the new pod before the old one goes
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert args[0] == "operator"
    assert args[args.index("--liveness") + 1] == f"http://0.0.0.0:{ports['liveness']}/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "readiness"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ETJ_METRICS_PORT"] == str(ports["metrics"]) == "8080"
    assert env["ETJ_READINESS_PORT"] == str(ports["readiness"])
    assert env["ETJ_LEADER_ELECTION"] == "true"
    assert env["ETJ_LEADER_ELECTION_LEASE_NAME"] == deployment["metadata"]["name"]
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert downward == {
        "ETJ_LEADER_ELECTION_IDENTITY": "metadata.name",
        "ETJ_LEADER_ELECTION_NAMESPACE": "metadata.namespace",
    }
    service = find(render(), "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


def test_leader_election_has_its_lease_rules_a_disruption_budget_and_a_way_back_to_one_replica():
    objects = render()
    role = find(objects, "Role", LEADER_ROLE)
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = {(tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in role["rules"]}
    assert rules == {(("create",), ()), (("get", "update"), ("etj-efficient-training-operator",))}
    assert all(r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"] for r in role["rules"])
    binding = find(objects, "RoleBinding", LEADER_ROLE)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    pdb = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # one replica without election: Recreate, no budget, no Lease rules, and no election variables
    single = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    deployment = find(single, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "PodDisruptionBudget" not in kinds(single)
    assert not [o for o in single if o["kind"] == "Role" and o["metadata"]["name"].endswith("leader-election")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["ETJ_LEADER_ELECTION"] == "false"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "needs leaderElection.enabled"),
        ({"leaderElection": {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10}}, "leaseDurationSeconds >"),
        ({"leaderElection": {"renewDeadlineSeconds": 2, "retryPeriodSeconds": 2}}, "1.2 x retryPeriodSeconds"),
    ],
)
def test_replicas_that_could_overlap_are_refused_at_render_time(values, complaint):
    with pytest.raises(Exception, match=complaint):
        render(values)


def test_the_operator_cli_accepts_the_charts_arguments():
    from etj_operator.cli import build_parser

    args = _deployment({"watchNamespaces": ["a", "b"], "operator": {"verbose": True}})["spec"]["template"]["spec"]
    parsed = build_parser().parse_args(args["containers"][0]["args"])
    assert parsed.command == "operator" and parsed.namespace == ["a", "b"] and parsed.verbose is True
    assert parsed.liveness == "http://0.0.0.0:8081/healthz"


def test_every_setting_the_operator_reads_is_a_chart_value():
    """Each ETJ_* variable the operator's config reads is set from values, and the chart sets no other."""
    read = set(re.findall(r"\"(ETJ_[A-Z_]+)\"", (ROOT / "operator" / "etj_operator" / "config.py").read_text()))
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"]}
    assert len(read) >= 6, f"config.py reads only {read}: has the way it names variables changed?"
    assert env == read, f"add values for {sorted(read - env)}; drop {sorted(env - read)}"


def test_operator_settings_flow_from_values_to_the_environment():
    values = PROFILES["all-features"]
    (container,) = _deployment(values)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ETJ_GPU_BACKEND"] == "nvml"
    assert env["ETJ_PROMETHEUS_URL"] == values["telemetry"]["prometheusUrl"]
    assert env["ETJ_PROMETHEUS_POD_LABEL"] == "exported_pod"
    assert env["ETJ_PROMETHEUS_NAMESPACE_LABEL"] == "exported_namespace"
    assert env["ETJ_TELEMETRY_INTERVAL_SECONDS"] == "30"
    assert env["ETJ_RECONCILE_INTERVAL_SECONDS"] == "5" and env["ETJ_MAX_WORKERS"] == "32"
    assert env["TZ"] == "UTC"
    # and the operator parses what the chart wrote
    from etj_operator.config import OperatorConfig

    config = OperatorConfig.from_env({k: v for k, v in env.items() if v is not None})
    assert config.gpu_backend == "nvml" and config.max_workers == 32 and config.reconcile_interval_seconds == 5


def test_image_digest_wins_over_the_tag():
    (default,) = _deployment()["spec"]["template"]["spec"]["containers"]
    assert default["image"] == f"{RELEASE_REGISTRY}/efficient-training-operator:{__version__}"  # the appVersion
    (pinned,) = _deployment(PROFILES["all-features"])["spec"]["template"]["spec"]["containers"]
    assert pinned["image"] == "registry.example.com/ml-platform/etj-operator@sha256:" + "0" * 64


LEADER_ROLE = "etj-efficient-training-operator-leader-election"


def test_cluster_wide_mode_has_one_cluster_role_and_no_role():
    objects = render()
    # the one Role is the Lease's, in the operator's own namespace
    assert [(o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects if o["kind"] == "Role"] == [
        (LEADER_ROLE, NAMESPACE)
    ]
    binding = find(objects, "ClusterRoleBinding")
    account = find(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == find(objects, "ClusterRole")["metadata"]["name"]


def test_watch_namespace_mode_keeps_namespaced_rules_out_of_the_cluster_role():
    objects = render(PROFILES["namespaced"])
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] != LEADER_ROLE]
    assert [r["metadata"]["namespace"] for r in roles] == ["ml-training"]
    bindings = [b for b in objects if b["kind"] == "RoleBinding" and b["metadata"]["name"] != LEADER_ROLE]
    assert [b["metadata"]["namespace"] for b in bindings] == ["ml-training"]
    cluster_resources = {res for _, rule in rules_of(objects, "ClusterRole") for res in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces", "nodes"}
    args = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--namespace") + 1] == "ml-training"


@pytest.mark.parametrize("profile", PROFILES)
def test_rbac_has_no_wildcard(profile):
    objects = render(PROFILES[profile])
    for kind in ("ClusterRole", "Role"):
        for _, rule in rules_of(objects, kind):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{kind} rule {rule} uses a wildcard"
            assert "nonResourceURLs" not in rule


def test_pod_monitor_selects_the_worker_pods_the_operator_makes():
    objects = render(PROFILES["all-features"])
    monitor = find(objects, "PodMonitor", "etj-efficient-training-operator-workers")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
        contract.LABEL_ROLE: contract.ROLE_WORKER,
    }
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml-team-a", "ml-team-b"]}
    # the worker pods' metrics port is named "metrics" by the pod builder
    body = job_manifest()
    job = JobRef.from_body(body)
    pod = build_worker_pod(job, parse_spec(body["spec"], job.name), 0, 0)
    assert pod["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()
    trainer = next(c for c in pod["spec"]["containers"] if c["name"] == contract.TRAINER_CONTAINER)
    assert {"name": "metrics", "containerPort": contract.DEFAULT_METRICS_PORT} in trainer["ports"]


def test_service_monitor_keeps_the_job_labels():
    monitor = find(render(PROFILES["monitoring"]), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_network_policy_opens_only_the_ports_the_operator_uses():
    policy = find(render(PROFILES["all-features"]), "NetworkPolicy")
    ingress_ports = sorted(p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"])
    assert ingress_ports == ["liveness", "metrics", "readiness"]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert egress_ports == {53, 443, 6443, 9090, contract.DEFAULT_METRICS_PORT, 8443}


def test_dashboard_config_map_carries_the_dashboard_for_the_sidecar():
    objects = render(PROFILES["all-features"])
    config_map = find(objects, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert sorted(config_map["data"]) == [f.name for f in files]
    for f in files:
        assert json.loads(config_map["data"][f.name]) == json.loads(f.read_text())
    assert "ConfigMap" not in kinds(render())  # off by default


def test_notes_tell_how_to_upgrade_the_crds():
    notes = render_files()["efficient-training-operator/templates/NOTES.txt"]
    assert "kubectl apply --server-side -f crds/" in notes and "every namespace" in notes


def test_crd_in_chart_is_the_api_the_operator_serves():
    crds = {crd["spec"]["names"]["plural"]: crd for crd in chart_crds()}
    assert crds.keys() == {contract.PLURAL, contract.REPORT_PLURAL}  # the job and its report
    for plural, crd in crds.items():
        assert crd["spec"]["group"] == contract.GROUP
        assert yaml.safe_load((ROOT / "crds" / f"{plural}.yaml").read_text()) == crd
