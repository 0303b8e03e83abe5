"""The node agent's reads of the API, through the operator's own client (:class:`~etj_operator.kubeapi.KubeApi`).

Two reads, both through KubeApi's public ``request`` and ``get`` (counted like the operator's calls):

* the pods bound to the node: ``GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`` (one list per cycle,
  served from the API server's watch cache for a field selector on ``spec.nodeName``);
* each job those pods' controller ownerReferences name, by namespace and name, kept only when its
  ``metadata.uid`` is the one the pod names: a job deleted and re-created under the same name is another job.

The agent's ServiceAccount needs ``list`` on pods (cluster-wide) and ``get`` on efficienttrainingjobs; it
writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etj_operator import contract
from etj_operator.kubeapi import RESOURCES, KubeApi
from etj_operator.nodeagent.intent import pod_info
from etj_operator.nodeagent.records import PodInfo

__all__ = ["KubeClusterReader"]


class KubeClusterReader:
    """:class:`~etj_operator.nodeagent.agent.ClusterReader` over a KubeApi."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    async def pods_on_node(self, node: str) -> list[PodInfo]:
        """The pods whose ``spec.nodeName`` is ``node`` (the API errors of KubeApi propagate)."""
        res = RESOURCES["Pod"]
        answer = await self.api.request(
            "list", "GET", res.plural, res.path(), query={"fieldSelector": f"spec.nodeName={node}"}, kind="Pod"
        )
        items = answer.get("items") if isinstance(answer, Mapping) else None
        pods = [pod_info(item) for item in items or [] if isinstance(item, Mapping)]
        return [pod for pod in pods if pod is not None]

    async def job(self, namespace: str, name: str, uid: str) -> Mapping[str, Any] | None:
        """The job ``namespace/name`` if its UID is ``uid``; None when absent or another job of the name."""
        job = await self.api.get(contract.KIND, namespace, name)
        if job is None:
            return None
        meta = job.get("metadata")
        if not isinstance(meta, Mapping) or meta.get("uid") != uid:
            return None
        return job
