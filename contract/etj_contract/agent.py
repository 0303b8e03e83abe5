"""Names of the node agent: what it reads from a job, what it asks the kubelet, and what it exports.

The node agent (``etj_operator.nodeagent``, one per GPU node) applies each job's per-GPU power limit to the
GPUs that job's pods hold on its node, and exports the limits it applied as DCGM-compatible metrics, so the
operator can check that a cap is in force (the applied limit is ``etj_contract.names.METRIC_POWER_MGMT_LIMIT``,
with the labels below). The operator and its tests read those metrics by the names here; this module is their
one agreement (docs/node-agent.md). Standard library only, like the rest of the contract package.

Units: every power limit in a metric is in W (as dcgm-exporter exports ``DCGM_FI_DEV_POWER_MGMT_LIMIT``).
"""

from __future__ import annotations

from typing import Final

from etj_contract import names as _names

__all__ = [
    "AGENT_METRICS",
    "DCGM_GPU_LABELS",
    "DCGM_POD_LABELS",
    "DEFAULT_AGENT_METRICS_PORT",
    "DEFAULT_POD_RESOURCES_SOCKET",
    "ENV_NODE_NAME",
    "ERROR_GPU_LOST",
    "ERROR_GPU_NOT_FOUND",
    "ERROR_INVALID_ARGUMENT",
    "ERROR_KINDS",
    "ERROR_LIBRARY",
    "ERROR_NOT_SUPPORTED",
    "ERROR_NO_PERMISSION",
    "ERROR_TIMEOUT",
    "ERROR_UNKNOWN",
    "INPUT_API",
    "INPUT_KUBELET",
    "LABEL_CONTAINER",
    "LABEL_DEVICE",
    "LABEL_DEVICE_ID",
    "LABEL_ERROR",
    "LABEL_GPU",
    "LABEL_HOSTNAME",
    "LABEL_INPUT",
    "LABEL_JOB_UID",
    "LABEL_MODEL_NAME",
    "LABEL_NAMESPACE",
    "LABEL_OPERATION",
    "LABEL_PCI_BUS_ID",
    "LABEL_POD",
    "LABEL_REASON",
    "LABEL_SOURCE",
    "LABEL_UUID",
    "METRIC_AGENT_APPLIES",
    "METRIC_AGENT_APPLY_ERRORS",
    "METRIC_AGENT_CYCLES",
    "METRIC_AGENT_DESIRED_LIMIT",
    "METRIC_AGENT_GPU_ERROR",
    "METRIC_AGENT_INFO",
    "METRIC_AGENT_INPUT_AGE",
    "METRIC_AGENT_INPUT_EXPIRED",
    "METRIC_AGENT_INPUT_UP",
    "METRIC_AGENT_UNKNOWN_DEVICE",
    "METRIC_ENFORCED_POWER_LIMIT",
    "OPERATION_DISCOVER",
    "OPERATION_READ",
    "OPERATION_SET",
    "POD_RESOURCES_LIST_METHOD",
    "POD_RESOURCES_SERVICE",
    "REASONS",
    "REASON_AUTO_CANDIDATE",
    "REASON_CEILING_LIFTED",
    "REASON_INPUTS_EXPIRED",
    "REASON_INPUTS_PENDING",
    "REASON_JOB_CEILING",
    "REASON_JOB_GONE",
    "REASON_JOB_LIMIT",
    "REASON_JOB_LIMIT_CLAMPED",
    "REASON_NOT_HELD",
    "REASON_NO_LIMIT_ASKED",
    "REASON_POD_FINISHED",
    "REASON_POD_MANAGED",
    "REASON_POD_UNKNOWN",
    "REASON_SHARED",
    "REASON_UNMANAGED_POD",
    "RESOURCE_NVIDIA_GPU",
    "SPEC_ENERGY",
    "SPEC_POWER",
]

# --- the job's spec, as the agent reads it -------------------------------------------------------------------
#: ``spec.energy.power`` sits under these keys; its own fields are :data:`etj_contract.plans.POWER_KEYS`.
SPEC_ENERGY: Final = "energy"
SPEC_POWER: Final = "power"

# --- the kubelet's PodResources API (k8s.io/kubelet/pkg/apis/podresources/v1/api.proto) -----------------------
DEFAULT_POD_RESOURCES_SOCKET: Final = "/var/lib/kubelet/pod-resources/kubelet.sock"
POD_RESOURCES_SERVICE: Final = "v1.PodResourcesLister"
POD_RESOURCES_LIST_METHOD: Final = f"/{POD_RESOURCES_SERVICE}/List"
#: The NVIDIA device plugin's resource; its device ids are GPU UUIDs (or indices, or ``UUID::n`` replicas).
RESOURCE_NVIDIA_GPU: Final = "nvidia.com/gpu"
#: The agent's node, from the downward API (``spec.nodeName``), when ``--node`` is not given.
ENV_NODE_NAME: Final = "NODE_NAME"
#: The agent's /metrics port (dcgm-exporter's is 9400; the harness's DEFAULT_METRICS_PORT too).
DEFAULT_AGENT_METRICS_PORT: Final = 9401

# --- metrics: dcgm-exporter's names and labels -----------------------------------------------------------------
#: The limit the driver enforces after every limiter (W); DCGM_FI_DEV_POWER_MGMT_LIMIT is the one set.
METRIC_ENFORCED_POWER_LIMIT: Final = "DCGM_FI_DEV_ENFORCED_POWER_LIMIT"
LABEL_GPU: Final = "gpu"
LABEL_UUID: Final = "UUID"
LABEL_PCI_BUS_ID: Final = "pci_bus_id"
LABEL_DEVICE: Final = "device"
LABEL_MODEL_NAME: Final = "modelName"
LABEL_HOSTNAME: Final = "Hostname"
LABEL_CONTAINER: Final = "container"
LABEL_NAMESPACE: Final = "namespace"
LABEL_POD: Final = "pod"
#: dcgm-exporter's label order for a GPU, then for the pod that holds it (absent when none does).
DCGM_GPU_LABELS: Final[tuple[str, ...]] = (
    LABEL_GPU, LABEL_UUID, LABEL_PCI_BUS_ID, LABEL_DEVICE, LABEL_MODEL_NAME, LABEL_HOSTNAME,
)
DCGM_POD_LABELS: Final[tuple[str, ...]] = (LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_POD)
#: "nvml" or "simulated", as on the harness's series (dcgm-exporter itself has no such label).
LABEL_SOURCE: Final = _names.METRIC_LABEL_SOURCE

# --- metrics: the agent's own ----------------------------------------------------------------------------------
LABEL_JOB_UID: Final = "job_uid"
LABEL_REASON: Final = "reason"
LABEL_ERROR: Final = "error"
LABEL_OPERATION: Final = "operation"
LABEL_INPUT: Final = "input"
LABEL_DEVICE_ID: Final = "device_id"
#: The limit the agent wants on a GPU (W), with the reason (one of REASONS) and the job it is for.
METRIC_AGENT_DESIRED_LIMIT: Final = "etj_node_agent_desired_power_limit_watts"
#: 1 while the last operation on a GPU failed (labels: the GPU's, operation, error kind).
METRIC_AGENT_GPU_ERROR: Final = "etj_node_agent_gpu_error"
#: Failed attempts to set a GPU's limit (a counter; labels UUID, Hostname, error).
METRIC_AGENT_APPLY_ERRORS: Final = "etj_node_agent_apply_errors_total"
#: Limits set (a counter; labels UUID, Hostname).
METRIC_AGENT_APPLIES: Final = "etj_node_agent_applies_total"
#: 1 per allocation that names a device this node does not have (labels device_id, pod, namespace, container).
METRIC_AGENT_UNKNOWN_DEVICE: Final = "etj_node_agent_unknown_device"
#: 1 when the last read of an input (kubelet, api) succeeded.
METRIC_AGENT_INPUT_UP: Final = "etj_node_agent_input_up"
#: Seconds since the last good read of an input (since the agent's start when there was none).
METRIC_AGENT_INPUT_AGE: Final = "etj_node_agent_input_age_seconds"
#: 1 when an input failed for longer than the grace: the agent then resets the GPUs it cannot attribute.
METRIC_AGENT_INPUT_EXPIRED: Final = "etj_node_agent_input_expired"
METRIC_AGENT_CYCLES: Final = "etj_node_agent_cycles_total"
#: Always 1; labels Hostname and source (the GPU backend: nvml or simulated).
METRIC_AGENT_INFO: Final = "etj_node_agent_info"
AGENT_METRICS: Final[tuple[str, ...]] = (
    METRIC_AGENT_DESIRED_LIMIT,
    METRIC_AGENT_GPU_ERROR,
    METRIC_AGENT_APPLY_ERRORS,
    METRIC_AGENT_APPLIES,
    METRIC_AGENT_UNKNOWN_DEVICE,
    METRIC_AGENT_INPUT_UP,
    METRIC_AGENT_INPUT_AGE,
    METRIC_AGENT_INPUT_EXPIRED,
    METRIC_AGENT_CYCLES,
    METRIC_AGENT_INFO,
)
INPUT_KUBELET: Final = "kubelet"
INPUT_API: Final = "api"
OPERATION_DISCOVER: Final = "discover"
OPERATION_READ: Final = "read"
OPERATION_SET: Final = "set"

# --- why a GPU gets its desired limit (the ``reason`` label) ----------------------------------------------------
REASON_JOB_LIMIT: Final = "JobLimit"
REASON_JOB_LIMIT_CLAMPED: Final = "JobLimitClamped"
#: Auto mode with an operator cap: the agent only lowers a limit above the cap (the pod chooses below it).
REASON_JOB_CEILING: Final = "JobCeiling"
#: Auto mode without a cap: the pod's harness sets the limit; the agent leaves it while the pod holds the GPU.
REASON_POD_MANAGED: Final = "PodManaged"
#: Auto mode through the agent: the limit the operator answered to the harness's request
#: (``status.control.autoLimitWattsPerGPU``), clamped to the card's range.
REASON_AUTO_CANDIDATE: Final = "AutoCandidate"
#: Auto mode, the operator's cap lifted: the agent gives back the limit it had lowered (the pod's own choice).
REASON_CEILING_LIFTED: Final = "CeilingLifted"
REASON_NOT_HELD: Final = "NotHeld"
REASON_UNMANAGED_POD: Final = "UnmanagedPod"
REASON_POD_UNKNOWN: Final = "PodUnknown"
REASON_POD_FINISHED: Final = "PodFinished"
REASON_JOB_GONE: Final = "JobGone"
REASON_NO_LIMIT_ASKED: Final = "NoLimitAsked"
REASON_SHARED: Final = "SharedGpu"
#: An input (kubelet, API) has not answered since the agent started: the limit in force is kept for now.
REASON_INPUTS_PENDING: Final = "InputsPending"
#: An input failed for longer than the grace: the GPU goes back to its default limit.
REASON_INPUTS_EXPIRED: Final = "InputsExpired"
REASONS: Final[tuple[str, ...]] = (
    REASON_JOB_LIMIT,
    REASON_JOB_LIMIT_CLAMPED,
    REASON_JOB_CEILING,
    REASON_POD_MANAGED,
    REASON_AUTO_CANDIDATE,
    REASON_CEILING_LIFTED,
    REASON_NOT_HELD,
    REASON_UNMANAGED_POD,
    REASON_POD_UNKNOWN,
    REASON_POD_FINISHED,
    REASON_JOB_GONE,
    REASON_NO_LIMIT_ASKED,
    REASON_SHARED,
    REASON_INPUTS_PENDING,
    REASON_INPUTS_EXPIRED,
)

# --- error kinds (the ``error`` label): NVML's errors, grouped ---------------------------------------------------
ERROR_NO_PERMISSION: Final = "NoPermission"
ERROR_NOT_SUPPORTED: Final = "NotSupported"
ERROR_INVALID_ARGUMENT: Final = "InvalidArgument"
ERROR_GPU_NOT_FOUND: Final = "GpuNotFound"
ERROR_GPU_LOST: Final = "GpuLost"
ERROR_LIBRARY: Final = "LibraryError"
ERROR_TIMEOUT: Final = "Timeout"
ERROR_UNKNOWN: Final = "Unknown"
ERROR_KINDS: Final[tuple[str, ...]] = (
    ERROR_NO_PERMISSION,
    ERROR_NOT_SUPPORTED,
    ERROR_INVALID_ARGUMENT,
    ERROR_GPU_NOT_FOUND,
    ERROR_GPU_LOST,
    ERROR_LIBRARY,
    ERROR_TIMEOUT,
    ERROR_UNKNOWN,
)
