"""Calls travel by reference when importable, by value otherwise; results and errors."""

from __future__ import annotations

import json
import logging
import os.path
import pickle

import pyq_cluster_tasks as T
import pytest

from pyqueue.cluster.cli import JsonFormatter
from pyqueue.cluster.serialize import (
    current_task,
    decode_call,
    decode_result,
    encode_call,
    function_ref,
    run_payload,
)
from pyqueue.errors import RemoteTaskError


class Holder:
    @staticmethod
    def method(x):
        return x + 1


def test_importable_functions_travel_by_reference():
    assert function_ref(os.path.join) == "posixpath:join"
    assert function_ref(T.square_plus) == "pyq_cluster_tasks:square_plus"
    assert function_ref(Holder.method) == f"{__name__}:Holder.method"
    ref, fnb, args, kwargs = pickle.loads(encode_call(T.square_plus, (2,), {"salt": 1}))
    assert (ref, fnb, args, kwargs) == ("pyq_cluster_tasks:square_plus", None, (2,), {"salt": 1})


def test_lambdas_and_local_functions_travel_by_value():
    def local(x):
        return x * 3

    assert function_ref(lambda: 0) is None
    assert function_ref(local) is None
    ref, fnb, _, _ = pickle.loads(encode_call(local, (1,), {}))
    assert ref is None and isinstance(fnb, bytes)
    fn, args, kwargs = decode_call(encode_call(local, (4,), {}))
    assert fn(*args, **kwargs) == 12


def test_unpicklable_arguments_fall_back_to_cloudpickle():
    fn, args, _ = decode_call(encode_call(map, (lambda x: x + 1, [1, 2]), {}))
    assert list(fn(*args)) == [2, 3]


def test_run_payload_sets_context_and_captures_errors():
    ok, data, tb, name = run_payload("t-1", 3, encode_call(T.context, (), {}))
    assert name == "context"
    assert ok and pickle.loads(data) == ("t-1", 3) and tb is None
    assert current_task() is None  # cleared after the task
    ok, data, tb, name = run_payload("t-2", 1, encode_call(T.boom, ("bad",), {}))
    assert name == "boom"
    assert not ok and "ValueError: bad" in tb
    with pytest.raises(ValueError, match="bad") as ei:
        decode_result(ok, data, tb)
    assert any("remote traceback" in n for n in getattr(ei.value, "__notes__", []))


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no")


def _raise_unpicklable():
    raise Unpicklable("x")


def test_exceptions_that_do_not_pickle_become_remote_task_errors():
    ok, data, tb, _ = run_payload("t", 1, encode_call(_raise_unpicklable, (), {}))
    with pytest.raises(RemoteTaskError) as ei:
        decode_result(ok, data, tb)
    assert ei.value.remote_type == "Unpicklable"


def test_json_log_lines_carry_structured_fields():
    rec = logging.LogRecord(
        "pyqueue.cluster.coordinator", logging.INFO, __file__, 1, "node gone", (), None
    )
    rec.event = "node_gone"
    rec.requeued = 3
    out = json.loads(JsonFormatter().format(rec))
    assert out["event"] == "node_gone" and out["requeued"] == 3 and out["msg"] == "node gone"
