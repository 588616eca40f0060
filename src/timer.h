/*
 * timer — a min-heap of deadlines, used to re-arm lanes after a retry backoff
 * and to hold delayed events. Entries with equal deadlines pop in the order
 * they were inserted (delayed events given one time keep their order).
 * Thread-safe: every function takes the heap's own mutex (a leaf lock: no
 * other lock is taken while it is held, and no callback runs under it).
 */
#ifndef EB_TIMER_H
#define EB_TIMER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct eb__timer_entry {
    int64_t deadline; /* CLOCK_MONOTONIC ns */
    void *what;
    uint64_t gen;
    uint64_t order; /* insertion count: equal deadlines pop in insertion order */
} eb__timer_entry;

typedef struct eb__timers {
    pthread_mutex_t lock;
    eb__timer_entry *heap; /* protected by lock */
    unsigned n, cap;       /* protected by lock */
    uint64_t inserted;     /* entries ever inserted (their order); protected by lock */
    /* Slots of popped entries kept for eb__timers_rearm (held <= cap - n);
       protected by lock. */
    unsigned held;
    /* Earliest deadline, INT64_MAX when empty. Written under lock, read
       relaxed by workers deciding how long to sleep: a stale value only makes
       a worker look again a little early or be woken by eb__timers_push. */
    _Atomic int64_t next;
} eb__timers;

int eb__timers_init(eb__timers *t);
void eb__timers_fini(eb__timers *t);
/* Returns 0, or -1 when out of memory. *earlier is set when the new entry is
   now the earliest (sleepers must be woken to shorten their sleep). */
int eb__timers_push(eb__timers *t, int64_t deadline, void *what, uint64_t gen, bool *earlier);
/* Pops one entry due at now; false if none. */
bool eb__timers_pop_due(eb__timers *t, int64_t now, eb__timer_entry *out);
/* As eb__timers_pop_due, and the entry's slot stays held for it: the caller
   either puts it back with eb__timers_rearm, which then needs no memory and
   cannot fail, or gives the slot up with eb__timers_unhold (n slots at
   once). */
bool eb__timers_pop_due_held(eb__timers *t, int64_t now, eb__timer_entry *out);
void eb__timers_rearm(eb__timers *t, int64_t deadline, void *what, uint64_t gen, bool *earlier);
void eb__timers_unhold(eb__timers *t, unsigned n);
static inline int64_t eb__timers_next(eb__timers *t)
{
    return atomic_load_explicit(&t->next, memory_order_relaxed);
}
/* Removes the entry (what, gen) if it is still in the heap (not popped);
   returns whether it was. */
bool eb__timers_remove(eb__timers *t, const void *what, uint64_t gen);
/* Removes every entry whose `what` has bit 0 set and whose deadline is
   after `after` (not due by then) into a malloc'd array (*out, free it) and
   returns how many; 0 with *out NULL when there are none or no memory
   (they stay). */
unsigned eb__timers_take_tagged(eb__timers *t, int64_t after, eb__timer_entry **out);
/* Whether an entry is due at now (checked under the heap's lock, so that a
   caller ordered after a pop by the lock sees it popped). */
bool eb__timers_due(eb__timers *t, int64_t now);
/* Number of pending entries (for drain checks). */
unsigned eb__timers_count(eb__timers *t);

#endif /* EB_TIMER_H */
