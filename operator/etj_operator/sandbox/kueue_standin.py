"""A stand-in for Kueue's admission (NOT Kueue), for the tests and ``etj sandbox up --kueue``.

Real Kueue is a Go controller manager; neither the tests nor the sandbox can run it. What the operator must get
right is the Workload protocol (``etj_operator.kueue``), so this module gives the emulator:

* :data:`CRDS`: Kueue's ``Workload``, ``ResourceFlavor``, ``ClusterQueue``, ``LocalQueue`` and
  ``WorkloadPriorityClass`` CRDs at ``kueue.x-k8s.io/v1beta2``, written for this project from Kueue's API
  reference (https://kueue.sigs.k8s.io/docs/reference/kueue.v1beta2/) and its Go types
  (https://github.com/kubernetes-sigs/kueue/tree/main/apis/kueue/v1beta2: ``workload_types.go``,
  ``resourceflavor_types.go``, ``clusterqueue_types.go``, ``localqueue_types.go``,
  ``workloadpriorityclass_types.go``). The Workload's schema keeps every field the operator writes or reads, with
  Kueue's validations on them (pod sets: at most 8, ``minCount <= count``; conditions as ``metav1.Condition``;
  the admission's assignments matching the pod sets); the rest is left open (a pod template is not checked
  field by field, as the real CRD does). The others are reduced to what the stand-in reads.
* :class:`StandInKueue`: an admission loop that does a small part of Kueue's scheduler, in the same way:
  a Workload of a LocalQueue is admitted into its ClusterQueue when its pod sets' requests fit the unused
  ``nominalQuota`` of the queue's **first flavor** (one flavor, no cohorts, no borrowing, no fair sharing, no
  admission checks, no topology); partial admission down to ``minCount``; higher ``spec.priority`` first, then
  older first, a Workload that does not fit does not block smaller ones behind it (BestEffortFIFO). It writes what
  Kueue writes: ``status.admission`` (clusterQueue, podSetAssignments with flavors, resourceUsage and count), the
  QuotaReserved and Admitted conditions (and resets Evicted and Preempted), or QuotaReserved False with
  ``Pending``/``Inadmissible`` and a message in Kueue's words. It preempts **on demand** only
  (:meth:`StandInKueue.preempt`, or the annotation :data:`ANNOTATION_PREEMPT` on a Workload): Evicted and
  Preempted True, the admission left for the job's controller to clear, as Kueue does. Finished Workloads give
  their quota back.
* an invariant check, at every pod create (an admission hook of the emulator) and on every tick: no pod of a job
  that names a queue exists unless the job's Workload holds an admission, and none is created unless the
  Workload is admitted and not evicted (:attr:`StandInKueue.violations`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

import yaml

from etj_operator import contract
from etj_operator.sandbox.emulator import UnknownResourceError

if TYPE_CHECKING:
    from etj_operator.sandbox.emulator import EmulatorServer, KubeApiEmulator
    from etj_operator.sandbox.emulator.resources import ResourceType

__all__ = ["ANNOTATION_PREEMPT", "CRDS", "CRDS_YAML", "QueueSetup", "StandInKueue"]

log = logging.getLogger(__name__)
Json = dict[str, Any]

GROUP: Final = "kueue.x-k8s.io"
VERSION: Final = "v1beta2"
#: ``kubectl annotate workload NAME sandbox.efficienttraining.dev/preempt=now``: the stand-in evicts it.
ANNOTATION_PREEMPT: Final = "sandbox.efficienttraining.dev/preempt"
QUEUE_LABEL: Final = f"{GROUP}/queue-name"

#: Kueue's CRDs at kueue.x-k8s.io/v1beta2, as the stand-in serves them (sources: see the module's docstring).
CRDS_YAML: Final = r"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: workloads.kueue.x-k8s.io
spec:
  group: kueue.x-k8s.io
  scope: Namespaced
  names: {kind: Workload, listKind: WorkloadList, plural: workloads, singular: workload, shortNames: [wl]}
  versions:
    - name: v1beta2
      served: true
      storage: true
      subresources: {status: {}}
      additionalPrinterColumns:
        - {name: Queue, type: string, jsonPath: .spec.queueName}
        - {name: Reserved in, type: string, jsonPath: .status.admission.clusterQueue}
        - {name: Admitted, type: string, jsonPath: '.status.conditions[?(@.type=="Admitted")].status'}
        - {name: Finished, type: string, jsonPath: '.status.conditions[?(@.type=="Finished")].status'}
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-validations:
            - rule: >-
                has(self.status) && has(self.status.conditions) &&
                self.status.conditions.exists(c, c.type == 'QuotaReserved' && c.status == 'True') &&
                has(self.status.admission) ?
                size(self.spec.podSets) == size(self.status.admission.podSetAssignments) : true
              message: podSetAssignments must have the same number of podSets as the spec
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              x-kubernetes-validations:
                - rule: "!has(self.priorityClassRef) || has(self.priority)"
                  message: priority should not be nil when priorityClassRef is set
              properties:
                podSets:
                  type: array
                  minItems: 1
                  maxItems: 8
                  x-kubernetes-list-type: map
                  x-kubernetes-list-map-keys: [name]
                  items:
                    type: object
                    required: [template]
                    x-kubernetes-validations:
                      - rule: "has(self.minCount) ? self.minCount <= self.count : true"
                        message: minCount should be positive and less or equal to count
                    properties:
                      name: {type: string, default: main, maxLength: 63, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
                      count: {type: integer, format: int32, default: 1, minimum: 0}
                      minCount: {type: integer, format: int32, minimum: 1}
                      template:
                        type: object
                        description: A PodTemplateSpec (left open here; Kueue's CRD has the whole schema).
                        x-kubernetes-preserve-unknown-fields: true
                      topologyRequest: {type: object, x-kubernetes-preserve-unknown-fields: true}
                queueName:
                  type: string
                  maxLength: 253
                  pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'
                priorityClassRef:
                  type: object
                  required: [group, kind, name]
                  properties:
                    group: {type: string, enum: [kueue.x-k8s.io, scheduling.k8s.io]}
                    kind: {type: string, enum: [WorkloadPriorityClass, PriorityClass]}
                    name: {type: string, minLength: 1, maxLength: 253}
                priority: {type: integer, format: int32}
                active: {type: boolean, default: true}
                maximumExecutionTimeSeconds: {type: integer, format: int32, minimum: 1}
            status:
              type: object
              properties:
                conditions:
                  type: array
                  maxItems: 16
                  x-kubernetes-list-type: map
                  x-kubernetes-list-map-keys: [type]
                  items:
                    type: object
                    required: [lastTransitionTime, message, reason, status, type]
                    properties:
                      type: {type: string, maxLength: 316}
                      status: {type: string, enum: ["True", "False", "Unknown"]}
                      reason:
                        type: string
                        minLength: 1
                        maxLength: 1024
                        pattern: "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                      message: {type: string, maxLength: 32768}
                      lastTransitionTime: {type: string, format: date-time}
                      observedGeneration: {type: integer, format: int64, minimum: 0}
                admission:
                  type: object
                  required: [clusterQueue, podSetAssignments]
                  properties:
                    clusterQueue: {type: string, maxLength: 253}
                    podSetAssignments:
                      type: array
                      maxItems: 8
                      x-kubernetes-list-type: map
                      x-kubernetes-list-map-keys: [name]
                      items:
                        type: object
                        required: [name]
                        properties:
                          name: {type: string, default: main, maxLength: 63}
                          flavors: {type: object, additionalProperties: {type: string, maxLength: 253}}
                          resourceUsage: {type: object, additionalProperties: {x-kubernetes-int-or-string: true}}
                          count: {type: integer, format: int32, minimum: 0}
                          topologyAssignment: {type: object, x-kubernetes-preserve-unknown-fields: true}
                admissionChecks:
                  type: array
                  maxItems: 8
                  items:
                    type: object
                    required: [name, state, lastTransitionTime, message]
                    properties:
                      name: {type: string, minLength: 1, maxLength: 316}
                      state: {type: string, enum: [Pending, Ready, Retry, Rejected]}
                      lastTransitionTime: {type: string, format: date-time}
                      message: {type: string, maxLength: 32768}
                      podSetUpdates:
                        type: array
                        maxItems: 8
                        items:
                          type: object
                          required: [name]
                          properties:
                            name: {type: string}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
                            nodeSelector: {type: object, additionalProperties: {type: string}}
                            tolerations:
                              type: array
                              maxItems: 8
                              items:
                                type: object
                                properties:
                                  key: {type: string}
                                  operator: {type: string}
                                  value: {type: string}
                                  effect: {type: string}
                                  tolerationSeconds: {type: integer, format: int64}
                requeueState: {type: object, x-kubernetes-preserve-unknown-fields: true}
                reclaimablePods: {type: array, items: {type: object, x-kubernetes-preserve-unknown-fields: true}}
                resourceRequests: {type: array, items: {type: object, x-kubernetes-preserve-unknown-fields: true}}
                accumulatedPastExecutionTimeSeconds: {type: integer, format: int32}
                schedulingStats: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: resourceflavors.kueue.x-k8s.io
spec:
  group: kueue.x-k8s.io
  scope: Cluster
  names: {kind: ResourceFlavor, listKind: ResourceFlavorList, plural: resourceflavors, singular: resourceflavor,
          shortNames: [flavor, flavors, rf]}
  versions:
    - name: v1beta2
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              properties:
                nodeLabels: {type: object, maxProperties: 8, additionalProperties: {type: string}}
                nodeTaints:
                  type: array
                  maxItems: 8
                  items: {type: object, x-kubernetes-preserve-unknown-fields: true}
                tolerations:
                  type: array
                  maxItems: 8
                  items:
                    type: object
                    properties:
                      key: {type: string}
                      operator: {type: string}
                      value: {type: string}
                      effect: {type: string}
                      tolerationSeconds: {type: integer, format: int64}
                topologyName: {type: string}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: clusterqueues.kueue.x-k8s.io
spec:
  group: kueue.x-k8s.io
  scope: Cluster
  names: {kind: ClusterQueue, listKind: ClusterQueueList, plural: clusterqueues, singular: clusterqueue,
          shortNames: [cq]}
  versions:
    - name: v1beta2
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              properties:
                namespaceSelector: {type: object, x-kubernetes-preserve-unknown-fields: true}
                queueingStrategy: {type: string, enum: [StrictFIFO, BestEffortFIFO], default: BestEffortFIFO}
                cohortName: {type: string}
                preemption: {type: object, x-kubernetes-preserve-unknown-fields: true}
                resourceGroups:
                  type: array
                  maxItems: 16
                  items:
                    type: object
                    properties:
                      coveredResources: {type: array, items: {type: string}}
                      flavors:
                        type: array
                        maxItems: 64
                        items:
                          type: object
                          required: [name]
                          properties:
                            name: {type: string}
                            resources:
                              type: array
                              items:
                                type: object
                                required: [name, nominalQuota]
                                properties:
                                  name: {type: string}
                                  nominalQuota: {x-kubernetes-int-or-string: true}
                                  borrowingLimit: {x-kubernetes-int-or-string: true}
                                  lendingLimit: {x-kubernetes-int-or-string: true}
            status: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: localqueues.kueue.x-k8s.io
spec:
  group: kueue.x-k8s.io
  scope: Namespaced
  names: {kind: LocalQueue, listKind: LocalQueueList, plural: localqueues, singular: localqueue,
          shortNames: [queue, queues, lq]}
  versions:
    - name: v1beta2
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              required: [clusterQueue]
              properties:
                clusterQueue: {type: string}
            status: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: workloadpriorityclasses.kueue.x-k8s.io
spec:
  group: kueue.x-k8s.io
  scope: Cluster
  names: {kind: WorkloadPriorityClass, listKind: WorkloadPriorityClassList, plural: workloadpriorityclasses,
          singular: workloadpriorityclass}
  versions:
    - name: v1beta2
      served: true
      storage: true
      additionalPrinterColumns:
        - {name: Value, type: integer, jsonPath: .value}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            value: {type: integer, format: int32}
            description: {type: string, maxLength: 2048}
"""
#: The same, parsed.
CRDS: Final[tuple[Json, ...]] = tuple(doc for doc in yaml.safe_load_all(CRDS_YAML) if doc)


# ----- quantities --------------------------------------------------------------------------------------------

_SUFFIXES: Final[Mapping[str, int | Fraction]] = {
    "": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}
_QUANTITY_RE: Final = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]*)$")


def quantity(value: Any) -> Fraction:
    """A Kubernetes resource quantity (``8``, ``500m``, ``16Gi``) as an exact number."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Fraction(value)
    match = _QUANTITY_RE.match(str(value).strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a quantity: {value!r}")
    return Fraction(match.group(1)) * Fraction(_SUFFIXES[match.group(2)])


def _show(value: Fraction) -> str:
    return str(int(value)) if value.denominator == 1 else f"{int(value * 1000)}m"


def pod_requests(template: Mapping[str, Any]) -> dict[str, Fraction]:
    """One pod's requests: each container's requests (a request left out defaults to its limit), summed."""
    total: dict[str, Fraction] = {}
    spec = template.get("spec")
    for container in (spec.get("containers") if isinstance(spec, Mapping) else None) or []:
        resources = container.get("resources") if isinstance(container, Mapping) else None
        if not isinstance(resources, Mapping):
            continue
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in asked.items():
            total[name] = total.get(name, Fraction(0)) + quantity(value)
    return total


# ----- the stand-in ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueSetup:
    """One ResourceFlavor, a ClusterQueue with quota in it, and a LocalQueue pointing at it."""

    flavor: str = "default-flavor"
    node_labels: Mapping[str, str] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    cluster_queue: str = "cluster-queue"
    local_queue: str = "team-a"
    namespace: str = "default"
    #: Resource name -> nominal quota.
    quota: Mapping[str, str | int] | None = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(obj: Mapping[str, Any], ctype: str) -> Json | None:
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(entry, dict) and entry.get("type") == ctype:
            return entry
    return None


def _is_true(obj: Mapping[str, Any], ctype: str) -> bool:
    found = _cond(obj, ctype)
    return found is not None and found.get("status") == "True"


def _set(conditions: list[Json], ctype: str, status: bool, reason: str, message: str, generation: Any) -> None:
    """Set a condition as apimeta.SetStatusCondition does (the transition time only changes with the status)."""
    value = "True" if status else "False"
    for entry in conditions:
        if entry.get("type") == ctype:
            if entry.get("status") != value:
                entry["lastTransitionTime"] = _now()
            entry.update(status=value, reason=reason, message=message)
            if isinstance(generation, int):
                entry["observedGeneration"] = generation
            return
    new: Json = {"type": ctype, "status": value, "reason": reason, "message": message, "lastTransitionTime": _now()}
    if isinstance(generation, int):
        new["observedGeneration"] = generation
    conditions.append(new)


def has_quota(workload: Mapping[str, Any]) -> bool:
    """QuotaReserved True with an admission (what Kueue counts as using quota)."""
    return _is_true(workload, "QuotaReserved") and bool((workload.get("status") or {}).get("admission"))


def is_admitted(workload: Mapping[str, Any]) -> bool:
    """Admitted and not evicted: its pods may run."""
    return has_quota(workload) and _is_true(workload, "Admitted") and not _is_true(workload, "Evicted")


class StandInKueue:
    """Admits Workloads by quota with one flavor, preempts on demand, checks the no-pod-before-admission rule.

    A stand-in, not Kueue (see the module). ``start()`` runs :meth:`step` every ``interval_seconds`` in a thread;
    tests may call :meth:`step` themselves instead. Every write goes through the emulator's admission (the CRDs'
    schema and CEL rules) as the control plane, with the resourceVersion it read as a precondition.
    """

    def __init__(self, server: EmulatorServer, *, interval_seconds: float = 0.1) -> None:
        self.server = server
        self.interval_seconds = interval_seconds
        #: What broke the rule "no pod of a queued job before its Workload is admitted", as found.
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._preempt: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._paused = False
        self.ticks = 0

    # ----- setup ---------------------------------------------------------------------------------------------

    def install(self) -> StandInKueue:
        """Serve Kueue's CRDs and hook the pod-create check into the emulator's admission."""
        for crd in CRDS:
            self.server.load_crd(crd)
        self.server.call(lambda emulator: emulator.admission.append(self._check_pod_create))
        return self

    def add_queue(self, setup: QueueSetup | None = None) -> QueueSetup:
        """Create the flavor, the ClusterQueue (quota of that one flavor) and the LocalQueue of ``setup``."""
        setup = setup or QueueSetup()
        quota: dict[str, str | int] = dict(setup.quota or {"nvidia.com/gpu": 1})
        flavor_spec: Json = {}
        if setup.node_labels:
            flavor_spec["nodeLabels"] = dict(setup.node_labels)
        if setup.tolerations:
            flavor_spec["tolerations"] = [dict(t) for t in setup.tolerations]
        self._apply("resourceflavors", None, {"metadata": {"name": setup.flavor}, "spec": flavor_spec})
        self._apply("clusterqueues", None, {
            "metadata": {"name": setup.cluster_queue},
            "spec": {"namespaceSelector": {}, "resourceGroups": [{
                "coveredResources": sorted(quota),
                "flavors": [{"name": setup.flavor, "resources": [
                    {"name": name, "nominalQuota": value} for name, value in sorted(quota.items())]}],
            }]},
        })
        self._apply("localqueues", setup.namespace, {
            "metadata": {"name": setup.local_queue, "namespace": setup.namespace},
            "spec": {"clusterQueue": setup.cluster_queue},
        })
        return setup

    def _apply(self, plural: str, namespace: str | None, body: Json) -> None:
        existing = self.server.get(f"{plural}.{GROUP}", namespace, body["metadata"]["name"])
        if existing is None:
            self.server.create(f"{plural}.{GROUP}", body, namespace=namespace)
        else:
            self.server.replace(f"{plural}.{GROUP}", namespace, body["metadata"]["name"],
                                {**body, "metadata": existing["metadata"]})

    # ----- running -------------------------------------------------------------------------------------------

    def start(self) -> StandInKueue:
        """Run :meth:`step` in a thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kueue-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (the last step finishes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> StandInKueue:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.step()
            except Exception:  # the emulator stopping, or a conflict: the next tick decides again
                log.debug("kueue stand-in step failed", exc_info=True)

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) admitting; evictions on demand still go out."""
        self._paused = paused

    def preempt(self, namespace: str, name: str) -> None:
        """Evict the Workload on the next step (reason Preempted), as Kueue's scheduler does to make room."""
        with self._lock:
            self._preempt.add((namespace, name))

    # ----- one step ------------------------------------------------------------------------------------------

    def step(self) -> None:
        """Check the rule, evict what is to be preempted, then admit what fits, each Workload at most once."""
        self.ticks += 1
        self.check_pods()
        workloads = self.server.list(f"workloads.{GROUP}")
        with self._lock:
            asked = set(self._preempt)
        for wl in workloads:
            meta = wl["metadata"]
            key = (meta["namespace"], meta["name"])
            if key in asked or (meta.get("annotations") or {}).get(ANNOTATION_PREEMPT):
                self._evict(wl)
                with self._lock:
                    self._preempt.discard(key)
        if self._paused:
            return
        workloads = self.server.list(f"workloads.{GROUP}")
        queues = {(q["metadata"]["namespace"], q["metadata"]["name"]): q
                  for q in self.server.list(f"localqueues.{GROUP}")}
        clusters = {q["metadata"]["name"]: q for q in self.server.list(f"clusterqueues.{GROUP}")}
        usage: dict[str, dict[str, Fraction]] = {}
        for wl in workloads:
            if has_quota(wl) and not _is_true(wl, "Finished"):
                admission = wl["status"]["admission"]
                used = usage.setdefault(admission.get("clusterQueue", ""), {})
                for assignment in admission.get("podSetAssignments") or []:
                    for resource, value in (assignment.get("resourceUsage") or {}).items():
                        used[resource] = used.get(resource, Fraction(0)) + quantity(value)
        pending = [wl for wl in workloads if not has_quota(wl) and not _is_true(wl, "Finished")
                   and (wl.get("spec") or {}).get("active", True) is not False]
        pending.sort(key=lambda w: (-int((w.get("spec") or {}).get("priority") or 0),
                                    w["metadata"].get("creationTimestamp") or "", w["metadata"]["name"]))
        for wl in pending:
            self._consider(wl, queues, clusters, usage)

    def _consider(self, wl: Json, queues: Mapping[tuple[str, str], Json], clusters: Mapping[str, Json],
                  usage: dict[str, dict[str, Fraction]]) -> None:
        meta, spec = wl["metadata"], wl.get("spec") or {}
        queue = queues.get((meta["namespace"], spec.get("queueName") or ""))
        if queue is None:
            self._pending(wl, "Inadmissible", f"LocalQueue {spec.get('queueName')} doesn't exist")
            return
        cq_name = (queue.get("spec") or {}).get("clusterQueue") or ""
        cq = clusters.get(cq_name)
        if cq is None:
            self._pending(wl, "Inadmissible", f"ClusterQueue {cq_name} doesn't exist")
            return
        groups = (cq.get("spec") or {}).get("resourceGroups") or []
        flavors = (groups[0].get("flavors") or []) if groups else []
        if not flavors:
            self._pending(wl, "Inadmissible", f"ClusterQueue {cq_name} has no flavor")
            return
        flavor = flavors[0]  # the stand-in's one flavor
        quota = {r["name"]: quantity(r["nominalQuota"]) for r in flavor.get("resources") or []}
        used = usage.setdefault(cq_name, {})
        assignments: list[Json] = []
        problem = ""
        for pod_set in spec.get("podSets") or []:
            per_pod = pod_requests(pod_set.get("template") or {})
            uncovered = sorted(r for r, v in per_pod.items() if v > 0 and r not in quota)
            if uncovered:
                problem = (f"couldn't assign flavors to pod set {pod_set.get('name')}: resource {uncovered[0]}"
                           f" unavailable in ClusterQueue")
                break
            count = int(pod_set.get("count", 1))
            lowest = int(pod_set.get("minCount") or count)
            fits = next((n for n in range(count, lowest - 1, -1)
                         if all(used.get(r, 0) + v * n <= quota[r] for r, v in per_pod.items())), None)
            if fits is None:
                short = next(r for r, v in sorted(per_pod.items()) if used.get(r, 0) + v * lowest > quota[r])
                more = used.get(short, 0) + per_pod[short] * lowest - quota[short]
                problem = (f"couldn't assign flavors to pod set {pod_set.get('name')}: insufficient unused quota for"
                           f" {short} in flavor {flavor['name']}, {_show(more)} more needed")
                break
            assignments.append({
                "name": pod_set.get("name") or "main",
                "flavors": {r: flavor["name"] for r in sorted(per_pod)},
                "resourceUsage": {r: _show(v * fits) for r, v in sorted(per_pod.items())},
                "count": fits,
            })
        if problem:
            self._pending(wl, "Pending", problem)
            return
        for assignment in assignments:
            for resource, value in assignment["resourceUsage"].items():
                used[resource] = used.get(resource, Fraction(0)) + quantity(value)
        self._admit(wl, {"clusterQueue": cq_name, "podSetAssignments": assignments})

    def _write_status(self, wl: Json, status: Json) -> bool:
        meta = wl["metadata"]
        try:
            self.server.patch(f"workloads.{GROUP}", meta["namespace"], meta["name"],
                              {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
                              subresource="status")
        except Exception as e:  # a conflict (someone wrote since the list) or the Workload is gone: next tick
            log.debug("kueue stand-in: %s/%s not written: %s", meta["namespace"], meta["name"], e)
            return False
        return True

    def _pending(self, wl: Json, reason: str, message: str) -> None:
        found = _cond(wl, "QuotaReserved")
        if found is not None and found.get("status") == "False" and found.get("reason") == reason \
                and found.get("message") == message:
            return
        conditions = copy.deepcopy((wl.get("status") or {}).get("conditions") or [])
        _set(conditions, "QuotaReserved", False, reason, message, wl["metadata"].get("generation"))
        self._write_status(wl, {"conditions": conditions})

    def _admit(self, wl: Json, admission: Json) -> None:
        generation = wl["metadata"].get("generation")
        conditions = copy.deepcopy((wl.get("status") or {}).get("conditions") or [])
        _set(conditions, "QuotaReserved", True, "QuotaReserved",
             f"Quota reserved in ClusterQueue {admission['clusterQueue']}", generation)
        _set(conditions, "Admitted", True, "Admitted", "The workload is admitted", generation)
        for ctype in ("Evicted", "Preempted"):
            found = next((c for c in conditions if c.get("type") == ctype and c.get("status") == "True"), None)
            if found is not None:
                _set(conditions, ctype, False, "QuotaReserved", f"Previously: {found.get('message')}", generation)
        self._write_status(wl, {"conditions": conditions, "admission": admission})

    def _evict(self, wl: Json) -> None:
        meta = wl["metadata"]
        annotations = meta.get("annotations") or {}
        if ANNOTATION_PREEMPT in annotations:
            with contextlib.suppress(Exception):
                self.server.patch(f"workloads.{GROUP}", meta["namespace"], meta["name"],
                                  {"metadata": {"annotations": {ANNOTATION_PREEMPT: None}}})
            wl = self.server.get(f"workloads.{GROUP}", meta["namespace"], meta["name"]) or wl
        if not has_quota(wl) or _is_true(wl, "Evicted"):
            return
        generation = wl["metadata"].get("generation")
        conditions = copy.deepcopy(wl["status"].get("conditions") or [])
        message = "Preempted to accommodate a workload (UID: stand-in) due to prioritization in the ClusterQueue"
        _set(conditions, "Evicted", True, "Preempted", message, generation)
        _set(conditions, "Preempted", True, "InClusterQueue", message, generation)
        self._write_status(wl, {"conditions": conditions})

    # ----- the rule --------------------------------------------------------------------------------------------

    def check_pods(self) -> None:
        """No pod of a job that names a queue exists unless the job's Workload holds an admission."""
        try:
            served = self.server.list(contract.PLURAL)
        except UnknownResourceError:
            return  # no EfficientTrainingJob CRD: no job to check
        jobs = {(j["metadata"]["namespace"], j["metadata"]["uid"]): j for j in served
                if (j["metadata"].get("labels") or {}).get(QUEUE_LABEL)}
        if not jobs:
            return
        workloads = self.server.list(f"workloads.{GROUP}")
        for pod in self.server.list("pods", label_selector=contract.LABEL_JOB_NAME):
            owner = _controller(pod)
            job = jobs.get((pod["metadata"]["namespace"], owner or ""))
            if job is None:
                continue
            mine = [w for w in workloads if _controller(w) == owner]
            if not any((w.get("status") or {}).get("admission") for w in mine):
                self._violate(f"pod {pod['metadata']['name']} of queued job {job['metadata']['name']} exists while"
                              f" its Workload holds no admission ({_describe(mine)})")

    def _check_pod_create(self, rt: ResourceType, obj: Json, old: Json | None) -> None:
        """Admission hook: a pod of a job that names a queue is created only while its Workload is admitted."""
        if old is not None or rt.plural != "pods" or rt.group != "":
            return
        try:
            owner = _controller(obj)
            if owner is None:
                return
            emulator: KubeApiEmulator = self.server.emulator
            namespace = obj["metadata"].get("namespace") or "default"
            jobs = emulator.list_objects(emulator.resource_type(contract.PLURAL), namespace)
            job = next((j for j in jobs if j["metadata"].get("uid") == owner), None)
            if job is None or not (job["metadata"].get("labels") or {}).get(QUEUE_LABEL):
                return
            workloads = emulator.list_objects(emulator.resource_type(f"workloads.{GROUP}"), namespace)
            mine = [w for w in workloads if _controller(w) == owner]
            if not any(is_admitted(w) for w in mine):
                self._violate(f"pod {obj['metadata'].get('name')} of queued job {job['metadata']['name']} created"
                              f" while its Workload is not admitted ({_describe(mine)})")
        except Exception:  # never break a pod create over the check itself
            log.exception("kueue stand-in: pod-create check failed")

    def _violate(self, message: str) -> None:
        with self._lock:
            if message not in self.violations:
                self.violations.append(message)


def _controller(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == contract.KIND:
            return str(ref.get("uid") or "") or None
    return None


def _describe(workloads: list[Json]) -> str:
    if not workloads:
        return "no Workload"
    described = []
    for w in workloads:
        found = (w.get("status") or {}).get("conditions") or []
        described.append(f"{w['metadata']['name']}: " + ", ".join(f"{c.get('type')}={c.get('status')}" for c in found))
    return "; ".join(described)
