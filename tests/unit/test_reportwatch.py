"""ReportInformer against a scripted API: list then watch of the reports, wakes, and the job-UID check."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from etj_operator import contract as c
from etj_operator.kubeapi import ClusterConnection, KubeApi
from etj_operator.reportwatch import REPORT_SELECTOR, ReportInformer, all_set, controller_uid

PATH = f"/apis/{c.API_VERSION}/{c.REPORT_PLURAL}"


def report(name: str, uid: str | None, step: int = 0, rv: str = "1", namespace: str = "ns") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": rv,
                            "labels": {c.LABEL_JOB_NAME: name, c.LABEL_MANAGED_BY: c.MANAGED_BY}}
    if uid is not None:
        meta["ownerReferences"] = [{"apiVersion": c.API_VERSION, "kind": c.KIND, "name": name, "uid": uid,
                                    "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": c.API_VERSION, "kind": c.REPORT_KIND, "metadata": meta, "status": {"step": step}}


class ScriptedApi:
    """One list answer per list call, one watch stream per watch call; then the watch stays open."""

    def __init__(self, lists: list[Any], watches: list[list[dict[str, Any]]]) -> None:
        self.lists, self.watches = lists, watches
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.seen.append((request.path, query))
        if query.get("watch") != "true":
            return web.json_response(self.lists.pop(0))
        response = web.StreamResponse()
        await response.prepare(request)
        if not self.watches:
            await asyncio.sleep(3600)
        for event in self.watches.pop(0):
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response


async def until(predicate: Any, seconds: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_the_controller_uid_is_the_jobs_only():
    assert controller_uid(report("a", "u1")) == "u1"
    assert controller_uid(report("a", None)) is None
    foreign = report("a", "u1")
    foreign["metadata"]["ownerReferences"][0]["kind"] = "Deployment"
    assert controller_uid(foreign) is None
    not_controller = report("a", "u1")
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    assert controller_uid(not_controller) is None
    assert controller_uid({"metadata": {"ownerReferences": "garbage"}}) is None


@pytest.mark.asyncio
async def test_reports_are_listed_watched_and_counted_only_for_the_job_whose_uid_owns_them():
    script = ScriptedApi(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [report("a", "uid-a"), report("stale", "uid-old")]},
        ],
        watches=[
            [
                {"type": "MODIFIED", "object": report("a", "uid-a", step=7, rv="11")},
                {"type": "ADDED", "object": report("b", "uid-b", step=1, rv="12")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
                {"type": "DELETED", "object": report("stale", "uid-old", rv="16")},
            ],
        ],
    )
    app = web.Application()
    app.router.add_get("/{tail:.*}", script.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api = KubeApi(ClusterConnection(host=f"http://127.0.0.1:{runner.addresses[0][1]}"))
    woken: list[tuple[str, str]] = []
    informer = ReportInformer(api, [], woken.append)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 3)
        await until(lambda: len(informer) == 2)
        a = informer.get(("ns", "a"), "uid-a")
        assert a is not None and a["status"] == {"step": 7}
        assert informer.get(("ns", "a"), "uid-of-a-new-job-named-a") is None  # not this job's report
        assert informer.get(("ns", "a"), None) is None
        assert informer.get(("ns", "b"), "uid-b") is not None
        assert informer.get(("ns", "stale"), "uid-old") is None  # deleted
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.aclose()
        await runner.cleanup()
    assert {("ns", "a"), ("ns", "b"), ("ns", "stale")} <= set(woken)
    calls = [(path, q.get("watch"), q.get("resourceVersion")) for path, q in script.seen]
    assert calls[:2] == [(PATH, None, None), (PATH, "true", "10")]
    assert all(q["labelSelector"] == REPORT_SELECTOR for _, q in script.seen)


@pytest.mark.asyncio
async def test_all_set_waits_for_every_informer():
    one, two, both = asyncio.Event(), asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(all_set(both, one, two))
    one.set()
    await asyncio.sleep(0.01)
    assert not both.is_set()
    two.set()
    await asyncio.wait_for(task, 1)
    assert both.is_set()
