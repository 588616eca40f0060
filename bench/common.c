/*
 * common — clocks, spinning, payloads and observers shared by every peer.
 *
 * Observers count deliveries in per-thread slots: each slot has one writer
 * (the thread that owns it), which stores count and sum with plain relaxed
 * loads and stores (no read-modify-write, no shared cache line between
 * consumers), and the measuring thread reads them. A thread takes a slot
 * the first time it observes in a run (bn_sink_new_run bumps a generation),
 * so threads from earlier runs never collide with this run's.
 */
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdbool.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 128

uint64_t bn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bn_sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void bn_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

void bn_backoff(unsigned *spins)
{
    if (++*spins < 100) {
        bn_cpu_relax();
    } else {
        *spins = 0;
        sched_yield();
    }
}

/* ---- the machine's cross-core round trip ------------------------------ */

/* Two threads, pinned to the first two CPUs, hand a counter back and forth
   on two cache lines. */
struct xcore {
    alignas(64) _Atomic uint64_t ping;
    alignas(64) _Atomic uint64_t pong;
    alignas(64) uint64_t n;
    double result;
};

enum { XCORE_CHUNKS = 32, XCORE_PER_CHUNK = 256 };

static void pin_to(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set); /* best effort */
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void *xcore_requester(void *arg)
{
    struct xcore *x = arg;
    pin_to(0);
    double chunk[XCORE_CHUNKS];
    unsigned spins = 0;
    uint64_t i = 0;
    for (int c = 0; c < XCORE_CHUNKS; c++) {
        uint64_t t0 = bn_now_ns();
        for (int k = 0; k < XCORE_PER_CHUNK; k++) {
            i++;
            atomic_store_explicit(&x->ping, i, memory_order_release);
            while (atomic_load_explicit(&x->pong, memory_order_acquire) != i)
                bn_backoff(&spins);
        }
        chunk[c] = (double)(bn_now_ns() - t0) / XCORE_PER_CHUNK;
    }
    /* The median chunk: a preemption spoils one chunk, not the figure. */
    qsort(chunk, XCORE_CHUNKS, sizeof(chunk[0]), cmp_double);
    x->result = chunk[XCORE_CHUNKS / 2];
    return NULL;
}

static void *xcore_responder(void *arg)
{
    struct xcore *x = arg;
    pin_to(1);
    unsigned spins = 0;
    for (uint64_t i = 1; i <= x->n; i++) {
        while (atomic_load_explicit(&x->ping, memory_order_acquire) != i)
            bn_backoff(&spins);
        atomic_store_explicit(&x->pong, i, memory_order_release);
    }
    return NULL;
}

double bn_xcore_rtt_ns(void)
{
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
        return 0;
    struct xcore *x = aligned_alloc(64, sizeof(*x));
    if (x == NULL)
        return 0;
    memset(x, 0, sizeof(*x));
    x->n = (uint64_t)XCORE_CHUNKS * XCORE_PER_CHUNK;
    pthread_t req, rsp;
    if (pthread_create(&rsp, NULL, xcore_responder, x) != 0) {
        free(x);
        return 0;
    }
    if (pthread_create(&req, NULL, xcore_requester, x) != 0)
        bn_fatal("could not start a thread");
    pthread_join(req, NULL);
    pthread_join(rsp, NULL);
    double r = x->result;
    free(x);
    return r;
}

/* ---- payloads --------------------------------------------------------- */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

uint64_t bn_fill(void *buf, size_t len, unsigned producer, uint64_t seq, unsigned topic_index)
{
    uint64_t *w = buf;
    size_t n = len / 8;
    uint64_t w0 = ((uint64_t)producer << 48) ^ seq ^ 0x5bd1e995a5a5a5a5ULL;
    w[0] = w0;
    w[1] = topic_index;
    for (size_t i = 2; i < n; i++)
        w[i] = w0 * (2 * i + 1) + i;
    return bn_hash(buf, len);
}

uint64_t bn_hash(const void *buf, size_t len)
{
    const uint64_t *w = buf;
    size_t n = len / 8;
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    if (len <= 256) {
        for (size_t i = 0; i < n; i++)
            h = (h ^ w[i]) * 0x100000001b3ULL;
    } else {
        for (size_t i = 0; i < n; i += 8)
            h = (h ^ w[i]) * 0x100000001b3ULL;
        h = (h ^ w[n - 1]) * 0x100000001b3ULL;
    }
    return mix(h);
}

unsigned bn_topic_index(const void *buf)
{
    return (unsigned)((const uint64_t *)buf)[1];
}

/* ---- sinks ------------------------------------------------------------ */

struct slot {
    _Atomic uint64_t count; /* written by the slot's owner only */
    _Atomic uint64_t sum;
    _Atomic uint64_t bad;
    char pad[64 - 3 * sizeof(uint64_t)];
};

struct bn_sink {
    struct slot slot[SLOTS];
    /* Ordered sinks (bn_sink_set_ordered): the next sequence number each
       producer may send. Plain memory: an ordered observer runs one call at
       a time, each after the last (the implementation under test must give
       that happens-before, or this check is the least of its problems). */
    bool ordered;
    alignas(64) uint64_t next[BN_MAX_PRODUCERS];
    _Atomic uint64_t disorder; /* events that came before an earlier one */
};

static _Atomic unsigned run_gen = 1;
static _Atomic unsigned next_slot;
static _Thread_local unsigned my_gen, my_slot;

void bn_sink_new_run(void)
{
    atomic_store_explicit(&next_slot, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&run_gen, 1, memory_order_release);
}

static unsigned thread_slot(void)
{
    /* Relaxed: the generation only changes between runs, while no observer
       runs; the thread that starts the run synchronizes with the consumer
       threads through the peer's own start-up. */
    unsigned g = atomic_load_explicit(&run_gen, memory_order_relaxed);
    if (my_gen != g) {
        my_gen = g;
        my_slot = atomic_fetch_add_explicit(&next_slot, 1, memory_order_relaxed);
        if (my_slot >= SLOTS)
            bn_fatal("more than %d observing threads in one run", SLOTS);
    }
    return my_slot;
}

struct bn_sink *bn_sink_new(void)
{
    struct bn_sink *s = aligned_alloc(64, sizeof(*s));
    if (s == NULL)
        bn_fatal("out of memory");
    memset(s, 0, sizeof(*s));
    return s;
}

void bn_sink_free(struct bn_sink *s)
{
    free(s);
}

void bn_sink_set_ordered(struct bn_sink *s)
{
    s->ordered = true;
}

uint64_t bn_sink_disorder(const struct bn_sink *s)
{
    return atomic_load_explicit(&s->disorder, memory_order_acquire);
}

void bn_observe(struct bn_sink *s, const void *payload, size_t len)
{
    if (s->ordered) {
        /* bn_fill's first word: (producer << 48) ^ seq ^ the constant. */
        uint64_t x = ((const uint64_t *)payload)[0] ^ 0x5bd1e995a5a5a5a5ULL;
        unsigned p = (unsigned)(x >> 48) % BN_MAX_PRODUCERS;
        uint64_t q = x & ((UINT64_C(1) << 48) - 1);
        if (q < s->next[p])
            atomic_fetch_add_explicit(&s->disorder, 1, memory_order_relaxed);
        s->next[p] = q + 1;
    }
    uint64_t h = bn_hash(payload, len);
    struct slot *sl = &s->slot[thread_slot()];
    /* Single writer per slot: load + store, no RMW. Release on count pairs
       with the measuring thread's acquire load in bn_sink_count. */
    uint64_t c = atomic_load_explicit(&sl->count, memory_order_relaxed);
    uint64_t sum = atomic_load_explicit(&sl->sum, memory_order_relaxed);
    atomic_store_explicit(&sl->sum, sum + h, memory_order_relaxed);
    atomic_store_explicit(&sl->count, c + 1, memory_order_release);
}

void bn_sink_bad(struct bn_sink *s)
{
    struct slot *sl = &s->slot[thread_slot()];
    uint64_t b = atomic_load_explicit(&sl->bad, memory_order_relaxed);
    atomic_store_explicit(&sl->bad, b + 1, memory_order_release);
}

/* Slots taken in this run so far (a reader only needs to look at those). */
static unsigned used_slots(void)
{
    unsigned n = atomic_load_explicit(&next_slot, memory_order_acquire);
    return n < SLOTS ? n : SLOTS;
}

uint64_t bn_sink_count(const struct bn_sink *s)
{
    uint64_t t = 0;
    for (unsigned i = 0, n = used_slots(); i < n; i++)
        t += atomic_load_explicit(&s->slot[i].count, memory_order_acquire);
    return t;
}

uint64_t bn_sink_sum(const struct bn_sink *s)
{
    uint64_t t = 0;
    for (unsigned i = 0, n = used_slots(); i < n; i++)
        t += atomic_load_explicit(&s->slot[i].sum, memory_order_acquire);
    return t;
}

uint64_t bn_sink_bad_count(const struct bn_sink *s)
{
    uint64_t t = 0;
    for (unsigned i = 0, n = used_slots(); i < n; i++)
        t += atomic_load_explicit(&s->slot[i].bad, memory_order_acquire);
    return t;
}

/* ---- watchdog ----------------------------------------------------------- */

static void *watchdog_main(void *arg)
{
    struct bn_watchdog *w = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += w->seconds;
    pthread_mutex_lock(&w->lock);
    int rc = 0;
    while (!w->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&w->cond, &w->lock, &until);
    int hung = !w->done;
    pthread_mutex_unlock(&w->lock);
    if (hung)
        bn_fatal("%s: %s: hang: not finished after %d s", w->scenario, w->what, w->seconds);
    return NULL;
}

void bn_watchdog_start(struct bn_watchdog *w, const char *scenario, const char *what, int seconds)
{
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->done = 0;
    w->scenario = scenario;
    w->what = what;
    w->seconds = seconds;
    if (pthread_create(&w->th, NULL, watchdog_main, w) != 0)
        bn_fatal("could not start a watchdog thread");
}

void bn_watchdog_stop(struct bn_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    w->done = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
}
