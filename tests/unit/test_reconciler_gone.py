"""A job deleted while its pass decides: the status write finds no job, and nothing is created."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from etj_operator.config import OperatorConfig
from etj_operator.errors import JobGone
from etj_operator.ports import JobWriter
from etj_operator.reconciler import JobReconciler, JobState

from jobs import job_manifest


class GoneApi(JobWriter):
    """The job is gone: its status write finds nothing (404); every create and delete is recorded."""

    def __init__(self) -> None:
        self.created: list[Mapping[str, Any]] = []
        self.deleted: list[tuple[str, str]] = []

    async def patch_job_status(self, namespace: str, name: str, status: Any, **_: Any) -> bool:
        return False  # 404 (or another job's UID): the job is gone

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        self.created.append(manifest)
        return True

    async def delete(self, kind: str, namespace: str | None, name: str, **_: Any) -> bool:
        self.deleted.append((kind, name))
        return True

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None


@pytest.mark.asyncio
async def test_a_gone_job_raises_job_gone_before_any_child_or_pod_is_created():
    api = GoneApi()
    events: list[Any] = []
    reconciler = JobReconciler(api, OperatorConfig(), lambda body, event: events.append(event))
    with pytest.raises(JobGone):
        await reconciler.reconcile(job_manifest("vanished", replicas=2), [], JobState())
    assert api.created == [] and api.deleted == [] and events == []
