/* The built-in kernels (pyqueue.kernels): each one's values and status codes,
 * run through pq_batch_run_range (the plain C loop) and through the pool. */
#include <string.h>

#include "../pq_kernels.h"
#include "../pq_pool.h"
#include "pq_test.h"

enum { N = 1000 };
static double a[N], o[N];
static int32_t st[N];

static void test_item_kernels(void) {
    for (int i = 0; i < N; i++) a[i] = i - 10; /* ten negative inputs */
    pq_batch b;
    pq_batch_init(&b, (void *)pq_kernel_add_one_f64, PQ_ABI_ITEM, a, 8, o, 8, st);
    CHECK_EQ(pq_batch_run_range(&b, 0, N), 0);
    for (int i = 0; i < N; i++) CHECK(o[i] == a[i] + 1.0);

    memset(o, 0, sizeof(o));
    pq_batch_init(&b, (void *)pq_kernel_sqrt_or_fail_f64, PQ_ABI_ITEM, a, 8, o, 8, st);
    CHECK_EQ(pq_batch_run_range(&b, 0, N), 10);
    for (int i = 0; i < N; i++) {
        if (a[i] < 0) {
            CHECK_EQ(st[i], 1);
            CHECK(o[i] == 0.0); /* untouched on failure */
        } else {
            CHECK_EQ(st[i], 0);
            CHECK(o[i] * o[i] > a[i] - 1e-6 && o[i] * o[i] < a[i] + 1e-6);
        }
    }

    double steps = 1000, out = 0;
    CHECK_EQ(pq_kernel_spin_f64(&steps, &out), 0);
    CHECK(out > 999.0 && out < 1000.0); /* 1000 steps of acc * 0.999999 + 1 */
}

static void test_range_kernel_on_the_pool(void) {
    for (int i = 0; i < N; i++) a[i] = i;
    memset(o, 0, sizeof(o));
    pq_pool *pool;
    CHECK_EQ(pq_pool_create(&pool, 2, 64), PQ_OK);
    pq_batch b;
    pq_batch_init(&b, (void *)pq_kernel_scale2_f64_range, PQ_ABI_RANGE, a, 8, o, 8, st);
    CHECK_EQ(pq_pool_submit(pool, &b, N, 64, -1), PQ_OK);
    CHECK_EQ(pq_batch_wait(&b, -1), PQ_OK);
    CHECK_EQ(pq_batch_failed(&b), 0);
    for (int i = 0; i < N; i++) CHECK(o[i] == 2.0 * i);
    pq_pool_destroy(pool);
}

int main(void) {
    test_item_kernels();
    test_range_kernel_on_the_pool();
    printf("test_kernels: 2 passed, 0 failed\n");
    return 0;
}
