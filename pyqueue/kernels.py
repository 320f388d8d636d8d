"""Native kernels that ship with pyqueue, for demos, tests and benchmarks.

Each is a :class:`pyqueue.Kernel` over float64 arrays:

- ``add_one_f64``  (item ABI): ``out = arg + 1``
- ``spin_f64``     (item ABI): a busy loop of ``int(arg)`` steps (about 1 ns
  each), so ``arg = 1000`` is a kernel of about 1 us
- ``sqrt_or_fail_f64`` (item ABI): ``out = sqrt(arg)``; status 1 for a
  negative ``arg``
- ``scale2_f64_range`` (range ABI): ``out[i] = 2 * args[i]``

``run_serial`` runs any kernel in a plain C loop in the calling thread.
"""

from __future__ import annotations

from pyqueue._native import Kernel, _builtin_kernels, kernel, run_serial

__all__ = ["add_one_f64", "spin_f64", "sqrt_or_fail_f64", "scale2_f64_range", "run_serial"]


# Made on first use (PEP 562): a kernel's dtype needs numpy, and importing
# numpy starts OpenBLAS threads whose signal mask no supervisor chose.
add_one_f64: Kernel
spin_f64: Kernel
sqrt_or_fail_f64: Kernel
scale2_f64_range: Kernel


def _load() -> dict[str, Kernel]:
    made = {}
    for name, (capsule, abi, dtype) in _builtin_kernels().items():
        made[name] = kernel(capsule, abi=abi, arg_dtype=dtype, out_dtype=dtype, name=name)
    return made


def __getattr__(name: str) -> Kernel:
    if name not in __all__ or name == "run_serial":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals().update(_load())
    return globals()[name]  # type: ignore[no-any-return]
