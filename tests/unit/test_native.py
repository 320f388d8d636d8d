"""Native tasks: every accepted pointer source, both ABIs, status codes, and
bad arguments rejected before anything runs."""

import ctypes

import numpy as np
import pytest

import pyqueue
from pyqueue import kernels

ITEM_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def address(k):
    return k.address


def test_builtin_kernel_item_abi(q):
    a = np.arange(100_000, dtype=np.float64)
    out = np.zeros_like(a)
    status = q.map_native(kernels.add_one_f64, a, out)
    np.testing.assert_array_equal(out, a + 1)
    assert status.dtype == np.int32 and not status.any()


def test_range_abi(q):
    a = np.linspace(0, 1, 12345)
    out = np.empty_like(a)
    q.map_native(kernels.scale2_f64_range, a, out, chunksize=100)
    np.testing.assert_array_equal(out, 2 * a)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: kernels.add_one_f64.address, id="int"),
        pytest.param(lambda: pyqueue._native._builtin_kernels()["add_one_f64"][0], id="capsule"),
        pytest.param(lambda: ITEM_FN(kernels.add_one_f64.address), id="ctypes"),
    ],
)
def test_pointer_sources(q, make):
    a = np.arange(1000.0)
    out = np.zeros_like(a)
    q.map_native(make(), a, out, abi="item")
    np.testing.assert_array_equal(out, a + 1)


def test_cffi_function_pointer(q):
    cffi = pytest.importorskip("cffi", reason="cffi is in the test extra")
    ffi = cffi.FFI()
    fn = ffi.cast("int(*)(void *, void *)", kernels.add_one_f64.address)
    a = np.arange(64.0)
    out = np.zeros_like(a)
    q.map_native(fn, a, out)
    np.testing.assert_array_equal(out, a + 1)
    with pytest.raises(TypeError, match="not a function"):
        q.map_native(ffi.new("int *"), a, out)


def test_ctypes_python_callback_runs_correctly(q):
    # A ctypes callback written in Python takes the GIL per call; it is slow
    # but must still be correct when workers call it without holding the GIL.
    @ITEM_FN
    def add_two(arg, out):
        ctypes.c_double.from_address(out).value = ctypes.c_double.from_address(arg).value + 2
        return 0

    a = np.arange(200.0)
    out = np.zeros_like(a)
    q.map_native(add_two, a, out)
    np.testing.assert_array_equal(out, a + 2)


def test_per_item_errors_reported_with_first_index(q):
    a = np.array([4.0, -1.0, 9.0, -2.0, 16.0])
    out = np.zeros_like(a)
    with pytest.raises(pyqueue.NativeTaskError) as info:
        q.map_native(kernels.sqrt_or_fail_f64, a, out, chunksize=1)
    err = info.value
    assert (err.index, err.code, err.failed) == (1, 1, 2)
    np.testing.assert_array_equal(err.status, [0, 1, 0, 1, 0])
    np.testing.assert_allclose(out[[0, 2, 4]], [2, 3, 4])
    status = q.map_native(kernels.sqrt_or_fail_f64, a, out, raise_on_error=False)
    np.testing.assert_array_equal(status, [0, 1, 0, 1, 0])


def test_submit_native_returns_handle(q):
    a = np.full(50_000, 300.0)
    out = np.zeros_like(a)
    task = q.submit_native(kernels.spin_f64, a, out)
    assert not task.result().any() and task.done()
    assert task.n == 50_000
    assert np.all(out > 0)


def test_empty_and_2d_rows(q):
    empty = np.zeros(0)
    assert q.map_native(kernels.add_one_f64, empty, np.zeros(0)).shape == (0,)
    # Item ABI over rows of a 2-D array: the kernel sees the first element of
    # each row, so only column 0 changes.
    a = np.arange(12.0).reshape(6, 2)
    out = np.zeros((6, 2))
    q.map_native(pyqueue.kernel(kernels.add_one_f64.address), a, out)
    np.testing.assert_array_equal(out[:, 0], a[:, 0] + 1)
    np.testing.assert_array_equal(out[:, 1], 0)


def test_strided_1d_views(q):
    a = np.arange(20.0)[::2]
    out = np.zeros(20)[::2]
    q.map_native(kernels.add_one_f64, a, out)
    np.testing.assert_array_equal(out, a + 1)


@pytest.mark.parametrize(
    "args, out, kwargs, exc",
    [
        ([1.0, 2.0], np.zeros(2), {}, TypeError),  # not an ndarray
        (np.zeros(2), [0.0, 0.0], {}, TypeError),
        (np.zeros(3), np.zeros(2), {}, ValueError),  # length mismatch
        (np.zeros(2, dtype=np.float32), np.zeros(2), {}, TypeError),  # wrong dtype
        (np.zeros(2), np.zeros(2, dtype=np.int64), {}, TypeError),
        (np.float64(1.0), np.zeros(1), {}, TypeError),  # a scalar
        (np.zeros(()), np.zeros(()), {}, ValueError),  # zero-dimensional
        (np.zeros(4), np.zeros(4), {"chunksize": 0}, ValueError),
        (np.zeros(4), np.zeros(4), {"status": np.zeros(4, dtype=np.int64)}, ValueError),
        (np.zeros(4), np.zeros(4), {"abi": "range"}, ValueError),  # Kernel is item
    ],
)
def test_bad_native_arguments_rejected_before_running(q, args, out, kwargs, exc):
    with pytest.raises(exc):
        q.map_native(kernels.add_one_f64, args, out, **kwargs)


def test_read_only_out_and_non_contiguous_range_rejected(q):
    out = np.zeros(4)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        q.map_native(kernels.add_one_f64, np.zeros(4), out)
    with pytest.raises(ValueError, match="contiguous"):
        q.map_native(kernels.scale2_f64_range, np.zeros(8)[::2], np.zeros(4))


@pytest.mark.parametrize(
    "fn, exc",
    [
        ("add", TypeError),
        (0, ValueError),
        (-5, ValueError),
        (True, TypeError),
        (3.5, TypeError),
        (None, TypeError),
        (ITEM_FN(), ValueError),
    ],
)
def test_unsupported_pointer_types(q, fn, exc):
    a = np.zeros(2)
    with pytest.raises(exc):
        q.map_native(fn, a, np.zeros(2))


def test_kernel_helper_validates(q):
    with pytest.raises(ValueError, match="abi"):
        pyqueue.kernel(kernels.add_one_f64.address, abi="vector")
    k = pyqueue.kernel(kernels.add_one_f64.address, arg_dtype="f8", out_dtype="f8", name="inc")
    assert "inc" in repr(k) and k.abi == "item"
    assert pyqueue.kernel(k) is k


def test_run_serial_matches_pool(q):
    a = np.arange(10_000.0)
    serial, pooled = np.zeros_like(a), np.zeros_like(a)
    kernels.run_serial(kernels.add_one_f64, a, serial)
    q.map_native(kernels.add_one_f64, a, pooled)
    np.testing.assert_array_equal(serial, pooled)
    with pytest.raises(pyqueue.NativeTaskError):
        kernels.run_serial(kernels.sqrt_or_fail_f64, np.array([-1.0]), np.zeros(1))


def test_native_after_shutdown_raises_and_cancelled_items_are_marked():
    q = pyqueue.TaskQueue(workers=1, native_workers=1)
    a = np.full(2000, 20000.0)  # ~20 us per item
    out = np.zeros_like(a)
    task = q.submit_native(kernels.spin_f64, a, out, chunksize=1)
    q.shutdown(cancel_pending=True)
    status = task.result(raise_on_error=False)
    not_run = status == pyqueue.NativeTaskError.NOT_RUN
    assert not_run.any()
    assert np.all((status == 0) | not_run)
    assert np.all(out[status == 0] > 0) and np.all(out[not_run] == 0)
    with pytest.raises(pyqueue.QueueClosed):
        q.map_native(kernels.add_one_f64, np.zeros(2), np.zeros(2))


def test_not_run_code_matches_the_c_core():
    # NativeTaskError.NOT_RUN is written out in Python; it must stay the C
    # core's PQ_ITEM_NOT_RUN.
    assert pyqueue.NativeTaskError.NOT_RUN == pyqueue._native.NOT_RUN
