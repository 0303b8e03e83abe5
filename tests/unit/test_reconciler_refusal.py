"""A request the API server refuses is shown on the job in the same pass, once, and cleared when it passes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from etj_operator import conditions as cond
from etj_operator.config import OperatorConfig
from etj_operator.errors import PermanentApiError
from etj_operator.ports import JobWriter
from etj_operator.reconciler import JobReconciler, JobState

from jobs import job_manifest


class Api(JobWriter):
    """Pod creates are refused (422) while ``refusing`` says so; status patches are kept in order."""

    def __init__(self, refusing: int) -> None:
        self.refusing = refusing
        self.patches: list[dict[str, Any]] = []

    async def patch_job_status(self, namespace: str, name: str, status: Any, **_: Any) -> bool:
        self.patches.append(dict(status))
        return True

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        if manifest["kind"] == "Pod" and self.refusing:
            self.refusing -= 1
            name = manifest["metadata"]["name"]
            raise PermanentApiError(
                f'Pod "{name}" is invalid: spec.containers[0].image: Required value',
                code=422,
                reason="Invalid",
                verb="create",
                kind="Pod",
                namespace="default",
                name=name,
            )
        return True

    async def delete(self, kind: str, namespace: str | None, name: str, **_: Any) -> bool:
        return True


def refused(patches: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ApiRequestRefused condition of the last patch that wrote conditions."""
    written = [p["conditions"] for p in patches if "conditions" in p]
    return cond.find(written[-1], cond.API_REQUEST_REFUSED) if written else None


@pytest.mark.asyncio
async def test_a_refused_pod_create_sets_the_condition_and_one_warning_then_clears():
    api, events = Api(refusing=2), []
    reconciler = JobReconciler(api, OperatorConfig(), lambda body, event: events.append(event))
    state, body = JobState(), job_manifest("bad", replicas=1)

    with pytest.raises(PermanentApiError):  # the supervisor backs off on it
        await reconciler.reconcile(body, [], state)
    shown = refused(api.patches)
    assert shown is not None and shown["status"] == "True" and shown["reason"] == "Invalid"
    assert shown["message"].startswith("create Pod/bad-worker-0 refused (422 Invalid): Pod \"bad-worker-0\" is invalid")
    warnings = [e for e in events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["FailedCreate"] and "Pod/bad-worker-0" in warnings[0].message

    writes = len(api.patches)
    with pytest.raises(PermanentApiError):  # the same refusal again: no new write, no second Event
        await reconciler.reconcile(body, [], state)
    assert len(api.patches) == writes and len([e for e in events if e.type == "Warning"]) == 1

    await reconciler.reconcile(body, [], state)  # accepted: the condition goes False
    cleared = refused(api.patches)
    assert cleared is not None and cleared["status"] == "False" and cleared["reason"] == cond.REASON_REQUESTS_ACCEPTED
    assert cond.find(state.owned["conditions"], cond.API_REQUEST_REFUSED)["status"] == "False"  # type: ignore[index]
    await reconciler.reconcile(body, [], state)
    assert len([p for p in api.patches if "conditions" in p and refused([p])]) == 2  # True once, False once
