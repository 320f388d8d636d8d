/* pq_kernels.c - see pq_kernels.h. */
#include "pq_kernels.h"

int pq_kernel_add_one_f64(const void *arg, void *out) {
    *(double *)out = *(const double *)arg + 1.0;
    return 0;
}

int pq_kernel_spin_f64(const void *arg, void *out) {
    long n = (long)*(const double *)arg;
    double acc = 0.0;
    for (long i = 0; i < n; i++) acc = acc * 0.999999 + 1.0; /* dependent: not vectorised */
    *(double *)out = acc;
    return 0;
}

int pq_kernel_sqrt_or_fail_f64(const void *arg, void *out) {
    double x = *(const double *)arg;
    if (x < 0) return 1;
    double r = x;
    if (x > 0)
        for (int i = 0; i < 60; i++) r = 0.5 * (r + x / r); /* Newton: no libm needed */
    *(double *)out = r;
    return 0;
}

int pq_kernel_scale2_f64_range(const void *args, int64_t begin, int64_t end, void *out) {
    const double *a = args;
    double *o = out;
    for (int64_t i = begin; i < end; i++) o[i] = 2.0 * a[i];
    return 0;
}
