"""A pass that fails half-way keeps its Events: they are posted once its status is written, exactly once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from etj_operator.config import OperatorConfig
from etj_operator.errors import TransientApiError
from etj_operator.ports import JobWriter
from etj_operator.reconciler import JobReconciler, JobState

from jobs import job_manifest


class Api(JobWriter):
    """Records every call in order; pod creates and status writes fail as told."""

    def __init__(self, *, failing_pod_creates: int = 0, failing_status_writes: int = 0) -> None:
        self.calls: list[str] = []
        self.failing_pod_creates = failing_pod_creates
        self.failing_status_writes = failing_status_writes

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}")
        return None

    async def patch_job_status(self, namespace: str, name: str, status: Any, **_: Any) -> bool:
        if self.failing_status_writes:
            self.failing_status_writes -= 1
            self.calls.append("status write failed")
            raise TransientApiError("503 on the status write")
        self.calls.append("status")
        return True

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "Pod" and self.failing_pod_creates:
            self.failing_pod_creates -= 1
            self.calls.append(f"create {name} failed")
            raise TransientApiError("500 on a pod create")
        self.calls.append(f"create {kind}" if kind != "Pod" else f"create {name}")
        return True

    async def delete(self, kind: str, namespace: str | None, name: str, **_: Any) -> bool:
        self.calls.append(f"delete {name}")
        return True


def reconciler_for(api: Api) -> JobReconciler:
    def post(body: Any, event: Any) -> None:
        api.calls.append(f"event {event.reason}")

    return JobReconciler(api, OperatorConfig(), post)


@pytest.mark.asyncio
async def test_the_events_of_a_pass_are_posted_before_its_pod_creates_and_survive_their_failure():
    api = Api(failing_pod_creates=1)
    reconciler, state, body = reconciler_for(api), JobState(), job_manifest("unlucky", replicas=1)
    with pytest.raises(TransientApiError):
        await reconciler.reconcile(body, [], state)
    assert api.calls.index("status") < api.calls.index("event JobCreated") < api.calls.index(
        "create unlucky-worker-0 failed")
    await reconciler.reconcile(body, [], state)  # the retry: from the written status (Created=True)
    assert api.calls.count("event JobCreated") == 1
    assert api.calls[-1] == "create unlucky-worker-0"


@pytest.mark.asyncio
async def test_a_failed_status_write_posts_nothing_and_the_retry_posts_once():
    api = Api(failing_status_writes=1)
    reconciler, state, body = reconciler_for(api), JobState(), job_manifest("late", replicas=1)
    with pytest.raises(TransientApiError):
        await reconciler.reconcile(body, [], state)
    assert api.calls == ["status write failed"]  # no event, no child, no pod on an unrecorded decision
    await reconciler.reconcile(body, [], state)
    assert api.calls.count("event JobCreated") == 1
    assert api.calls.index("status") < api.calls.index("event JobCreated") < api.calls.index("create late-worker-0")
