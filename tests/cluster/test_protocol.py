"""Sans-IO protocol: framing, handshake, typed errors, and a fuzzed decoder."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyqueue.cluster import protocol as P
from pyqueue.cluster.config import load_key, parse_address
from pyqueue.cluster.protocol import MsgType
from pyqueue.errors import (
    AuthenticationError,
    FrameTooLarge,
    KeyNotFound,
    MalformedFrame,
    PeerError,
    PreambleError,
    ProtocolError,
    UnexpectedMessage,
    VersionError,
)

KEY = b"k" * 32


def pair(client_key: bytes = KEY, server_key: bytes = KEY) -> tuple[P.Connection, P.Connection]:
    return (
        P.Connection(client_key, server=False, role="node", name="n1"),
        P.Connection(server_key, server=True),
    )


def pump(a: P.Connection, b: P.Connection) -> tuple[list[P.Event], list[P.Event]]:
    """Shuttle bytes both ways until quiet; return the events each side saw."""
    ea: list[P.Event] = []
    eb: list[P.Event] = []
    for _ in range(10):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        if da:
            eb += b.receive_data(da)
        if db:
            ea += a.receive_data(db)
    return ea, eb


def test_handshake_authenticates_both_sides_and_reports_role():
    c, s = pair()
    ec, es = pump(c, s)
    assert c.authenticated and s.authenticated
    assert ec == [P.Authenticated("", "")]
    assert es == [P.Authenticated("node", "n1")]


def test_messages_flow_after_handshake_with_correlation_ids():
    c, s = pair()
    pump(c, s)
    c.send(MsgType.SUBMIT, {"tasks": [["a", b"p", 0, 1.0, 0.0]]}, corr=7)
    c.send(MsgType.HEARTBEAT, {})
    ev = s.receive_data(c.data_to_send())
    assert ev == [
        P.Message(MsgType.SUBMIT, 7, {"tasks": [["a", b"p", 0, 1.0, 0.0]]}),
        P.Message(MsgType.HEARTBEAT, 0, {}),
    ]


def test_frames_split_at_every_byte_boundary_decode_the_same():
    c, s = pair()
    pump(c, s)
    c.send(MsgType.DONE, {"results": [["x", 1, True, b"v" * 100, None]]}, corr=3)
    data = c.data_to_send()
    got: list[P.Event] = []
    for i in range(len(data)):
        got += s.receive_data(data[i : i + 1])
    assert got == [P.Message(MsgType.DONE, 3, {"results": [["x", 1, True, b"v" * 100, None]]})]


def test_wrong_key_on_server_side_fails_client_proof_check():
    c, s = pair(client_key=KEY, server_key=b"x" * 32)
    with pytest.raises(AuthenticationError):
        pump(c, s)  # the client rejects the server's proof before revealing its own
    assert not s.authenticated


def test_wrong_key_on_client_side_is_rejected_by_server():
    c = P.Connection(b"x" * 32, server=False)
    s = P.Connection(KEY, server=True)
    s.receive_data(c.data_to_send())
    # a client that skips checking the server proof still cannot forge its own
    forged = P.encode_frame(MsgType.AUTH, 0, {"proof": b"\0" * 32})
    s.data_to_send()
    with pytest.raises(AuthenticationError):
        s.receive_data(forged)
    assert s.failed


def test_reflected_server_proof_is_not_accepted_as_client_proof():
    c, s = pair()
    s.receive_data(c.data_to_send())
    challenge = s.data_to_send()
    dec = P.FrameDecoder()
    ((_, _, body),) = dec.feed(challenge)
    with pytest.raises(AuthenticationError):
        s.receive_data(P.encode_frame(MsgType.AUTH, 0, {"proof": body["proof"]}))


def test_garbage_bytes_raise_preamble_error():
    s = P.Connection(KEY, server=True)
    with pytest.raises(PreambleError) as ei:
        s.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert ei.value.code == "preamble"
    # the reply tells the peer why, in a frame it can decode
    reply = s.error_bytes(ei.value)
    frames = P.FrameDecoder().feed(reply)
    assert frames[0][0] == MsgType.ERROR and frames[0][2]["code"] == "preamble"


def test_wrong_version_raises_version_error_naming_both_versions():
    s = P.Connection(KEY, server=True)
    with pytest.raises(VersionError, match=f"version 9.*version {P.VERSION}"):
        s.receive_data(P.MAGIC + bytes([9]))


def test_oversized_frame_is_rejected_from_its_header_alone():
    d = P.FrameDecoder(max_frame=1000)
    with pytest.raises(FrameTooLarge):
        d.feed(P.PREAMBLE + P.HEADER.pack(1001, MsgType.HEARTBEAT, 0))
    assert d.buffered == 0


def test_unauthenticated_peer_gets_small_frame_limit():
    s = P.Connection(KEY, server=True)
    with pytest.raises(FrameTooLarge):
        s.receive_data(P.PREAMBLE + P.HEADER.pack(P.HANDSHAKE_MAX_FRAME + 1, MsgType.HELLO, 0))


def test_unknown_frame_type_is_malformed():
    d = P.FrameDecoder()
    with pytest.raises(MalformedFrame, match="unknown frame type 200"):
        d.feed(P.PREAMBLE + P.HEADER.pack(0, 200, 0))


@pytest.mark.parametrize("body", [b"\xc1", b"\x92\x01", b"\x81\xa1a", msgpack.packb([1, 2])])
def test_bad_body_is_malformed(body):
    d = P.FrameDecoder()
    with pytest.raises(MalformedFrame):
        d.feed(P.PREAMBLE + P.HEADER.pack(len(body), MsgType.HEARTBEAT, 0) + body)


def test_decoder_stays_failed_after_an_error():
    d = P.FrameDecoder()
    with pytest.raises(PreambleError):
        d.feed(b"nope")
    with pytest.raises(PreambleError):
        d.feed(P.PREAMBLE)


def test_application_message_before_auth_is_unexpected():
    s = P.Connection(KEY, server=True)
    with pytest.raises(UnexpectedMessage):
        s.receive_data(P.PREAMBLE + P.encode_frame(MsgType.SUBMIT, 1, {"tasks": []}))


def test_cannot_send_before_auth():
    c = P.Connection(KEY, server=False)
    with pytest.raises(UnexpectedMessage):
        c.send(MsgType.SUBMIT, {})


def test_hello_with_bad_nonce_is_malformed():
    s = P.Connection(KEY, server=True)
    with pytest.raises(MalformedFrame):
        s.receive_data(
            P.PREAMBLE + P.encode_frame(MsgType.HELLO, 0, {"role": "x", "name": "", "nonce": b"1"})
        )


def test_peer_error_frame_surfaces_remote_code():
    c, s = pair()
    pump(c, s)
    err = s.error_bytes(MalformedFrame("bad things"))
    with pytest.raises(PeerError) as ei:
        c.receive_data(err)
    assert ei.value.remote_code == "malformed" and "bad things" in ei.value.remote_message


def test_encode_refuses_oversized_body():
    with pytest.raises(FrameTooLarge):
        P.encode_frame(MsgType.SUBMIT, 0, {"x": b"a" * 2000}, max_frame=1000)


def test_handshake_message_after_open_is_unexpected():
    c, s = pair()
    pump(c, s)
    with pytest.raises(UnexpectedMessage):
        s.receive_data(
            P.encode_frame(MsgType.HELLO, 0, {"role": "x", "name": "", "nonce": os.urandom(32)})
        )


def test_protocol_errors_are_connection_errors():
    assert issubclass(ProtocolError, ConnectionError)


# -- fuzz ---------------------------------------------------------------------------

MAX = 512


def _check_decoder_on(chunks: list[bytes], prefix: bytes) -> None:
    d = P.FrameDecoder(max_frame=MAX)
    for chunk in [prefix] + chunks:
        try:
            frames = d.feed(chunk)
        except ProtocolError:
            return
        for mtype, _corr, body in frames:
            assert mtype in set(int(t) for t in MsgType)
            assert isinstance(body, dict)
        # never holds more than one frame plus the chunk just fed
        assert d.buffered <= MAX + P.HEADER.size + len(chunk)


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=700), max_size=8), st.sampled_from([b"", P.PREAMBLE]))
def test_fuzz_decoder_arbitrary_bytes_only_raise_protocol_error(chunks, prefix):
    _check_decoder_on(chunks, prefix)


_frame = st.builds(
    lambda length, mtype, corr, body: P.HEADER.pack(length, mtype, corr) + body,
    st.integers(0, 2 * MAX),
    st.sampled_from([int(t) for t in MsgType] + [0, 99, 255]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=600),
)


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frame, max_size=6), st.integers(1, 64))
def test_fuzz_decoder_structured_frames(frames, cut):
    data = b"".join(frames)
    _check_decoder_on([data[i : i + cut] for i in range(0, len(data), cut)], P.PREAMBLE)


@settings(max_examples=200, deadline=1000)
@given(st.binary(max_size=300))
def test_fuzz_server_connection_never_leaks_other_exceptions(data):
    s = P.Connection(KEY, server=True)
    try:
        events = s.receive_data(P.PREAMBLE + data)
    except ProtocolError:
        return
    assert not any(
        isinstance(e, P.Message) for e in events
    )  # nothing gets past an unauthenticated peer


@settings(max_examples=200, deadline=1000)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
        max_leaves=20,
    )
)
def test_fuzz_valid_bodies_round_trip(value):
    c, s = pair()
    pump(c, s)
    c.send(MsgType.STATUS_REPLY, {"v": value}, corr=5)
    (msg,) = s.receive_data(c.data_to_send())
    assert msg == P.Message(MsgType.STATUS_REPLY, 5, {"v": value})


def test_header_layout_is_big_endian_9_bytes():
    assert P.HEADER.size == 9
    assert P.HEADER.pack(1, 2, 3) == struct.pack(">IBI", 1, 2, 3)


# -- keys and addresses -------------------------------------------------------------


def test_load_key_prefers_argument_then_env_then_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PYQUEUE_KEY", raising=False)
    monkeypatch.delenv("PYQUEUE_KEY_FILE", raising=False)
    with pytest.raises(KeyNotFound):
        load_key()
    f = tmp_path / "key"
    f.write_bytes(b"file-key-0123456789abcdef\n")
    f.chmod(0o600)
    monkeypatch.setenv("PYQUEUE_KEY_FILE", str(f))
    assert load_key() == b"file-key-0123456789abcdef"
    monkeypatch.setenv("PYQUEUE_KEY", "env-key-0123456789abcdef")
    assert load_key() == b"env-key-0123456789abcdef"
    assert load_key("arg-key") == b"arg-key"
    assert load_key(key_file=str(f)) == b"file-key-0123456789abcdef"


def test_load_key_rejects_missing_and_empty_files(tmp_path, monkeypatch):
    monkeypatch.delenv("PYQUEUE_KEY", raising=False)
    with pytest.raises(KeyNotFound):
        load_key(key_file=str(tmp_path / "absent"))
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(KeyNotFound):
        load_key(key_file=str(tmp_path / "empty"))


def test_parse_address():
    assert parse_address("10.0.0.1:80") == ("10.0.0.1", 80)
    assert parse_address(":81") == ("127.0.0.1", 81)
    assert parse_address("[::1]:82") == ("::1", 82)
    for bad in ("nohost", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


# -- messages larger than a frame, and batches cut by size ------------------------------


def _open_pair(max_frame: int, max_message: int) -> tuple[P.Connection, P.Connection]:
    c = P.Connection(KEY, server=False, max_frame=max_frame, max_message=max_message)
    s = P.Connection(KEY, server=True, max_frame=max_frame, max_message=max_message)
    for _ in range(3):
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
    assert c.authenticated and s.authenticated
    return c, s


def test_message_larger_than_a_frame_is_split_and_reassembled():
    c, s = _open_pair(max_frame=1000, max_message=10_000)
    blob = os.urandom(4500)
    c.send(MsgType.SUBMIT, {"tasks": [["a", blob, 0, 1.0, 0.0]]}, corr=7)
    wire = c.data_to_send()
    assert wire.count(bytes([MsgType.CONTINUED])) >= 4  # really several frames
    events = []
    for i in range(0, len(wire), 333):  # arrives in arbitrary pieces
        events += s.receive_data(wire[i : i + 333])
    (msg,) = events
    assert msg.type == MsgType.SUBMIT and msg.corr == 7
    assert msg.body["tasks"][0][1] == blob


def test_reassembly_limit_is_enforced_from_headers_before_buffering():
    big = P.encode_message(MsgType.SUBMIT, 1, {"x": b"a" * 5000}, max_frame=1000, max_message=10**6)
    d = P.FrameDecoder(max_frame=1000, max_message=3000)
    header_and_a_bit = P.PREAMBLE + big[: 3 * (P.HEADER.size + 1000) + P.HEADER.size]
    with pytest.raises(FrameTooLarge, match="exceeds the maximum of 3000"):
        d.feed(header_and_a_bit)


def test_continued_frames_are_refused_before_authentication():
    s = P.Connection(KEY, server=True)
    frame = P.HEADER.pack(10, MsgType.CONTINUED, 0) + b"0123456789"
    with pytest.raises(MalformedFrame, match="CONTINUED"):
        s.receive_data(P.PREAMBLE + frame)


def test_message_over_max_message_is_refused_by_the_sender():
    with pytest.raises(FrameTooLarge, match="exceeds the maximum of 2000"):
        P.encode_message(MsgType.SUBMIT, 0, {"x": b"a" * 3000}, max_frame=1000, max_message=2000)


def test_peer_limit_is_announced_in_welcome():
    c, _ = _open_pair(max_frame=1000, max_message=5000 + P.ENVELOPE_BYTES)
    assert c.peer_max_payload == 5000


def test_split_batches_edges():
    size = len
    assert P.split_batches([], size) == []
    assert P.split_batches([b"a"], size) == [[b"a"]]
    # many small rows: cut by count
    rows = [b"x"] * 5000
    batches = P.split_batches(rows, size, max_bytes=10**6, max_count=2048)
    assert [len(b) for b in batches] == [2048, 2048, 904]
    # rows adding up past the byte limit: cut by size, order kept, none empty
    rows = [bytes([i]) * 400 for i in range(10)]
    batches = P.split_batches(rows, size, max_bytes=1000, max_count=100)
    assert [len(b) for b in batches] == [2, 2, 2, 2, 2]
    assert [r for b in batches for r in b] == rows
    # a row larger than the limit goes alone
    rows = [b"s", b"h" * 5000, b"t"]
    assert P.split_batches(rows, size, max_bytes=1000) == [[b"s"], [b"h" * 5000], [b"t"]]
    # no batch of valid rows ever encodes past a frame
    rows = [["id", os.urandom(30_000)] for _ in range(3000)]
    for batch in P.split_batches(rows, lambda r: len(r[1]) + 16):
        assert len(P.encode_frame(MsgType.SUBMIT, 0, {"tasks": batch})) <= P.DEFAULT_MAX_FRAME


def test_empty_continued_frames_are_refused_even_after_authentication():
    _, s = _open_pair(max_frame=1000, max_message=10_000)
    with pytest.raises(MalformedFrame, match="CONTINUED"):
        s.receive_data(P.HEADER.pack(0, MsgType.CONTINUED, 0) * 3)
