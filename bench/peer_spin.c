/*
 * peer_spin — the round-trip floor: two threads that spin on shared
 * words. The requester copies the payload into a shared buffer and bumps
 * `req` (release); the responder spins until it sees the new value
 * (acquire), hands the payload to the observer and stores `ack` (release);
 * the requester spins on `ack`. Two cache-line transfers each way is the
 * least any cross-thread hand-off with an answer can cost.
 *
 * Both spin with a pause, and yield only after long waits (so an
 * oversubscribed machine still makes progress; this does not touch the
 * median).
 */
#include "bench.h"

#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct spin {
    alignas(64) _Atomic uint64_t req;
    alignas(64) _Atomic uint64_t ack;
    alignas(64) unsigned char msg[BN_PAYLOAD];
    alignas(64) _Atomic int stop;
    uint64_t seq; /* requester only */
    struct bn_sink *sink;
    pthread_t th;
};

/* Spins with a pause; yields after ~4000 pauses (~100 us on this CPU). */
static void spin_pause(unsigned *n)
{
    if (++*n < 4000) {
        bn_cpu_relax();
    } else {
        *n = 0;
        sched_yield();
    }
}

static void *responder(void *arg)
{
    struct spin *s = arg;
    uint64_t last = 0;
    for (;;) {
        unsigned n = 0;
        uint64_t r;
        while ((r = atomic_load_explicit(&s->req, memory_order_acquire)) == last) {
            if (atomic_load_explicit(&s->stop, memory_order_relaxed))
                return NULL;
            spin_pause(&n);
        }
        last = r;
        bn_observe(s->sink, s->msg, sizeof(s->msg));
        atomic_store_explicit(&s->ack, r, memory_order_release);
    }
}

static int spin_create(struct rt_ctx *ctx, void **out, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct spin *s = aligned_alloc(64, sizeof(struct spin));
    if (s == NULL)
        return -1;
    memset(s, 0, sizeof(*s));
    s->sink = ctx->sink;
    if (pthread_create(&s->th, NULL, responder, s) != 0)
        bn_fatal("could not start the responder thread");
    *out = s;
    return 0;
}

static int spin_request(void *peer, void *rstate, const void *buf, size_t len, char *err,
                        size_t errlen)
{
    struct spin *s = peer;
    (void)rstate;
    (void)err;
    (void)errlen;
    memcpy(s->msg, buf, len);
    uint64_t seq = ++s->seq;
    atomic_store_explicit(&s->req, seq, memory_order_release);
    unsigned n = 0;
    while (atomic_load_explicit(&s->ack, memory_order_acquire) != seq)
        spin_pause(&n);
    return 0;
}

static void spin_destroy(void *peer)
{
    struct spin *s = peer;
    atomic_store_explicit(&s->stop, 1, memory_order_relaxed);
    pthread_join(s->th, NULL);
    free(s);
}

const struct rt_peer rt_spin = {
    .name = "spin ping-pong",
    .max_requesters = 1,
    .create = spin_create,
    .request = spin_request,
    .destroy = spin_destroy,
};
