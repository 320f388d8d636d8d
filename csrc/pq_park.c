/* pq_park.c - see pq_park.h for the protocol. */
#define _GNU_SOURCE
#include "pq_park.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int64_t pq_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

const char *pq_status_str(int status) {
    switch (status) {
    case PQ_OK: return "ok";
    case PQ_EMPTY: return "empty";
    case PQ_FULL: return "full";
    case PQ_CLOSED: return "closed";
    case PQ_TIMEOUT: return "timeout";
    case PQ_EINVAL: return "invalid argument";
    case PQ_ENOMEM: return "out of memory";
    case PQ_ETHREAD: return "cannot start thread";
    case PQ_INTERRUPTED: return "interrupted";
    default: return "unknown status";
    }
}

int pq_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, tsp, NULL, 0);
    if (rc == -1 && errno == ETIMEDOUT) return PQ_TIMEOUT;
    return PQ_OK; /* woken, value changed (EAGAIN) or signal (EINTR): caller re-checks */
}

void pq_futex_wake(_Atomic uint32_t *word, int n) {
    if (n <= 0) n = INT_MAX;
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

void pq_park_init(pq_park *park) {
    atomic_store_explicit(&park->epoch, 0, memory_order_relaxed);
    atomic_store_explicit(&park->sleepers, 0, memory_order_relaxed);
}

uint32_t pq_park_prepare(pq_park *park) {
    /* relaxed RMW + seq_cst fence: the fence orders this announcement before
     * the caller's re-check of its condition (pairs with the fence in notify). */
    atomic_fetch_add_explicit(&park->sleepers, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    /* acquire: pairs with the release bump in notify, so a waiter that sees a
     * new epoch also sees the condition that notify published before it. */
    return atomic_load_explicit(&park->epoch, memory_order_acquire);
}

void pq_park_cancel(pq_park *park) {
    /* relaxed: the count only decides whether notifiers make a system call;
     * a stale high value costs a spurious wake, never a lost one. */
    atomic_fetch_sub_explicit(&park->sleepers, 1, memory_order_relaxed);
}

int pq_park_wait(pq_park *park, uint32_t epoch, int64_t timeout_ns) {
    int rc = pq_futex_wait(&park->epoch, epoch, timeout_ns);
    pq_park_cancel(park);
    return rc;
}

void pq_park_notify(pq_park *park, int n) {
    /* seq_cst fence: orders the caller's publication of the condition before
     * the sleeper check (pairs with the fence in prepare). */
    atomic_thread_fence(memory_order_seq_cst);
    /* relaxed: ordered by the fence above. */
    if (atomic_load_explicit(&park->sleepers, memory_order_relaxed) == 0) return;
    /* release: pairs with the acquire epoch load in prepare. */
    atomic_fetch_add_explicit(&park->epoch, 1, memory_order_release);
    pq_futex_wake(&park->epoch, n);
}

enum { PQ_EVENT_UNSET = 0, PQ_EVENT_SET = 1, PQ_EVENT_WAITED = 2 };

void pq_event_init(pq_event *ev) {
    atomic_store_explicit(&ev->state, PQ_EVENT_UNSET, memory_order_relaxed);
}

int pq_event_is_set(pq_event *ev) {
    /* acquire: pairs with the release exchange in pq_event_set, so everything
     * the setter wrote (results, status codes) is visible once this is 1. */
    return atomic_load_explicit(&ev->state, memory_order_acquire) == PQ_EVENT_SET;
}

void pq_event_set(pq_event *ev) {
    /* release: publishes the setter's writes to threads that acquire state.
     * After this exchange the event may already be freed by a waiter: only
     * the address is used below, for the wake-up. */
    uint32_t old = atomic_exchange_explicit(&ev->state, PQ_EVENT_SET, memory_order_release);
    if (old == PQ_EVENT_WAITED) pq_futex_wake(&ev->state, INT_MAX);
}

int pq_event_wait(pq_event *ev, int64_t timeout_ns) {
    int64_t deadline = timeout_ns >= 0 ? pq_now_ns() + timeout_ns : -1;
    for (;;) {
        /* acquire: see pq_event_is_set. */
        uint32_t s = atomic_load_explicit(&ev->state, memory_order_acquire);
        if (s == PQ_EVENT_SET) return PQ_OK;
        if (s == PQ_EVENT_UNSET) {
            /* relaxed CAS: it only announces a waiter; the futex compares the
             * word again in the kernel, so a set that slips in between makes
             * the wait return at once. On failure s is reloaded. */
            uint32_t expected = PQ_EVENT_UNSET;
            if (!atomic_compare_exchange_strong_explicit(&ev->state, &expected,
                                                         PQ_EVENT_WAITED,
                                                         memory_order_relaxed,
                                                         memory_order_relaxed))
                continue;
        }
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - pq_now_ns();
            if (left <= 0) return PQ_TIMEOUT;
        }
        pq_futex_wait(&ev->state, PQ_EVENT_WAITED, left);
    }
}
