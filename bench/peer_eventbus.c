/*
 * peer_eventbus — eventbus itself, driven through its public API only.
 *
 * Throughput: one bus per run (default configuration: one worker per CPU,
 * 4096-slot intake), `observers` subscriptions of BN_TOPIC, SERIAL or
 * CONCURRENT. A producer publishes with eb_publish (payload copied), or
 * eb_publish_batch (cfg.batch events per call), or eb_publish_wait
 * (cfg.wait), or zero-copy (cfg.zero_copy: the payload lives in a
 * per-producer pool slot that the bus releases through payload_free).
 *
 * Routing: tp_cfg.setup is a bus prepared by bn_eventbus_routing_bus with
 * non-matching subscriptions; the run adds one "bench.hit.*" subscription
 * and removes it afterwards. With tp_cfg.topics (which are then all of the
 * form "bench.hit.<k>") the subscriptions use that pattern, and the handler
 * checks that every event's topic is the one its payload was published
 * under.
 *
 * Round trip: eb_publish_wait on a bus with one SERIAL subscription.
 */
#include "bench.h"

#include <eventbus/eventbus.h>

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZC_SLOTS 8192 /* per producer: more than the intake ring and mailboxes hold */
#define HIT_PATTERN "bench.hit.*"

static _Atomic uint64_t noise_calls;

uint64_t bn_eventbus_noise_calls(void)
{
    return atomic_load(&noise_calls);
}

/* ---- handlers ------------------------------------------------------------ */

struct obs {
    struct bn_sink *sink;
    const struct tp_cfg *cfg; /* NULL: no topic check */
};

static int on_event(const eb_event *ev, void *ctx)
{
    struct obs *o = ctx;
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    if (o->cfg != NULL && o->cfg->topics != NULL) {
        unsigned ti = bn_topic_index(p);
        if (ti >= o->cfg->ntopics || strcmp(eb_event_topic(ev), o->cfg->topics[ti]) != 0)
            bn_sink_bad(o->sink);
    }
    bn_observe(o->sink, p, len);
    return 0;
}

static int on_noise(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    atomic_fetch_add(&noise_calls, 1);
    return 0;
}

/* ---- zero-copy pool --------------------------------------------------- */

/* A payload slot: `busy` while the bus owns the payload. The header is one
   cache line so the payload stays 64-byte aligned. */
struct zc_slot {
    _Atomic int busy;
    char pad[60];
    alignas(64) unsigned char data[];
};

static void zc_release(void *payload)
{
    struct zc_slot *s =
        (struct zc_slot *)((unsigned char *)payload - offsetof(struct zc_slot, data));
    /* Release: the bus's reads of the payload happen before the producer
       reuses the slot (its acquire load in zc_take). */
    atomic_store_explicit(&s->busy, 0, memory_order_release);
}

/* ---- throughput ------------------------------------------------------- */

struct pstate {
    unsigned idx;
    unsigned char *buf; /* copy mode: the payload is built here */
    /* batch mode */
    eb_message *msgs;
    unsigned n;
    /* zero-copy mode */
    unsigned char *pool;
    size_t slot_size;
    uint64_t next;
};

struct tp_eb {
    const struct tp_cfg *cfg;
    eb_bus *bus;
    int owned;
    eb_subscription *hit; /* routing: the run's subscription */
    struct obs obs[BN_MAX_OBSERVERS];
    struct pstate *ps[BN_MAX_PRODUCERS];
};

static int tp_eb_create(struct tp_ctx *ctx, void **out, char *err, size_t errlen)
{
    const struct tp_cfg *cfg = ctx->cfg;
    struct tp_eb *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -1;
    t->cfg = cfg;
    int rc;
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.delivery = cfg->concurrent ? EB_DELIVERY_CONCURRENT : EB_DELIVERY_SERIAL;
    if (cfg->setup != NULL) {
        t->bus = cfg->setup;
        t->obs[0].sink = ctx->sinks[0];
        t->obs[0].cfg = cfg;
        rc = eb_subscribe(t->bus, HIT_PATTERN, on_event, &t->obs[0], &so, &t->hit);
        if (rc != EB_OK) {
            snprintf(err, errlen, "eb_subscribe: %s", eb_err_name(rc));
            free(t);
            return -1;
        }
        *out = t;
        return 0;
    }
    eb_bus_config bc;
    eb_bus_config_init(&bc);
    bc.workers = cfg->workers;
    rc = eb_bus_create(&bc, &t->bus);
    if (rc != EB_OK) {
        snprintf(err, errlen, "eb_bus_create: %s", eb_err_name(rc));
        free(t);
        return -1;
    }
    t->owned = 1;
    for (unsigned k = 0; k < cfg->observers; k++) {
        t->obs[k].sink = ctx->sinks[k];
        t->obs[k].cfg = cfg;
        rc = eb_subscribe(t->bus, cfg->topics != NULL ? HIT_PATTERN : BN_TOPIC, on_event,
                          &t->obs[k], &so, NULL);
        if (rc != EB_OK) {
            snprintf(err, errlen, "eb_subscribe: %s", eb_err_name(rc));
            eb_bus_destroy(t->bus);
            free(t);
            return -1;
        }
    }
    *out = t;
    return 0;
}

static int tp_eb_producer_init(void *peer, unsigned idx, void **out)
{
    struct tp_eb *t = peer;
    const struct tp_cfg *cfg = t->cfg;
    struct pstate *ps = calloc(1, sizeof(*ps));
    if (ps == NULL)
        return -1;
    ps->idx = idx;
    t->ps[idx] = ps;
    size_t len = cfg->payload_len;
    unsigned nbuf = cfg->batch > 1 ? cfg->batch : 1;
    ps->buf = aligned_alloc(64, ((len + 63) / 64) * 64 * nbuf);
    if (ps->buf == NULL)
        return -1;
    if (cfg->batch > 1 && (ps->msgs = calloc(cfg->batch, sizeof(eb_message))) == NULL)
        return -1;
    if (cfg->zero_copy) {
        ps->slot_size = sizeof(struct zc_slot) + ((len + 63) / 64) * 64;
        ps->pool = aligned_alloc(64, ps->slot_size * ZC_SLOTS);
        if (ps->pool == NULL)
            return -1;
        for (unsigned i = 0; i < ZC_SLOTS; i++)
            atomic_init(&((struct zc_slot *)(ps->pool + i * ps->slot_size))->busy, 0);
    }
    *out = ps;
    return 0;
}

static void *tp_eb_buffer(void *peer, void *pstate, size_t len)
{
    struct tp_eb *t = peer;
    struct pstate *ps = pstate;
    if (t->cfg->zero_copy) {
        struct zc_slot *s = (struct zc_slot *)(ps->pool + (ps->next++ % ZC_SLOTS) * ps->slot_size);
        unsigned spins = 0;
        /* Acquire pairs with zc_release: the bus is done reading. */
        while (atomic_load_explicit(&s->busy, memory_order_acquire))
            bn_backoff(&spins);
        atomic_store_explicit(&s->busy, 1, memory_order_relaxed);
        return s->data;
    }
    if (t->cfg->batch > 1)
        return ps->buf + (size_t)ps->n * (((len + 63) / 64) * 64);
    return ps->buf;
}

static int batch_flush(struct tp_eb *t, struct pstate *ps, char *err, size_t errlen)
{
    size_t accepted = 0;
    int rc = eb_publish_batch(t->bus, ps->msgs, ps->n, NULL, &accepted);
    if (rc != EB_OK || accepted != ps->n) {
        snprintf(err, errlen, "eb_publish_batch: %s, %zu of %u accepted", eb_err_name(rc), accepted,
                 ps->n);
        return -1;
    }
    ps->n = 0;
    return 0;
}

static int tp_eb_publish(void *peer, void *pstate, const char *topic, void *buf, size_t len,
                         char *err, size_t errlen)
{
    struct tp_eb *t = peer;
    struct pstate *ps = pstate;
    const struct tp_cfg *cfg = t->cfg;
    int rc;
    if (cfg->batch > 1) {
        ps->msgs[ps->n] = (eb_message){.topic = topic, .payload = buf, .len = len};
        if (++ps->n == cfg->batch)
            return batch_flush(t, ps, err, errlen);
        return 0;
    }
    if (cfg->zero_copy) {
        eb_publish_options o;
        eb_publish_options_init(&o);
        o.payload_free = zc_release;
        rc = eb_publish(t->bus, topic, buf, len, &o);
        if (rc != EB_OK)
            zc_release(buf);
    } else if (cfg->wait) {
        eb_publish_result res;
        rc = eb_publish_wait(t->bus, topic, buf, len, NULL, &res);
        if (rc == EB_OK && (res.matched != cfg->observers || res.delivered != cfg->observers)) {
            snprintf(err, errlen, "eb_publish_wait: matched %u delivered %u failed %u of %u",
                     res.matched, res.delivered, res.failed, cfg->observers);
            return -1;
        }
    } else {
        rc = eb_publish(t->bus, topic, buf, len, NULL);
    }
    if (rc != EB_OK) {
        snprintf(err, errlen, "%s", eb_err_name(rc));
        return -1;
    }
    return 0;
}

static int tp_eb_flush(void *peer, void *pstate, char *err, size_t errlen)
{
    struct tp_eb *t = peer;
    struct pstate *ps = pstate;
    return t->cfg->batch > 1 && ps->n > 0 ? batch_flush(t, ps, err, errlen) : 0;
}

static void tp_eb_destroy(void *peer)
{
    struct tp_eb *t = peer;
    if (t->owned)
        eb_bus_destroy(t->bus); /* every payload_free has run once it returns */
    else if (t->hit != NULL)
        eb_unsubscribe(t->hit);
    for (unsigned i = 0; i < BN_MAX_PRODUCERS; i++) {
        if (t->ps[i] == NULL)
            continue;
        free(t->ps[i]->buf);
        free(t->ps[i]->msgs);
        free(t->ps[i]->pool);
        free(t->ps[i]);
    }
    free(t);
}

const struct tp_peer tp_eventbus = {
    .name = "eventbus",
    .create = tp_eb_create,
    .producer_init = tp_eb_producer_init,
    .buffer = tp_eb_buffer,
    .publish = tp_eb_publish,
    .flush = tp_eb_flush,
    .destroy = tp_eb_destroy,
};

/* ---- routing bus -------------------------------------------------------- */

eb_bus *bn_eventbus_routing_bus(unsigned noise, int kind, char *err, size_t errlen)
{
    eb_bus *bus;
    int rc = eb_bus_create(NULL, &bus);
    if (rc != EB_OK) {
        snprintf(err, errlen, "eb_bus_create: %s", eb_err_name(rc));
        return NULL;
    }
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.mailbox_capacity = 1; /* never used: keeps 100k subscriptions small */
    char pat[64];
    for (unsigned i = 0; i < noise; i++) {
        if (kind == 0) {
            snprintf(pat, sizeof(pat), "bench.hit.x%u", i);
        } else {
            /* Near misses of "bench.hit.<k>" that a matcher has to look at. */
            static const char *const forms[] = {"bench.*.x%u", "*.hit.x%u", "#.x%u",
                                                "bench.hit.x%u.#"};
            snprintf(pat, sizeof(pat), forms[i % 4], i);
        }
        rc = eb_subscribe(bus, pat, on_noise, NULL, &so, NULL);
        if (rc != EB_OK) {
            snprintf(err, errlen, "eb_subscribe(%s): %s", pat, eb_err_name(rc));
            eb_bus_destroy(bus);
            return NULL;
        }
    }
    return bus;
}

void bn_eventbus_routing_bus_free(eb_bus *bus)
{
    eb_bus_destroy(bus);
}

/* ---- round trip --------------------------------------------------------- */

struct rt_eb {
    eb_bus *bus;
    struct obs obs;
};

static int rt_eb_create(struct rt_ctx *ctx, void **out, char *err, size_t errlen)
{
    struct rt_eb *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -1;
    int rc = eb_bus_create(NULL, &t->bus);
    if (rc != EB_OK) {
        snprintf(err, errlen, "eb_bus_create: %s", eb_err_name(rc));
        free(t);
        return -1;
    }
    t->obs.sink = ctx->sink;
    rc = eb_subscribe(t->bus, BN_TOPIC, on_event, &t->obs, NULL, NULL);
    if (rc != EB_OK) {
        snprintf(err, errlen, "eb_subscribe: %s", eb_err_name(rc));
        eb_bus_destroy(t->bus);
        free(t);
        return -1;
    }
    *out = t;
    return 0;
}

static int rt_eb_request(void *peer, void *rstate, const void *buf, size_t len, char *err,
                         size_t errlen)
{
    struct rt_eb *t = peer;
    (void)rstate;
    eb_publish_result res;
    int rc = eb_publish_wait(t->bus, BN_TOPIC, buf, len, NULL, &res);
    if (rc != EB_OK) {
        snprintf(err, errlen, "eb_publish_wait: %s", eb_err_name(rc));
        return -1;
    }
    if (res.matched != 1 || res.delivered != 1 || res.failed != 0) {
        snprintf(err, errlen, "eb_publish_wait: matched %u delivered %u failed %u", res.matched,
                 res.delivered, res.failed);
        return -1;
    }
    return 0;
}

static void rt_eb_destroy(void *peer)
{
    struct rt_eb *t = peer;
    eb_bus_destroy(t->bus);
    free(t);
}

const struct rt_peer rt_eventbus = {
    .name = "eventbus",
    .max_requesters = BN_MAX_PRODUCERS,
    .create = rt_eb_create,
    .request = rt_eb_request,
    .destroy = rt_eb_destroy,
};

/* ---- idle --------------------------------------------------------------- */

#define IDLE_BURST 10000

struct idle {
    eb_bus *bus;
    struct obs obs;
    uint64_t sum;
    _Atomic int blocked; /* 1: the blocking handler runs; 2: let it return */
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

/* Holds its worker until idle_stop: a handler that runs long on a bus with
   nothing else to do. */
static int on_block(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct idle *t = ctx;
    pthread_mutex_lock(&t->lock);
    atomic_store(&t->blocked, 1);
    while (atomic_load(&t->blocked) != 2)
        pthread_cond_wait(&t->cond, &t->lock);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

void *bn_eventbus_idle_start(int blocked, char *err, size_t errlen)
{
    struct idle *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    bn_sink_new_run();
    t->obs.sink = bn_sink_new();
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    int rc = eb_bus_create(NULL, &t->bus);
    if (rc == EB_OK)
        rc = eb_subscribe(t->bus, BN_TOPIC, on_event, &t->obs, NULL, NULL);
    if (rc == EB_OK && blocked)
        rc = eb_subscribe(t->bus, "bench.block", on_block, t, NULL, NULL);
    uint64_t buf[BN_PAYLOAD / 8];
    for (unsigned i = 0; rc == EB_OK && i < IDLE_BURST; i++) {
        t->sum += bn_fill(buf, sizeof(buf), 0, i, 0);
        rc = eb_publish(t->bus, BN_TOPIC, buf, sizeof(buf), NULL);
    }
    if (rc != EB_OK) {
        snprintf(err, errlen, "eventbus: %s", eb_err_name(rc));
        eb_bus_destroy(t->bus);
        bn_sink_free(t->obs.sink);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->cond);
        free(t);
        return NULL;
    }
    uint64_t deadline = bn_now_ns() + 60000000000ull;
    while (bn_sink_count(t->obs.sink) < IDLE_BURST) {
        if (bn_now_ns() > deadline)
            bn_fatal("eventbus: idle scenario: burst not delivered in 60 s (%llu of %u)",
                     (unsigned long long)bn_sink_count(t->obs.sink), IDLE_BURST);
        bn_sleep_ns(200000);
    }
    if (blocked) {
        rc = eb_publish(t->bus, "bench.block", "", 0, NULL);
        if (rc != EB_OK)
            bn_fatal("eventbus: idle scenario: %s", eb_err_name(rc));
        while (atomic_load(&t->blocked) != 1) {
            if (bn_now_ns() > deadline)
                bn_fatal("eventbus: idle scenario: the blocking handler never ran");
            bn_sleep_ns(200000);
        }
    }
    return t;
}

int bn_eventbus_idle_stop(void *idle, char *err, size_t errlen)
{
    struct idle *t = idle;
    pthread_mutex_lock(&t->lock);
    atomic_store(&t->blocked, 2);
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    eb_bus_destroy(t->bus);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
    uint64_t c = bn_sink_count(t->obs.sink), s = bn_sink_sum(t->obs.sink);
    int rc = c == IDLE_BURST && s == t->sum ? 0 : -1;
    if (rc != 0)
        snprintf(err, errlen, "eventbus: idle scenario: %llu of %u events, checksum %s",
                 (unsigned long long)c, IDLE_BURST, s == t->sum ? "ok" : "MISMATCH");
    bn_sink_free(t->obs.sink);
    free(t);
    return rc;
}
