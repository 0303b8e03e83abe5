"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from etj_operator import contract


@dataclass(frozen=True)
class OperatorConfig:
    """Settings that apply to every job the operator manages."""

    #: Seconds between two level-triggered reconciles of a job when nothing happens.
    reconcile_interval_seconds: float = 10.0
    #: After a wake-up, wait this long so that a burst of events is handled by one reconcile.
    reconcile_debounce_seconds: float = 0.05
    #: Steps between two reads of status.control by the harness's rank 0.
    control_poll_steps: int = 10
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
    #: Prometheus label names that carry the pod and namespace of a GPU's user (dcgm-exporter's pod mapping;
    #: exported_pod/exported_namespace when Prometheus scrapes with honor_labels=false).
    prometheus_pod_label: str = "pod"
    prometheus_namespace_label: str = "namespace"
    #: Extra label matchers added to every telemetry query (e.g. `job="dcgm-exporter"`), to narrow big answers.
    prometheus_extra_matchers: str = ""
    #: dcgm-exporter's power-limit metric; empty skips that query (2 queries per cycle instead of 3).
    prometheus_limit_metric: str = contract.METRIC_POWER_MGMT_LIMIT
    #: Label naming a GPU series' node (dcgm-exporter's Hostname, the node name when NODE_NAME is set): a
    #: series counts for a pod only from the pod's node. Empty: no node check (the start-time check stays).
    prometheus_node_label: str = "Hostname"
    #: Range of per-GPU power limits the throttle may set (H100 SXM: 200..700 W).
    gpu_min_limit_watts: int = 200
    gpu_max_limit_watts: int = 700
    #: How long a policy waits for the harness to acknowledge a checkpoint before stopping pods anyway.
    checkpoint_timeout_seconds: float = 120.0
    #: How long the GPUs' enforcer may take to apply a new power cap before the job says it is not enforced.
    cap_grace_seconds: float = 60.0
    #: The chart runs the node agent (``nodeAgent.enabled``; docs/node-agent.md). It enforces Fixed limits and the
    #: throttle, so those pods get no SYS_ADMIN and their harness sets no limit; Auto keeps both (docs/security.md).
    node_agent: bool = False

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
            gpu_min_limit_watts=int(number("ETJ_GPU_MIN_LIMIT_WATTS", cls.gpu_min_limit_watts)),
            gpu_max_limit_watts=int(number("ETJ_GPU_MAX_LIMIT_WATTS", cls.gpu_max_limit_watts)),
            checkpoint_timeout_seconds=number("ETJ_CHECKPOINT_TIMEOUT_SECONDS", cls.checkpoint_timeout_seconds),
            cap_grace_seconds=number("ETJ_CAP_GRACE_SECONDS", cls.cap_grace_seconds),
            node_agent=flag("ETJ_NODE_AGENT", cls.node_agent),
        )
