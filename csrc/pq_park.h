/*
 * pq_park.h - blocking without lost wake-ups: a futex eventcount and a
 * one-shot completion event.  Linux futexes; no condition variables.
 *
 * Eventcount protocol (pq_park)
 *   waiter:   e = pq_park_prepare(p);        // announce: sleepers += 1
 *             if (condition holds) { pq_park_cancel(p); ... }
 *             else pq_park_wait(p, e, timeout);   // sleeps only if epoch == e
 *   notifier: make the condition true; pq_park_notify(p, n);
 * The notifier makes a system call only when a sleeper is announced, so the
 * hot path (nobody asleep) costs one fence and one load.
 *
 * Why no wake-up is lost: prepare does sleepers += 1, then a seq_cst fence,
 * then the waiter re-checks its condition; notify makes the condition true,
 * then a seq_cst fence, then reads sleepers.  With both fences, either the
 * waiter's re-check sees the condition or the notifier sees the sleeper and
 * bumps the epoch, so the futex wait (which compares the epoch atomically in
 * the kernel) returns at once.
 */
#ifndef PQ_PARK_H
#define PQ_PARK_H

#include <stdatomic.h>
#include <stdint.h>

#include "pq_common.h"

typedef struct pq_park {
    _Atomic uint32_t epoch;    /* futex word: bumped by every notify that sees a sleeper */
    _Atomic uint32_t sleepers; /* threads between prepare and the end of wait/cancel */
} pq_park;

void pq_park_init(pq_park *park);
uint32_t pq_park_prepare(pq_park *park);
void pq_park_cancel(pq_park *park);
/* timeout_ns < 0 waits without limit.  PQ_OK (woken or epoch moved) or
 * PQ_TIMEOUT.  Always ends the announcement made by prepare. */
int pq_park_wait(pq_park *park, uint32_t epoch, int64_t timeout_ns);
/* Wake up to n sleepers (n <= 0 or INT32_MAX: all). */
void pq_park_notify(pq_park *park, int n);

/*
 * One-shot event: set once, waited on by any number of threads.  The futex
 * word carries both facts: 0 = not set, 2 = not set and someone waits,
 * 1 = set.  Setting it is one atomic exchange, which is also the setter's
 * last access to the event's memory (apart from a wake-up system call on its
 * address, which is harmless even if the memory has been freed), so a waiter
 * may free the event as soon as it sees it set.  The exchange makes a system
 * call only if the old value says someone waits.
 */
typedef struct pq_event {
    _Atomic uint32_t state; /* futex word: PQ_EVENT_UNSET, _WAITED or _SET */
} pq_event;

void pq_event_init(pq_event *ev);
void pq_event_set(pq_event *ev);
int pq_event_is_set(pq_event *ev);
/* PQ_OK once set, PQ_TIMEOUT if timeout_ns (>= 0) ran out first. */
int pq_event_wait(pq_event *ev, int64_t timeout_ns);

/* Thin futex wrappers (private futexes). */
int pq_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns);
void pq_futex_wake(_Atomic uint32_t *word, int n);

#endif /* PQ_PARK_H */
