"""The kubelet's PodResources API (``v1.PodResourcesLister/List``): a client, a server, and their wire codec.

The kubelet serves this gRPC service on a unix socket (``/var/lib/kubelet/pod-resources/kubelet.sock``); its
answer says which container of which pod holds which device of each device-plugin resource. With the NVIDIA
device plugin the resource is ``nvidia.com/gpu`` and the device ids are GPU UUIDs. The answer names pods by
namespace and name only (no UID): the agent joins them with the API's pods of its node.

The messages are encoded here by hand (no generated code, no protobuf runtime), after
``k8s.io/kubelet/pkg/apis/podresources/v1/api.proto``; field numbers::

    ListPodResourcesRequest  {}
    ListPodResourcesResponse {1: repeated PodResources pod_resources}
    PodResources             {1: string name, 2: string namespace, 3: repeated ContainerResources containers}
    ContainerResources       {1: string name, 2: repeated ContainerDevices devices}
    ContainerDevices         {1: string resource_name, 2: repeated string device_ids}

Newer kubelets add fields (``cpu_ids``, ``memory``, ``dynamic_resources``, ``topology``); the decoder skips
every field it does not know, of any wire type, so an answer of any kubelet version decodes.

:class:`PodResourcesClient` calls ``List`` with a timeout through grpcio's generic ``unary_unary`` (a fresh
channel per call: no reconnect backoff carries over from a kubelet that was down). :class:`PodResourcesServer`
answers ``List`` from a table the caller sets: tests use it, and a sandbox kubelet can.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped]

from etj_contract import agent as a
from etj_operator.nodeagent.records import ContainerAllocation

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_MESSAGE_BYTES",
    "CodecError",
    "ListRequest",
    "PodResourcesClient",
    "PodResourcesError",
    "PodResourcesServer",
    "decode_list_request",
    "decode_list_response",
    "encode_list_request",
    "encode_list_response",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS: Final = 5.0
#: The largest answer the client accepts (gRPC's default is 4 MiB; a node with many pods can pass it).
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024


class CodecError(ValueError):
    """Bytes that are not a well-formed message of this API."""


class PodResourcesError(RuntimeError):
    """``List`` failed: the kubelet is unreachable, answered an error, or sent what does not decode."""


# --- the protobuf wire format -----------------------------------------------------------------------------------
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise CodecError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >> 64:
                raise CodecError("varint beyond 64 bits")
            return value, pos
    raise CodecError("varint longer than 10 bytes")


def _skip(data: bytes, pos: int, number: int, wire_type: int, depth: int = 0) -> int:
    """The position after a field of ``wire_type`` whose key ends at ``pos`` (groups skipped whole)."""
    if wire_type == _VARINT:
        return _read_varint(data, pos)[1]
    if wire_type in (_I64, _I32):
        end = pos + (8 if wire_type == _I64 else 4)
        if end > len(data):
            raise CodecError("truncated fixed-width field")
        return end
    if wire_type == _LEN:
        length, pos = _read_varint(data, pos)
        if pos + length > len(data):
            raise CodecError("truncated length-delimited field")
        return pos + length
    if wire_type == _SGROUP:
        if depth > 32:
            raise CodecError("groups nested too deep")
        while True:
            key, pos = _read_varint(data, pos)
            inner_number, inner_type = key >> 3, key & 7
            if inner_type == _EGROUP:
                if inner_number != number:
                    raise CodecError(f"group {number} ended by {inner_number}")
                return pos
            pos = _skip(data, pos, inner_number, inner_type, depth + 1)
    raise CodecError(f"unexpected wire type {wire_type} (field {number})")


def _fields(data: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of each field: an int for varints, the payload bytes for LEN.

    Fixed-width fields and groups are skipped (none of the known fields has those types); a known field
    number with another wire type is yielded as it is, and the caller ignores it.
    """
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise CodecError("field number 0")
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, wire_type, value
        elif wire_type == _LEN:
            length, start = _read_varint(data, pos)
            if start + length > len(data):
                raise CodecError("truncated length-delimited field")
            pos = start + length
            yield number, wire_type, data[start:pos]
        elif wire_type == _EGROUP:
            raise CodecError(f"unmatched end of group {number}")
        else:
            pos = _skip(data, pos, number, wire_type)


def _payload(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise CodecError(f"{what}: expected a message")
    return value


def _text(value: int | bytes, what: str) -> str:
    if not isinstance(value, bytes):
        raise CodecError(f"{what}: expected a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"{what}: not UTF-8: {e}") from e


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _string_field(number: int, value: str) -> bytes:
    return _len_field(number, value.encode("utf-8")) if value else b""  # proto3 leaves empty strings out


# --- the messages -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListRequest:
    """``ListPodResourcesRequest``: it has no fields."""


def encode_list_request(request: ListRequest) -> bytes:
    """The request's bytes (empty)."""
    return b""


def decode_list_request(data: bytes) -> ListRequest:
    """A request (any fields of a newer client are skipped)."""
    for _ in _fields(data):
        pass
    return ListRequest()


def _decode_devices(data: bytes) -> tuple[str, tuple[str, ...]]:
    resource, ids = "", []
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == _LEN:
            resource = _text(value, "ContainerDevices.resource_name")
        elif number == 2 and wire_type == _LEN:
            ids.append(_text(value, "ContainerDevices.device_ids"))
    return resource, tuple(ids)


def _decode_container(data: bytes) -> tuple[str, list[tuple[str, tuple[str, ...]]]]:
    name, devices = "", []
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == _LEN:
            name = _text(value, "ContainerResources.name")
        elif number == 2 and wire_type == _LEN:
            devices.append(_decode_devices(_payload(value, "ContainerResources.devices")))
    return name, devices


def _decode_pod(data: bytes) -> list[ContainerAllocation]:
    name = namespace = ""
    containers: list[tuple[str, list[tuple[str, tuple[str, ...]]]]] = []
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == _LEN:
            name = _text(value, "PodResources.name")
        elif number == 2 and wire_type == _LEN:
            namespace = _text(value, "PodResources.namespace")
        elif number == 3 and wire_type == _LEN:
            containers.append(_decode_container(_payload(value, "PodResources.containers")))
    return [
        ContainerAllocation(namespace, name, container, resource, ids)
        for container, devices in containers
        for resource, ids in devices
    ]


def decode_list_response(data: bytes) -> list[ContainerAllocation]:
    """A ``ListPodResourcesResponse`` as one record per (pod, container, resource), in the answer's order."""
    allocations: list[ContainerAllocation] = []
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == _LEN:
            allocations += _decode_pod(_payload(value, "ListPodResourcesResponse.pod_resources"))
    return allocations


def encode_list_response(allocations: Sequence[ContainerAllocation]) -> bytes:
    """A ``ListPodResourcesResponse``: records of one pod (and of one container) are grouped, in first-seen order.

    A container that holds no device of a resource is a record with no device ids (it is sent with its
    resource name and no ids, as a kubelet would not, but decodes to the same record).
    """
    pods: dict[tuple[str, str], dict[str, list[ContainerAllocation]]] = {}
    for allocation in allocations:
        pods.setdefault((allocation.namespace, allocation.pod), {}).setdefault(allocation.container, []).append(
            allocation
        )
    out = bytearray()
    for (namespace, pod), containers in pods.items():
        pod_bytes = _string_field(1, pod) + _string_field(2, namespace)
        for container, records in containers.items():
            container_bytes = _string_field(1, container)
            for record in records:
                devices = _string_field(1, record.resource) + b"".join(
                    _len_field(2, device_id.encode("utf-8")) for device_id in record.device_ids
                )
                container_bytes += _len_field(2, devices)
            pod_bytes += _len_field(3, container_bytes)
        out += _len_field(1, pod_bytes)
    return bytes(out)


# --- the client ---------------------------------------------------------------------------------------------------
def _target(socket_path: str | Path) -> str:
    return f"unix:{Path(socket_path).absolute()}"


class PodResourcesClient:
    """Calls the kubelet's ``List`` over its unix socket, with a timeout."""

    def __init__(
        self, socket_path: str | Path = a.DEFAULT_POD_RESOURCES_SOCKET, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_seconds = timeout_seconds

    def list(self) -> list[ContainerAllocation]:
        """Every allocation the kubelet reports; raises :class:`PodResourcesError`."""
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.enable_http_proxy", 0)]
        try:
            with grpc.insecure_channel(_target(self.socket_path), options=options) as channel:
                call = channel.unary_unary(
                    a.POD_RESOURCES_LIST_METHOD,
                    request_serializer=encode_list_request,
                    response_deserializer=decode_list_response,
                )
                result: list[ContainerAllocation] = call(ListRequest(), timeout=self.timeout_seconds)
                return result
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = getattr(code, "name", "UNKNOWN")
            raise PodResourcesError(f"PodResources List on {self.socket_path}: {name}: {details}") from e


# --- the server ---------------------------------------------------------------------------------------------------
class PodResourcesServer:
    """A ``v1.PodResourcesLister`` on a unix socket that answers ``List`` from a table the caller sets.

    ``set_allocations`` replaces the table (thread-safe); every later ``List`` sees the new one.
    """

    def __init__(self, socket_path: str | Path, allocations: Iterable[ContainerAllocation] = ()) -> None:
        self.socket_path = Path(socket_path)
        self._lock = threading.Lock()
        self._allocations: tuple[ContainerAllocation, ...] = tuple(allocations)
        self._server: Any = None
        #: How many List calls were answered (tests check the client really asked).
        self.calls = 0

    def set_allocations(self, allocations: Iterable[ContainerAllocation]) -> None:
        """Replace the allocation table."""
        with self._lock:
            self._allocations = tuple(allocations)

    def allocations(self) -> tuple[ContainerAllocation, ...]:
        """The table as it is now."""
        with self._lock:
            return self._allocations

    def _list(self, request: ListRequest, context: Any) -> Sequence[ContainerAllocation]:
        with self._lock:
            self.calls += 1
            return self._allocations

    def start(self) -> PodResourcesServer:
        """Listen on the socket (a stale socket file is replaced)."""
        if self._server is not None:
            return self
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.is_socket():
            self.socket_path.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="podresources"))
        handler = grpc.unary_unary_rpc_method_handler(
            self._list, request_deserializer=decode_list_request, response_serializer=encode_list_response
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(a.POD_RESOURCES_SERVICE, {"List": handler}),)
        )
        try:
            bound = server.add_insecure_port(_target(self.socket_path))
        except RuntimeError as e:
            raise PodResourcesError(f"cannot listen on {self.socket_path}: {e}") from e
        if not bound:
            raise PodResourcesError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server
        logger.debug("PodResources server listening on %s", self.socket_path)
        return self

    def stop(self) -> None:
        """Stop answering and remove the socket."""
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if self.socket_path.is_socket():
            self.socket_path.unlink()

    def __enter__(self) -> PodResourcesServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
