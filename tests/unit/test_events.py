"""Events: the manifest `kubectl describe` reads, and a poster that never fails or blocks a reconcile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from etj_operator import contract as c
from etj_operator.builders import EVENT_MESSAGE_LIMIT, build_event
from etj_operator.errors import TransientApiError
from etj_operator.events import EventPoster
from etj_operator.lifecycle import Event
from etj_operator.ports import ObjectCreator

JOB = {"metadata": {"name": "digits", "namespace": "team-a", "uid": "u-1", "resourceVersion": "7"}}


def test_the_event_names_the_job_and_the_operator():
    e = build_event(JOB, "Normal", "JobCreated", "created 2 pods", component="etj", instance="pod-1", now="T")
    assert e["kind"] == "Event" and e["metadata"] == {"generateName": "digits.", "namespace": "team-a"}
    assert e["involvedObject"] == {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "name": "digits",
        "namespace": "team-a",
        "uid": "u-1",
        "resourceVersion": "7",
    }
    assert (e["type"], e["reason"], e["message"]) == ("Normal", "JobCreated", "created 2 pods")
    assert e["source"] == {"component": "etj"} and e["reportingInstance"] == "pod-1"
    assert e["firstTimestamp"] == e["lastTimestamp"] == "T" and e["count"] == 1


def test_a_long_message_is_cut_in_the_middle_to_the_api_limit():
    message = "head " + "x" * 5000 + " tail"
    cut = build_event(JOB, "Warning", "R", message, component="etj", instance="i", now="T")["message"]
    assert len(cut) <= EVENT_MESSAGE_LIMIT and cut.startswith("head ") and cut.endswith(" tail") and "..." in cut


class FakeApi(ObjectCreator):
    """An ObjectCreator that takes 10 ms per create and fails every one when told."""

    def __init__(self, fail: bool = False) -> None:
        self.created: list[Mapping[str, Any]] = []
        self.fail = fail

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        await asyncio.sleep(0.01)
        if self.fail:
            raise TransientApiError("503 from the API server", code=503)
        self.created.append(manifest)
        return True


@pytest.mark.asyncio
async def test_the_poster_returns_at_once_and_posts_in_the_background():
    api = FakeApi()
    poster = EventPoster(api, component="etj", instance="i", clock=lambda: "T")
    poster(JOB, Event("Normal", "JobCreated", "m"))
    assert api.created == []  # not yet: the caller was not held up
    await poster.drain()
    assert [m["reason"] for m in api.created] == ["JobCreated"]


@pytest.mark.asyncio
async def test_a_failed_post_is_logged_not_raised(caplog):
    poster = EventPoster(FakeApi(fail=True), component="etj", instance="i")
    with caplog.at_level(logging.WARNING, logger="etj_operator.events"):
        poster(JOB, Event("Warning", "BudgetExceeded", "m"))
        await poster.drain()
    assert "could not post Event BudgetExceeded on team-a/digits" in caplog.text


@pytest.mark.asyncio
async def test_events_wait_for_the_reconcile_passes_to_pause_but_not_forever():
    api = FakeApi()
    idle = asyncio.Event()  # a pass is running
    poster = EventPoster(api, component="etj", instance="i", idle=idle, max_delay_seconds=5)
    poster(JOB, Event("Normal", "JobCreated", "m"))
    await asyncio.sleep(0.05)
    assert api.created == []  # pods first
    idle.set()
    await poster.drain()
    assert [m["reason"] for m in api.created] == ["JobCreated"]

    busy = EventPoster(api, component="etj", instance="i", idle=asyncio.Event(), max_delay_seconds=0.05)
    busy(JOB, Event("Normal", "JobSucceeded", "m"))
    await busy.drain()
    assert [m["reason"] for m in api.created] == ["JobCreated", "JobSucceeded"]  # posted after the max delay
