/*
 * sync — the only component that includes Concurrency Kit's ring and
 * eventcount headers. It wraps:
 *  - eb__ring: ck_ring of pointers; MPMC producers / single consumer for the
 *    intake, SPSC (or SPMC for drop-oldest) for lane mailboxes;
 *  - eb__ec: ck_ec32 eventcounts on Linux futexes, used to park idle workers
 *    and waiting publishers without a system call when nobody sleeps.
 * Concurrency Kit 0.7.1 (Debian's) predates an upstream strengthening of
 * ck_ring's dequeue fences; it is correct on x86-64 (TSO), which is what we
 * build and test on. See docs/ARCHITECTURE.md for other platforms.
 */
#ifndef EB_SYNC_H
#define EB_SYNC_H

#include <ck_ec.h>
#include <ck_malloc.h>
#include <ck_ring.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/*
 * ThreadSanitizer cannot see Concurrency Kit's inline-assembly fences, so in
 * TSan builds every pointer handed through a ring carries an explicit
 * release (before the push) / acquire (after the pop) on the pointer itself:
 * exactly the happens-before edge ck_ring provides, and no more. The
 * remaining reports inside ck itself are suppressed by tests/tsan.supp.
 */
#if defined(__SANITIZE_THREAD__)
#define EB__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EB__TSAN 1
#endif
#endif
#ifdef EB__TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define EB__HB_RELEASE(p) __tsan_release(p)
#define EB__HB_ACQUIRE(p) __tsan_acquire(p)
#else
#define EB__HB_RELEASE(p) ((void)(p))
#define EB__HB_ACQUIRE(p) ((void)(p))
#endif

/*
 * Full (seq_cst) fence, used where a thread stores one flag and then loads
 * another (Dekker). GCC rejects atomic_thread_fence under -fsanitize=thread
 * (TSan does not model fences); there a seq_cst RMW on a thread-local dummy
 * is used instead — on x86 the same locked instruction, a full barrier.
 */
#ifdef EB__TSAN
#include <stdatomic.h>
static inline void eb__fence_seq_cst(void)
{
    static _Thread_local atomic_int dummy;
    atomic_fetch_add_explicit(&dummy, 0, memory_order_seq_cst);
}
#else
#include <stdatomic.h>
static inline void eb__fence_seq_cst(void)
{
    atomic_thread_fence(memory_order_seq_cst);
}
#endif

/* Adds n to a counter that only one thread writes at a time (readers may
   be concurrent): a relaxed load and store instead of a locked RMW. */
static inline void eb__count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

typedef struct eb__ring {
    ck_ring_t ring;
    ck_ring_buffer_t *buf;
    /* Producers asleep waiting for their commit turn (MPMC push only). */
    atomic_uint turn_waiters;
    /* Serializes producers while others wait for their turn; see
       eb__ring_push_mp. */
    pthread_mutex_t mp_lock;
} eb__ring;

/* Allocates a ring that holds at least min_items pointers. Returns 0 or -1. */
int eb__ring_init(eb__ring *r, unsigned min_items);
void eb__ring_fini(eb__ring *r);

/* How many pointers the ring holds at most. */
static inline unsigned eb__ring_capacity(const eb__ring *r)
{
    return ck_ring_capacity(&r->ring) - 1;
}

/* Producer and consumer positions (count of items ever committed / taken,
   mod 2^32). The consumer's is exact for the consumer itself. */
static inline unsigned eb__ring_produced(const eb__ring *r)
{
    return ck_pr_load_uint(&r->ring.p_tail);
}
static inline unsigned eb__ring_consumed(const eb__ring *r)
{
    return ck_pr_load_uint(&r->ring.c_head);
}

/* Racy snapshot of the number of items (exact when quiescent). */
static inline unsigned eb__ring_size(const eb__ring *r)
{
    return ck_ring_size(&r->ring);
}

void eb__ring_wait_turn(eb__ring *r, unsigned ticket);
void eb__ring_wake_turn(eb__ring *r);
bool eb__ring_push_mp_contended(eb__ring *r, void *p);

/*
 * Any number of producers: ck_ring's reserve (CAS on p_head), store of the
 * slot, commit (fence, release of p_tail in ticket order). A producer whose
 * predecessor was preempted between its reserve and its commit must wait for
 * it; ck's commit spins, and with more publisher threads than cores the
 * spinners keep the preempted one off the CPU (measured: 4 publishers on 2
 * cores fell from millions to ~100k events/s, with sched_yield as well). So
 * we wait for our turn ourselves — a short spin, then a futex sleep on p_tail
 * that frees the CPU for the predecessor, which wakes us when it commits —
 * and call ck's commit once the turn is ours. A committer pays one relaxed
 * load of turn_waiters; the sleep has a short timeout, so a wake-up missed by
 * that relaxed load costs at most one timeout.
 *
 * Sleeping waiters still hold tickets, so with many more producers than
 * cores every commit would need a context switch (8 publishers on 2 cores:
 * ~100k events/s). While anyone waits for a turn, new producers therefore
 * queue on a mutex (sleeping, holding no ticket) and enter one at a time;
 * without contention the path stays lock-free.
 */
static inline bool eb__ring_push_mp_fast(eb__ring *r, void *p)
{
    unsigned ticket;
    EB__HB_RELEASE(p);
    ck_ring_buffer_t *slot = ck_ring_enqueue_reserve_mpmc(&r->ring, r->buf, &ticket);
    if (slot == NULL)
        return false;
    /* The slot was last read by a consumer before it advanced c_head; our
       reserve saw that (ck fences). Say so to TSan: pairs with the release
       in the pops. */
    EB__HB_ACQUIRE(r->buf);
    slot->value = p;
    /* For TSan: the slot is written before the commit that publishes it
       (ck's fence orders them; TSan cannot see it). Pairs with the acquire
       in eb__ring_peek_sc, which reads slots in place. */
    EB__HB_RELEASE(&r->ring.p_tail);
    if (ck_pr_load_uint(&r->ring.p_tail) != ticket)
        eb__ring_wait_turn(r, ticket);
    ck_ring_enqueue_commit_mpmc(&r->ring, ticket);
    if (atomic_load_explicit(&r->turn_waiters, memory_order_relaxed) != 0)
        eb__ring_wake_turn(r);
    return true;
}

static inline bool eb__ring_push_mp(eb__ring *r, void *p)
{
    if (atomic_load_explicit(&r->turn_waiters, memory_order_relaxed) != 0)
        return eb__ring_push_mp_contended(r, p);
    return eb__ring_push_mp_fast(r, p);
}

/* One producer at a time (callers serialize with a lock or token whose
   release/acquire orders the handover of the producer role). */
static inline bool eb__ring_push_sp(eb__ring *r, void *p)
{
    EB__HB_RELEASE(p);
#ifdef EB__TSAN
    /* eb__ring_contains_sc reads queued slots in place, not through ck: say
       to TSan that the slot is written before the p_tail store that
       publishes it (ck's store fence orders them; TSan cannot see it).
       Pairs with the acquire in eb__ring_contains_sc. The reserve/commit
       pair is ck_ring_enqueue_spsc split in two. */
    ck_ring_buffer_t *slot = ck_ring_enqueue_reserve_spsc(&r->ring, r->buf);
    if (slot == NULL)
        return false;
    /* The slot was last read by a consumer before it advanced c_head, which
       the reserve saw: pairs with the release in the pops (as in
       eb__ring_push_mp_fast). */
    EB__HB_ACQUIRE(r->buf);
    slot->value = p;
    __tsan_release(&r->ring.p_tail);
    ck_ring_enqueue_commit_spsc(&r->ring);
    return true;
#else
    return ck_ring_enqueue_spsc(&r->ring, r->buf, p);
#endif
}

/* One consumer at a time (serialized like push_sp). */
static inline bool eb__ring_pop_sc(eb__ring *r, void **p)
{
    if (!ck_ring_dequeue_spsc(&r->ring, r->buf, p))
        return false;
    EB__HB_ACQUIRE(*p);
    EB__HB_RELEASE(r->buf); /* the slot may be reused: see eb__ring_push_mp */
    return true;
}

/*
 * One consumer at a time, a run of entries at once: eb__ring_peek_sc
 * snapshots the producers' position once and says how many entries from
 * *pos on are committed; the consumer reads them in place (eb__ring_at) and
 * then releases them all with one eb__ring_consume_sc. This is ck_ring's
 * single-consumer dequeue (same loads and store; see eb__ring_consume_sc for
 * its fence) with its c_head update and p_tail read made once per run
 * instead of once per entry:
 * each of those is a cache-line transfer when publishers on another core
 * are pushing meanwhile (Concurrency Kit 0.7.1 has no bulk dequeue).
 */
static inline unsigned eb__ring_peek_sc(const eb__ring *r, unsigned *pos)
{
    *pos = r->ring.c_head;
    unsigned n = ck_pr_load_uint(&r->ring.p_tail) - *pos;
    ck_pr_fence_load();                      /* the slots are read after the snapshot */
    EB__HB_ACQUIRE((void *)&r->ring.p_tail); /* pairs with the pushes' release */
    return n;
}

/* The entry at position pos, which eb__ring_peek_sc reported committed. */
static inline void *eb__ring_at(const eb__ring *r, unsigned pos)
{
    void *p = r->buf[pos & r->ring.mask].value;
    EB__HB_ACQUIRE(p);
    return p;
}

/* Releases the n entries read since eb__ring_peek_sc to the producers. */
static inline void eb__ring_consume_sc(eb__ring *r, unsigned n)
{
    EB__HB_RELEASE(r->buf); /* the slots may be reused: see eb__ring_push_mp */
    /* The reads of the slots (and of what they point to) complete before the
       slots are given back: a release fence, where Concurrency Kit 0.7.1's
       own dequeue has a store fence, which orders only stores (the same on
       x86-64; on weakly ordered CPUs a read could pass the store). */
    ck_pr_fence_release();
    ck_pr_store_uint(&r->ring.c_head, r->ring.c_head + n);
}

/* Any number of consumers, including one racing a single consumer that uses
   eb__ring_pop_mc too (drop-oldest mailboxes). */
static inline bool eb__ring_pop_mc(eb__ring *r, void **p)
{
    if (!ck_ring_dequeue_spmc(&r->ring, r->buf, p))
        return false;
    EB__HB_ACQUIRE(*p);
    EB__HB_RELEASE(r->buf); /* the slot may be reused: see eb__ring_push_mp */
    return true;
}

/*
 * True if p is queued in the ring. Only the (single) consumer may call it:
 * the slots between its own c_head and an acquire snapshot of p_tail are
 * written and cannot be overwritten while it does not consume.
 */
bool eb__ring_contains_sc(const eb__ring *r, const void *p);

/* malloc/realloc/free for ck_hs tables that are only used under a lock or by
   one thread (route.c, saga.c): nothing reads concurrently, so memory is
   freed at once, deferred or not. */
extern struct ck_malloc eb__ck_malloc;

/* Eventcount. */
typedef struct eb__ec {
    ck_ec32_t ec;
} eb__ec;

void eb__ec_init(eb__ec *e);
/* Current value; acts as an acquire barrier. */
uint32_t eb__ec_value(const eb__ec *e);
/* Bumps the value and wakes every sleeper (no system call without one). */
void eb__ec_inc(eb__ec *e);
/* Sleeps while the value is still old; deadline is CLOCK_MONOTONIC absolute
   or NULL. Returns 0 when woken (or spuriously), -1 at the deadline. */
int eb__ec_wait(eb__ec *e, uint32_t old, const struct timespec *deadline);

/* Time helpers. */
int64_t eb__now_mono_ns(void);
int64_t eb__now_real_ns(void);
/* CLOCK_MONOTONIC_COARSE: the kernel's last tick (a few ms resolution),
   read from the vDSO without a system call; cheap enough per delivery.
   Never 0. */
int64_t eb__now_coarse_ns(void);
struct timespec eb__ts_from_ns(int64_t ns);
/* Absolute monotonic deadline for a relative timeout (<0: none -> INT64_MAX). */
int64_t eb__deadline_after(int64_t timeout_ns);
/* t + span for a time t and a span >= 0, at most INT64_MAX (a span that
   large means "never"). */
static inline int64_t eb__ns_after(int64_t t, int64_t span)
{
    return span > INT64_MAX - t ? INT64_MAX : t + span;
}

/* CPU relaxation for spin loops. */
void eb__cpu_relax(void);

/*
 * Iteration i of a spin loop that waits for another thread: a pause, and
 * every 64th iteration sched_yield(), so that a runnable thread this CPU
 * holds up (a publisher, a worker in the middle of a lane) gets it. With
 * more busy threads than CPUs (the default pool next to a publisher on a
 * 2-CPU machine) a pure spin takes the CPU from the thread it waits for;
 * bench/RESULTS.md has the measurements.
 */
void eb__spin_pause(unsigned i);

#endif /* EB_SYNC_H */
