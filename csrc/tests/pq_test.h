/* pq_test.h - the few helpers the C tests share: checks that report file and
 * line, a seeded PRNG, and a seed taken from PQ_SEED or the clock (printed, so
 * any failure can be replayed). */
#ifndef PQ_TEST_H
#define PQ_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

#define CHECK_EQ(a, b)                                                           \
    do {                                                                         \
        long long _a = (long long)(a), _b = (long long)(b);                      \
        if (_a != _b) {                                                          \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__,  \
                    __LINE__, #a, #b, _a, _b);                                   \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* xorshift64*: small, fast, good enough to vary schedules. */
static inline uint64_t pq_test_rand(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t pq_test_seed(const char *name) {
    const char *env = getenv("PQ_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    if (seed == 0) seed = 1;
    printf("%s: seed %llu (rerun with PQ_SEED=%llu)\n", name, (unsigned long long)seed,
           (unsigned long long)seed);
    fflush(stdout);
    return seed;
}

#endif /* PQ_TEST_H */
