"""Names shared by the operator and the training harness.

This module is the single agreement on names between ``etj_operator`` (which writes pod environments and
``status.control``) and ``etj_workload`` (which reads them and writes ``status.workload``): the API group and
kind, labels and annotations, environment variables, status keys and metric names. It imports nothing beyond
the standard library (and its own package), so the harness can import it without the operator's
dependencies, and the operator can import it without torch. ``etj_operator.contract`` re-exports it.
"""

from __future__ import annotations

from typing import Final

from etj_contract.status import TERMINAL as _TERMINAL
from etj_contract.status import Phase

__all__ = [
    "ANNOTATION_GANG_GENERATION",
    "ANNOTATION_WORLD",
    "API_VERSION",
    "CONTROL",
    "CONTROL_AUTO_LIMIT_WATTS_PER_GPU",
    "CONTROL_AUTO_REQUEST_SEQ",
    "CONTROL_CHECKPOINT_REQUESTED",
    "CONTROL_ENERGY_FRACTION",
    "CONTROL_POWER_LIMIT_WATTS_PER_GPU",
    "CONTROL_STAGE_REQUESTED",
    "CONTROL_STOP_REQUESTED",
    "DEFAULT_MASTER_PORT",
    "DEFAULT_METRICS_PORT",
    "ENV_ETJ_CHECKPOINT_DIR",
    "ENV_ETJ_COMPRESSION_PLAN",
    "ENV_ETJ_CONTROL_POLL_SECONDS",
    "ENV_ETJ_CONTROL_POLL_STEPS",
    "ENV_ETJ_GANG_GENERATION",
    "ENV_ETJ_GPU_BACKEND",
    "ENV_ETJ_METRICS_PORT",
    "ENV_ETJ_NAME",
    "ENV_ETJ_NAMESPACE",
    "ENV_ETJ_POWER_ENFORCER",
    "ENV_ETJ_POWER_POLICY",
    "ENV_ETJ_REPLICA_INDEX",
    "ENV_MASTER_ADDR",
    "ENV_MASTER_PORT",
    "ENV_NODE_RANK",
    "ENV_PET_MASTER_ADDR",
    "ENV_PET_MASTER_PORT",
    "ENV_PET_MAX_RESTARTS",
    "ENV_PET_NNODES",
    "ENV_PET_NODE_RANK",
    "ENV_PET_NPROC_PER_NODE",
    "ENV_PET_RDZV_BACKEND",
    "ENV_PET_RDZV_ENDPOINT",
    "ENV_PET_RDZV_ID",
    "ENV_RANK",
    "ENV_WORLD_SIZE",
    "FORECAST",
    "GROUP",
    "KIND",
    "LABEL_JOB_NAME",
    "LABEL_KUEUE_QUEUE",
    "LABEL_MANAGED_BY",
    "LABEL_REPLICA_INDEX",
    "LABEL_ROLE",
    "MANAGED_BY",
    "MAX_CONTROL_POLL_SECONDS",
    "METRIC_LABEL_SOURCE",
    "METRIC_POWER_MGMT_LIMIT",
    "METRIC_POWER_USAGE",
    "METRIC_TOTAL_ENERGY_CONSUMPTION",
    "PHASES",
    "PLURAL",
    "POWER_ENFORCER_AGENT",
    "POWER_ENFORCER_POD",
    "REPORT_KIND",
    "REPORT_PLURAL",
    "REPORT_SHORT_NAME",
    "REPORT_SINGULAR",
    "ROLE_WORKER",
    "SHORT_NAME",
    "SINGULAR",
    "STATUS_LEADER_TERM",
    "TERMINAL_PHASES",
    "TRAINER_CONTAINER",
    "VERSION",
    "WORKLOAD",
    "WORKLOAD_ACCURACY",
    "WORKLOAD_CHECKPOINT",
    "WORKLOAD_COMMUNICATION",
    "WORKLOAD_EPOCH",
    "WORKLOAD_GPU_SOURCE",
    "WORKLOAD_LOSS",
    "WORKLOAD_POWER_LIMIT_WATTS",
    "WORKLOAD_POWER_PROFILE",
    "WORKLOAD_SAMPLES_PER_SECOND",
    "WORKLOAD_SAMPLES_PER_STEP",
    "WORKLOAD_STAGES",
    "WORKLOAD_STEP",
    "WORKLOAD_STEPS_TOTAL",
    "WORKLOAD_STOP_REASON",
    "WORKLOAD_UPDATED",
]

# --- the API -------------------------------------------------------------------------------------
GROUP: Final = "efficienttraining.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "EfficientTrainingJob"
PLURAL: Final = "efficienttrainingjobs"
SINGULAR: Final = "efficienttrainingjob"
SHORT_NAME: Final = "etj"
#: The workload's report: one per job, same name, created by the operator (controller ownerReference to the
#: job); the job's ServiceAccount may patch only its status subresource (docs/security.md).
REPORT_KIND: Final = "EfficientTrainingJobReport"
REPORT_PLURAL: Final = "efficienttrainingjobreports"
#: ``status.leaderTerm``: the leader-election term of the operator that last took the job over; every status
#: write of the operator tests it, so an earlier leader's late write never lands (docs/reliability.md).
STATUS_LEADER_TERM: Final = "leaderTerm"
REPORT_SINGULAR: Final = "efficienttrainingjobreport"
REPORT_SHORT_NAME: Final = "etjreport"

# --- labels and annotations on the children the operator creates ---------------------------------
LABEL_JOB_NAME: Final = f"{GROUP}/job-name"
LABEL_REPLICA_INDEX: Final = f"{GROUP}/replica-index"
LABEL_ROLE: Final = f"{GROUP}/role"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "efficient-training-operator"
ROLE_WORKER: Final = "worker"
#: Pod annotation: the gang generation (status.restarts when the pod was made); stale pods are replaced.
ANNOTATION_GANG_GENERATION: Final = f"{GROUP}/gang-generation"
#: Pod annotation: the spec's world when the pod was made, as ``field=digest`` pairs (the fields that shape the
#: pods' world and env: replicas, nprocPerNode, elastic, template, checkpoint, power, compression). A pod of
#: another world is replaced with its whole gang; a pod without it (an older operator's) counts as current.
ANNOTATION_WORLD: Final = f"{GROUP}/world"
#: Kueue's queue label, on the job (never on its pods: etj_operator.kueue).
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"

TRAINER_CONTAINER: Final = "trainer"
DEFAULT_MASTER_PORT: Final = 29500
DEFAULT_METRICS_PORT: Final = 9400

# --- torchrun-compatible environment (names fixed by torch.distributed.run) ----------------------
ENV_MASTER_ADDR: Final = "MASTER_ADDR"
ENV_MASTER_PORT: Final = "MASTER_PORT"
ENV_WORLD_SIZE: Final = "WORLD_SIZE"
ENV_RANK: Final = "RANK"
ENV_NODE_RANK: Final = "NODE_RANK"
ENV_PET_NNODES: Final = "PET_NNODES"
ENV_PET_NPROC_PER_NODE: Final = "PET_NPROC_PER_NODE"
ENV_PET_NODE_RANK: Final = "PET_NODE_RANK"
ENV_PET_MASTER_ADDR: Final = "PET_MASTER_ADDR"
ENV_PET_MASTER_PORT: Final = "PET_MASTER_PORT"
ENV_PET_RDZV_ENDPOINT: Final = "PET_RDZV_ENDPOINT"
ENV_PET_RDZV_BACKEND: Final = "PET_RDZV_BACKEND"
ENV_PET_RDZV_ID: Final = "PET_RDZV_ID"
ENV_PET_MAX_RESTARTS: Final = "PET_MAX_RESTARTS"

# --- the operator's environment for the harness --------------------------------------------------
ENV_ETJ_NAME: Final = "ETJ_NAME"
ENV_ETJ_NAMESPACE: Final = "ETJ_NAMESPACE"
ENV_ETJ_REPLICA_INDEX: Final = "ETJ_REPLICA_INDEX"
#: JSON list of compression stages, each as in spec.compression.stages plus the guard (see models).
ENV_ETJ_COMPRESSION_PLAN: Final = "ETJ_COMPRESSION_PLAN"
#: Directory where the harness saves and resumes checkpoints (spec.checkpoint.path); unset: no checkpoints.
ENV_ETJ_CHECKPOINT_DIR: Final = "ETJ_CHECKPOINT_DIR"
#: JSON of spec.energy.power (mode Unmanaged|Fixed|Auto, limitWatts, auto {...}).
ENV_ETJ_POWER_POLICY: Final = "ETJ_POWER_POLICY"
#: Port of the harness's DCGM-compatible /metrics endpoint (Direct telemetry).
ENV_ETJ_METRICS_PORT: Final = "ETJ_METRICS_PORT"
#: How many training steps between two control polls (read of status.control by rank 0, its report published),
#: when ETJ_CONTROL_POLL_SECONDS is 0.
ENV_ETJ_CONTROL_POLL_STEPS: Final = "ETJ_CONTROL_POLL_STEPS"
#: About how many seconds between two control polls (rank 0 picks the step of the next one from the step time it
#: measured); 0 or unset: every ETJ_CONTROL_POLL_STEPS steps.
ENV_ETJ_CONTROL_POLL_SECONDS: Final = "ETJ_CONTROL_POLL_SECONDS"
#: The longest ETJ_CONTROL_POLL_SECONDS: the operator's stop, checkpoint and cap requests, and the checkpoint
#: after a SIGTERM, wait for a poll.
MAX_CONTROL_POLL_SECONDS: Final = 60.0
#: "nvml", "simulated" or "auto" (nvml when a GPU is visible, else simulated).
ENV_ETJ_GPU_BACKEND: Final = "ETJ_GPU_BACKEND"
#: Gang generation of this pod (the job's status.restarts when the pod was created).
ENV_ETJ_GANG_GENERATION: Final = "ETJ_GANG_GENERATION"
#: Who sets the GPU power limits of a Fixed policy and of the operator's throttle: "agent" (the node agent,
#: docs/node-agent.md: the harness only reports them, and the pod has no SYS_ADMIN) or "pod" (the harness, through
#: NVML; unset means "pod"). Auto mode's candidate limits are the harness's either way.
ENV_ETJ_POWER_ENFORCER: Final = "ETJ_POWER_ENFORCER"
POWER_ENFORCER_AGENT: Final = "agent"
POWER_ENFORCER_POD: Final = "pod"

# --- status.control (operator -> workload), camelCase keys as in the CRD ------------------------
CONTROL: Final = "control"
CONTROL_POWER_LIMIT_WATTS_PER_GPU: Final = "powerLimitWattsPerGPU"
#: A monotonically increasing request number; 0 or absent means none. The harness acknowledges a
#: request by writing the same number to status.workload.checkpoint.acknowledged after saving.
CONTROL_CHECKPOINT_REQUESTED: Final = "checkpointRequested"
CONTROL_STOP_REQUESTED: Final = "stopRequested"
#: Name of a compression stage the operator commands (energyFraction triggers).
CONTROL_STAGE_REQUESTED: Final = "stageRequested"
#: Fraction of the job's energy budget used so far (0..1), for energyFraction triggers.
CONTROL_ENERGY_FRACTION: Final = "energyFraction"
#: Mode Auto with the node agent: the operator's answer to the harness's candidate limit
#: (status.workload.powerProfile.requestedWatts, clamped into the allowed range and under the throttle), which
#: the agent applies to the job's GPUs; and the request number it answers (powerProfile.requestSeq).
CONTROL_AUTO_LIMIT_WATTS_PER_GPU: Final = "autoLimitWattsPerGPU"
CONTROL_AUTO_REQUEST_SEQ: Final = "autoRequestSeq"

# --- status.workload (workload -> operator) ------------------------------------------------------
WORKLOAD: Final = "workload"
WORKLOAD_EPOCH: Final = "epoch"
WORKLOAD_STEP: Final = "step"
WORKLOAD_SAMPLES_PER_SECOND: Final = "samplesPerSecond"
WORKLOAD_LOSS: Final = "loss"
WORKLOAD_ACCURACY: Final = "accuracy"
WORKLOAD_GPU_SOURCE: Final = "gpuSource"  # "nvml" or "simulated"
WORKLOAD_POWER_PROFILE: Final = "powerProfile"
WORKLOAD_POWER_LIMIT_WATTS: Final = "powerLimitWatts"
WORKLOAD_CHECKPOINT: Final = "checkpoint"  # {acknowledged, step, epoch, path, time}
WORKLOAD_STAGES: Final = "stages"  # list of per-stage results
WORKLOAD_UPDATED: Final = "updateTime"
#: The global steps the whole job plans (epochs x steps per epoch, or the framework's max_steps); absent when
#: the training program does not say (the forecast is then unknown).
WORKLOAD_STEPS_TOTAL: Final = "stepsTotal"
#: Samples one global step processes (the global batch: per-rank batch x world size).
WORKLOAD_SAMPLES_PER_STEP: Final = "samplesPerStep"
#: Rank 0's timing of gradient communication (etj_contract.report.CommunicationStats).
WORKLOAD_COMMUNICATION: Final = "communication"

# --- status.forecast (operator) -------------------------------------------------------------------
#: Time and energy to completion (docs/energy.md, "Forecast").
FORECAST: Final = "forecast"

# --- phases (the values of etj_contract.status.Phase, as plain strings) -------------------------
#: Every value of the CRD's status.phase enum, in the CRD's order.
PHASES: Final[tuple[str, ...]] = tuple(phase.value for phase in Phase)
TERMINAL_PHASES: Final[tuple[str, ...]] = tuple(phase.value for phase in _TERMINAL)

# --- added by the harness (etj_workload) ----------------------------------------------------------
#: Why the workload stopped before its last epoch: "StopRequested", "SIGTERM", "AccuracyGuard" (the
#: guard's Stop action), "Quantized" (a kept quantize stage ends training) or "StepLimit" (--stop-after-steps).
WORKLOAD_STOP_REASON: Final = "stopReason"
#: DCGM-compatible metric names the harness's /metrics endpoint serves (dcgm-exporter units: W and mJ).
METRIC_POWER_USAGE: Final = "DCGM_FI_DEV_POWER_USAGE"
METRIC_TOTAL_ENERGY_CONSUMPTION: Final = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
METRIC_POWER_MGMT_LIMIT: Final = "DCGM_FI_DEV_POWER_MGMT_LIMIT"
#: Extra label on the harness's GPU series: "nvml" or "simulated" (dcgm-exporter itself has no such label).
METRIC_LABEL_SOURCE: Final = "source"
