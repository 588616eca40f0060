/*
 * peer_glib — GLib's GThreadPool and GAsyncQueue, the stock answers of a
 * GLib program. Both carry pointers, so messages come from the
 * per-producer pools (pool.h) rather than a malloc each.
 *
 * GThreadPool: an exclusive pool of cfg.workers threads (default 1: the
 * observers stay serial); g_thread_pool_push per event; the pool function
 * calls every observer.
 * GAsyncQueue: cfg.workers consumer threads (default 1) blocking in
 * g_async_queue_pop; g_async_queue_push per event.
 * Both queues are unbounded; the producer pools bound them.
 */
#include "bench.h"
#include "pool.h"

#include <glib.h>
#include <pthread.h>
#include <stdio.h>

#define MAX_WORKERS 16

static void deliver(struct tp_ctx *ctx, struct pool_msg *m)
{
    for (unsigned k = 0; k < ctx->cfg->observers; k++)
        bn_observe(ctx->sinks[k], m->data, m->len);
    pool_release(m);
}

static void *g_buffer(void *peer, void *pstate, size_t len)
{
    (void)peer;
    struct pool_msg *m = pool_take(pstate);
    m->len = len;
    return m->data;
}

/* ---- GThreadPool -------------------------------------------------------- */

struct gp {
    GThreadPool *pool;
    struct tp_ctx *ctx;
    struct pool pools[BN_MAX_PRODUCERS];
};

static void gp_task(gpointer data, gpointer user)
{
    deliver(user, data);
}

static int gp_create(struct tp_ctx *ctx, void **out, char *err, size_t errlen)
{
    struct gp *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return -1;
    g->ctx = ctx;
    GError *e = NULL;
    g->pool =
        g_thread_pool_new(gp_task, ctx, ctx->cfg->workers ? (gint)ctx->cfg->workers : 1, TRUE, &e);
    if (g->pool == NULL) {
        snprintf(err, errlen, "g_thread_pool_new: %s", e ? e->message : "?");
        g_clear_error(&e);
        free(g);
        return -1;
    }
    for (unsigned i = 0; i < ctx->cfg->producers; i++)
        if (pool_init(&g->pools[i], ctx->cfg->payload_len) != 0)
            bn_fatal("out of memory");
    *out = g;
    return 0;
}

static int gp_producer_init(void *peer, unsigned idx, void **pstate)
{
    struct gp *g = peer;
    *pstate = &g->pools[idx];
    return 0;
}

static int gp_publish(void *peer, void *pstate, const char *topic, void *buf, size_t len, char *err,
                      size_t errlen)
{
    struct gp *g = peer;
    (void)pstate;
    (void)len;
    struct pool_msg *m = pool_of(buf);
    m->topic = topic;
    GError *e = NULL;
    if (!g_thread_pool_push(g->pool, m, &e)) {
        snprintf(err, errlen, "g_thread_pool_push: %s", e ? e->message : "?");
        g_clear_error(&e);
        return -1;
    }
    return 0;
}

static void gp_destroy(void *peer)
{
    struct gp *g = peer;
    g_thread_pool_free(g->pool, FALSE, TRUE);
    for (unsigned i = 0; i < g->ctx->cfg->producers; i++)
        pool_fini(&g->pools[i]);
    free(g);
}

const struct tp_peer tp_glib_pool = {
    .name = "GThreadPool",
    .create = gp_create,
    .producer_init = gp_producer_init,
    .buffer = g_buffer,
    .publish = gp_publish,
    .destroy = gp_destroy,
};

/* ---- GAsyncQueue -------------------------------------------------------- */

static char stop_marker;

struct gq {
    GAsyncQueue *q;
    struct tp_ctx *ctx;
    unsigned nworkers;
    pthread_t workers[MAX_WORKERS];
    struct pool pools[BN_MAX_PRODUCERS];
};

static void *gq_worker(void *arg)
{
    struct gq *g = arg;
    for (;;) {
        void *p = g_async_queue_pop(g->q);
        if (p == &stop_marker)
            break;
        deliver(g->ctx, p);
    }
    return NULL;
}

static int gq_create(struct tp_ctx *ctx, void **out, char *err, size_t errlen)
{
    struct gq *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return -1;
    g->ctx = ctx;
    g->nworkers = ctx->cfg->workers ? ctx->cfg->workers : 1;
    if (g->nworkers > MAX_WORKERS) {
        snprintf(err, errlen, "too many workers");
        free(g);
        return -1;
    }
    g->q = g_async_queue_new();
    for (unsigned i = 0; i < ctx->cfg->producers; i++)
        if (pool_init(&g->pools[i], ctx->cfg->payload_len) != 0)
            bn_fatal("out of memory");
    for (unsigned i = 0; i < g->nworkers; i++)
        if (pthread_create(&g->workers[i], NULL, gq_worker, g) != 0)
            bn_fatal("could not start a worker thread");
    *out = g;
    return 0;
}

static int gq_producer_init(void *peer, unsigned idx, void **pstate)
{
    struct gq *g = peer;
    *pstate = &g->pools[idx];
    return 0;
}

static int gq_publish(void *peer, void *pstate, const char *topic, void *buf, size_t len, char *err,
                      size_t errlen)
{
    struct gq *g = peer;
    (void)pstate;
    (void)len;
    (void)err;
    (void)errlen;
    struct pool_msg *m = pool_of(buf);
    m->topic = topic;
    g_async_queue_push(g->q, m);
    return 0;
}

static void gq_destroy(void *peer)
{
    struct gq *g = peer;
    for (unsigned i = 0; i < g->nworkers; i++)
        g_async_queue_push(g->q, &stop_marker);
    for (unsigned i = 0; i < g->nworkers; i++)
        pthread_join(g->workers[i], NULL);
    g_async_queue_unref(g->q);
    for (unsigned i = 0; i < g->ctx->cfg->producers; i++)
        pool_fini(&g->pools[i]);
    free(g);
}

const struct tp_peer tp_glib_queue = {
    .name = "GAsyncQueue",
    .create = gq_create,
    .producer_init = gq_producer_init,
    .buffer = g_buffer,
    .publish = gq_publish,
    .destroy = gq_destroy,
};
