"""Kubernetes Events about jobs, posted through an :class:`~etj_operator.ports.ObjectCreator` (the API wrapper).

The reconciler hands Events to an :class:`EventPoster` and goes on: posting never blocks a reconcile pass
and never fails one (an Event that cannot be posted is logged and dropped; the job's status conditions
carry the same facts). Events yield to reconcile work: a post waits until no pass runs, for at most
:data:`MAX_DELAY_SECONDS` (in a burst of new jobs: pods first, Events after).

The operator used Kopf's Event poster before; in a burst of jobs that cost about 3 ms of the event loop
per Event (a new aiohttp request each) against well under 1 ms through the API wrapper's pooled
connections, measured with bench/operator_scale.py (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from etj_operator.builders import build_event
from etj_operator.lifecycle import Event
from etj_operator.ports import ObjectCreator

logger = logging.getLogger(__name__)

#: The longest an Event waits for the reconcile passes to pause before it is posted anyway.
MAX_DELAY_SECONDS = 5.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventPoster:
    """An EventSink: each Event becomes one create request, sent in the background."""

    def __init__(
        self,
        api: ObjectCreator,
        *,
        component: str,
        instance: str,
        clock: Callable[[], str] = _now,
        idle: asyncio.Event | None = None,
        max_delay_seconds: float = MAX_DELAY_SECONDS,
    ) -> None:
        self.api = api
        self.component = component
        self.instance = instance
        self.clock = clock
        #: When set, posts wait for it (no reconcile pass running) for up to ``max_delay_seconds``.
        self.idle = idle
        self.max_delay_seconds = max_delay_seconds
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, body: Mapping[str, Any], event: Event) -> None:
        """Post ``event`` about the job ``body`` (from the event loop; returns at once)."""
        manifest = build_event(
            body,
            event.type,
            event.reason,
            event.message,
            component=self.component,
            instance=self.instance,
            now=self.clock(),
        )
        task = asyncio.get_running_loop().create_task(self._post(manifest))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, manifest: dict[str, Any]) -> None:
        if self.idle is not None and not self.idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), self.max_delay_seconds)
        try:
            await self.api.create(manifest)
        except Exception as e:  # an Event is advisory: log it, never fail or retry the reconcile for it
            involved = manifest["involvedObject"]
            logger.warning(
                "could not post Event %s on %s/%s: %s", manifest["reason"], involved["namespace"], involved["name"], e
            )

    async def drain(self, timeout_seconds: float = 5.0) -> None:
        """Wait (bounded) for the Events still being posted; used when the operator stops."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_seconds)
