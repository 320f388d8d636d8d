# Included by _native.pyx: the built-in kernels pyqueue ships, as capsules.

# -- built-in kernels ---------------------------------------------------------------

cdef int _k_add_one_f64(const void *arg, void *out) noexcept nogil:
    (<double *>out)[0] = (<const double *>arg)[0] + 1.0
    return 0


cdef int _k_spin_f64(const void *arg, void *out) noexcept nogil:
    # A busy loop of int(arg) dependent steps, about 1 ns each: a stand-in for
    # a kernel of known cost.
    cdef long n = <long>(<const double *>arg)[0]
    cdef double acc = 0.0
    cdef long i
    for i in range(n):
        acc = acc * 0.999999 + 1.0
    (<double *>out)[0] = acc
    return 0


cdef int _k_sqrt_or_fail_f64(const void *arg, void *out) noexcept nogil:
    # Square root; a negative input is an error (status 1) and leaves out as is.
    cdef double x = (<const double *>arg)[0]
    if x < 0:
        return 1
    cdef double r = x
    cdef int i
    if x > 0:
        for i in range(60):   # Newton, no libm needed
            r = 0.5 * (r + x / r)
    (<double *>out)[0] = r
    return 0


cdef int _k_scale2_f64_range(const void *args, int64_t begin, int64_t end,
                             void *out) noexcept nogil:
    cdef const double *a = <const double *>args
    cdef double *o = <double *>out
    cdef int64_t i
    for i in range(begin, end):
        o[i] = 2.0 * a[i]
    return 0


def _builtin_kernels():
    """name -> (capsule, abi, dtype) for the kernels pyqueue ships."""
    cdef const char *cap_name = b"pyqueue.kernel"
    return {
        "add_one_f64": (PyCapsule_New(<void *>_k_add_one_f64, cap_name, NULL), "item", "f8"),
        "spin_f64": (PyCapsule_New(<void *>_k_spin_f64, cap_name, NULL), "item", "f8"),
        "sqrt_or_fail_f64": (PyCapsule_New(<void *>_k_sqrt_or_fail_f64, cap_name, NULL), "item", "f8"),
        "scale2_f64_range": (PyCapsule_New(<void *>_k_scale2_f64_range, cap_name, NULL), "range", "f8"),
    }
