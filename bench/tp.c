/*
 * tp — the throughput runner: producer threads, phases, clock and check.
 *
 * A run has two phases. Warm-up (untimed) brings every cache, pool and
 * page of the peer to its steady state; the timed phase follows once every
 * warm-up event has been observed. In each phase the producers are released
 * together through a gate (a condition variable: waiting producers must not
 * steal CPU from consumers on a 2-core machine), each publishes its share,
 * and the measuring thread polls the observers' tallies every 500 µs until
 * every observer has seen every event. The timed phase runs from the gate
 * opening to the poll that sees the last delivery (at most 500 µs late,
 * about 0.1% of a full-mode run; polling less often would make that worse,
 * more often would take more CPU from the measured threads). A phase that exceeds cfg.max_ns is cut
 * short: producers stop within 64 events and the rate is computed from what
 * they published (so one pathological peer cannot stall the suite).
 *
 * Check: each observer's count and checksum must equal what the producers
 * published, both when the phase completes and again after the peer has
 * stopped its consumers (so a late duplicate is caught too).
 */
#include "bench.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLL_NS 500000u
/* No new delivery for this long after every producer finished: events were
   lost (the run is FAILED). */
#define LOST_NS (5ull * 1000000000ull)
/* No new delivery at all for this long while producers are still inside a
   publish call: a hang (fatal, the peer cannot be torn down). */
#ifndef HANG_NS
#define HANG_NS (60ull * 1000000000ull)
#endif

struct run {
    const struct tp_peer *peer;
    const struct tp_cfg *cfg;
    void *p;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int phase;                           /* protected by lock: the phase producers may run */
    _Atomic unsigned done;               /* producers that finished the current phase */
    _Atomic int cut;                     /* the phase ran out of time: producers stop early */
    uint64_t count[BN_MAX_PRODUCERS][3]; /* events producer i published per phase,
                                            written by it before `done` (release) */
    _Atomic int failed;                  /* a producer hit an error: err holds it */
    char err[BN_ERR_LEN];                /* written once, by the thread that set failed */
    uint64_t sum[BN_MAX_PRODUCERS];      /* producer i's checksum, written by it */
};

struct prod {
    struct run *r;
    unsigned idx;
    pthread_t th;
};

static void fail(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct run *r, const char *fmt, ...)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&r->failed, &expected, 1))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
}

static void gate_wait(struct run *r, int phase)
{
    pthread_mutex_lock(&r->lock);
    while (r->phase < phase)
        pthread_cond_wait(&r->cond, &r->lock);
    pthread_mutex_unlock(&r->lock);
}

static void gate_open(struct run *r, int phase)
{
    pthread_mutex_lock(&r->lock);
    r->phase = phase;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void *producer_main(void *arg)
{
    struct prod *pr = arg;
    struct run *r = pr->r;
    const struct tp_cfg *cfg = r->cfg;
    void *ps = NULL;
    char err[BN_ERR_LEN] = "";
    uint64_t sum = 0, seq = 0;
    if (r->peer->producer_init != NULL && r->peer->producer_init(r->p, pr->idx, &ps) != 0)
        fail(r, "%s: producer %u could not start", r->peer->name, pr->idx);
    for (int phase = 1; phase <= 2; phase++) {
        gate_wait(r, phase);
        uint64_t n = phase == 1 ? cfg->warm_events : cfg->events, i = 0;
        for (; i < n && !atomic_load_explicit(&r->failed, memory_order_relaxed); i++, seq++) {
            /* Relaxed: `cut` only asks to stop soon; checked every 64 events. */
            if ((i & 63) == 0 && atomic_load_explicit(&r->cut, memory_order_relaxed))
                break;
            unsigned ti = cfg->topics != NULL ? (unsigned)(seq % cfg->ntopics) : 0;
            const char *topic = cfg->topics != NULL ? cfg->topics[ti] : BN_TOPIC;
            void *buf = r->peer->buffer(r->p, ps, cfg->payload_len);
            sum += bn_fill(buf, cfg->payload_len, pr->idx, seq, ti);
            if (r->peer->publish(r->p, ps, topic, buf, cfg->payload_len, err, sizeof(err)) != 0) {
                fail(r, "%s: publish failed: %s", r->peer->name, err);
                break;
            }
        }
        if (r->peer->flush != NULL && !atomic_load_explicit(&r->failed, memory_order_relaxed) &&
            r->peer->flush(r->p, ps, err, sizeof(err)) != 0)
            fail(r, "%s: flush failed: %s", r->peer->name, err);
        r->count[pr->idx][phase] = i;
        r->sum[pr->idx] = sum; /* read after the join or after `done` (release) */
        atomic_fetch_add_explicit(&r->done, 1, memory_order_release);
    }
    if (r->peer->producer_fini != NULL)
        r->peer->producer_fini(r->p, ps);
    return NULL;
}

/* Events all producers published in phases 1..phase. Call once they are done. */
static uint64_t published(const struct run *r, int phase)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < r->cfg->producers; i++)
        for (int p = 1; p <= phase; p++)
            n += r->count[i][p];
    return n;
}

/* Waits until every producer finished the phase and every observer saw
   every event published so far (*want). Returns 0, or -1 with the reason in
   out->err. */
static int wait_phase(struct run *r, struct tp_ctx *ctx, int phase, uint64_t *want_out,
                      struct tp_out *out)
{
    const struct tp_cfg *cfg = r->cfg;
    uint64_t start = bn_now_ns(), last_change = start, last_total = 0;
    for (;;) {
        if (atomic_load_explicit(&r->failed, memory_order_acquire)) {
            snprintf(out->err, sizeof(out->err), "%s", r->err);
            return -1;
        }
        uint64_t now = bn_now_ns();
        if (cfg->max_ns != 0 && now - start > cfg->max_ns)
            atomic_store_explicit(&r->cut, 1, memory_order_relaxed);
        int all_done = atomic_load_explicit(&r->done, memory_order_acquire) == cfg->producers;
        uint64_t want = all_done ? published(r, phase) : 0, total = 0;
        int complete = all_done;
        for (unsigned k = 0; k < cfg->observers; k++) {
            uint64_t c = bn_sink_count(ctx->sinks[k]);
            total += c;
            if (all_done && c > want) {
                snprintf(out->err, sizeof(out->err),
                         "%s: observer %u saw %llu deliveries, %llu were published (duplicates)",
                         r->peer->name, k, (unsigned long long)c, (unsigned long long)want);
                return -1;
            }
            if (c != want)
                complete = 0;
        }
        *want_out = want;
        if (complete)
            return 0;
        if (total != last_total) {
            last_total = total;
            last_change = now;
        }
        if (all_done && now - last_change > LOST_NS) {
            for (unsigned k = 0; k < cfg->observers; k++) {
                uint64_t c = bn_sink_count(ctx->sinks[k]);
                if (c != want) {
                    snprintf(out->err, sizeof(out->err),
                             "%s: lost events: observer %u saw %llu of %llu, and nothing more "
                             "for %llu s after the producers finished",
                             r->peer->name, k, (unsigned long long)c, (unsigned long long)want,
                             LOST_NS / 1000000000ull);
                    break;
                }
            }
            return -1;
        }
        if (now - last_change > HANG_NS)
            bn_fatal("%s: hang: no delivery for %llu s while %u of %u producers are still "
                     "publishing (phase %d, %llu deliveries so far)",
                     r->peer->name, HANG_NS / 1000000000ull, cfg->producers - atomic_load(&r->done),
                     cfg->producers, phase, (unsigned long long)total);
        bn_sleep_ns(POLL_NS);
    }
}

static int check_sinks(struct run *r, struct tp_ctx *ctx, uint64_t want, struct tp_out *out,
                       const char *when)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < r->cfg->producers; i++)
        sum += r->sum[i];
    for (unsigned k = 0; k < r->cfg->observers; k++) {
        uint64_t c = bn_sink_count(ctx->sinks[k]);
        uint64_t s = bn_sink_sum(ctx->sinks[k]);
        uint64_t bad = bn_sink_bad_count(ctx->sinks[k]);
        uint64_t dis = bn_sink_disorder(ctx->sinks[k]);
        if (c != want || s != sum || bad != 0 || dis != 0) {
            snprintf(out->err, sizeof(out->err),
                     "%s: %s: observer %u saw %llu of %llu events, checksum %s, %llu wrong "
                     "deliveries, %llu out of their producer's order",
                     r->peer->name, when, k, (unsigned long long)c, (unsigned long long)want,
                     s == sum ? "ok" : "MISMATCH", (unsigned long long)bad,
                     (unsigned long long)dis);
            return -1;
        }
    }
    return 0;
}

void tp_run(const struct tp_peer *peer, const struct tp_cfg *cfg, struct tp_out *out)
{
    memset(out, 0, sizeof(*out));
    if (cfg->producers == 0 || cfg->producers > BN_MAX_PRODUCERS || cfg->observers == 0 ||
        cfg->observers > BN_MAX_OBSERVERS || cfg->payload_len < 16 || cfg->payload_len % 8 ||
        (cfg->topics != NULL && cfg->ntopics == 0)) {
        snprintf(out->err, sizeof(out->err), "%s: bad configuration", peer->name);
        return;
    }
    struct tp_ctx ctx = {.cfg = cfg};
    bn_sink_new_run();
    for (unsigned k = 0; k < cfg->observers; k++) {
        ctx.sinks[k] = bn_sink_new();
        if (!cfg->concurrent)
            bn_sink_set_ordered(ctx.sinks[k]);
    }
    struct run *r = calloc(1, sizeof(*r));
    struct prod *pr = calloc(cfg->producers, sizeof(*pr));
    if (r == NULL || pr == NULL)
        bn_fatal("out of memory");
    r->peer = peer;
    r->cfg = cfg;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);

    char err[BN_ERR_LEN] = "";
    if (peer->create(&ctx, &r->p, err, sizeof(err)) != 0) {
        snprintf(out->err, sizeof(out->err), "%s: could not start: %s", peer->name, err);
        goto free_all;
    }
    unsigned started = 0;
    for (; started < cfg->producers; started++) {
        pr[started].r = r;
        pr[started].idx = started;
        if (pthread_create(&pr[started].th, NULL, producer_main, &pr[started]) != 0) {
            fail(r, "%s: could not start producer thread", peer->name);
            break;
        }
    }
    int rc = 0;
    uint64_t want = 0;
    if (started == cfg->producers) {
        /* Warm-up. */
        gate_open(r, 1);
        rc = wait_phase(r, &ctx, 1, &want, out);
        /* Timed phase. */
        if (rc == 0) {
            atomic_store_explicit(&r->done, 0, memory_order_relaxed);
            atomic_store_explicit(&r->cut, 0, memory_order_relaxed);
            uint64_t warm = want;
            if (cfg->count_allocs)
                bn_alloc_count_start();
            uint64_t t0 = bn_now_ns();
            gate_open(r, 2);
            rc = wait_phase(r, &ctx, 2, &want, out);
            uint64_t t1 = bn_now_ns();
            if (cfg->count_allocs)
                bn_alloc_count_stop(&out->allocs);
            out->seconds = (double)(t1 - t0) / 1e9;
            out->events = want - warm;
            out->cut = out->events < cfg->events * cfg->producers;
            out->events_per_s = (double)out->events / out->seconds;
            out->deliveries_per_s = out->events_per_s * cfg->observers;
            if (rc == 0)
                rc = check_sinks(r, &ctx, want, out, "at the end of the run");
        }
    } else {
        rc = -1;
        snprintf(out->err, sizeof(out->err), "%s", r->err);
    }
    if (rc != 0) {
        /* Let the producers leave: fail() stops their loops; open both gates. */
        fail(r, "%s", out->err);
        gate_open(r, 2);
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(pr[i].th, NULL);
    peer->destroy(r->p);
    if (rc == 0)
        rc = check_sinks(r, &ctx, want, out, "after the consumers stopped");
    out->ok = rc == 0;
free_all:
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    for (unsigned k = 0; k < cfg->observers; k++)
        bn_sink_free(ctx.sinks[k]);
    free(pr);
    free(r);
}
