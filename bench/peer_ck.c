/*
 * peer_ck — raw Concurrency Kit ck_ring, MPMC, one event per operation:
 * the floor of eventbus's own building block, and where a naive design
 * ends up. Producers enqueue a pointer to a pool message with
 * ck_ring_enqueue_mpmc; one consumer thread (cfg.workers: more) dequeues
 * with ck_ring_dequeue_mpmc and calls every observer. Full and empty are
 * handled by spinning with backoff (there is nothing to sleep on). The ring
 * has 8192 slots, the size eventbus rounds its 4096-event intake to.
 */
#include "bench.h"
#include "pool.h"

#include <ck_ring.h>
#include <pthread.h>
#include <stdio.h>

#define RING_SIZE 8192
#define MAX_WORKERS 16

struct ckp {
    alignas(64) ck_ring_t ring;
    ck_ring_buffer_t *buf;
    alignas(64) _Atomic int stop;
    struct tp_ctx *ctx;
    unsigned nworkers;
    pthread_t workers[MAX_WORKERS];
    struct pool pools[BN_MAX_PRODUCERS];
};

static void *ck_worker(void *arg)
{
    struct ckp *c = arg;
    const struct tp_cfg *cfg = c->ctx->cfg;
    unsigned spins = 0;
    for (;;) {
        void *p;
        if (ck_ring_dequeue_mpmc(&c->ring, c->buf, &p)) {
            struct pool_msg *m = p;
            for (unsigned k = 0; k < cfg->observers; k++)
                bn_observe(c->ctx->sinks[k], m->data, m->len);
            pool_release(m);
            spins = 0;
        } else if (atomic_load_explicit(&c->stop, memory_order_acquire)) {
            break;
        } else {
            bn_backoff(&spins);
        }
    }
    return NULL;
}

static int ck_create(struct tp_ctx *ctx, void **out, char *err, size_t errlen)
{
    struct ckp *c = aligned_alloc(64, sizeof(struct ckp));
    if (c == NULL)
        return -1;
    memset(c, 0, sizeof(*c));
    c->ctx = ctx;
    c->nworkers = ctx->cfg->workers ? ctx->cfg->workers : 1;
    c->buf = aligned_alloc(64, RING_SIZE * sizeof(ck_ring_buffer_t));
    if (c->buf == NULL || c->nworkers > MAX_WORKERS) {
        snprintf(err, errlen, "bad worker count or out of memory");
        free(c->buf);
        free(c);
        return -1;
    }
    ck_ring_init(&c->ring, RING_SIZE);
    for (unsigned i = 0; i < ctx->cfg->producers; i++)
        if (pool_init(&c->pools[i], ctx->cfg->payload_len) != 0)
            bn_fatal("out of memory");
    for (unsigned i = 0; i < c->nworkers; i++)
        if (pthread_create(&c->workers[i], NULL, ck_worker, c) != 0)
            bn_fatal("could not start a worker thread");
    *out = c;
    return 0;
}

static int ck_producer_init(void *peer, unsigned idx, void **pstate)
{
    struct ckp *c = peer;
    *pstate = &c->pools[idx];
    return 0;
}

static void *ck_buffer(void *peer, void *pstate, size_t len)
{
    (void)peer;
    struct pool_msg *m = pool_take(pstate);
    m->len = len;
    return m->data;
}

static int ck_publish(void *peer, void *pstate, const char *topic, void *buf, size_t len, char *err,
                      size_t errlen)
{
    struct ckp *c = peer;
    (void)pstate;
    (void)len;
    (void)err;
    (void)errlen;
    struct pool_msg *m = pool_of(buf);
    m->topic = topic;
    unsigned spins = 0;
    while (!ck_ring_enqueue_mpmc(&c->ring, c->buf, m))
        bn_backoff(&spins);
    return 0;
}

static void ck_destroy(void *peer)
{
    struct ckp *c = peer;
    atomic_store_explicit(&c->stop, 1, memory_order_release);
    for (unsigned i = 0; i < c->nworkers; i++)
        pthread_join(c->workers[i], NULL);
    for (unsigned i = 0; i < c->ctx->cfg->producers; i++)
        pool_fini(&c->pools[i]);
    free(c->buf);
    free(c);
}

const struct tp_peer tp_ck_ring = {
    .name = "ck_ring mpmc",
    .create = ck_create,
    .producer_init = ck_producer_init,
    .buffer = ck_buffer,
    .publish = ck_publish,
    .destroy = ck_destroy,
};
