"""The reconciler creates each job's report and mirrors it, parsed defensively, into the job's status.workload."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from etj_operator import builders
from etj_operator import contract as c
from etj_operator.config import OperatorConfig
from etj_operator.reconciler import JobReconciler, JobState

from jobs import job_manifest


class Api:
    """Records creates and status writes."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str]] = []
        self.status_writes: list[dict[str, Any]] = []

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None

    async def patch_job_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        uid: str | None = None,
        status_exists: bool = True,
        term: str | None = None,
        stamp_resource_version: str | None = None,
    ) -> bool:
        self.status_writes.append(dict(status))
        return True

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        self.created.append((manifest["kind"], manifest["metadata"]["name"]))
        return True

    async def delete(self, kind: str, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        return True


def report_of(body: Mapping[str, Any], status: Any) -> dict[str, Any]:
    report = builders.build_report(builders.JobRef.from_body(body))
    report["status"] = status
    return report


@pytest.mark.asyncio
async def test_the_first_pass_creates_the_report_with_the_other_children_before_the_binding():
    api = Api()
    reconciler = JobReconciler(api, OperatorConfig(), lambda body, event: None)
    await reconciler.reconcile(job_manifest("digits", replicas=1), [], JobState())
    kinds = [kind for kind, _ in api.created]
    assert (c.REPORT_KIND, "digits") in api.created
    assert kinds.index(c.REPORT_KIND) < kinds.index("RoleBinding") < kinds.index("Pod")


@pytest.mark.asyncio
async def test_the_report_is_mirrored_into_status_workload_and_a_forged_copy_is_replaced(caplog):
    api = Api()
    reconciler = JobReconciler(api, OperatorConfig(), lambda body, event: None)
    body = job_manifest("digits", replicas=1)
    # someone wrote status.workload directly (an old harness, an admin): it is not the report and does not count
    body["status"] = {c.WORKLOAD: {"step": 10**9, "stages": [{"name": "forged", "applied": True}]}}
    report = report_of(body, {
        "step": 40,
        "epoch": 1,
        "checkpoint": {"acknowledged": 1, "time": "2026-01-01T00:00:00Z"},
        "stages": [{"name": "prune-50", "applied": True, "rolledBack": False}, {"name": 7}],
        "loss": "low",
    })
    state = JobState()
    with caplog.at_level(logging.WARNING, logger="etj_operator.reconciler"):
        plan = await reconciler.reconcile(body, [], state, report=report)
        await reconciler.reconcile(body, [], state, report=report)  # the same problems: logged once
    mirrored = {
        "step": 40,
        "epoch": 1,
        "checkpoint": {"acknowledged": 1, "time": "2026-01-01T00:00:00Z"},
        "stages": [{"name": "prune-50", "applied": True, "rolledBack": False}],
    }
    assert plan.status[c.WORKLOAD] == mirrored
    assert plan.status["stage"] == "prune-50"  # from the report, not from the forged copy
    assert api.status_writes[0][c.WORKLOAD] == mirrored
    assert state.owned is not None and state.owned[c.WORKLOAD] == mirrored
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1
    assert "status.stages[1].name" in warnings[0] and "status.loss" in warnings[0]


@pytest.mark.asyncio
async def test_without_a_report_the_last_mirror_is_kept():
    api = Api()
    reconciler = JobReconciler(api, OperatorConfig(), lambda body, event: None)
    body = job_manifest("digits", replicas=1)
    state = JobState()
    await reconciler.reconcile(body, [], state, report=report_of(body, {"step": 5}))
    plan = await reconciler.reconcile(body, [], state)  # the informer lost it for a moment
    assert plan.status[c.WORKLOAD] == {"step": 5}
    plan = await reconciler.reconcile(body, [], state, report=report_of(body, {"step": 6}))
    assert plan.status[c.WORKLOAD] == {"step": 6}
    assert [w[c.WORKLOAD] for w in api.status_writes if c.WORKLOAD in w] == [{"step": 5}, {"step": 6}]


@pytest.mark.asyncio
async def test_a_report_that_is_no_object_gives_an_empty_workload_and_no_crash():
    api = Api()
    reconciler = JobReconciler(api, OperatorConfig(), lambda body, event: None)
    body = job_manifest("digits", replicas=1)
    plan = await reconciler.reconcile(body, [], JobState(), report=report_of(body, ["not", "an", "object"]))
    assert c.WORKLOAD not in plan.status
