"""The operator's pods, listed then watched, kept as compact :class:`PodView` summaries by job.

A small informer: per watched namespace (or once cluster-wide) it lists the pods that carry the
operator's labels, then watches them from the list's resourceVersion, with bookmarks; a watch that ends
is resumed from the last version seen, a 410 Gone (version too old) lists again, and errors are retried
with backoff (:data:`BACKOFF`, the server's Retry-After as a floor), forever. Every change wakes the loop
of the pod's job.

Why not Kopf's index, as before: Kopf runs every watch event of every pod through its full per-object
machinery (cause detection, handler invocation, patch bookkeeping) just to call an indexing function; a
burst of 100 jobs makes 400 pods and as many events. Here an event costs a JSON decode and a dict update
(bench/operator_scale.py, docs/benchmarks.md). The guarantee Kopf's index gave is kept: :attr:`synced`
is set once every namespace has been listed, and job loops make their first pass only after that, so a
restarted operator sees every existing pod before it decides anything (no duplicate pods).

The list/watch loop itself is :class:`Informer`, which :class:`PodInformer` and the report informer
(:mod:`etj_operator.reportwatch`) share; each says which resource it follows and how it keeps what it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

from etj_operator import contract
from etj_operator.backoff import Backoff
from etj_operator.errors import ApiStatusError, GoneError, PermanentApiError, TransientApiError
from etj_operator.kubeapi import RESOURCES, KubeApi, Resource
from etj_operator.lifecycle import PodView
from etj_operator.reconciler import pod_view

logger = logging.getLogger(__name__)

Key = tuple[str, str]

#: The operator's pods: every pod it creates carries both labels.
POD_SELECTOR: Final = f"{contract.LABEL_JOB_NAME},{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
#: Backoff between failed list/watch attempts: 0.5-1 s at first, doubling, at most 30 s apart.
BACKOFF: Final = Backoff(base_seconds=1.0, cap_seconds=30.0, jitter=0.5)
#: A watch that ends sooner than this without a single event is treated as a failure (backoff).
QUICK_END_SECONDS: Final = 1.0


class Informer:
    """List, then watch, one resource by label in every watched namespace; subclasses keep the index.

    :attr:`resource`, :attr:`selector` and :attr:`what` (for logs and errors) say what is followed;
    :meth:`_upsert`, :meth:`_remove` and :meth:`_refs` keep the subclass's index.
    """

    resource: Resource
    selector: str = POD_SELECTOR
    what: str = "object"

    def __init__(
        self,
        api: KubeApi,
        namespaces: Sequence[str],
        wake: Callable[[Key], None],
        *,
        watch_timeout_seconds: float = 300.0,
        backoff: Backoff = BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        #: Empty: cluster-wide (one list and watch across all namespaces).
        self.namespaces = tuple(namespaces)
        self.wake = wake
        self.watch_timeout_seconds = watch_timeout_seconds
        self.backoff = backoff
        #: The retries' only timing seams (tests inject a fake clock and a sleep that records).
        self._clock = clock
        self._sleep = sleep
        #: Set once every namespace has been listed (and stays set through later relists).
        self.synced = asyncio.Event()
        self._init_index()

    # ----- the index (subclasses) --------------------------------------------------------------------

    def _init_index(self) -> None:
        """Set up the empty index (called by ``__init__``)."""
        raise NotImplementedError

    def _upsert(self, obj: dict[str, Any]) -> Key:
        """Keep an added or changed object; return its ``(namespace, name)``."""
        raise NotImplementedError

    def _remove(self, ref: Key) -> None:
        """Forget the object ``(namespace, name)`` (deleted)."""
        raise NotImplementedError

    def _refs(self) -> Iterable[Key]:
        """Every ``(namespace, name)`` held."""
        raise NotImplementedError

    # ----- running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """List and watch every scope until cancelled."""
        scopes: list[str | None] = list(self.namespaces) or [None]
        listed = [asyncio.Event() for _ in scopes]

        async def mark_synced() -> None:
            await asyncio.gather(*(event.wait() for event in listed))
            self.synced.set()

        marker = asyncio.create_task(mark_synced())
        try:
            await asyncio.gather(*(self._follow(scope, event) for scope, event in zip(scopes, listed, strict=True)))
        finally:
            marker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await marker

    async def _follow(self, namespace: str | None, listed: asyncio.Event) -> None:
        version: str | None = None
        failures = 0  # consecutive failed (or empty, quick) attempts: the backoff's attempt number
        where = namespace or "all namespaces"
        while True:
            try:
                if version is None:
                    version = await self._relist(namespace)
                    listed.set()
                started = self._clock()
                version, events = await self._watch(namespace, version)
                if events == 0 and self._clock() - started < QUICK_END_SECONDS:
                    # a watch that ends at once with nothing in it (a proxy cutting streams?): no hot loop
                    await self._sleep(self.backoff.delay_seconds(failures))
                    failures += 1
                else:
                    failures = 0
            except GoneError:
                logger.info("%s watch in %s: resourceVersion expired, listing again", self.what, where)
                version = None
            except ApiStatusError as e:
                delay = self.backoff.delay_seconds(failures, e.retry_after_seconds)
                failures += 1
                # a refusal (403: the operator's RBAC lacks the resource) needs a person; a 5xx passes by itself
                level = logging.ERROR if isinstance(e, PermanentApiError) else logging.WARNING
                logger.log(level, "%s list/watch in %s failed, retrying in %.1f s: %s", self.what, where, delay, e)
                await self._sleep(delay)
            except Exception:  # a bug or an odd answer must not end the informer: the loops depend on it
                delay = self.backoff.delay_seconds(failures)
                failures += 1
                logger.exception(
                    "%s list/watch in %s failed unexpectedly, listing again in %.1f s", self.what, where, delay
                )
                version = None
                await self._sleep(delay)

    async def _relist(self, namespace: str | None) -> str:
        res = self.resource
        answer = await self.api.request(
            "list", "GET", res.plural, res.path(namespace), query={"labelSelector": self.selector}
        )
        answer = answer if isinstance(answer, dict) else {}
        items = answer.get("items") or []
        seen: set[Key] = set()
        for obj in items:
            seen.add(self._upsert(obj))
        # objects this scope held that the list no longer shows were deleted while the watch was down
        stale = [ref for ref in self._refs() if (namespace is None or ref[0] == namespace) and ref not in seen]
        for ref in stale:
            self._remove(ref)
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, namespace: str | None, version: str) -> tuple[str, int]:
        """Follow one watch stream; returns the last version seen and how many events came."""
        res = self.resource
        query = {"labelSelector": self.selector, "allowWatchBookmarks": "true"}
        if version:
            query["resourceVersion"] = version
        count = 0
        async for event in self.api.watch(res.plural, res.path(namespace), query, self.watch_timeout_seconds):
            count += 1
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                message = str(obj.get("message") or obj)
                if obj.get("code") == 410:
                    raise GoneError(message, code=410, verb="watch", kind=res.plural)
                message = f"watch error: {message}"
                raise TransientApiError(message, reason=str(obj.get("reason") or ""), verb="watch", kind=res.plural)
            meta = obj.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED"):
                self._upsert(obj)
            elif kind == "DELETED":
                self._remove((meta.get("namespace") or "", meta.get("name") or ""))
        return version, count


class PodInformer(Informer):
    """Pods of the operator by job key ``(namespace, job name)``; read with :meth:`get`."""

    resource = RESOURCES["Pod"]
    selector = POD_SELECTOR
    what = "pod"

    def _init_index(self) -> None:
        self._by_job: dict[Key, dict[str, PodView]] = {}
        self._job_of: dict[Key, Key] = {}  # (namespace, pod name) -> job key

    # ----- reading -----------------------------------------------------------------------------------

    def get(self, key: Key, default: Iterable[PodView] = ()) -> Iterable[PodView]:
        """The job's pods as last seen (a copy), or ``default``."""
        pods = self._by_job.get(key)
        return list(pods.values()) if pods else default

    def __len__(self) -> int:
        return len(self._job_of)

    # ----- the index ---------------------------------------------------------------------------------

    def _refs(self) -> Iterable[Key]:
        return list(self._job_of)

    def _upsert(self, pod: dict[str, Any]) -> Key:
        meta = pod.get("metadata") or {}
        ref = (meta.get("namespace") or "", meta.get("name") or "")
        job = (ref[0], (meta.get("labels") or {}).get(contract.LABEL_JOB_NAME, ""))
        self._by_job.setdefault(job, {})[ref[1]] = pod_view(pod)
        self._job_of[ref] = job
        self.wake(job)
        return ref

    def _remove(self, ref: Key) -> None:
        job = self._job_of.pop(ref, None)
        if job is None:
            return
        pods = self._by_job.get(job)
        if pods is not None:
            pods.pop(ref[1], None)
            if not pods:
                del self._by_job[job]
        self.wake(job)
