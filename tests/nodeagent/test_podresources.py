"""The PodResources codec (round trips, unknown fields of every wire type) and the client against the server."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from agentkit import GPU, holds

from etj_contract import agent as a
from etj_operator.nodeagent.podresources import (
    CodecError,
    ListRequest,
    PodResourcesClient,
    PodResourcesError,
    PodResourcesServer,
    decode_list_request,
    decode_list_response,
    encode_list_request,
    encode_list_response,
)
from etj_operator.nodeagent.records import ContainerAllocation


# --- a tiny independent encoder, so the decoder is not only checked against its own encoder ---------------------
def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def ld(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return key(number, 2) + varint(len(data)) + data


def unknown_fields(number: int) -> bytes:
    """One field of each wire type under ``number`` (and a group holding a nested group)."""
    group = key(number, 3) + key(1, 0) + varint(7) + key(2, 3) + ld(1, "x") + key(2, 4) + key(number, 4)
    return (
        key(number, 0) + varint(2**63)
        + key(number, 1) + b"\x01" * 8
        + ld(number, b"\x08\x96\x01")
        + key(number, 5) + b"\x02" * 4
        + group
    )


TABLE = [
    holds("resnet-worker-0", "GPU-aaaa", "GPU-bbbb"),
    ContainerAllocation("ml", "resnet-worker-0", "sidecar", "example.com/fpga", ("fpga0",)),
    holds("bert-worker-1", "GPU-cccc", container="main", namespace="nlp"),
    holds("idle-pod", namespace="default"),  # a container with a resource but no device ids
]


def test_round_trip_keeps_every_record_in_order():
    assert decode_list_response(encode_list_response(TABLE)) == TABLE
    assert decode_list_response(b"") == []
    assert encode_list_request(ListRequest()) == b""
    assert decode_list_request(b"") == ListRequest()


def test_records_of_one_pod_share_one_pod_message():
    data = encode_list_response([holds("p", "GPU-1"), holds("p", "GPU-2", container="c2"), holds("q", "GPU-3")])
    # two top-level PodResources messages (field 1): p (with two containers) and q
    pods = []
    pos = 0
    while pos < len(data):
        assert data[pos] == 0x0A
        length = data[pos + 1]
        pods.append(data[pos + 2:pos + 2 + length])
        pos += 2 + length
    assert len(pods) == 2


def test_decoding_a_kubelet_answer_with_fields_of_newer_versions():
    """cpu_ids (packed and not), memory, topology, dynamic_resources, and fields no version has."""
    topology = ld(1, key(1, 0) + varint(1))  # TopologyInfo {nodes: [NUMANode {ID: 1}]}
    devices = ld(1, GPU) + unknown_fields(9) + ld(2, "GPU-aaaa") + ld(3, topology) + ld(2, "GPU-bbbb::3")
    memory = ld(1, "memory") + key(2, 0) + varint(2**34) + ld(3, topology)
    container = (
        ld(1, "trainer")
        + ld(3, varint(2) + varint(3))  # packed repeated int64 cpu_ids
        + key(3, 0) + varint(4)  # the same field, unpacked
        + ld(2, devices)
        + ld(4, memory)
        + ld(5, ld(1, "gpu.example.com") + ld(2, "claim"))
        + unknown_fields(15)
    )
    pod = ld(1, "resnet-worker-0") + unknown_fields(12) + ld(2, "ml") + ld(3, container) + key(4, 0) + varint(1)
    response = unknown_fields(3) + ld(1, pod) + unknown_fields(2000)
    assert decode_list_response(response) == [
        ContainerAllocation("ml", "resnet-worker-0", "trainer", GPU, ("GPU-aaaa", "GPU-bbbb::3"))
    ]
    assert decode_list_request(unknown_fields(4)) == ListRequest()


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # length beyond the end
        b"\x08",  # truncated varint
        b"\x08" + b"\xff" * 10 + b"\x01",  # a varint of 11 bytes
        b"\x09\x01\x02",  # truncated fixed64
        b"\x00\x01",  # field number 0
        b"\x0c",  # an end of group without its start
        b"\x0b\x08\x01",  # a group that never ends
        b"\x0b\x14",  # a group ended by another number
        b"\x0e\x00",  # wire type 6
        ld(1, ld(1, b"\xff\xfe")),  # a pod name that is not UTF-8
    ],
)
def test_malformed_bytes_are_a_codec_error(data):
    with pytest.raises(CodecError):
        decode_list_response(data)


def test_a_known_field_with_another_wire_type_is_skipped():
    pod = ld(1, "p") + ld(2, "ml") + key(3, 0) + varint(1)  # containers sent as a varint
    assert decode_list_response(ld(1, pod)) == []


# --- the client and the server over a unix socket ----------------------------------------------------------------
@pytest.fixture
def socket_path(tmp_path):
    return tmp_path / "kubelet.sock"


def test_client_lists_what_the_server_holds_and_sees_changes(socket_path):
    with PodResourcesServer(socket_path, TABLE) as server:
        client = PodResourcesClient(socket_path, timeout_seconds=5)
        assert client.list() == TABLE
        server.set_allocations([holds("new-pod", "GPU-dddd")])
        assert client.list() == [holds("new-pod", "GPU-dddd")]
        assert server.calls == 2
    assert not socket_path.exists()


def test_the_server_answers_a_generic_grpc_client_of_the_kubelet_method(socket_path):
    """The method path is the kubelet's: /v1.PodResourcesLister/List (raw bytes in, raw bytes out)."""
    assert a.POD_RESOURCES_LIST_METHOD == "/v1.PodResourcesLister/List"
    with PodResourcesServer(socket_path, TABLE), grpc.insecure_channel(f"unix:{socket_path}") as channel:
        raw = channel.unary_unary(a.POD_RESOURCES_LIST_METHOD)(b"", timeout=5)
        assert decode_list_response(raw) == TABLE
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/v1.PodResourcesLister/GetAllocatableResources")(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_no_kubelet_is_a_pod_resources_error(socket_path):
    client = PodResourcesClient(socket_path, timeout_seconds=2)
    with pytest.raises(PodResourcesError, match="UNAVAILABLE"):
        client.list()


def test_a_kubelet_back_after_an_outage_answers_at_once(socket_path):
    client = PodResourcesClient(socket_path, timeout_seconds=2)
    with PodResourcesServer(socket_path, TABLE):
        assert client.list() == TABLE
    with pytest.raises(PodResourcesError):
        client.list()
    with PodResourcesServer(socket_path, TABLE[:1]):
        assert client.list() == TABLE[:1]  # a fresh channel per call: no reconnect backoff carried over


def test_a_kubelet_that_does_not_answer_times_out(socket_path):
    release = threading.Event()

    class Stuck(PodResourcesServer):
        def _list(self, request, context):
            release.wait(10)
            return ()

    with Stuck(socket_path):
        client = PodResourcesClient(socket_path, timeout_seconds=0.3)
        try:
            with pytest.raises(PodResourcesError, match="DEADLINE_EXCEEDED"):
                client.list()
        finally:
            release.set()


def test_an_answer_that_does_not_decode_is_a_pod_resources_error(socket_path):
    class Broken(PodResourcesServer):
        def start(self):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
            handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"\x0a\x05abc")
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(a.POD_RESOURCES_SERVICE, {"List": handler}),)
            )
            server.add_insecure_port(f"unix:{self.socket_path}")
            server.start()
            self._server = server
            return self

    with Broken(socket_path), pytest.raises(PodResourcesError):
        PodResourcesClient(socket_path, timeout_seconds=2).list()
