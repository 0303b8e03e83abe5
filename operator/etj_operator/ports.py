"""The API calls the operator's writers make, as small protocols: the seams tests put their doubles at.

The reconciler and the Event poster depend on these, not on :class:`~etj_operator.kubeapi.KubeApi`: each
protocol names exactly the calls its user makes, so a test double implements three methods (or one), is
type-checked against them, and cannot drift from the real client's signatures. ``KubeApi`` satisfies both
structurally (mypy checks it in :mod:`etj_operator.kubeapi`; ``tests/unit/test_ports.py`` checks the
test doubles).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["JobWriter", "ObjectCreator"]


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
    ) -> bool:
        """Write these status keys (None removes one) on the job of ``uid`` only; False when that job is gone."""
        ...
