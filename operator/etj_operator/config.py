"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from etj_operator import contract

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _prometheus_headers(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``{"Header": "value"}`` (JSON) as sorted pairs; empty: none. Malformed: ValueError naming the variable."""
    if not raw.strip():
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be a JSON object of header names to values") from e
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} must be a JSON object of header names to values")
    pairs = []
    for key, value in parsed.items():
        if not isinstance(value, str) or not _HEADER_NAME.match(key) or "\r" in value or "\n" in value:
            raise ValueError(f"{name}: {key!r} is not a header name with a one-line string value")
        pairs.append((key, value))
    return tuple(sorted(pairs))


def _string_list(name: str, raw: str) -> tuple[str, ...]:
    """A JSON list of non-empty strings; empty: none. Malformed: ValueError naming the variable."""
    if not raw.strip():
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be a JSON list of strings") from e
    if not isinstance(parsed, list) or not all(isinstance(v, str) and v.strip() for v in parsed):
        raise ValueError(f"{name} must be a JSON list of non-empty strings")
    return tuple(v.strip() for v in parsed)


def _prometheus_username(env: Mapping[str, str]) -> str:
    """ETJ_PROMETHEUS_USERNAME, checked against the other credentials (one way to authenticate, a password)."""
    username = env.get("ETJ_PROMETHEUS_USERNAME", "")
    if username and not env.get("ETJ_PROMETHEUS_PASSWORD_FILE"):
        raise ValueError("ETJ_PROMETHEUS_USERNAME needs ETJ_PROMETHEUS_PASSWORD_FILE (basic auth)")
    if env.get("ETJ_PROMETHEUS_PASSWORD_FILE") and not username:
        raise ValueError("ETJ_PROMETHEUS_PASSWORD_FILE needs ETJ_PROMETHEUS_USERNAME (basic auth)")
    if username and env.get("ETJ_PROMETHEUS_BEARER_TOKEN_FILE"):
        raise ValueError("set ETJ_PROMETHEUS_BEARER_TOKEN_FILE or ETJ_PROMETHEUS_USERNAME (basic auth), not both")
    return username


def _prometheus_key_file(env: Mapping[str, str]) -> str:
    """ETJ_PROMETHEUS_KEY_FILE, which needs the certificate it belongs to."""
    key = env.get("ETJ_PROMETHEUS_KEY_FILE", "")
    if key and not env.get("ETJ_PROMETHEUS_CERT_FILE"):
        raise ValueError("ETJ_PROMETHEUS_KEY_FILE needs ETJ_PROMETHEUS_CERT_FILE (the client certificate)")
    return key


@dataclass(frozen=True)
class OperatorConfig:
    """Settings that apply to every job the operator manages."""

    #: Seconds between two level-triggered reconciles of a job when nothing happens.
    reconcile_interval_seconds: float = 10.0
    #: After a wake-up, wait this long so that a burst of events is handled by one reconcile.
    reconcile_debounce_seconds: float = 0.05
    #: Steps between two control polls of the harness (its rank 0 reads status.control, publishes its report),
    #: when ``control_poll_seconds`` is 0.
    control_poll_steps: int = 10
    #: About this many seconds between two control polls of the harness (0: every ``control_poll_steps``).
    control_poll_seconds: float = 1.0
    #: GPU backend the harness uses: auto (NVML when a GPU is visible), nvml, or simulated.
    gpu_backend: str = "auto"
    #: Port of the operator's own Prometheus metrics (0 disables).
    metrics_port: int = 8080
    #: Default Prometheus base URL for telemetry (a job may override it).
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    #: Connections to the API server (requests beyond wait for one) and Kopf's threads for sync handlers.
    max_workers: int = 16
    #: Reconcile passes running at once, over all jobs (0: no limit). A burst of new jobs then gets its
    #: pods job after job instead of all jobs at the end of the burst (bench/operator_scale.py).
    max_concurrent_reconciles: int = 8
    #: Seconds between two telemetry cycles (one batched read for all jobs).
    telemetry_interval_seconds: float = 15.0
    #: Prometheus label names that carry the pod and namespace of a GPU's user. Empty (the default): every scheme
    #: dcgm-exporter is seen with, resolved per series (exported_pod/exported_namespace, pod_name/pod_namespace,
    #: pod/namespace; docs/telemetry.md). Set, they are the only labels read (an explicit override).
    prometheus_pod_label: str = ""
    prometheus_namespace_label: str = ""
    #: Extra label matchers added to every telemetry query (e.g. `job="dcgm-exporter"`), to narrow big answers.
    prometheus_extra_matchers: str = ""
    #: dcgm-exporter's power-limit metric; empty skips that query (2 queries per cycle instead of 3).
    prometheus_limit_metric: str = contract.METRIC_POWER_MGMT_LIMIT
    #: Label naming a GPU series' node (dcgm-exporter's Hostname, the node name when NODE_NAME is set): a
    #: series counts for a pod only from the pod's node. Empty: no node check (the start-time check stays).
    prometheus_node_label: str = "Hostname"
    #: How the operator authenticates to Prometheus (docs/telemetry.md, "Connecting to Prometheus"): a file holding a
    #: bearer token (re-read when it changes: projected tokens rotate), or a username and a file holding the
    #: password (basic auth); a CA bundle to verify the server, a client certificate and key (mutual TLS), extra
    #: headers on every request (e.g. X-Scope-OrgID for Mimir/Cortex), and whether TLS certificates are verified.
    prometheus_bearer_token_file: str = ""
    prometheus_username: str = ""
    prometheus_password_file: str = ""
    prometheus_ca_file: str = ""
    prometheus_cert_file: str = ""
    prometheus_key_file: str = ""
    prometheus_headers: tuple[tuple[str, str], ...] = ()
    prometheus_tls_verify: bool = True
    #: Prometheus URLs a job may name in spec.energy.telemetry.prometheusURL besides prometheus_url (none by default).
    prometheus_allowed_urls: tuple[str, ...] = ()
    #: Carbon-intensity queries a job may name in spec.energy.carbon.intensityQuery (exact text; none by default),
    #: or any query at all with prometheus_allow_any_intensity_query.
    prometheus_intensity_queries: tuple[str, ...] = ()
    prometheus_allow_any_intensity_query: bool = False
    #: Range of per-GPU power limits the throttle may set (H100 SXM: 200..700 W).
    gpu_min_limit_watts: int = 200
    gpu_max_limit_watts: int = 700
    #: How long a policy waits for the harness to acknowledge a checkpoint before stopping pods anyway.
    checkpoint_timeout_seconds: float = 120.0
    #: How long the GPUs' enforcer may take to apply a new power cap before the job says it is not enforced.
    cap_grace_seconds: float = 60.0
    #: Leader election on a Lease (docs/reliability.md, "Failover"): only the holder reconciles. Off by default
    #: for a process started by hand; the chart turns it on (leaderElection.enabled). The Lease lives in
    #: ``leader_election_namespace`` (the chart sets the pod's own; empty: the service account's namespace, else
    #: "default"); the identity is ``leader_election_identity`` (the chart sets the pod's name; empty: the host
    #: name and pid).
    leader_election: bool = False
    leader_election_namespace: str = ""
    leader_election_lease_name: str = "etj-operator"
    leader_election_identity: str = ""
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0
    #: Port of ``GET /readyz`` (etj_operator.readiness; 0 disables): ready once the informers are synced.
    readiness_port: int = 0
    #: The chart runs the node agent (``nodeAgent.enabled``; docs/node-agent.md). It enforces Fixed limits and the
    #: throttle, so those pods get no SYS_ADMIN and their harness sets no limit; Auto keeps both (docs/security.md).
    node_agent: bool = False
    #: Energy accounting's physical bound (etj_operator.energy.AccountingSettings; docs/energy.md, "Bounds"): the
    #: most one GPU draws (GB200: 1200 W), the allowance over it for timing (a fraction), and how far a sample's
    #: time may be ahead of the operator's clock before the sample is refused.
    max_gpu_watts: float = 1200.0
    power_bound_tolerance: float = 0.25
    future_sample_tolerance_seconds: float = 30.0
    #: The operator is Kueue's job integration for EfficientTrainingJob (docs/kueue.md; the chart's
    #: ``kueue.enabled``): a job labelled kueue.x-k8s.io/queue-name gets a Workload (kueue.x-k8s.io/v1beta2) and
    #: no pod before Kueue admits it. Off by default; on, the job loops wait for the first listing of Workloads
    #: and ResourceFlavors, so Kueue's CRDs must be installed.
    kueue: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read ETJ_* variables; a malformed value raises ValueError naming the variable."""
        env = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError as e:
                raise ValueError(f"{name}={raw!r} is not a number") from e
            if value < 0:
                raise ValueError(f"{name}={raw!r} must not be negative")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            if raw.strip().lower() in ("true", "1"):
                return True
            if raw.strip().lower() in ("false", "0"):
                return False
            raise ValueError(f"{name}={raw!r} must be true, false, 1 or 0")

        backend = env.get("ETJ_GPU_BACKEND", cls.gpu_backend)
        if backend not in ("auto", "nvml", "simulated"):
            raise ValueError(f"ETJ_GPU_BACKEND={backend!r} must be auto, nvml or simulated")
        return cls(
            reconcile_interval_seconds=number("ETJ_RECONCILE_INTERVAL_SECONDS", cls.reconcile_interval_seconds),
            reconcile_debounce_seconds=number("ETJ_RECONCILE_DEBOUNCE_SECONDS", cls.reconcile_debounce_seconds),
            control_poll_steps=max(1, int(number("ETJ_CONTROL_POLL_STEPS", cls.control_poll_steps))),
            control_poll_seconds=min(contract.MAX_CONTROL_POLL_SECONDS, max(0.0, number("ETJ_CONTROL_POLL_SECONDS",
                                                                               cls.control_poll_seconds))),
            gpu_backend=backend,
            metrics_port=int(number("ETJ_METRICS_PORT", cls.metrics_port)),
            prometheus_url=env.get("ETJ_PROMETHEUS_URL", cls.prometheus_url),
            max_workers=max(1, int(number("ETJ_MAX_WORKERS", cls.max_workers))),
            max_concurrent_reconciles=int(number("ETJ_MAX_CONCURRENT_RECONCILES", cls.max_concurrent_reconciles)),
            telemetry_interval_seconds=max(
                0.1, number("ETJ_TELEMETRY_INTERVAL_SECONDS", cls.telemetry_interval_seconds)
            ),
            prometheus_pod_label=env.get("ETJ_PROMETHEUS_POD_LABEL", cls.prometheus_pod_label),
            prometheus_namespace_label=env.get("ETJ_PROMETHEUS_NAMESPACE_LABEL", cls.prometheus_namespace_label),
            prometheus_extra_matchers=env.get("ETJ_PROMETHEUS_EXTRA_MATCHERS", cls.prometheus_extra_matchers),
            prometheus_limit_metric=env.get("ETJ_PROMETHEUS_LIMIT_METRIC", cls.prometheus_limit_metric),
            prometheus_node_label=env.get("ETJ_PROMETHEUS_NODE_LABEL", cls.prometheus_node_label),
            prometheus_bearer_token_file=env.get("ETJ_PROMETHEUS_BEARER_TOKEN_FILE", ""),
            prometheus_username=_prometheus_username(env),
            prometheus_password_file=env.get("ETJ_PROMETHEUS_PASSWORD_FILE", ""),
            prometheus_ca_file=env.get("ETJ_PROMETHEUS_CA_FILE", ""),
            prometheus_cert_file=env.get("ETJ_PROMETHEUS_CERT_FILE", ""),
            prometheus_key_file=_prometheus_key_file(env),
            prometheus_headers=_prometheus_headers("ETJ_PROMETHEUS_HEADERS", env.get("ETJ_PROMETHEUS_HEADERS", "")),
            prometheus_tls_verify=flag("ETJ_PROMETHEUS_TLS_VERIFY", cls.prometheus_tls_verify),
            prometheus_allowed_urls=tuple(
                u for u in re.split(r"[\s,]+", env.get("ETJ_PROMETHEUS_ALLOWED_URLS", "")) if u
            ),
            prometheus_intensity_queries=_string_list(
                "ETJ_PROMETHEUS_INTENSITY_QUERIES", env.get("ETJ_PROMETHEUS_INTENSITY_QUERIES", "")
            ),
            prometheus_allow_any_intensity_query=flag(
                "ETJ_PROMETHEUS_ALLOW_ANY_INTENSITY_QUERY", cls.prometheus_allow_any_intensity_query
            ),
            gpu_min_limit_watts=int(number("ETJ_GPU_MIN_LIMIT_WATTS", cls.gpu_min_limit_watts)),
            gpu_max_limit_watts=int(number("ETJ_GPU_MAX_LIMIT_WATTS", cls.gpu_max_limit_watts)),
            checkpoint_timeout_seconds=number("ETJ_CHECKPOINT_TIMEOUT_SECONDS", cls.checkpoint_timeout_seconds),
            cap_grace_seconds=number("ETJ_CAP_GRACE_SECONDS", cls.cap_grace_seconds),
            leader_election=flag("ETJ_LEADER_ELECTION", cls.leader_election),
            leader_election_namespace=env.get("ETJ_LEADER_ELECTION_NAMESPACE", ""),
            leader_election_lease_name=env.get("ETJ_LEADER_ELECTION_LEASE_NAME", "") or cls.leader_election_lease_name,
            leader_election_identity=env.get("ETJ_LEADER_ELECTION_IDENTITY", ""),
            lease_duration_seconds=number("ETJ_LEASE_DURATION_SECONDS", cls.lease_duration_seconds),
            renew_deadline_seconds=number("ETJ_RENEW_DEADLINE_SECONDS", cls.renew_deadline_seconds),
            retry_period_seconds=number("ETJ_RETRY_PERIOD_SECONDS", cls.retry_period_seconds),
            readiness_port=int(number("ETJ_READINESS_PORT", cls.readiness_port)),
            node_agent=flag("ETJ_NODE_AGENT", cls.node_agent),
            max_gpu_watts=_positive("ETJ_MAX_GPU_WATTS", number("ETJ_MAX_GPU_WATTS", cls.max_gpu_watts)),
            power_bound_tolerance=number("ETJ_POWER_BOUND_TOLERANCE", cls.power_bound_tolerance),
            future_sample_tolerance_seconds=number(
                "ETJ_FUTURE_SAMPLE_TOLERANCE_SECONDS", cls.future_sample_tolerance_seconds
            ),
            kueue=flag("ETJ_KUEUE", cls.kueue),
        )


def _positive(name: str, value: float) -> float:
    """``value``, which must be above 0 (a bound of 0 W would refuse every sample)."""
    if value <= 0:
        raise ValueError(f"{name}={value:g} must be above 0")
    return value
