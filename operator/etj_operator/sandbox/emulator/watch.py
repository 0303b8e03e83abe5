"""Watch plumbing: the event log entries, selectors and per-stream queues."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from .objects import _meta
from .selection import LabelRequirement, _field_value

Json = dict[str, Any]

@dataclasses.dataclass(frozen=True)
class _Event:
    rv: int
    store_key: tuple[str, str]
    namespace: str | None
    type: str  # ADDED, MODIFIED, DELETED
    obj: Json
    old: Json | None  # the previous state, to turn selector transitions into ADDED/DELETED


@dataclasses.dataclass(frozen=True)
class _Selector:
    namespace: str | None
    name: str | None
    labels: list[LabelRequirement]
    fields: list[tuple[str, bool, str]]

    def selects(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = _meta(obj)
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        labels = meta.get("labels") or {}
        if not all(req.matches(labels) for req in self.labels):
            return False
        return all((_field_value(obj, field) == value) == equal for field, equal, value in self.fields)


@dataclasses.dataclass(eq=False)
class _Watcher:
    store_key: tuple[str, str]
    selector: _Selector
    queue: asyncio.Queue[_Event | None] = dataclasses.field(default_factory=asyncio.Queue)

    def translate(self, event: _Event) -> str | None:
        """The event type this watcher sees, or None; objects moving across its selector appear/vanish."""
        now_selected = self.selector.selects(event.obj)
        if event.type == "MODIFIED":
            was_selected = self.selector.selects(event.old)
            if now_selected and not was_selected:
                return "ADDED"
            if was_selected and not now_selected:
                return "DELETED"
        return event.type if now_selected else None


