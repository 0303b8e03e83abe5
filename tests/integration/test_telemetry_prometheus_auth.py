"""The Prometheus source behind an authenticating reverse proxy (bearer token and tenant header, as in front of
Mimir, Cortex or kube-rbac-proxy), with a real Prometheus behind it.

The proxy answers 401 without the right token and 403 without the tenant header, each with a secret in its
body: the job's delivery must say QueryFailed with the status code in the operator's own words, and never the
body. The token file is rotated mid-test, as the kubelet rotates a projected ServiceAccount token.
"""

from __future__ import annotations

import asyncio
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dcgm_exporter import DcgmExporter
from prometheus_server import PrometheusServer, ScrapeJob, require_prometheus

from etj_operator.config import OperatorConfig
from etj_operator.handlers import make_source
from etj_operator.telemetry.base import PodTarget, TelemetryCause
from etj_operator.telemetry.hub import JobRegistration, TelemetryHub
from etj_operator.telemetry.prometheus import ClientSettings, PrometheusTelemetry

TENANT = "team-a"
SECRET = "internal-detail-0xC0FFEE"
TARGET = PodTarget("ml", "w-0", "job", uid="uid-w0", node="gpu-node-a", gpus=2)


class AuthProxy:
    """Forwards GET requests to Prometheus when they carry ``Bearer <token>`` and the tenant header."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.token = "first"
        self.refused: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    self._answer(401, f"invalid token; {SECRET}".encode())
                elif self.headers.get("X-Scope-OrgID") != TENANT:
                    self._answer(403, f"no tenant; {SECRET}".encode())
                else:
                    try:
                        with urllib.request.urlopen(proxy.upstream + self.path, timeout=10) as upstream:
                            self._answer(upstream.status, upstream.read())
                    except urllib.error.HTTPError as e:
                        self._answer(e.code, e.read())

            def _answer(self, status: int, body: bytes) -> None:
                if status != 200:
                    proxy.refused.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy() -> Iterator[AuthProxy]:
    require_prometheus()
    with DcgmExporter() as exporter:
        exporter.add_pod("ml", "w-0", gpus=2, watts=250.0)
        with PrometheusServer([ScrapeJob("dcgm", [exporter.address])]) as prometheus:
            prometheus.wait_for_series('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{pod="w-0"}', 2)
            front = AuthProxy(prometheus.url)
            try:
                yield front
            finally:
                front.close()


def write_token(path: Path, token: str) -> None:
    """Replace the token file atomically (the kubelet swaps a projected volume's files the same way)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(token + "\n")
    os.replace(fresh, path)


def collect(source: Any) -> Any:
    return asyncio.run(source.collect([TARGET]))


def test_the_token_and_tenant_header_get_through_and_a_rotated_token_is_picked_up(proxy, tmp_path):
    token = tmp_path / "token"
    write_token(token, "first")
    proxy.token = "first"
    client = ClientSettings(bearer_token_file=str(token), headers=(("X-Scope-OrgID", TENANT),))
    source = PrometheusTelemetry(proxy.url, client=client, timeout_seconds=5)
    first = collect(source)
    assert first.error is None and {s.power_watts for s in first.samples} == {250.0}

    proxy.token = "second"  # the server now wants the rotated token; the file still holds the old one
    stale = collect(source)
    assert (stale.status_code, stale.error_cause) == (401, TelemetryCause.QUERY_FAILED)
    write_token(token, "second")
    rotated = collect(source)  # the same source, no restart: the file is read again since it changed
    assert rotated.error is None and len(rotated.samples) == 2
    source.close()


@pytest.mark.parametrize(
    ("token", "tenant", "status", "words"),
    [
        ("wrong", TENANT, 401, "HTTP 401: Prometheus did not accept the operator's credentials"),
        (None, TENANT, 401, "HTTP 401: Prometheus did not accept the operator's credentials"),
        ("first", None, 403, "HTTP 403: Prometheus refused the operator access"),
    ],
    ids=["wrong-token", "no-token", "no-tenant"],
)
def test_a_refusal_reaches_the_job_as_query_failed_with_the_status_code(proxy, tmp_path, token, tenant, status, words):
    proxy.token = "first"
    env = {"ETJ_PROMETHEUS_URL": proxy.url}
    if token is not None:
        write_token(tmp_path / "token", token)
        env["ETJ_PROMETHEUS_BEARER_TOKEN_FILE"] = str(tmp_path / "token")
    if tenant is not None:
        env["ETJ_PROMETHEUS_HEADERS"] = f'{{"X-Scope-OrgID": "{tenant}"}}'
    config = OperatorConfig.from_env(env)
    sources: list[Any] = []

    def factory(kind: str, url: str) -> Any:
        sources.append(make_source(config, kind, url))  # the operator's own wiring of its settings
        return sources[-1]

    hub = TelemetryHub(factory)
    hub.register(JobRegistration(("ml", "job"), "Prometheus", config.prometheus_url, (TARGET,)))
    refused_before = len(proxy.refused)
    asyncio.run(hub.run_cycle())
    delivery = hub.take(("ml", "job"))
    assert not delivery.ok and delivery.cause == TelemetryCause.QUERY_FAILED
    assert words in delivery.reason and SECRET not in delivery.reason
    assert proxy.refused[refused_before:] == [status] * 3  # one request per metric, each refused

    # with the right settings the same wiring reads the GPUs
    write_token(tmp_path / "token", "first")
    good = OperatorConfig.from_env(
        {
            "ETJ_PROMETHEUS_URL": proxy.url,
            "ETJ_PROMETHEUS_BEARER_TOKEN_FILE": str(tmp_path / "token"),
            "ETJ_PROMETHEUS_HEADERS": f'{{"X-Scope-OrgID": "{TENANT}"}}',
        }
    )
    assert len(collect(make_source(good, "Prometheus", good.prometheus_url)).samples) == 2
    for source in sources:
        source.close()
