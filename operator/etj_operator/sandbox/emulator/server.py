"""The threaded server: the emulator on its own thread and loop, with thread-safe accessors for tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import pathlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp.web
import yaml

from .admission import ValidationMode
from .admission import configure as configure_validation
from .authn import ADMIN_TOKEN, UserInfo
from .core import (
    DEFAULT_BOOKMARK_INTERVAL_SECONDS,
    DEFAULT_EVENT_LOG_SIZE,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_REQUEST_LOG_SIZE,
    KubeApiEmulator,
)
from .errors import ApiError, UnknownResourceError
from .objects import _meta, _now
from .rbac import AccessControl, bootstrap_policy
from .requestlog import FaultInjector, RequestRecord

Json = dict[str, Any]

T = TypeVar("T")
logger = logging.getLogger(__name__)

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
        request_log_size: int = DEFAULT_REQUEST_LOG_SIZE, rbac: bool = False, anonymous: bool | UserInfo = True,
        owner_references_permission_enforcement: bool = False, validation: ValidationMode = "full",
    ) -> None:
        """Set up the emulator; ``start()`` serves it.

        ``crds``: CRDs to serve, each an object, a YAML file or a folder of YAML files (every CRD in it);
        ``rbac=True``: authenticate bearer tokens and authorize every request with RBAC (see ``rbac.py``);
        ``anonymous``: a request without a token is ``system:anonymous`` (False: 401; a UserInfo: that user, as
        the sandbox makes kubectl the administrator, since kubectl sends no token over plain HTTP);
        ``owner_references_permission_enforcement``: the admission plugin of that name (OpenShift has it on);
        ``validation``: custom resources checked against their CRD's schema and CEL rules (``"full"``, as a real
        server), the schema only (``"schema"``, a server without CEL) or not at all (``"none"``).
        """
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.emulator = KubeApiEmulator(bookmark_interval_seconds=bookmark_interval_seconds,
                                        strict_namespaces=strict_namespaces, history_limit=history_limit,
                                        event_log_size=event_log_size, request_log_size=request_log_size)
        configure_validation(self.emulator, validation)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.access = AccessControl(self.emulator, enabled=rbac, anonymous=anonymous is not False,
                                    anonymous_user=anonymous if isinstance(anonymous, UserInfo) else None,
                                    owner_references_permission_enforcement=owner_references_permission_enforcement)
        self.emulator._http.access = self.access
        self.emulator.admission.append(self.access.admit)
        if rbac:
            for plural, obj in bootstrap_policy():
                self.create(plural, obj)
        for crd in crds:
            if isinstance(crd, Mapping):
                self.load_crd(crd)
            elif pathlib.Path(crd).is_dir():
                self.load_crds(crd)
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

    def kubeconfig(self, *, namespace: str = "default", context: str = "etj-emulator",
                   token: str | None = ADMIN_TOKEN) -> Json:
        """A kubeconfig dict with a token user that the ``kubernetes`` client, kopf and kubectl accept.

        ``token`` defaults to the administrator's (``system:masters``); pass a ServiceAccount's token
        (:meth:`service_account_token`) to act as it, or None for an anonymous user.
        """
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": token} if token else {}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }

    def write_kubeconfig(self, path: str | pathlib.Path, *, namespace: str = "default",
                         token: str | None = ADMIN_TOKEN) -> pathlib.Path:
        """Write the kubeconfig (see :meth:`kubeconfig`) to ``path`` and return it."""
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace=namespace, token=token), sort_keys=False))
        return target

    def service_account_token(self, namespace: str, name: str) -> str:
        """A new token of an existing ServiceAccount (as the TokenRequest API issues); ApiError 404 if absent."""
        def issue(emulator: KubeApiEmulator) -> str:
            account = emulator.read_object(emulator.resource_type("v1/serviceaccounts"), namespace, name)
            return self.access.authenticator.issue_service_account_token(namespace, name,
                                                                         _meta(account).get("uid", ""))
        return self.call(issue)

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
        return self.call(lambda e: _none_if_absent(
            lambda: copy.deepcopy(e.read_object(e.resource_type(resource), namespace, name))))

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
        return self.call(lambda e: _none_if_absent(lambda: copy.deepcopy(
            e.delete_object(e.resource_type(resource), namespace, name, propagation=propagation))))

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

    def bind_pod(self, namespace: str, name: str, node: str) -> Json:
        """Assign a pod to a node, as a scheduler's ``POST pods/NAME/binding`` does (sets ``spec.nodeName``).

        409 when the pod is already bound or is being deleted, as on a real server. A pod bound to a node is
        deleted gracefully: it stays Terminating until its kubelet removes it (:meth:`finish_termination`).
        """
        def bind(emulator: KubeApiEmulator) -> Json:
            pods = emulator.resource_type("pods")
            pod = copy.deepcopy(emulator.read_object(pods, namespace, name))
            bound = (pod.get("spec") or {}).get("nodeName")
            why = (f"pod {name} is being deleted, cannot be assigned to a host" if _meta(pod).get("deletionTimestamp")
                   else f'pod {name} is already assigned to node "{bound}"' if bound else "")
            if why:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{name}": {why}',
                               details={"name": name, "kind": "pods/binding"})
            pod.setdefault("spec", {})["nodeName"] = node
            status = pod.setdefault("status", {})
            others = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            status["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}, *others]
            return copy.deepcopy(emulator._commit(pods, pod))
        return self.call(bind)

    def delete_pod(self, namespace: str, name: str, *, grace_period_seconds: int | None = None,
                   uid: str | None = None) -> Json | None:
        """``DELETE`` a pod with DeleteOptions (grace period, UID precondition); None if it was absent.

        Returns the pod as it is afterwards: still there with a ``deletionTimestamp`` while it terminates.
        """
        return self.call(lambda e: _none_if_absent(lambda: copy.deepcopy(e.delete_object(
            e.resource_type("pods"), namespace, name, grace_period_seconds=grace_period_seconds,
            preconditions={"uid": uid} if uid else None))))

    def finish_termination(self, namespace: str, name: str, *, exit_code: int = 143) -> Json | None:
        """Play the kubelet once a terminating pod's containers have stopped: report, then remove it.

        Writes the terminal phase (``exit_code`` 143 is a SIGTERM'd trainer: Failed; 0: Succeeded), then deletes
        the pod with a grace period of 0 and its UID as precondition (the kubelet's status manager does both).
        Returns the pod's last state, or None if it was absent; raises ApiError 409 for a pod not terminating.
        """
        pod = self.get("pods", namespace, name)
        if pod is None:
            return None
        if not _meta(pod).get("deletionTimestamp"):
            raise ApiError(409, "Conflict", f'pod "{name}" is not terminating: nothing to finish')
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            pod = self.set_pod_phase(namespace, name, "Succeeded" if exit_code == 0 else "Failed",
                                     exit_code=exit_code)
        self.delete_pod(namespace, name, grace_period_seconds=0, uid=_meta(pod).get("uid"))
        return pod

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

    def pause_garbage_collection(self) -> None:
        """Hold the garbage collector, as a kube-controller-manager that is behind or down.

        Dependents of a deleted owner stay, with their ownerReferences, until :meth:`resume_garbage_collection`.
        """
        self.call(lambda e: e.pause_garbage_collection())

    def resume_garbage_collection(self) -> None:
        """Let the held garbage collection run (right after this call, on the emulator's loop)."""
        self.call(lambda e: e.resume_garbage_collection())

    def break_watches(self) -> int:
        """End all open watch streams (clients reconnect with their last resourceVersion)."""
        return self.call(lambda e: e.break_watches())

    def compact(self) -> None:
        """Forget the event log: watch resumes from older resourceVersions get 410 Gone."""
        self.call(lambda e: e.compact())


def _none_if_absent(fn: Callable[[], T]) -> T | None:
    """``fn()``, or None when it answers 404 for the object (an unknown resource type still raises)."""
    try:
        return fn()
    except UnknownResourceError:
        raise
    except ApiError as e:
        if e.code == 404:
            return None
        raise
