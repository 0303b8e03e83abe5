"""The Prometheus client against a local stand-in: credentials, TLS, headers, and failures in the operator's own
words (the status code, never the body)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import os
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from etj_operator.config import OperatorConfig
from etj_operator.telemetry.base import PodTarget, TelemetryCause
from etj_operator.telemetry.hub import JobRegistration, TelemetryHub
from etj_operator.telemetry.prometheus import ClientSettings, PrometheusTelemetry

SECRET = "s3cr3t-in-the-body-0xDEADBEEF"
TARGET = PodTarget("ml", "j-worker-0", "j", uid="uid-1", node="n1")
EMPTY = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()


class StandIn:
    """An HTTP server that answers every request with ``status`` and ``body``, and records the requests."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.status = 200
        self.body = EMPTY
        self.requests: list[dict[str, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.requests.append({k.lower(): v for k, v in self.headers.items()} | {":path": self.path})
                self.send_response(stand_in.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(stand_in.body)))
                self.end_headers()
                self.wfile.write(stand_in.body)

            def log_message(self, format: str, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # a refused TLS handshake is a test's point, not a traceback

        self.server = Server(("127.0.0.1", 0), Handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if context is not None else "http"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.close()


def collect(source: PrometheusTelemetry) -> Any:
    return asyncio.run(source.collect([TARGET]))


# --- failures in the operator's words ---------------------------------------------------------------------
def test_a_500_with_a_secret_in_its_body_gives_the_status_code_and_never_the_body(stand_in, caplog):
    stand_in.status, stand_in.body = 500, f'{{"status":"error","error":"{SECRET}"}}'.encode()
    source = PrometheusTelemetry(stand_in.url, timeout_seconds=2)
    result = collect(source)
    assert result.samples == [] and (result.status_code, result.error_cause) == (500, TelemetryCause.QUERY_FAILED)
    assert result.error == (
        f"Prometheus at {stand_in.url} failed: DCGM_FI_DEV_POWER_USAGE, DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION,"
        " DCGM_FI_DEV_POWER_MGMT_LIMIT: HTTP 500: Prometheus failed to answer"
    )
    # the job's delivery and the operator's log say the same, without the body
    hub = TelemetryHub(lambda kind, url: source)
    hub.register(JobRegistration(("ml", "j"), "Prometheus", stand_in.url, (TARGET,), "grid_intensity"))
    with caplog.at_level(logging.DEBUG):
        asyncio.run(hub.run_cycle())
    delivery = hub.take(("ml", "j"))
    assert delivery.cause == TelemetryCause.QUERY_FAILED and "HTTP 500" in delivery.reason
    assert SECRET not in delivery.reason
    assert "HTTP 500" in caplog.text and SECRET not in caplog.text
    source.close()


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, "HTTP 401: Prometheus did not accept the operator's credentials (bearer token or basic auth)"),
        (403, "HTTP 403: Prometheus refused the operator access"),
        (404, "HTTP 404: no Prometheus query API at this URL"),
        (418, "HTTP 418: unexpected answer"),
    ],
)
def test_http_errors_are_named_by_their_code(stand_in, status, words):
    stand_in.status, stand_in.body = status, SECRET.encode()
    result = collect(PrometheusTelemetry(stand_in.url, timeout_seconds=2))
    assert result.status_code == status and words in result.error and SECRET not in result.error


@pytest.mark.parametrize(
    "body",
    [SECRET.encode(), json.dumps({"status": "error", "error": SECRET}).encode(), b"[1, 2]"],
    ids=["not-json", "error-status", "not-an-object"],
)
def test_a_200_that_is_no_query_result_is_malformed_without_quoting_it(stand_in, body):
    stand_in.body = body
    result = collect(PrometheusTelemetry(stand_in.url, timeout_seconds=2))
    assert result.error_cause == TelemetryCause.QUERY_FAILED and result.status_code is None
    assert "the answer is not" in result.error and SECRET not in result.error


def test_credentials_in_the_url_stay_out_of_the_message(stand_in):
    stand_in.status = 503
    url = stand_in.url.replace("://", "://admin:hunter2@") + "/prom?x=1"
    result = collect(PrometheusTelemetry(url, timeout_seconds=2))
    assert "hunter2" not in result.error and f"Prometheus at {stand_in.url}/prom failed" in result.error


# --- credentials and headers -------------------------------------------------------------------------------
def test_the_bearer_token_is_read_again_when_its_file_changes(stand_in, tmp_path):
    data = tmp_path / "..2024_01_01"
    data.mkdir()
    (data / "token").write_text("first-token\n")
    (tmp_path / "token").symlink_to(data / "token")  # as a projected volume links it
    client = ClientSettings(bearer_token_file=str(tmp_path / "token"), headers=(("X-Scope-OrgID", "team-a"),))
    source = PrometheusTelemetry(stand_in.url, client=client, timeout_seconds=2)
    assert collect(source).error is None
    # the kubelet rotates the token: a new file, the link swapped atomically
    rotated = tmp_path / "..2024_01_02"
    rotated.mkdir()
    (rotated / "token").write_text("second-token")
    os.replace(_link(tmp_path / "next", rotated / "token"), tmp_path / "token")
    assert collect(source).error is None
    seen = [(r["authorization"], r["x-scope-orgid"]) for r in stand_in.requests]
    assert seen == [("Bearer first-token", "team-a")] * 3 + [("Bearer second-token", "team-a")] * 3
    source.close()


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def test_basic_auth_reads_the_password_file(stand_in, tmp_path):
    (tmp_path / "password").write_text("pa55\n")
    client = ClientSettings(username="etj", password_file=str(tmp_path / "password"))
    assert collect(PrometheusTelemetry(stand_in.url, client=client, timeout_seconds=2)).error is None
    assert {r["authorization"] for r in stand_in.requests} == {"Basic ZXRqOnBhNTU="}  # etj:pa55


def test_an_unreadable_or_empty_token_file_fails_the_cycle_before_any_request(stand_in, tmp_path):
    missing = tmp_path / "absent"
    result = collect(PrometheusTelemetry(stand_in.url, client=ClientSettings(bearer_token_file=str(missing))))
    assert f"the bearer token file {missing} cannot be read: No such file or directory" in result.error
    (tmp_path / "empty").write_text("\n")
    empty = ClientSettings(bearer_token_file=str(tmp_path / "empty"))
    result = collect(PrometheusTelemetry(stand_in.url, client=empty))
    assert "is empty" in result.error and result.error_cause == TelemetryCause.QUERY_FAILED
    assert stand_in.requests == []


@pytest.mark.parametrize(
    "settings",
    [
        {"bearer_token_file": "/t", "username": "u", "password_file": "/p"},
        {"username": "u"},
        {"password_file": "/p"},
        {"key_file": "/k"},
    ],
)
def test_contradicting_client_settings_are_refused(settings):
    with pytest.raises(ValueError):
        ClientSettings(**settings)


def test_the_operators_settings_become_the_client_settings():
    config = OperatorConfig.from_env(
        {
            "ETJ_PROMETHEUS_BEARER_TOKEN_FILE": "/var/run/secrets/prometheus/token",
            "ETJ_PROMETHEUS_CA_FILE": "/etc/etj/prometheus/ca.crt",
            "ETJ_PROMETHEUS_CERT_FILE": "/etc/etj/prometheus/tls.crt",
            "ETJ_PROMETHEUS_KEY_FILE": "/etc/etj/prometheus/tls.key",
            "ETJ_PROMETHEUS_HEADERS": '{"X-Scope-OrgID": "team-a", "X-Extra": "1"}',
            "ETJ_PROMETHEUS_TLS_VERIFY": "false",
        }
    )
    assert ClientSettings.from_config(config) == ClientSettings(
        bearer_token_file="/var/run/secrets/prometheus/token",
        ca_file="/etc/etj/prometheus/ca.crt",
        cert_file="/etc/etj/prometheus/tls.crt",
        key_file="/etc/etj/prometheus/tls.key",
        headers=(("X-Extra", "1"), ("X-Scope-OrgID", "team-a")),
        tls_verify=False,
    )
    assert ClientSettings.from_config(OperatorConfig.from_env({})) == ClientSettings()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ETJ_PROMETHEUS_USERNAME": "etj"}, "ETJ_PROMETHEUS_PASSWORD_FILE"),
        ({"ETJ_PROMETHEUS_PASSWORD_FILE": "/p"}, "ETJ_PROMETHEUS_USERNAME"),
        (
            {
                "ETJ_PROMETHEUS_USERNAME": "u",
                "ETJ_PROMETHEUS_PASSWORD_FILE": "/p",
                "ETJ_PROMETHEUS_BEARER_TOKEN_FILE": "/t",
            },
            "not both",
        ),
        ({"ETJ_PROMETHEUS_KEY_FILE": "/k"}, "ETJ_PROMETHEUS_CERT_FILE"),
        ({"ETJ_PROMETHEUS_HEADERS": "X-Scope-OrgID: a"}, "ETJ_PROMETHEUS_HEADERS"),
        ({"ETJ_PROMETHEUS_HEADERS": '{"Bad Name": "a"}'}, "ETJ_PROMETHEUS_HEADERS"),
        ({"ETJ_PROMETHEUS_HEADERS": '{"X-A": "a\\nInjected: 1"}'}, "ETJ_PROMETHEUS_HEADERS"),
        ({"ETJ_PROMETHEUS_INTENSITY_QUERIES": "grid_intensity"}, "ETJ_PROMETHEUS_INTENSITY_QUERIES"),
        ({"ETJ_PROMETHEUS_TLS_VERIFY": "maybe"}, "ETJ_PROMETHEUS_TLS_VERIFY"),
    ],
)
def test_malformed_client_settings_name_the_variable(env, named):
    with pytest.raises(ValueError, match=named):
        OperatorConfig.from_env(env)


def test_allowlists_are_read_from_the_environment():
    config = OperatorConfig.from_env(
        {
            "ETJ_PROMETHEUS_ALLOWED_URLS": "http://thanos:9090, https://mimir.example/prometheus\nhttp://x:1",
            "ETJ_PROMETHEUS_INTENSITY_QUERIES": json.dumps(['avg(grid_intensity{zone="DE"})', "carbon"]),
            "ETJ_PROMETHEUS_ALLOW_ANY_INTENSITY_QUERY": "true",
        }
    )
    assert config.prometheus_allowed_urls == ("http://thanos:9090", "https://mimir.example/prometheus", "http://x:1")
    assert config.prometheus_intensity_queries == ('avg(grid_intensity{zone="DE"})', "carbon")
    assert config.prometheus_allow_any_intensity_query is True
    default = OperatorConfig.from_env({})
    assert (default.prometheus_allowed_urls, default.prometheus_intensity_queries) == ((), ())
    assert default.prometheus_allow_any_intensity_query is False
    assert (default.prometheus_pod_label, default.prometheus_namespace_label) == ("", "")  # every scheme


# --- TLS ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA; a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(subject: str, key: Any, *, ca: bool = False, usage: Any = None, ip: str | None = None) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("etj test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def private(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca.crt": issue("etj test CA", ca_key, ca=True),
        "server.crt": issue("prometheus", server_key, usage=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1"),
        "server.key": private(server_key),
        "client.crt": issue("etj-operator", client_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        "client.key": private(client_key),
    }
    for file, content in files.items():
        (folder / file).write_bytes(content)
    return {file: folder / file for file in files}


def tls_stand_in(pki: dict[str, Path], *, client_cert: bool) -> StandIn:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server.crt"], pki["server.key"])
    if client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca.crt"])
    return StandIn(context)


def test_the_ca_bundle_verifies_the_server_and_verification_can_be_turned_off(pki):
    server = tls_stand_in(pki, client_cert=False)
    try:
        untrusted = collect(PrometheusTelemetry(server.url, timeout_seconds=2))
        assert untrusted.error is not None and "SSLError: the TLS handshake failed" in untrusted.error
        assert collect(PrometheusTelemetry(server.url, client=ClientSettings(ca_file=str(pki["ca.crt"])))).error is None
        assert collect(PrometheusTelemetry(server.url, client=ClientSettings(tls_verify=False))).error is None
    finally:
        server.close()


def test_a_client_certificate_is_presented_when_configured(pki):
    server = tls_stand_in(pki, client_cert=True)
    try:
        without = collect(PrometheusTelemetry(server.url, client=ClientSettings(ca_file=str(pki["ca.crt"]))))
        assert without.error is not None and without.error_cause == TelemetryCause.QUERY_FAILED
        client = ClientSettings(
            ca_file=str(pki["ca.crt"]), cert_file=str(pki["client.crt"]), key_file=str(pki["client.key"])
        )
        assert collect(PrometheusTelemetry(server.url, client=client, timeout_seconds=2)).error is None
        assert len(server.requests) == 3
    finally:
        server.close()
