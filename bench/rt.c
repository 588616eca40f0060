/*
 * rt — the round-trip runner: publish one event, wait until it is handled.
 *
 * Each requester thread does `warm` untimed round trips, then `requests`
 * timed ones, reading CLOCK_MONOTONIC before and after each (the same
 * ~20 ns clock cost for every peer). Requesters start together behind a
 * barrier. With cfg.max_ns a requester stops early when its time is up (the
 * percentiles then come from the round trips it did). The latencies of all requesters are pooled
 * and sorted for the percentiles. The observer's count and checksum are checked at the end.
 */
#include "bench.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rt_run {
    const struct rt_peer *peer;
    const struct rt_cfg *cfg;
    void *p;
    pthread_barrier_t start;
    uint64_t *lat; /* requesters * requests latencies, ns */
    uint64_t sum[BN_MAX_PRODUCERS];
    uint64_t done[BN_MAX_PRODUCERS]; /* round trips, all / timed, per requester */
    uint64_t timed[BN_MAX_PRODUCERS];
    _Atomic int failed;
    char err[BN_ERR_LEN];
};

struct requester {
    struct rt_run *r;
    unsigned idx;
    pthread_t th;
};

static void *requester_main(void *arg)
{
    struct requester *q = arg;
    struct rt_run *r = q->r;
    const struct rt_cfg *cfg = r->cfg;
    void *rs = NULL;
    char err[BN_ERR_LEN] = "";
    uint64_t buf[BN_PAYLOAD / 8];
    uint64_t sum = 0;
    int ok = r->peer->requester_init == NULL || r->peer->requester_init(r->p, q->idx, &rs) == 0;
    pthread_barrier_wait(&r->start);
    uint64_t total = cfg->warm + cfg->requests, i = 0, timed = 0;
    uint64_t deadline = cfg->max_ns ? bn_now_ns() + cfg->max_ns : UINT64_MAX;
    for (; ok && i < total; i++) {
        if (atomic_load_explicit(&r->failed, memory_order_relaxed))
            break;
        if (i % 64 == 0 && bn_now_ns() > deadline)
            break;
        sum += bn_fill(buf, sizeof(buf), q->idx, i, 0);
        uint64_t t0 = bn_now_ns();
        if (r->peer->request(r->p, rs, buf, sizeof(buf), err, sizeof(err)) != 0) {
            ok = 0;
            break;
        }
        uint64_t t1 = bn_now_ns();
        if (i >= cfg->warm)
            r->lat[q->idx * cfg->requests + timed++] = t1 - t0;
    }
    r->done[q->idx] = i;
    r->timed[q->idx] = timed;
    if (!ok) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&r->failed, &expected, 1))
            snprintf(r->err, sizeof(r->err), "%s: request failed: %s", r->peer->name,
                     err[0] ? err : "requester could not start");
    }
    r->sum[q->idx] = sum;
    if (r->peer->requester_fini != NULL)
        r->peer->requester_fini(r->p, rs);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, size_t n, double q)
{
    /* Nearest rank. */
    size_t i = (size_t)(q * (double)n);
    if (i >= n)
        i = n - 1;
    return (double)v[i];
}

void rt_run(const struct rt_peer *peer, const struct rt_cfg *cfg, struct rt_out *out)
{
    memset(out, 0, sizeof(*out));
    if (cfg->requesters == 0 || cfg->requesters > peer->max_requesters || cfg->requests == 0) {
        snprintf(out->err, sizeof(out->err), "%s: bad configuration", peer->name);
        return;
    }
    struct rt_ctx ctx = {.cfg = cfg};
    bn_sink_new_run();
    ctx.sink = bn_sink_new();
    struct rt_run *r = calloc(1, sizeof(*r));
    struct requester *q = calloc(cfg->requesters, sizeof(*q));
    size_t n = (size_t)cfg->requesters * cfg->requests;
    if (r == NULL || q == NULL || (r->lat = malloc(n * sizeof(uint64_t))) == NULL)
        bn_fatal("out of memory");
    r->peer = peer;
    r->cfg = cfg;
    char err[BN_ERR_LEN] = "";
    if (peer->create(&ctx, &r->p, err, sizeof(err)) != 0) {
        snprintf(out->err, sizeof(out->err), "%s: could not start: %s", peer->name, err);
        goto free_all;
    }
    pthread_barrier_init(&r->start, NULL, cfg->requesters);
    /* A request (or a teardown) that never comes back would hold the suite
       up for good: past the time limit and a minute more, the run is a
       hang. */
    struct bn_watchdog wd;
    bn_watchdog_start(&wd, "round trip", peer->name,
                      60 + (int)((cfg->max_ns ? cfg->max_ns : 600000000000ull) / 1000000000ull));
    for (unsigned i = 0; i < cfg->requesters; i++) {
        q[i].r = r;
        q[i].idx = i;
        if (pthread_create(&q[i].th, NULL, requester_main, &q[i]) != 0)
            bn_fatal("could not start a requester thread");
    }
    for (unsigned i = 0; i < cfg->requesters; i++)
        pthread_join(q[i].th, NULL);
    pthread_barrier_destroy(&r->start);
    peer->destroy(r->p);
    bn_watchdog_stop(&wd);
    if (atomic_load(&r->failed)) {
        snprintf(out->err, sizeof(out->err), "%s", r->err);
        goto free_all;
    }
    uint64_t want = 0, sum = 0;
    for (unsigned i = 0; i < cfg->requesters; i++) {
        want += r->done[i];
        sum += r->sum[i];
    }
    /* Pool the timed latencies of all requesters at the front of lat[]. */
    n = 0;
    for (unsigned i = 0; i < cfg->requesters; i++) {
        memmove(r->lat + n, r->lat + (size_t)i * cfg->requests, r->timed[i] * sizeof(uint64_t));
        n += r->timed[i];
    }
    if (n == 0) {
        snprintf(out->err, sizeof(out->err), "%s: no timed round trip within the time limit",
                 peer->name);
        goto free_all;
    }
    uint64_t c = bn_sink_count(ctx.sink), s = bn_sink_sum(ctx.sink);
    if (c != want || s != sum || bn_sink_bad_count(ctx.sink) != 0) {
        snprintf(out->err, sizeof(out->err),
                 "%s: observer saw %llu of %llu events, checksum %s, %llu wrong deliveries",
                 peer->name, (unsigned long long)c, (unsigned long long)want,
                 s == sum ? "ok" : "MISMATCH", (unsigned long long)bn_sink_bad_count(ctx.sink));
        goto free_all;
    }
    qsort(r->lat, n, sizeof(uint64_t), cmp_u64);
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += (double)r->lat[i];
    out->p50_ns = pct(r->lat, n, 0.50);
    out->p99_ns = pct(r->lat, n, 0.99);
    out->p999_ns = pct(r->lat, n, 0.999);
    out->max_ns = (double)r->lat[n - 1];
    out->mean_ns = total / (double)n;
    out->samples = n;
    for (unsigned i = 0; i < cfg->requesters; i++)
        out->cut |= r->timed[i] < cfg->requests;
    out->ok = 1;
free_all:
    bn_sink_free(ctx.sink);
    free(r->lat);
    free(q);
    free(r);
}
