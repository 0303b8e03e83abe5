"""The one Kubernetes API wrapper: every write of the operator goes through :class:`KubeApi`.

It speaks raw REST with plain dicts over the ``kubernetes`` package's ApiClient (which brings the
credentials: in-cluster service account, or a kubeconfig), so custom resources keep every field as
written. Blocking calls run on a thread pool, never on the event loop. Creates are idempotent on 409 and
deletes on 404, names are deterministic, so re-running any step after an operator restart is harmless.
Every call is counted (verb, resource, code) for the operator's metrics and for the RBAC coverage test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from etj_operator import contract
from etj_operator.errors import PermanentApiError, TransientApiError
from etj_operator.metrics import API_REQUESTS

logger = logging.getLogger(__name__)

MERGE_PATCH: Final = "application/merge-patch+json"


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
    contract.KIND: Resource(contract.API_VERSION, contract.PLURAL),
}


class ApiStatusError(Exception):
    """A non-2xx answer, with the Status object's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def make_api_client(max_connections: int | None = None) -> Any:
    """An ApiClient from $KUBECONFIG when set, else in-cluster credentials, else ~/.kube/config.

    ``max_connections`` sizes its connection pool: as many as the threads that share it (the default is
    5 per CPU; with more threads than that urllib3 discards connections and opens new ones under load).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    path = os.environ.get("KUBECONFIG")
    if path:
        config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    if max_connections is not None:
        configuration.connection_pool_maxsize = max_connections
    return client.ApiClient(configuration)


class KubeApi:
    """Idempotent, counted, non-blocking access to the API for the operator's handlers."""

    def __init__(self, api_client: Any, max_workers: int = 16) -> None:
        self._client = api_client
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="etj-kubeapi")
        self._lock = threading.Lock()
        #: (verb, resource) -> number of calls; read by tests that check RBAC coverage and request counts.
        self.calls: Counter[tuple[str, str]] = Counter()

    def close(self) -> None:
        """Stop taking calls; calls already running finish in the background (the event loop never waits)."""
        self._pool.shutdown(wait=False)

    # --- the blocking core -------------------------------------------------------------------------
    def request(
        self,
        verb: str,
        method: str,
        resource: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request and return the decoded JSON; raise ApiStatusError for non-2xx answers."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            serialized = self._client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(*serialized, _request_timeout=30)
            data = response.read()
            code = int(response.status)
        except ApiStatusError:
            raise
        except Exception as e:  # connection refused, TLS, timeouts: all worth a retry
            self._count(verb, resource, "error")
            raise TransientApiError(f"{method} {path}: {e}", delay=2.0) from e
        self._count(verb, resource, str(code))
        decoded: Any = None
        if data:
            try:
                decoded = json.loads(data)
            except ValueError:
                decoded = {"message": data.decode(errors="replace") if isinstance(data, bytes) else str(data)}
        if code >= 300:
            message = decoded.get("message", "") if isinstance(decoded, dict) else ""
            raise ApiStatusError(code, message or f"{method} {path}")
        return decoded

    def _count(self, verb: str, resource: str, code: str) -> None:
        with self._lock:
            self.calls[(verb, resource)] += 1
        API_REQUESTS.labels(verb=verb, resource=resource, code=code).inc()

    async def _run(self, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: self._checked(*args, **kwargs))
        except RuntimeError as e:  # the pool was closed: the operator is stopping
            raise TransientApiError(f"the operator is stopping: {e}", delay=1.0) from e

    def _checked(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.request(*args, **kwargs)
        except ApiStatusError as e:
            if e.status in (404, 409):
                raise
            if e.status == 429 or e.status >= 500:
                raise TransientApiError(str(e), delay=2.0) from e
            raise PermanentApiError(str(e), status=e.status) from e

    # --- idempotent operations -----------------------------------------------------------------------
    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object; False (not an error) when it already exists (409)."""
        res = RESOURCES[manifest["kind"]]
        meta = manifest["metadata"]
        path = res.path(meta.get("namespace"))
        try:
            await self._run("create", "POST", res.plural, path, body=dict(manifest))
        except ApiStatusError as e:
            if e.status == 409:
                return False
            raise PermanentApiError(str(e), status=e.status) from e
        return True

    async def delete(
        self, kind: str, namespace: str | None, name: str, grace_period_seconds: int | None = None
    ) -> bool:
        """Delete an object (background propagation); False when it was already gone (404)."""
        res = RESOURCES[kind]
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        try:
            await self._run("delete", "DELETE", res.plural, res.path(namespace, name), body=body)
        except ApiStatusError as e:
            if e.status == 404:
                return False
            raise PermanentApiError(str(e), status=e.status) from e
        return True

    async def patch_job_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the job's status subresource; None when the job is gone."""
        res = RESOURCES[contract.KIND]
        path = res.path(namespace, name, "status")
        try:
            result = await self._run(
                "patch", "PATCH", f"{res.plural}/status", path, body={"status": dict(status)}, content_type=MERGE_PATCH
            )
        except ApiStatusError as e:
            if e.status == 404:
                return None
            raise PermanentApiError(str(e), status=e.status) from e
        return result if isinstance(result, dict) else None

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Read one object; None when it does not exist."""
        res = RESOURCES[kind]
        try:
            result = await self._run("get", "GET", res.plural, res.path(namespace, name))
        except ApiStatusError as e:
            if e.status == 404:
                return None
            raise PermanentApiError(str(e), status=e.status) from e
        return result if isinstance(result, dict) else None
