/*
 * pq_common.h - status codes and small portability helpers shared by every
 * csrc module.  C11, no Python.h.
 *
 * Contract: every public function of the core that can fail returns one of
 * the PQ_* status codes below; 0 is success.  The Python adapter maps them to
 * exceptions in exactly one place (pyx/_native.pyx: _raise_status).
 */
#ifndef PQ_COMMON_H
#define PQ_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* One status-code vocabulary for the whole core. */
typedef enum pq_status {
    PQ_OK = 0,
    PQ_EMPTY = 1,      /* nothing to pop right now */
    PQ_FULL = 2,       /* no free cell right now */
    PQ_CLOSED = 3,     /* the lane or pool was shut down */
    PQ_TIMEOUT = 4,    /* a bounded wait ran out */
    PQ_EINVAL = 5,     /* a bad argument (size, pointer, range) */
    PQ_ENOMEM = 6,     /* an allocation failed */
    PQ_ETHREAD = 7,    /* a thread could not be started */
    PQ_INTERRUPTED = 8 /* a wait slice ended so the caller can check signals */
} pq_status;

/* Returns a static, human-readable name for a status code. */
const char *pq_status_str(int status);

/* Cache geometry: a cell is one 64-byte line; the producer and consumer
 * counters are kept 128 bytes apart because the adjacent-line prefetcher
 * fetches lines in pairs. */
#define PQ_CACHE_LINE 64
#define PQ_FALSE_SHARING_RANGE 128

#if defined(__x86_64__) || defined(__i386__)
#define PQ_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define PQ_CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define PQ_CPU_RELAX() ((void)0)
#endif

/* Monotonic clock in nanoseconds. */
int64_t pq_now_ns(void);

#endif /* PQ_COMMON_H */
