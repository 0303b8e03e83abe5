"""The HTTP face of the emulator: paths, verbs, lists, watches, Tables and OpenAPI for kubectl."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp.web

from . import protobuf, tables
from .errors import ApiError, _bad_request, _endpoint_not_found
from .requestlog import RequestRecord
from .resources import ResourceType

if TYPE_CHECKING:
    from .core import KubeApiEmulator
    from .rbac import AccessControl
import yaml

Json = dict[str, Any]

logger = logging.getLogger(__name__)

SUBRESOURCE_VERBS: Final = ("get", "patch", "update")
#: How often a followed pod log (``kubectl logs -f``) is read again for new lines.
LOG_FOLLOW_POLL_SECONDS: Final = 0.25
EMULATED_VERSION: Final = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-etj-emulator"}

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



class HttpFrontend:
    """Translates HTTP requests into calls on a :class:`KubeApiEmulator`."""

    def __init__(self, emulator: KubeApiEmulator) -> None:
        self.emulator = emulator
        #: Authentication and RBAC (``rbac.AccessControl``), set by ``EmulatorServer``; None: no access checks.
        self.access: AccessControl | None = None

    async def serve(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request: record it, inject faults, then answer as a Kubernetes API server."""
        await raw.read()
        record = RequestRecord(method=raw.method, path=raw.path, query=dict(raw.query),
                               user_agent=raw.headers.get("User-Agent", ""),
                               content_type=raw.content_type if raw.body_exists else "",
                               started_at=time.monotonic())
        with self.emulator._log_lock:
            self.emulator._log.append(record)
            while len(self.emulator._log) > self.emulator.request_log_size:
                self.emulator._log.popleft()
        try:
            if self.access is not None:  # authentication and authorization come first, as on a real server
                self.access.check_request(raw)
            fault = self.emulator.faults.take(raw.method, raw.path_qs, raw.headers.get("User-Agent", ""))
            if fault is not None:
                record.fault = True
                if fault.delay_seconds > 0:
                    await asyncio.sleep(fault.delay_seconds)
                if fault.status is not None:
                    raise fault.to_error()
            api_path = _parse_api_path(raw.path)
            answer = None if self.access is None else await self.access.answer(raw, api_path)
            if answer is not None:  # TokenRequest and self reviews: answered from the caller's identity
                response = answer
            elif api_path is None:
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
        response: aiohttp.web.StreamResponse = await self.emulator.serve_unmatched(raw)
        return response

    def _api_group_list(self) -> Json:
        groups: dict[str, list[str]] = {}
        for rt in self.emulator._types.values():
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
        types = [rt for rt in self.emulator._types.values() if rt.group == group and rt.version == version]
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
        rt = self.emulator._types.get((path.group, path.version, path.plural))
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
            return await self._pod_log(raw, path.namespace or "", path.name or "", query.get("container"))
        if method == "GET" and path.name is None:
            record.verb = "list"
            return self._handle_list(raw, rt, path.namespace)
        if method == "GET":
            record.verb = "get"
            obj = self.emulator.read_object(rt, path.namespace, path.name or "")
            return self._object_response(raw, rt, obj)
        if method == "POST" and path.name is None:
            record.verb = "create"
            obj = self.emulator.create_object(rt, path.namespace, _load_body(raw, body_bytes), dry_run=dry_run,
                                     strict_fields=strict_fields)
            record.name = (obj.get("metadata") or {}).get("name")  # the created object's (generateName too)
            return self._object_response(raw, rt, obj, status=201)
        if method == "PUT" and path.name is not None:
            record.verb = "update"
            obj = self.emulator.replace_object(rt, path.namespace, path.name, _load_body(raw, body_bytes),
                                      subresource=path.subresource, dry_run=dry_run, strict_fields=strict_fields)
            return self._object_response(raw, rt, obj)
        if method == "PATCH" and path.name is not None:
            record.verb = "patch"
            patch_type = _patch_type(raw.content_type)
            obj = self.emulator.patch_object(rt, path.namespace, path.name, _load_body(raw, body_bytes),
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
            # DeleteOptions.gracePeriodSeconds (kubectl --grace-period, the kubelet's final grace-0 delete)
            grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
            if grace is not None:
                try:
                    grace = int(grace)
                except (TypeError, ValueError):
                    raise _bad_request(f"invalid gracePeriodSeconds: {grace!r}") from None
            if path.name is None:
                record.verb = "deletecollection"
                items = self.emulator.delete_collection(
                    rt, path.namespace, label_selector=query.get("labelSelector", ""),
                    field_selector=query.get("fieldSelector", ""), propagation=propagation,
                    grace_period_seconds=grace)
                return aiohttp.web.json_response(self._list_body(rt, items))
            record.verb = "delete"
            obj = self.emulator.delete_object(rt, path.namespace, path.name, propagation=propagation,
                                     preconditions=options.get("preconditions"), dry_run=dry_run,
                                     grace_period_seconds=grace)
            return self._object_response(raw, rt, obj)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested"
                       f" resource ({method} {raw.path})")

    async def _pod_log(self, raw: aiohttp.web.BaseRequest, namespace: str, name: str,
                       container: str | None) -> aiohttp.web.StreamResponse:
        """``GET pods/NAME/log``: the log, its last ``tailLines``; with ``follow=true`` a stream until the pod ends."""
        pods = self.emulator.resource_type("pods")
        self.emulator.read_object(pods, namespace, name)  # 404 for a missing pod
        reader = self.emulator.pod_log_reader
        if reader is None:
            raise ApiError(400, "BadRequest", f'pod "{name}" has no logs: no kubelet runs its containers')
        full = reader(namespace, name, container)
        text = full
        tail = _int_param(raw.query, "tailLines") if raw.query.get("tailLines") else None
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail > 0 else ""
        if raw.query.get("follow") not in ("true", "1"):
            return aiohttp.web.Response(text=text)
        # Follow: what was there, then what is appended, until the pod is gone or finished (as the kubelet
        # ends the stream when the container exits), or the server stops.
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        sent = len(full)
        try:
            await response.prepare(raw)
            await response.write(text.encode())
            while not self.emulator.closing:
                await asyncio.sleep(LOG_FOLLOW_POLL_SECONDS)
                try:
                    pod = self.emulator.read_object(pods, namespace, name)
                except ApiError:
                    pod = None
                current = reader(namespace, name, container)
                if len(current) > sent:
                    await response.write(current[sent:].encode())
                    sent = len(current)
                if pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    break
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response

    def _list_body(self, rt: ResourceType, items: list[Json], continue_token: str = "",
                   remaining: int | None = None) -> Json:
        meta: Json = {"resourceVersion": str(self.emulator.resource_version)}
        if continue_token:
            meta["continue"] = continue_token
            meta["remainingItemCount"] = remaining
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    def _handle_list(self, raw: aiohttp.web.BaseRequest, rt: ResourceType,
                    namespace: str | None) -> aiohttp.web.StreamResponse:
        query = raw.query
        items = self.emulator.list_objects(rt, namespace, label_selector=query.get("labelSelector", ""),
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
        watcher, backlog = self.emulator.open_watch(
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
            next_bookmark = loop.time() + self.emulator.bookmark_interval_seconds
            while not self.emulator.closing:
                wake_at = next_bookmark if deadline is None else min(next_bookmark, deadline)
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=max(0.0, wake_at - loop.time()))
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    if bookmarks:
                        await response.write(json.dumps(self.emulator._bookmark(rt)).encode() + b"\n")
                    next_bookmark = loop.time() + self.emulator.bookmark_interval_seconds
                    continue
                if event is None:
                    break
                event_type = watcher.translate(event)
                if event_type is not None:
                    shown = self.emulator._present(rt, event.obj)
                    item = {"type": event_type, "object": self._table(rt, [shown]) if as_table else shown}
                    await response.write(json.dumps(item).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self.emulator.close_watch(watcher)
        return response

    # ----- tables and OpenAPI for kubectl --------------------------------------------------------------

    def _table(self, rt: ResourceType, objs: list[Json]) -> Json:
        return tables.build_table(rt, objs, self.emulator.resource_version)

    def _openapi_index(self) -> Json:
        paths: Json = {}
        for rt in self.emulator._types.values():
            key = f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={self.emulator.resource_version}"}
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
        for rt in self.emulator._types.values():
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
    if protobuf.is_protobuf(raw.content_type):
        return protobuf.decode_object(body)  # kubectl's typed commands (create namespace, auth can-i...)
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

