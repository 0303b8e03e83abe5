"""``meta.k8s.io/v1`` Tables for ``kubectl get``: the columns a real server prints for each kind.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the columns the server
sends. Custom resources get their CRD's ``additionalPrinterColumns``; pods and events get the columns of
kube-apiserver's own printers (pods: Ready, Status with the kubelet's reasons and ``Terminating``, Restarts,
Age; events: Last Seen, Type, Reason, Object, Message, the rest with ``-o wide``); every other kind gets
Name and Age. Computed cells use pseudo paths starting with ``__``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from .objects import _age, _meta
from .resources import ResourceType

__all__ = ["build_table", "column_value"]

Json = dict[str, Any]

_NAME: Final[Json] = {"name": "Name", "type": "string", "format": "name", "jsonPath": "__name",
                      "description": "Name must be unique within a namespace."}
_AGE: Final[Json] = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

POD_COLUMNS: Final[tuple[Json, ...]] = (
    _NAME,
    {"name": "Ready", "type": "string", "jsonPath": "__ready"},
    {"name": "Status", "type": "string", "jsonPath": "__pod_status"},
    {"name": "Restarts", "type": "integer", "jsonPath": "__restarts"},
    _AGE,
    {"name": "IP", "type": "string", "jsonPath": ".status.podIP", "priority": 1},
    {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName", "priority": 1},
)
EVENT_COLUMNS: Final[tuple[Json, ...]] = (
    {"name": "Last Seen", "type": "string", "jsonPath": "__event_last_seen"},
    {"name": "Type", "type": "string", "jsonPath": ".type"},
    {"name": "Reason", "type": "string", "jsonPath": ".reason"},
    {"name": "Object", "type": "string", "jsonPath": "__event_object"},
    {"name": "Subobject", "type": "string", "jsonPath": "__event_subobject", "priority": 1},
    {"name": "Source", "type": "string", "jsonPath": "__event_source", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": "__event_message"},
    {"name": "First Seen", "type": "string", "jsonPath": "__event_first_seen", "priority": 1},
    {"name": "Count", "type": "string", "jsonPath": "__event_count", "priority": 1},
    {**_NAME, "priority": 1},
)
DEFAULT_COLUMNS: Final[tuple[Json, ...]] = (_NAME, _AGE)


def _columns(rt: ResourceType) -> tuple[Json, ...]:
    if rt.custom:
        return (_NAME, *rt.printer_columns) if rt.printer_columns else DEFAULT_COLUMNS
    if rt.plural == "pods" and rt.group == "":
        return POD_COLUMNS
    if rt.plural == "events" and rt.group in ("", "events.k8s.io"):
        return EVENT_COLUMNS
    return DEFAULT_COLUMNS


def build_table(rt: ResourceType, objs: list[Json], resource_version: int) -> Json:
    """The Table of ``objs`` (one row each, with its metadata as a PartialObjectMetadata)."""
    columns = _columns(rt)
    definitions = [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                    "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in columns]
    rows = []
    for obj in objs:
        cells: list[Any] = []
        for column in columns:
            value = column_value(obj, column.get("jsonPath", ""))
            if column.get("type") == "date" and isinstance(value, str):
                value = _age(value)
            cells.append("<none>" if value is None else value)
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": _meta(obj)}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": str(resource_version)},
            "columnDefinitions": definitions, "rows": rows}


def _pod_status(pod: Mapping[str, Any]) -> str:
    """The STATUS cell of ``kubectl get pods``: the phase, refined by container reasons; Terminating wins."""
    status = pod.get("status") or {}
    reason = str(status.get("reason") or status.get("phase") or "Unknown")
    for container in reversed(status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason"):
            reason = str(waiting["reason"])
        elif terminated is not None:
            if terminated.get("reason"):
                reason = str(terminated["reason"])
            elif terminated.get("signal"):
                reason = f"Signal:{terminated['signal']}"
            else:
                reason = f"ExitCode:{terminated.get('exitCode', 0)}"
    if _meta(pod).get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _event_times(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    first = event.get("firstTimestamp") or event.get("deprecatedFirstTimestamp") or event.get("eventTime")
    last = event.get("lastTimestamp") or event.get("deprecatedLastTimestamp") or first
    series = event.get("series") or {}
    if series.get("lastObservedTime"):
        last = series["lastObservedTime"]
    return (_age(first) if first else None), (_age(last) if last else None)


def _event_cell(event: Mapping[str, Any], what: str) -> Any:
    regarding = event.get("involvedObject") or event.get("regarding") or {}
    if what == "object":
        return f"{str(regarding.get('kind', '')).lower()}/{regarding.get('name', '')}"
    if what == "subobject":
        return str(regarding.get("fieldPath") or "")
    if what == "message":
        return str(event.get("message") or event.get("note") or "").strip()
    if what == "source":
        source = event.get("source") or {}
        component = source.get("component") or event.get("reportingController") or event.get("reportingComponent")
        host = source.get("host")
        return ", ".join(str(x) for x in (component, host) if x) or None
    if what == "count":
        series = event.get("series") or {}
        return str(series.get("count") or event.get("count") or event.get("deprecatedCount") or 1)
    first, last = _event_times(event)
    return first if what == "first_seen" else last


def column_value(obj: Json, json_path: str) -> Any:
    """Evaluate a column: a computed ``__`` cell, or a printer column's simple JSONPath.

    The JSONPath forms: ``.a.b``, ``.a[0].b`` and ``.a[?(@.k=="v")].b``.
    """
    if json_path == "__name":
        return _meta(obj).get("name")
    if json_path == "__ready":
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        total = len((obj.get("spec") or {}).get("containers") or [])
        return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"
    if json_path == "__restarts":
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        return sum(int(s.get("restartCount", 0)) for s in statuses)
    if json_path == "__pod_status":
        return _pod_status(obj)
    if json_path.startswith("__event_"):
        return _event_cell(obj, json_path.removeprefix("__event_"))
    current: Any = obj
    for token in re.findall(r"\.([^.\[]+)|\[(\d+)\]|\[\?\(@\.([^=]+)==\"?([^\")]*)\"?\)\]", json_path):
        key, index, filter_key, filter_value = token
        if key:
            current = current.get(key) if isinstance(current, dict) else None
        elif index:
            current = current[int(index)] if isinstance(current, list) and int(index) < len(current) else None
        elif filter_key:
            current = next((i for i in current or [] if isinstance(i, dict)
                            and str(i.get(filter_key)) == filter_value), None)
        if current is None:
            return None
    return current
