"""A malformed status value never freezes a job: the pass repairs it, says so, and restarts and deadlines hold."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etj_operator.config import OperatorConfig
from etj_operator.lifecycle import PodView
from etj_operator.ports import JobWriter
from etj_operator.reconciler import REASON_STATUS_REPAIRED, JobReconciler, JobState

from jobs import job_manifest

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
#: What a hand edit (or an older operator) can leave in the open parts of the status schema.
MALFORMED: dict[str, Any] = {
    "phase": "Running",
    "restarts": "one",
    "policy": [],
    "control": "stop",
    "placement": 5,
    "energy": ["joules", 0],
    "conditions": [{"type": "Created", "status": "True", "reason": "JobCreated", "message": "m"}, "junk"],
}


class Api(JobWriter):
    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None

    async def patch_job_status(self, namespace: str, name: str, status: Any, **_: Any) -> bool:
        self.statuses.append(dict(status))
        return True

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        return True

    async def delete(self, kind: str, namespace: str | None, name: str, **_: Any) -> bool:
        self.deleted.append(name)
        return True


def pod(index: int, phase: str, generation: int, started: datetime) -> PodView:
    return PodView(
        name=f"broken-worker-{index}",
        index=index,
        gang_generation=generation,
        phase=phase,
        exit_code=1 if phase == "Failed" else None,
        uid=f"pod-{index}",
        owner_uid="uid-broken",
        start_time=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


async def one_pass(body: dict[str, Any], pods: list[PodView]) -> tuple[Any, Api, list[Any]]:
    api, events = Api(), []
    reconciler = JobReconciler(api, OperatorConfig(), lambda _body, event: events.append(event))
    plan = await reconciler.reconcile(body, pods, JobState(), now=NOW)
    return plan, api, events


@pytest.mark.asyncio
async def test_a_failed_pod_still_restarts_the_gang_counted_from_the_pods_generation():
    body = job_manifest("broken", replicas=2, runPolicy={"backoffLimit": 3}) | {"status": dict(MALFORMED)}
    pods = [pod(0, "Running", 1, NOW), pod(1, "Failed", 1, NOW)]
    plan, api, events = await one_pass(body, pods)
    assert plan.status["restarts"] == 2  # generation 1 was running: this is the second restart, not the first
    assert plan.status["phase"] == "Restarting"
    assert sorted(plan.delete_pods) == ["broken-worker-0", "broken-worker-1"]
    repaired = [e for e in events if e.reason == REASON_STATUS_REPAIRED]
    assert len(repaired) == 1 and repaired[0].type == "Warning"
    for path in ("status.restarts", "status.policy", "status.control", "status.placement", "status.energy",
                 "status.conditions[1]"):
        assert path in repaired[0].message
    written = api.statuses[0]
    assert isinstance(written["policy"], dict) and isinstance(written["control"], dict)
    assert written["restarts"] == 2
    # the list is replaced by a fresh account (said in the Event): nothing measured yet, so no totals, "-" shown
    assert "joules" not in written["energy"] and written["energy"]["display"] == {"power": "-", "energy": "-"}


@pytest.mark.asyncio
async def test_the_backoff_limit_still_ends_the_job():
    body = job_manifest("broken", replicas=1, runPolicy={"backoffLimit": 2}) | {"status": dict(MALFORMED)}
    plan, _, _ = await one_pass(body, [pod(0, "Failed", 2, NOW)])
    assert plan.status["phase"] == "Failed"
    failed = [x for x in plan.status["conditions"] if x["type"] == "Failed"]
    assert failed[0]["reason"] == "BackoffLimitExceeded"


@pytest.mark.asyncio
async def test_an_unreadable_start_time_still_lets_the_deadline_end_the_job():
    status = {**MALFORMED, "restarts": 0, "startTime": {"when": "then"}}
    body = job_manifest("broken", replicas=1, runPolicy={"activeDeadlineSeconds": 60}) | {"status": status}
    plan, _, events = await one_pass(body, [pod(0, "Running", 0, NOW - timedelta(minutes=5))])
    assert plan.status["phase"] == "Failed"
    assert [x["reason"] for x in plan.status["conditions"] if x["type"] == "Failed"] == ["DeadlineExceeded"]
    assert any("status.startTime" in e.message for e in events if e.reason == REASON_STATUS_REPAIRED)


@pytest.mark.asyncio
async def test_a_well_formed_status_is_not_reported():
    body = job_manifest("broken", replicas=1) | {"status": {"phase": "Running", "restarts": 0}}
    _, _, events = await one_pass(body, [pod(0, "Running", 0, NOW)])
    assert not [e for e in events if e.reason == REASON_STATUS_REPAIRED]


@pytest.mark.asyncio
async def test_a_malformed_drain_does_not_keep_an_exceeded_budget_from_stopping_the_job():
    energy = {"joules": 7.2e6, "series": {}, "history": [], "source": "Prometheus"}  # 2 kWh used
    status = {**MALFORMED, "restarts": 0, "energy": energy, "policy": {"drain": [], "lowCycles": "x"}}
    spec = {"energy": {"energyBudget": {"kilowattHours": 1.0, "action": "Stop"}}}
    body = job_manifest("broken", replicas=1, **spec) | {"status": status}
    plan, _, events = await one_pass(body, [pod(0, "Running", 0, NOW)])
    assert plan.status["control"]["stopRequested"] is True
    exceeded = [x for x in plan.status["conditions"] if x["type"] == "BudgetExceeded"]
    assert exceeded and exceeded[0]["status"] == "True"
    assert plan.status["energy"]["joules"] == pytest.approx(7.2e6)  # the account was kept, not reset
    repaired = next(e for e in events if e.reason == REASON_STATUS_REPAIRED)
    assert "status.policy.drain" in repaired.message and "status.policy.lowCycles" in repaired.message
