"""An in-memory Kubernetes API server for tests and the sandbox: **never a production component**.

There is no Kubernetes cluster on the development machines, so the integration tests and ``make demo`` run
the real operator (kopf, the ``kubernetes`` client, kubectl) against this emulator. It subclasses kmock's
:class:`kmock.KubernetesEmulator` and fills the gaps of kmock 0.8 that make kopf misbehave against it:

* server-set ``uid``, ``resourceVersion`` (one global counter), ``generation``, ``creationTimestamp``,
  namespace from the URL, ``generateName``; Status objects for 404/409/422 errors; optimistic concurrency;
* ``labelSelector`` and ``fieldSelector`` on list, watch and deletecollection;
* a real ``status`` subresource (for CRDs that declare it, pods, nodes, services, namespaces, CRDs);
* merge, strategic-merge (a documented subset) and JSON patches (a failed ``test`` op answers 422);
* watches that resume from ``resourceVersion`` without replaying, BOOKMARKs, ``timeoutSeconds``, 410 Gone;
* ``kind: <Kind>List`` lists with a list ``resourceVersion`` and ``limit``/``continue`` paging;
* finalizers and ``deletionTimestamp``; ownerReference garbage collection (Background, Foreground, Orphan);
  namespace deletion that empties the namespace first;
* discovery that kopf accepts, ``GET /api/v1/namespaces`` (a 500 in kmock 0.8), CRDs that become served
  resources when created, structural pruning and defaulting of custom resources from the CRD schema;
* ``meta.k8s.io/v1`` Tables for ``kubectl get`` and an OpenAPI v3 index for ``kubectl apply``.

:class:`EmulatorServer` runs it on its own thread and event loop (``KopfRunner`` joins the operator thread on
exit, which would freeze an emulator served on the test's loop), writes a kubeconfig, and offers thread-safe
accessors so tests can play the kubelet, plus fault injection (:class:`FaultInjector`) and a request log
(:class:`RequestRecord`). See ``docs/emulator.md`` for what differs from a real API server.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import logging
import pathlib
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import aiohttp.web
import attrs
import kmock
import yaml

__all__ = [
    "ApiError",
    "EmulatorServer",
    "Fault",
    "FaultInjector",
    "KubeApiEmulator",
    "LabelRequirement",
    "RequestRecord",
    "ResourceType",
    "UnknownResourceError",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
    "parse_field_selector",
    "parse_label_selector",
]

logger = logging.getLogger(__name__)

Json = dict[str, Any]
T = TypeVar("T")

# Verbs a real API server advertises for an ordinary resource; kopf drops resources lacking list/watch/patch.
STANDARD_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS: Final = ("get", "patch", "update")
EMULATED_VERSION: Final = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-etj-emulator"}

# How many past watch events are kept so that watches can resume; older resumes get 410 Gone (as etcd
# compaction does to a real server).
DEFAULT_EVENT_LOG_SIZE: Final = 20_000
# A real server sends a BOOKMARK about once a minute; kopf >= 1.44 reconnects after 70 s of silence.
DEFAULT_BOOKMARK_INTERVAL_SECONDS: Final = 20.0
# The request log keeps this many of the latest requests (a sandbox can run for hours).
DEFAULT_REQUEST_LOG_SIZE: Final = 200_000
# kmock keeps every version of every object; the emulator trims that history to keep memory bounded.
DEFAULT_HISTORY_LIMIT: Final = 50


# ---------------------------------------------------------------------------------------------------------
# Errors rendered as Kubernetes Status objects
# ---------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An API failure that the emulator answers with a ``kind: Status`` object, as a real server does.

    Also raised by the in-process accessors of :class:`EmulatorServer`, so tests see the same codes.
    """

    def __init__(
        self, code: int, reason: str, message: str, *, details: Json | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers = dict(headers or {})

    def to_status(self) -> Json:
        """Render the error as a ``v1 Status``, the body every Kubernetes client parses."""
        status: Json = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


class UnknownResourceError(ApiError):
    """The emulator serves no resource type by that name (404 from discovery, not from an object)."""


def _qualified(rt: ResourceType) -> str:
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(rt)} "{name}" not found',
                    details={"name": name, "group": rt.group, "kind": rt.plural})


def _already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(rt)} "{name}" already exists',
                    details={"name": name, "group": rt.group, "kind": rt.plural})


def _conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": the object has been modified;'
                    " please apply your changes to the latest version and try again",
                    details={"name": name, "group": rt.group, "kind": rt.plural})


def _invalid(rt: ResourceType, name: str, message: str) -> ApiError:
    return ApiError(422, "Invalid", f'{rt.kind}.{rt.group or "core"} "{name}" is invalid: {message}',
                    details={"name": name, "group": rt.group, "kind": rt.kind})


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _endpoint_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _now() -> str:
    """The current time in RFC 3339 with a ``Z``, second precision, as metadata timestamps are."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _age(timestamp: str) -> str:
    """Format an age the way the API server formats ``type: date`` printer columns (``5m``, ``3h``)."""
    started = _parse_time(timestamp)
    if started is None:
        return "<unknown>"
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - started).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600 * 3:
        return f"{seconds // 60}m"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


_NAME_SUFFIX_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of the real name generator
_DNS_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RFC1035_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _generate_name(prefix: str) -> str:
    return prefix + "".join(random.choices(_NAME_SUFFIX_ALPHABET, k=5))


def _meta(obj: Mapping[str, Any]) -> Json:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _without(obj: Mapping[str, Any], *keys: str) -> Json:
    return {k: v for k, v in obj.items() if k not in keys}


# ---------------------------------------------------------------------------------------------------------
# Label and field selectors
# ---------------------------------------------------------------------------------------------------------

_LABEL_KEY: Final = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                               r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE: Final = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
LabelOperator = Literal["=", "!=", "in", "notin", "exists", "!exists"]


@dataclasses.dataclass(frozen=True)
class LabelRequirement:
    """One clause of a label selector: ``key op values``."""

    key: str
    operator: LabelOperator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this clause (``!=`` and ``notin`` match an absent key)."""
        present = self.key in labels
        match self.operator:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and labels[self.key] in self.values
            case "!=" | "notin":
                return not present or labels[self.key] not in self.values
        return False  # pragma: no cover  # exhaustive above


def _split_outside_parentheses(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse a label selector (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``).

    Raises :class:`ApiError` 400 on bad syntax, as a real server answers.
    """
    requirements: list[LabelRequirement] = []
    for raw_part in _split_outside_parentheses(text):
        part = raw_part.strip()
        if not part:
            continue
        set_match = re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", part)
        key: str
        values: frozenset[str] = frozenset()
        operator: LabelOperator
        if set_match:
            key, op_text, values_text = set_match.groups()
            operator = "in" if op_text == "in" else "notin"
            values = frozenset(v.strip() for v in values_text.split(","))
            if not values_text.strip():
                raise _bad_request(f"unable to parse requirement: {part!r}: values set can't be empty")
        elif part.startswith("!"):
            key, operator = part[1:].strip(), "!exists"
        elif "!=" in part:
            key, value = (s.strip() for s in part.split("!=", 1))
            operator, values = "!=", frozenset([value])
        elif "==" in part:
            key, value = (s.strip() for s in part.split("==", 1))
            operator, values = "=", frozenset([value])
        elif "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            operator, values = "=", frozenset([value])
        else:
            key, operator = part, "exists"
        if not _LABEL_KEY.match(key):
            raise _bad_request(f"unable to parse requirement: invalid label key {key!r}")
        for value in values:
            if not _LABEL_VALUE.match(value):
                raise _bad_request(f"unable to parse requirement: invalid label value {value!r}")
        requirements.append(LabelRequirement(key, operator, values))
    return requirements


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """Parse a field selector into ``(field path, wants_equal, value)`` triples."""
    terms: list[tuple[str, bool, str]] = []
    for raw_part in text.split(","):
        part = raw_part.strip()
        if not part:
            continue
        for separator, equal in (("!=", False), ("==", True), ("=", True)):
            if separator in part:
                field, value = (s.strip() for s in part.split(separator, 1))
                terms.append((field, equal, value))
                break
        else:
            raise _bad_request(f"invalid selector: {part!r}; can't understand {part!r}")
    return terms


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    """Read a dotted field as the server compares it: a string, ``true``/``false``, or ``""`` if unset."""
    current: Any = obj
    for step in path.split("."):
        if not isinstance(current, Mapping) or step not in current:
            return ""
        current = current[step]
    if isinstance(current, bool):
        return "true" if current else "false"
    return "" if current is None else str(current)


# ---------------------------------------------------------------------------------------------------------
# Patches: RFC 7386 merge, a strategic-merge subset, RFC 6902 JSON patch
# ---------------------------------------------------------------------------------------------------------


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch (``null`` deletes a key, lists are replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: Json = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# The list fields that Kubernetes' strategic merge merges by a key instead of replacing (the common subset).
_SMP_MERGE_KEYS: Final = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name", "conditions": "type",
    "ownerReferences": "uid", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
}
_SMP_UNION_LISTS: Final = frozenset({"finalizers"})


def _smp_list(field: str, old: Any, new: list[Any]) -> list[Any]:
    if field in _SMP_UNION_LISTS and isinstance(old, list):
        return list(old) + [item for item in new if item not in old]
    merge_key = _SMP_MERGE_KEYS.get(field)
    if field == "ports":  # container ports merge by containerPort, service ports by port
        merge_key = "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in new) else "port"
    if merge_key is None or not isinstance(old, list) or not all(isinstance(i, dict) for i in new):
        return [strip_smp_directives(i) for i in new]
    result: list[Any] = copy.deepcopy(old)
    for item in new:
        key_value = item.get(merge_key)
        index = next((n for n, o in enumerate(result) if isinstance(o, dict) and o.get(merge_key) == key_value),
                     None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is not None:
            result[index] = apply_strategic_merge_patch(result[index], item)
        else:
            result.append(strip_smp_directives(item))
    return result


def strip_smp_directives(value: Any) -> Any:
    """Drop strategic-merge directives (``$patch``, ``$setElementOrder/...``) from a value being stored."""
    if isinstance(value, dict):
        return {k: strip_smp_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [strip_smp_directives(v) for v in value]
    return value


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch: a merge patch whose well-known lists merge by key (see docs/emulator.md).

    Supported: merge keys of containers, env, volumes, ports, conditions, ownerReferences...; union of
    ``finalizers``; the ``$patch: replace|delete`` and ``$deleteFromPrimitiveList/<field>`` directives.
    ``$setElementOrder`` and ``$retainKeys`` are accepted and ignored.
    """
    if not isinstance(patch, dict):
        return strip_smp_directives(copy.deepcopy(patch))
    if patch.get("$patch") == "replace":
        return strip_smp_directives(patch)
    result: Json = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
        elif key.startswith("$"):
            continue
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _smp_list(key, result.get(key), value)
        else:
            result[key] = apply_strategic_merge_patch(result.get(key), value)
    return result


class JsonPatchError(Exception):
    """An RFC 6902 operation could not be applied (a failed ``test`` included)."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise JsonPatchError(f"invalid JSON pointer: {path!r}")
    if not path:
        return []
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _resolve(doc: Any, tokens: Sequence[str]) -> Any:
    current = doc
    for token in tokens:
        if isinstance(current, dict) and token in current:
            current = current[token]
        elif isinstance(current, list) and token.isdigit() and int(token) < len(current):
            current = current[int(token)]
        else:
            raise JsonPatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return current


def _add(doc: Any, tokens: Sequence[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise JsonPatchError(f"invalid index in path: /{'/'.join(tokens)}")
        parent.insert(index, value)
    else:
        raise JsonPatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: Sequence[str]) -> Any:
    if not tokens:
        raise JsonPatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise JsonPatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def apply_json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch to a copy of ``doc``; raise :class:`JsonPatchError` on any failure."""
    if not isinstance(operations, list):
        raise JsonPatchError("a JSON patch must be a list of operations")
    result = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict):
            raise JsonPatchError(f"invalid operation: {operation!r}")
        op = operation.get("op")
        tokens = _pointer(operation.get("path"))
        match op:
            case "add":
                result = _add(result, tokens, copy.deepcopy(operation.get("value")))
            case "remove":
                result = _remove(result, tokens)
            case "replace":
                _resolve(result, tokens)  # must exist
                result = _add(_remove(result, tokens), tokens, copy.deepcopy(operation.get("value")))
            case "move":
                source = _pointer(operation.get("from"))
                value = _resolve(result, source)
                result = _add(_remove(result, source), tokens, value)
            case "copy":
                value = copy.deepcopy(_resolve(result, _pointer(operation.get("from"))))
                result = _add(result, tokens, value)
            case "test":
                if _resolve(result, tokens) != operation.get("value"):
                    raise JsonPatchError(f"testing value /{'/'.join(tokens)} failed")
            case _:
                raise JsonPatchError(f"unknown operation: {op!r}")
    return result


# ---------------------------------------------------------------------------------------------------------
# Resource types: built-ins and CRD-defined
# ---------------------------------------------------------------------------------------------------------

_COMMON_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One served resource (group, version, plural) with what discovery and the handlers need to know."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    field_labels: frozenset[str] = _COMMON_FIELDS
    verbs: tuple[str, ...] = STANDARD_VERBS
    printer_columns: tuple[Json, ...] = ()
    schema: Json | None = None  # openAPIV3Schema of a custom resource: pruning, defaults, OpenAPI
    custom: bool = False

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` of this resource's objects (``v1`` or ``group/version``)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> tuple[str, str]:
        """Objects are stored per (group, plural): every served version of a CRD sees the same objects."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        """Whether ``.status`` is only writable through the ``/status`` subresource."""
        return "status" in self.subresources


def _builtin(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
             short: tuple[str, ...] = (), subresources: Iterable[str] = (), fields: Iterable[str] = (),
             categories: tuple[str, ...] = ()) -> ResourceType:
    return ResourceType(group=group, version=version, plural=plural, kind=kind, namespaced=namespaced,
                        singular=kind.lower(), short_names=short, categories=categories,
                        subresources=frozenset(subresources), field_labels=_COMMON_FIELDS | frozenset(fields))


_POD_FIELDS: Final = ("status.phase", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                      "spec.serviceAccountName", "spec.hostNetwork", "status.podIP", "status.nominatedNodeName")
_EVENT_FIELDS: Final = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                        "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type")

BUILTIN_RESOURCES: Final[tuple[ResourceType, ...]] = (
    _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short=("ns",),
             subresources=("status", "finalize"), fields=("status.phase",)),
    _builtin("", "v1", "nodes", "Node", namespaced=False, short=("no",), subresources=("status",),
             fields=("spec.unschedulable",)),
    _builtin("", "v1", "pods", "Pod", short=("po",), subresources=("status", "log"), fields=_POD_FIELDS,
             categories=("all",)),
    _builtin("", "v1", "services", "Service", short=("svc",), subresources=("status",), categories=("all",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _builtin("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _builtin("", "v1", "secrets", "Secret", fields=("type",)),
    _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",),
             subresources=("status",)),
    _builtin("", "v1", "events", "Event", short=("ev",), fields=_EVENT_FIELDS),
    _builtin("events.k8s.io", "v1", "events", "Event", short=("ev",),
             fields=("reason", "regarding.kind", "regarding.name", "regarding.namespace", "type")),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short=("crd", "crds"), subresources=("status",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
)

_POD_TABLE: Final[tuple[Json, ...]] = (
    {"name": "Ready", "type": "string", "jsonPath": "__ready"},
    {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Restarts", "type": "integer", "jsonPath": "__restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "IP", "type": "string", "jsonPath": ".status.podIP", "priority": 1},
    {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName", "priority": 1},
)
_DEFAULT_TABLE: Final[tuple[Json, ...]] = ({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},)


def resource_types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """Build the served resource types of a CRD: one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, kind, plural = spec.get("group"), names.get("kind"), names.get("plural")
    if not group or not kind or not plural:
        raise _bad_request("a CustomResourceDefinition needs spec.group, spec.names.kind and spec.names.plural")
    types: list[ResourceType] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        selectable = {f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or [] if "jsonPath" in f}
        types.append(ResourceType(
            group=group, version=version["name"], plural=plural, kind=kind,
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular") or kind.lower(),
            short_names=tuple(names.get("shortNames") or ()), categories=tuple(names.get("categories") or ()),
            subresources=frozenset((version.get("subresources") or {}).keys()),
            field_labels=_COMMON_FIELDS | frozenset(selectable),
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            schema=(version.get("schema") or {}).get("openAPIV3Schema"), custom=True,
        ))
    return types


# ---------------------------------------------------------------------------------------------------------
# Structural schema: pruning and defaulting of custom resources (what a real server does on every write)
# ---------------------------------------------------------------------------------------------------------


def _prune(value: Any, schema: Mapping[str, Any] | None, path: str, dropped: list[str]) -> Any:
    if schema is None or not isinstance(value, (dict, list)):
        return value
    if isinstance(value, list):
        return [_prune(item, schema.get("items"), f"{path}[{n}]", dropped) for n, item in enumerate(value)]
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return value
    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    result: Json = {}
    for key, item in value.items():
        if key in properties:
            result[key] = _prune(item, properties[key], f"{path}.{key}", dropped)
        elif isinstance(additional, dict):
            result[key] = _prune(item, additional, f"{path}.{key}", dropped)
        elif additional is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            result[key] = item
        else:
            dropped.append(f"{path}.{key}".lstrip("."))
    return result


def _default(value: Any, schema: Mapping[str, Any] | None) -> Any:
    if schema is None:
        return value
    if isinstance(value, list):
        return [_default(item, schema.get("items")) for item in value]
    if not isinstance(value, dict):
        return value
    result = dict(value)
    for key, sub_schema in (schema.get("properties") or {}).items():
        if key not in result and "default" in sub_schema:
            result[key] = copy.deepcopy(sub_schema["default"])
        if key in result:
            result[key] = _default(result[key], sub_schema)
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        properties = schema.get("properties") or {}
        for key in result:
            if key not in properties:
                result[key] = _default(result[key], additional)
    return result


def prune_and_default(obj: Json, schema: Mapping[str, Any] | None, *, strict: bool = False) -> Json:
    """Drop fields the CRD schema does not know and fill in its defaults; ``metadata`` is left alone.

    With ``strict`` (``?fieldValidation=Strict``, what kubectl sends), unknown fields are a 400 instead.
    """
    if not schema:
        return obj
    body = _without(obj, "apiVersion", "kind", "metadata")
    dropped: list[str] = []
    body = _default(_prune(body, schema, "", dropped), schema)
    if strict and dropped:
        raise _bad_request("strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in dropped))
    result: Json = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    result.update(body)
    return result


# ---------------------------------------------------------------------------------------------------------
# Request log and fault injection
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RequestRecord:
    """One request the emulator received (``status`` is 0 while a watch stream is still open)."""

    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    verb: str | None = None  # get, list, watch, create, update, patch, delete, deletecollection
    group: str | None = None
    resource: str | None = None  # plural
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    user_agent: str = ""
    content_type: str = ""  # e.g. application/json-patch+json for kopf's finalizer patches
    fault: bool = False  # answered by an injected fault
    started_at: float = 0.0  # time.monotonic()
    answered_at: float = 0.0  # time.monotonic() once the answer is ready (for a watch: when its stream ended)


@dataclasses.dataclass
class Fault:
    """An injected failure: matching requests are delayed and/or answered with an error status."""

    method: str | None = None  # None: any method
    path_regex: re.Pattern[str] | None = None  # searched in the path plus query string
    status: int | None = None  # None: only delay
    times: int | None = 1  # None: forever
    delay_seconds: float = 0.0
    reason: str | None = None
    message: str | None = None
    hits: int = 0

    def matches(self, method: str, path_qs: str) -> bool:
        """Whether this fault applies to a request (and has uses left)."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_regex is None or self.path_regex.search(path_qs) is not None

    def to_error(self) -> ApiError:
        """The error this fault answers with."""
        assert self.status is not None
        reasons = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 410: "Gone",
                   422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                   504: "Timeout"}
        headers = {"Retry-After": "1"} if self.status in (429, 503) else {}
        return ApiError(self.status, self.reason or reasons.get(self.status, "InternalError"),
                        self.message or f"injected fault ({self.status})", headers=headers)


class FaultInjector:
    """The seam for chaos tests: ``server.faults.add(method='PATCH', path_regex='/status', status=500)``.

    Thread-safe: tests add faults from their own thread while the emulator serves on its loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self, *, method: str | None = None, path_regex: str | re.Pattern[str] | None = None,
        status: int | None = 500, times: int | None = 1, delay_seconds: float = 0.0,
        reason: str | None = None, message: str | None = None,
    ) -> Fault:
        """Inject a fault for the next ``times`` matching requests (``None``: until removed)."""
        if status is None and delay_seconds <= 0:
            raise ValueError("a fault needs an error status or a delay")
        pattern = re.compile(path_regex) if isinstance(path_regex, str) else path_regex
        fault = Fault(method=method, path_regex=pattern, status=status, times=times,
                      delay_seconds=delay_seconds, reason=reason, message=message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        """Stop injecting one fault."""
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        """Stop injecting all faults."""
        with self._lock:
            self._faults.clear()

    @property
    def active(self) -> list[Fault]:
        """The faults that still have uses left."""
        with self._lock:
            return [f for f in self._faults if f.times is None or f.hits < f.times]

    def take(self, method: str, path_qs: str) -> Fault | None:
        """Find the first fault matching a request and count one use of it."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path_qs):
                    fault.hits += 1
                    return fault
        return None


# ---------------------------------------------------------------------------------------------------------
# Watch plumbing
# ---------------------------------------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class _ApiPath:
    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    legacy_watch: bool = False


def _parse_api_path(path: str) -> _ApiPath | None:
    """Split ``/api/v1/...`` and ``/apis/g/v/...`` paths; ``None`` for everything else.

    Unlike kmock 0.8's parser, ``/api/v1/namespaces`` and ``/api/v1/namespaces/NAME/status`` resolve to
    the namespaces resource itself.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    legacy_watch = bool(rest) and rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    if not rest:
        return _ApiPath(group, version, legacy_watch=legacy_watch)
    namespace_subresource = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    else:
        namespace = None
    return _ApiPath(group, version, plural=rest[0], namespace=namespace,
                    name=rest[1] if len(rest) > 1 else None,
                    subresource="/".join(rest[2:]) or None, legacy_watch=legacy_watch)


# ---------------------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------------------

StoreKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace or "", name)
DeleteOutcome = Literal["deleted", "terminating"]


@attrs.define(kw_only=True)
class KubeApiEmulator(kmock.KubernetesEmulator):
    """A kmock ``KubernetesEmulator`` that answers Kubernetes API requests the way a real server does.

    It handles every ``/api`` and ``/apis`` request itself (kmock 0.8's parser and handlers cannot express
    resource versions, subresources or selectors); other paths fall through to kmock's DSL, so tests can
    still add reactions such as ``emulator['get /healthz'] << b'ok'``. kmock also provides the resource
    registry (``emulator.resources``) kept in sync for its discovery helpers, and the versioned object
    history (``emulator.objects[...]``, trimmed to ``history_limit`` versions) for assertions.

    All state changes run synchronously on the serving event loop, so each operation is atomic. Use
    :class:`EmulatorServer` to run it; its accessors marshal calls onto that loop.
    """

    bookmark_interval_seconds: float = DEFAULT_BOOKMARK_INTERVAL_SECONDS
    event_log_size: int = DEFAULT_EVENT_LOG_SIZE
    history_limit: int = DEFAULT_HISTORY_LIMIT
    # A real server refuses objects in a missing namespace; lenient mode creates the namespace instead.
    strict_namespaces: bool = False
    faults: FaultInjector = attrs.field(factory=FaultInjector)
    #: Admission hooks ``(resource type, new object, stored object or None)`` run before every create/update
    #: is committed (dry runs included); they reject by raising ApiError (the sandbox's schema validation).
    admission: list[Callable[[ResourceType, Json, Json | None], None]] = attrs.field(factory=list)
    #: Reads a pod's container log ``(namespace, pod, container or None) -> text`` for ``GET pods/NAME/log``
    #: (the sandbox kubelet's log files); None: the endpoint answers 400, as without a kubelet.
    pod_log_reader: Callable[[str, str, str | None], str] | None = None

    _types: dict[tuple[str, str, str], ResourceType] = attrs.field(factory=dict, init=False)
    _store: dict[StoreKey, dict[ObjectKey, Json]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, tuple[StoreKey, ObjectKey]] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _events: deque[_Event] = attrs.field(factory=deque, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)  # resumes from at or before this get 410
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    request_log_size: int = DEFAULT_REQUEST_LOG_SIZE
    _log: deque[RequestRecord] = attrs.field(factory=deque, init=False)
    _log_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _deferred: list[Callable[[], None]] = attrs.field(factory=list, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    base_url: str = attrs.field(default="", init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for rt in BUILTIN_RESOURCES:
            self._register(rt)
        for name in ("default", "kube-system", "kube-public"):
            self.create_object(self.resource_type("namespaces"), None, {"metadata": {"name": name}})

    # ----- the loop and deferred work ------------------------------------------------------------------

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the serving loop and run the work deferred before it existed (e.g. garbage collection)."""
        self._loop = loop
        self._closing = False
        pending, self._deferred = self._deferred, []
        for callback in pending:
            loop.call_soon(callback)

    def _defer(self, callback: Callable[[], None]) -> None:
        # Garbage collection runs after the response, as the real (asynchronous) collector does.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(callback)
        else:
            self._deferred.append(callback)

    # ----- resource types ----------------------------------------------------------------------------

    def _register(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt
        self._store.setdefault(rt.store_key, {})
        self.resources[kmock.resource(rt.group, rt.version, rt.plural)] = kmock.ResourceInfo(
            kind=rt.kind, namespaced=rt.namespaced, singular=rt.singular, verbs=set(rt.verbs),
            shortnames=set(rt.short_names), categories=set(rt.categories), subresources=set(rt.subresources))

    def _unregister_group_plural(self, group: str, plural: str) -> None:
        for key in [k for k in self._types if k[0] == group and k[2] == plural]:
            del self._types[key]
            del self.resources[kmock.resource(*key)]

    @property
    def resource_types(self) -> list[ResourceType]:
        """Every resource type served now."""
        return list(self._types.values())

    def resource_type(self, ref: str) -> ResourceType:
        """Resolve ``pods``, ``v1/pods``, ``etj``, ``EfficientTrainingJob``, ``plural.group`` or ``g/v/plural``."""
        candidates = list(self._types.values())
        if ref.count("/") >= 1:
            *group_version, plural = ref.split("/")
            api_version = "/".join(group_version)
            found = [rt for rt in candidates if rt.api_version == api_version and rt.plural == plural]
        elif "." in ref:
            plural, group = ref.split(".", 1)
            found = [rt for rt in candidates if rt.group == group and plural in (rt.plural, rt.singular)]
        else:
            found = [rt for rt in candidates
                     if ref in (rt.plural, rt.singular, rt.kind) or ref in rt.short_names]
        # The core group wins ties (``events``), as kubectl's resource resolution prefers it.
        found.sort(key=lambda rt: (rt.group != "", rt.group, rt.version))
        if not found:
            raise UnknownResourceError(404, "NotFound", f"the server doesn't have a resource type {ref!r}")
        return found[0]

    # ----- reading -----------------------------------------------------------------------------------

    def _bucket(self, rt: ResourceType) -> dict[ObjectKey, Json]:
        return self._store.setdefault(rt.store_key, {})

    def _present(self, rt: ResourceType, obj: Json) -> Json:
        # Objects are stored once per (group, plural); each served version shows its own apiVersion.
        if obj.get("apiVersion") == rt.api_version and obj.get("kind") == rt.kind:
            return obj
        return {**obj, "apiVersion": rt.api_version, "kind": rt.kind}

    def read_object(self, rt: ResourceType, namespace: str | None, name: str) -> Json:
        """The current object, or :class:`ApiError` 404."""
        obj = self._bucket(rt).get((namespace or "", name))
        if obj is None:
            raise _not_found(rt, name)
        return self._present(rt, obj)

    def list_objects(
        self, rt: ResourceType, namespace: str | None, *, label_selector: str = "", field_selector: str = "",
    ) -> list[Json]:
        """The objects of a type (all namespaces when ``namespace`` is None), sorted as etcd keys are."""
        labels = parse_label_selector(label_selector)
        fields = self._check_fields(rt, field_selector)
        selector = _Selector(namespace, None, labels, fields)
        items = [self._present(rt, obj) for key, obj in sorted(self._bucket(rt).items())
                 if selector.selects(obj)]
        return items

    def _check_fields(self, rt: ResourceType, field_selector: str) -> list[tuple[str, bool, str]]:
        fields = parse_field_selector(field_selector)
        for field, _, _ in fields:
            if field not in rt.field_labels:
                raise _bad_request(f'field label not supported: {field}')
        return fields

    @property
    def resource_version(self) -> int:
        """The last resourceVersion handed out (the list resourceVersion)."""
        return self._rv

    # ----- writing: the single commit points -----------------------------------------------------------

    def _emit(self, rt: ResourceType, event_type: str, obj: Json, old: Json | None) -> None:
        event = _Event(self._rv, rt.store_key, _meta(obj).get("namespace"), event_type, obj, old)
        self._events.append(event)
        while len(self._events) > self.event_log_size:
            self._compacted_rv = self._events.popleft().rv
        for watcher in self._watchers:
            if watcher.store_key == rt.store_key:
                watcher.queue.put_nowait(event)

    def _mirror(self, rt: ResourceType, namespace: str | None, name: str, obj: Json | None) -> None:
        # Keep kmock's object history for assertions (bounded: sandbox runs write statuses for hours).
        storage = self._type_for_store(rt.store_key) or rt
        key = (kmock.resource(storage.group, storage.version, storage.plural), namespace, name)
        if key not in self.objects:
            if obj is not None:
                self.objects[key] = obj
            return
        entry = self.objects[key]
        if obj is None:
            entry.delete()
        else:
            entry.history.append(obj)
        if len(entry.history) > self.history_limit:
            del entry.history[: len(entry.history) - self.history_limit]

    def _commit(self, rt: ResourceType, new: Json) -> Json:
        meta = new["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        bucket = self._bucket(rt)
        old = bucket.get(key)
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        bucket[key] = new
        self._uids[meta["uid"]] = (rt.store_key, key)
        self._emit(rt, "ADDED" if old is None else "MODIFIED", new, old)
        self._mirror(rt, meta.get("namespace"), meta["name"], new)
        return new

    def _remove(self, rt: ResourceType, obj: Json) -> Json:
        meta = _meta(obj)
        key = (meta.get("namespace", ""), meta["name"])
        bucket = self._bucket(rt)
        if key not in bucket:
            return obj
        del bucket[key]
        self._uids.pop(meta.get("uid", ""), None)
        self._rv += 1
        final = {**obj, "metadata": {**meta, "resourceVersion": str(self._rv)}}
        self._emit(rt, "DELETED", final, obj)
        self._mirror(rt, meta.get("namespace"), meta["name"], None)
        self._after_removal(rt, final)
        return final

    # ----- create ------------------------------------------------------------------------------------

    def _namespace_for(self, rt: ResourceType, url_namespace: str | None, body_namespace: Any) -> str | None:
        if not rt.namespaced:
            return None
        if body_namespace and url_namespace and body_namespace != url_namespace:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on"
                               " the request")
        namespace = url_namespace or body_namespace
        if not namespace:
            raise _bad_request("a namespace is required to create a namespaced object")
        return str(namespace)

    def _ensure_namespace(self, namespace: str) -> None:
        ns_type = self.resource_type("namespaces")
        existing = self._bucket(ns_type).get(("", namespace))
        if existing is not None and _meta(existing).get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f'unable to create new content in namespace {namespace} because'
                           " it is being terminated")
        if existing is None:
            if self.strict_namespaces:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                               details={"name": namespace, "kind": "namespaces"})
            self.create_object(ns_type, None, {"metadata": {"name": namespace}})

    def _validate_name(self, rt: ResourceType, name: str) -> None:
        pattern, limit = _DNS_SUBDOMAIN, 253
        if rt.plural in ("namespaces", "services"):
            pattern, limit = (_DNS_LABEL if rt.plural == "namespaces" else _RFC1035_LABEL), 63
        if rt.plural == "pods":
            limit = 253
        if len(name) > limit or not pattern.match(name):
            raise _invalid(rt, name, f"metadata.name: Invalid value: {name!r}: must be a lowercase"
                           f" RFC 1123 name of at most {limit} characters")

    def create_object(self, rt: ResourceType, namespace: str | None, body: Any, *,
                      dry_run: bool = False, strict_fields: bool = False) -> Json:
        """Create an object as ``POST`` does: server-set metadata, 409 on duplicates, 201 semantics."""
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        if body.get("kind") not in (None, rt.kind) or body.get("apiVersion") not in (None, rt.api_version):
            raise _bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the"
                               f" expected API version ({rt.api_version})")
        obj: Json = copy.deepcopy(body)
        meta: Json = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        namespace = self._namespace_for(rt, namespace, meta.get("namespace"))
        name = meta.get("name")
        if not name:
            if not meta.get("generateName"):
                raise _invalid(rt, "", "metadata.name: Required value: name or generateName is required")
            for _ in range(10):
                name = _generate_name(str(meta["generateName"]))
                if (namespace or "", name) not in self._bucket(rt):
                    break
        assert isinstance(name, str)
        self._validate_name(rt, name)
        if (namespace or "", name) in self._bucket(rt):
            raise _already_exists(rt, name)
        if namespace is not None and not dry_run:
            self._ensure_namespace(namespace)

        for server_owned in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "generation", "managedFields", "selfLink"):
            meta.pop(server_owned, None)
        meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if rt.has_status and rt.plural != "nodes":
            # Status is written through the subresource only (a kubelet registers its node with a status).
            obj.pop("status", None)
        if rt.custom:
            obj = prune_and_default(obj, rt.schema, strict=strict_fields)
        self._initialise_builtin(rt, obj)
        for admit in self.admission:
            admit(rt, obj, None)
        if dry_run:
            return obj
        committed = self._commit(rt, obj)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self._establish_crd(rt, committed)
        return self._present(rt, self._bucket(rt)[(namespace or "", name)])

    def _initialise_builtin(self, rt: ResourceType, obj: Json) -> None:
        # What the real registries set on create, as far as the operator and kubectl look at it.
        if rt.group != "":
            return
        if rt.plural == "pods":
            spec = obj.setdefault("spec", {})
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("serviceAccountName", "default")
            spec.setdefault("terminationGracePeriodSeconds", 30)
        elif rt.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        elif rt.plural == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if spec.get("clusterIP") != "None":
                spec["clusterIP"] = f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}"
            obj["status"] = {"loadBalancer": {}}
        elif rt.plural == "nodes":
            obj.setdefault("status", {})

    def _establish_crd(self, crd_type: ResourceType, crd: Json) -> None:
        types = resource_types_from_crd(crd)
        names = crd["spec"]["names"]
        for rt in types:
            self._register(rt)
        status = {
            "acceptedNames": {k: v for k, v in names.items()},
            "storedVersions": [v["name"] for v in crd["spec"].get("versions", []) if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": _now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": _now()},
            ],
        }
        self._commit(crd_type, {**crd, "status": status, "metadata": dict(crd["metadata"])})

    # ----- update and patch --------------------------------------------------------------------------

    def replace_object(self, rt: ResourceType, namespace: str | None, name: str, body: Any, *,
                       subresource: str | None = None, dry_run: bool = False, strict_fields: bool = False) -> Json:
        """``PUT``: replace the object (or only ``.status`` via the status subresource)."""
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        old = self.read_object(rt, namespace, name)
        body_meta = _meta(body)
        if body_meta.get("name") not in (None, name):
            raise _bad_request("the name of the object does not match the name on the URL")
        expected_rv = body_meta.get("resourceVersion")
        if expected_rv and expected_rv != _meta(old)["resourceVersion"]:
            raise _conflict(rt, name)
        return self._update(rt, old, copy.deepcopy(body), subresource=subresource, dry_run=dry_run,
                            strict_fields=strict_fields)

    def patch_object(self, rt: ResourceType, namespace: str | None, name: str, patch: Any, *,
                     patch_type: str = "merge", subresource: str | None = None, dry_run: bool = False,
                     strict_fields: bool = False) -> Json:
        """``PATCH`` with ``merge``, ``strategic``, ``json`` or ``apply`` semantics."""
        if patch_type == "apply":
            if not isinstance(patch, dict):
                raise _bad_request("an apply patch must be an object")
            if (namespace or "", name) not in self._bucket(rt):
                return self.create_object(rt, namespace, {**patch, "metadata": {**_meta(patch), "name": name}},
                                          dry_run=dry_run, strict_fields=strict_fields)
        old = self.read_object(rt, namespace, name)
        if patch_type == "json":
            try:
                patched = apply_json_patch(old, patch)
            except JsonPatchError as e:
                raise _invalid(rt, name, str(e)) from e
        elif patch_type == "strategic":
            if rt.custom:
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format"
                               " - accepted media types include: application/json-patch+json,"
                               " application/merge-patch+json, application/apply-patch+yaml")
            if not isinstance(patch, dict):
                raise _bad_request("a strategic merge patch must be an object")
            patched = apply_strategic_merge_patch(old, patch)
        else:
            if not isinstance(patch, dict):
                raise _bad_request("a merge patch must be an object")
            patched = apply_merge_patch(old, patch)
        if not isinstance(patched, dict):
            raise _invalid(rt, name, "the patched object is not an object")
        # A resourceVersion in the patch is a precondition, as on a real server.
        patched_rv = _meta(patched).get("resourceVersion")
        if patched_rv is not None and patched_rv != _meta(old)["resourceVersion"]:
            raise _conflict(rt, name)
        return self._update(rt, old, patched, subresource=subresource, dry_run=dry_run,
                            strict_fields=strict_fields)

    def _update(self, rt: ResourceType, old: Json, candidate: Json, *, subresource: str | None,
                dry_run: bool, strict_fields: bool = False) -> Json:
        old_meta = _meta(old)
        name = old_meta["name"]
        if subresource not in (None, "status"):
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {subresource}")
        if subresource == "status":
            # Writes to /status change .status and nothing else.
            new = {k: v for k, v in old.items() if k != "status"}
            if candidate.get("status") is not None:
                new["status"] = candidate["status"]
            new = copy.deepcopy(new)
        else:
            new = candidate
            if rt.has_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        new_meta = new.setdefault("metadata", {})
        if not isinstance(new_meta, dict):
            raise _bad_request("metadata must be an object")
        # Server-owned metadata cannot be changed by clients.
        for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                      "name", "namespace", "resourceVersion"):
            if field in old_meta:
                new_meta[field] = old_meta[field]
            else:
                new_meta.pop(field, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if rt.custom:
            new = prune_and_default(new, rt.schema, strict=strict_fields)
            new_meta = new["metadata"]
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise _invalid(rt, name, f"metadata.finalizers: Forbidden: no new finalizers can be added if"
                               f" the object is being deleted, found new finalizers {sorted(added)}")
        if not new_meta.get("finalizers"):
            new_meta.pop("finalizers", None)
        self._check_immutable(rt, old, new)
        if _without(old, "metadata", "status") != _without(new, "metadata", "status"):
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if new == old:
            return old  # a no-op write neither bumps the resourceVersion nor makes a watch event
        for admit in self.admission:
            admit(rt, new, old)
        if dry_run:
            return new
        committed = self._commit(rt, new)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            for served in resource_types_from_crd(committed):
                self._register(served)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            return self._remove(rt, committed)
        return self._present(rt, committed)

    def _check_immutable(self, rt: ResourceType, old: Json, new: Json) -> None:
        if rt.group != "":
            return
        name = _meta(old)["name"]
        if rt.plural == "pods" and old.get("spec") != new.get("spec"):
            def mutable_stripped(spec: Any) -> Any:
                spec = copy.deepcopy(spec) or {}
                for field in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds",
                              "schedulingGates"):
                    spec.pop(field, None)
                for group in ("containers", "initContainers"):
                    for container in spec.get(group) or []:
                        container.pop("image", None)
                return spec
            if mutable_stripped(old.get("spec")) != mutable_stripped(new.get("spec")):
                raise _invalid(rt, name, "spec: Forbidden: pod updates may not change fields other than"
                               " `spec.containers[*].image`, `spec.initContainers[*].image`,"
                               " `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing"
                               " tolerations) or `spec.terminationGracePeriodSeconds`")
        if rt.plural == "services":
            old_ip = (old.get("spec") or {}).get("clusterIP")
            new_spec = new.setdefault("spec", {})
            if not new_spec.get("clusterIP"):
                new_spec["clusterIP"] = old_ip
            elif new_spec["clusterIP"] != old_ip:
                raise _invalid(rt, name, "spec.clusterIP: Invalid value: field is immutable")

    # ----- delete and garbage collection -------------------------------------------------------------

    def delete_object(self, rt: ResourceType, namespace: str | None, name: str, *,
                      propagation: str | None = None, preconditions: Mapping[str, Any] | None = None,
                      dry_run: bool = False) -> Json:
        """``DELETE``: remove now, or mark with ``deletionTimestamp`` while finalizers (or dependents) remain."""
        obj = self.read_object(rt, namespace, name)
        meta = _meta(obj)
        for field in ("uid", "resourceVersion"):
            if preconditions and preconditions.get(field) and preconditions[field] != meta.get(field):
                raise _conflict(rt, name)
        if dry_run:
            return obj
        propagation = propagation or "Background"
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise _bad_request(f"unsupported propagationPolicy: {propagation}")
        if propagation == "Orphan":
            self._orphan_dependents(meta["uid"])
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and self._dependents(meta["uid"]) and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        namespace_with_content = rt.plural == "namespaces" and rt.group == "" and self._namespace_content(name)
        if meta.get("deletionTimestamp"):
            return obj  # already terminating; the finalizers' owners finish it
        if not finalizers and not namespace_with_content:
            return self._present(rt, self._remove(rt, obj))
        new = copy.deepcopy(obj)
        new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
        if finalizers:
            new["metadata"]["finalizers"] = finalizers
        if rt.plural == "namespaces" and rt.group == "":
            new["status"] = {"phase": "Terminating"}
        committed = self._commit(rt, new)
        if "foregroundDeletion" in finalizers:
            uid = meta["uid"]
            self._defer(lambda: self._delete_dependents(uid))
        if namespace_with_content:
            self._defer(lambda: self._empty_namespace(name))
        return self._present(rt, committed)

    def delete_collection(self, rt: ResourceType, namespace: str | None, *, label_selector: str = "",
                          field_selector: str = "", propagation: str | None = None) -> list[Json]:
        """``DELETE`` on a collection: delete every selected object."""
        doomed = self.list_objects(rt, namespace, label_selector=label_selector, field_selector=field_selector)
        for obj in doomed:
            meta = _meta(obj)
            try:
                self.delete_object(rt, meta.get("namespace"), meta["name"], propagation=propagation)
            except ApiError as e:
                if e.code != 404:
                    raise
        return doomed

    def _all_objects(self) -> Iterator[tuple[ResourceType, Json]]:
        for key, bucket in list(self._store.items()):
            rt = self._type_for_store(key)
            if rt is None:
                continue
            for obj in list(bucket.values()):
                yield rt, obj

    def _type_for_store(self, key: StoreKey) -> ResourceType | None:
        for rt in self._types.values():
            if rt.store_key == key:
                return rt
        return None

    def _dependents(self, owner_uid: str) -> list[tuple[ResourceType, Json]]:
        return [(rt, obj) for rt, obj in self._all_objects()
                if any(ref.get("uid") == owner_uid for ref in _meta(obj).get("ownerReferences") or [])]

    def _orphan_dependents(self, owner_uid: str) -> None:
        for rt, obj in self._dependents(owner_uid):
            refs = [r for r in _meta(obj).get("ownerReferences") or [] if r.get("uid") != owner_uid]
            new = copy.deepcopy(obj)
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self._commit(rt, new)

    def _delete_dependents(self, owner_uid: str) -> None:
        for rt, obj in self._dependents(owner_uid):
            meta = _meta(obj)
            other_owners = [r for r in meta.get("ownerReferences") or []
                            if r.get("uid") != owner_uid and r.get("uid") in self._uids]
            try:
                if other_owners:  # another owner still lives: only drop the dangling reference
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = other_owners
                    self._commit(rt, new)
                else:
                    self.delete_object(rt, meta.get("namespace"), meta["name"])
            except ApiError:
                logger.debug("Garbage collection skipped %s/%s.", meta.get("namespace"), meta["name"])

    def _namespace_content(self, namespace: str) -> list[tuple[ResourceType, Json]]:
        return [(rt, obj) for rt, obj in self._all_objects() if rt.namespaced and
                _meta(obj).get("namespace") == namespace]

    def _empty_namespace(self, namespace: str) -> None:
        for rt, obj in self._namespace_content(namespace):
            with contextlib.suppress(ApiError):
                self.delete_object(rt, namespace, _meta(obj)["name"])
        self._finish_namespace(namespace)

    def _finish_namespace(self, namespace: str) -> None:
        ns_type = self.resource_type("namespaces")
        ns = self._bucket(ns_type).get(("", namespace))
        if ns is None or not _meta(ns).get("deletionTimestamp") or _meta(ns).get("finalizers"):
            return
        if not self._namespace_content(namespace):
            self._remove(ns_type, ns)

    def _after_removal(self, rt: ResourceType, final: Json) -> None:
        """Run what a real control plane does after an object is gone: GC, foreground owners, namespaces."""
        meta = _meta(final)
        uid = meta.get("uid", "")
        if any(True for _ in self._dependents(uid)):
            self._defer(lambda: self._delete_dependents(uid))
        for ref in meta.get("ownerReferences") or []:
            owner_uid = ref.get("uid")
            if owner_uid in self._uids:
                self._defer(functools.partial(self._release_foreground_owner, owner_uid))
        if rt.namespaced and meta.get("namespace"):
            namespace = meta["namespace"]
            self._defer(lambda: self._finish_namespace(namespace))
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self._drop_crd(final)

    def _release_foreground_owner(self, owner_uid: str) -> None:
        location = self._uids.get(owner_uid)
        if location is None:
            return
        store_key, key = location
        rt = self._type_for_store(store_key)
        owner = self._store.get(store_key, {}).get(key)
        if rt is None or owner is None:
            return
        finalizers = _meta(owner).get("finalizers") or []
        if "foregroundDeletion" in finalizers and not self._dependents(owner_uid):
            new = copy.deepcopy(owner)
            new["metadata"]["finalizers"] = [f for f in finalizers if f != "foregroundDeletion"]
            self._update(rt, owner, new, subresource=None, dry_run=False)

    def _drop_crd(self, crd: Json) -> None:
        # A real server deletes all custom resources before the CRD goes (their finalizers are not waited for).
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        rt = self._type_for_store((group, plural))
        if rt is not None:
            for obj in list(self._bucket(rt).values()):
                self._remove(rt, obj)
        self._unregister_group_plural(group, plural)
        self._store.pop((group, plural), None)
        for watcher in self._watchers:  # a real server ends the watches of a resource that is gone
            if watcher.store_key == (group, plural):
                watcher.queue.put_nowait(None)

    # ----- watch -------------------------------------------------------------------------------------

    def open_watch(
        self, rt: ResourceType, namespace: str | None, *, name: str | None = None, resource_version: str | None,
        label_selector: str = "", field_selector: str = "", send_initial_events: bool = False,
    ) -> tuple[_Watcher, list[Json]]:
        """Register a watcher and compute what it must see first: current objects, or the missed events.

        Both happen in one synchronous step on the loop, so no event can fall between them.
        """
        labels = parse_label_selector(label_selector)
        fields = self._check_fields(rt, field_selector)
        watcher = _Watcher(rt.store_key, _Selector(namespace, name, labels, fields))
        backlog: list[Json] = []
        if not resource_version or resource_version == "0" or send_initial_events:
            for obj in sorted(self._bucket(rt).values(), key=lambda o: int(_meta(o)["resourceVersion"])):
                if watcher.selector.selects(obj):
                    backlog.append({"type": "ADDED", "object": self._present(rt, obj)})
            if send_initial_events:
                backlog.append(self._bookmark(rt, initial_events_end=True))
        else:
            try:
                since = int(resource_version)
            except ValueError as e:
                raise _bad_request(f"invalid resource version: {resource_version!r}") from e
            if since < self._compacted_rv:
                expired = ApiError(410, "Expired", f"too old resource version: {since} ({self._compacted_rv})")
                return watcher, [{"type": "ERROR", "object": expired.to_status()}]
            for event in self._events:
                if event.rv > since and event.store_key == rt.store_key:
                    event_type = watcher.translate(event)
                    if event_type is not None:
                        backlog.append({"type": event_type, "object": self._present(rt, event.obj)})
        self._watchers.add(watcher)
        return watcher, backlog

    def close_watch(self, watcher: _Watcher) -> None:
        """Unregister a watcher."""
        self._watchers.discard(watcher)

    def _bookmark(self, rt: ResourceType, *, initial_events_end: bool = False) -> Json:
        meta: Json = {"resourceVersion": str(self._rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}

    def break_watches(self) -> int:
        """End every open watch stream now (as an API server restart does); returns how many were open."""
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.queue.put_nowait(None)
        return len(watchers)

    def compact(self) -> None:
        """Forget the event log, so that resuming any older watch gets 410 Gone (as etcd compaction does)."""
        self._events.clear()
        self._compacted_rv = self._rv

    # ----- the request log -----------------------------------------------------------------------------

    @property
    def requests_log(self) -> list[RequestRecord]:
        """A copy of the request log."""
        with self._log_lock:
            return list(self._log)

    def clear_requests_log(self) -> None:
        """Forget the recorded requests."""
        with self._log_lock:
            self._log.clear()

    # ----- HTTP --------------------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request: record it, inject faults, then answer as a Kubernetes API server."""
        await raw.read()
        record = RequestRecord(method=raw.method, path=raw.path, query=dict(raw.query),
                               user_agent=raw.headers.get("User-Agent", ""),
                               content_type=raw.content_type if raw.body_exists else "",
                               started_at=time.monotonic())
        with self._log_lock:
            self._log.append(record)
            while len(self._log) > self.request_log_size:
                self._log.popleft()
        try:
            fault = self.faults.take(raw.method, raw.path_qs)
            if fault is not None:
                record.fault = True
                if fault.delay_seconds > 0:
                    await asyncio.sleep(fault.delay_seconds)
                if fault.status is not None:
                    raise fault.to_error()
            api_path = _parse_api_path(raw.path)
            if api_path is None:
                response = await self._handle_other(raw)
            else:
                response = await self._handle_api(raw, api_path, record)
        except ApiError as e:
            response = aiohttp.web.json_response(e.to_status(), status=e.code, headers=e.headers)
        except Exception as e:
            logger.exception("The emulator failed on %s %s", raw.method, raw.path_qs)
            error = ApiError(500, "InternalError", f"emulator failure: {e!r}")
            response = aiohttp.web.json_response(error.to_status(), status=500)
        record.status = response.status
        record.answered_at = time.monotonic()
        return response

    async def _handle_other(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        if raw.method == "GET":
            if path == "/version":
                return aiohttp.web.json_response({**EMULATED_VERSION, "platform": "linux/amd64"})
            if path in ("/healthz", "/livez", "/readyz"):
                return aiohttp.web.Response(text="ok")
            if path == "/apis":
                return aiohttp.web.json_response(self._api_group_list())
            if path == "/api":
                return aiohttp.web.json_response({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": raw.host or "127.0.0.1"}]})
            if re.fullmatch(r"/apis/[^/]+", path):
                group = path.split("/")[2]
                for entry in self._api_group_list()["groups"]:
                    if entry["name"] == group:
                        return aiohttp.web.json_response({"kind": "APIGroup", "apiVersion": "v1", **entry})
                raise _endpoint_not_found()
            if path == "/openapi/v3":
                return aiohttp.web.json_response(self._openapi_index())
            if path.startswith("/openapi/v3/"):
                return aiohttp.web.json_response(self._openapi_document(path.removeprefix("/openapi/v3/")))
            if path == "/openapi/v2":
                # kubectl asks for protobuf here; answering 404 makes it use the v3 documents instead.
                raise _endpoint_not_found()
        # Not a Kubernetes path: let kmock's DSL answer (test-defined reactions, else kmock's 404).
        response: aiohttp.web.StreamResponse = await super().__call__(raw)
        return response

    def _api_group_list(self) -> Json:
        groups: dict[str, list[str]] = {}
        for rt in self._types.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        entries = []
        for group, versions in sorted(groups.items()):
            ordered = sorted(versions, key=_version_priority)
            entries.append({
                "name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered],
                "preferredVersion": {"groupVersion": f"{group}/{ordered[0]}", "version": ordered[0]},
            })
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": entries}

    def _resource_list(self, group: str, version: str) -> Json:
        types = [rt for rt in self._types.values() if rt.group == group and rt.version == version]
        if not types:
            raise _endpoint_not_found()
        resources: list[Json] = []
        for rt in sorted(types, key=lambda t: t.plural):
            resources.append({
                "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
                "verbs": list(rt.verbs), "shortNames": list(rt.short_names), "categories": list(rt.categories),
            })
            for sub in sorted(rt.subresources):
                resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": list(SUBRESOURCE_VERBS)})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    async def _handle_api(self, raw: aiohttp.web.BaseRequest, path: _ApiPath,
                         record: RequestRecord) -> aiohttp.web.StreamResponse:
        if path.plural is None:
            if raw.method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            return aiohttp.web.json_response(self._resource_list(path.group, path.version))
        rt = self._types.get((path.group, path.version, path.plural))
        if rt is None:
            raise _endpoint_not_found()
        if (rt.namespaced and path.name is not None and path.namespace is None) or \
                (not rt.namespaced and path.namespace is not None):
            raise _endpoint_not_found()
        if path.subresource is not None and path.subresource not in rt.subresources:
            raise _endpoint_not_found()
        record.group, record.resource, record.subresource = rt.group, rt.plural, path.subresource
        record.namespace, record.name = path.namespace, path.name

        query = raw.query
        body_bytes = await raw.read()
        dry_run = query.get("dryRun") == "All"
        strict_fields = query.get("fieldValidation") == "Strict"
        watch = path.legacy_watch or query.get("watch") in ("true", "1")
        method = raw.method
        if method == "GET" and watch:
            record.verb = "watch"
            return await self._handle_watch(raw, rt, path)
        if method == "GET" and path.subresource == "log" and rt.plural == "pods" and rt.group == "":
            record.verb = "get"
            return self._pod_log(path.namespace or "", path.name or "", query.get("container"))
        if method == "GET" and path.name is None:
            record.verb = "list"
            return self._handle_list(raw, rt, path.namespace)
        if method == "GET":
            record.verb = "get"
            obj = self.read_object(rt, path.namespace, path.name or "")
            return self._object_response(raw, rt, obj)
        if method == "POST" and path.name is None:
            record.verb = "create"
            obj = self.create_object(rt, path.namespace, _load_body(raw, body_bytes), dry_run=dry_run,
                                     strict_fields=strict_fields)
            record.name = (obj.get("metadata") or {}).get("name")  # the created object's (generateName too)
            return self._object_response(raw, rt, obj, status=201)
        if method == "PUT" and path.name is not None:
            record.verb = "update"
            obj = self.replace_object(rt, path.namespace, path.name, _load_body(raw, body_bytes),
                                      subresource=path.subresource, dry_run=dry_run, strict_fields=strict_fields)
            return self._object_response(raw, rt, obj)
        if method == "PATCH" and path.name is not None:
            record.verb = "patch"
            patch_type = _patch_type(raw.content_type)
            obj = self.patch_object(rt, path.namespace, path.name, _load_body(raw, body_bytes),
                                    patch_type=patch_type, subresource=path.subresource, dry_run=dry_run,
                                    strict_fields=strict_fields)
            return self._object_response(raw, rt, obj)
        if method == "DELETE":
            options = _load_body(raw, body_bytes) if body_bytes.strip() else {}
            options = options if isinstance(options, dict) else {}
            propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
            if options.get("orphanDependents") is True and not propagation:
                propagation = "Orphan"
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            if path.name is None:
                record.verb = "deletecollection"
                items = self.delete_collection(rt, path.namespace, label_selector=query.get("labelSelector", ""),
                                               field_selector=query.get("fieldSelector", ""),
                                               propagation=propagation)
                return aiohttp.web.json_response(self._list_body(rt, items))
            record.verb = "delete"
            obj = self.delete_object(rt, path.namespace, path.name, propagation=propagation,
                                     preconditions=options.get("preconditions"), dry_run=dry_run)
            return self._object_response(raw, rt, obj)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested"
                       f" resource ({method} {raw.path})")

    def _pod_log(self, namespace: str, name: str, container: str | None) -> aiohttp.web.StreamResponse:
        self.read_object(self.resource_type("pods"), namespace, name)  # 404 for a missing pod
        if self.pod_log_reader is None:
            raise ApiError(400, "BadRequest", f'pod "{name}" has no logs: no kubelet runs its containers')
        return aiohttp.web.Response(text=self.pod_log_reader(namespace, name, container))

    def _list_body(self, rt: ResourceType, items: list[Json], continue_token: str = "",
                   remaining: int | None = None) -> Json:
        meta: Json = {"resourceVersion": str(self._rv)}
        if continue_token:
            meta["continue"] = continue_token
            meta["remainingItemCount"] = remaining
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    def _handle_list(self, raw: aiohttp.web.BaseRequest, rt: ResourceType,
                    namespace: str | None) -> aiohttp.web.StreamResponse:
        query = raw.query
        items = self.list_objects(rt, namespace, label_selector=query.get("labelSelector", ""),
                                  field_selector=query.get("fieldSelector", ""))
        # Paging: the continue token is the position of the next item (a real server encodes a key).
        start = 0
        if query.get("continue"):
            try:
                start = int(base64.urlsafe_b64decode(query["continue"].encode()).decode())
            except ValueError as e:
                raise _bad_request("invalid continue token") from e
        limit = _int_param(query, "limit")
        end = start + limit if limit > 0 else len(items)
        token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else ""
        page = items[start:end]
        if _wants_table(raw):
            return aiohttp.web.json_response(self._table(rt, page))
        return aiohttp.web.json_response(self._list_body(rt, page, token, len(items) - end))

    def _object_response(self, raw: aiohttp.web.BaseRequest, rt: ResourceType, obj: Json,
                         status: int = 200) -> aiohttp.web.StreamResponse:
        if raw.method == "GET" and _wants_table(raw):
            return aiohttp.web.json_response(self._table(rt, [obj]))
        return aiohttp.web.json_response(obj, status=status)

    async def _handle_watch(self, raw: aiohttp.web.BaseRequest, rt: ResourceType,
                           path: _ApiPath) -> aiohttp.web.StreamResponse:
        query = raw.query
        field_selector = query.get("fieldSelector", "")
        timeout_text = query.get("timeoutSeconds")
        watcher, backlog = self.open_watch(
            rt, path.namespace, name=path.name, resource_version=query.get("resourceVersion"),
            label_selector=query.get("labelSelector", ""), field_selector=field_selector,
            send_initial_events=query.get("sendInitialEvents") == "true")
        bookmarks = query.get("allowWatchBookmarks") == "true"
        as_table = _wants_table(raw)  # kubectl get -w: every event object is a one-row Table
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _int_param(query, "timeoutSeconds") if timeout_text else None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            for item in backlog:
                if as_table and item["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    item = {"type": item["type"], "object": self._table(rt, [item["object"]])}
                await response.write(json.dumps(item).encode() + b"\n")
                if item["type"] == "ERROR":
                    return response
            next_bookmark = loop.time() + self.bookmark_interval_seconds
            while not self._closing:
                wake_at = next_bookmark if deadline is None else min(next_bookmark, deadline)
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=max(0.0, wake_at - loop.time()))
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    if bookmarks:
                        await response.write(json.dumps(self._bookmark(rt)).encode() + b"\n")
                    next_bookmark = loop.time() + self.bookmark_interval_seconds
                    continue
                if event is None:
                    break
                event_type = watcher.translate(event)
                if event_type is not None:
                    shown = self._present(rt, event.obj)
                    item = {"type": event_type, "object": self._table(rt, [shown]) if as_table else shown}
                    await response.write(json.dumps(item).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self.close_watch(watcher)
        return response

    # ----- tables and OpenAPI for kubectl --------------------------------------------------------------

    def _table(self, rt: ResourceType, objs: list[Json]) -> Json:
        columns: tuple[Json, ...]
        if rt.custom:
            columns = rt.printer_columns or _DEFAULT_TABLE
        elif rt.plural == "pods" and rt.group == "":
            columns = _POD_TABLE
        else:
            columns = _DEFAULT_TABLE
        definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
        definitions += [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                         "description": c.get("description", ""), "priority": c.get("priority", 0)}
                        for c in columns]
        rows = []
        for obj in objs:
            cells: list[Any] = [_meta(obj).get("name")]
            for column in columns:
                value = _column_value(obj, column.get("jsonPath", ""))
                if column.get("type") == "date" and isinstance(value, str):
                    value = _age(value)
                cells.append("<none>" if value is None else value)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                                                    "apiVersion": "meta.k8s.io/v1", "metadata": _meta(obj)}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": str(self._rv)},
                "columnDefinitions": definitions, "rows": rows}

    def _openapi_index(self) -> Json:
        paths: Json = {}
        for rt in self._types.values():
            key = f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={self._rv}"}
        return {"paths": paths}

    def _openapi_document(self, group_version_path: str) -> Json:
        parts = group_version_path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            raise _endpoint_not_found()
        schemas: Json = {}
        paths: Json = {}
        for rt in self._types.values():
            if rt.group == group and rt.version == version:
                # kubectl looks for a PATCH operation of the GVK that accepts fieldValidation (and dryRun)
                # before it trusts the server to validate; otherwise it falls back to OpenAPI v2.
                base = f"/apis/{group}/{version}" if group else f"/api/{version}"
                scope = "/namespaces/{namespace}" if rt.namespaced else ""
                paths[f"{base}{scope}/{rt.plural}/{{name}}"] = {"patch": {
                    "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": rt.kind},
                    "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}}
                                   for p in ("dryRun", "fieldManager", "fieldValidation", "force")],
                    "responses": {"200": {"description": "OK"}},
                }}
                prefix = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
                schema: Json = copy.deepcopy(rt.schema) if rt.schema else {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}
                schema["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": rt.kind}]
                schemas[f"{prefix}.{version}.{rt.kind}"] = schema
        if not schemas:
            raise _endpoint_not_found()
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes (etj emulator)", "version": "v1.32.0"},
                "paths": paths, "components": {"schemas": schemas}}


def _qos_class(pod_spec: Mapping[str, Any]) -> str:
    """The pod QoS class as the API server computes it from requests and limits of cpu and memory."""
    containers = list(pod_spec.get("containers") or [])
    resources = [c.get("resources") or {} for c in containers]
    if not any((r.get("requests") or {}) or (r.get("limits") or {}) for r in resources):
        return "BestEffort"
    for r in resources:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        for name in ("cpu", "memory"):
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                return "Burstable"
    return "Guaranteed"


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA before beta before alpha, higher numbers first."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (3, 0, 0)
    major, stage, minor = match.groups()
    stage_rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (stage_rank, -int(major), -int(minor or 0))


def _int_param(query: Mapping[str, str], name: str) -> int:
    try:
        return int(query.get(name) or 0)
    except ValueError:
        raise _bad_request(f"invalid {name}: {query.get(name)!r}") from None


def _load_body(raw: aiohttp.web.BaseRequest, body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        if "yaml" in raw.content_type:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as e:
        raise _bad_request(f"the request body is not valid JSON/YAML: {e}") from e


_PATCH_TYPES: Final = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
}


def _patch_type(content_type: str) -> str:
    try:
        return _PATCH_TYPES[content_type]
    except KeyError:
        raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format -"
                       f" accepted media types include: {', '.join(_PATCH_TYPES)}") from None


def _wants_table(raw: aiohttp.web.BaseRequest) -> bool:
    return "as=Table" in raw.headers.get("Accept", "")


def _column_value(obj: Json, json_path: str) -> Any:
    """Evaluate the simple JSONPath of printer columns (``.a.b``, ``.a[0].b``, ``.a[?(@.k=="v")].b``)."""
    if json_path == "__ready":
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        total = len((obj.get("spec") or {}).get("containers") or [])
        return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"
    if json_path == "__restarts":
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        return sum(int(s.get("restartCount", 0)) for s in statuses)
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


# ---------------------------------------------------------------------------------------------------------
# The threaded server
# ---------------------------------------------------------------------------------------------------------


class EmulatorServer:
    """Serve a :class:`KubeApiEmulator` on 127.0.0.1 from its own thread and event loop.

    Use as a context manager (or ``start()``/``stop()``). Accessors such as :meth:`get`, :meth:`create`,
    :meth:`patch` run on the server's loop and go through the same code as HTTP requests, so resource
    versions, watch events, finalizers and garbage collection all apply; they raise :class:`ApiError`.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, crds: Iterable[Mapping[str, Any] | str | pathlib.Path] = (),
        bookmark_interval_seconds: float = DEFAULT_BOOKMARK_INTERVAL_SECONDS, strict_namespaces: bool = False,
        history_limit: int = DEFAULT_HISTORY_LIMIT, event_log_size: int = DEFAULT_EVENT_LOG_SIZE,
        request_log_size: int = DEFAULT_REQUEST_LOG_SIZE,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.emulator = KubeApiEmulator(bookmark_interval_seconds=bookmark_interval_seconds,
                                        strict_namespaces=strict_namespaces, history_limit=history_limit,
                                        event_log_size=event_log_size, request_log_size=request_log_size)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        for crd in crds:
            if isinstance(crd, Mapping):
                self.load_crd(crd)
            else:
                self.load_crd_file(crd)

    # ----- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the emulator server is already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="k8s-api-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the emulator server did not start in 30 s")
        if self._startup_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise RuntimeError("the emulator server failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close all watch streams, stop serving and join the thread."""
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None or loop is None or stop_requested is None:
            return
        loop.call_soon_threadsafe(stop_requested.set)
        thread.join(timeout=30)
        if thread.is_alive():
            logger.warning("The emulator server thread did not stop in 30 s.")
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:
            self._startup_error = e
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_requested = asyncio.Event()
        emulator = self.emulator

        async def handle(request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
            return await emulator(request)

        async with emulator:  # kmock's handler context: its DSL streams and error accounting
            emulator.attach_loop(asyncio.get_running_loop())
            web_server = aiohttp.web.Server(handle, handler_cancellation=True)
            runner = aiohttp.web.ServerRunner(web_server, shutdown_timeout=2.0)
            await runner.setup()
            try:
                site = aiohttp.web.TCPSite(runner, self.host, self._requested_port)
                await site.start()
                self._port = int(runner.addresses[0][1])
                emulator.base_url = self.url
                self._ready.set()
                await self._stop_requested.wait()
                emulator._closing = True
                emulator.break_watches()
                await asyncio.sleep(0)  # let the watch handlers see the end of their streams
            finally:
                await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._port is None:
            raise RuntimeError("the emulator server is not started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.port}"

    @property
    def faults(self) -> FaultInjector:
        """The fault injector (thread-safe)."""
        return self.emulator.faults

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log."""
        return self.emulator.requests_log

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self.emulator.clear_requests_log()

    # ----- kubeconfig -----------------------------------------------------------------------------------

    def kubeconfig(self, *, namespace: str = "default", context: str = "etj-emulator") -> Json:
        """A kubeconfig dict with a token user that the ``kubernetes`` client, kopf and kubectl accept."""
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": "etj-emulator-token"}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }

    def write_kubeconfig(self, path: str | pathlib.Path, *, namespace: str = "default") -> pathlib.Path:
        """Write the kubeconfig to ``path`` and return it."""
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace=namespace), sort_keys=False))
        return target

    # ----- in-process accessors -------------------------------------------------------------------------

    def call(self, fn: Callable[[KubeApiEmulator], T]) -> T:
        """Run ``fn(emulator)`` on the server's loop (or directly before start) and return its result."""
        loop = self._loop
        if self._thread is None or loop is None or loop.is_closed():
            return fn(self.emulator)
        if threading.current_thread() is self._thread:
            return fn(self.emulator)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(self.emulator))
            except BaseException as e:
                future.set_exception(e)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    def load_crd(self, crd: Mapping[str, Any]) -> Json:
        """Create (or replace the spec of) a CRD so that its resource becomes served and discoverable."""
        def load(emulator: KubeApiEmulator) -> Json:
            crd_type = emulator.resource_type("customresourcedefinitions")
            name = _meta(crd).get("name", "")
            try:
                existing = emulator.read_object(crd_type, None, name)
            except ApiError:
                return emulator.create_object(crd_type, None, dict(crd))
            updated = emulator.replace_object(crd_type, None, name, {**existing, "spec": crd.get("spec")})
            emulator._establish_crd(crd_type, updated)
            return updated
        return self.call(load)

    def load_crd_file(self, path: str | pathlib.Path) -> list[Json]:
        """Load every CRD of a (multi-document) YAML file."""
        docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
        return [self.load_crd(d) for d in docs if d.get("kind") == "CustomResourceDefinition"]

    def load_crds(self, directory: str | pathlib.Path) -> list[Json]:
        """Load every CRD from the ``*.yaml`` files of a directory (e.g. the repository's ``crds/``)."""
        loaded: list[Json] = []
        for path in sorted(pathlib.Path(directory).glob("*.y*ml")):
            loaded += self.load_crd_file(path)
        return loaded

    def get(self, resource: str, namespace: str | None, name: str) -> Json | None:
        """The object (a copy), or None if absent. ``resource``: ``pods``, ``etj``, ``v1/pods``..."""
        def read(emulator: KubeApiEmulator) -> Json | None:
            try:
                return copy.deepcopy(emulator.read_object(emulator.resource_type(resource), namespace, name))
            except UnknownResourceError:
                raise
            except ApiError as e:
                if e.code == 404:
                    return None
                raise
        return self.call(read)

    def list(self, resource: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[Json]:
        """Objects of a type (all namespaces when ``namespace`` is None), filtered by selectors."""
        return self.call(lambda e: copy.deepcopy(e.list_objects(
            e.resource_type(resource), namespace, label_selector=label_selector or "",
            field_selector=field_selector or "")))

    def create(self, resource: str, body: Mapping[str, Any], namespace: str | None = None) -> Json:
        """Create an object (namespace from the argument or the body's metadata)."""
        return self.call(lambda e: copy.deepcopy(e.create_object(e.resource_type(resource), namespace,
                                                                 copy.deepcopy(dict(body)))))

    def replace(self, resource: str, namespace: str | None, name: str, body: Mapping[str, Any], *,
                subresource: str | None = None) -> Json:
        """Replace an object (``PUT``), or its status with ``subresource='status'``."""
        return self.call(lambda e: copy.deepcopy(e.replace_object(
            e.resource_type(resource), namespace, name, copy.deepcopy(dict(body)), subresource=subresource)))

    def patch(self, resource: str, namespace: str | None, name: str, patch: Any, *,
              subresource: str | None = None, patch_type: str = "merge") -> Json:
        """Patch an object; ``patch_type`` is ``merge``, ``strategic``, ``json`` or ``apply``."""
        return self.call(lambda e: copy.deepcopy(e.patch_object(
            e.resource_type(resource), namespace, name, copy.deepcopy(patch), patch_type=patch_type,
            subresource=subresource)))

    def patch_status(self, resource: str, namespace: str | None, name: str, status: Mapping[str, Any]) -> Json:
        """Merge-patch ``.status`` through the status subresource (what a kubelet or controller does)."""
        return self.patch(resource, namespace, name, {"status": dict(status)}, subresource="status")

    def delete(self, resource: str, namespace: str | None, name: str, *,
               propagation: str | None = None) -> Json | None:
        """Delete an object; returns its last state, or None if it was already absent."""
        def remove(emulator: KubeApiEmulator) -> Json | None:
            try:
                return copy.deepcopy(emulator.delete_object(emulator.resource_type(resource), namespace, name,
                                                            propagation=propagation))
            except UnknownResourceError:
                raise
            except ApiError as e:
                if e.code == 404:
                    return None
                raise
        return self.call(remove)

    def set_pod_phase(
        self, namespace: str, name: str, phase: str, *, exit_code: int | Mapping[str, int] | None = None,
        pod_ip: str | None = None, reason: str | None = None,
    ) -> Json:
        """Play the kubelet: set a pod's phase and matching containerStatuses (with exit codes when done).

        ``exit_code`` is one code for every container or a ``{container name: code}`` mapping; it defaults to
        0 for ``Succeeded`` and 1 for ``Failed``.
        """
        pod = self.get("pods", namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        now = _now()
        statuses = []
        for container in (pod.get("spec") or {}).get("containers") or []:
            cname = container.get("name", "")
            state: Json
            if phase in ("Succeeded", "Failed"):
                default = 0 if phase == "Succeeded" else 1
                code = exit_code.get(cname, default) if isinstance(exit_code, Mapping) else (
                    default if exit_code is None else exit_code)
                state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                        "startedAt": now, "finishedAt": now}}
            elif phase == "Running":
                state = {"running": {"startedAt": now}}
            else:
                state = {"waiting": {"reason": reason or "ContainerCreating"}}
            image = container.get("image", "")
            statuses.append({"name": cname, "image": image, "imageID": f"emulated://{image}",
                             "containerID": f"emulated://{pod['metadata']['uid']}/{cname}",
                             "ready": phase == "Running", "restartCount": 0, "started": phase == "Running",
                             "state": state})
        status: Json = {"phase": phase, "containerStatuses": statuses,
                        "conditions": [{"type": "Ready", "status": "True" if phase == "Running" else "False",
                                        "lastTransitionTime": now}]}
        if phase == "Running" and not (pod.get("status") or {}).get("startTime"):
            status["startTime"] = now
        if pod_ip is not None:
            status.update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
        if reason is not None:
            status["reason"] = reason
        return self.patch_status("pods", namespace, name, status)

    def wait_for(self, resource: str, namespace: str | None, name: str,
                 predicate: Callable[[Json | None], bool], *, timeout_seconds: float = 10.0,
                 interval_seconds: float = 0.05) -> Json | None:
        """Poll an object until ``predicate(obj_or_None)`` holds; raise TimeoutError with the last state."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            obj = self.get(resource, namespace, name)
            if predicate(obj):
                return obj
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{resource} {namespace}/{name} did not reach the expected state in"
                                   f" {timeout_seconds} s; last seen: {obj!r}")
            time.sleep(interval_seconds)

    def break_watches(self) -> int:
        """End all open watch streams (clients reconnect with their last resourceVersion)."""
        return self.call(lambda e: e.break_watches())

    def compact(self) -> None:
        """Forget the event log: watch resumes from older resourceVersions get 410 Gone."""
        self.call(lambda e: e.compact())
