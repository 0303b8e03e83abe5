"""A Kubernetes API client on the standard library (``http.client``, ``ssl``, ``json``) for the control channel.

The harness makes two requests, GET its job and merge-PATCH its report's status
(:class:`etj_workload.control.KubernetesJobApi`), so the workload image carries no Kubernetes client library
(the ``kubernetes`` package would bring aiohttp with it).

* Credentials (:func:`load_credentials`), in this order: in-cluster (:func:`in_cluster_credentials`: the
  ServiceAccount token and CA the kubelet mounts under ``/var/run/secrets/kubernetes.io/serviceaccount``, the
  server from ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``), else the kubeconfig named by
  ``KUBECONFIG`` (a list is merged as kubectl does), else ``~/.kube/config`` (:func:`kubeconfig_credentials`).
  A kubeconfig is read for its current context's cluster (``server``, ``certificate-authority``,
  ``certificate-authority-data``, ``insecure-skip-tls-verify``) and user (``token``, ``tokenFile``, or none:
  anonymous); a user that needs anything else (an exec plugin, an auth provider, client certificates, basic
  auth, impersonation) is refused with a :class:`ConfigError` naming the field.
* A token read from a file (the in-cluster token, a kubeconfig's ``tokenFile``) is read again every
  :data:`TOKEN_REREAD_SECONDS` and once right after a 401, so a rotated token is picked up; the request is
  then sent once more.
* Every request has a timeout (connect and each read). One HTTP/1.1 connection is kept open and reused; a
  reused connection the server has closed meanwhile is opened again once.
* An answer other than 2xx raises :class:`ApiError`, which keeps the server's ``Status`` (code, reason,
  message) and its Retry-After (the header in seconds or as an HTTP date, else ``details.retryAfterSeconds``).
  No answer at all raises the transport's own ``OSError`` (``TimeoutError``, ``ConnectionRefusedError``,
  ``ssl.SSLError``...).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from etj_contract.backoff import retry_after_seconds

__all__ = [
    "MERGE_PATCH",
    "SERVICE_ACCOUNT_DIR",
    "TOKEN_REREAD_SECONDS",
    "ApiError",
    "ConfigError",
    "Credentials",
    "KubeClient",
    "in_cluster_credentials",
    "kubeconfig_credentials",
    "load_credentials",
    "retry_after_seconds",
]

log = logging.getLogger(__name__)

MERGE_PATCH: Final = "application/merge-patch+json"
#: Where the kubelet mounts the pod's ServiceAccount token, CA bundle and namespace.
SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How long a token read from a file is used before the file is read again (a 401 reads it at once).
TOKEN_REREAD_SECONDS: Final = 60.0
USER_AGENT: Final = "etj-workload"

#: The kubeconfig user fields this client cannot honour: refused rather than silently ignored.
_UNSUPPORTED_USER_FIELDS: Final = (
    "exec",
    "auth-provider",
    "client-certificate",
    "client-certificate-data",
    "client-key",
    "client-key-data",
    "username",
    "password",
    "as",
    "as-uid",
    "as-groups",
    "as-user-extra",
)
_UNSUPPORTED_CLUSTER_FIELDS: Final = ("proxy-url", "tls-server-name")


class ConfigError(Exception):
    """No usable credentials: neither in-cluster nor a kubeconfig, or a kubeconfig this client cannot honour."""


class ApiError(Exception):
    """The API server answered with an error: its ``Status`` and Retry-After, and the request it answered."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        super().__init__(code, reason, message)
        self.code = code
        self.reason = reason
        self.message = message
        #: The server's Retry-After (header, or ``details.retryAfterSeconds``), None without one. Units: seconds.
        self.retry_after_seconds = retry_after_seconds
        self.method = method
        self.path = path

    def __str__(self) -> str:
        request = f"{self.method} {self.path}: " if self.method else ""
        return f"{request}{self.code} {self.reason}: {self.message}"

    @classmethod
    def from_response(
        cls,
        code: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        method: str = "",
        path: str = "",
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> ApiError:
        """The error of one answer: the ``Status`` body when there is one, else the HTTP reason and the body."""
        status: Any = None
        try:
            status = json.loads(body) if body else None
        except ValueError:
            status = None
        if not isinstance(status, dict) or status.get("kind") != "Status":
            status = {}
        reason = status.get("reason") if isinstance(status.get("reason"), str) else None
        message = status.get("message") if isinstance(status.get("message"), str) else None
        details = status.get("details") if isinstance(status.get("details"), dict) else {}
        seconds = retry_after_seconds(_header(headers, "Retry-After"), now=now)
        if seconds is None and isinstance(details.get("retryAfterSeconds"), int | float):
            seconds = float(details["retryAfterSeconds"])
        return cls(
            code,
            reason or http.client.responses.get(code, "Unknown"),
            message or body[:200].decode("utf-8", "replace").strip() or "(no message)",
            retry_after_seconds=seconds,
            method=method,
            path=path,
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict from a test: compare names case-insensitively, as HTTP does
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


# ----- credentials ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are (immutable; the token file is read by the client)."""

    #: The server's base URL, ``https://host:port`` (or ``http://`` for a local test server), maybe with a path.
    server: str
    #: A bearer token given inline, or None.
    token: str | None = None
    #: A file holding the bearer token, read again periodically (takes precedence over ``token``).
    token_file: Path | None = None
    #: A CA bundle file, or PEM text, to verify the server with (neither: the system's trust store).
    ca_file: Path | None = None
    ca_data: str | None = None
    insecure_skip_tls_verify: bool = False
    #: Where these came from, for messages (``in-cluster``, ``kubeconfig /path``).
    source: str = ""


def _host_port(host: str, port: str) -> str:
    """``host:port`` for a URL; an IPv6 address gets its brackets (``[fd00::1]:443``)."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port.strip()}"


def in_cluster_credentials(
    environ: Mapping[str, str] | None = None, directory: Path = SERVICE_ACCOUNT_DIR
) -> Credentials | None:
    """The pod's own credentials, or None outside a pod (no service env, or no mounted token)."""
    environ = os.environ if environ is None else environ
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = directory / "token"
    if not host or not port or not token.is_file():
        return None
    ca = directory / "ca.crt"
    return Credentials(
        server=f"https://{_host_port(host, port)}",
        token_file=token,
        ca_file=ca if ca.is_file() else None,
        source="in-cluster",
    )


def _load_kubeconfig_file(path: Path) -> dict[str, Any]:
    import yaml  # only a kubeconfig needs it (a pod's in-cluster credentials do not)

    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"kubeconfig {path} is not YAML: {e}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"kubeconfig {path} is not a mapping")
    return loaded


@dataclass
class _Kubeconfig:
    """Kubeconfig files merged: the current context, and each named entry with the folder of its file."""

    current_context: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = field(
        default_factory=lambda: {"clusters": {}, "users": {}, "contexts": {}}
    )

    def named(self, section: str, name: str, where: str) -> tuple[dict[str, Any], Path]:
        """The body of a named entry (``clusters`` -> its ``cluster``) and the folder of the file defining it."""
        if name not in self.entries[section]:
            raise ConfigError(f"{where}: no {section[:-1]} named {name!r}")
        return self.entries[section][name]


def _merge_kubeconfigs(paths: Sequence[Path]) -> _Kubeconfig:
    """Merge kubeconfig files as kubectl does: the first file to set a value (or define a name) wins."""
    merged = _Kubeconfig()
    for path in paths:
        config = _load_kubeconfig_file(path)
        if merged.current_context is None and isinstance(config.get("current-context"), str):
            merged.current_context = config["current-context"] or None
        for section, known in merged.entries.items():
            entries = config.get(section) or []
            for entry in entries if isinstance(entries, list) else []:
                name = entry.get("name") if isinstance(entry, dict) else None
                if not isinstance(name, str) or name in known:
                    continue
                body = entry.get(section[:-1]) or {}  # clusters[].cluster, users[].user, contexts[].context
                if not isinstance(body, dict):
                    raise ConfigError(f"kubeconfig {path}: {section} entry {name!r} is not a mapping")
                known[name] = (body, path.parent)
    return merged


def _relative(value: Any, folder: Path, field_name: str, where: str) -> Path:
    """A path of a kubeconfig, relative to the folder of the file that holds it (as kubectl resolves it)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {field_name} must be a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def kubeconfig_credentials(paths: Path | str | Sequence[Path | str]) -> Credentials:
    """The current context's credentials from one kubeconfig file or a list of them (merged like kubectl)."""
    files = [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
    where = "kubeconfig " + os.pathsep.join(map(str, files))
    config = _merge_kubeconfigs([f for f in files if f.is_file()])
    context_name = config.current_context
    if not context_name:
        raise ConfigError(f"{where}: no current-context")
    context, _ = config.named("contexts", context_name, where)
    cluster, cluster_folder = config.named("clusters", str(context.get("cluster") or ""), where)
    user: dict[str, Any] = {}
    user_folder = cluster_folder
    if context.get("user"):
        user, user_folder = config.named("users", str(context["user"]), where)
    for section, entry, unsupported in (
        ("cluster", cluster, _UNSUPPORTED_CLUSTER_FIELDS),
        ("user", user, _UNSUPPORTED_USER_FIELDS),
    ):
        used = [f for f in unsupported if entry.get(f)]
        if used:
            hint = " (give the user a bearer token: token or tokenFile)" if section == "user" else ""
            raise ConfigError(
                f"{where}: the {section} of context {context_name!r} needs {', '.join(used)}, which the harness's "
                f"client does not support{hint}"
            )
    server = cluster.get("server")
    if not isinstance(server, str) or urllib.parse.urlsplit(server).scheme not in ("http", "https"):
        raise ConfigError(f"{where}: the cluster of context {context_name!r} has no http(s) server")
    ca_data = None
    if cluster.get("certificate-authority-data"):
        try:
            ca_data = base64.b64decode(str(cluster["certificate-authority-data"]), validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"{where}: certificate-authority-data is not base64 PEM") from None
    ca_file = None
    if cluster.get("certificate-authority") and ca_data is None:  # client-go: the data wins over the file
        ca_file = _relative(cluster["certificate-authority"], cluster_folder, "certificate-authority", where)
    token = user.get("token")
    if token is not None and not isinstance(token, str):
        raise ConfigError(f"{where}: the user's token must be a string")
    token_file = None
    if user.get("tokenFile") and not token:  # client-go: an inline token wins over the file
        token_file = _relative(user["tokenFile"], user_folder, "tokenFile", where)
    return Credentials(
        server=server.rstrip("/"),
        token=token or None,
        token_file=token_file,
        ca_file=ca_file,
        ca_data=ca_data,
        insecure_skip_tls_verify=cluster.get("insecure-skip-tls-verify") is True,
        source=where,
    )


def load_credentials(
    environ: Mapping[str, str] | None = None, service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> Credentials:
    """In-cluster credentials, else ``KUBECONFIG``'s (else ``~/.kube/config``); :class:`ConfigError` if none."""
    environ = os.environ if environ is None else environ
    pod = in_cluster_credentials(environ, service_account_dir)
    if pod is not None:
        return pod
    if environ.get("KUBECONFIG"):
        files = [Path(p) for p in environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        files = [Path(environ.get("HOME") or Path.home()) / ".kube" / "config"]
    if not any(f.is_file() for f in files):
        raise ConfigError(
            "no Kubernetes credentials: not in a pod (KUBERNETES_SERVICE_HOST and a ServiceAccount token) and no "
            f"kubeconfig at {os.pathsep.join(map(str, files))}"
        )
    return kubeconfig_credentials(files)


# ----- the client -------------------------------------------------------------------------------------------


class KubeClient:
    """JSON requests to one API server with one set of credentials (thread-safe: one request at a time)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        token_reread_seconds: float = TOKEN_REREAD_SECONDS,
    ) -> None:
        url = urllib.parse.urlsplit(credentials.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"{credentials.source or 'credentials'}: bad server URL {credentials.server!r}")
        self.credentials = credentials
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._token_reread_seconds = token_reread_seconds
        self._host = url.hostname  # without the brackets of an IPv6 address
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._prefix = url.path.rstrip("/")
        self._context = self._ssl_context() if url.scheme == "https" else None
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._token: str | None = credentials.token
        self._token_read_at: float | None = None
        if credentials.token_file is not None:
            self._read_token()  # a missing token file is an error now, not at the first request

    def _ssl_context(self) -> ssl.SSLContext:
        creds = self.credentials
        if creds.insecure_skip_tls_verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if creds.ca_file is not None or creds.ca_data is not None:
            return ssl.create_default_context(
                cafile=str(creds.ca_file) if creds.ca_file is not None else None, cadata=creds.ca_data
            )
        return ssl.create_default_context()

    # ----- token

    def _read_token(self) -> str | None:
        path = self.credentials.token_file
        assert path is not None
        try:
            token = path.read_text().strip()
        except OSError as e:
            if self._token is None:
                raise ConfigError(f"{self.credentials.source}: cannot read the token file {path}: {e}") from None
            log.warning("cannot read the token file %s (%s); keeping the token read before", path, e)
            return self._token
        self._token, self._token_read_at = token or None, self._clock()
        return self._token

    def _current_token(self) -> str | None:
        if self.credentials.token_file is None:
            return self._token
        if self._token_read_at is None or self._clock() - self._token_read_at >= self._token_reread_seconds:
            return self._read_token()
        return self._token

    # ----- requests

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request (``body`` as JSON) and return the decoded JSON answer; :class:`ApiError` on an error.

        A 401 with a token from a file reads the file again and, when the token changed, sends once more.
        """
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        with self._lock:
            token = self._current_token()
            code, headers, answer = self._send(method, path, data, content_type, token)
            if code == 401 and self.credentials.token_file is not None:
                fresh = self._read_token()
                if fresh != token:
                    log.info("the API server refused the token (401); retrying with the token read again")
                    code, headers, answer = self._send(method, path, data, content_type, fresh)
        if not 200 <= code < 300:
            raise ApiError.from_response(code, headers, answer, method=method, path=path)
        if not answer:
            return None
        try:
            return json.loads(answer)
        except ValueError:
            raise ApiError(
                code, "BadResponse", f"the answer is not JSON: {answer[:200]!r}", method=method, path=path
            ) from None

    def _send(
        self, method: str, path: str, data: bytes | None, content_type: str, token: str | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if data is not None:
            headers["Content-Type"] = content_type
        target = self._prefix + path
        for attempt in (0, 1):
            reused = self._connection is not None
            connection = self._connection or self._connect()
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            except (ConnectionError, http.client.BadStatusLine) as e:
                self.close_connection()
                if reused and attempt == 0:  # the server closed an idle connection: open a new one, once
                    log.debug("reused connection failed (%s); reconnecting", e)
                    continue
                raise
            except BaseException:
                self.close_connection()
                raise
            if response.will_close:
                self.close_connection()
            return response.status, dict(response.headers.items()), answer
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self._context is not None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout_seconds, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_seconds)
        self._connection = connection
        return connection

    def close_connection(self) -> None:
        """Close the kept connection (the next request opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
