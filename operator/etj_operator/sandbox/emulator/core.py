"""The emulator's state machine: objects, metadata, updates, deletion, garbage collection and watches."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import functools
import logging
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal

import aiohttp.web
import attrs
import kmock

from .admission import CustomResourceAdmission
from .crdcheck import check_crd
from .defaults import default_pod_spec
from .errors import ApiError, UnknownResourceError, _already_exists, _bad_request, _conflict, _invalid, _not_found
from .frontend import HttpFrontend
from .objects import _DNS_LABEL, _DNS_SUBDOMAIN, _RFC1035_LABEL, _generate_name, _meta, _now, _parse_time, _without
from .patches import JsonPatchError, apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from .requestlog import FaultInjector, RequestRecord
from .resources import BUILTIN_RESOURCES, ResourceType, resource_types_from_crd
from .selection import parse_field_selector, parse_label_selector
from .structural import prune_and_default
from .watch import _Event, _Selector, _Watcher

Json = dict[str, Any]

logger = logging.getLogger(__name__)

# How many past watch events are kept so that watches can resume; older resumes get 410 Gone (as etcd
# compaction does to a real server).
DEFAULT_EVENT_LOG_SIZE: Final = 20_000
# A real server sends a BOOKMARK about once a minute; kopf >= 1.44 reconnects after 70 s of silence.
DEFAULT_BOOKMARK_INTERVAL_SECONDS: Final = 20.0
# The request log keeps this many of the latest requests (a sandbox can run for hours).
DEFAULT_REQUEST_LOG_SIZE: Final = 200_000
# kmock keeps every version of every object; the emulator trims that history to keep memory bounded.
DEFAULT_HISTORY_LIMIT: Final = 50

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
    #: is committed (dry runs included); they reject by raising ApiError. By default: the CRD schema and CEL
    #: rules, as a real server (see ``admission.configure`` to turn CEL or all validation off).
    admission: list[Callable[[ResourceType, Json, Json | None], None]] = attrs.field(
        factory=lambda: [CustomResourceAdmission()])
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
    #: While True the garbage collector is behind (kube-controller-manager down, restarting or with a long
    #: queue): its work waits in ``_gc_backlog`` until :meth:`resume_garbage_collection`.
    gc_paused: bool = attrs.field(default=False, init=False)
    _gc_backlog: list[Callable[[], None]] = attrs.field(factory=list, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    base_url: str = attrs.field(default="", init=False)
    _http: HttpFrontend = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._http = HttpFrontend(self)
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

    def _defer_gc(self, callback: Callable[[], None]) -> None:
        """The garbage collector's work: deferred, or kept for later while the collector is paused."""
        if self.gc_paused:
            self._gc_backlog.append(callback)
        else:
            self._defer(callback)

    def pause_garbage_collection(self) -> None:
        """Hold the garbage collector's work (dependents of deleted owners, orphaning, foreground owners).

        On a real cluster the collector is a controller of kube-controller-manager working from its own
        informers: dependents of a deleted owner go seconds (a long queue) to minutes (the controller manager
        down or restarting) after it. Meanwhile they keep their ownerReferences to the owner's UID, and a new
        object of the owner's name and kind is another owner (the collector goes by UID).
        """
        self.gc_paused = True

    def resume_garbage_collection(self) -> None:
        """Let the collector catch up: the held work runs, in order, after the current request."""
        self.gc_paused = False
        backlog, self._gc_backlog = self._gc_backlog, []
        for callback in backlog:
            self._defer(callback)

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
    def closing(self) -> bool:
        """Whether the server is shutting down (streams end)."""
        return self._closing

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
        if rt.group == "rbac.authorization.k8s.io":
            # RBAC names are path segments (ValidateRBACName): `system:discovery` is valid
            if name in (".", "..") or "/" in name or "%" in name:
                raise _invalid(rt, name, f"metadata.name: Invalid value: {name!r}: may not contain '/' or '%'")
            return
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
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            check_crd(obj)  # what a real server checks in a CRD (structural schema, defaults, CEL rules)
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
            if isinstance(spec, dict):
                default_pod_spec(spec)  # registry defaults and the default admission plugins (defaults.py)
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
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
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io" and subresource is None:
            check_crd(new, old)
        for admit in self.admission:
            admit(rt, new, old)
        if dry_run:
            return new
        committed = self._commit(rt, new)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            for served in resource_types_from_crd(committed):
                self._register(served)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers") and \
                not new_meta.get("deletionGracePeriodSeconds"):
            # the last finalizer went (ShouldDeleteDuringUpdate); a graceful deletion waits for its kubelet
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
                      dry_run: bool = False, grace_period_seconds: int | None = None) -> Json:
        """``DELETE``: remove now, or mark with ``deletionTimestamp`` while finalizers (or dependents) remain.

        A pod bound to a node (``spec.nodeName``) and not finished is deleted gracefully, as on a real server:
        it gets ``deletionTimestamp`` = now + grace and ``deletionGracePeriodSeconds`` (``grace_period_seconds``,
        else its ``terminationGracePeriodSeconds``) and stays, Terminating, until its kubelet deletes it again
        with a grace period of 0. A later DELETE may shorten the grace period, never lengthen it.
        """
        obj = self.read_object(rt, namespace, name)
        meta = _meta(obj)
        for field in ("uid", "resourceVersion"):
            if preconditions and preconditions.get(field) and preconditions[field] != meta.get(field):
                raise _conflict(rt, name)
        if grace_period_seconds is not None and grace_period_seconds < 0:
            grace_period_seconds = 1  # a real server reads a negative grace period as 1 s
        if dry_run:
            return obj
        propagation = propagation or "Background"
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise _bad_request(f"unsupported propagationPolicy: {propagation}")
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Orphan" and self._dependents(meta["uid"]) and "orphan" not in finalizers:
            # as a real server: the "orphan" finalizer keeps the owner until the collector has taken its
            # ownerReference off every dependent (then the collector removes the finalizer)
            finalizers.append("orphan")
        if propagation == "Foreground" and self._dependents(meta["uid"]) and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        namespace_with_content = rt.plural == "namespaces" and rt.group == "" and self._namespace_content(name)
        if meta.get("deletionTimestamp"):
            # already terminating: the finalizers' owners (or the pod's kubelet) finish it
            return self._delete_again(rt, obj, grace_period_seconds)
        grace = _graceful_delete_period(rt, obj, grace_period_seconds)
        if not grace and not finalizers and not namespace_with_content:
            return self._present(rt, self._remove(rt, obj))
        new = copy.deepcopy(obj)
        new["metadata"].update(deletionTimestamp=_timestamp_in(grace), deletionGracePeriodSeconds=grace)
        if grace and isinstance(meta.get("generation"), int):
            new["metadata"]["generation"] = meta["generation"] + 1  # as BeforeDelete does on a graceful delete
        if finalizers:
            new["metadata"]["finalizers"] = finalizers
        if rt.plural == "namespaces" and rt.group == "":
            new["status"] = {"phase": "Terminating"}
        committed = self._commit(rt, new)
        if "orphan" in finalizers and "orphan" not in (meta.get("finalizers") or []):
            self._defer_gc(functools.partial(self._orphan_and_release, meta["uid"]))
        if "foregroundDeletion" in finalizers:
            uid = meta["uid"]
            self._defer_gc(lambda: self._delete_dependents(uid))
        if namespace_with_content:
            self._defer(lambda: self._empty_namespace(name))
        return self._present(rt, committed)

    def _delete_again(self, rt: ResourceType, obj: Json, grace_period_seconds: int | None) -> Json:
        """A DELETE of an object that already has a ``deletionTimestamp`` (rest.BeforeDelete's rules)."""
        meta = _meta(obj)
        current = meta.get("deletionGracePeriodSeconds") or 0
        if not current or grace_period_seconds is None or grace_period_seconds >= current:
            return obj  # waiting for finalizers, or a graceful deletion already pending: nothing changes
        # only a shorter grace period is taken: the deadline moves earlier by the difference
        started = _parse_time(str(meta["deletionTimestamp"]))
        deadline = (started or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(seconds=current)
        new = copy.deepcopy(obj)
        new["metadata"].update(
            deletionTimestamp=_format_time(deadline + datetime.timedelta(seconds=grace_period_seconds)),
            deletionGracePeriodSeconds=grace_period_seconds)
        if not grace_period_seconds and not meta.get("finalizers"):
            return self._present(rt, self._remove(rt, obj))
        return self._present(rt, self._commit(rt, new))

    def delete_collection(self, rt: ResourceType, namespace: str | None, *, label_selector: str = "",
                          field_selector: str = "", propagation: str | None = None,
                          grace_period_seconds: int | None = None) -> list[Json]:
        """``DELETE`` on a collection: delete every selected object."""
        doomed = self.list_objects(rt, namespace, label_selector=label_selector, field_selector=field_selector)
        for obj in doomed:
            meta = _meta(obj)
            try:
                self.delete_object(rt, meta.get("namespace"), meta["name"], propagation=propagation,
                                   grace_period_seconds=grace_period_seconds)
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

    def _orphan_and_release(self, owner_uid: str) -> None:
        """The collector's part of an Orphan deletion: ownerReferences off the dependents, then the finalizer."""
        self._orphan_dependents(owner_uid)
        self._remove_finalizer(owner_uid, "orphan")

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
            self._defer_gc(lambda: self._delete_dependents(uid))
        for ref in meta.get("ownerReferences") or []:
            owner_uid = ref.get("uid")
            if owner_uid in self._uids:
                self._defer_gc(functools.partial(self._release_foreground_owner, owner_uid))
        if rt.namespaced and meta.get("namespace"):
            namespace = meta["namespace"]
            self._defer(lambda: self._finish_namespace(namespace))
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self._drop_crd(final)

    def _release_foreground_owner(self, owner_uid: str) -> None:
        if not self._dependents(owner_uid):
            self._remove_finalizer(owner_uid, "foregroundDeletion")

    def _remove_finalizer(self, uid: str, finalizer: str) -> None:
        """The collector takes its ``finalizer`` off the object of ``uid`` (if it is still there and has it)."""
        location = self._uids.get(uid)
        if location is None:
            return
        store_key, key = location
        rt = self._type_for_store(store_key)
        obj = self._store.get(store_key, {}).get(key)
        if rt is None or obj is None:
            return
        finalizers = _meta(obj).get("finalizers") or []
        if finalizer in finalizers:
            new = copy.deepcopy(obj)
            new["metadata"]["finalizers"] = [f for f in finalizers if f != finalizer]
            self._update(rt, obj, new, subresource=None, dry_run=False)

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
        """Serve one HTTP request (see :class:`~.http.HttpFrontend`)."""
        return await self._http.serve(raw)

    async def serve_unmatched(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Let kmock's DSL answer a non-Kubernetes path (test-defined reactions, else kmock's 404)."""
        response: aiohttp.web.StreamResponse = await super().__call__(raw)
        return response


def _graceful_delete_period(rt: ResourceType, obj: Json, requested: int | None) -> int:
    """The grace period of a first DELETE: 0 (at once) except for pods, as the pod strategy decides.

    kube-apiserver's ``CheckGracefulDelete`` for pods: the DeleteOptions' period, else the pod's
    ``terminationGracePeriodSeconds``; 0 for a pod no node runs (no ``spec.nodeName``) or one already
    Succeeded or Failed. Other kinds here have no graceful deletion.
    """
    if rt.group != "" or rt.plural != "pods":
        return 0
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    period = requested if requested is not None else spec.get("terminationGracePeriodSeconds")
    if not isinstance(period, int) or not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    return 1 if period < 0 else period


def _format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp_in(seconds: int) -> str:
    """Now plus ``seconds``, as a metadata timestamp (a deletionTimestamp is the deadline, not the request)."""
    return _format_time(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds))


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
