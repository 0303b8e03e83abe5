"""KubeApi against a scripted HTTP server: credentials sent, answers mapped to the documented errors."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client

from etj_operator.errors import (
    Cause,
    ConflictError,
    GoneError,
    NotFoundError,
    PermanentApiError,
    TransientApiError,
    error_for,
    parse_retry_after,
)
from etj_operator.kubeapi import USER_AGENT, ApiStatusError, ClusterConnection, KubeApi, connection_from

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}


class Scripted:
    """Answers every request with the next (status, body) and records what it received."""

    def __init__(self, answers: list[tuple[Any, ...]]) -> None:
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
        status, body, *headers = self.answers.pop(0)
        return web.json_response(body, status=status, headers=headers[0] if headers else None)


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
        assert info.value.code == 403
    finally:
        await api.aclose()
        await runner.cleanup()


INVALID_POD = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'Pod "p" is invalid: spec.containers[0].image: Required value',
    "reason": "Invalid",
    "details": {
        "name": "p",
        "kind": "pods",
        "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"}],
    },
    "code": 422,
}


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, PermanentApiError),
        (401, PermanentApiError),
        (403, PermanentApiError),
        (404, NotFoundError),
        (405, PermanentApiError),
        (409, ConflictError),
        (410, GoneError),
        (422, PermanentApiError),
        (429, TransientApiError),
        (500, TransientApiError),
        (503, TransientApiError),
        (504, TransientApiError),
    ],
)
def test_status_codes_map_to_one_error_kind_each(code, kind):
    error = error_for(code, {"message": "no", "reason": "Why"}, verb="create", kind="Pod", name="p")
    assert type(error) is kind and isinstance(error, ApiStatusError)
    assert (error.code, error.reason, error.message, error.object_ref) == (code, "Why", "no", "Pod/p")
    assert str(error) == f"{code} Why: no"


def test_the_status_body_and_retry_after_are_kept():
    error = error_for(422, INVALID_POD, verb="create", kind="Pod", namespace="ns", name="p")
    assert isinstance(error, PermanentApiError) and error.reason == "Invalid"
    assert error.causes == (Cause("FieldValueRequired", "Required value", "spec.containers[0].image"),)
    assert error.retry_after_seconds is None and error.namespace == "ns" and error.verb == "create"
    assert error_for(429, {}, retry_after="3").retry_after_seconds == 3.0
    assert error_for(503, {"details": {"retryAfterSeconds": 7}}).retry_after_seconds == 7.0
    assert error_for(503, {"details": {"retryAfterSeconds": 7}}, retry_after="2").retry_after_seconds == 2.0
    assert error_for(500, None, fallback_message="POST /x").message == "POST /x"  # no body
    # one parser with the harness (etj_contract.backoff): an HTTP date in the past is "now", a negative one bad
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and parse_retry_after("-1") is None


@pytest.mark.asyncio
async def test_answers_keep_the_server_status_and_name_the_object():
    script = Scripted(
        [
            (422, INVALID_POD),
            (429, {"message": "too many requests", "reason": "TooManyRequests"}, {"Retry-After": "4"}),
            (404, {"message": 'namespaces "ns" not found', "reason": "NotFound"}),
            (409, {"message": "the object has been modified", "reason": "Conflict"}),
            (410, {"message": "too old resource version", "reason": "Expired"}),
            (503, "<html>bad gateway</html>"),
        ]
    )
    runner, url = await serve(script)
    api = KubeApi(ClusterConnection(host=url))
    try:
        with pytest.raises(PermanentApiError) as refused:
            await api.create(POD)
        assert (refused.value.code, refused.value.reason, refused.value.object_ref) == (422, "Invalid", "Pod/p")
        assert refused.value.verb == "create" and refused.value.namespace == "ns"
        assert refused.value.causes[0].field == "spec.containers[0].image"
        with pytest.raises(TransientApiError) as throttled:
            await api.patch_job_status("ns", "j", {"phase": "Running"})
        assert throttled.value.retry_after_seconds == 4.0 and throttled.value.object_ref == "EfficientTrainingJob/j"
        with pytest.raises(NotFoundError):  # a create answered 404 (its namespace is missing): not "already gone"
            await api.create(POD)
        with pytest.raises(ConflictError):  # a status write answered 409: someone else wrote first
            await api.patch_job_status("ns", "j", {"phase": "Running"})
        with pytest.raises(GoneError):
            async for _ in api.watch("pods", "/api/v1/pods", {}, timeout_seconds=5):
                pass
        with pytest.raises(TransientApiError) as failed:
            await api.get("Pod", "ns", "p")
        assert failed.value.code == 503 and "bad gateway" in failed.value.message
    finally:
        await api.aclose()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_an_unreachable_or_closed_api_is_a_transient_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    api = KubeApi(ClusterConnection(host=f"http://127.0.0.1:{port}"), timeout_seconds=2)
    with pytest.raises(TransientApiError) as unreachable:
        await api.create(POD)
    assert unreachable.value.code is None and unreachable.value.object_ref == "Pod/p"
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
        assert info.value.code == 401
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
        assert info.value.code == 401
    finally:
        await api.aclose()
        await runner.cleanup()
    assert refreshes == [False, True]
    assert script.seen[0]["headers"]["Authorization"] == "Bearer t"
    assert "watch=true" in script.seen[0]["path"]


def test_status_operations_test_the_uid_first_and_keep_merge_meaning():
    from etj_operator.kubeapi import status_operations

    ops = status_operations({"phase": "Running", "completionTime": None, "control": {"a": None, "b": 1}}, "u1", True)
    assert ops == [
        {"op": "test", "path": "/metadata/uid", "value": "u1"},
        {"op": "add", "path": "/status/phase", "value": "Running"},
        {"op": "remove", "path": "/status/completionTime"},
        {"op": "add", "path": "/status/control", "value": {"b": 1}},
    ]
    # no status yet: one add of the whole status (an add below /status would have no parent)
    assert status_operations({"phase": "Pending", "startTime": None}, "u1", False)[1:] == [
        {"op": "add", "path": "/status", "value": {"phase": "Pending"}}
    ]
    # a key known to be absent is not removed (removing a missing member fails)
    assert status_operations({"startTime": None}, "u1", True, present={"phase"}) == ops[:1]
    assert status_operations({"a/b~c": 1}, "u1", True)[1]["path"] == "/status/a~1b~0c"


@pytest.mark.asyncio
async def test_a_status_write_for_a_uid_is_a_json_patch_and_a_failed_uid_test_means_gone():
    script = Scripted(
        [
            (200, {}),
            (422, {"message": "testing value failed", "reason": "Invalid"}),
            (200, {"metadata": {"name": "j", "uid": "u2"}}),  # the job of that name now has another UID
        ]
    )
    runner, url = await serve(script)
    api = KubeApi(ClusterConnection(host=url))
    try:
        assert await api.patch_job_status("ns", "j", {"phase": "Running"}, uid="u1") is True
        assert await api.patch_job_status("ns", "j", {"phase": "Succeeded"}, uid="u1") is False
    finally:
        await api.aclose()
        await runner.cleanup()
    first, refused, read = script.seen
    assert first["headers"]["Content-Type"] == "application/json-patch+json"
    assert json.loads(first["body"])[0] == {"op": "test", "path": "/metadata/uid", "value": "u1"}
    assert refused["method"] == "PATCH"  # answered 422: whose job is it now?
    assert (read["method"], read["path"].rsplit("/", 2)[-2:]) == ("GET", ["efficienttrainingjobs", "j"])
