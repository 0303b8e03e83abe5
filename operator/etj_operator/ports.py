"""The API calls the operator's writers make, as small protocols: the seams tests put their doubles at.

The reconciler and the Event poster depend on these, not on :class:`~etj_operator.kubeapi.KubeApi`, and the
per-job loops (:mod:`etj_operator.supervisor`) on :class:`JobPasses`, not on the reconciler: each protocol
names exactly the calls its user makes, so a test double implements three methods (or one), is
type-checked against them, and cannot drift from the real client's signatures. ``KubeApi`` satisfies both
structurally (mypy checks it in :mod:`etj_operator.kubeapi`; ``tests/unit/test_ports.py`` checks the
test doubles).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # types only: this module imports nothing of the operator at run time
    from etj_operator.lifecycle import Plan, PodView
    from etj_operator.reconciler import JobState
    from etj_operator.telemetry.base import JobTelemetry
    from etj_operator.telemetry.hub import TelemetryHub

__all__ = ["JobPasses", "JobWriter", "ObjectCreator", "WorkloadWriter"]


@runtime_checkable
class ObjectCreator(Protocol):
    """Creates objects from manifests: all the Event poster needs."""

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create the object ``manifest`` describes; False (not an error) when it already exists."""
        ...


@runtime_checkable
class JobWriter(ObjectCreator, Protocol):
    """What the reconciler does: children and pods (create, delete, get) and the job's status subresource."""

    async def delete(self, kind: str, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        """Delete an object (background propagation; only the one of ``uid`` when given); False when it was gone."""
        ...

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Read one object (a child whose create found one there: whose is it?); None when it does not exist."""
        ...

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
        """Write these status keys (None removes one) on the job of ``uid`` only; False when that job is gone.

        ``term``/``stamp_resource_version``: the leader fencing (see ``KubeApi.patch_job_status``).
        """
        ...


@runtime_checkable
class WorkloadWriter(JobWriter, Protocol):
    """The reconciler's calls with ETJ_KUEUE: a JobWriter's, and the Workload's status (etj_operator.kueue)."""

    async def patch_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any], *, resource_version: str
    ) -> bool:
        """Merge-patch the object's status as it was at ``resource_version``; False when it changed since or is gone."""
        ...


class JobPasses(Protocol):
    """What a job's loop needs of the reconciler: run one pass of a job, forget a job whose loop ended."""

    @property
    def hub(self) -> TelemetryHub | None:
        """The telemetry hub whose latest cycle each pass takes (None: no telemetry)."""
        ...

    async def reconcile(
        self,
        body: Mapping[str, Any],
        pods: Iterable[PodView],
        state: JobState,
        now: datetime | None = None,
        telemetry: JobTelemetry | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> Plan:
        """Observe, decide and act for the job ``body``; the plan says what was done."""
        ...

    def forget(self, namespace: str, name: str) -> None:
        """The job's loop ended: drop what is kept for it (its phase, telemetry registration, metric series)."""
        ...
