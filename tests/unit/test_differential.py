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
        (
            "numpy",
            lambda n: float(np.linalg.norm(np.ones((n, n)) @ np.ones((n, n)))),
            [rng.randrange(1, 60) for _ in range(30)],
        ),
    ]


def settle(get):
    """("ok", value) or ("err", exception type) of a result getter."""
    try:
        return ("ok", get())
    except Exception as exc:
        return ("err", type(exc))


@pytest.mark.parametrize("fn, data", [w[1:] for w in workloads()], ids=[w[0] for w in workloads()])
def test_same_results_as_thread_pool(fn, data):
    with cf.ThreadPoolExecutor(2) as tpe:
        expected = [settle(f.result) for f in [tpe.submit(fn, x) for x in data]]
    with pyqueue.TaskQueue(workers=2) as q:
        got = [settle(t.result) for t in [q.submit(fn, x) for x in data]]
        fanned_in = {t: settle(t.result) for t in q.results(q.submit_many(fn, data))}
        with pyqueue.Executor(max_workers=2) as ex:
            via_executor = [settle(f.result) for f in [ex.submit(fn, x) for x in data]]
        mapped = []
        try:
            mapped.extend(("ok", v) for v in q.map(fn, data))
        except Exception as exc:
            mapped.append(("err", type(exc)))
    assert got == expected
    assert via_executor == expected
    assert sorted(fanned_in.values(), key=repr) == sorted(expected, key=repr)
    # map stops at the first error, having yielded every result before it.
    n_ok = next((i for i, (kind, _) in enumerate(expected) if kind == "err"), len(expected))
    assert mapped[:n_ok] == expected[:n_ok]
    if n_ok < len(expected):
        assert mapped[n_ok] == expected[n_ok] and len(mapped) == n_ok + 1
