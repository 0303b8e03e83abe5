"""The jobs' reports (``EfficientTrainingJobReport``), listed then watched, by job key.

Each job's pods write their report's status (the one thing their ServiceAccount may write, docs/security.md);
the operator reads it here and mirrors it into the job's ``status.workload`` on the job's next pass. The
informer is :class:`~etj_operator.podwatch.Informer`'s list-then-watch loop (bookmarks, resume, 410 relist,
backoff) over the reports carrying the operator's labels; every change wakes the loop of the report's job.

A report counts for a job only when its controller ownerReference names the job's UID (:meth:`ReportInformer.get`):
the report of a deleted job, not yet garbage-collected when a job of the same name is created, is not the new
job's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from etj_operator import contract
from etj_operator.kubeapi import RESOURCES
from etj_operator.podwatch import POD_SELECTOR, Informer, Key

__all__ = ["REPORT_SELECTOR", "ReportInformer", "all_set", "controller_uid"]

#: The reports the operator creates carry the same labels as every other child of a job.
REPORT_SELECTOR = POD_SELECTOR


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The UID of the object's controller, when that is an EfficientTrainingJob (else None)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if not isinstance(ref, Mapping) or ref.get("controller") is not True:
            continue
        api_version = str(ref.get("apiVersion") or "")
        if ref.get("kind") == contract.KIND and api_version.split("/")[0] == contract.GROUP:
            uid = ref.get("uid")
            return uid if isinstance(uid, str) and uid else None
    return None


class ReportInformer(Informer):
    """The reports by job key ``(namespace, job name)``; read with :meth:`get`."""

    resource = RESOURCES[contract.REPORT_KIND]
    selector = REPORT_SELECTOR
    what = "report"

    def get(self, key: Key, job_uid: str | None) -> Mapping[str, Any] | None:
        """The job's report as last seen, if it is the job's own (its controller is ``job_uid``), else None."""
        report = self._reports.get(key)
        if report is None or not job_uid or controller_uid(report) != job_uid:
            return None
        return report

    def __len__(self) -> int:
        return len(self._reports)

    def _init_index(self) -> None:
        self._reports: dict[Key, dict[str, Any]] = {}

    def _refs(self) -> Iterable[Key]:
        return list(self._reports)

    def _upsert(self, obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        ref = (meta.get("namespace") or "", meta.get("name") or "")
        self._reports[ref] = obj
        self.wake(ref)  # the report has its job's name
        return ref

    def _remove(self, ref: Key) -> None:
        if self._reports.pop(ref, None) is not None:
            self.wake(ref)


async def all_set(target: asyncio.Event, *events: asyncio.Event) -> None:
    """Set ``target`` once every one of ``events`` is set (the informers' ``synced``, for the job loops)."""
    await asyncio.gather(*(event.wait() for event in events))
    target.set()
