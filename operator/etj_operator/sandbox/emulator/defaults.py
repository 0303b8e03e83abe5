"""What a real API server adds to every new pod: registry defaults and the default admission plugins.

The operator must not be disturbed by a pod that comes back with more than it sent, so the emulator adds
what kube-apiserver adds on create (v1.36, default admission plugins):

* **ServiceAccount admission:** ``spec.serviceAccountName`` (``default``) and the deprecated
  ``spec.serviceAccount``; unless ``automountServiceAccountToken: false``, a projected volume
  ``kube-api-access-<5 chars>`` (a bound token, the cluster CA from the ``kube-root-ca.crt`` ConfigMap, the
  namespace) mounted read-only at ``/var/run/secrets/kubernetes.io/serviceaccount`` in every container that
  has no mount there yet;
* **DefaultTolerationSeconds:** ``NoExecute`` tolerations of ``node.kubernetes.io/not-ready`` and
  ``node.kubernetes.io/unreachable`` for 300 s, unless the pod tolerates them already;
* **Priority:** ``priority: 0`` and ``preemptionPolicy: PreemptLowerPriority`` without a priority class;
* **defaulting:** ``dnsPolicy``, ``enableServiceLinks``, ``restartPolicy``, ``schedulerName``,
  ``securityContext``, ``terminationGracePeriodSeconds``; per container ``imagePullPolicy`` (``Always`` for
  ``:latest`` or no tag, else ``IfNotPresent``), ``terminationMessagePath``/``Policy``, port protocols, and
  requests copied from limits where a limit has no request.

Not done: refusing a pod whose ServiceAccount does not exist (the ServiceAccount plugin does; the emulator has
no ServiceAccount controller creating ``default`` in each namespace), LimitRanger and ResourceQuota, Pod
Security Admission. See docs/emulator.md.
"""

from __future__ import annotations

import copy
from collections.abc import MutableMapping
from typing import Any, Final

from .objects import _generate_name

__all__ = ["SERVICE_ACCOUNT_MOUNT_PATH", "default_pod_spec"]

Json = dict[str, Any]

SERVICE_ACCOUNT_MOUNT_PATH: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
#: A bound token's lifetime in the projected volume (an hour, plus the kubelet's 7 s of skew).
TOKEN_EXPIRATION_SECONDS: Final = 3607
DEFAULT_TOLERATION_SECONDS: Final = 300
_TAINTS: Final = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _token_volume() -> Json:
    return {
        "name": _generate_name("kube-api-access-"),
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                            "path": "namespace"}]}},
            ],
        },
    }


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.split(":", 1)[1] if ":" in last else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _default_container(container: MutableMapping[str, Any]) -> None:
    if container.get("image"):
        container.setdefault("imagePullPolicy", _image_pull_policy(str(container["image"])))
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    resources = container.get("resources")
    if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
        requests = resources.setdefault("requests", {})
        if isinstance(requests, dict):
            for name, quantity in resources["limits"].items():
                requests.setdefault(name, copy.deepcopy(quantity))


def default_pod_spec(spec: MutableMapping[str, Any]) -> None:
    """Add to a new pod's ``spec`` (in place) what a real API server adds on create."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    spec["serviceAccount"] = spec["serviceAccountName"]
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("securityContext", {})
    if not spec.get("priorityClassName"):
        spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")

    containers = [c for group in ("initContainers", "containers") for c in spec.get(group) or []
                  if isinstance(c, dict)]
    for container in containers:
        _default_container(container)

    tolerations = spec.setdefault("tolerations", [])
    if isinstance(tolerations, list):
        for taint in _TAINTS:
            tolerated = any(isinstance(t, dict) and t.get("key") == taint and t.get("effect") in (None, "", "NoExecute")
                            for t in tolerations)
            if not tolerated:
                tolerations.append({"key": taint, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": DEFAULT_TOLERATION_SECONDS})

    if spec.get("automountServiceAccountToken") is False:
        return
    volume = _token_volume()
    mounted = False
    for container in containers:
        mounts = container.setdefault("volumeMounts", [])
        if not isinstance(mounts, list) or any(
                isinstance(m, dict) and m.get("mountPath") == SERVICE_ACCOUNT_MOUNT_PATH for m in mounts):
            continue
        mounts.append({"name": volume["name"], "mountPath": SERVICE_ACCOUNT_MOUNT_PATH, "readOnly": True})
        mounted = True
    if mounted:
        spec.setdefault("volumes", []).append(volume)
