"""A job deleted while its pass decides: the status write finds no job, and nothing is created."""

from __future__ import annotations

from typing import Any

import pytest

from etj_operator.config import OperatorConfig
from etj_operator.errors import JobGone
from etj_operator.reconciler import JobReconciler, JobState

from jobs import job_manifest


class GoneApi:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    async def patch_job_status(self, namespace: str, name: str, status: Any) -> bool:
        return False  # 404: the job is gone

    async def create(self, manifest: dict[str, Any]) -> bool:
        self.created.append(manifest)
        return True


@pytest.mark.asyncio
async def test_a_gone_job_raises_job_gone_before_any_child_or_pod_is_created():
    api = GoneApi()
    events: list[Any] = []
    reconciler = JobReconciler(api, OperatorConfig(), lambda body, event: events.append(event))  # type: ignore[arg-type]
    with pytest.raises(JobGone):
        await reconciler.reconcile(job_manifest("vanished", replicas=2), [], JobState())
    assert api.created == [] and events == []
