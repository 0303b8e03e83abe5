"""etj_workload.kubeclient: the harness's standard-library API client, its credentials and its errors.

Against the API emulator with RBAC on, as the job's pod: the job's Role lets the client read the job's
``status.control`` and merge-patch its report's status, and nothing else (403 on the job's own status); a 401
makes it read its token file again; a 429's Retry-After reaches the error. Against small local servers: TLS with
the in-cluster CA, a reused connection the server closed, a server that never answers. Without a server: the
kubeconfig fields it reads and the ones it refuses, and Retry-After in seconds and as an HTTP date.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

import etj_contract as contract
from etj_operator import builders
from etj_operator.sandbox.emulator import EmulatorServer
from etj_workload.control import ControlState, KubernetesJobApi
from etj_workload.kubeclient import (
    MERGE_PATCH,
    ApiError,
    ConfigError,
    Credentials,
    KubeClient,
    in_cluster_credentials,
    kubeconfig_credentials,
    load_credentials,
    retry_after_seconds,
)

from emulated import CRDS
from jobs import job_manifest

NS = "ml"
JOBS = ("digits", "other")


# ----- against the emulator, as the job's pod -----------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[EmulatorServer, str]]:
    """Two jobs with their children as the operator makes them (report, ServiceAccount, Role, RoleBinding) and
    ``digits``'s pod token."""
    with EmulatorServer(rbac=True, crds=[CRDS]) as server:
        for name in JOBS:
            body = job_manifest(name, namespace=NS)
            for key in ("uid", "generation"):
                body["metadata"].pop(key)
            job = builders.JobRef.from_body(server.create(contract.PLURAL, body, namespace=NS))
            server.create(contract.REPORT_PLURAL, builders.build_report(job), namespace=NS)
            server.create("serviceaccounts", builders.build_service_account(job))
            server.create("roles", builders.build_role(job))
            server.create("rolebindings", builders.build_role_binding(job, builders.service_account_name(job)))
            server.patch_status(
                contract.PLURAL, NS, name, {"control": {"powerLimitWattsPerGPU": 280, "checkpointRequested": 2}}
            )
        yield server, server.service_account_token(NS, "digits-etj")


def pod_kubeconfig(
    server: EmulatorServer, path: Path, *, token: str | None = None, token_file: Path | None = None
) -> Path:
    """A kubeconfig as the sandbox kubelet writes one for a pod (a token user), or with a tokenFile."""
    user: dict[str, Any] = {"tokenFile": str(token_file)} if token_file is not None else {"token": token}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "preferences": {},
                "clusters": [{"name": "sandbox", "cluster": {"server": server.url}}],
                "users": [{"name": "pod", "user": user}],
                "contexts": [{"name": "pod", "context": {"cluster": "sandbox", "user": "pod", "namespace": NS}}],
                "current-context": "pod",
            },
            sort_keys=False,
        )
    )
    return path


def answers(server: EmulatorServer, path: str) -> list[int]:
    return [r.status for r in server.requests if r.path == path]


def test_the_pods_client_reads_its_control_and_patches_its_reports_status(emulator, tmp_path: Path) -> None:
    server, token = emulator
    kubeconfig = pod_kubeconfig(server, tmp_path / "kubeconfig", token=token)
    api = KubernetesJobApi("digits", NS, client=KubeClient(load_credentials({"KUBECONFIG": str(kubeconfig)})))
    assert ControlState.from_status(api.read_control()) == ControlState(280, 2)
    api.patch_workload({contract.WORKLOAD_STEP: 7, contract.WORKLOAD_CHECKPOINT: {"acknowledged": 2}})
    api.patch_workload({contract.WORKLOAD_EPOCH: 1})  # a merge patch: step and checkpoint stay
    report = server.get(contract.REPORT_PLURAL, NS, "digits") or {}
    assert report["status"][contract.WORKLOAD_STEP] == 7 and report["status"][contract.WORKLOAD_EPOCH] == 1
    assert report["status"][contract.WORKLOAD_CHECKPOINT] == {"acknowledged": 2}
    patches = [r for r in server.requests if r.method == "PATCH" and r.path == api.report_status_path]
    assert [(r.status, r.content_type.split(";")[0], r.user_agent) for r in patches] == [
        (200, MERGE_PATCH, "etj-workload")
    ] * 2
    assert contract.WORKLOAD not in (server.get(contract.PLURAL, NS, "digits") or {}).get("status", {})


def test_the_pod_may_not_write_its_jobs_status_nor_touch_another_job(emulator, tmp_path: Path) -> None:
    server, token = emulator
    client = KubeClient(kubeconfig_credentials(pod_kubeconfig(server, tmp_path / "kubeconfig", token=token)))
    api = KubernetesJobApi("digits", NS, client=client)
    with pytest.raises(ApiError) as refused:
        client.request("PATCH", api.job_path + "/status", {"status": {"phase": "Succeeded"}}, content_type=MERGE_PATCH)
    assert (refused.value.code, refused.value.reason) == (403, "Forbidden")
    assert "system:serviceaccount:ml:digits-etj" in refused.value.message
    assert str(refused.value).startswith(f"PATCH {api.job_path}/status: 403 Forbidden: ")
    assert "phase" not in (server.get(contract.PLURAL, NS, "digits") or {}).get("status", {})
    other = KubernetesJobApi("other", NS, client=client)
    for call in (other.read_control, lambda: other.patch_workload({contract.WORKLOAD_STEP: 1})):
        with pytest.raises(ApiError) as refused:
            call()
        assert refused.value.code == 403
    assert "status" not in (server.get(contract.REPORT_PLURAL, NS, "other") or {})


def test_a_401_reads_the_token_file_again_and_sends_once_more(emulator, tmp_path: Path) -> None:
    server, token = emulator
    token_file = tmp_path / "token"
    token_file.write_text("a-token-the-server-no-longer-knows\n")
    clock = [0.0]
    client = KubeClient(
        kubeconfig_credentials(pod_kubeconfig(server, tmp_path / "kubeconfig", token_file=token_file)),
        clock=lambda: clock[0],
    )
    api = KubernetesJobApi("digits", NS, client=client)
    token_file.write_text(token + "\n")  # rotated after the client read it, well within the 60 s
    server.clear_requests()
    assert ControlState.from_status(api.read_control()) == ControlState(280, 2)
    assert answers(server, api.job_path) == [401, 200]
    # a token file that still holds a refused token: one 401, no second try with the same token
    token_file.write_text("refused")
    clock[0] = 59.9  # read 59.9 s ago: the token in hand is still used
    server.clear_requests()
    api.read_control()
    assert answers(server, api.job_path) == [200]
    clock[0] = 60.0  # 60 s: read again before the request
    with pytest.raises(ApiError) as refused:
        api.read_control()
    assert (refused.value.code, refused.value.reason) == (401, "Unauthorized")
    assert answers(server, api.job_path) == [200, 401]


def test_the_servers_retry_after_reaches_the_error(emulator, tmp_path: Path) -> None:
    server, token = emulator
    api = KubernetesJobApi(
        "digits",
        NS,
        client=KubeClient(kubeconfig_credentials(pod_kubeconfig(server, tmp_path / "kubeconfig", token=token))),
    )
    server.faults.add(method="PATCH", path_regex="efficienttrainingjobreports/digits/status", status=429)
    with pytest.raises(ApiError) as throttled:
        api.patch_workload({contract.WORKLOAD_STEP: 8})
    assert (throttled.value.code, throttled.value.reason, throttled.value.retry_after_seconds) == (
        429,
        "TooManyRequests",
        1.0,
    )
    api.patch_workload({contract.WORKLOAD_STEP: 8})  # the fault was for one request
    assert (server.get(contract.REPORT_PLURAL, NS, "digits") or {})["status"][contract.WORKLOAD_STEP] == 8


# ----- small local servers --------------------------------------------------------------------------------------


class LocalServer:
    """An HTTP(S) server answering every GET with ``{"kind": "Job", "path": ...}``; it records each request's
    Authorization header and counts connections. ``close_after_answer``: drop the connection after each answer
    without saying so (as an idle timeout does); ``delay``: wait that long before answering."""

    def __init__(
        self,
        *,
        context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        close_after_answer: bool = False,
        delay: float = 0.0,
    ) -> None:
        outer = self
        self.authorizations: list[str | None] = []
        self.connections = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def do_GET(self) -> None:
                outer.authorizations.append(self.headers.get("Authorization"))
                time.sleep(delay)
                data = json.dumps({"kind": "Job", "path": self.path}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout test)
                    self.close_connection = True
                    return
                self.close_connection = close_after_answer

            def log_message(self, format: str, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self.server = Server((host, 0), Handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    from cryptography import x509  # a dev dependency: the TLS tests always run
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    (folder / "ca.crt").write_bytes(pem(certificate("etj test CA", ca_key, "etj test CA", ca_key, ca=True)))
    (folder / "other-ca.crt").write_bytes(pem(certificate("other CA", other_key, "other CA", other_key, ca=True)))
    (folder / "server.crt").write_bytes(pem(certificate("apiserver", server_key, "etj test CA", ca_key, ca=False)))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {name: folder / name for name in ("ca.crt", "other-ca.crt", "server.crt", "server.key")}


@pytest.fixture
def tls_server(pki: dict[str, Path]) -> Iterator[LocalServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server.crt"], pki["server.key"])
    server = LocalServer(context=context)
    yield server
    server.close()


def service_account_dir(folder: Path, token: str, ca: Path | None) -> Path:
    folder.mkdir()
    (folder / "token").write_text(token)
    if ca is not None:
        (folder / "ca.crt").write_bytes(ca.read_bytes())
    (folder / "namespace").write_text(NS)
    return folder


def test_in_cluster_the_pods_token_goes_over_tls_checked_with_the_mounted_ca(
    tls_server: LocalServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(tls_server.port),
        "KUBECONFIG": str(tmp_path / "not-used"),
    }
    mounted = service_account_dir(tmp_path / "sa", "pod-token", pki["ca.crt"])
    credentials = load_credentials(environ, mounted)
    assert credentials == Credentials(
        server=f"https://127.0.0.1:{tls_server.port}",
        token_file=mounted / "token",
        ca_file=mounted / "ca.crt",
        source="in-cluster",
    )
    clock = [0.0]
    client = KubeClient(credentials, clock=lambda: clock[0])
    assert client.request("GET", "/apis/x") == {"kind": "Job", "path": "/apis/x"}
    (mounted / "token").write_text("rotated-token")  # the kubelet rotates the projected token
    client.request("GET", "/apis/x")
    clock[0] = 61.0
    client.request("GET", "/apis/x")
    assert tls_server.authorizations == ["Bearer pod-token", "Bearer pod-token", "Bearer rotated-token"]
    assert tls_server.connections == 1  # one kept connection


def test_a_server_certificate_from_another_ca_is_refused_unless_verification_is_off(
    tls_server: LocalServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    server = f"https://127.0.0.1:{tls_server.port}"
    with pytest.raises(ssl.SSLCertVerificationError):
        KubeClient(Credentials(server=server, ca_file=pki["other-ca.crt"])).request("GET", "/x")
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's trust store does not know the test CA
        KubeClient(Credentials(server=server)).request("GET", "/x")
    assert KubeClient(Credentials(server=server, insecure_skip_tls_verify=True)).request("GET", "/x")["kind"] == "Job"
    # the kubeconfig's certificate-authority-data (base64 PEM) is a CA like the file
    config = tmp_path / "kubeconfig"
    data = base64.b64encode(pki["ca.crt"].read_bytes()).decode()
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": data}}],
                "users": [{"name": "u", "user": {"token": "kubeconfig-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    assert KubeClient(kubeconfig_credentials(config)).request("GET", "/x")["kind"] == "Job"
    assert tls_server.authorizations[-1] == "Bearer kubeconfig-token"


def test_a_kept_connection_the_server_dropped_is_opened_again_once() -> None:
    server = LocalServer(close_after_answer=True)
    try:
        client = KubeClient(Credentials(server=f"http://127.0.0.1:{server.port}", token="t"))
        for _ in range(3):
            assert client.request("GET", "/x")["kind"] == "Job"
        assert server.connections == 3 and server.authorizations == ["Bearer t"] * 3
    finally:
        server.close()


def test_every_request_times_out() -> None:
    server = LocalServer(delay=2.0)
    try:
        client = KubeClient(Credentials(server=f"http://127.0.0.1:{server.port}"), timeout_seconds=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.request("GET", "/x")
        assert time.monotonic() - started < 1.5
    finally:
        server.close()


def test_an_ipv6_server_address() -> None:
    try:
        server = LocalServer(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        client = KubeClient(Credentials(server=f"http://[::1]:{server.port}/prefix"))
        assert client.request("GET", "/apis/x") == {"kind": "Job", "path": "/prefix/apis/x"}
    finally:
        server.close()


# ----- credentials without a server ---------------------------------------------------------------------------


def test_in_cluster_needs_the_service_env_and_the_token_and_brackets_ipv6(tmp_path: Path) -> None:
    mounted = service_account_dir(tmp_path / "sa", "t", None)
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_credentials(env, mounted) == Credentials(
        server="https://[fd00:10:96::1]:443", token_file=mounted / "token", source="in-cluster"
    )
    assert in_cluster_credentials({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, mounted) is None
    assert in_cluster_credentials({**env, "KUBERNETES_SERVICE_HOST": ""}, mounted) is None
    assert in_cluster_credentials(env, tmp_path / "nothing-mounted") is None


def test_a_kubeconfig_gives_its_current_contexts_cluster_and_user(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    first, second = tmp_path / "conf" / "first", tmp_path / "second"
    first.write_text(
        yaml.safe_dump(
            {
                "current-context": "work",
                "contexts": [{"name": "work", "context": {"cluster": "prod", "user": "bot", "namespace": "ml"}}],
                "clusters": [
                    {
                        "name": "prod",
                        "cluster": {"server": "https://k8s.example:6443/", "certificate-authority": "ca.pem"},
                    }
                ],
            }
        )
    )
    second.write_text(
        yaml.safe_dump(
            {
                "current-context": "ignored",  # the first file to set it wins
                "clusters": [{"name": "prod", "cluster": {"server": "https://ignored"}}],
                "users": [{"name": "bot", "user": {"tokenFile": "bot.token"}}],
            }
        )
    )
    credentials = kubeconfig_credentials([first, tmp_path / "missing", second])
    assert credentials == Credentials(
        server="https://k8s.example:6443",
        token_file=tmp_path / "bot.token",  # relative to the file that names it
        ca_file=tmp_path / "conf" / "ca.pem",
        source=f"kubeconfig {first}:{tmp_path / 'missing'}:{second}",
    )
    environ = {"KUBECONFIG": f"{first}:{second}", "KUBERNETES_SERVICE_HOST": "10.96.0.1"}  # no port: not a pod
    assert load_credentials(environ, tmp_path / "no-sa") == dataclasses.replace(
        credentials, source=f"kubeconfig {first}:{second}"
    )
    # an inline token wins over tokenFile, and the CA data over the CA file (as client-go has it)
    inline = tmp_path / "inline"
    inline.write_text(
        json.dumps(
            {  # JSON is YAML
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [
                    {
                        "name": "k",
                        "cluster": {
                            "server": "http://127.0.0.1:1",
                            "certificate-authority": "/x",
                            "certificate-authority-data": base64.b64encode(b"PEM").decode(),
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "abc", "tokenFile": "/ignored"}}],
            }
        )
    )
    assert kubeconfig_credentials(inline) == Credentials(
        server="http://127.0.0.1:1",
        token="abc",
        ca_data="PEM",
        insecure_skip_tls_verify=True,
        source=f"kubeconfig {inline}",
    )


@pytest.mark.parametrize(
    ("user", "cluster", "named"),
    [
        ({"exec": {"command": "aws"}}, {}, "exec"),
        (
            {"client-certificate-data": "eA==", "client-key-data": "eA=="},
            {},
            "client-certificate-data, client-key-data",
        ),
        ({"auth-provider": {"name": "oidc"}}, {}, "auth-provider"),
        ({"username": "u", "password": "p"}, {}, "username, password"),
        ({"token": "t"}, {"proxy-url": "http://proxy:3128"}, "proxy-url"),
    ],
)
def test_a_kubeconfig_this_client_cannot_honour_is_refused_naming_the_field(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any], named: str
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": "https://k8s.example", **cluster}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    with pytest.raises(ConfigError, match=f"needs {named}, which the harness's client does not support"):
        kubeconfig_credentials(config)


def test_a_kubeconfig_without_what_it_needs_says_what_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    for body, message in [
        ({}, "no current-context"),
        ({"current-context": "c"}, "no context named 'c'"),
        ({"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}]}, "no cluster named 'k'"),
        (
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k"}}],
                "clusters": [{"name": "k", "cluster": {}}],
            },
            "has no http",
        ),
    ]:
        config.write_text(yaml.safe_dump(body))
        with pytest.raises(ConfigError, match=message):
            kubeconfig_credentials(config)
    config.write_text("clusters: [unclosed")
    with pytest.raises(ConfigError, match="is not YAML"):
        kubeconfig_credentials(config)
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        load_credentials({"KUBECONFIG": str(tmp_path / "absent")}, tmp_path / "no-sa")


def test_a_missing_token_file_is_an_error_when_the_client_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the token file"):
        KubeClient(Credentials(server="https://k8s.example", token_file=tmp_path / "absent", source="in-cluster"))


# ----- errors ---------------------------------------------------------------------------------------------------


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("7", now=lambda: now) == 7.0
    assert retry_after_seconds(" 1.5 ", now=lambda: now) == 1.5
    assert retry_after_seconds("Fri, 01 May 2026 12:00:30 GMT", now=lambda: now) == 30.0
    assert retry_after_seconds("Fri, 01 May 2026 11:59:00 GMT", now=lambda: now) == 0.0  # past: at once
    assert retry_after_seconds("-3", now=lambda: now) is None  # malformed: no floor (the contract's one parser)
    for bad in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(bad, now=lambda: now) is None


def test_an_error_keeps_the_servers_status_and_retry_after() -> None:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": 503,
        "reason": "ServiceUnavailable",
        "message": "etcd is slow",
        "details": {"retryAfterSeconds": 4},
    }
    error = ApiError.from_response(
        503, {"content-type": "application/json"}, json.dumps(status).encode(), method="GET", path="/apis/x"
    )
    assert (error.code, error.reason, error.message, error.retry_after_seconds) == (
        503,
        "ServiceUnavailable",
        "etcd is slow",
        4.0,
    )
    assert str(error) == "GET /apis/x: 503 ServiceUnavailable: etcd is slow"
    header_wins = ApiError.from_response(429, {"retry-after": "2"}, json.dumps(status).encode())
    assert header_wins.retry_after_seconds == 2.0
    not_a_status = ApiError.from_response(502, {}, b"<html>bad gateway</html>")
    assert (not_a_status.reason, not_a_status.message, not_a_status.retry_after_seconds) == (
        "Bad Gateway",
        "<html>bad gateway</html>",
        None,
    )
