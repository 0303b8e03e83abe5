"""Pure builders of the children of an EfficientTrainingJob (no I/O; unit-tested as plain dicts).

Children: a ServiceAccount, a Role limited to the job itself and its report, a RoleBinding, the job's
report (an ``EfficientTrainingJobReport``), a headless Service, and one Pod per replica. Every child carries
an ownerReference to the job (garbage collection on deletion) and the job's labels, and has a deterministic
name (an operator restart re-creates nothing twice).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

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


# ----- the world: the spec fields that shape the pods ---------------------------------------------------

#: The fields of the world annotation, in the order a change is described, with the spec path each stands for.
WORLD_FIELDS: Final = (
    ("replicas", "replicas"),
    ("nprocPerNode", "nprocPerNode"),
    ("elastic", "elastic"),
    ("template", "template"),
    ("checkpoint", "checkpoint"),
    ("power", "energy.power"),
    ("compression", "compression"),
)
#: Fields whose value is shown as it is in a change ("replicas 2 -> 3"); the others are digests ("template changed").
_WORLD_LITERAL: Final = frozenset({"replicas", "nprocPerNode", "elastic"})
_NONE: Final = "-"


def _digest(value: Any) -> str:
    """A short stable digest of a JSON value: sha256 of its canonical JSON (sorted keys, no spaces), 12 hex digits."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def world_of(spec: JobSpec) -> dict[str, str]:
    """The spec's world: one value per field that shapes the pods' world or their env (``field -> value``).

    Computed from the parsed spec, field by field, never from a built manifest: what the operator adds to a pod
    (labels, env values, what a newer operator version adds) is not in it, so an operator upgrade restarts no
    gang. The parsed spec has the parser's defaults applied, so a default the API server fills in later (a newer
    CRD) changes nothing either. ``replicas`` is left out for elastic jobs: torchrun's c10d rendezvous takes
    nodes joining and leaving, so scaling an elastic job adds or removes pods without a gang restart.

    What is not here applies without touching running pods: ``suspend``, ``runPolicy``, ``energy.telemetry``,
    ``energy.energyBudget``, ``energy.carbon``, ``energy.placement`` (new pods get its affinity), the value of
    ``energy.power.budgetWatts`` (the operator's throttle enforces it through ``status.control``; only whether
    a budget is set reaches the pods, as the SYS_ADMIN capability).
    """
    world: dict[str, str] = {}
    if spec.elastic is None:
        world["replicas"] = str(spec.replicas)
        world["elastic"] = _NONE
    else:
        e = spec.elastic
        world["elastic"] = f"{e.min_replicas}:{e.max_replicas}:{e.max_restarts}"
    world["nprocPerNode"] = str(spec.nproc_per_node)
    world["template"] = _digest(dict(spec.template))
    checkpoint = spec.checkpoint
    world["checkpoint"] = (
        _NONE
        if checkpoint is None
        else _digest({"path": checkpoint.path, "volume": dict(checkpoint.volume) if checkpoint.volume else None})
    )
    power = spec.energy.power
    auto = power.auto
    world["power"] = _digest(
        {
            "mode": power.mode,
            "limitWatts": power.limit_watts,
            "auto": None
            if auto is None
            else [auto.eta, auto.warmup_steps, auto.profile_steps, auto.step_watts, auto.max_slowdown],
            "managed": power.managed,
        }
    )
    comp = spec.compression
    world["compression"] = (
        _NONE
        if not comp.stages
        else _digest(
            {
                "stages": [dict(stage.raw) for stage in comp.stages],
                "accuracyGuard": [comp.max_accuracy_drop, comp.guard_action],
            }
        )
    )
    return world


def format_world(world: Mapping[str, str]) -> str:
    """The world as the pod annotation holds it: ``field=value`` pairs, sorted, comma-separated."""
    return ",".join(f"{key}={world[key]}" for key in sorted(world))


def parse_world(text: str | None) -> dict[str, str]:
    """Read a world annotation back; unreadable pairs are skipped (an empty dict: the pod's world is unknown)."""
    world: dict[str, str] = {}
    for pair in (text or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() and value.strip():
            world[key.strip()] = value.strip()
    return world


def world_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """How world ``old`` (a pod's) differs from ``new`` (the spec's), as phrases; empty: the same world.

    Only fields known to both count: a field a pod does not carry (made by an older operator, or an elastic job's
    replicas) is no change, so an operator upgrade that adds a field restarts nothing.
    """
    changes = []
    for key, path in WORLD_FIELDS:
        before, after = old.get(key), new.get(key)
        if before is None or after is None or before == after:
            continue
        if key in _WORLD_LITERAL:
            changes.append(f"{path} {_shown(before)} -> {_shown(after)}")
        else:
            changes.append(f"{path} changed")
    return changes


def _shown(value: str) -> str:
    return "off" if value == _NONE else value


def generated_env_names(spec: JobSpec) -> frozenset[str]:
    """The names of every variable the operator sets in the trainer container (the same for every pod)."""
    ctx = EnvContext(job_name="job", namespace="namespace", spec=spec, replica_index=0, gang_generation=0)
    # ETJ_POWER_ENFORCER too: the operator alone says who enforces the caps (``_shape_trainer`` always drops it)
    return frozenset(var["name"] for var in worker_env(ctx)) | {c.ENV_ETJ_POWER_ENFORCER}


def env_overrides(spec: JobSpec) -> tuple[str, ...]:
    """The template trainer's env names that the operator's own variables replace (sorted; empty: none).

    ``_shape_trainer`` drops these entries from the user's env (``value`` or ``valueFrom`` alike) and sets the
    operator's. Variables that come in through ``envFrom`` are shadowed too (explicit env wins over envFrom in
    Kubernetes), but their names are not known without reading the ConfigMap or Secret, so they are not listed.
    """
    containers = (spec.template.get("spec") or {}).get("containers") or []
    trainer = next((x for x in containers if isinstance(x, Mapping) and x.get("name") == c.TRAINER_CONTAINER), None)
    if trainer is None:
        return ()
    names = {v.get("name") for v in trainer.get("env") or [] if isinstance(v, Mapping)}
    return tuple(sorted(n for n in names if isinstance(n, str) and n in generated_env_names(spec)))


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
    """Least privilege for the harness: read its own job and its report, patch its report's status; nothing else.

    Nothing on the job's status: phase, restarts, energy, control, policy and placement are the operator's
    alone (docs/security.md, "The trust boundary").
    """
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
                "resources": [c.REPORT_PLURAL],
                "resourceNames": [report_name(job)],
                "verbs": ["get"],
            },
            {
                "apiGroups": [c.GROUP],
                "resources": [f"{c.REPORT_PLURAL}/status"],
                "resourceNames": [report_name(job)],
                "verbs": ["patch"],
            },
        ],
    }


def report_name(job: JobRef) -> str:
    """The job's report has the job's name."""
    return job.name


def build_report(job: JobRef) -> Manifest:
    """The job's report: the one object its pods may write (its status), owned by the job, empty at first."""
    return {"apiVersion": c.API_VERSION, "kind": c.REPORT_KIND, "metadata": _metadata(job, report_name(job))}


def build_role_binding(job: JobRef, subject_service_account: str | None = None) -> Manifest:
    """Bind the job's Role to the job's own ServiceAccount, the one its pods always run as.

    ``subject_service_account`` may only repeat that name: a job's report must be writable by its pods alone,
    so a ServiceAccount that other pods may share is never bound (ValueError).
    """
    own = service_account_name(job)
    if subject_service_account not in (None, own):
        raise ValueError(f"the job's Role is bound to {own} only, not to {subject_service_account}")
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(job, service_account_name(job)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account_name(job)},
        "subjects": [{"kind": "ServiceAccount", "name": own, "namespace": job.namespace}],
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
    """The ServiceAccount pods run as: always the job's own, whatever the template says.

    Two jobs' pods sharing a ServiceAccount could write each other's report; the CRD and the operator's parser
    refuse a template naming another one (``models.parse_spec``), and this holds even for one that got through.
    """
    return service_account_name(job)


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
    #: The harness's control poll interval in seconds (0: every ``control_poll_steps`` steps).
    control_poll_seconds: float = 1.0
    #: The node agent runs on the GPU nodes (``OperatorConfig.node_agent``): it enforces every limit (Fixed, the
    #: throttle, Auto's candidates as the operator answers them), so no pod gets SYS_ADMIN (:meth:`agent_enforces`).
    node_agent: bool = False

    def agent_enforces(self, spec: JobSpec) -> bool:
        """Whether the node agent, not the pod's harness, sets this job's GPU power limits.

        True with the agent, in every mode: the agent applies a Fixed ``limitWatts``, the operator's throttle (a
        budget), and in mode Auto the candidate the harness asks for in its report, as the operator answers it in
        ``status.control.autoLimitWattsPerGPU`` (docs/node-agent.md). The pod then needs no capability. Without
        the agent the harness sets the limits through NVML in the pod, which needs SYS_ADMIN.
        """
        return self.node_agent


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
    # The job's kueue.x-k8s.io/queue-name label is not copied: on a pod it would make Kueue's pod integration
    # admit the pods one by one; the job is queued as a whole through its Workload (etj_operator.kueue).
    annotations = {
        **(tmeta.get("annotations") or {}),
        c.ANNOTATION_GANG_GENERATION: str(gang_generation),
        c.ANNOTATION_WORLD: format_world(world_of(spec)),
    }

    pod_spec["restartPolicy"] = "Never"  # the operator restarts the whole gang, never the kubelet one pod
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = job.name
    pod_spec["serviceAccountName"] = pod_service_account(spec, job)
    pod_spec.pop("serviceAccount", None)  # the deprecated alias: serviceAccountName decides
    if placement is not None:
        apply_placement(pod_spec, placement)

    ctx = EnvContext(
        job_name=job.name,
        namespace=job.namespace,
        spec=spec,
        replica_index=index,
        gang_generation=gang_generation,
        control_poll_steps=options.control_poll_steps,
        control_poll_seconds=options.control_poll_seconds,
        gpu_backend=options.gpu_backend,
    )
    containers = pod_spec.get("containers") or []
    for container in containers:
        if container.get("name") == c.TRAINER_CONTAINER:
            _shape_trainer(container, ctx, spec, options)
    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        volumes = [v for v in pod_spec.get("volumes") or [] if v.get("name") != CHECKPOINT_VOLUME]
        volumes.append({"name": CHECKPOINT_VOLUME, **copy.deepcopy(dict(spec.checkpoint.volume))})
        pod_spec["volumes"] = volumes

    metadata = _metadata(job, name, labels)
    metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _shape_trainer(container: dict[str, Any], ctx: EnvContext, spec: JobSpec, options: PodOptions) -> None:
    generated = worker_env(ctx)
    if options.node_agent:  # the harness then sets no limit: it reports, and in Auto mode asks in its report
        generated.append({"name": c.ENV_ETJ_POWER_ENFORCER, "value": c.POWER_ENFORCER_AGENT})
    ours = {v["name"] for v in generated} | {c.ENV_ETJ_POWER_ENFORCER}  # the template never decides who enforces
    user_env = [v for v in container.get("env") or [] if v.get("name") not in ours]
    container["env"] = user_env + generated

    ports = [p for p in container.get("ports") or [] if p.get("name") not in ("rendezvous", "metrics")]
    ports.append({"name": "rendezvous", "containerPort": c.DEFAULT_MASTER_PORT})
    ports.append({"name": "metrics", "containerPort": c.DEFAULT_METRICS_PORT})
    container["ports"] = ports

    if spec.energy.power.managed and not options.agent_enforces(spec):
        # NVML's nvmlDeviceSetPowerManagementLimit needs CAP_SYS_ADMIN inside the container; with the node agent
        # no pod sets a limit (the explicit fallback without it: the in-pod NVML path).
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
