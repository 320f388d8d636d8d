"""The same workloads through ThreadPoolExecutor and pyqueue give the same
results, errors included."""

import concurrent.futures as cf
import hashlib
import random
import zlib

import numpy as np
import pytest

import pyqueue

SEED = 20261128


def workloads():
    rng = random.Random(SEED)
    blobs = [rng.randbytes(rng.randrange(1, 50_000)) for _ in range(40)]
    return [
        ("sha256", lambda b: hashlib.sha256(b).hexdigest(), blobs),
        ("zlib", zlib.compress, blobs),
        ("arith", lambda x: (x * 7919) % 104729 if x % 13 else 1 // (x % 13), list(range(500))),
        ("numpy", lambda n: float(np.linalg.norm(np.ones((n, n)) @ np.ones((n, n)))),
         [rng.randrange(1, 60) for _ in range(30)]),
    ]


def outcome(fn, x):
    try:
        return ("ok", fn(x))
    except Exception as exc:  # compare the type of any failure
        return ("err", type(exc))


@pytest.mark.parametrize("name, fn, data", workloads(), ids=lambda v: v if isinstance(v, str) else "")
def test_same_results_as_thread_pool(name, fn, data):
    with cf.ThreadPoolExecutor(2) as tpe:
        expected = [outcome(lambda x: f.result(), None) for f in [tpe.submit(fn, x) for x in data]]
    with pyqueue.TaskQueue(workers=2) as q:
        tasks = [q.submit(fn, x) for x in data]
        got = [outcome(lambda _: t.result(), None) for t in tasks]
        ex = pyqueue.Executor(max_workers=2)
        via_executor = [outcome(lambda x: f.result(), None) for f in [ex.submit(fn, x) for x in data]]
        ex.shutdown()
        try:
            mapped = [("ok", v) for v in q.map(fn, data)]
        except Exception as exc:
            mapped = [("err", type(exc))]
    assert got == expected
    assert via_executor == expected
    n_ok = next((i for i, (kind, _) in enumerate(expected) if kind == "err"), len(expected))
    assert mapped[:n_ok] == expected[:n_ok]
