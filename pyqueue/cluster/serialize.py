"""How calls and results travel: by reference when importable, else cloudpickle.

A call payload is ``pickle((ref, fn_bytes, args, kwargs))`` where exactly one
of ``ref`` (``"module:qualname"``) and ``fn_bytes`` (cloudpickle of the
callable) is set, or ``pickle((ref, fn_bytes, args, kwargs, options))`` with a
dict of per-task options (today only ``"time_limit"``, seconds); options a node
does not know are ignored, and the 4-tuple is still read as "no options", so
the coordinator and the wire never look inside.  Only nodes decode payloads,
and only after the mutual HMAC handshake proved the coordinator holds the
key; the coordinator never unpickles anything.
"""

from __future__ import annotations

import importlib
import pickle
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import cloudpickle

from pyqueue.errors import RemoteTaskError, TaskTimeout

__all__ = [
    "TaskContext",
    "current_task",
    "encode_call",
    "decode_call",
    "decode_task",
    "run_payload",
    "encode_exception",
    "decode_result",
    "function_ref",
]

_PROTO = pickle.HIGHEST_PROTOCOL
_local = threading.local()


@dataclass(frozen=True)
class TaskContext:
    """Identity of the task running on this thread.

    ``attempt`` grows with every lease; a task whose side effects must not
    repeat can key them on ``(task_id, attempt)`` or check ``attempt > 1``.
    """

    task_id: str
    attempt: int


def current_task() -> TaskContext | None:
    """The task running on the calling thread of a node, or None elsewhere."""
    return getattr(_local, "ctx", None)


_ref_cache: dict[Any, str | None] = {}
_by_value_cache: dict[Any, bytes] = {}


def function_ref(fn: Callable[..., Any]) -> str | None:
    """``"module:qualname"`` if ``fn`` can be imported back by that name, else None."""
    try:
        return _ref_cache[fn]
    except (KeyError, TypeError):
        pass
    ref = None
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if module and qualname and module != "__main__" and "<" not in qualname:
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            if obj is fn:
                ref = f"{module}:{qualname}"
        except Exception:
            ref = None
    try:
        if len(_ref_cache) > 4096:
            _ref_cache.clear()
        _ref_cache[fn] = ref
    except TypeError:
        pass
    return ref


def encode_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    time_limit: float | None = None,
) -> bytes:
    """Serialize one call for the wire (with its time limit, seconds, if any)."""
    ref = function_ref(fn)
    fnb = None
    if ref is None:
        try:
            fnb = _by_value_cache[fn]
        except (KeyError, TypeError):
            fnb = cloudpickle.dumps(fn, protocol=_PROTO)
            try:
                if len(_by_value_cache) > 256:
                    _by_value_cache.clear()
                _by_value_cache[fn] = fnb
            except TypeError:
                pass
    item: tuple[Any, ...] = (ref, fnb, args, kwargs)
    if time_limit is not None:
        item += ({"time_limit": float(time_limit)},)
    try:
        return pickle.dumps(item, _PROTO)
    except Exception:  # lambdas or local classes among the arguments
        return cloudpickle.dumps(item, protocol=_PROTO)


_resolved: dict[Any, Callable[..., Any]] = {}


def _resolve(ref: str | None, fnb: bytes | None) -> Callable[..., Any]:
    key = ref if ref is not None else fnb
    try:
        return _resolved[key]
    except KeyError:
        pass
    if ref is not None:
        module, _, qualname = ref.partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    else:
        obj = cloudpickle.loads(fnb)
    if len(_resolved) > 1024:
        _resolved.clear()
    _resolved[key] = obj
    return obj


def decode_call(payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Inverse of :func:`encode_call` (node side), without the options."""
    fn, args, kwargs, _ = decode_task(payload)
    return fn, args, kwargs


def decode_task(
    payload: bytes,
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], float | None]:
    """Inverse of :func:`encode_call`: ``(fn, args, kwargs, time_limit)``."""
    item = pickle.loads(payload)
    if len(item) == 4:  # the common call, without options: unpacked, not sliced
        ref, fnb, args, kwargs = item
        return _resolve(ref, fnb), args, kwargs, None
    ref, fnb, args, kwargs = item[:4]
    limit = None
    if len(item) > 4 and isinstance(item[4], dict):  # a call with options
        limit = item[4].get("time_limit")
    return _resolve(ref, fnb), args, kwargs, None if limit is None else float(limit)


def encode_exception(exc: BaseException) -> tuple[bytes, str]:
    """Pickle an exception (or a stand-in when it will not pickle) plus its traceback text."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = cloudpickle.dumps(exc, protocol=_PROTO)
        pickle.loads(data)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        data = pickle.dumps(RemoteTaskError(repr(exc), type(exc).__qualname__, tb), _PROTO)
    return data, tb


def run_payload(
    task_id: str,
    attempt: int,
    payload: bytes,
    on_start: Callable[[str, int, float, str], None] | None = None,
) -> tuple[bool, bytes, str | None, str]:
    """Run one task; return ``(ok, pickled value or exception, traceback text,
    function name)``.

    ``on_start(task_id, attempt, time_limit, name)`` is called just before a
    task that has a time limit runs (the node arms its deadline there).  A
    :class:`~pyqueue.errors.TaskTimeout` raised into the task without a
    message (the node's soft limit) gets one saying which limit it passed.
    Never raises for a task's own errors (they become the result).
    """
    _local.ctx = TaskContext(task_id, attempt)
    name = "?"
    limit = None
    try:
        try:
            fn, args, kwargs, limit = decode_task(payload)
            name = getattr(fn, "__qualname__", None) or repr(fn)
            if limit is not None and on_start is not None:
                on_start(task_id, attempt, limit, name)
            value = fn(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, TaskTimeout) and not exc.args and limit is not None:
                exc.args = (f"task {task_id} ({name}) ran past its time limit of {limit:g} s",)
            data, tb = encode_exception(exc)
            return False, data, tb, name
        try:
            return True, pickle.dumps(value, _PROTO), None, name
        except Exception:
            try:
                return True, cloudpickle.dumps(value, protocol=_PROTO), None, name
            except Exception as exc:
                data, tb = encode_exception(TypeError(f"task result cannot be pickled: {exc!r}"))
                return False, data, tb, name
    finally:
        _local.ctx = None


def decode_result(ok: bool, data: bytes | None, error: str | None) -> Any:
    """Return the value, or raise the task's exception (client side)."""
    if ok:
        return pickle.loads(data) if data is not None else None
    if data is None:
        raise RemoteTaskError(error or "task failed")
    exc = pickle.loads(data)
    if not isinstance(exc, BaseException):
        raise RemoteTaskError(repr(exc))
    if error and hasattr(exc, "add_note"):
        exc.add_note("remote traceback:\n" + error)
    raise exc
