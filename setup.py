"""Build of the single extension pyqueue._native from pyx/ and csrc/.

Environment switches:
  PYQUEUE_DEBUG=1     -O0 -g, assertions on, debug counters (live tasks, ring
                      references, native batches) that the tests assert are
                      back to zero; Cython line tracing off
  PYQUEUE_SANITIZE=address|thread
                      build the extension with that sanitizer (run Python with
                      the matching runtime preloaded: see the Makefile)
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

CORE = ["csrc/pq_ring.c", "csrc/pq_park.c", "csrc/pq_lane.c", "csrc/pq_pool.c", "csrc/pq_kernels.c"]

debug = os.environ.get("PYQUEUE_DEBUG") == "1"
sanitize = os.environ.get("PYQUEUE_SANITIZE", "")
if sanitize not in ("", "address", "thread"):
    raise SystemExit(f"PYQUEUE_SANITIZE must be 'address' or 'thread', not {sanitize!r}")

compile_args = ["-std=c11", "-pthread", "-Wno-unused-function"]
link_args = ["-pthread"]
if debug:
    # PYQUEUE_DEBUG_COUNTERS: the engine counts what it holds (_debug_counters)
    compile_args += ["-O0", "-g", "-UNDEBUG", "-DPYQUEUE_DEBUG_COUNTERS"]
else:
    compile_args += ["-O2"]
if sanitize:
    flag = f"-fsanitize={sanitize}" + (",undefined" if sanitize == "address" else "")
    compile_args += [flag, "-fno-omit-frame-pointer", "-g"]
    link_args += [flag]

extension = Extension(
    "pyqueue._native",
    sources=["pyx/_native.pyx", *CORE],
    include_dirs=["csrc", "pyx"],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    ext_modules=cythonize(
        [extension],
        include_path=["pyx"],
        compiler_directives={"language_level": "3", "embedsignature": True},
    ),
)
