"""Telemetry from Prometheus scraping NVIDIA dcgm-exporter: one instant query per metric per cycle.

Each cycle asks Prometheus for every GPU series of each metric at once, aggregated by the labels that
identify a GPU of a pod on one scrape target, under every label scheme at once::

    max by (exported_namespace, exported_pod, pod_namespace, pod_name, namespace, pod, UUID, gpu,
            Hostname, hostname, source, job, instance)
        (DCGM_FI_DEV_POWER_USAGE{exported_pod!=""} or DCGM_FI_DEV_POWER_USAGE{pod_name!=""}
         or DCGM_FI_DEV_POWER_USAGE{pod!=""})

and maps the answer onto the operator's pods through an index ``{(namespace, pod): [targets]}``. Series of
pods the operator does not manage (other workloads, idle GPUs, the exporter's own pod) are dropped. The
number of queries per cycle is the number of metrics (2 or 3), whatever the number of jobs.

**Label schemes** (``LABEL_SCHEMES``), resolved per series in the order of ``AUTO_SCHEMES``:
``exported_pod``/``exported_namespace`` (a target scraped with ``honor_labels: false``, as the dcgm-exporter
and GPU Operator charts' ServiceMonitors do: the series' own ``pod``/``namespace`` then name the exporter's
pod), ``pod_name``/``pod_namespace`` (dcgm-exporter before 2.0; under ``honor_labels: false`` such a series
also carries the exporter's ``pod``), and ``pod``/``namespace`` (dcgm-exporter >= 2 scraped with
``honor_labels: true``). A configured ``pod_label``/``namespace_label`` reads that one scheme only.

**Attribution.** dcgm-exporter labels a series with the pod's name, never its UID, so a series counts for a
target only when it comes from the target's node (``Hostname``) and was scraped no earlier than the pod's
start (:func:`~etj_operator.telemetry.base.attribution_problem`). Then, per pod: where the node agent runs on
the pod's node, only GPUs the agent lists as the pod's (its ``etj_node_agent_desired_power_limit_watts``
series, from the kubelet's PodResources) count (``not_held``); one GPU read from several scrape targets
counts once (``duplicate``: the series from the pod's node's exporter first, then the newest scrape); and no
more GPUs than the pod requested count (``too_many_gpus``: node exporter first, then by GPU UUID). Rejected
series are counted by kind in ``TelemetryResult.rejected_by_kind``.

**The node agent's word** (``TelemetryResult.agent``, per target). The power query also carries, in the same
``or`` union, the agent's ``etj_node_agent_gpu_error == 1`` (by GPU, node, operation and error kind) and
``etj_node_agent_unknown_device == 1`` (by pod and device). For each target it says whether any agent series
comes from the pod's node (none: ``nodes_without_agent``), which of the GPUs the agent lists as the pod's have
a failed operation, and which devices allocated to the pod the agent does not find. No query is added. When no
agent series comes from any node, nothing is said (this Prometheus may not scrape the agents at all).

**HTTP.** The blocking client (requests) runs in worker threads (:func:`asyncio.to_thread`), one session per
concurrent query, never on the event loop; :class:`ClientSettings` holds the credentials (a bearer token
file re-read whenever it changes, basic auth, a CA bundle, a client certificate, extra headers). Failures
(Prometheus down, timeouts, HTTP errors, malformed answers) come back as ``TelemetryResult(error=...)`` in
the operator's own words with the HTTP status code, never the response body; :meth:`collect` never raises.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.util.retry import Retry

from etj_contract import agent as agent_names
from etj_operator import contract
from etj_operator.telemetry.base import (
    REJECT_DUPLICATE,
    REJECT_NOT_HELD,
    REJECT_TOO_MANY_GPUS,
    AgentFindings,
    AgentGpuError,
    AgentUnknownDevice,
    GpuSample,
    PodTarget,
    TelemetryCause,
    TelemetryResult,
    attribution_kind,
    attribution_problem,
    same_node,
)

if TYPE_CHECKING:
    from etj_operator.config import OperatorConfig

__all__ = [
    "AGENT_ERROR_METRIC",
    "AGENT_UNKNOWN_DEVICE_METRIC",
    "AUTO_SCHEMES",
    "DEFAULT_AGENT_METRIC",
    "DEFAULT_ENERGY_METRIC",
    "DEFAULT_LIMIT_METRIC",
    "DEFAULT_POWER_METRIC",
    "LABEL_SCHEMES",
    "SIMULATED_SOURCE",
    "ClientSettings",
    "PrometheusHTTPError",
    "PrometheusTelemetry",
    "describe_failure",
]

log = logging.getLogger(__name__)

#: dcgm-exporter's power draw gauge (W).
DEFAULT_POWER_METRIC: Final = contract.METRIC_POWER_USAGE
#: dcgm-exporter's cumulative energy counter (mJ since the driver loaded; resets on reload).
DEFAULT_ENERGY_METRIC: Final = contract.METRIC_TOTAL_ENERGY_CONSUMPTION
#: The power management limit in force (W): DCGM field 157. Not in dcgm-exporter's default counter list
#: (add it to the exporter's counters CSV); the project's harness always exports it.
DEFAULT_LIMIT_METRIC: Final = contract.METRIC_POWER_MGMT_LIMIT
#: The node agent's own per-GPU series, labelled with the pods the kubelet gave the GPU to: the pod->GPU map.
DEFAULT_AGENT_METRIC: Final = agent_names.METRIC_AGENT_DESIRED_LIMIT
#: The node agent's per-GPU error gauge and its unknown-device gauge, read with its pod->GPU map when that is read.
AGENT_ERROR_METRIC: Final = agent_names.METRIC_AGENT_GPU_ERROR
AGENT_UNKNOWN_DEVICE_METRIC: Final = agent_names.METRIC_AGENT_UNKNOWN_DEVICE
#: Value of the ``source`` label on series produced by the simulated GPU (the harness's and test exporters').
SIMULATED_SOURCE: Final = "simulated"

#: Known label schemes: name -> (pod label, namespace label).
LABEL_SCHEMES: Final[Mapping[str, tuple[str, str]]] = {
    "pod": ("pod", "namespace"),
    "exported_pod": ("exported_pod", "exported_namespace"),
    "pod_name": ("pod_name", "pod_namespace"),
}
#: The schemes read when none is configured, in the order they win when one series carries several.
AUTO_SCHEMES: Final = ("exported_pod", "pod_name", "pod")

#: The agent's series are read under every scheme, whatever the GPU series' (it has its own scrape config).
_AGENT_SCHEMES: Final = tuple(LABEL_SCHEMES[name] for name in AUTO_SCHEMES)

#: Label that marks the extra parts of an answer: "time" (each series' scrape time), "labels" (one series
#: without any pod label, to name the labels Prometheus has), "agent" (the node agent's pod->GPU map),
#: "agent_error" (the GPUs whose last agent operation failed), "agent_unknown" (devices the agent does not find).
SAMPLE_TIME_LABEL: Final = "etj_sample"

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METRIC_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")

#: The fields whose query also returns each series' scrape time (the others are stamped with evaluation time).
_STAMPED_FIELDS: Final = frozenset({"energy_mj", "power_watts"})


def _check_name(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{what} {value!r} is not a valid Prometheus name")
    return value


# --- talking to Prometheus ---------------------------------------------------------------------------------
class PrometheusHTTPError(Exception):
    """Prometheus (or a proxy in front of it) answered with an HTTP error. Carries the status code only."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class CredentialError(Exception):
    """A credential file could not be read (the message is the operator's own)."""


class MalformedAnswer(Exception):
    """The answer was not a successful Prometheus API response (the message is the operator's own)."""


_STATUS_WORDS: Final[Mapping[int, str]] = {
    400: "Prometheus refused the query as invalid",
    401: "Prometheus did not accept the operator's credentials (bearer token or basic auth)",
    403: "Prometheus refused the operator access (a token without the rights, or a wrong or missing tenant header)",
    404: "no Prometheus query API at this URL (a wrong path prefix?)",
    422: "Prometheus could not evaluate the query",
    429: "Prometheus is rate-limiting the operator",
    503: "Prometheus is unavailable",
}


def describe_failure(error: BaseException) -> tuple[str, int | None]:
    """The operator's own words for a failed query, and the HTTP status code when there was one.

    Never the exception's text: a client library's message carries the response body (which may hold
    anything, a secret included) or the server's own error text.
    """
    if isinstance(error, PrometheusHTTPError):
        code = error.status_code
        words = _STATUS_WORDS.get(code) or ("Prometheus failed to answer" if code >= 500 else "unexpected answer")
        return f"HTTP {code}: {words}", code
    if isinstance(error, CredentialError | MalformedAnswer):
        return str(error), None
    if isinstance(error, requests.exceptions.SSLError):
        return (
            "SSLError: the TLS handshake failed (the server's certificate is not trusted by the CA bundle, "
            "or the server refused the client certificate)",
            None,
        )
    if isinstance(error, requests.exceptions.Timeout):
        return "Timeout: no answer within the query timeout", None
    if isinstance(error, requests.exceptions.ConnectionError):
        return "ConnectionError: could not connect (refused, unreachable, or the connection was reset)", None
    return f"{type(error).__name__}: the query failed", None


def _display_url(url: str) -> str:
    """``url`` without user info or query string, as it may appear in a condition."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _FileSecret:
    """A credential in a file, read again whenever the file changes (a rotated projected token, a new Secret)."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""

    def value(self) -> str:
        try:
            st = os.stat(self.path)  # follows the ..data symlink a projected volume swaps on rotation
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            with self._lock:
                if stamp != self._stamp:
                    self._value = Path(self.path).read_text(encoding="utf-8").strip()
                    self._stamp = stamp
                value = self._value
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "not readable text"
            raise CredentialError(f"the {self.what} {self.path} cannot be read: {reason}") from None
        if not value:
            raise CredentialError(f"the {self.what} {self.path} is empty")
        return value


class _FileAuth(AuthBase):
    """Sets Authorization on every request from the credential files (bearer token, or basic auth)."""

    def __init__(self, token: _FileSecret | None, username: str, password: _FileSecret | None) -> None:
        self.token = token
        self.username = username
        self.password = password

    def __call__(self, request: Any) -> Any:
        if self.token is not None:
            request.headers["Authorization"] = f"Bearer {self.token.value()}"
        elif self.password is not None:
            request = HTTPBasicAuth(self.username, self.password.value())(request)
        return request


@dataclass(frozen=True)
class ClientSettings:
    """How the operator reaches Prometheus: credentials, TLS and extra headers (ETJ_PROMETHEUS_*)."""

    #: A file holding a bearer token, read again whenever it changes.
    bearer_token_file: str = ""
    #: Basic auth: the user and a file holding the password.
    username: str = ""
    password_file: str = ""
    #: A CA bundle (PEM) that verifies the server's certificate; empty: the system's CAs.
    ca_file: str = ""
    #: A client certificate (PEM) and its key, for servers that ask for one (mutual TLS).
    cert_file: str = ""
    key_file: str = ""
    #: Headers added to every request, e.g. ``(("X-Scope-OrgID", "team-a"),)`` for Mimir or Cortex.
    headers: tuple[tuple[str, str], ...] = ()
    #: False: do not verify the server's certificate (never in production).
    tls_verify: bool = True

    def __post_init__(self) -> None:
        if self.bearer_token_file and (self.username or self.password_file):
            raise ValueError("a bearer token or basic auth, not both")
        if bool(self.username) != bool(self.password_file):
            raise ValueError("basic auth needs both a username and a password file")
        if self.key_file and not self.cert_file:
            raise ValueError("a client key needs its certificate")

    @classmethod
    def from_config(cls, config: OperatorConfig) -> ClientSettings:
        """The operator's ETJ_PROMETHEUS_* client settings."""
        return cls(
            bearer_token_file=config.prometheus_bearer_token_file,
            username=config.prometheus_username,
            password_file=config.prometheus_password_file,
            ca_file=config.prometheus_ca_file,
            cert_file=config.prometheus_cert_file,
            key_file=config.prometheus_key_file,
            headers=config.prometheus_headers,
            tls_verify=config.prometheus_tls_verify,
        )

    @property
    def verify(self) -> bool | str:
        """What requests verifies the server with: the CA bundle, the system's CAs (True), or nothing."""
        return (self.ca_file or True) if self.tls_verify else False

    @property
    def cert(self) -> tuple[str, str] | str | None:
        """The client certificate for requests: (certificate, key), one file holding both, or None."""
        if not self.cert_file:
            return None
        return (self.cert_file, self.key_file) if self.key_file else self.cert_file

    def session(self, auth: AuthBase) -> requests.Session:
        """A new HTTP session with these settings (no client-side retries: the next cycle is the retry).

        ``verify`` and ``cert`` go with each request: a session's own would lose to REQUESTS_CA_BUNDLE.
        """
        session = requests.Session()
        session.headers.update(dict(self.headers))
        session.auth = auth
        adapter = HTTPAdapter(max_retries=Retry(total=0, raise_on_status=False))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


# --- the answers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Query:
    """One metric and the PromQL that reads it for all pods."""

    field: str  # "power_watts" | "energy_mj" | "power_limit_watts"
    metric: str
    promql: str


@dataclass(frozen=True, order=True)
class _Origin:
    """One GPU series of one pod name as one scrape target serves it."""

    namespace: str
    pod: str
    node: str
    gpu: str  # the UUID, else the index
    uuid: str
    index: str
    job: str
    instance: str


@dataclass
class _GpuReadings:
    timestamp_seconds: float
    simulated: bool
    power_watts: float | None = None
    energy_mj: float | None = None
    power_limit_watts: float | None = None
    #: When each field's series was scraped (not when the query was evaluated): "energy_mj", "power_watts".
    scraped_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def sample_seconds(self) -> float:
        """The reading's time: the counter's scrape, else the power gauge's, else the evaluation time."""
        scraped = self.scraped_seconds
        return scraped.get("energy_mj") or scraped.get("power_watts") or self.timestamp_seconds


@dataclass
class _Answer:
    """One cycle's answers, merged."""

    readings: dict[_Origin, _GpuReadings] = field(default_factory=dict)
    #: Whether any GPU series carried a pod label of a scheme read (any pod, managed or not).
    labelled: bool = False
    #: Label names of a GPU series that carries none.
    unlabelled: set[str] = field(default_factory=set)
    #: Nodes (casefolded) where the node agent publishes, and per pod name and node the GPUs it lists for it.
    agent_nodes: set[str] = field(default_factory=set)
    agent_gpus: dict[tuple[str, str], dict[str, set[str]]] = field(default_factory=dict)
    #: Nodes (casefolded) with any series of the agent (its map, its errors, its unknown devices).
    agent_seen: set[str] = field(default_factory=set)
    #: The agent's failed operations: (node casefolded, UUID, index) -> errors on that GPU.
    agent_errors: dict[tuple[str, str, str], set[AgentGpuError]] = field(default_factory=dict)
    #: The devices the agent does not find, per pod name.
    agent_unknown: dict[tuple[str, str], set[AgentUnknownDevice]] = field(default_factory=dict)


@dataclass
class _Candidate:
    target: PodTarget
    origin: _Origin
    reading: _GpuReadings

    @property
    def rank(self) -> int:
        """Which origin to trust first: the pod's node's exporter (0), no node label (1), the pod itself (2)."""
        node, target = self.origin.node, self.target
        if node and target.node and same_node(node, target.node):
            return 0
        if node and same_node(node, target.pod):
            return 2
        return 1

    @property
    def measured(self) -> bool:
        """Whether this copy has power or energy (not only a limit)."""
        return self.reading.power_watts is not None or self.reading.energy_mj is not None

    @property
    def source(self) -> str:
        return "/".join(p for p in (self.origin.job, self.origin.instance) if p) or "an unnamed target"


class PrometheusTelemetry:
    """Reads GPU power, energy and limits of many pods from Prometheus with one query per metric."""

    name = "Prometheus"

    def __init__(
        self,
        url: str,
        *,
        pod_label: str | None = None,
        namespace_label: str | None = None,
        power_metric: str = DEFAULT_POWER_METRIC,
        energy_metric: str = DEFAULT_ENERGY_METRIC,
        limit_metric: str | None = DEFAULT_LIMIT_METRIC,
        agent_metric: str | None = DEFAULT_AGENT_METRIC,
        gpu_label: str = "UUID",
        fallback_gpu_label: str = "gpu",
        node_label: str | None = "Hostname",
        fallback_node_label: str | None = "hostname",
        extra_matchers: str = "",
        timeout_seconds: float = 5.0,
        client: ClientSettings | None = None,
    ) -> None:
        """Configure the source.

        Without ``pod_label``/``namespace_label`` every scheme of ``AUTO_SCHEMES`` is read; with them, that one
        scheme (a label of ``LABEL_SCHEMES`` names its namespace label when ``namespace_label`` is not given).
        ``extra_matchers`` is added inside each GPU selector's braces (e.g. ``job="dcgm-exporter"``) to narrow
        the series Prometheus returns; ``limit_metric=None`` skips the limit query (2 queries per cycle);
        ``agent_metric=None`` ignores the node agent's series (its pod->GPU map, errors, unknown devices). A GPU
        is named by ``gpu_label`` (the UUID, stable across pod moves) or, when a series lacks it, by
        ``fallback_gpu_label`` (the index). A series'
        node is its ``node_label`` (dcgm-exporter's ``Hostname``, the node name where the exporter's
        ``NODE_NAME`` is set, as its chart does) or ``fallback_node_label`` (``hostname`` on newer builds);
        ``node_label=None`` skips the node check.
        """
        if not url:
            raise ValueError("a Prometheus URL is required")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.url = url.rstrip("/")
        self.schemes = self._schemes(pod_label, namespace_label)
        self.gpu_label = _check_name(_LABEL_NAME, gpu_label, "GPU label")
        self.fallback_gpu_label = _check_name(_LABEL_NAME, fallback_gpu_label, "GPU fallback label")
        self.node_labels: tuple[str, ...] = tuple(
            _check_name(_LABEL_NAME, label, "node label")
            for label in ((node_label, fallback_node_label) if node_label else ())
            if label
        )
        self.timeout_seconds = timeout_seconds
        self.client = client or ClientSettings()
        if not self.client.tls_verify:
            # said once here rather than by urllib3 on every request
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            log.warning("Prometheus at %s: TLS certificates are not verified", _display_url(self.url))
        self._auth = _FileAuth(
            _FileSecret(self.client.bearer_token_file, "bearer token file") if self.client.bearer_token_file else None,
            self.client.username,
            _FileSecret(self.client.password_file, "password file") if self.client.password_file else None,
        )
        metrics = [("power_watts", power_metric), ("energy_mj", energy_metric)]
        if limit_metric:
            metrics.append(("power_limit_watts", limit_metric))
        for _, metric in metrics:
            _check_name(_METRIC_NAME, metric, "metric")
        self.agent_metric = _check_name(_METRIC_NAME, agent_metric, "agent metric") if agent_metric else None
        self.queries: tuple[_Query, ...] = tuple(
            _Query(name, metric, self._promql(name, metric, extra_matchers)) for name, metric in metrics
        )
        # One HTTP session per concurrent query: requests.Session is not documented as thread-safe.
        self._sessions: dict[int, requests.Session] = {}
        self._sessions_lock = threading.Lock()

    @staticmethod
    def _schemes(pod_label: str | None, namespace_label: str | None) -> tuple[tuple[str, str], ...]:
        if not pod_label and not namespace_label:
            return tuple(LABEL_SCHEMES[name] for name in AUTO_SCHEMES)
        if not pod_label:
            raise ValueError("a namespace label needs its pod label")
        if not namespace_label:
            known = {pod: ns for pod, ns in LABEL_SCHEMES.values()}
            if pod_label not in known:
                raise ValueError(f"pod label {pod_label!r} is not a known scheme's: name its namespace label too")
            namespace_label = known[pod_label]
        return (
            (
                _check_name(_LABEL_NAME, pod_label, "pod label"),
                _check_name(_LABEL_NAME, namespace_label, "namespace label"),
            ),
        )

    def _promql(self, name: str, metric: str, extra_matchers: str) -> str:
        extra = [extra_matchers] if extra_matchers else []
        pod_labels = [pod for pod, _ in self.schemes]
        by = ", ".join(
            dict.fromkeys(
                [
                    *(label for scheme in self.schemes for label in reversed(scheme)),
                    self.gpu_label,
                    self.fallback_gpu_label,
                    *self.node_labels,
                    "source",
                    "job",
                    "instance",
                ]
            )
        )

        def selector(matchers: Sequence[str]) -> str:
            return f"{metric}{{{','.join(matchers)}}}"

        labelled = [selector([f'{pod}!=""', *extra]) for pod in pod_labels]
        parts = [f"max by ({by}) ({' or '.join(labelled)})"]
        if name in _STAMPED_FIELDS:
            # The series' own scrape time rides along in the same query: an instant query stamps every value
            # with the evaluation time, and integrating counters between evaluation times would misplace up to
            # one scrape interval of energy at each end of a window; the scrape time also tells a vanished
            # pod's last sample (older than the pod now of that name) apart. timestamp() keeps a sample's own
            # time only when applied to a selector, hence one per scheme.
            stamps = " or ".join(f"timestamp({s})" for s in labelled)
            parts.append(f'label_replace(max by ({by}) ({stamps}), "{SAMPLE_TIME_LABEL}", "time", "", "")')
        # One series that carries no pod label, all its labels kept: what to name when nothing matches.
        unlabelled = selector([*(f'{pod}=""' for pod in pod_labels), *extra])
        parts.append(f'label_replace(topk(1, {unlabelled}), "{SAMPLE_TIME_LABEL}", "labels", "", "")')
        if name == "power_watts" and self.agent_metric:
            agent_by = ", ".join(
                dict.fromkeys(
                    [
                        *(label for scheme in _AGENT_SCHEMES for label in reversed(scheme)),
                        agent_names.LABEL_UUID,
                        agent_names.LABEL_GPU,
                        agent_names.LABEL_HOSTNAME,
                    ]
                )
            )
            parts.append(
                f'label_replace(max by ({agent_by}) ({self.agent_metric}), "{SAMPLE_TIME_LABEL}", "agent", "", "")'
            )
            # The agent's verdicts on the same GPUs ride along: a failed operation, a device it does not find.
            error_by = ", ".join(
                (
                    agent_names.LABEL_UUID,
                    agent_names.LABEL_GPU,
                    agent_names.LABEL_HOSTNAME,
                    agent_names.LABEL_OPERATION,
                    agent_names.LABEL_ERROR,
                )
            )
            parts.append(
                f"label_replace(max by ({error_by}) ({AGENT_ERROR_METRIC} == 1),"
                f' "{SAMPLE_TIME_LABEL}", "agent_error", "", "")'
            )
            unknown_by = ", ".join(
                dict.fromkeys(
                    [
                        *(label for scheme in _AGENT_SCHEMES for label in reversed(scheme)),
                        agent_names.LABEL_DEVICE_ID,
                        agent_names.LABEL_HOSTNAME,
                    ]
                )
            )
            parts.append(
                f"label_replace(max by ({unknown_by}) ({AGENT_UNKNOWN_DEVICE_METRIC} == 1),"
                f' "{SAMPLE_TIME_LABEL}", "agent_unknown", "", "")'
            )
        return " or ".join(parts)

    # --- the blocking part (worker threads) -----------------------------------------------------------
    def _session(self, slot: int) -> requests.Session:
        with self._sessions_lock:
            session = self._sessions.get(slot)
            if session is None:
                session = self._sessions[slot] = self.client.session(self._auth)
            return session

    def _query_blocking(self, slot: int, promql: str) -> Any:
        """The ``result`` of an instant query; raises PrometheusHTTPError, MalformedAnswer or requests' errors."""
        response = self._session(slot).get(
            f"{self.url}/api/v1/query",
            params={"query": promql, "timeout": f"{self.timeout_seconds:g}s"},
            timeout=self.timeout_seconds,
            verify=self.client.verify,
            cert=self.client.cert,
        )
        with response:
            if response.status_code != 200:
                raise PrometheusHTTPError(response.status_code)
            try:
                body = response.json()
            except ValueError:
                raise MalformedAnswer("the answer is not JSON") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(data, dict):
            raise MalformedAnswer("the answer is not a successful query result")
        return data.get("result")

    def close(self) -> None:
        """Close the HTTP sessions (a later call opens new ones)."""
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()

    # --- the interface ---------------------------------------------------------------------------------
    async def collect(self, targets: Sequence[PodTarget]) -> TelemetryResult:
        """Read every target's GPUs with one query per metric; errors land in ``result.error``."""
        index: dict[tuple[str, str], list[PodTarget]] = {}
        for target in targets:
            index.setdefault((target.namespace, target.pod), []).append(target)
        if not index:
            return TelemetryResult()
        answers = await asyncio.gather(
            *(asyncio.to_thread(self._query_blocking, slot, q.promql) for slot, q in enumerate(self.queries)),
            return_exceptions=True,
        )
        result = TelemetryResult(requests=len(self.queries))
        failed: dict[str, list[str]] = {}
        for query, answer in zip(self.queries, answers, strict=True):
            if isinstance(answer, BaseException):
                words, code = describe_failure(answer)
                failed.setdefault(words, []).append(query.metric)
                if result.status_code is None:
                    result.status_code = code
        if failed:
            result.error = f"Prometheus at {_display_url(self.url)} failed: " + "; ".join(
                f"{', '.join(metrics)}: {words}" for words, metrics in failed.items()
            )
            result.error_cause = TelemetryCause.QUERY_FAILED
            return result
        merged = _Answer()
        try:
            for query, answer in zip(self.queries, answers, strict=True):
                self._merge(query, answer, index, merged)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            # never the exception's text: it may quote the answer
            result.error = f"Prometheus at {_display_url(self.url)} gave a malformed answer ({type(e).__name__})"
            result.error_cause = TelemetryCause.QUERY_FAILED
            return result
        if self.agent_metric and merged.agent_seen:  # no agent series at all: this Prometheus does not scrape agents
            for pods in index.values():
                for target in pods:
                    result.agent[target.owner] = _agent_findings(target, merged)
        for candidate in self._attributed(index, merged, result):
            owner, origin, r = candidate.target, candidate.origin, candidate.reading
            result.samples.append(
                GpuSample(
                    namespace=origin.namespace,
                    pod=origin.pod,
                    gpu=origin.gpu,
                    timestamp_seconds=r.sample_seconds,
                    power_watts=r.power_watts,
                    energy_mj=r.energy_mj,
                    power_limit_watts=r.power_limit_watts,
                    simulated=r.simulated,
                    uid=owner.uid,
                    node=origin.node or owner.node,
                    pod_start_seconds=owner.start_seconds,
                )
            )
        if not merged.labelled and merged.unlabelled:
            # GPU series exist, but none names a pod in a way this source reads: say which labels they carry
            result.labels_seen = tuple(sorted(merged.unlabelled))
        if result.rejected:
            log.debug(
                "Prometheus at %s: %d GPU series not attributed (%s): %s",
                _display_url(self.url),
                result.rejected,
                result.rejected_by_kind,
                result.rejected_reasons,
            )
        return result

    @staticmethod
    def _pod_of(labels: Mapping[str, str], schemes: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
        """(namespace, pod) of a series by the first scheme whose pod label it carries, or None."""
        for pod_label, namespace_label in schemes:
            pod = labels.get(pod_label)
            if pod:
                return labels.get(namespace_label, ""), pod
        return None

    def _merge(
        self,
        query: _Query,
        answer: Any,
        index: Mapping[tuple[str, str], Sequence[PodTarget]],
        merged: _Answer,
    ) -> None:
        if not isinstance(answer, list):
            raise ValueError(f"{query.metric}: expected a vector, got {type(answer).__name__}")
        for series in answer:
            labels: Mapping[str, str] = series["metric"]
            part = labels.get(SAMPLE_TIME_LABEL)
            if part == "labels":
                merged.unlabelled.update(k for k in labels if k not in ("__name__", SAMPLE_TIME_LABEL))
                continue
            if part == "agent":
                if self.agent_metric:
                    self._merge_agent(labels, self._pod_of(labels, _AGENT_SCHEMES), merged)
                continue
            if part == "agent_error":
                if self.agent_metric:
                    self._merge_agent_error(labels, merged)
                continue
            if part == "agent_unknown":
                if self.agent_metric:
                    self._merge_agent_unknown(labels, self._pod_of(labels, _AGENT_SCHEMES), merged)
                continue
            pod = self._pod_of(labels, self.schemes)
            if pod is None:
                continue
            merged.labelled = True
            if pod not in index:
                continue
            uuid = labels.get(self.gpu_label, "")
            gpu_index = labels.get(self.fallback_gpu_label, "")
            origin = _Origin(
                namespace=pod[0],
                pod=pod[1],
                node=next((labels[n] for n in self.node_labels if labels.get(n)), ""),
                gpu=uuid or gpu_index,
                uuid=uuid,
                index=gpu_index,
                job=labels.get("job", ""),
                instance=labels.get("instance", ""),
            )
            timestamp_seconds, raw = series["value"]
            value = float(raw)
            if math.isnan(value):
                continue
            entry = merged.readings.get(origin)
            if entry is None:
                entry = merged.readings[origin] = _GpuReadings(float(timestamp_seconds), False)
            entry.timestamp_seconds = max(entry.timestamp_seconds, float(timestamp_seconds))
            entry.simulated = entry.simulated or labels.get("source") == SIMULATED_SOURCE
            if part == "time":
                entry.scraped_seconds[query.field] = value
            else:
                setattr(entry, query.field, value)

    @staticmethod
    def _merge_agent(labels: Mapping[str, str], pod: tuple[str, str] | None, merged: _Answer) -> None:
        node = labels.get(agent_names.LABEL_HOSTNAME, "").casefold()
        if not node:
            return
        merged.agent_nodes.add(node)
        merged.agent_seen.add(node)
        if pod is None:
            return
        held = merged.agent_gpus.setdefault(pod, {}).setdefault(node, set())
        uuid, gpu_index = labels.get(agent_names.LABEL_UUID, ""), labels.get(agent_names.LABEL_GPU, "")
        if uuid:
            held.add(uuid)
        if gpu_index:
            held.add(f"index:{gpu_index}")

    @staticmethod
    def _merge_agent_error(labels: Mapping[str, str], merged: _Answer) -> None:
        host = labels.get(agent_names.LABEL_HOSTNAME, "")
        if not host:
            return
        merged.agent_seen.add(host.casefold())
        uuid, gpu_index = labels.get(agent_names.LABEL_UUID, ""), labels.get(agent_names.LABEL_GPU, "")
        error = AgentGpuError(
            node=host,
            gpu=uuid or gpu_index,
            operation=labels.get(agent_names.LABEL_OPERATION, ""),
            kind=labels.get(agent_names.LABEL_ERROR, "") or agent_names.ERROR_UNKNOWN,
        )
        merged.agent_errors.setdefault((host.casefold(), uuid, gpu_index), set()).add(error)

    @staticmethod
    def _merge_agent_unknown(labels: Mapping[str, str], pod: tuple[str, str] | None, merged: _Answer) -> None:
        host = labels.get(agent_names.LABEL_HOSTNAME, "")
        if not host:
            return
        merged.agent_seen.add(host.casefold())
        if pod is None:
            return
        unknown = AgentUnknownDevice(host, f"{pod[0]}/{pod[1]}", labels.get(agent_names.LABEL_DEVICE_ID, ""))
        merged.agent_unknown.setdefault(pod, set()).add(unknown)

    def _attributed(
        self, index: Mapping[tuple[str, str], Sequence[PodTarget]], merged: _Answer, result: TelemetryResult
    ) -> list[_Candidate]:
        """The readings that count, one per GPU of each pod, in (namespace, pod, node, GPU) order."""
        per_gpu: dict[tuple[str, str], list[_Candidate]] = defaultdict(list)
        for origin, reading in sorted(merged.readings.items()):
            owner = _attribute(index[(origin.namespace, origin.pod)], origin.node or None, reading, result)
            if owner is None:
                continue
            problem = _not_held(owner, origin, merged)
            if problem:
                result.reject(owner, problem, REJECT_NOT_HELD)
                continue
            per_gpu[(owner.owner, origin.gpu)].append(_Candidate(owner, origin, reading))
        per_pod: dict[str, list[_Candidate]] = defaultdict(list)
        for copies in per_gpu.values():
            # For accounting one GPU's counter must come from one place: the node's exporter before a series
            # the pod serves itself, then the newest scrape (the same hardware counter, read last), then a
            # fixed order. Never the highest value: whoever serves the copy would choose it. A target that
            # serves only the limit (the node agent reads back what it set) is no copy: it fills the limit in.
            copies.sort(key=lambda c: (not c.measured, c.rank, -c.reading.sample_seconds, c.origin))
            kept = copies[0]
            if kept.reading.power_limit_watts is None:
                limits = (c.reading.power_limit_watts for c in copies if c.reading.power_limit_watts is not None)
                limit = next(limits, None)
                kept = replace(kept, reading=replace(kept.reading, power_limit_watts=limit))
            for other in copies[1:]:
                if other.measured:
                    result.reject(
                        other.target,
                        f"GPU {other.origin.gpu} also read from {other.source}: kept the series from {kept.source}",
                        REJECT_DUPLICATE,
                    )
            per_pod[kept.target.owner].append(kept)
        chosen: list[_Candidate] = []
        for gpus in per_pod.values():
            target = gpus[0].target
            if target.gpus is not None and len(gpus) > target.gpus:
                gpus.sort(key=lambda c: (c.rank, c.origin.gpu, c.origin))
                kept_names = ", ".join(c.origin.gpu for c in gpus[: target.gpus]) or "none"
                for _ in gpus[target.gpus :]:
                    result.reject(
                        target,
                        f"{len(gpus)} GPU series for a pod that requested {target.gpus} nvidia.com/gpu:"
                        f" kept {kept_names}",
                        REJECT_TOO_MANY_GPUS,
                    )
                gpus = gpus[: target.gpus]
            chosen.extend(gpus)
        chosen.sort(key=lambda c: (c.origin.namespace, c.origin.pod, c.origin.node, c.origin.gpu))
        return chosen

    async def query_scalar(self, promql: str) -> float | None:
        """Evaluate ``promql`` (e.g. grid carbon intensity in gCO2/kWh); None when empty, NaN or failed."""
        try:
            answer = await asyncio.to_thread(self._query_blocking, len(self.queries), promql)
        except Exception as e:
            log.warning("Prometheus query at %s failed: %s", _display_url(self.url), describe_failure(e)[0])
            return None
        return _scalar(answer)


def _agent_findings(target: PodTarget, merged: _Answer) -> AgentFindings:
    """What the agent's series say of the target's node and GPUs (nothing when its node is unknown).

    An error counts for the pod when it is on a GPU the agent lists as the pod's on the pod's node; an unknown
    device when the agent names the pod as its holder, on the pod's node.
    """
    if not target.node:
        return AgentFindings(read=True)
    node = target.node.casefold()
    if node not in merged.agent_seen:
        return AgentFindings(read=True, nodes_without_agent=(target.node,))
    held = merged.agent_gpus.get((target.namespace, target.pod), {}).get(node, set())
    errors = {
        error
        for (host, uuid, gpu_index), found in merged.agent_errors.items()
        if host == node and ((uuid and uuid in held) or (gpu_index and f"index:{gpu_index}" in held))
        for error in found
    }
    unknown = {
        u for u in merged.agent_unknown.get((target.namespace, target.pod), set()) if u.node.casefold() == node
    }
    return AgentFindings(read=True, gpu_errors=tuple(sorted(errors)), unknown_devices=tuple(sorted(unknown)))


def _not_held(owner: PodTarget, origin: _Origin, merged: _Answer) -> str | None:
    """Why the node agent says ``owner`` does not hold this GPU, or None (it does, or no agent on that node)."""
    if not owner.node or owner.node.casefold() not in merged.agent_nodes:
        return None
    held = merged.agent_gpus.get((owner.namespace, owner.pod), {}).get(owner.node.casefold(), set())
    if (origin.uuid and origin.uuid in held) or (not origin.uuid and f"index:{origin.index}" in held):
        return None
    listed = ", ".join(sorted(g for g in held if not g.startswith("index:"))) or "none"
    return f"the node agent on {owner.node} does not list GPU {origin.gpu} as this pod's (it lists {listed})"


def _attribute(
    candidates: Sequence[PodTarget], node: str | None, reading: _GpuReadings, result: TelemetryResult
) -> PodTarget | None:
    """The target a GPU reading belongs to, or None (counted in ``result.rejected``).

    Of the targets of that namespace/pod (usually one; two while a re-created pod's predecessor is still
    registered), those on the series' node and started no later than the reading qualify, and the one
    started last wins: it is the pod that held the name when the reading was taken.
    """
    fitting: list[PodTarget] = []
    reason, kind = "", ""
    timestamp_seconds = reading.sample_seconds
    for target in candidates:
        problem = attribution_problem(target, node=node, timestamp_seconds=timestamp_seconds)
        if problem is None:
            fitting.append(target)
        else:
            reason, kind = problem, attribution_kind(target, node=node)
    if not fitting:
        result.reject(candidates[0], reason, kind)
        return None
    return max(fitting, key=lambda t: -math.inf if t.start_seconds is None else t.start_seconds)


def _scalar(answer: Any) -> float | None:
    """The number in an instant-query answer: a scalar ``[t, "v"]`` or the first element of a vector."""
    try:
        if isinstance(answer, list) and len(answer) == 2 and not isinstance(answer[0], dict):
            value = float(answer[1])
        elif isinstance(answer, list) and answer and isinstance(answer[0], dict):
            if len(answer) > 1:
                log.warning("scalar query returned %d series; using the first", len(answer))
            value = float(answer[0]["value"][1])
        else:
            return None
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value
