"""The agent's API reads through the operator's own client (KubeApi) against a stand-in API server."""

from __future__ import annotations

import asyncio

import pytest
from agentkit import NODE, FakeApiServer, job, pod

from etj_operator.errors import TransientApiError
from etj_operator.kubeapi import ClusterConnection, KubeApi
from etj_operator.nodeagent.kube import KubeClusterReader


def read(cluster, call):
    async def main():
        api = KubeApi(ClusterConnection(host=server.url), timeout_seconds=5)
        try:
            return await call(KubeClusterReader(api)), dict(api.calls)
        finally:
            await api.aclose()

    with FakeApiServer(cluster) as server:
        result = asyncio.run(main())
        return result, list(server.requests)


def test_pods_are_listed_by_node_with_a_field_selector(cluster):
    owner = cluster.add_job(job("resnet", "uid-a"))
    cluster.add_pod(pod("resnet-worker-0", "p0", owner))
    cluster.add_pod(pod("elsewhere", "p1", owner, node="gpu-node-b"))
    (pods, calls), requests = read(cluster, lambda r: r.pods_on_node(NODE))
    assert [(p.name, p.uid, p.job_uid) for p in pods] == [("resnet-worker-0", "p0", "uid-a")]
    assert requests == ["/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-node-a"]
    assert calls == {("list", "pods"): 1}


def test_a_job_is_the_one_of_that_uid_or_none(cluster):
    cluster.add_job(job("resnet", "uid-new"))
    (same, _), _ = read(cluster, lambda r: r.job("ml", "resnet", "uid-new"))
    assert same["metadata"]["uid"] == "uid-new"
    (reused, _), _ = read(cluster, lambda r: r.job("ml", "resnet", "uid-old"))
    assert reused is None  # a re-created job of the same name is another job
    (gone, _), requests = read(cluster, lambda r: r.job("ml", "missing", "uid-x"))
    assert gone is None
    assert requests == ["/apis/efficienttraining.dev/v1alpha1/namespaces/ml/efficienttrainingjobs/missing"]


def test_api_errors_propagate_to_the_agent(cluster):
    cluster.fail = True
    with pytest.raises(TransientApiError):
        read(cluster, lambda r: r.pods_on_node(NODE))
