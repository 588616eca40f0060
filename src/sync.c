/*
 * sync — Concurrency Kit ring and eventcount wrappers, and the clocks.
 *
 * The eventcount ops put ck_ec on Linux futexes. ck_ec keeps a "waiters"
 * flag in the counter word, so eb__ec_inc is a single atomic add when
 * nobody sleeps and only then makes the FUTEX_WAKE system call.
 */
#include "sync.h"

#include <ck_pr.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int eb__ring_init(eb__ring *r, unsigned min_items)
{
    unsigned size = 2;
    /* ck_ring keeps one slot free to tell full from empty. */
    while (size - 1 < min_items)
        size <<= 1;
    r->buf = calloc(size, sizeof(*r->buf));
    if (r->buf == NULL)
        return -1;
    atomic_init(&r->turn_waiters, 0);
    if (pthread_mutex_init(&r->mp_lock, NULL) != 0) {
        free(r->buf);
        r->buf = NULL;
        return -1;
    }
    ck_ring_init(&r->ring, size);
    return 0;
}

void eb__ring_fini(eb__ring *r)
{
    pthread_mutex_destroy(&r->mp_lock);
    free(r->buf);
    r->buf = NULL;
}

void eb__ring_wait_turn(eb__ring *r, unsigned ticket)
{
    for (unsigned spins = 0;; spins++) {
        unsigned tail = ck_pr_load_uint(&r->ring.p_tail);
        if (tail == ticket)
            return;
        if (spins < 64) {
            ck_pr_stall();
            continue;
        }
        atomic_fetch_add_explicit(&r->turn_waiters, 1, memory_order_seq_cst);
        tail = ck_pr_load_uint(&r->ring.p_tail);
        if (tail != ticket) {
            /* Sleeps only while p_tail still holds `tail` (the kernel checks
               atomically); 50 us bounds a missed wake-up. */
            struct timespec rel = {.tv_sec = 0, .tv_nsec = 50000};
            syscall(SYS_futex, &r->ring.p_tail, FUTEX_WAIT | FUTEX_PRIVATE_FLAG, tail, &rel, NULL,
                    0);
        }
        atomic_fetch_sub_explicit(&r->turn_waiters, 1, memory_order_relaxed);
    }
}

bool eb__ring_push_mp_contended(eb__ring *r, void *p)
{
    pthread_mutex_lock(&r->mp_lock);
    bool ok = eb__ring_push_mp_fast(r, p);
    pthread_mutex_unlock(&r->mp_lock);
    return ok;
}

void eb__ring_wake_turn(eb__ring *r)
{
    syscall(SYS_futex, &r->ring.p_tail, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX, NULL, NULL, 0);
}

bool eb__ring_contains_sc(const eb__ring *r, const void *p)
{
    unsigned c = r->ring.c_head;
    /* Acquire: the slots below p_tail were written before it was released
       (for TSan: pairs with the release in eb__ring_push_sp). */
    unsigned t = ck_pr_load_uint(&r->ring.p_tail);
    ck_pr_fence_load();
    EB__HB_ACQUIRE((void *)&r->ring.p_tail);
    for (; c != t; c++) {
        if (r->buf[c & r->ring.mask].value == p)
            return true;
    }
    return false;
}

static void *hs_malloc(size_t n)
{
    return malloc(n);
}

static void hs_free(void *p, size_t n, bool defer)
{
    (void)n;
    (void)defer;
    free(p);
}

static void *hs_realloc(void *p, size_t old, size_t n, bool defer)
{
    (void)old;
    (void)defer;
    return realloc(p, n);
}

struct ck_malloc eb__ck_malloc = {.malloc = hs_malloc, .realloc = hs_realloc, .free = hs_free};

static int ec_gettime(const struct ck_ec_ops *ops, struct timespec *out)
{
    (void)ops;
    return clock_gettime(CLOCK_MONOTONIC, out);
}

static void ec_wait32(const struct ck_ec_wait_state *state, const uint32_t *addr, uint32_t expected,
                      const struct timespec *deadline)
{
    (void)state;
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
    syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected, deadline, NULL,
            FUTEX_BITSET_MATCH_ANY);
}

static void ec_wake32(const struct ck_ec_ops *ops, const uint32_t *addr)
{
    (void)ops;
    syscall(SYS_futex, addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, INT_MAX, NULL, NULL, 0);
}

static const struct ck_ec_ops ec_ops = {
    .gettime = ec_gettime,
    .wait32 = ec_wait32,
    .wake32 = ec_wake32,
    /* Callers spin themselves before they decide to sleep (bus.c), so the
       eventcount only re-checks briefly. */
    .busy_loop_iter = 16,
    .initial_wait_ns = 2000000,
};

static const struct ck_ec_mode ec_mode = {.ops = &ec_ops, .single_producer = false};

void eb__ec_init(eb__ec *e)
{
    ck_ec32_init(&e->ec, 0);
}

uint32_t eb__ec_value(const eb__ec *e)
{
    return ck_ec32_value(&e->ec);
}

void eb__ec_inc(eb__ec *e)
{
    ck_ec32_inc(&e->ec, &ec_mode);
}

/*
 * ck_ec's slow path sleeps in growing steps (2 ms, 16 ms, 128 ms, ...) and,
 * in Concurrency Kit 0.7.1, may sleep a whole step past the caller's
 * deadline (measured: a 3 ms deadline woke after 16 ms). The predicate is
 * called before each step with that step's deadline and may shorten it: we
 * clamp it to the caller's.
 */
static int clamp_to_deadline(const struct ck_ec_wait_state *state, struct timespec *step)
{
    const struct timespec *user = state->data;
    if (user != NULL && (user->tv_sec < step->tv_sec ||
                         (user->tv_sec == step->tv_sec && user->tv_nsec < step->tv_nsec)))
        *step = *user;
    return 0;
}

int eb__ec_wait(eb__ec *e, uint32_t old, const struct timespec *deadline)
{
    return ck_ec32_wait_pred(&e->ec, &ec_mode, old, clamp_to_deadline, (void *)deadline, deadline);
}

int64_t eb__now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t eb__now_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t eb__now_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct timespec eb__ts_from_ns(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    return ts;
}

int64_t eb__deadline_after(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return INT64_MAX;
    return eb__ns_after(eb__now_mono_ns(), timeout_ns);
}

void eb__cpu_relax(void)
{
    ck_pr_stall();
}

void eb__spin_pause(unsigned i)
{
    if (i % 64 == 63)
        sched_yield();
    else
        ck_pr_stall();
}
