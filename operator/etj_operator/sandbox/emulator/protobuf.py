r"""Request bodies in Kubernetes' protobuf encoding, decoded into the JSON form the emulator stores.

kubectl's typed commands (``kubectl create namespace|configmap|secret|serviceaccount|role|rolebinding|
clusterrole|clusterrolebinding|token``, ``kubectl auth can-i``) send ``Content-Type: application/vnd.kubernetes.
protobuf`` for built-in kinds, and client-go has no fallback to JSON for protobuf (it has one for CBOR only).
A real server decodes these bodies; the emulator does too, for the kinds listed in :data:`KINDS`.

The encoding: the four magic bytes ``k8s\x00``, then a ``runtime.Unknown`` message (field 1 ``typeMeta``
{1 apiVersion, 2 kind}, field 2 ``raw``: the object's own message, 3 contentEncoding, 4 contentType). Each
object message is the type's generated protobuf (``k8s.io/api/.../generated.proto``); the field numbers
below were checked against the bytes kubectl 1.32 sends (the tests replay such captures). Go's encoder
writes empty strings, zero numbers and empty messages for fields that JSON would omit; they are dropped
here, as the JSON form would not carry them. A kind outside :data:`KINDS` is answered 415 with a message
that says to send JSON instead (``kubectl apply -f`` always does).
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any, Final

from .errors import ApiError

__all__ = ["CONTENT_TYPE", "KINDS", "ProtobufError", "decode_object", "decode_wire", "is_protobuf"]

Json = dict[str, Any]

CONTENT_TYPE: Final = "application/vnd.kubernetes.protobuf"
MAGIC: Final = b"k8s\x00"


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message (or not the Kubernetes envelope)."""


# ----- the wire format --------------------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos
        if shift > 63:
            raise ProtobufError("varint longer than 64 bits")


def decode_wire(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Split a message into ``(field number, wire type, value)``: an int for varints, bytes otherwise."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if number == 0:
            raise ProtobufError("field number 0")
        if wire_type == _VARINT:
            value, pos = _varint(data, pos)
        elif wire_type == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated length-delimited field")
            value, pos = data[pos:pos + length], pos + length
        elif wire_type in (_I64, _I32):
            width = 8 if wire_type == _I64 else 4
            if pos + width > len(data):
                raise ProtobufError("truncated fixed-width field")
            value, pos = data[pos:pos + width], pos + width
        else:
            raise ProtobufError(f"unsupported wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


# ----- message shapes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field: its JSON name, its type and whether it repeats.

    ``kind`` is ``string``, ``bytes`` (base64 in JSON), ``int``, ``bool``, ``time`` (``metav1.Time``),
    ``map`` (``map<string,string>``), ``bytesmap`` (``map<string,bytes>``) or the name of a message in
    :data:`MESSAGES`.
    """

    name: str
    kind: str
    repeated: bool = False


def _f(name: str, kind: str = "string", repeated: bool = False) -> Field:
    return Field(name, kind, repeated)


MESSAGES: Final[dict[str, dict[int, Field]]] = {
    "ObjectMeta": {
        1: _f("name"), 2: _f("generateName"), 3: _f("namespace"), 4: _f("selfLink"), 5: _f("uid"),
        6: _f("resourceVersion"), 7: _f("generation", "int"), 8: _f("creationTimestamp", "time"),
        9: _f("deletionTimestamp", "time"), 10: _f("deletionGracePeriodSeconds", "int"),
        11: _f("labels", "map"), 12: _f("annotations", "map"),
        13: _f("ownerReferences", "OwnerReference", True), 14: _f("finalizers", repeated=True),
    },
    "OwnerReference": {
        1: _f("kind"), 3: _f("name"), 4: _f("uid"), 5: _f("apiVersion"), 6: _f("controller", "bool"),
        7: _f("blockOwnerDeletion", "bool"),
    },
    "Time": {},  # decoded specially (seconds, nanos)
    "Namespace": {1: _f("metadata", "ObjectMeta"), 2: _f("spec", "NamespaceSpec")},
    "NamespaceSpec": {1: _f("finalizers", repeated=True)},
    "ConfigMap": {1: _f("metadata", "ObjectMeta"), 2: _f("data", "map"), 3: _f("binaryData", "bytesmap"),
                  4: _f("immutable", "bool")},
    "Secret": {1: _f("metadata", "ObjectMeta"), 2: _f("data", "bytesmap"), 3: _f("type"),
               4: _f("stringData", "map"), 5: _f("immutable", "bool")},
    "ServiceAccount": {1: _f("metadata", "ObjectMeta"), 2: _f("secrets", "ObjectReference", True),
                       3: _f("imagePullSecrets", "LocalObjectReference", True),
                       4: _f("automountServiceAccountToken", "bool")},
    "ObjectReference": {1: _f("kind"), 2: _f("namespace"), 3: _f("name"), 4: _f("uid"), 5: _f("apiVersion"),
                        6: _f("resourceVersion"), 7: _f("fieldPath")},
    "LocalObjectReference": {1: _f("name")},
    "PolicyRule": {1: _f("verbs", repeated=True), 2: _f("apiGroups", repeated=True),
                   3: _f("resources", repeated=True), 4: _f("resourceNames", repeated=True),
                   5: _f("nonResourceURLs", repeated=True)},
    "Role": {1: _f("metadata", "ObjectMeta"), 2: _f("rules", "PolicyRule", True)},
    "ClusterRole": {1: _f("metadata", "ObjectMeta"), 2: _f("rules", "PolicyRule", True),
                    3: _f("aggregationRule", "AggregationRule")},
    "AggregationRule": {1: _f("clusterRoleSelectors", "LabelSelector", True)},
    "LabelSelector": {1: _f("matchLabels", "map"), 2: _f("matchExpressions", "LabelSelectorRequirement", True)},
    "LabelSelectorRequirement": {1: _f("key"), 2: _f("operator"), 3: _f("values", repeated=True)},
    "Subject": {1: _f("kind"), 2: _f("apiGroup"), 3: _f("name"), 4: _f("namespace")},
    "RoleRef": {1: _f("apiGroup"), 2: _f("kind"), 3: _f("name")},
    "RoleBinding": {1: _f("metadata", "ObjectMeta"), 2: _f("subjects", "Subject", True),
                    3: _f("roleRef", "RoleRef")},
    "SelfSubjectAccessReview": {1: _f("metadata", "ObjectMeta"), 2: _f("spec", "SelfSubjectAccessReviewSpec")},
    "SelfSubjectAccessReviewSpec": {1: _f("resourceAttributes", "ResourceAttributes"),
                                    2: _f("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: _f("namespace"), 2: _f("verb"), 3: _f("group"), 4: _f("version"),
                           5: _f("resource"), 6: _f("subresource"), 7: _f("name")},
    "NonResourceAttributes": {1: _f("path"), 2: _f("verb")},
    "SelfSubjectRulesReview": {1: _f("metadata", "ObjectMeta"), 2: _f("spec", "SelfSubjectRulesReviewSpec")},
    "SelfSubjectRulesReviewSpec": {1: _f("namespace")},
    "TokenRequest": {1: _f("metadata", "ObjectMeta"), 2: _f("spec", "TokenRequestSpec")},
    "TokenRequestSpec": {1: _f("audiences", repeated=True), 3: _f("boundObjectRef", "BoundObjectReference"),
                         4: _f("expirationSeconds", "int")},
    "BoundObjectReference": {1: _f("kind"), 2: _f("apiVersion"), 3: _f("name"), 4: _f("uid")},
}

#: ``(apiVersion, kind) -> message`` of the objects whose protobuf bodies the emulator decodes.
KINDS: Final[dict[tuple[str, str], str]] = {
    ("v1", "Namespace"): "Namespace",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "ServiceAccount"): "ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "Role"): "Role",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "ClusterRole",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "RoleBinding",
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): "SelfSubjectAccessReview",
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): "SelfSubjectRulesReview",
    ("authentication.k8s.io/v1", "TokenRequest"): "TokenRequest",
}


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("a string field holds a number")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtobufError("a string field is not UTF-8") from e


def _time(value: int | bytes) -> str | None:
    if not isinstance(value, bytes):
        raise ProtobufError("a time field holds a number")
    seconds = 0
    for number, _, item in decode_wire(value):
        if number == 1 and isinstance(item, int):
            seconds = item
    if seconds == 0:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _map_entry(value: int | bytes, binary: bool) -> tuple[str, str]:
    if not isinstance(value, bytes):
        raise ProtobufError("a map entry holds a number")
    key, item = "", ""
    for number, _, part in decode_wire(value):
        if number == 1:
            key = _text(part)
        elif number == 2:
            if binary:
                if not isinstance(part, bytes):
                    raise ProtobufError("a bytes value holds a number")
                item = base64.b64encode(part).decode()
            else:
                item = _text(part)
    return key, item


def _scalar(field: Field, value: int | bytes) -> Any:
    if field.kind == "string":
        return _text(value)
    if field.kind == "bytes":
        if not isinstance(value, bytes):
            raise ProtobufError(f"{field.name} holds a number")
        return base64.b64encode(value).decode()
    if field.kind in ("int", "bool"):
        if not isinstance(value, int):
            raise ProtobufError(f"{field.name} is not a varint")
        if field.kind == "bool":
            return bool(value)
        return value - (1 << 64) if value >= 1 << 63 else value  # int64 two's complement
    if field.kind == "time":
        return _time(value)
    if not isinstance(value, bytes):
        raise ProtobufError(f"{field.name} is not a message")
    return decode_message(field.kind, value)


def _empty(value: Any) -> bool:
    return value in ("", 0, False, None) or value == {} or value == []


def decode_message(message: str, data: bytes) -> Json:
    """Decode one message of :data:`MESSAGES` into its JSON form (zero values dropped, as JSON omits them)."""
    shape = MESSAGES[message]
    out: Json = {}
    for number, _, value in decode_wire(data):
        field = shape.get(number)
        if field is None:
            continue  # a field this table does not know: a real server would keep it; see docs/emulator.md
        if field.kind in ("map", "bytesmap"):
            key, item = _map_entry(value, field.kind == "bytesmap")
            out.setdefault(field.name, {})[key] = item
            continue
        decoded = _scalar(field, value)
        if field.repeated:
            out.setdefault(field.name, []).append(decoded)
        elif not _empty(decoded):
            out[field.name] = decoded
    return {k: v for k, v in out.items() if not _empty(v) or k == "metadata"}


def _unsupported(detail: str) -> ApiError:
    supported = ", ".join(sorted({kind for _, kind in KINDS}))
    return ApiError(415, "UnsupportedMediaType",
                    f"the emulator cannot decode this protobuf body ({detail}); it decodes {supported}. Send JSON"
                    " instead (kubectl apply -f, or --output/--content-type json)")


def decode_object(body: bytes) -> Json:
    """Decode a ``application/vnd.kubernetes.protobuf`` request body into a JSON object.

    Raises :class:`ApiError` 400 for malformed bytes and 415 for a kind the emulator does not decode.
    """
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "a protobuf body must start with the bytes 'k8s\\x00'")
    api_version = kind = ""
    raw = b""
    try:
        for number, _, value in decode_wire(body[len(MAGIC):]):
            if number == 1 and isinstance(value, bytes):
                for sub, _, item in decode_wire(value):
                    if sub == 1:
                        api_version = _text(item)
                    elif sub == 2:
                        kind = _text(item)
            elif number == 2 and isinstance(value, bytes):
                raw = value
            elif number == 3 and isinstance(value, bytes) and value:
                raise _unsupported(f"content encoding {value!r}")
        message = KINDS.get((api_version, kind))
        if message is None:
            raise _unsupported(f"kind {kind or '?'} of {api_version or '?'}")
        obj = decode_message(message, raw)
    except ProtobufError as e:
        raise ApiError(400, "BadRequest", f"the protobuf request body is malformed: {e}") from e
    return {"apiVersion": api_version, "kind": kind, **obj}


def is_protobuf(content_type: str) -> bool:
    """Whether a request's content type is Kubernetes' protobuf encoding."""
    return content_type.split(";")[0].strip() == CONTENT_TYPE

