"""Resource types: the built-in ones the emulator serves and those a CRD defines."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .errors import _bad_request

Json = dict[str, Any]

STANDARD_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

_COMMON_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One served resource (group, version, plural) with what discovery and the handlers need to know."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    field_labels: frozenset[str] = _COMMON_FIELDS
    verbs: tuple[str, ...] = STANDARD_VERBS
    printer_columns: tuple[Json, ...] = ()
    schema: Json | None = None  # openAPIV3Schema of a custom resource: pruning, defaults, OpenAPI
    custom: bool = False

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` of this resource's objects (``v1`` or ``group/version``)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> tuple[str, str]:
        """Objects are stored per (group, plural): every served version of a CRD sees the same objects."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        """Whether ``.status`` is only writable through the ``/status`` subresource."""
        return "status" in self.subresources


def _builtin(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
             short: tuple[str, ...] = (), subresources: Iterable[str] = (), fields: Iterable[str] = (),
             categories: tuple[str, ...] = ()) -> ResourceType:
    return ResourceType(group=group, version=version, plural=plural, kind=kind, namespaced=namespaced,
                        singular=kind.lower(), short_names=short, categories=categories,
                        subresources=frozenset(subresources), field_labels=_COMMON_FIELDS | frozenset(fields))


_POD_FIELDS: Final = ("status.phase", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                      "spec.serviceAccountName", "spec.hostNetwork", "status.podIP", "status.nominatedNodeName")
_EVENT_FIELDS: Final = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                        "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type")

BUILTIN_RESOURCES: Final[tuple[ResourceType, ...]] = (
    _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short=("ns",),
             subresources=("status", "finalize"), fields=("status.phase",)),
    _builtin("", "v1", "nodes", "Node", namespaced=False, short=("no",), subresources=("status",),
             fields=("spec.unschedulable",)),
    _builtin("", "v1", "pods", "Pod", short=("po",), subresources=("status", "log"), fields=_POD_FIELDS,
             categories=("all",)),
    _builtin("", "v1", "services", "Service", short=("svc",), subresources=("status",), categories=("all",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",), subresources=("token",)),
    _builtin("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _builtin("", "v1", "secrets", "Secret", fields=("type",)),
    _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",),
             subresources=("status",)),
    _builtin("", "v1", "events", "Event", short=("ev",), fields=_EVENT_FIELDS),
    _builtin("events.k8s.io", "v1", "events", "Event", short=("ev",),
             fields=("reason", "regarding.kind", "regarding.name", "regarding.namespace", "type")),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short=("crd", "crds"), subresources=("status",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", namespaced=False, short=("pc",)),
    # Answered from the caller's identity (rbac.AccessControl), never stored: create only, as on a real server.
    ResourceType(group="authorization.k8s.io", version="v1", plural="selfsubjectaccessreviews",
                 kind="SelfSubjectAccessReview", namespaced=False, singular="selfsubjectaccessreview",
                 verbs=("create",)),
    ResourceType(group="authorization.k8s.io", version="v1", plural="selfsubjectrulesreviews",
                 kind="SelfSubjectRulesReview", namespaced=False, singular="selfsubjectrulesreview",
                 verbs=("create",)),
)


def resource_types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """Build the served resource types of a CRD: one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, kind, plural = spec.get("group"), names.get("kind"), names.get("plural")
    if not group or not kind or not plural:
        raise _bad_request("a CustomResourceDefinition needs spec.group, spec.names.kind and spec.names.plural")
    types: list[ResourceType] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        selectable = {f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or [] if "jsonPath" in f}
        types.append(ResourceType(
            group=group, version=version["name"], plural=plural, kind=kind,
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular") or kind.lower(),
            short_names=tuple(names.get("shortNames") or ()), categories=tuple(names.get("categories") or ()),
            subresources=frozenset((version.get("subresources") or {}).keys()),
            field_labels=_COMMON_FIELDS | frozenset(selectable),
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            schema=(version.get("schema") or {}).get("openAPIV3Schema"), custom=True,
        ))
    return types

