/*
 * peer_zmq — ZeroMQ over inproc://, the two patterns a ZeroMQ user picks.
 *
 * PUSH/PULL: each producer has a PUSH socket connected to every consumer's
 * PULL socket (cfg.workers consumers, default 1; PUSH round-robins); the
 * frame is the 64-byte payload (PUSH/PULL does not route). Each consumer
 * calls every observer.
 * PUB/SUB: one SUB socket and thread per observer, subscribed to BN_TOPIC;
 * each producer's PUB socket connects to all of them. The frame is the
 * topic, NUL-padded to 24 bytes, then the payload (SUB filters on the
 * prefix). ZMQ_XPUB_NODROP makes a full subscriber pipe block the publisher
 * instead of dropping, so every event arrives; a producer first sends
 * "sync" probes until every subscriber has seen one (PUB drops messages
 * until a subscription has reached it).
 *
 * High-water marks are 4096 messages, the size of eventbus's intake.
 * Sockets are created and bound on the creating thread and handed to the
 * consumer threads (thread creation is the full barrier ZeroMQ asks for).
 * Teardown: zmq_ctx_shutdown makes the blocked receives return ETERM.
 */
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define HWM 4096
#define TOPIC_FRAME 24
#define SYNC_TOPIC "sync"
#define MAX_CONSUMERS BN_MAX_OBSERVERS

static _Atomic unsigned endpoint_seq;

struct zc;

struct zconsumer {
    struct zc *z;
    unsigned idx;
    void *sock;
    pthread_t th;
};

struct zprod {
    void *sock;
    alignas(64) unsigned char buf[TOPIC_FRAME + 4096];
};

struct zc {
    void *ctx;
    int pubsub;
    struct tp_ctx *tctx;
    unsigned nconsumers;
    char endpoint[MAX_CONSUMERS][64];
    struct zconsumer cons[MAX_CONSUMERS];
    _Atomic int synced[BN_MAX_PRODUCERS][MAX_CONSUMERS]; /* pub/sub start-up */
};

static void *z_consumer(void *arg)
{
    struct zconsumer *c = arg;
    struct zc *z = c->z;
    const struct tp_cfg *cfg = z->tctx->cfg;
    zmq_msg_t msg;
    for (;;) {
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, c->sock, 0) < 0) {
            zmq_msg_close(&msg);
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is shutting down */
        }
        const unsigned char *d = zmq_msg_data(&msg);
        size_t n = zmq_msg_size(&msg);
        if (!z->pubsub) {
            for (unsigned k = 0; k < cfg->observers; k++)
                bn_observe(z->tctx->sinks[k], d, n);
        } else if (n == TOPIC_FRAME + 4 && memcmp(d, SYNC_TOPIC, 5) == 0) {
            unsigned p;
            memcpy(&p, d + TOPIC_FRAME, sizeof(p));
            if (p < BN_MAX_PRODUCERS)
                atomic_store(&z->synced[p][c->idx], 1);
        } else if (n >= TOPIC_FRAME && memcmp(d, BN_TOPIC, sizeof(BN_TOPIC)) == 0) {
            bn_observe(z->tctx->sinks[c->idx], d + TOPIC_FRAME, n - TOPIC_FRAME);
        } else {
            bn_sink_bad(z->tctx->sinks[c->idx]);
        }
        zmq_msg_close(&msg);
    }
    int linger = 0;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_close(c->sock);
    return NULL;
}

static int z_create(struct tp_ctx *tctx, void **out, char *err, size_t errlen, int pubsub)
{
    const struct tp_cfg *cfg = tctx->cfg;
    struct zc *z = calloc(1, sizeof(*z));
    if (z == NULL)
        return -1;
    z->tctx = tctx;
    z->pubsub = pubsub;
    z->nconsumers = pubsub ? cfg->observers : (cfg->workers ? cfg->workers : 1);
    if (z->nconsumers > MAX_CONSUMERS) {
        snprintf(err, errlen, "too many consumers");
        free(z);
        return -1;
    }
    z->ctx = zmq_ctx_new();
    if (z->ctx == NULL) {
        snprintf(err, errlen, "zmq_ctx_new: %s", zmq_strerror(errno));
        free(z);
        return -1;
    }
    unsigned run = atomic_fetch_add(&endpoint_seq, 1);
    for (unsigned i = 0; i < z->nconsumers; i++) {
        struct zconsumer *c = &z->cons[i];
        c->z = z;
        c->idx = i;
        c->sock = zmq_socket(z->ctx, pubsub ? ZMQ_SUB : ZMQ_PULL);
        int hwm = HWM;
        zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
        if (pubsub) {
            zmq_setsockopt(c->sock, ZMQ_SUBSCRIBE, BN_TOPIC, strlen(BN_TOPIC));
            zmq_setsockopt(c->sock, ZMQ_SUBSCRIBE, SYNC_TOPIC, strlen(SYNC_TOPIC));
        }
        snprintf(z->endpoint[i], sizeof(z->endpoint[i]), "inproc://bench-%s-%u-%u",
                 pubsub ? "ps" : "pp", run, i);
        if (zmq_bind(c->sock, z->endpoint[i]) != 0) {
            snprintf(err, errlen, "zmq_bind: %s", zmq_strerror(errno));
            bn_fatal("%s", err);
        }
    }
    for (unsigned i = 0; i < z->nconsumers; i++)
        if (pthread_create(&z->cons[i].th, NULL, z_consumer, &z->cons[i]) != 0)
            bn_fatal("could not start a consumer thread");
    *out = z;
    return 0;
}

static int zpp_create(struct tp_ctx *tctx, void **out, char *err, size_t errlen)
{
    return z_create(tctx, out, err, errlen, 0);
}

static int zps_create(struct tp_ctx *tctx, void **out, char *err, size_t errlen)
{
    return z_create(tctx, out, err, errlen, 1);
}

static int z_producer_init(void *peer, unsigned idx, void **pstate)
{
    struct zc *z = peer;
    struct zprod *p = aligned_alloc(64, sizeof(struct zprod));
    if (p == NULL)
        return -1;
    memset(p, 0, sizeof(*p));
    p->sock = zmq_socket(z->ctx, z->pubsub ? ZMQ_PUB : ZMQ_PUSH);
    int hwm = HWM, one = 1;
    zmq_setsockopt(p->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    if (z->pubsub)
        zmq_setsockopt(p->sock, ZMQ_XPUB_NODROP, &one, sizeof(one));
    *pstate = p;
    for (unsigned i = 0; i < z->nconsumers; i++)
        if (zmq_connect(p->sock, z->endpoint[i]) != 0)
            return -1;
    if (!z->pubsub)
        return 0;
    /* Probe until every subscriber has seen this publisher. */
    unsigned char probe[TOPIC_FRAME + 4] = SYNC_TOPIC;
    memcpy(probe + TOPIC_FRAME, &idx, sizeof(idx));
    uint64_t deadline = bn_now_ns() + 10000000000ull;
    for (;;) {
        int all = 1;
        for (unsigned i = 0; i < z->nconsumers; i++)
            all &= atomic_load(&z->synced[idx][i]);
        if (all)
            return 0;
        if (bn_now_ns() > deadline)
            return -1;
        zmq_send(p->sock, probe, sizeof(probe), ZMQ_DONTWAIT);
        bn_sleep_ns(100000);
    }
}

static void *z_buffer(void *peer, void *pstate, size_t len)
{
    struct zc *z = peer;
    struct zprod *p = pstate;
    (void)len;
    return z->pubsub ? p->buf + TOPIC_FRAME : p->buf;
}

static int z_publish(void *peer, void *pstate, const char *topic, void *buf, size_t len, char *err,
                     size_t errlen)
{
    struct zc *z = peer;
    struct zprod *p = pstate;
    (void)buf;
    size_t n = len;
    if (z->pubsub) {
        /* The payload was built right behind the topic frame. */
        size_t tl = strlen(topic);
        memcpy(p->buf, topic, tl);
        memset(p->buf + tl, 0, TOPIC_FRAME - tl);
        n += TOPIC_FRAME;
    }
    unsigned spins = 0;
    while (zmq_send(p->sock, p->buf, n, 0) < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            snprintf(err, errlen, "zmq_send: %s", zmq_strerror(errno));
            return -1;
        }
        bn_backoff(&spins);
    }
    return 0;
}

static void z_producer_fini(void *peer, void *pstate)
{
    (void)peer;
    struct zprod *p = pstate;
    if (p == NULL)
        return;
    /* Every message was received before the run ended: nothing to linger for. */
    int linger = 0;
    zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_close(p->sock);
    free(p);
}

static void z_destroy(void *peer)
{
    struct zc *z = peer;
    zmq_ctx_shutdown(z->ctx);
    for (unsigned i = 0; i < z->nconsumers; i++)
        pthread_join(z->cons[i].th, NULL);
    zmq_ctx_term(z->ctx);
    free(z);
}

const struct tp_peer tp_zmq_pushpull = {
    .name = "ZeroMQ PUSH/PULL",
    .create = zpp_create,
    .producer_init = z_producer_init,
    .buffer = z_buffer,
    .publish = z_publish,
    .producer_fini = z_producer_fini,
    .destroy = z_destroy,
};

const struct tp_peer tp_zmq_pubsub = {
    .name = "ZeroMQ PUB/SUB",
    .create = zps_create,
    .producer_init = z_producer_init,
    .buffer = z_buffer,
    .publish = z_publish,
    .producer_fini = z_producer_fini,
    .destroy = z_destroy,
};
