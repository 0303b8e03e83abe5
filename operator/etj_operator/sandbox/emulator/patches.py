"""Patches: RFC 7386 merge, a strategic-merge subset and RFC 6902 JSON patch (the ``jsonpatch`` library)."""

from __future__ import annotations

import copy
from typing import Any, Final

import jsonpatch
import jsonpointer

Json = dict[str, Any]

def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch (``null`` deletes a key, lists are replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: Json = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# The list fields that Kubernetes' strategic merge merges by a key instead of replacing (the common subset).
_SMP_MERGE_KEYS: Final = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name", "conditions": "type",
    "ownerReferences": "uid", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
}
_SMP_UNION_LISTS: Final = frozenset({"finalizers"})


def _smp_list(field: str, old: Any, new: list[Any]) -> list[Any]:
    if field in _SMP_UNION_LISTS and isinstance(old, list):
        return list(old) + [item for item in new if item not in old]
    merge_key = _SMP_MERGE_KEYS.get(field)
    if field == "ports":  # container ports merge by containerPort, service ports by port
        merge_key = "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in new) else "port"
    if merge_key is None or not isinstance(old, list) or not all(isinstance(i, dict) for i in new):
        return [strip_smp_directives(i) for i in new]
    result: list[Any] = copy.deepcopy(old)
    for item in new:
        key_value = item.get(merge_key)
        index = next((n for n, o in enumerate(result) if isinstance(o, dict) and o.get(merge_key) == key_value),
                     None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is not None:
            result[index] = apply_strategic_merge_patch(result[index], item)
        else:
            result.append(strip_smp_directives(item))
    return result


def strip_smp_directives(value: Any) -> Any:
    """Drop strategic-merge directives (``$patch``, ``$setElementOrder/...``) from a value being stored."""
    if isinstance(value, dict):
        return {k: strip_smp_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [strip_smp_directives(v) for v in value]
    return value


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch: a merge patch whose well-known lists merge by key (see docs/emulator.md).

    Supported: merge keys of containers, env, volumes, ports, conditions, ownerReferences...; union of
    ``finalizers``; the ``$patch: replace|delete`` and ``$deleteFromPrimitiveList/<field>`` directives.
    ``$setElementOrder`` and ``$retainKeys`` are accepted and ignored.
    """
    if not isinstance(patch, dict):
        return strip_smp_directives(copy.deepcopy(patch))
    if patch.get("$patch") == "replace":
        return strip_smp_directives(patch)
    result: Json = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
        elif key.startswith("$"):
            continue
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _smp_list(key, result.get(key), value)
        else:
            result[key] = apply_strategic_merge_patch(result.get(key), value)
    return result


class JsonPatchError(Exception):
    """An RFC 6902 operation could not be applied (a failed ``test`` included); the server answers 422."""


def apply_json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch to a copy of ``doc`` with the ``jsonpatch`` library.

    Every failure (a malformed operation or pointer, a missing path, a failed ``test``) is raised as
    :class:`JsonPatchError`, which the emulator answers with 422 Invalid as a real server does.
    """
    if not isinstance(operations, list):
        raise JsonPatchError("a JSON patch must be a list of operations")
    if not all(isinstance(operation, dict) for operation in operations):
        raise JsonPatchError("invalid operation: every operation of a JSON patch must be an object")
    try:
        return jsonpatch.JsonPatch(operations).apply(copy.deepcopy(doc), in_place=True)
    except jsonpatch.JsonPatchTestFailed as e:
        raise JsonPatchError(f"testing value failed: {e}") from e
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError,
            KeyError, IndexError) as e:
        raise JsonPatchError(f"the JSON patch could not be applied: {e}") from e
