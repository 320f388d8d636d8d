"""Cost per row of checking and building the hot cluster messages.

``python -m benchmarks.message_rows``: for each hot message, the time
``from_body`` (checks and typed rows) and ``to_body`` take per row of a
1000-row batch, next to msgpack's own pack and unpack of the same body.
Best of 5 runs; a loaded machine gives higher and noisier figures.
"""

from __future__ import annotations

import functools
import timeit
from typing import Any

import msgpack

from pyqueue.cluster import messages as M

ROWS = 1000
RUNS = 200


def _tid(i: int) -> str:
    return f"1a2b-3c4d5e6f-{i}"  # the shape of a client-made id


def bodies() -> dict[str, tuple[type[M.AppMessage], dict[str, Any]]]:
    n = range(ROWS)
    return {
        "SUBMIT": (M.Submit, {"tasks": [[_tid(i), b"x" * 100, 0, 1.0, 0.0] for i in n]}),
        "SUBMIT_ACK": (M.SubmitAck, {"states": [1] * ROWS}),
        "TASKS": (M.Tasks, {"tasks": [[_tid(i), 1, b"x" * 100] for i in n]}),
        "DONE": (M.Done, {"results": [[_tid(i), 1, True, b"v" * 20, None, False] for i in n]}),
        "DONE_ACK": (M.DoneAck, {"status": ["accepted"] * ROWS}),
        "RESULTS": (M.Results, {"results": [[_tid(i), 3, b"v" * 20, None] for i in n]}),
    }


def per_row(fn: Any) -> float:
    """Nanoseconds per row of one call of ``fn`` on a batch, best of 5."""
    return min(timeit.repeat(fn, number=RUNS, repeat=5)) / RUNS / ROWS * 1e9


def main() -> None:
    for name, (cls, body) in bodies().items():
        body = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)
        msg = cls.from_body(body)
        assert msg.to_body() == body
        decode = per_row(functools.partial(cls.from_body, body))
        encode = per_row(msg.to_body)
        packed = msgpack.packb(body, use_bin_type=True)
        wire = per_row(functools.partial(msgpack.packb, body, use_bin_type=True))
        wire += per_row(functools.partial(msgpack.unpackb, packed, raw=False))
        print(
            f"{name:11s} from_body {decode:4.0f} ns  to_body {encode:4.0f} ns"
            f"  per row (msgpack pack+unpack {wire:4.0f} ns)"
        )


if __name__ == "__main__":
    main()
