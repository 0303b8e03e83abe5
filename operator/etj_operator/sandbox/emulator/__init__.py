"""An in-memory Kubernetes API server for tests and the sandbox: **never a production component**.

There is no Kubernetes cluster on the development machines, so the integration tests and ``make demo`` run
the real operator (kopf, the ``kubernetes`` client, kubectl) against this emulator. It subclasses kmock's
:class:`kmock.KubernetesEmulator` and fills the gaps of kmock 0.8 that make kopf misbehave against it:

* server-set ``uid``, ``resourceVersion`` (one global counter), ``generation``, ``creationTimestamp``,
  namespace from the URL, ``generateName``; Status objects for 404/409/422 errors; optimistic concurrency;
* ``labelSelector`` and ``fieldSelector`` on list, watch and deletecollection;
* a real ``status`` subresource (for CRDs that declare it, pods, nodes, services, namespaces, CRDs);
* merge, strategic-merge (a documented subset) and JSON patches (a failed ``test`` op answers 422);
* watches that resume from ``resourceVersion`` without replaying, BOOKMARKs, ``timeoutSeconds``, 410 Gone;
* ``kind: <Kind>List`` lists with a list ``resourceVersion`` and ``limit``/``continue`` paging;
* finalizers and ``deletionTimestamp``; ownerReference garbage collection (Background, Foreground, Orphan);
  namespace deletion that empties the namespace first;
* discovery that kopf accepts, ``GET /api/v1/namespaces`` (a 500 in kmock 0.8), CRDs that become served
  resources when created, structural pruning and defaulting of custom resources from the CRD schema;
* ``meta.k8s.io/v1`` Tables for ``kubectl get`` and an OpenAPI v3 index for ``kubectl apply``.

:class:`EmulatorServer` runs it on its own thread and event loop (``KopfRunner`` joins the operator thread on
exit, which would freeze an emulator served on the test's loop), writes a kubeconfig, and offers thread-safe
accessors so tests can play the kubelet, plus fault injection (:class:`FaultInjector`) and a request log
(:class:`RequestRecord`). See ``docs/emulator.md`` for what differs from a real API server.

Modules, one responsibility each: ``errors`` (Status answers), ``objects`` (metadata helpers), ``selection``
(label and field selectors), ``patches`` (merge, strategic merge, JSON patch), ``resources`` (built-in and
CRD-defined types), ``structural`` (pruning and defaulting), ``admission`` and ``cel`` (schema and CEL
validation of custom resources), ``crdcheck`` (what a real server checks in a CRD), ``authn`` and ``rbac``
(bearer tokens, the RBAC authorizer and its escalation checks), ``requestlog`` (request log and faults),
``watch`` (watch plumbing), ``core`` (the state machine), ``defaults`` (what a server adds to new pods),
``frontend`` (HTTP), ``protobuf`` (kubectl's protobuf bodies), ``tables`` (``kubectl get`` columns) and
``server`` (the threaded server and its accessors).
"""

from .core import KubeApiEmulator
from .errors import ApiError, UnknownResourceError
from .patches import apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from .requestlog import Fault, FaultInjector, RequestRecord
from .resources import ResourceType
from .selection import LabelRequirement, parse_field_selector, parse_label_selector
from .server import EmulatorServer
from .structural import prune_and_default

__all__ = [
    "ApiError",
    "EmulatorServer",
    "Fault",
    "FaultInjector",
    "KubeApiEmulator",
    "LabelRequirement",
    "RequestRecord",
    "ResourceType",
    "UnknownResourceError",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
    "parse_field_selector",
    "parse_label_selector",
    "prune_and_default",
]
