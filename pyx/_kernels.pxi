# Included by _native.pyx: the built-in kernels pyqueue ships, as capsules.
# The kernels themselves are C (csrc/pq_kernels.c), shared with the C tests
# and benchmark; this file only hands them to Python.


def _builtin_kernels():
    """name -> (capsule, abi, dtype) for the kernels pyqueue ships."""
    cdef const char *cap_name = b"pyqueue.kernel"
    return {
        "add_one_f64": (PyCapsule_New(<void *>pq_kernel_add_one_f64, cap_name, NULL), "item", "f8"),
        "spin_f64": (PyCapsule_New(<void *>pq_kernel_spin_f64, cap_name, NULL), "item", "f8"),
        "sqrt_or_fail_f64": (PyCapsule_New(<void *>pq_kernel_sqrt_or_fail_f64, cap_name, NULL),
                             "item", "f8"),
        "scale2_f64_range": (PyCapsule_New(<void *>pq_kernel_scale2_f64_range, cap_name, NULL),
                             "range", "f8"),
    }
