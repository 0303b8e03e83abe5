"""The one Kubernetes API wrapper: every write of the operator goes through :class:`KubeApi`.

It speaks raw REST with plain dicts over aiohttp on the event loop, with the credentials the
``kubernetes`` package reads (in-cluster service account, or a kubeconfig), so custom resources keep every
field as written. Creates are idempotent on 409 and deletes on 404, names are deterministic, so re-running
any step after an operator restart is harmless. Every call is counted (verb, resource, code) for the
operator's metrics and for the RBAC coverage test. A failed call raises one of the transport's own errors
(:mod:`etj_operator.errors`: transient, conflict, not found, gone, permanent), which keep the server's
Status (code, reason, message, causes), its Retry-After, and the object the call was about.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from etj_operator import contract
from etj_operator.errors import (
    ApiStatusError,
    ConflictError,
    NotFoundError,
    PermanentApiError,
    TransientApiError,
    error_for,
)
from etj_operator.leader import FENCED_WRITES, NotLeader
from etj_operator.metrics import API_REQUESTS

if TYPE_CHECKING:
    from etj_operator.ports import JobWriter, ObjectCreator, WorkloadWriter

logger = logging.getLogger(__name__)

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
#: How long a bearer token is reused before the credentials are read again (a 401 re-reads at once).
AUTH_REFRESH_SECONDS: Final = 60.0


def _version() -> str:
    try:
        return version("efficient-training-operator")
    except PackageNotFoundError:
        return "dev"


#: How the operator's own requests show up in API server audit logs (Kopf's watches say "kopf/...").
USER_AGENT: Final = f"etj-operator/{_version()}"


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The REST path of the collection, an object, or one of its subresources."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


RESOURCES: Final[Mapping[str, Resource]] = {
    "Pod": Resource("v1", "pods"),
    "Service": Resource("v1", "services"),
    "ServiceAccount": Resource("v1", "serviceaccounts"),
    "Event": Resource("v1", "events"),
    "Node": Resource("v1", "nodes", namespaced=False),
    "Role": Resource("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": Resource("coordination.k8s.io/v1", "leases"),
    contract.KIND: Resource(contract.API_VERSION, contract.PLURAL),
    contract.REPORT_KIND: Resource(contract.API_VERSION, contract.REPORT_PLURAL),
    # Kueue (ETJ_KUEUE; etj_operator.kueue): the jobs' Workloads, the flavors they are admitted to, priority classes.
    "Workload": Resource("kueue.x-k8s.io/v1beta2", "workloads"),
    "ResourceFlavor": Resource("kueue.x-k8s.io/v1beta2", "resourceflavors", namespaced=False),
    "WorkloadPriorityClass": Resource("kueue.x-k8s.io/v1beta2", "workloadpriorityclasses", namespaced=False),
    "PriorityClass": Resource("scheduling.k8s.io/v1", "priorityclasses", namespaced=False),
}


__all__ = [
    "RESOURCES",
    "USER_AGENT",
    "ApiStatusError",
    "ClusterConnection",
    "KubeApi",
    "Resource",
    "connection_from",
    "load_connection",
]


@dataclass(frozen=True)
class ClusterConnection:
    """Where the API server is and how to authenticate to it (from a kubeconfig or the pod's account)."""

    host: str
    #: TLS settings for aiohttp: a context (CA, client certificate), False (verification off, as
    #: kubeconfig's insecure-skip-tls-verify), or True (plain HTTP, or the system's defaults).
    ssl: ssl.SSLContext | bool = True
    proxy: str | None = None
    server_hostname: str | None = None
    #: The Authorization header's value; called with refresh=True after a 401 (a rotated token).
    authorization: Callable[..., str | None] = lambda refresh=False: None


def load_connection(kubeconfig: str | None = None) -> ClusterConnection:
    """``kubeconfig``, else $KUBECONFIG, else in-cluster credentials, else ~/.kube/config.

    The ``kubernetes`` package reads the credentials (every kubeconfig form: tokens, client
    certificates, exec plugins; in-cluster token rotation); requests then go through aiohttp.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return connection_from(configuration)


def connection_from(configuration: Any) -> ClusterConnection:
    """A ClusterConnection from a ``kubernetes.client.Configuration``."""
    tls: ssl.SSLContext | bool = True
    if str(configuration.host).startswith("https"):
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif configuration.assert_hostname is False:
            context.check_hostname = False
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
        tls = context

    cache: dict[str, Any] = {"value": None, "at": -math.inf}

    def authorization(refresh: bool = False) -> str | None:
        # The kubernetes package re-reads the credentials on every ask (its kubeconfig hook re-applies the
        # whole config, proxies from the environment included): about a fifth of the operator's CPU in a
        # burst of jobs when asked per request. Asked at most every AUTH_REFRESH_SECONDS, or at once after
        # a 401 (a rotated or expired token).
        now = time.monotonic()
        if refresh or now - cache["at"] >= AUTH_REFRESH_SECONDS:
            value = (configuration.auth_settings().get("BearerToken") or {}).get("value")
            cache.update(value=str(value) if value else None, at=now)
        return cache["value"]  # type: ignore[no-any-return]

    return ClusterConnection(
        host=str(configuration.host).rstrip("/"),
        ssl=tls,
        proxy=configuration.proxy or None,
        server_hostname=configuration.tls_server_name or None,
        authorization=authorization,
    )


class KubeApi:
    """Idempotent, counted, non-blocking access to the API for the operator's handlers.

    Requests run on the event loop through one aiohttp session with up to ``max_connections`` kept-alive
    connections (more requests wait for a free one). An earlier version sent them through the
    ``kubernetes`` package's ApiClient on a thread pool: 0.53 ms of CPU per request against 0.19 ms
    here (bench/api_client.py), and per request its kubeconfig hook re-applied the whole configuration;
    together most of the operator's CPU in a burst of jobs (docs/benchmarks.md, "Operator scale").
    """

    def __init__(self, connection: ClusterConnection, max_connections: int = 16, timeout_seconds: float = 30.0) -> None:
        self.connection = connection
        self.max_connections = max_connections
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        #: Called before every request but reads and the Lease's own (raises to refuse it): the leader
        #: election's fence (:meth:`etj_operator.leader.LeaderElector.check`); None: every write goes.
        self.fence: Callable[[], None] | None = None
        #: Sent with every request (audit logs tell replicas apart when it names the election identity).
        self.user_agent = USER_AGENT
        #: (verb, resource) -> number of calls; read by tests that check RBAC coverage and request counts.
        self.calls: Counter[tuple[str, str]] = Counter()

    async def aclose(self) -> None:
        """Close the connections; later calls fail as transient ("the operator is stopping")."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, ssl=self.connection.ssl),
                timeout=self.timeout,
                headers={"User-Agent": self.user_agent, "Accept": "application/json"},
                json_serialize=json.dumps,
            )
        return self._session

    # --- the core ------------------------------------------------------------------------------------
    async def request(
        self,
        verb: str,
        method: str,
        resource: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        decode: bool = True,
        *,
        kind: str = "",
        namespace: str | None = None,
        name: str = "",
    ) -> Any:
        """Send one request and return the decoded JSON; raise an :class:`ApiStatusError` subclass otherwise.

        ``decode=False`` skips decoding a successful answer (returns None): a created pod's echo is
        not needed, and decoding it was a measurable share of a burst. Error answers are always decoded.
        A 401 makes it read the credentials again and retry once (the token was rotated or expired); a
        second 401 is a :class:`PermanentApiError`. ``kind``, ``namespace`` and ``name`` name the object
        in the error (for the job's condition and Event).
        """
        about = _About(verb, kind or resource, namespace, name)
        try:
            return await self._send(about, method, resource, path, body, query, content_type, decode, refresh=False)
        except PermanentApiError as e:
            if e.code != 401:
                raise
            return await self._send(about, method, resource, path, body, query, content_type, decode, refresh=True)

    async def _send(
        self,
        about: _About,
        method: str,
        resource: str,
        path: str,
        body: Any,
        query: Mapping[str, str] | None,
        content_type: str,
        decode: bool,
        *,
        refresh: bool,
    ) -> Any:
        verb = about.verb
        if self._closed:
            raise about.error(TransientApiError, f"{method} {path}: the operator is stopping")
        if self.fence is not None and method != "GET" and about.kind != "Lease":
            self.fence()  # raises NotLeader: a process that does not lead sends no write (etj_operator.leader)
        try:
            async with self._open_session().request(
                method,
                self.connection.host + path,
                params=dict(query) if query else None,
                data=json.dumps(body) if body is not None else None,
                **self._options({"Content-Type": content_type}, refresh=refresh),
            ) as response:
                data = await response.read()
                code = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:  # refused, reset, TLS, timeouts: retry
            self._count(verb, resource, "error")
            raise about.error(TransientApiError, f"{method} {path}: {type(e).__name__}: {e}") from e
        self._count(verb, resource, str(code))
        decoded: Any = None
        if data and (decode or code >= 300):
            try:
                decoded = json.loads(data)
            except ValueError:
                decoded = {"message": data.decode(errors="replace")}
        if code >= 300:
            raise about.answer(code, decoded, retry_after, f"{method} {path}")
        return decoded

    async def watch(
        self, resource: str, path: str, query: Mapping[str, str], timeout_seconds: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream a watch: yield each event object ({"type", "object"}) until the server ends the stream.

        ``timeout_seconds`` goes to the server (``timeoutSeconds``); the client gives up when nothing at
        all arrives for 30 s longer than that. Lines are split here, not by aiohttp's line reader, whose
        64 KiB line limit a big pod could pass.
        """
        about = _About("watch", resource, None, "")
        if self._closed:
            raise about.error(TransientApiError, f"watch {path}: the operator is stopping")
        params = {**query, "watch": "true", "timeoutSeconds": str(int(timeout_seconds))}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 30)
        try:
            async with self._open_session().get(
                self.connection.host + path, params=params, timeout=timeout, **self._options({}, refresh=False)
            ) as response:
                self._count("watch", resource, str(response.status))
                if response.status == 401:  # the caller retries; it then sends fresh credentials
                    self.connection.authorization(refresh=True)
                if response.status >= 300:
                    text = await response.text()
                    try:
                        status: Any = json.loads(text)
                    except ValueError:
                        status = {"message": text}
                    raise about.answer(response.status, status, response.headers.get("Retry-After"), f"watch {path}")
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            self._count("watch", resource, "error")
            raise about.error(TransientApiError, f"watch {path}: {type(e).__name__}: {e}") from e

    def _options(self, headers: dict[str, str], *, refresh: bool) -> dict[str, Any]:
        """Per-request options every call shares: the Authorization header, the proxy, the TLS name."""
        token = self.connection.authorization(refresh=refresh)
        options: dict[str, Any] = {"headers": {**headers, "Authorization": token} if token else headers}
        if self.connection.proxy:
            options["proxy"] = self.connection.proxy
        if self.connection.server_hostname:
            options["server_hostname"] = self.connection.server_hostname
        return options

    def _count(self, verb: str, resource: str, code: str) -> None:
        self.calls[(verb, resource)] += 1
        API_REQUESTS.labels(verb=verb, resource=resource, code=code).inc()

    # --- idempotent operations -----------------------------------------------------------------------
    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object; False (not an error) when it already exists (409)."""
        res = RESOURCES[manifest["kind"]]
        meta = manifest["metadata"]
        path = res.path(meta.get("namespace"))
        try:
            await self.request(
                "create",
                "POST",
                res.plural,
                path,
                body=dict(manifest),
                decode=False,
                kind=manifest["kind"],
                namespace=meta.get("namespace"),
                name=meta.get("name") or "",
            )
        except ConflictError:
            return False
        return True

    async def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        grace_period_seconds: int | None = None,
        *,
        uid: str | None = None,
    ) -> bool:
        """Delete an object (background propagation); False when it was already gone (404).

        ``uid``: only that object (DeleteOptions preconditions): another object of the name answers 409,
        which is False too (the one asked for is gone; the new one of its name is not touched).
        """
        res = RESOURCES[kind]
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request(
                "delete",
                "DELETE",
                res.plural,
                res.path(namespace, name),
                body=body,
                decode=False,
                kind=kind,
                namespace=namespace,
                name=name,
            )
        except NotFoundError:
            return False
        except ConflictError:
            if uid is None:
                raise
            return False
        return True

    async def patch_job_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        uid: str | None = None,
        status_exists: bool = True,
        term: str | None = None,
        stamp_resource_version: str | None = None,
    ) -> bool:
        """Write these keys of the job's status (a value of None removes its key); False when the job is gone.

        With ``uid``, only the job with that UID is written: a JSON patch (RFC 6902) whose first operation
        tests ``/metadata/uid``, so a write computed for a deleted job never lands on a new job of the same
        name. (A merge patch carrying ``metadata.uid`` is no precondition on a real server: the status
        strategy copies the stored metadata over it.) Each key is then one ``add`` (which replaces an existing
        value) or ``remove``; ``status_exists=False`` (the caller saw no status yet) writes ``/status`` whole.
        A failed test is a 422: the job is read, and one that is gone or has another UID is gone for the
        caller (False). Any other 422 (no ``/status`` after all, a removed key already gone) is tried once more
        with operations made for the status as read (still testing the UID); a second 422 is raised.
        Without ``uid``: a merge patch, as before (no precondition).

        ``term`` (with leader election): the write is fenced by the leader's term. With
        ``stamp_resource_version`` the term is written into ``status.leaderTerm`` on the job exactly as read
        at that resourceVersion (a 409 if it changed since); without, the write tests that
        ``status.leaderTerm`` still names this term, so a write of an earlier leader, which another leader
        has since stamped the job over, never lands: :class:`~etj_operator.leader.NotLeader`.
        """
        res = RESOURCES[contract.KIND]
        path = res.path(namespace, name, "status")

        async def send(body: Any, content_type: str) -> None:
            await self.request(
                "patch",
                "PATCH",
                f"{res.plural}/status",
                path,
                body=body,
                content_type=content_type,
                decode=False,  # the echo is not needed: the watch brings the job's new body
                kind=contract.KIND,
                namespace=namespace,
                name=name,
            )

        fencing: dict[str, Any] = {"term": term, "stamp_resource_version": stamp_resource_version}
        try:
            if uid is None:
                await send({"status": dict(status)}, MERGE_PATCH)
            else:
                await send(status_operations(status, uid, status_exists, **fencing), JSON_PATCH)
            return True
        except NotFoundError:
            return False
        except PermanentApiError as e:
            if uid is None or e.code != 422:
                raise
            current = await self.get(contract.KIND, namespace, name)
            meta = (current or {}).get("metadata") or {}
            if current is None or meta.get("uid") != uid:
                logger.info("%s/%s: status not written, the job of uid %s is gone", namespace, name, uid)
                return False
            stored = current.get("status")
            found = stored.get(contract.STATUS_LEADER_TERM) if isinstance(stored, Mapping) else None
            if term is not None and stamp_resource_version is None and found != term:
                FENCED_WRITES.inc()
                raise NotLeader(
                    f"{namespace}/{name}: status written by leader term {found!r} since; not by {term!r}"
                ) from e
            retry = status_operations(
                status,
                uid,
                isinstance(stored, Mapping),
                present=set(stored) if isinstance(stored, Mapping) else None,
                **fencing,
            )
            try:
                await send(retry, JSON_PATCH)
            except NotFoundError:
                return False
        return True

    async def patch_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any], *, resource_version: str
    ) -> bool:
        """Merge-patch an object's status subresource, only as it was at ``resource_version``.

        False when it changed since (409) or is gone (404): the caller decides again from what it sees next. A merge
        patch replaces lists whole (a Workload's conditions are sent complete), hence the precondition.
        """
        res = RESOURCES[kind]
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status)}
        try:
            await self.request(
                "patch",
                "PATCH",
                f"{res.plural}/status",
                res.path(namespace, name, "status"),
                body=body,
                content_type=MERGE_PATCH,
                decode=False,
                kind=kind,
                namespace=namespace,
                name=name,
            )
        except (NotFoundError, ConflictError):
            return False
        return True

    # --- the Lease (leader election, etj_operator.leader.LeaseClient) -----------------------------------
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None."""
        return await self.get("Lease", namespace, name)

    async def create_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Lease; :class:`ConflictError` when it exists (another candidate created it first)."""
        res = RESOURCES["Lease"]
        meta = lease["metadata"]
        answer = await self.request(
            "create", "POST", res.plural, res.path(meta["namespace"]), body=dict(lease),
            kind="Lease", namespace=meta["namespace"], name=meta["name"],
        )
        return answer if isinstance(answer, dict) else {}

    async def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the Lease (PUT; its resourceVersion makes it conditional: :class:`ConflictError` on a change)."""
        res = RESOURCES["Lease"]
        meta = lease["metadata"]
        answer = await self.request(
            "update", "PUT", res.plural, res.path(meta["namespace"], meta["name"]), body=dict(lease),
            kind="Lease", namespace=meta["namespace"], name=meta["name"],
        )
        return answer if isinstance(answer, dict) else {}

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Read one object; None when it does not exist."""
        res = RESOURCES[kind]
        try:
            result = await self.request(
                "get", "GET", res.plural, res.path(namespace, name), kind=kind, namespace=namespace, name=name
            )
        except NotFoundError:
            return None
        return result if isinstance(result, dict) else None


def status_operations(
    status: Mapping[str, Any],
    uid: str,
    status_exists: bool,
    present: set[str] | None = None,
    *,
    term: str | None = None,
    stamp_resource_version: str | None = None,
) -> list[dict[str, Any]]:
    """The JSON patch that writes ``status``'s keys (None: remove) on the job of ``uid`` only.

    First a ``test`` of ``/metadata/uid``. With ``status_exists``, one ``add`` per key (``add`` replaces an
    existing member, and ``/status`` is there) and one ``remove`` per removed key (only those in ``present``
    when it is given: removing a missing member fails); else one ``add /status`` with every kept key. Values
    keep merge-patch meaning: a None inside a mapping drops that key (lists are written as they are).

    With a leader ``term``: either a stamp (``stamp_resource_version``: a ``replace`` of
    ``/metadata/resourceVersion``, which the server takes as a precondition, and ``status.leaderTerm`` set to
    the term), or a ``test`` that ``/status/leaderTerm`` is the term.
    """
    operations: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
    writes = dict(status)
    if term is not None and stamp_resource_version is not None:
        operations.append({"op": "replace", "path": "/metadata/resourceVersion", "value": stamp_resource_version})
        writes[contract.STATUS_LEADER_TERM] = term
    elif term is not None and status_exists:
        operations.append({"op": "test", "path": "/status/" + contract.STATUS_LEADER_TERM, "value": term})
    elif term is not None:
        writes[contract.STATUS_LEADER_TERM] = term  # no status yet: nobody has stamped it
    if not status_exists:
        whole = {key: _without_nulls(value) for key, value in writes.items() if value is not None}
        operations.append({"op": "add", "path": "/status", "value": whole})
        return operations
    for key, value in writes.items():
        pointer = "/status/" + str(key).replace("~", "~0").replace("/", "~1")
        if value is not None:
            operations.append({"op": "add", "path": pointer, "value": _without_nulls(value)})
        elif present is None or key in present:
            operations.append({"op": "remove", "path": pointer})
    return operations


def _without_nulls(value: Any) -> Any:
    """A value as a merge patch would store it: None members of mappings dropped, at any depth (not in lists)."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


if TYPE_CHECKING:  # KubeApi is the writer the reconciler and the Event poster take (etj_operator.ports): mypy checks
    _JOB_WRITER: type[JobWriter] = KubeApi  # that it satisfies both protocols structurally, at no runtime cost.
    _OBJECT_CREATOR: type[ObjectCreator] = KubeApi
    _WORKLOAD_WRITER: type[WorkloadWriter] = KubeApi


@dataclass(frozen=True)
class _About:
    """What a call was about, for its errors: the verb and the object (kind, namespace, name)."""

    verb: str
    kind: str
    namespace: str | None
    name: str

    def error(self, cls: type[ApiStatusError], message: str) -> ApiStatusError:
        """An error of ``cls`` for a call that got no answer."""
        return cls(message, verb=self.verb, kind=self.kind, namespace=self.namespace, name=self.name)

    def answer(self, code: int, status: Any, retry_after: str | None, fallback: str) -> ApiStatusError:
        """The error for a non-2xx answer (classified by :func:`~etj_operator.errors.error_for`)."""
        return error_for(
            code,
            status,
            retry_after=retry_after,
            verb=self.verb,
            kind=self.kind,
            namespace=self.namespace,
            name=self.name,
            fallback_message=fallback,
        )
