"""Hostile or broken peers get a clear error and are dropped; everyone else is served."""

from __future__ import annotations

import logging
import os
import socket

import pyq_cluster_tasks as T
import pytest

from pyqueue.cluster import Client, Coordinator, Node
from pyqueue.cluster import protocol as P
from pyqueue.cluster.config import FAST_TIMINGS
from pyqueue.cluster.protocol import MsgType

KEY = os.urandom(32)


@pytest.fixture(scope="module")
def served():
    """An in-process coordinator with one in-process node and a good client."""
    coord = Coordinator(KEY, timings=FAST_TIMINGS)
    host, port = coord.start_in_thread()
    node = Node(
        f"{host}:{port}", key=KEY, workers=2, executor="threads", timings=FAST_TIMINGS
    ).start()
    client = Client(f"{host}:{port}", key=KEY)
    yield coord, port, client
    client.close()
    node.stop(5)
    coord.stop()


def exchange(
    port: int, data: bytes, timeout: float = 5.0
) -> tuple[list[tuple[int, int, dict]], bool]:
    """Send raw bytes; read until the coordinator closes.  Returns (frames, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if data:
            s.sendall(data)
        buf = b""
        closed = False
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                buf += chunk
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            pass
    finally:
        s.close()
    return (P.FrameDecoder().feed(buf) if buf else []), closed


def error_code(frames) -> str:
    errors = [body for mtype, _c, body in frames if mtype == MsgType.ERROR]
    assert len(errors) == 1, frames
    assert errors[0]["message"]  # a human-readable reason comes with the code
    return errors[0]["code"]


def still_serving(client: Client, coord: Coordinator, before: int) -> None:
    assert client.submit(T.square_plus, 3, 4).result(10) == 13
    assert client.channel.connections == 1  # the good client was never disturbed
    assert coord.rejected == before + 1


def test_garbage_bytes(served):
    coord, port, client = served
    before = coord.rejected
    frames, closed = exchange(port, os.urandom(64).replace(b"P", b"x"))
    assert error_code(frames) == "preamble" and closed
    still_serving(client, coord, before)


def test_http_request_is_rejected_as_wrong_preamble(served):
    coord, port, client = served
    before = coord.rejected
    frames, closed = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert error_code(frames) == "preamble" and closed
    still_serving(client, coord, before)


def test_wrong_version(served):
    coord, port, client = served
    before = coord.rejected
    frames, closed = exchange(port, P.MAGIC + bytes([P.VERSION + 1]))
    assert error_code(frames) == "version" and closed
    still_serving(client, coord, before)


def test_oversized_frame_before_auth(served):
    coord, port, client = served
    before = coord.rejected
    frames, closed = exchange(port, P.PREAMBLE + P.HEADER.pack(2**31, MsgType.HELLO, 0))
    assert error_code(frames) == "frame_too_large" and closed
    still_serving(client, coord, before)


def test_malformed_frame_before_auth(served):
    coord, port, client = served
    before = coord.rejected
    frames, closed = exchange(
        port, P.PREAMBLE + P.HEADER.pack(3, MsgType.HELLO, 0) + b"\xc1\xc1\xc1"
    )
    assert error_code(frames) == "malformed" and closed
    still_serving(client, coord, before)


def test_submit_without_authentication_is_refused(served):
    coord, port, client = served
    before = coord.rejected
    body = {"tasks": [["sneaky", b"\x80\x04K\x01.", 0, 0.0, 0.0]]}
    frames, closed = exchange(port, P.PREAMBLE + P.encode_frame(MsgType.SUBMIT, 1, body))
    assert error_code(frames) == "unexpected" and closed
    assert coord.backend.info(["sneaky"]) == [None]  # nothing reached the store
    still_serving(client, coord, before)


def _authenticated_socket(port: int, key: bytes) -> tuple[socket.socket, P.Connection]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = P.Connection(key, server=False, role="client")
    s.sendall(conn.data_to_send())
    while not conn.authenticated:
        data = s.recv(4096)
        assert data, "closed during handshake"
        conn.receive_data(data)
        s.sendall(conn.data_to_send())
    return s, conn


def _read_to_close(s: socket.socket) -> bytes:
    buf = b""
    try:
        while chunk := s.recv(65536):
            buf += chunk
    except ConnectionResetError:
        pass
    return buf


def test_peer_without_the_key(served):
    coord, port, client = served
    before = coord.rejected
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = P.Connection(b"not-the-key-0123456789", server=False, role="client")
    s.sendall(conn.data_to_send())
    # The coordinator proves itself first; a keyless peer cannot check that
    # proof, so it answers garbage, which the coordinator refuses.
    frames = P.FrameDecoder().feed(s.recv(4096))
    assert frames[0][0] == MsgType.CHALLENGE
    s.sendall(P.encode_frame(MsgType.AUTH, 0, {"proof": os.urandom(32)}))
    frames = P.FrameDecoder().feed(P.PREAMBLE + _read_to_close(s))
    s.close()
    assert error_code(frames) == "auth"
    still_serving(client, coord, before)


def test_client_with_wrong_key_fails_clearly_and_the_coordinator_logs_who(served, caplog):
    coord, port, client = served
    caplog.set_level(logging.WARNING, logger="pyqueue.cluster.coordinator")
    with pytest.raises(ConnectionError, match="HMAC|key"):
        Client(
            f"127.0.0.1:{port}",
            key=b"wrong-key-0123456789abcdef",
            name="intruder",
            connect_timeout=1.0,
        )
    lines = [r.getMessage() for r in caplog.records]
    # the text line itself names the peer: role, name and address
    assert any("client intruder (127.0.0.1:" in m and "wrong shared key" in m for m in lines), lines


def test_malformed_frame_after_auth(served):
    coord, port, client = served
    before = coord.rejected
    s, conn = _authenticated_socket(port, KEY)
    s.sendall(P.HEADER.pack(4, MsgType.SUBMIT, 9) + b"\x93\x01\x02\x03")  # a list, not a map
    frames = P.FrameDecoder().feed(P.PREAMBLE + _read_to_close(s))
    s.close()
    assert error_code(frames) == "malformed"
    still_serving(client, coord, before)


def test_bad_field_types_after_auth(served):
    coord, port, client = served
    before = coord.rejected
    s, conn = _authenticated_socket(port, KEY)
    conn.send(MsgType.SUBMIT, {"tasks": [[123, "not-bytes", 0, 0.0, 0.0]]}, corr=1)
    s.sendall(conn.data_to_send())
    frames = P.FrameDecoder().feed(P.PREAMBLE + _read_to_close(s))
    s.close()
    assert error_code(frames) == "malformed"
    still_serving(client, coord, before)


def test_oversized_frame_after_auth(served):
    coord, port, client = served
    before = coord.rejected
    s, conn = _authenticated_socket(port, KEY)
    s.sendall(P.HEADER.pack(P.DEFAULT_MAX_FRAME + 1, MsgType.SUBMIT, 1))
    frames = P.FrameDecoder().feed(P.PREAMBLE + _read_to_close(s))
    s.close()
    assert error_code(frames) == "frame_too_large"
    still_serving(client, coord, before)


def test_silent_peer_is_dropped_after_handshake_timeout(served):
    coord, port, client = served
    before = coord.rejected
    frames, closed = exchange(port, b"", timeout=FAST_TIMINGS.handshake_timeout * 5)
    assert closed and error_code(frames) == "unexpected"
    still_serving(client, coord, before)
