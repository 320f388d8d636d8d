"""The cluster client's CPU per task, in one thread, without a network.

``python -m benchmarks.client_path [--tasks 30000] [--runs 9]``: ``Client.map``
of no-ops against a stand-in coordinator that answers each SUBMIT batch with
its SUBMIT_ACK and RESULTS (batches of 400 submits, 250 results, about what a
LocalCluster sees).  The sender's and the reader's work run inline, so the
figure is the client's own work per task (submit, encode, decode, result()),
without the thread hand-offs and the noise of a live cluster; the stand-in's
time is left out.  Prints the median CPU µs per task.

It only uses what every tree since 3f1c620 has, so that two trees can be
compared (``PYTHONPATH=TREE``).  On a noisy machine, count instructions
instead: run it under ``valgrind --tool=callgrind`` with two ``--tasks``
values and ``--runs 1``, and divide the difference of the totals by three
times the difference of the task counts (each run maps twice to warm up).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from typing import Any

import msgpack

from benchmarks.workloads import noop
from pyqueue.cluster import _outbox, channel, client
from pyqueue.cluster import protocol as P
from pyqueue.cluster.protocol import MsgType

SUBMIT_BATCH = 400
RESULT_BATCH = 250
_RESULT = pickle.dumps(None, pickle.HIGHEST_PROTOCOL)


class Replay:
    """A Client whose channel never connects: what it would send is kept,
    and the stand-in coordinator's answers are handed to it inline."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.excluded = 0.0  # CPU seconds of the stand-in, not the client's
        sent = self.sent
        channel.Channel.start = lambda self: None  # type: ignore[method-assign]
        channel.Channel.wait_connected = lambda self, timeout=None: True  # type: ignore[method-assign]
        channel.Channel.connected = property(lambda self: True)  # type: ignore[method-assign,assignment]
        channel.Channel.send_frames = lambda self, frames, generation=None: (  # type: ignore[method-assign]
            sent.extend(frames) or True
        )
        _outbox.Outbox.start = lambda self: None  # type: ignore[method-assign]
        self.client = cl = client.Client("127.0.0.1:9", key=b"k" * 32)
        submit, self.count = cl._submit, 0

        def submit_and_pump(*args: Any) -> Any:
            handle = submit(*args)
            self.count += 1
            if self.count % SUBMIT_BATCH == 0:
                self.pump()
            return handle

        def wait(pred: Any, timeout: float | None) -> bool:
            while not pred():
                self.pump()
            return True

        cl._submit = submit_and_pump  # type: ignore[method-assign]
        cl._wait = wait  # type: ignore[method-assign]

    def pump(self) -> None:
        """The sender's turn, then the coordinator's, then the reader's."""
        cl = self.client
        cl.outbox._send_queued()
        t0 = time.process_time()
        answers = self.answer()
        self.excluded += time.process_time() - t0
        for mtype, corr, raw in answers:
            body = msgpack.unpackb(raw, raw=False, use_list=True)
            cl._on_message(P.Message(mtype, corr, body))
        after_read = getattr(cl, "_ack_results", None)
        if after_read is not None:
            after_read()

    def answer(self) -> list[tuple[MsgType, int, bytes]]:
        out = []
        for frame in self.sent:
            _, mtype, corr = P.HEADER.unpack_from(frame, 0)
            if mtype != MsgType.SUBMIT:
                continue
            rows = msgpack.unpackb(frame[P.HEADER.size :], raw=False)["tasks"]
            out.append((MsgType.SUBMIT_ACK, corr, msgpack.packb({"states": [1] * len(rows)})))
            for k in range(0, len(rows), RESULT_BATCH):
                part = [[r[0], 3, _RESULT, None] for r in rows[k : k + RESULT_BATCH]]
                out.append((MsgType.RESULTS, 0, msgpack.packb({"results": part})))
        self.sent.clear()
        return out

    def run(self, n: int) -> float:
        """CPU µs per task of one map of ``n`` no-ops."""
        self.excluded = 0.0
        t0 = time.process_time()
        for _ in self.client.map(noop, range(n)):
            pass
        return (time.process_time() - t0 - self.excluded) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.client_path", description=__doc__)
    ap.add_argument("--tasks", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args(argv)
    replay = Replay()
    for _ in range(2):
        replay.run(a.tasks)
    figures = [replay.run(a.tasks) for _ in range(a.runs)]
    print(f"client path: {statistics.median(figures):.2f} µs/task (median of {a.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
