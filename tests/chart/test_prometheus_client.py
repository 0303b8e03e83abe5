"""The chart's Prometheus client values (telemetry.prometheus): the operator's ETJ_PROMETHEUS_* settings and the
read-only volume that holds its credentials, checked through the real Helm engine and the operator's own parser."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from chart_support import CHART, KUBE_VERSIONS, find, render

from etj_operator.config import OperatorConfig
from etj_operator.telemetry.hub import SourceAccess
from etj_operator.telemetry.prometheus import ClientSettings

CLIENT_VARIABLES = {
    "ETJ_PROMETHEUS_BEARER_TOKEN_FILE",
    "ETJ_PROMETHEUS_USERNAME",
    "ETJ_PROMETHEUS_PASSWORD_FILE",
    "ETJ_PROMETHEUS_CA_FILE",
    "ETJ_PROMETHEUS_CERT_FILE",
    "ETJ_PROMETHEUS_KEY_FILE",
    "ETJ_PROMETHEUS_HEADERS",
    "ETJ_PROMETHEUS_TLS_VERIFY",
    "ETJ_PROMETHEUS_ALLOWED_URLS",
    "ETJ_PROMETHEUS_INTENSITY_QUERIES",
    "ETJ_PROMETHEUS_ALLOW_ANY_INTENSITY_QUERY",
}


def deployment(prometheus: dict[str, Any] | None = None, **telemetry: Any) -> dict[str, Any]:
    values = {"telemetry": {**telemetry, **({"prometheus": prometheus} if prometheus is not None else {})}}
    return find(render(values), "Deployment")


def operator_container(dep: dict[str, Any]) -> dict[str, Any]:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return container


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in operator_container(dep)["env"]}


def config_of(dep: dict[str, Any]) -> OperatorConfig:
    return OperatorConfig.from_env({k: v for k, v in env_of(dep).items() if v is not None})


def client_volume(dep: dict[str, Any]) -> dict[str, Any] | None:
    volumes = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "prometheus-client"]
    return volumes[0] if volumes else None


def test_by_default_every_label_scheme_is_read_no_credentials_and_nothing_a_job_names_is_allowed():
    dep = deployment()
    env = env_of(dep)
    assert env.keys() >= CLIENT_VARIABLES
    assert (env["ETJ_PROMETHEUS_POD_LABEL"], env["ETJ_PROMETHEUS_NAMESPACE_LABEL"]) == ("", "")
    config = config_of(dep)
    assert ClientSettings.from_config(config) == ClientSettings()
    access = SourceAccess.from_config(config)
    assert access.refusal(None, None) == ""
    assert access.refusal("http://elsewhere:9090", None) and access.refusal(None, "vector(1)")
    assert client_volume(dep) is None
    assert [m["name"] for m in operator_container(dep)["volumeMounts"]] == ["tmp"]


def test_a_token_secret_a_ca_a_client_certificate_and_headers_reach_the_operator():
    dep = deployment(
        {
            "bearerToken": {"secretName": "prometheus-token", "key": "api-token"},
            "ca": {"configMapName": "monitoring-ca", "key": "bundle.pem"},
            "clientCert": {"secretName": "etj-client-tls"},
            "headers": {"X-Scope-OrgID": "team-a"},
            "allowedUrls": ["http://thanos-query.monitoring:9090", "https://mimir.example/prometheus"],
            "intensityQueries": ['avg(grid_carbon_intensity{zone="DE"})'],
        }
    )
    config = config_of(dep)
    assert ClientSettings.from_config(config) == ClientSettings(
        bearer_token_file="/etc/etj/prometheus/token",
        ca_file="/etc/etj/prometheus/ca.crt",
        cert_file="/etc/etj/prometheus/tls.crt",
        key_file="/etc/etj/prometheus/tls.key",
        headers=(("X-Scope-OrgID", "team-a"),),
    )
    access = SourceAccess.from_config(config)
    assert access.refusal("https://mimir.example/prometheus", 'avg(grid_carbon_intensity{zone="DE"})') == ""
    assert access.refusal(None, "vector(0)") != ""
    volume = client_volume(dep)
    assert volume is not None and volume["projected"]["defaultMode"] == 0o440
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "prometheus-token", "items": [{"key": "api-token", "path": "token"}]}},
        {"configMap": {"name": "monitoring-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}},
        {
            "secret": {
                "name": "etj-client-tls",
                "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
            }
        },
    ]
    (mount,) = [m for m in operator_container(dep)["volumeMounts"] if m["name"] == "prometheus-client"]
    assert mount == {"name": "prometheus-client", "mountPath": "/etc/etj/prometheus", "readOnly": True}
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(dep, version, strict=True)


def test_a_projected_service_account_token_or_basic_auth():
    dep = deployment({"bearerToken": {"serviceAccountToken": True, "audience": "prometheus"}, "tlsVerify": False})
    assert ClientSettings.from_config(config_of(dep)).bearer_token_file == "/etc/etj/prometheus/token"
    assert config_of(dep).prometheus_tls_verify is False
    assert client_volume(dep)["projected"]["sources"] == [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600, "audience": "prometheus"}}
    ]
    basic = deployment({"basicAuth": {"username": "etj", "passwordSecretName": "prometheus-basic"}})
    settings = ClientSettings.from_config(config_of(basic))
    assert (settings.username, settings.password_file) == ("etj", "/etc/etj/prometheus/password")
    assert client_volume(basic)["projected"]["sources"] == [
        {"secret": {"name": "prometheus-basic", "items": [{"key": "password", "path": "password"}]}}
    ]
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(dep, version, strict=True)


def test_switches_and_a_label_override():
    dep = deployment({"allowAnyIntensityQuery": True}, podLabel="exported_pod", namespaceLabel="exported_namespace")
    config = config_of(dep)
    assert config.prometheus_allow_any_intensity_query is True
    assert (config.prometheus_pod_label, config.prometheus_namespace_label) == ("exported_pod", "exported_namespace")
    assert json.loads(env_of(dep)["ETJ_PROMETHEUS_INTENSITY_QUERIES"]) == []


@pytest.mark.parametrize(
    ("prometheus", "complaint"),
    [
        ({"bearerToken": {"secretName": "t", "serviceAccountToken": True}}, "not both"),
        ({"bearerToken": {"secretName": "t"}, "basicAuth": {"username": "u", "passwordSecretName": "p"}}, "not both"),
        ({"basicAuth": {"username": "u"}}, "needs both username and passwordSecretName"),
        ({"ca": {"configMapName": "a", "secretName": "b"}}, "not both"),
    ],
)
def test_contradicting_values_fail_the_render(prometheus, complaint):
    with pytest.raises(Exception, match=complaint):
        deployment(prometheus)


@pytest.mark.parametrize(
    ("prometheus", "complaint"),
    [
        ({"headers": {"Bad Header": "x"}}, "Bad Header"),
        ({"allowedUrls": ["prometheus:9090"]}, "allowedUrls"),
        ({"tlsVerify": "no"}, "tlsVerify"),
        ({"bearerToken": {"file": "/x"}}, "file"),
    ],
)
def test_the_schema_rejects_malformed_client_values(prometheus, complaint):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(chart.merge_values({"telemetry": {"prometheus": prometheus}}))
