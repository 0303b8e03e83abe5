"""Pure builders of the children of an EfficientTrainingJob (no I/O; unit-tested as plain dicts).

Children: a ServiceAccount, a Role limited to the job itself, a RoleBinding, a headless Service, and one
Pod per replica. Every child carries an ownerReference to the job (garbage collection on deletion) and
the job's labels, and has a deterministic name (an operator restart re-creates nothing twice).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etj_operator import contract as c
from etj_operator.envvars import EnvContext, worker_env, worker_pod_name
from etj_operator.models import JobSpec

Manifest = dict[str, Any]

CHECKPOINT_VOLUME = "etj-checkpoint"


@dataclass(frozen=True)
class JobRef:
    """Identity of a job as its children need it."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobRef:
        """Read the identity out of a job object."""
        meta = body.get("metadata", {})
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid", ""),
            labels=dict(meta.get("labels") or {}),
        )


def owner_reference(job: JobRef) -> dict[str, Any]:
    """The controller ownerReference every child carries."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(job: JobRef) -> dict[str, str]:
    """Labels shared by all of a job's children (selectors use the job-name label)."""
    return {c.LABEL_JOB_NAME: job.name, c.LABEL_MANAGED_BY: c.MANAGED_BY}


def _metadata(job: JobRef, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": {**child_labels(job), **(labels or {})},
        "ownerReferences": [owner_reference(job)],
    }


def service_account_name(job: JobRef) -> str:
    """Name of the per-job ServiceAccount the harness uses to talk to the API."""
    return f"{job.name}-etj"


def build_service_account(job: JobRef) -> Manifest:
    """The job's own ServiceAccount."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(job, service_account_name(job))}


def build_role(job: JobRef) -> Manifest:
    """Least privilege for the harness: read its own job, patch its own status; nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(job, service_account_name(job)),
        "rules": [
            {
                "apiGroups": [c.GROUP],
                "resources": [c.PLURAL],
                "resourceNames": [job.name],
                "verbs": ["get", "watch"],
            },
            {
                "apiGroups": [c.GROUP],
                "resources": [f"{c.PLURAL}/status"],
                "resourceNames": [job.name],
                "verbs": ["get", "patch"],
            },
        ],
    }


def build_role_binding(job: JobRef, subject_service_account: str) -> Manifest:
    """Bind the job's Role to the ServiceAccount its pods run as."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(job, service_account_name(job)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account_name(job)},
        "subjects": [{"kind": "ServiceAccount", "name": subject_service_account, "namespace": job.namespace}],
    }


def build_service(job: JobRef) -> Manifest:
    """Headless Service named after the job: gives worker pods DNS names before they are ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, job.name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {c.LABEL_JOB_NAME: job.name},
            "ports": [
                {"name": "rendezvous", "port": c.DEFAULT_MASTER_PORT, "targetPort": c.DEFAULT_MASTER_PORT},
                {"name": "metrics", "port": c.DEFAULT_METRICS_PORT, "targetPort": c.DEFAULT_METRICS_PORT},
            ],
        },
    }


def pod_service_account(spec: JobSpec, job: JobRef) -> str:
    """The ServiceAccount pods run as: the template's if it names one, else the job's own."""
    name = spec.template.get("spec", {}).get("serviceAccountName")
    return name if isinstance(name, str) and name else service_account_name(job)


@dataclass(frozen=True)
class PlacementDirective:
    """Where new pods may go: nodes to avoid (reschedules) and node pools to prefer."""

    avoid_nodes: tuple[str, ...] = ()
    preferred_pools: tuple[str, ...] = ()
    pool_label: str = "efficienttraining.dev/node-pool"


def apply_placement(pod_spec: dict[str, Any], directive: PlacementDirective) -> None:
    """Merge the directive into the pod's nodeAffinity, keeping every term the template already has."""
    if not directive.avoid_nodes and not directive.preferred_pools:
        return
    affinity = pod_spec.setdefault("affinity", {})
    node = affinity.setdefault("nodeAffinity", {})
    if directive.avoid_nodes:
        avoid = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": sorted(directive.avoid_nodes)}
        required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        terms = required.setdefault("nodeSelectorTerms", [])
        if not terms:
            terms.append({"matchExpressions": []})
        for term in terms:  # terms are ORed: the exclusion must hold in every one of them
            term.setdefault("matchExpressions", []).append(dict(avoid))
    if directive.preferred_pools:
        preferred = node.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
        preferred.append(
            {
                "weight": 50,
                "preference": {
                    "matchExpressions": [
                        {"key": directive.pool_label, "operator": "In", "values": list(directive.preferred_pools)}
                    ]
                },
            }
        )


@dataclass(frozen=True)
class PodOptions:
    """Operator-wide settings that shape worker pods."""

    control_poll_steps: int = 10
    gpu_backend: str = "auto"


def build_worker_pod(
    job: JobRef,
    spec: JobSpec,
    index: int,
    gang_generation: int,
    options: PodOptions | None = None,
    placement: PlacementDirective | None = None,
) -> Manifest:
    """One worker pod from the job's template, with the distributed env and the operator's labels.

    ``placement`` adds node affinity (nodes to avoid after a reschedule, preferred pools).
    """
    options = options or PodOptions()
    template = copy.deepcopy(dict(spec.template))
    tmeta = template.get("metadata") or {}
    pod_spec: dict[str, Any] = template.get("spec") or {}
    name = worker_pod_name(job.name, index)

    labels = {**(tmeta.get("labels") or {}), **child_labels(job)}
    labels[c.LABEL_REPLICA_INDEX] = str(index)
    labels[c.LABEL_ROLE] = c.ROLE_WORKER
    queue = job.labels.get(c.LABEL_KUEUE_QUEUE)
    if queue:
        labels[c.LABEL_KUEUE_QUEUE] = queue
    annotations = {**(tmeta.get("annotations") or {}), c.ANNOTATION_GANG_GENERATION: str(gang_generation)}

    pod_spec["restartPolicy"] = "Never"  # the operator restarts the whole gang, never the kubelet one pod
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = job.name
    pod_spec["serviceAccountName"] = pod_service_account(spec, job)
    if placement is not None:
        apply_placement(pod_spec, placement)

    ctx = EnvContext(
        job_name=job.name,
        namespace=job.namespace,
        spec=spec,
        replica_index=index,
        gang_generation=gang_generation,
        control_poll_steps=options.control_poll_steps,
        gpu_backend=options.gpu_backend,
    )
    containers = pod_spec.get("containers") or []
    for container in containers:
        if container.get("name") == c.TRAINER_CONTAINER:
            _shape_trainer(container, ctx, spec)
    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        volumes = [v for v in pod_spec.get("volumes") or [] if v.get("name") != CHECKPOINT_VOLUME]
        volumes.append({"name": CHECKPOINT_VOLUME, **copy.deepcopy(dict(spec.checkpoint.volume))})
        pod_spec["volumes"] = volumes

    metadata = _metadata(job, name, labels)
    metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _shape_trainer(container: dict[str, Any], ctx: EnvContext, spec: JobSpec) -> None:
    generated = worker_env(ctx)
    ours = {v["name"] for v in generated}
    user_env = [v for v in container.get("env") or [] if v.get("name") not in ours]
    container["env"] = user_env + generated

    ports = [p for p in container.get("ports") or [] if p.get("name") not in ("rendezvous", "metrics")]
    ports.append({"name": "rendezvous", "containerPort": c.DEFAULT_MASTER_PORT})
    ports.append({"name": "metrics", "containerPort": c.DEFAULT_METRICS_PORT})
    container["ports"] = ports

    if spec.energy.power.managed:
        # NVML's nvmlDeviceSetPowerManagementLimit needs CAP_SYS_ADMIN inside the container.
        sc = container.setdefault("securityContext", {})
        caps = sc.setdefault("capabilities", {})
        add = list(caps.get("add") or [])
        if "SYS_ADMIN" not in add:
            add.append("SYS_ADMIN")
        caps["add"] = add

    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != CHECKPOINT_VOLUME]
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path})
        container["volumeMounts"] = mounts


#: The API server refuses longer Event messages; longer ones are cut in the middle.
EVENT_MESSAGE_LIMIT = 1024


def build_event(
    job: Mapping[str, Any], event_type: str, reason: str, message: str, *, component: str, instance: str, now: str
) -> Manifest:
    """A core/v1 Event about the job, as `kubectl describe etj` and `kubectl get events` show it."""
    meta = job.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    if len(message) > EVENT_MESSAGE_LIMIT:
        keep = (EVENT_MESSAGE_LIMIT - 3) // 2
        message = f"{message[:keep]}...{message[-keep:]}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'etj')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "name": meta.get("name", ""),
            "namespace": namespace,
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": event_type,
        "reason": reason,
        "message": message,
        "source": {"component": component},  # the "From" column of `kubectl describe`
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
