"""Optional TLS (stdlib ssl) around the same protocol, and the engine executor."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess

import pyq_cluster_tasks as T
import pytest

import pyqueue
from pyqueue.cluster import Client, Coordinator, Node
from pyqueue.cluster.config import FAST_TIMINGS
from pyqueue.cluster.node import _make_executor

KEY = os.urandom(32)


@pytest.fixture
def cert(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    c, k = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(k),
            "-out",
            str(c),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(c), str(k)


def test_tasks_run_over_tls(cert):
    c, k = cert
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(c, k)
    client_ctx = ssl.create_default_context(cafile=c)
    coord = Coordinator(KEY, timings=FAST_TIMINGS, ssl_context=server)
    host, port = coord.start_in_thread()
    node = Node(
        f"{host}:{port}",
        key=KEY,
        workers=1,
        executor="threads",
        timings=FAST_TIMINGS,
        ssl_context=client_ctx,
    ).start()
    try:
        with Client(f"{host}:{port}", key=KEY, ssl_context=client_ctx) as cl:
            assert cl.submit(T.square_plus, 5, 5).result(10) == 30
        # a plain-TCP peer cannot even start the handshake
        with pytest.raises(ConnectionError):
            Client(f"{host}:{port}", key=KEY, connect_timeout=1.0)
    finally:
        node.stop(5)
        coord.stop()


def test_make_executor_kinds():
    ex = _make_executor(2, "threads")
    try:
        assert ex.submit(pow, 2, 5).result(5) == 32
    finally:
        ex.shutdown()
    with pytest.raises(ValueError):
        _make_executor(1, "nope")
    ex = _make_executor(2)  # the default is the engine's Executor
    try:
        assert isinstance(ex, pyqueue.Executor)
        assert ex.submit(pow, 3, 2).result(5) == 9
    finally:
        ex.shutdown()
