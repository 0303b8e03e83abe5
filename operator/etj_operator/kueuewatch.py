"""Kueue's objects the operator decides from, listed then watched (with ETJ_KUEUE): no API read per pass.

* :class:`WorkloadInformer`: the jobs' Workloads (``kueue.x-k8s.io/v1beta2``, carrying the operator's labels, as
  every child of a job), by job key; a Workload counts for a job only when its controller ownerReference is the
  job's UID. Every change wakes the job's loop (an admission, an eviction).
* :class:`FlavorInformer`: the ResourceFlavors (cluster-scoped), by name: their node labels and tolerations are
  what an admission puts on the pods.

Both are :class:`~etj_operator.podwatch.Informer`'s list-then-watch loop (bookmarks, resume, 410 relist,
backoff). :class:`KueueInformers` runs the two and is what the reconciler reads (``KueueIndex``); the job loops
make no pass before both have listed (a restarted operator must see an admitted job's Workload before it
decides, or it would take the job for a queued one and stop its pods).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from etj_operator import contract
from etj_operator.kubeapi import RESOURCES, KubeApi
from etj_operator.podwatch import POD_SELECTOR, Informer, Key
from etj_operator.reportwatch import all_set, controller_uid

__all__ = ["FlavorInformer", "KueueInformers", "WorkloadInformer"]


class WorkloadInformer(Informer):
    """The Workloads the operator made, by job key ``(namespace, job name)``; read with :meth:`get`."""

    resource = RESOURCES["Workload"]
    selector = POD_SELECTOR  # the operator's labels: the job-name label and managed-by
    what = "workload"

    def _init_index(self) -> None:
        self._by_job: dict[Key, dict[str, dict[str, Any]]] = {}
        self._job_of: dict[Key, Key] = {}  # (namespace, workload name) -> job key

    def get(self, key: Key, job_uid: str | None) -> Mapping[str, Any] | None:
        """The job's own Workload (its controller is ``job_uid``) as last seen, or None.

        Another job's of the same name (garbage collection pending) is never the job's, whatever its name.
        """
        if not job_uid:
            return None
        return next((w for w in (self._by_job.get(key) or {}).values() if controller_uid(w) == job_uid), None)

    def __len__(self) -> int:
        return len(self._job_of)

    def _refs(self) -> Iterable[Key]:
        return list(self._job_of)

    def _upsert(self, obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        ref = (meta.get("namespace") or "", meta.get("name") or "")
        job = (ref[0], (meta.get("labels") or {}).get(contract.LABEL_JOB_NAME, ""))
        previous = self._job_of.get(ref)
        if previous is not None and previous != job:
            self._forget(ref, previous)
        self._by_job.setdefault(job, {})[ref[1]] = obj
        self._job_of[ref] = job
        self.wake(job)
        return ref

    def _remove(self, ref: Key) -> None:
        job = self._job_of.pop(ref, None)
        if job is not None:
            self._forget(ref, job)
            self.wake(job)

    def _forget(self, ref: Key, job: Key) -> None:
        held = self._by_job.get(job)
        if held is not None:
            held.pop(ref[1], None)
            if not held:
                del self._by_job[job]


class FlavorInformer(Informer):
    """The ResourceFlavors by name (cluster-scoped: one list and watch, whatever namespaces the operator watches)."""

    resource = RESOURCES["ResourceFlavor"]
    selector = ""
    what = "resourceflavor"

    def _init_index(self) -> None:
        self._flavors: dict[str, dict[str, Any]] = {}

    def all(self) -> Mapping[str, Mapping[str, Any]]:
        """Every flavor as last seen, by name (a copy of the index, not of the objects)."""
        return dict(self._flavors)

    def _refs(self) -> Iterable[Key]:
        return [("", name) for name in self._flavors]

    def _upsert(self, obj: dict[str, Any]) -> Key:
        name = str((obj.get("metadata") or {}).get("name") or "")
        self._flavors[name] = obj
        return ("", name)

    def _remove(self, ref: Key) -> None:
        self._flavors.pop(ref[1], None)


class KueueInformers:
    """The Workload and ResourceFlavor informers together: what the reconciler reads of Kueue (``KueueIndex``)."""

    def __init__(self, api: KubeApi, namespaces: Sequence[str], wake: Callable[[Key], None]) -> None:
        self.workloads = WorkloadInformer(api, namespaces, wake)
        self.flavors = FlavorInformer(api, (), lambda _key: None)  # admissions wake the jobs, not flavors
        #: Set once both have listed everything (the job loops wait for it).
        self.synced = asyncio.Event()

    def workload(self, key: Key, job_uid: str | None) -> Mapping[str, Any] | None:
        """The job's own Workload, or None."""
        return self.workloads.get(key, job_uid)

    def all_flavors(self) -> Mapping[str, Mapping[str, Any]]:
        """The ResourceFlavors by name."""
        return self.flavors.all()

    async def run(self) -> None:
        """List and watch both until cancelled."""
        tasks = [
            asyncio.create_task(self.workloads.run(), name="etj-workload-informer"),
            asyncio.create_task(self.flavors.run(), name="etj-flavor-informer"),
            asyncio.create_task(all_set(self.synced, self.workloads.synced, self.flavors.synced)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
