# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
# cython: cdivision=True
"""pyqueue._native: the adapter between the C core (csrc/) and Python.

It owns the C objects (the Python lane, the native pool, native batches),
converts buffers and function pointers, releases the GIL around every blocking
C call, maps status codes to exceptions (``_raise_status``), and runs the
Python-lane loop.  Policy (worker counts, shutdown rules, exit and fork hooks)
lives in pyqueue/_queue.py, which subclasses ``Engine``.

One extension module, one file per concern (included below, in this order):

  _status.pxi   status codes -> exceptions, timeouts, waits, fork generations
  _tunables.pxi C copies of the map and chunking tunables (pyqueue/_tunables.py)
  _task.pxi     Task, the unyielded list behind results(), completion
  _engine.pxi   Lane (the Python lane and its thread loop) and Engine
  _map.pxi      the ordered adaptive map
  _batches.pxi  native batches: Kernel, NativeTask, chunk sizing, run_serial
  _kernels.pxi  the built-in kernels
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_GET_ITEM, PyList_New, PyList_SET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.pycapsule cimport (PyCapsule_CheckExact, PyCapsule_GetName,
                                PyCapsule_GetPointer, PyCapsule_New)
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t

from pq_core cimport *

import collections
import ctypes
import itertools
import logging
import types

from pyqueue._aio import await_handle as _await_handle
from pyqueue._stats import EngineStats as _EngineStats
from pyqueue.errors import CancelledError, NativeTaskError, QueueClosed, QueueFull

_log = logging.getLogger("pyqueue")

include "_status.pxi"
include "_tunables.pxi"
include "_task.pxi"
include "_engine.pxi"
include "_map.pxi"
include "_batches.pxi"
include "_kernels.pxi"
