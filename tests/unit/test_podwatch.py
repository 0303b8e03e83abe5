"""PodInformer against a scripted API: list, watch from the list's version, bookmarks, 410, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from etj_operator import contract as c
from etj_operator.backoff import Backoff
from etj_operator.kubeapi import ClusterConnection, KubeApi
from etj_operator.podwatch import POD_SELECTOR, PodInformer

#: Jitter-free (rng 0: each delay is its ceiling): 0.05, 0.1, 0.2, 0.2 ... s.
BACKOFF = Backoff(0.05, 0.2, jitter=0.5, rng=lambda: 0.0)


class FakeSleep:
    """The informer's sleep: records each delay and returns at once (the test never waits on wall time)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def pod(name: str, job: str, phase: str = "Pending", namespace: str = "ns", rv: str = "1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": rv,
            "labels": {c.LABEL_JOB_NAME: job, c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_REPLICA_INDEX: "0"},
        },
        "status": {"phase": phase},
    }


class ScriptedApi:
    """Lists and watch streams served in order; a watch with nothing scripted stays open (until cancelled)."""

    def __init__(self, lists: dict[str, list[Any]], watches: list[list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.watches = watches
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.seen.append((request.path, query))
        if query.get("watch") != "true":
            answer = self.lists[request.path].pop(0)
            if isinstance(answer, int):
                headers = {"Retry-After": "7"} if answer == 429 else None
                return web.json_response({"message": "etcd is unhappy"}, status=answer, headers=headers)
            return web.json_response(answer)
        response = web.StreamResponse()
        await response.prepare(request)
        if not self.watches:
            await asyncio.sleep(3600)
        for event in self.watches.pop(0):
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response


async def start(script: ScriptedApi) -> tuple[web.AppRunner, KubeApi]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", script.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)  # a watch the test left open must not hold it up
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, KubeApi(ClusterConnection(host=f"http://127.0.0.1:{runner.addresses[0][1]}"))


async def until(predicate: Any, seconds: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def names(informer: PodInformer, job: str) -> dict[str, str]:
    return {p.name: p.phase for p in informer.get(("ns", job), [])}


@pytest.mark.asyncio
async def test_list_then_watch_from_its_version_with_bookmarks_and_a_relist_on_410():
    script = ScriptedApi(
        lists={
            "/api/v1/pods": [
                {"metadata": {"resourceVersion": "10"}, "items": [pod("a-0", "a"), pod("a-1", "a")]},
                {"metadata": {"resourceVersion": "40"}, "items": [pod("b-0", "b", "Running"), pod("a-2", "a")]},
            ]
        },
        watches=[
            [
                {"type": "ADDED", "object": pod("b-0", "b", rv="11")},
                {"type": "MODIFIED", "object": pod("a-0", "a", "Running", rv="12")},
                {"type": "DELETED", "object": pod("a-1", "a", rv="13")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
            ],
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}],
        ],
    )
    runner, api = await start(script)
    woken: list[tuple[str, str]] = []
    informer = PodInformer(api, [], woken.append)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 3)
        # after the relist: a-0 and a-1 are gone (deleted while the watch was down), a-2 is new
        await until(lambda: names(informer, "a") == {"a-2": "Pending"})
        assert names(informer, "b") == {"b-0": "Running"} and len(informer) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.aclose()
        await runner.cleanup()
    assert ("ns", "a") in woken and ("ns", "b") in woken
    calls = [(path, q.get("watch"), q.get("resourceVersion")) for path, q in script.seen]
    assert calls[:4] == [
        ("/api/v1/pods", None, None),  # cluster-wide list
        ("/api/v1/pods", "true", "10"),  # watch from the list's version
        ("/api/v1/pods", "true", "20"),  # resumed from the bookmark
        ("/api/v1/pods", None, None),  # 410: listed again
    ]
    assert all(q["labelSelector"] == POD_SELECTOR for _, q in script.seen)
    assert script.seen[1][1]["allowWatchBookmarks"] == "true"


@pytest.mark.asyncio
async def test_a_failed_list_is_retried_and_namespaces_are_listed_each():
    script = ScriptedApi(
        lists={
            "/api/v1/namespaces/ns/pods": [
                500,
                429,  # with Retry-After: 7 (a floor for the next delay)
                {"metadata": {"resourceVersion": "5"}, "items": [pod("a-0", "a")]},
            ],
            "/api/v1/namespaces/other/pods": [
                {"metadata": {"resourceVersion": "6"}, "items": [pod("x-0", "x", namespace="other")]}
            ],
        },
        watches=[],
    )
    runner, api = await start(script)
    sleep = FakeSleep()
    backoff = Backoff(0.05, 10.0, jitter=0.5, rng=lambda: 0.0)
    informer = PodInformer(api, ["ns", "other"], lambda key: None, backoff=backoff, sleep=sleep)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 3)  # only once both namespaces are listed
        assert names(informer, "a") == {"a-0": "Pending"}
        assert [p.name for p in informer.get(("other", "x"), [])] == ["x-0"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.aclose()
        await runner.cleanup()
    lists = [path for path, q in script.seen if q.get("watch") is None]
    assert sorted(lists) == sorted(["/api/v1/namespaces/ns/pods"] * 3 + ["/api/v1/namespaces/other/pods"])
    assert sleep.delays == [0.05, 7.0]  # the first retry's backoff, then the server's Retry-After


@pytest.mark.asyncio
async def test_an_odd_answer_does_not_end_the_informer_and_empty_watches_back_off():
    script = ScriptedApi(
        lists={
            "/api/v1/pods": [
                {"metadata": {"resourceVersion": "1"}, "items": ["not a pod"]},  # a bug's worth of surprise
                {"metadata": {"resourceVersion": "2"}, "items": [pod("a-0", "a")]},
            ]
        },
        watches=[[], [], []],  # streams that end at once, empty
    )
    runner, api = await start(script)
    sleep = FakeSleep()
    # a clock that stands still: every watch that ends empty ended "at once" (QUICK_END_SECONDS)
    informer = PodInformer(api, [], lambda key: None, backoff=BACKOFF, clock=lambda: 0.0, sleep=sleep)
    task = asyncio.create_task(informer.run())
    watches = lambda: [q for _, q in script.seen if q.get("watch") == "true"]  # noqa: E731
    try:
        await until(lambda: names(informer, "a") == {"a-0": "Pending"} and len(watches()) == 4)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.aclose()
        await runner.cleanup()
    # the bad list: back off, list again; then each of the 3 empty watches backs off further (capped at 0.2 s);
    # the 4th watch stays open. Not hundreds of immediate re-watches.
    assert sleep.delays == [0.05, 0.1, 0.2, 0.2]
    assert len(watches()) == 4
