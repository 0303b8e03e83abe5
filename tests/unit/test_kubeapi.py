"""KubeApi against a scripted HTTP server: credentials sent, answers mapped to the documented errors."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client

from etj_operator.errors import PermanentApiError, TransientApiError
from etj_operator.kubeapi import USER_AGENT, ApiStatusError, ClusterConnection, KubeApi, connection_from

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}


class Scripted:
    """Answers every request with the next (status, body) and records what it received."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self.answers = answers
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": await request.text(),
            }
        )
        status, body = self.answers.pop(0)
        return web.json_response(body, status=status)


async def serve(script: Scripted) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.asyncio
async def test_requests_carry_the_token_user_agent_and_body():
    script = Scripted([(201, {"metadata": {"name": "p"}}), (200, {"status": {}})])
    runner, url = await serve(script)
    api = KubeApi(ClusterConnection(host=url, authorization=lambda refresh=False: "Bearer t0k3n"))
    try:
        assert await api.create(POD) is True
        assert await api.patch_job_status("ns", "j", {"phase": "Running"}) is True
    finally:
        await api.aclose()
        await runner.cleanup()
    create, patch = script.seen
    assert (create["method"], create["path"]) == ("POST", "/api/v1/namespaces/ns/pods")
    assert create["headers"]["Authorization"] == "Bearer t0k3n"
    assert create["headers"]["User-Agent"] == USER_AGENT and USER_AGENT.startswith("etj-operator/")
    assert json.loads(create["body"]) == POD
    assert patch["method"] == "PATCH" and patch["path"].endswith("/efficienttrainingjobs/j/status")
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    assert json.loads(patch["body"]) == {"status": {"phase": "Running"}}
    assert api.calls[("create", "pods")] == 1 and api.calls[("patch", "efficienttrainingjobs/status")] == 1


@pytest.mark.asyncio
async def test_answers_map_to_idempotent_results_and_error_kinds():
    script = Scripted(
        [
            (409, {"message": "exists"}),
            (404, {"message": "gone"}),
            (404, {"message": "gone"}),
            (500, {"message": "etcd timeout"}),
            (429, {"message": "slow down"}),
            (403, {"message": "forbidden: cannot create pods"}),
        ]
    )
    runner, url = await serve(script)
    api = KubeApi(ClusterConnection(host=url))
    try:
        assert await api.create(POD) is False  # already exists: not an error
        assert await api.delete("Pod", "ns", "p") is False  # already gone: not an error
        assert await api.get("Pod", "ns", "p") is None
        with pytest.raises(TransientApiError, match="etcd timeout"):
            await api.create(POD)
        with pytest.raises(TransientApiError, match="slow down"):
            await api.create(POD)
        with pytest.raises(PermanentApiError, match="forbidden") as info:
            await api.create(POD)
        assert info.value.status == 403
    finally:
        await api.aclose()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_an_unreachable_or_closed_api_is_a_transient_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    api = KubeApi(ClusterConnection(host=f"http://127.0.0.1:{port}"), timeout_seconds=2)
    with pytest.raises(TransientApiError):
        await api.create(POD)
    await api.aclose()
    with pytest.raises(TransientApiError, match="stopping"):
        await api.create(POD)


def test_connection_from_a_kubeconfig_configuration():
    configuration = client.Configuration()
    configuration.host = "https://api.example.org:6443/"
    configuration.api_key = {"authorization": "abc"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    configuration.verify_ssl = False
    connection = connection_from(configuration)
    assert connection.host == "https://api.example.org:6443"
    assert connection.authorization() == "Bearer abc"
    assert isinstance(connection.ssl, ssl.SSLContext) and connection.ssl.verify_mode == ssl.CERT_NONE

    calls = []

    def rotate(cfg: Any) -> None:  # what in-cluster credentials do when the projected token is renewed
        calls.append(1)
        cfg.api_key["authorization"] = f"rotated-{len(calls)}"

    configuration.refresh_api_key_hook = rotate
    connection = connection_from(configuration)
    assert connection.authorization() == "Bearer rotated-1"
    assert connection.authorization() == "Bearer rotated-1"  # reused: reading credentials is not free
    assert connection.authorization(refresh=True) == "Bearer rotated-2"

    plain = client.Configuration()
    plain.host = "http://127.0.0.1:8001"
    assert connection_from(plain).ssl is True and connection_from(plain).authorization() is None


@pytest.mark.asyncio
async def test_a_401_reads_the_credentials_again_and_retries_once():
    script = Scripted([(401, {"message": "token expired"}), (201, {}), (401, {"message": "no"}), (401, {})])
    runner, url = await serve(script)
    tokens = iter(["Bearer old", "Bearer new", "Bearer newer"])
    current = {"value": next(tokens)}

    def authorization(refresh: bool = False) -> str:
        if refresh:
            current["value"] = next(tokens)
        return current["value"]

    api = KubeApi(ClusterConnection(host=url, authorization=authorization))
    try:
        assert await api.create(POD) is True
        with pytest.raises(PermanentApiError) as info:  # still 401 with fresh credentials: give up
            await api.create(POD)
        assert info.value.status == 401
    finally:
        await api.aclose()
        await runner.cleanup()
    assert [r["headers"]["Authorization"] for r in script.seen] == [
        "Bearer old",
        "Bearer new",
        "Bearer new",
        "Bearer newer",
    ]


@pytest.mark.asyncio
async def test_a_watch_answered_401_reads_the_credentials_again_for_the_next_attempt():
    script = Scripted([(401, {"message": "token expired"})])
    runner, url = await serve(script)
    refreshes: list[bool] = []

    def authorization(refresh: bool = False) -> str:
        refreshes.append(refresh)
        return "Bearer t"

    api = KubeApi(ClusterConnection(host=url, authorization=authorization))
    try:
        with pytest.raises(ApiStatusError) as info:
            async for _ in api.watch("pods", "/api/v1/pods", {}, timeout_seconds=5):
                pass
        assert info.value.status == 401
    finally:
        await api.aclose()
        await runner.cleanup()
    assert refreshes == [False, True]
    assert script.seen[0]["headers"]["Authorization"] == "Bearer t"
    assert "watch=true" in script.seen[0]["path"]
