/*
 * pq_kernels.h - the native kernels pyqueue ships (pyqueue.kernels), for
 * demos, tests and benchmarks.  Plain C, usable on their own: the C bench and
 * tests run the same code the Python package exposes.
 *
 * Item ABI (pq_item_fn): int fn(const void *arg, void *out), one float64 each.
 *   pq_kernel_add_one_f64       out = arg + 1
 *   pq_kernel_spin_f64          a busy loop of (long)arg dependent steps
 *                               (about 1 ns each): a kernel of known cost
 *   pq_kernel_sqrt_or_fail_f64  out = sqrt(arg); status 1 for arg < 0 (out untouched)
 * Range ABI (pq_range_fn):
 *   pq_kernel_scale2_f64_range  out[i] = 2 * args[i] for i in [begin, end)
 * All return 0 on success and touch nothing but their arguments.
 */
#ifndef PQ_KERNELS_H
#define PQ_KERNELS_H

#include <stdint.h>

int pq_kernel_add_one_f64(const void *arg, void *out);
int pq_kernel_spin_f64(const void *arg, void *out);
int pq_kernel_sqrt_or_fail_f64(const void *arg, void *out);
int pq_kernel_scale2_f64_range(const void *args, int64_t begin, int64_t end, void *out);

#endif /* PQ_KERNELS_H */
