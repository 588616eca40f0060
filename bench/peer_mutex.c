/*
 * peer_mutex — what people write by hand: a bounded queue under one
 * pthread mutex with two condition variables, feeding worker threads that
 * call every observer.
 *
 * Throughput: messages are stored by value (topic pointer + payload bytes)
 * in a ring of 4096 slots (the size of eventbus's intake ring). A producer
 * copies its message in under the lock and signals a consumer only if one
 * sleeps; a worker copies the message out under the lock and calls the
 * observers outside it. One worker (cfg.workers 0/1) keeps each observer
 * serial, like a SERIAL subscription; more workers call the observers
 * concurrently, like CONCURRENT ones.
 *
 * Round trip: the requester queues a request, signals the worker and sleeps
 * on its own condition variable until the worker has handled it.
 */
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAPACITY 4096
#define MAX_WORKERS 16

struct mq {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    unsigned head, count;      /* protected by lock */
    unsigned sleep_c, sleep_p; /* consumers / producers waiting; protected by lock */
    int stop;                  /* protected by lock */
    size_t len, slot;          /* payload bytes, slot bytes */
    unsigned char *ring;       /* CAPACITY slots: topic pointer, then payload */
    struct tp_ctx *ctx;
    unsigned nworkers;
    pthread_t workers[MAX_WORKERS];
};

static void *mq_worker(void *arg)
{
    struct mq *q = arg;
    const struct tp_cfg *cfg = q->ctx->cfg;
    unsigned char *msg = aligned_alloc(64, q->slot);
    if (msg == NULL)
        bn_fatal("out of memory");
    for (;;) {
        pthread_mutex_lock(&q->lock);
        while (q->count == 0 && !q->stop) {
            q->sleep_c++;
            pthread_cond_wait(&q->not_empty, &q->lock);
            q->sleep_c--;
        }
        if (q->count == 0) {
            pthread_mutex_unlock(&q->lock);
            break;
        }
        memcpy(msg, q->ring + (size_t)q->head * q->slot, q->slot);
        q->head = (q->head + 1) % CAPACITY;
        q->count--;
        if (q->sleep_p > 0)
            pthread_cond_signal(&q->not_full);
        pthread_mutex_unlock(&q->lock);
        for (unsigned k = 0; k < cfg->observers; k++)
            bn_observe(q->ctx->sinks[k], msg + 64, q->len);
    }
    free(msg);
    return NULL;
}

static int mq_create(struct tp_ctx *ctx, void **out, char *err, size_t errlen)
{
    struct mq *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return -1;
    q->ctx = ctx;
    q->len = ctx->cfg->payload_len;
    q->slot = 64 + ((q->len + 63) / 64) * 64; /* one line for the topic, payload aligned */
    q->ring = aligned_alloc(64, q->slot * CAPACITY);
    q->nworkers = ctx->cfg->workers ? ctx->cfg->workers : 1;
    if (q->ring == NULL || q->nworkers > MAX_WORKERS) {
        snprintf(err, errlen, "bad worker count or out of memory");
        free(q->ring);
        free(q);
        return -1;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    for (unsigned i = 0; i < q->nworkers; i++)
        if (pthread_create(&q->workers[i], NULL, mq_worker, q) != 0)
            bn_fatal("could not start a worker thread");
    *out = q;
    return 0;
}

static int mq_producer_init(void *peer, unsigned idx, void **pstate)
{
    struct mq *q = peer;
    (void)idx;
    *pstate = aligned_alloc(64, q->slot);
    return *pstate == NULL ? -1 : 0;
}

static void *mq_buffer(void *peer, void *pstate, size_t len)
{
    (void)peer;
    (void)len;
    return pstate;
}

static int mq_publish(void *peer, void *pstate, const char *topic, void *buf, size_t len, char *err,
                      size_t errlen)
{
    struct mq *q = peer;
    (void)pstate;
    (void)err;
    (void)errlen;
    pthread_mutex_lock(&q->lock);
    while (q->count == CAPACITY) {
        q->sleep_p++;
        pthread_cond_wait(&q->not_full, &q->lock);
        q->sleep_p--;
    }
    unsigned char *s = q->ring + (size_t)((q->head + q->count) % CAPACITY) * q->slot;
    memcpy(s, &topic, sizeof(topic));
    memcpy(s + 64, buf, len);
    q->count++;
    if (q->sleep_c > 0)
        pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

static void mq_producer_fini(void *peer, void *pstate)
{
    (void)peer;
    free(pstate);
}

static void mq_destroy(void *peer)
{
    struct mq *q = peer;
    pthread_mutex_lock(&q->lock);
    q->stop = 1;
    pthread_cond_broadcast(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->nworkers; i++)
        pthread_join(q->workers[i], NULL);
    pthread_cond_destroy(&q->not_full);
    pthread_cond_destroy(&q->not_empty);
    pthread_mutex_destroy(&q->lock);
    free(q->ring);
    free(q);
}

const struct tp_peer tp_mutex = {
    .name = "mutex+condvar",
    .create = mq_create,
    .producer_init = mq_producer_init,
    .buffer = mq_buffer,
    .publish = mq_publish,
    .producer_fini = mq_producer_fini,
    .destroy = mq_destroy,
};

/* ---- round trip --------------------------------------------------------- */

#define RT_QUEUE 16

struct rreq {
    pthread_cond_t done_cond;
    int done; /* protected by the peer's lock */
    unsigned char msg[BN_PAYLOAD];
};

struct rq {
    pthread_mutex_t lock;
    pthread_cond_t work;
    struct rreq *q[RT_QUEUE]; /* protected by lock */
    unsigned head, count;
    int stop;
    struct bn_sink *sink;
    pthread_t worker;
};

static void *rq_worker(void *arg)
{
    struct rq *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (r->count == 0 && !r->stop)
            pthread_cond_wait(&r->work, &r->lock);
        if (r->count == 0)
            break;
        struct rreq *q = r->q[r->head];
        r->head = (r->head + 1) % RT_QUEUE;
        r->count--;
        pthread_mutex_unlock(&r->lock);
        bn_observe(r->sink, q->msg, sizeof(q->msg));
        pthread_mutex_lock(&r->lock);
        q->done = 1;
        pthread_cond_signal(&q->done_cond);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static int rq_create(struct rt_ctx *ctx, void **out, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct rq *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->sink = ctx->sink;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->work, NULL);
    if (pthread_create(&r->worker, NULL, rq_worker, r) != 0)
        bn_fatal("could not start a worker thread");
    *out = r;
    return 0;
}

static int rq_requester_init(void *peer, unsigned idx, void **rstate)
{
    (void)peer;
    (void)idx;
    struct rreq *q = aligned_alloc(64, ((sizeof(struct rreq) + 63) / 64) * 64);
    if (q == NULL)
        return -1;
    pthread_cond_init(&q->done_cond, NULL);
    *rstate = q;
    return 0;
}

static int rq_request(void *peer, void *rstate, const void *buf, size_t len, char *err,
                      size_t errlen)
{
    struct rq *r = peer;
    struct rreq *q = rstate;
    (void)err;
    (void)errlen;
    memcpy(q->msg, buf, len);
    pthread_mutex_lock(&r->lock);
    q->done = 0;
    r->q[(r->head + r->count) % RT_QUEUE] = q;
    r->count++;
    pthread_cond_signal(&r->work);
    while (!q->done)
        pthread_cond_wait(&q->done_cond, &r->lock);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static void rq_requester_fini(void *peer, void *rstate)
{
    (void)peer;
    struct rreq *q = rstate;
    pthread_cond_destroy(&q->done_cond);
    free(q);
}

static void rq_destroy(void *peer)
{
    struct rq *r = peer;
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->worker, NULL);
    pthread_cond_destroy(&r->work);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

const struct rt_peer rt_mutex = {
    .name = "mutex+condvar",
    .max_requesters = RT_QUEUE,
    .create = rq_create,
    .requester_init = rq_requester_init,
    .request = rq_request,
    .requester_fini = rq_requester_fini,
    .destroy = rq_destroy,
};
