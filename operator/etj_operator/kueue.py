"""The operator as Kueue's job integration for EfficientTrainingJob (pure: no I/O, no clock).

Kueue (https://kueue.sigs.k8s.io) decides when a job may start and where; it talks to a job's controller through
the job's ``Workload`` (``kueue.x-k8s.io/v1beta2``, served from Kueue 0.15). Kueue has no controller of its own
for this kind (``integrations.externalFrameworks`` only makes it recognise the kind as an owner), so the
operator plays the part Kueue's ``jobframework`` plays for its built-in jobs (docs/kueue.md). With
``ETJ_KUEUE`` on, for a job labelled ``kueue.x-k8s.io/queue-name``:

* the job gets one Workload, owned by it (controller ownerReference: garbage-collected with the job), named
  after the job and its UID (:func:`workload_name`): one pod set ``worker`` of ``count = spec.replicas`` with
  the job's pod template (its requests, ``nvidia.com/gpu`` included), ``minCount = spec.elastic.minReplicas``
  for an elastic job (partial admission), the queue name, and the priority of the job's
  ``kueue.x-k8s.io/priority-class`` label (a WorkloadPriorityClass) or of its template's ``priorityClassName``
  (a PriorityClass) (:func:`build_workload`);
* no pod exists until the Workload is admitted (QuotaReserved and Admitted True, not Evicted): the phase is
  Queued, condition ``Queued`` carries Kueue's reason and message (:func:`decide`);
* admitted, the pods are built with the admission's pod-set assignment: each assigned ResourceFlavor's
  ``nodeLabels`` as node selectors and its ``tolerations``, then what Ready admission checks add
  (``podSetUpdates``), merged as Kueue's ``podset.Merge`` does (:func:`placement`, :func:`shape_pod`); the job's
  spec is never written;
* evicted (preemption, a stopped queue, ``spec.active`` false): with ``spec.checkpoint``, a checkpoint is asked
  for and awaited as the energy policies' drains do (``control.checkpointRequested``, acknowledged in the
  report, at most ``ETJ_CHECKPOINT_TIMEOUT_SECONDS``), then the pods are deleted; once they are gone the
  admission is cleared (``status.admission`` null, QuotaReserved and Admitted False, Requeued), as the
  jobframework does, and the job shows Queued again with Kueue's reason until it is admitted again, when the
  new gang resumes from the checkpoint;
* finished (Succeeded or Failed), the Workload gets ``Finished=True`` (Kueue then releases its quota); while it
  runs admitted, ``PodsReady`` says whether the whole gang runs (for Kueue's ``waitForPodsReady``).

A change of the pod set (replicas, template, elastic range) or of the queue makes the Workload outdated: the
pods stop, the Workload is replaced and the job queues again. ``spec.suspend: true`` gives the job's place
back (its Workload is deleted once its pods are gone).

The worker pods never carry ``kueue.x-k8s.io/queue-name`` or ``kueue.x-k8s.io/pod-group-name``
(:func:`strip_pod_integration`): Kueue's pod integration would admit them one by one.

The reconciler observes (the Workload and the ResourceFlavors from informers, the priority class when a Workload
is to be made) into a :class:`KueueView`, the pass decides here, and the reconciler writes what
:class:`WorkloadWrites` says after the job's status and before any pod.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from etj_contract import (
    CONTROL,
    KUEUE,
    POLICY,
    TERMINAL,
    ControlSection,
    Drain,
    KueueSection,
    Phase,
    PolicySection,
    WorkloadReport,
)
from etj_operator import conditions as cond
from etj_operator import contract as c
from etj_operator.builders import JobRef, Manifest, child_labels, owner_reference
from etj_operator.lifecycle import Event, PodView, to_rfc3339
from etj_operator.models import JobSpec

__all__ = [
    "API_VERSION",
    "LABEL_PRIORITY_CLASS",
    "LABEL_QUEUE_NAME",
    "POD_SET_NAME",
    "KueueStep",
    "KueueView",
    "Placement",
    "Priority",
    "PriorityClassRef",
    "WorkloadWrites",
    "after_lifecycle",
    "build_workload",
    "decide",
    "placement",
    "priority_class_of",
    "priority_from",
    "queue_name",
    "shape_pod",
    "strip_pod_integration",
    "workload_name",
]

GROUP: Final = "kueue.x-k8s.io"
#: The Workload API this operator speaks: v1beta2, served since Kueue 0.15 (the storage version from 0.16).
API_VERSION: Final = f"{GROUP}/v1beta2"
WORKLOAD_KIND: Final = "Workload"
#: The job's LocalQueue (Kueue's label; the same name as the contract's LABEL_KUEUE_QUEUE).
LABEL_QUEUE_NAME: Final = c.LABEL_KUEUE_QUEUE
#: A WorkloadPriorityClass for the job's Workload (Kueue's label, read before the template's priorityClassName).
LABEL_PRIORITY_CLASS: Final = f"{GROUP}/priority-class"
#: The owner job's UID on its Workload (as Kueue's jobframework labels the Workloads it makes).
LABEL_JOB_UID: Final = f"{GROUP}/job-uid"
#: Labels and annotations of Kueue's pod integration (plain pods and pod groups): never on a worker pod.
LABEL_POD_GROUP: Final = f"{GROUP}/pod-group-name"
ANNOTATION_POD_GROUP_TOTAL: Final = f"{GROUP}/pod-group-total-count"
POD_INTEGRATION_LABELS: Final = (LABEL_QUEUE_NAME, LABEL_POD_GROUP)
POD_INTEGRATION_ANNOTATIONS: Final = (ANNOTATION_POD_GROUP_TOTAL,)
#: The job's one pod set (a PodSetReference: a DNS label).
POD_SET_NAME: Final = "worker"
#: On the Workload: a digest of the pod set and queue it was made for; another value means it is outdated.
ANNOTATION_PODSET_DIGEST: Final = f"{c.GROUP}/podset-digest"

# The Workload's condition types (Kueue's apis/kueue/v1beta2/workload_types.go).
QUOTA_RESERVED: Final = "QuotaReserved"
ADMITTED: Final = "Admitted"
EVICTED: Final = "Evicted"
REQUEUED: Final = "Requeued"
FINISHED: Final = "Finished"
PODS_READY: Final = "PodsReady"
#: Eviction reasons after which Kueue requeues the Workload by itself (the jobframework's Requeued=True).
_REQUEUED_REASONS: Final = frozenset({"Preempted", "AdmissionCheck"})
#: The Finished reasons a job's controller writes (Kueue's WorkloadFinishedReasonSucceeded/Failed): this operator's.
_OUR_FINISH_REASONS: Final = frozenset({"Succeeded", "Failed"})
#: A condition message is at most this long (metav1.Condition).
_MAX_MESSAGE: Final = 32768

#: The drain's reason in ``status.policy.drain`` while an evicted job checkpoints before its pods stop.
DRAIN_EVICTION: Final = "KueueEviction"

# Reasons of the job's Queued condition and Events that are the operator's own (the others are Kueue's).
REASON_WORKLOAD_CREATED: Final = "WorkloadCreated"
REASON_WORKLOAD_OUTDATED: Final = "WorkloadOutdated"
REASON_WORKLOAD_FINISHED: Final = "WorkloadFinished"
REASON_PRIORITY_CLASS_NOT_FOUND: Final = "PriorityClassNotFound"
REASON_FLAVOR_NOT_FOUND: Final = "ResourceFlavorNotFound"
REASON_ADMISSION_CONFLICT: Final = "AdmissionConflict"
REASON_ADMITTED: Final = "Admitted"
REASON_EVICTED: Final = "Evicted"
REASON_PENDING: Final = "Pending"
REASON_SUSPENDED: Final = "Suspended"
REASON_NOT_QUEUED: Final = "NotQueued"


# ----- what the job asks of Kueue ---------------------------------------------------------------------------------


def queue_name(labels: Mapping[str, str]) -> str:
    """The LocalQueue a job names (its ``kueue.x-k8s.io/queue-name`` label); "" when none."""
    value = labels.get(LABEL_QUEUE_NAME)
    return value.strip() if isinstance(value, str) else ""


def workload_name(job_name: str, uid: str) -> str:
    """``etj-<job>-<5 hex>``: deterministic per job, and another for a new job of the same name (its UID).

    At most 61 characters for a job name of at most 51 (the CRD's bound): Kueue's short-name limit is 63.
    """
    digest = hashlib.sha256(f"{c.GROUP}\n{c.KIND}\n{job_name}\n{uid}".encode()).hexdigest()[:5]
    return f"etj-{job_name[:51]}-{digest}"


@dataclass(frozen=True)
class PriorityClassRef:
    """The priority class a job's Workload takes its priority from (Kueue's ``spec.priorityClassRef``)."""

    group: str
    kind: str
    name: str

    def to_spec(self) -> dict[str, str]:
        """``spec.priorityClassRef``."""
        return {"group": self.group, "kind": self.kind, "name": self.name}


@dataclass(frozen=True)
class Priority:
    """A resolved priority: the class and its value (``spec.priority``, which Kueue requires with the ref)."""

    ref: PriorityClassRef
    value: int


def priority_class_of(labels: Mapping[str, str], spec: JobSpec) -> PriorityClassRef | None:
    """The job's priority class, as Kueue's jobframework picks it; None when the job names none.

    The label's WorkloadPriorityClass first, else the template's PriorityClass (``priorityClassName``).
    """
    name = labels.get(LABEL_PRIORITY_CLASS)
    if isinstance(name, str) and name.strip():
        return PriorityClassRef(GROUP, "WorkloadPriorityClass", name.strip())
    name = _map(spec.template.get("spec")).get("priorityClassName")
    if isinstance(name, str) and name.strip():
        return PriorityClassRef("scheduling.k8s.io", "PriorityClass", name.strip())
    return None


def priority_from(ref: PriorityClassRef, obj: Mapping[str, Any] | None) -> Priority | str:
    """The priority the class object gives (its top-level ``value``), or why there is none (a message)."""
    where = "label " + LABEL_PRIORITY_CLASS if ref.group == GROUP else "spec.template.spec.priorityClassName"
    if obj is None:
        return f"{ref.kind} {ref.name!r} (named by the job's {where}) does not exist: create it or remove the name"
    value = obj.get("value")
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        return f"{ref.kind} {ref.name!r} has no integer value (found {value!r})"
    return Priority(ref, value)


def _strip(mapping: Mapping[str, Any] | None, keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in (mapping or {}).items() if k not in keys}


def pod_set(spec: JobSpec) -> dict[str, Any]:
    """The job's one pod set: the pod template as written (its requests decide the quota), the count, minCount.

    The template's metadata keeps only labels and annotations (all Kueue allows there), without those of Kueue's
    pod integration. ``minCount`` only for an elastic job that may start smaller (partial admission).
    """
    template = copy.deepcopy(dict(spec.template))
    meta = _map(template.get("metadata"))
    kept: dict[str, Any] = {}
    labels = _strip(meta.get("labels"), POD_INTEGRATION_LABELS)
    annotations = _strip(meta.get("annotations"), POD_INTEGRATION_ANNOTATIONS)
    if labels:
        kept["labels"] = labels
    if annotations:
        kept["annotations"] = annotations
    out: dict[str, Any] = {
        "name": POD_SET_NAME,
        "count": spec.replicas,
        "template": {"metadata": kept, "spec": template.get("spec") or {}},
    }
    if spec.elastic is not None and spec.elastic.min_replicas < spec.replicas:
        out["minCount"] = spec.elastic.min_replicas
    return out


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def podset_digest(spec: JobSpec, queue: str) -> str:
    """What the Workload was made for: the pod set and the queue (another digest: the Workload is outdated)."""
    return _digest({"podSets": [pod_set(spec)], "queueName": queue})


def build_workload(job: JobRef, spec: JobSpec, queue: str, priority: Priority | None = None) -> Manifest:
    """The job's Workload: owned by the job, one pod set, the queue and the priority."""
    labels = {**child_labels(job)}
    if job.uid:
        labels[LABEL_JOB_UID] = job.uid
    klass = job.labels.get(LABEL_PRIORITY_CLASS)
    if isinstance(klass, str) and klass:
        labels[LABEL_PRIORITY_CLASS] = klass
    spec_out: dict[str, Any] = {"queueName": queue, "podSets": [pod_set(spec)]}
    if priority is not None:
        spec_out["priorityClassRef"] = priority.ref.to_spec()
        spec_out["priority"] = priority.value
    return {
        "apiVersion": API_VERSION,
        "kind": WORKLOAD_KIND,
        "metadata": {
            "name": workload_name(job.name, job.uid),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_PODSET_DIGEST: podset_digest(spec, queue)},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec_out,
    }


# ----- reading a Workload ---------------------------------------------------------------------------------------


def _status(wl: Mapping[str, Any]) -> Mapping[str, Any]:
    status = wl.get("status")
    return status if isinstance(status, Mapping) else {}


def _conditions(wl: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = _status(wl).get("conditions")
    return [x for x in found if isinstance(x, Mapping)] if isinstance(found, list) else []


def condition(wl: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The Workload's condition of this type, or None."""
    return next((x for x in _conditions(wl) if x.get("type") == ctype), None)


def _true(wl: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    found = condition(wl, ctype)
    return found if found is not None and found.get("status") == "True" else None


def _admission(wl: Mapping[str, Any]) -> Mapping[str, Any] | None:
    admission = _status(wl).get("admission")
    return admission if isinstance(admission, Mapping) else None


def has_quota(wl: Mapping[str, Any]) -> bool:
    """Kueue reserved quota for it (QuotaReserved True, and an admission)."""
    return _true(wl, QUOTA_RESERVED) is not None and _admission(wl) is not None


def is_admitted(wl: Mapping[str, Any]) -> bool:
    """Its pods may run: quota reserved, Admitted True (admission checks ready), not evicted."""
    return has_quota(wl) and _true(wl, ADMITTED) is not None and _true(wl, EVICTED) is None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> dict[str, str]:
    return {str(k): v for k, v in _map(value).items() if isinstance(v, str)}


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) and value else default


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


# ----- the admission's placement ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """How the pods of an admitted Workload are shaped: what its pod-set assignment and admission checks say."""

    cluster_queue: str
    #: Resource name -> the ResourceFlavor assigned.
    flavors: Mapping[str, str]
    #: Pods admitted (the pod set's count; fewer under partial admission).
    count: int
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacementProblem:
    """Why an admission cannot be applied: ``permanent`` (a conflict: retrying changes nothing) or not."""

    reason: str
    message: str
    permanent: bool


def _merge(into: dict[str, str], other: Mapping[str, Any], what: str, source: str) -> str | None:
    """Add ``other``'s keys to ``into``; a key with another value is a conflict (its message), as podset.Merge."""
    for key, value in other.items():
        if not isinstance(value, str):
            continue
        if key in into and into[key] != value:
            return f"{what} {key}={value} from {source} conflicts with {key}={into[key]}"
        into[key] = value
    return None


def _add_tolerations(into: list[Mapping[str, Any]], other: Any) -> None:
    for toleration in other if isinstance(other, list) else ():
        if isinstance(toleration, Mapping) and toleration not in into:
            into.append(dict(toleration))


def placement(
    wl: Mapping[str, Any], flavors: Mapping[str, Mapping[str, Any]], spec: JobSpec
) -> Placement | PlacementProblem:
    """The admitted Workload's placement for the job's pods, or why it cannot be applied.

    As Kueue's jobframework (``podset.FromAssignment`` then ``podset.Merge``): each ResourceFlavor assigned to the
    pod set adds its ``nodeLabels`` as node selectors (the first flavor's value wins between flavors) and its
    ``tolerations``; then each Ready admission check's ``podSetUpdates`` for the pod set add node selectors,
    tolerations, labels and annotations. A key that the template (or an earlier update) sets to another value is a
    conflict. Flavors are taken in order of their names.
    """
    admission = _admission(wl) or {}
    assignments = [a for a in admission.get("podSetAssignments") or [] if isinstance(a, Mapping)]
    assignment = next((a for a in assignments if a.get("name") == POD_SET_NAME), None)
    if assignment is None and len(assignments) == 1:
        assignment = assignments[0]
    name = _text(_meta(wl).get("name"), "?")
    if assignment is None:
        message = f"Workload {name} is admitted without an assignment for pod set {POD_SET_NAME}"
        return PlacementProblem(REASON_ADMISSION_CONFLICT, message, True)
    count = assignment.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        count = spec.replicas
    by_resource = {str(r): f for r, f in _map(assignment.get("flavors")).items() if isinstance(f, str)}
    pod_spec = _map(spec.template.get("spec"))
    tmeta = _map(spec.template.get("metadata"))
    template_labels, template_annotations = _strings(tmeta.get("labels")), _strings(tmeta.get("annotations"))
    template_selector = _strings(pod_spec.get("nodeSelector"))
    selector: dict[str, str] = {}
    tolerations: list[Mapping[str, Any]] = []
    for flavor_name in sorted(set(by_resource.values())):
        flavor = flavors.get(flavor_name)
        if flavor is None:
            return PlacementProblem(
                REASON_FLAVOR_NOT_FOUND,
                f"ResourceFlavor {flavor_name} assigned by Workload {name} is not known (yet): the pods wait for it",
                False,
            )
        flavor_spec = _map(flavor.get("spec"))
        for key, value in _strings(flavor_spec.get("nodeLabels")).items():
            selector.setdefault(key, value)
        _add_tolerations(tolerations, flavor_spec.get("tolerations"))
    merged_selector = dict(template_selector)
    labels, annotations = dict(template_labels), dict(template_annotations)
    flavor_names = ", ".join(sorted(set(by_resource.values())))
    problem = _merge(merged_selector, selector, "node selector", f"ResourceFlavor {flavor_names}")
    for check in _status(wl).get("admissionChecks") or []:
        if problem is not None:
            break
        if not isinstance(check, Mapping) or check.get("state") != "Ready":
            continue
        source = f"admission check {_text(check.get('name'), '?')}"
        for update in check.get("podSetUpdates") or []:
            if not isinstance(update, Mapping) or update.get("name") != assignment.get("name"):
                continue
            problem = (
                _merge(merged_selector, _map(update.get("nodeSelector")), "node selector", source)
                or _merge(labels, _map(update.get("labels")), "label", source)
                or _merge(annotations, _map(update.get("annotations")), "annotation", source)
            )
            _add_tolerations(tolerations, update.get("tolerations"))
            if problem is not None:
                break
    if problem is not None:
        return PlacementProblem(
            REASON_ADMISSION_CONFLICT,
            f"the admission of Workload {name} cannot be applied to the pod template: {problem}",
            True,
        )
    template_tolerations = [t for t in pod_spec.get("tolerations") or [] if isinstance(t, Mapping)]
    added = tuple(t for t in tolerations if t not in template_tolerations)
    return Placement(
        cluster_queue=_text(admission.get("clusterQueue")),
        flavors=by_resource,
        count=count,
        node_selector={k: v for k, v in merged_selector.items() if template_selector.get(k) != v},
        tolerations=added,
        labels={k: v for k, v in labels.items() if template_labels.get(k) != v},
        annotations={k: v for k, v in annotations.items() if template_annotations.get(k) != v},
    )


def strip_pod_integration(pod: Manifest) -> None:
    """Take the labels and annotations of Kueue's pod integration off a worker pod (in place)."""
    meta = pod.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        if isinstance(meta.get(key), Mapping):
            drop = POD_INTEGRATION_LABELS if key == "labels" else POD_INTEGRATION_ANNOTATIONS
            meta[key] = _strip(meta[key], drop)


def shape_pod(pod: Manifest, where: Placement | None) -> None:
    """Shape a worker pod of a Kueue-managed job (in place): the admission's placement, no pod-integration label.

    Node selectors and labels the pod has keep their value (the placement was checked against the template);
    tolerations are appended once each.
    """
    strip_pod_integration(pod)
    if where is None:
        return
    meta = pod.setdefault("metadata", {})
    spec = pod.setdefault("spec", {})
    if where.node_selector:
        spec["nodeSelector"] = {**where.node_selector, **(spec.get("nodeSelector") or {})}
    if where.tolerations:
        tolerations = list(spec.get("tolerations") or [])
        _add_tolerations(tolerations, [dict(t) for t in where.tolerations])
        spec["tolerations"] = tolerations
    if where.labels:
        meta["labels"] = {**where.labels, **(meta.get("labels") or {})}
    if where.annotations:
        meta["annotations"] = {**where.annotations, **(meta.get("annotations") or {})}
    strip_pod_integration(pod)


# ----- the decision ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KueueView:
    """What the reconciler observed of the job in Kueue (only with ``ETJ_KUEUE`` on)."""

    #: The LocalQueue the job's label names ("" : none, e.g. the label was removed).
    queue_name: str
    #: The job's own Workload (its controller ownerReference is the job's UID), as the informer shows it.
    workload: Mapping[str, Any] | None = None
    #: The ResourceFlavors by name, as the informer shows them.
    flavors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The priority for a Workload to be made (read only then); None: the job names no priority class.
    priority: Priority | None = None
    #: Why the priority class named could not be read (the Workload is not made until it can).
    priority_problem: str = ""


@dataclass
class WorkloadWrites:
    """What the reconciler writes to the job's Workload, after the job's status and before any pod."""

    #: Create this Workload (a 409 means it exists already: done).
    create: Manifest | None = None
    #: Delete the Workload of this (name, uid): outdated, suspended, or no queue any more.
    delete: tuple[str, str] | None = None
    #: Merge-patch the Workload's status: (name, resourceVersion it was read at, status). The resourceVersion is a
    #: precondition: a Workload Kueue changed since is left for the next pass.
    status: tuple[str, str, dict[str, Any]] | None = None

    @property
    def empty(self) -> bool:
        """Nothing to write."""
        return self.create is None and self.delete is None and self.status is None


@dataclass
class KueueStep:
    """The pass's Kueue decision: hold the pods (Queued), fail the job, or run it admitted, and what to write."""

    queued: bool = False
    fail: tuple[str, str] | None = None
    #: Admitted: how the pods are shaped (None while queued).
    placement: Placement | None = None
    #: Admitted with fewer pods than ``spec.replicas`` (partial admission of an elastic job).
    replicas: int | None = None
    events: list[Event] = field(default_factory=list)
    writes: WorkloadWrites = field(default_factory=WorkloadWrites)
    #: The job is Kueue's to admit (it names a queue and the spec asks to run): its pods are shaped by
    #: :func:`shape_pod`.
    managed: bool = False


def _evicted_message(ev: Mapping[str, Any]) -> str:
    return _text(ev.get("message"), "the Workload was evicted")


def decide(
    view: KueueView,
    job: JobRef,
    spec: JobSpec,
    status: dict[str, Any],
    pods: Sequence[PodView],
    *,
    now: datetime,
    generation: int,
    report: WorkloadReport,
    checkpoint_timeout_seconds: float,
) -> KueueStep:
    """Decide the job's Kueue step before the lifecycle (pure), for a job that is not finished and whose spec parsed.

    Writes ``status.kueue``, the Queued condition and, for a drain, ``status.control`` and ``status.policy`` into
    ``status``.
    """
    before = KueueSection.from_status(status.get(KUEUE))
    step = KueueStep()
    wl = view.workload
    name = _text(_meta(wl).get("name")) if wl is not None else workload_name(job.name, job.uid)
    section = KueueSection(queue_name=view.queue_name, workload_name=name, requeues=before.requeues)
    live = [p for p in pods if not p.terminating]

    def queued(reason: str, message: str) -> KueueStep:
        step.queued = True
        section.reason, section.message = reason, message[:_MAX_MESSAGE]
        _set_queued(status, True, reason, message, now, generation)
        return step

    def finish() -> KueueStep:
        status[KUEUE] = section.to_status()
        return step

    if not view.queue_name:
        # no queue (the label was removed): the job runs outside Kueue; its Workload, if any, goes
        if wl is not None:
            step.writes.delete = (name, _text(_meta(wl).get("uid")))
        status.pop(KUEUE, None)
        if cond.is_true(list(status.get("conditions") or []), cond.QUEUED):
            _set_queued(status, False, REASON_NOT_QUEUED, "the job names no LocalQueue: Kueue does not admit it", now,
                        generation)
        return step
    step.managed = True
    if spec.suspend:
        # the user holds the job: it gives its place (and any quota) back once its pods are gone
        section.reason = REASON_SUSPENDED
        section.message = "spec.suspend is true: the job holds no place in its queue"
        if wl is not None:
            if pods:
                section.message += f"; its Workload {name} is deleted once its pods are gone"
            else:
                step.writes.delete = (name, _text(_meta(wl).get("uid")))
        if wl is None:
            section.workload_name = None
        return finish()
    if wl is None:
        if view.priority_problem:
            queued(REASON_PRIORITY_CLASS_NOT_FOUND, view.priority_problem)
            section.workload_name = None
            return finish()
        step.writes.create = build_workload(job, spec, view.queue_name, view.priority)
        if before.workload_name != name:
            step.events.append(Event("Normal", REASON_WORKLOAD_CREATED, f"Workload {name} created in LocalQueue"
                                                                           f" {view.queue_name}"))
        queued(REASON_WORKLOAD_CREATED, f"Workload {name} created in LocalQueue {view.queue_name}; waiting for"
                                        " Kueue to admit it")
        return finish()

    uid = _text(_meta(wl).get("uid"))
    done = _true(wl, FINISHED)
    if done is not None and _text(done.get("reason")) in _OUR_FINISH_REASONS:
        # finished by this operator when the job ended, and the job runs again (a fixed spec): a new Workload
        message = f"the job runs again: its finished Workload {name} is replaced, and the job is queued again"
        if not pods:
            step.writes.delete = (name, uid)
        queued(REASON_WORKLOAD_FINISHED, message)
        return finish()
    if done is not None:
        message = (f"Kueue finished the job's Workload {name} ({_text(done.get('reason'), 'Finished')}):"
                   f" {_text(done.get('message'), 'no message')}")
        step.fail = (REASON_WORKLOAD_FINISHED, message)
        section.reason, section.message = REASON_WORKLOAD_FINISHED, message
        return finish()
    annotations = _meta(wl).get("annotations")
    made_for = annotations.get(ANNOTATION_PODSET_DIGEST) if isinstance(annotations, Mapping) else None
    if made_for != podset_digest(spec, view.queue_name):
        message = (f"the job's pod set or queue changed since Workload {name} was made: it is replaced once the"
                   " pods are gone, and the job is queued again")
        if before.reason != REASON_WORKLOAD_OUTDATED:
            step.events.append(Event("Normal", REASON_WORKLOAD_OUTDATED, message))
        if not pods:
            step.writes.delete = (name, uid)
        queued(REASON_WORKLOAD_OUTDATED, message)
        return finish()

    evicted = _true(wl, EVICTED)
    if evicted is not None:
        reason = _text(evicted.get("reason"), REASON_EVICTED)
        message = _evicted_message(evicted)
        if before.admitted:
            section.requeues += 1
            said = f"Workload {name} evicted by Kueue ({reason}): {message}"
            step.events.append(Event("Normal", REASON_EVICTED, said))
        drained = _drain(status, spec, live, report, now, before, checkpoint_timeout_seconds, step)
        if not drained:
            section.draining = True
            section.reason = reason
            section.message = f"evicted ({message}): checkpointing before the pods stop"
            _set_queued(status, True, reason, section.message, now, generation)
            return finish()
        if not pods and has_quota(wl):
            step.writes.status = (name, _text(_meta(wl).get("resourceVersion")), _requeue_status(wl, evicted, now))
        queued(reason, f"{message}; the job is queued again" + ("" if not pods else " once its pods are gone"))
        return finish()

    if is_admitted(wl):
        where = placement(wl, view.flavors, spec)
        if isinstance(where, PlacementProblem):
            if where.permanent:
                step.fail = (where.reason, where.message)
                section.reason, section.message = where.reason, where.message
                return finish()
            queued(where.reason, where.message)
            return finish()
        step.placement = where
        if spec.elastic is not None and where.count < spec.replicas:
            step.replicas = max(where.count, spec.elastic.min_replicas)
        flavors = ", ".join(f"{r}={f}" for r, f in sorted(where.flavors.items())) or "no flavor"
        message = f"admitted by ClusterQueue {where.cluster_queue or '?'} ({flavors})"
        if step.replicas is not None:
            message += f" with {step.replicas} of {spec.replicas} pods (partial admission)"
        section.admitted = True
        section.cluster_queue = where.cluster_queue or None
        section.flavors = dict(where.flavors)
        section.pod_count = step.replicas or spec.replicas
        section.reason, section.message = REASON_ADMITTED, message
        _set_queued(status, False, REASON_ADMITTED, message, now, generation)
        if not before.admitted:
            step.events.append(Event("Normal", REASON_ADMITTED, f"Workload {name} {message}"))
        return finish()

    # not admitted (yet): Kueue's own word on why
    if has_quota(wl):
        found = condition(wl, ADMITTED) or {}
        reason = _text(found.get("reason"), "UnsatisfiedChecks")
        message = _text(found.get("message"), "quota reserved; waiting for the admission checks")
    else:
        found = condition(wl, QUOTA_RESERVED) or {}
        reason = _text(found.get("reason"), REASON_PENDING)
        message = _text(found.get("message"), f"waiting for LocalQueue {view.queue_name} to admit Workload {name}")
    queued(reason, message)
    return finish()


def _set_queued(status: dict[str, Any], value: bool, reason: str, message: str, now: datetime, generation: int) -> None:
    status["conditions"] = cond.set_condition(
        list(status.get("conditions") or []), cond.QUEUED, value, reason, message, to_rfc3339(now), generation
    )


def _drain(
    status: dict[str, Any],
    spec: JobSpec,
    live: Sequence[PodView],
    report: WorkloadReport,
    now: datetime,
    before: KueueSection,
    timeout_seconds: float,
    step: KueueStep,
) -> bool:
    """Checkpoint before an evicted job's pods stop, as the energy policies' drains do; True once they may stop.

    Asked when the job was running admitted (``spec.checkpoint`` set, pods live): ``control.checkpointRequested``
    goes up by one and ``policy.drain`` records it (reason :data:`DRAIN_EVICTION`). Done when the report
    acknowledges that number, when no pod is live, or after ``timeout_seconds`` (a Warning Event), and then the
    drain record goes. A drain record of another reason (a policy's) also ends ours: a checkpoint was asked.
    """
    control = ControlSection.from_status(status.get(CONTROL))
    policy = PolicySection.from_status(status.get(POLICY))
    ours = policy.drain if policy.drain is not None and policy.drain.reason == DRAIN_EVICTION else None
    seconds = now.timestamp()
    if not before.draining:
        if not before.admitted or spec.checkpoint is None or not live:
            return True
        sequence = control.checkpoint_requested + 1
        status[CONTROL] = dataclasses.replace(control, checkpoint_requested=sequence).to_status()
        policy.drain = Drain(reason=DRAIN_EVICTION, requested=sequence, since_seconds=seconds)
        status[POLICY] = policy.to_status()
        step.events.append(Event("Normal", "CheckpointRequested", f"checkpoint {sequence} requested before the pods"
                                                                   " stop for Kueue's eviction"))
        return False
    if ours is None:
        return True
    ack = report.acknowledged_checkpoint
    timed_out = seconds - ours.since_seconds >= timeout_seconds
    if (ack is not None and ack >= ours.requested) or not live or timed_out:
        if timed_out and not (ack is not None and ack >= ours.requested) and live:
            step.events.append(Event("Warning", "CheckpointTimeout", f"no checkpoint acknowledged within"
                                                                      f" {timeout_seconds:.0f} s; stopping the pods"
                                                                      " for Kueue's eviction"))
        policy.drain = None
        status[POLICY] = policy.to_status()
        return True
    return False


def _condition(
    wl: Mapping[str, Any], ctype: str, value: bool, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A metav1.Condition for the Workload; its transition time kept unless the status flips."""
    old = condition(wl, ctype)
    state = "True" if value else "False"
    when = to_rfc3339(now)
    if old is not None and old.get("status") == state and isinstance(old.get("lastTransitionTime"), str):
        when = old["lastTransitionTime"]
    out: dict[str, Any] = {"type": ctype, "status": state, "reason": reason, "message": message[:_MAX_MESSAGE],
                           "lastTransitionTime": when}
    generation = _meta(wl).get("generation")
    if isinstance(generation, int) and not isinstance(generation, bool):
        out["observedGeneration"] = generation
    return out


def _with_conditions(wl: Mapping[str, Any], changes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Workload's conditions with ``changes`` set (the others kept as they are, in order)."""
    by_type = {x["type"]: x for x in changes}
    out = [dict(by_type.pop(str(x.get("type")), x)) for x in _conditions(wl)]
    return out + [x for x in changes if x["type"] in by_type]


def _requeue_status(wl: Mapping[str, Any], evicted: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The evicted Workload's status once the pods are gone: admission cleared, queued again.

    As the jobframework: Requeued, ``QuotaReserved=False`` reason Pending, Admitted False, ``admission: null``.
    """
    reason = _text(evicted.get("reason"), REASON_EVICTED)
    message = _evicted_message(evicted)
    changes = [
        _condition(wl, REQUEUED, reason in _REQUEUED_REASONS, reason, message, now),
        _condition(wl, QUOTA_RESERVED, False, REASON_PENDING, message, now),
        _condition(wl, ADMITTED, False, "NoReservation", "The workload has no reservation", now),
    ]
    return {"conditions": _with_conditions(wl, changes), "admission": None}


def after_lifecycle(view: KueueView, step: KueueStep | None, plan_status: Mapping[str, Any], now: datetime) -> None:
    """What the lifecycle's result asks of the Workload (updates ``step.writes``).

    ``Finished`` once the job finished; ``PodsReady`` while it runs admitted.
    """
    wl = view.workload
    if wl is None or step is None or step.writes.delete is not None or step.writes.status is not None:
        return
    phase = plan_status.get("phase")
    name = _text(_meta(wl).get("name"))
    version = _text(_meta(wl).get("resourceVersion"))
    if phase in TERMINAL:
        if _true(wl, FINISHED) is None:
            final = cond.find(list(plan_status.get("conditions") or []), str(phase)) or {}
            message = _text(final.get("message"), f"the job {phase}")
            reason = "Succeeded" if phase == Phase.SUCCEEDED else "Failed"
            changes = [_condition(wl, FINISHED, True, reason, message, now)]
            step.writes.status = (name, version, {"conditions": _with_conditions(wl, changes)})
        return
    if step.placement is None or not is_admitted(wl):
        return
    ready = phase in (Phase.RUNNING, Phase.THROTTLED)
    found = condition(wl, PODS_READY)
    if found is not None and found.get("status") == ("True" if ready else "False"):
        return
    if ready:
        change = _condition(wl, PODS_READY, True, "PodsReady", "All pods reached readiness and the workload is running",
                            now)
    else:
        change = _condition(wl, PODS_READY, False, "WaitForStart", "Not all pods are ready or succeeded", now)
    step.writes.status = (name, version, {"conditions": _with_conditions(wl, [change])})

