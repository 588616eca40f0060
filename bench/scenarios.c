/*
 * scenarios — the named scenarios of issue 3, as cases of implementations.
 *
 *  1 throughput  fire-and-forget, 1/2/4 publishers -> 1 subscriber
 *  2 fanout      1 publisher -> 4/16 subscribers, SERIAL and CONCURRENT
 *  3 roundtrip   publish-and-wait latency, 1 and 2 publishers, with the
 *                spin ping-pong floor and the mutex+condvar round trip
 *  4 batch       eb_publish_batch vs moodycamel bulk enqueue/dequeue
 *  5 routing     throughput (publish to delivery) with 0/1k/100k
 *                non-matching subscriptions
 *  6 payload     16 B / 256 B / 4 KiB, copy vs zero-copy
 *  7 allocs      malloc-family calls per event in steady state
 *  8 idle        CPU used by an idle bus
 *  9 saga        order-fulfillment saga transitions/s and orders/s (saga.c)
 * 10 durable     durable publishing through the SQLite store next to raw
 *                SQLite and fdatasync (durable.c)
 *
 * Event counts: full mode sizes a run to roughly 0.2-1 s on this machine;
 * --quick divides them so that the whole suite stays under a minute.
 */
#include "harness.h"

#include <eventbus/eventbus.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define NOT_BUILT(lib) "not built: " lib " was not found at configure time"

static unsigned nproc(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static uint64_t pick(const struct bn_options *o, uint64_t full, uint64_t quick)
{
    return o->quick ? quick : full;
}

/* ---- run functions ---------------------------------------------------- */

static void copy_tp_err(struct bn_sample *out, const struct tp_out *t)
{
    out->ok = t->ok;
    out->cut = t->cut;
    snprintf(out->err, sizeof(out->err), "%s", t->err);
}

static void run_events(const struct bn_impl *im, struct bn_sample *out)
{
    struct tp_out t;
    tp_run(im->spec.tp, &im->spec.tcfg, &t);
    copy_tp_err(out, &t);
    out->v[0] = t.events_per_s;
    out->v[1] = t.events_per_s * (double)im->spec.tcfg.payload_len;
}

static void run_deliveries(const struct bn_impl *im, struct bn_sample *out)
{
    struct tp_out t;
    tp_run(im->spec.tp, &im->spec.tcfg, &t);
    copy_tp_err(out, &t);
    out->v[0] = t.deliveries_per_s;
    out->v[1] = t.events_per_s;
}

static void run_routing(const struct bn_impl *im, struct bn_sample *out)
{
    uint64_t before = bn_eventbus_noise_calls();
    struct tp_out t;
    tp_run(im->spec.tp, &im->spec.tcfg, &t);
    copy_tp_err(out, &t);
    out->v[0] = t.events_per_s;
    out->v[1] = t.events_per_s > 0 ? 1e9 / t.events_per_s : 0;
    uint64_t wrong = bn_eventbus_noise_calls() - before;
    if (out->ok && wrong != 0) {
        out->ok = 0;
        snprintf(out->err, sizeof(out->err),
                 "eventbus: %llu deliveries to subscriptions that do not match",
                 (unsigned long long)wrong);
    }
}

static void run_allocs(const struct bn_impl *im, struct bn_sample *out)
{
    struct tp_out t;
    struct tp_cfg cfg = im->spec.tcfg;
    cfg.count_allocs = 1;
    tp_run(im->spec.tp, &cfg, &t);
    copy_tp_err(out, &t);
    const struct bn_alloc_counts *a = &t.allocs;
    double ev = t.events > 0 ? (double)t.events : 1;
    out->v[0] =
        (double)(a->malloc_calls + a->calloc_calls + a->realloc_calls + a->memalign_calls) / ev;
    out->v[1] = (double)a->free_calls / ev;
    out->v[2] = t.events_per_s;
}

static void run_rt(const struct bn_impl *im, struct bn_sample *out)
{
    struct rt_out r;
    rt_run(im->spec.rt, &im->spec.rcfg, &r);
    out->ok = r.ok;
    out->cut = r.cut;
    snprintf(out->err, sizeof(out->err), "%s", r.err);
    out->v[0] = r.p50_ns;
    out->v[1] = r.p99_ns;
    out->v[2] = r.p999_ns;
    out->v[3] = r.mean_ns;
    out->v[4] = r.max_ns;
}

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long switches(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_nvcsw + ru.ru_nivcsw;
}

static void run_idle(const struct bn_impl *im, struct bn_sample *out)
{
    void *bus = NULL;
    if (im->spec.idle_kind > 0) {
        bus = bn_eventbus_idle_start(im->spec.idle_kind == 2, out->err, sizeof(out->err));
        if (bus == NULL)
            return;
        bn_sleep_ns(100000000); /* let the workers finish spinning and park */
    }
    double wall = im->spec.idle_seconds;
    double c0 = cpu_seconds();
    long s0 = switches();
    uint64_t t0 = bn_now_ns();
    bn_sleep_ns((uint64_t)(wall * 1e9));
    double secs = (double)(bn_now_ns() - t0) / 1e9;
    double c1 = cpu_seconds();
    long s1 = switches();
    /* The measuring thread's own sleep costs ~nothing, and is the same in
       the baseline. */
    out->v[0] = (c1 - c0) * 1e3 / secs;
    out->v[1] = (double)(s1 - s0) / secs;
    out->ok = 1;
    if (bus != NULL && bn_eventbus_idle_stop(bus, out->err, sizeof(out->err)) != 0)
        out->ok = 0;
}

static void run_saga(const struct bn_impl *im, struct bn_sample *out)
{
    struct saga_out r;
    saga_run(&im->spec.scfg, &r);
    out->ok = r.ok;
    snprintf(out->err, sizeof(out->err), "%s", r.err);
    out->v[0] = r.transitions_per_s;
    out->v[1] = r.orders_per_s;
    out->v[2] = (double)r.orders;
    out->v[3] = (double)r.compensated;
    out->v[4] = (double)r.rejected;
    out->v[5] = (double)r.retries;
    out->cut = r.cut;
}

/* ---- helpers to build cases -------------------------------------------- */

/* A phase that takes longer than this is cut short (see tp.c). */
static uint64_t time_limit(const struct bn_options *o)
{
    return o->quick ? 1500000000ull : 10000000000ull;
}

static struct tp_cfg tp_base(const struct bn_options *o, uint64_t total_events, unsigned producers)
{
    struct tp_cfg c;
    memset(&c, 0, sizeof(c));
    c.max_ns = time_limit(o);
    c.producers = producers;
    c.observers = 1;
    c.payload_len = BN_PAYLOAD;
    c.events = total_events / producers;
    c.warm_events = c.events / 10 > 1000 ? c.events / 10 : 1000;
    return c;
}

static struct bn_impl *add_tp(struct bn_case *c, const char *name, enum bn_role role, bn_run_fn run,
                              const struct tp_peer *peer, struct tp_cfg cfg)
{
    struct bn_impl *im = bn_impl_add(c, name, role, run);
    im->spec.tp = peer;
    im->spec.tcfg = cfg;
    return im;
}

/* Used when a peer's library is missing, or a peer is not measured. */
static void add_skipped(struct bn_case *c, const char *name, const char *why)
{
    struct bn_impl *im = bn_impl_add(c, name, BN_PEER, NULL);
    im->skip = why;
}

static void metric(struct bn_case *c, const char *name, const char *unit, int lower_better,
                   int info)
{
    c->metric[c->nmetrics++] = (struct bn_metric){name, unit, lower_better, info};
}

/* The single-event-per-operation peers of scenario 1 (and 7). */
static void add_queue_peers(struct bn_case *c, bn_run_fn run, struct tp_cfg cfg)
{
    add_tp(c, "mutex+condvar", BN_PEER, run, &tp_mutex, cfg);
#ifdef BN_HAVE_GLIB
    add_tp(c, "GThreadPool", BN_PEER, run, &tp_glib_pool, cfg);
    add_tp(c, "GAsyncQueue", BN_PEER, run, &tp_glib_queue, cfg);
#else
    add_skipped(c, "GThreadPool", NOT_BUILT("glib-2.0"));
    add_skipped(c, "GAsyncQueue", NOT_BUILT("glib-2.0"));
#endif
#ifdef BN_HAVE_ZMQ
    add_tp(c, "ZeroMQ PUSH/PULL", BN_PEER, run, &tp_zmq_pushpull, cfg);
    add_tp(c, "ZeroMQ PUB/SUB", BN_PEER, run, &tp_zmq_pubsub, cfg);
#else
    add_skipped(c, "ZeroMQ PUSH/PULL", NOT_BUILT("libzmq"));
    add_skipped(c, "ZeroMQ PUB/SUB", NOT_BUILT("libzmq"));
#endif
    /* ck_ring's MPMC enqueue commits in reservation order, spinning for its
       predecessor: with more threads than CPUs a preempted producer stalls
       the others for a time slice. Measured here with 4 publishers: 1.6-13
       k events/s, and afterwards the machine often ran every implementation
       at a fraction of its speed for tens of seconds (eventbus, 4
       publishers: 3.5-3.7 M events/s in 2 of 3 trials after it, 9-15 after
       an equally long sleep), which distorted every later figure of a full
       run. So it is measured only where its threads fit the CPUs. */
    if (cfg.producers + 1 <= nproc())
        add_tp(c, "ck_ring mpmc", BN_PEER, run, &tp_ck_ring, cfg);
    else
        add_skipped(c, "ck_ring mpmc",
                    "not measured: more threads (publishers and consumer) than CPUs, where "
                    "ck_ring's in-order commit spins stall for a time slice and slow the machine "
                    "down afterwards (bench/RESULTS.md)");
#ifdef BN_HAVE_MOODYCAMEL
    add_tp(c, "moodycamel", BN_PEER, run, &tp_moodycamel, cfg);
#else
    add_skipped(c, "moodycamel", NOT_BUILT("moodycamel concurrentqueue (or a C++ compiler)"));
#endif
}

/* ---- 1. throughput -------------------------------------------------------- */

static void build_throughput(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    static const unsigned pubs[] = {1, 2, 4};
    static const char *const names[] = {"pub1", "pub2", "pub4"};
    static const char *const titles[] = {
        "1 publisher -> 1 subscriber, 64 B events, trivial handler",
        "2 publishers -> 1 subscriber, 64 B events, trivial handler",
        "4 publishers -> 1 subscriber, 64 B events, trivial handler"};
    for (int i = 0; i < 3; i++) {
        struct bn_case *c = bn_case_add(cases, n, cap);
        c->scenario = "throughput";
        c->name = names[i];
        c->title = titles[i];
        metric(c, "events_per_s", "events/s", 0, 0);
        struct tp_cfg cfg = tp_base(o, pick(o, 1000000, 60000), pubs[i]);
        add_tp(c, "eventbus", BN_OURS, run_events, &tp_eventbus, cfg);
        if (i == 0) {
            /* For tuning: the same with a single worker (no hand-off between
               workers; the publisher has the other core to itself). */
            struct tp_cfg one = cfg;
            one.workers = 1;
            add_tp(c, "eventbus, workers=1", BN_OURS, run_events, &tp_eventbus, one);
        }
        add_queue_peers(c, run_events, cfg);
    }
}

/* ---- 2. fan-out ----------------------------------------------------------- */

static void build_fanout(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    static const unsigned subs[] = {4, 16};
    static const char *const names[2][2] = {{"sub4_serial", "sub16_serial"},
                                            {"sub4_concurrent", "sub16_concurrent"}};
    static const char *const titles[2][2] = {
        {"1 publisher -> 4 SERIAL subscribers (in order per subscriber)",
         "1 publisher -> 16 SERIAL subscribers (in order per subscriber)"},
        {"1 publisher -> 4 CONCURRENT subscribers (no order)",
         "1 publisher -> 16 CONCURRENT subscribers (no order)"}};
    for (int conc = 0; conc < 2; conc++) {
        for (int i = 0; i < 2; i++) {
            struct bn_case *c = bn_case_add(cases, n, cap);
            c->scenario = "fanout";
            c->name = names[conc][i];
            c->title = titles[conc][i];
            metric(c, "deliveries_per_s", "deliveries/s", 0, 0);
            metric(c, "events_per_s", "events/s", 0, 1);
            struct tp_cfg cfg = tp_base(o, pick(o, 4000000, 200000) / subs[i], 1);
            cfg.observers = subs[i];
            cfg.concurrent = conc;
            add_tp(c, conc ? "eventbus CONCURRENT" : "eventbus SERIAL", BN_OURS, run_deliveries,
                   &tp_eventbus, cfg);
            /* For tuning, as in scenario 1: one worker runs every lane. */
            struct tp_cfg one = cfg;
            one.workers = 1;
            add_tp(c, conc ? "eventbus CONCURRENT, workers=1" : "eventbus SERIAL, workers=1",
                   BN_OURS, run_deliveries, &tp_eventbus, one);
            /* The hand-written fan-out: one worker keeps observers serial;
               one worker per CPU calls them concurrently. */
            struct tp_cfg m = cfg;
            m.workers = conc ? nproc() : 1;
            add_tp(c, conc ? "mutex+condvar, 1 worker per CPU" : "mutex+condvar, 1 worker", BN_PEER,
                   run_deliveries, &tp_mutex, m);
            if (!conc) {
#ifdef BN_HAVE_ZMQ
                add_tp(c, "ZeroMQ PUB/SUB, 1 thread per subscriber", BN_PEER, run_deliveries,
                       &tp_zmq_pubsub, cfg);
#else
                add_skipped(c, "ZeroMQ PUB/SUB, 1 thread per subscriber", NOT_BUILT("libzmq"));
#endif
            } else {
#ifdef BN_HAVE_GLIB
                add_tp(c, "GThreadPool, 1 thread per CPU", BN_PEER, run_deliveries, &tp_glib_pool,
                       m);
#else
                add_skipped(c, "GThreadPool, 1 thread per CPU", NOT_BUILT("glib-2.0"));
#endif
            }
        }
    }
}

/* ---- 3. round trip ------------------------------------------------------ */

static void rt_metrics(struct bn_case *c)
{
    metric(c, "p50_ns", "ns", 1, 0);
    metric(c, "p99_ns", "ns", 1, 0);
    metric(c, "p999_ns", "ns", 1, 0);
    metric(c, "mean_ns", "ns", 1, 1);
    metric(c, "max_ns", "ns", 1, 1);
}

static struct bn_impl *add_rt(struct bn_case *c, const char *name, enum bn_role role,
                              const struct rt_peer *peer, unsigned requesters,
                              const struct bn_options *o)
{
    struct bn_impl *im = bn_impl_add(c, name, role, run_rt);
    im->spec.rt = peer;
    im->spec.rcfg.requesters = requesters;
    im->spec.rcfg.requests = pick(o, 30000, 3000);
    im->spec.rcfg.warm = pick(o, 3000, 500);
    im->spec.rcfg.max_ns = time_limit(o);
    return im;
}

static void build_roundtrip(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    struct bn_case *c = bn_case_add(cases, n, cap);
    c->scenario = "roundtrip";
    c->name = "pub1";
    c->title = "publish and wait until handled: 1 publisher, 1 subscriber, 64 B";
    rt_metrics(c);
    add_rt(c, "eventbus", BN_OURS, &rt_eventbus, 1, o);
    add_rt(c, "spin ping-pong (floor)", BN_BASELINE, &rt_spin, 1, o);
    add_rt(c, "mutex+condvar", BN_PEER, &rt_mutex, 1, o);

    c = bn_case_add(cases, n, cap);
    c->scenario = "roundtrip";
    c->name = "pub2";
    c->title = "publish and wait until handled: 2 publishers at once, 1 subscriber";
    rt_metrics(c);
    add_rt(c, "eventbus", BN_OURS, &rt_eventbus, 2, o);
    add_rt(c, "mutex+condvar", BN_PEER, &rt_mutex, 2, o);
}

/* ---- 4. batch ------------------------------------------------------------- */

#define BATCH 64

static void build_batch(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    struct bn_case *c = bn_case_add(cases, n, cap);
    c->scenario = "batch";
    c->name = "batch64";
    c->title = "1 publisher -> 1 subscriber, batches of 64 events of 64 B";
    metric(c, "events_per_s", "events/s", 0, 0);
    struct tp_cfg cfg = tp_base(o, pick(o, 4000000, 200000), 1);
    cfg.batch = BATCH;
    add_tp(c, "eventbus eb_publish_batch", BN_OURS, run_events, &tp_eventbus, cfg);
    {
        /* For tuning, as in scenario 1: the same with a single worker. */
        struct tp_cfg one = cfg;
        one.workers = 1;
        add_tp(c, "eventbus eb_publish_batch, workers=1", BN_OURS, run_events, &tp_eventbus, one);
    }
#ifdef BN_HAVE_MOODYCAMEL
    add_tp(c, "moodycamel bulk", BN_PEER, run_events, &tp_moodycamel_bulk, cfg);
#else
    add_skipped(c, "moodycamel bulk", NOT_BUILT("moodycamel concurrentqueue"));
#endif
    cfg.batch = 0;
    add_tp(c, "eventbus eb_publish (one by one)", BN_OURS, run_events, &tp_eventbus, cfg);
#ifdef BN_HAVE_MOODYCAMEL
    add_tp(c, "moodycamel (one by one)", BN_PEER, run_events, &tp_moodycamel, cfg);
#else
    add_skipped(c, "moodycamel (one by one)", NOT_BUILT("moodycamel concurrentqueue"));
#endif
}

/* ---- 5. routing ---------------------------------------------------------- */

#define ROUTE_TOPICS 16384 /* more distinct topics than eventbus caches (4096) */

static const char *const *route_topics(void)
{
    static char **t;
    if (t == NULL) {
        t = malloc(ROUTE_TOPICS * sizeof(*t));
        if (t == NULL)
            bn_fatal("out of memory");
        for (unsigned i = 0; i < ROUTE_TOPICS; i++) {
            char buf[32];
            snprintf(buf, sizeof(buf), "bench.hit.%u", i);
            t[i] = strdup(buf);
            if (t[i] == NULL)
                bn_fatal("out of memory");
        }
    }
    return (const char *const *)t;
}

/* Buses with non-matching subscriptions, shared by the routing cases and
   counted: built at the first case that needs one, freed after the last. */
struct rbus {
    unsigned noise;
    int kind;
    struct eb_bus *bus;
    int refs;
};
static struct rbus rbuses[8];

static struct eb_bus *rbus_get(unsigned noise, int kind, char *err, size_t errlen)
{
    if (noise == 0)
        kind = 0;
    struct rbus *free_slot = NULL;
    for (int i = 0; i < 8; i++) {
        struct rbus *r = &rbuses[i];
        if (r->refs > 0 && r->noise == noise && r->kind == kind) {
            r->refs++;
            return r->bus;
        }
        if (r->refs == 0 && free_slot == NULL)
            free_slot = r;
    }
    if (free_slot == NULL)
        bn_fatal("routing: too many buses");
    fprintf(stderr, "  (routing: subscribing %u %s patterns...)\n", noise,
            kind ? "wildcard" : "exact");
    uint64_t t0 = bn_now_ns();
    free_slot->bus = bn_eventbus_routing_bus(noise, kind, err, errlen);
    if (free_slot->bus == NULL)
        return NULL;
    if (noise > 0)
        fprintf(stderr, "  (routing: %u subscriptions took %.2f s)\n", noise,
                (double)(bn_now_ns() - t0) / 1e9);
    free_slot->noise = noise;
    free_slot->kind = kind;
    free_slot->refs = 1;
    return free_slot->bus;
}

static void rbus_put(struct eb_bus *bus)
{
    for (int i = 0; i < 8; i++) {
        struct rbus *r = &rbuses[i];
        if (r->refs > 0 && r->bus == bus && --r->refs == 0) {
            bn_eventbus_routing_bus_free(r->bus);
            r->bus = NULL;
        }
    }
}

struct route_state {
    unsigned noise[3];
    int kind;
};

static int routing_setup(struct bn_case *c, char *err, size_t errlen)
{
    const struct route_state *st = c->state;
    for (int i = 0; i < c->nimpl; i++) {
        struct eb_bus *b = rbus_get(st->noise[i], st->kind, err, errlen);
        if (b == NULL)
            return -1;
        c->impl[i].spec.tcfg.setup = b;
    }
    return 0;
}

static void routing_teardown(struct bn_case *c)
{
    for (int i = 0; i < c->nimpl; i++)
        if (c->impl[i].spec.tcfg.setup != NULL)
            rbus_put(c->impl[i].spec.tcfg.setup);
}

static void build_routing(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    static struct route_state states[2][2];
    static const char *const names[2][2] = {{"exact_1topic", "exact_16ktopics"},
                                            {"wildcard_1topic", "wildcard_16ktopics"}};
    static const char *const titles[2][2] = {
        {"publish to \"bench.hit.0\" (\"bench.hit.*\" matches), non-matching exact patterns",
         "publish to 16384 topics \"bench.hit.<k>\" (beyond the route cache), non-matching "
         "exact patterns"},
        {"publish to \"bench.hit.0\" (\"bench.hit.*\" matches), non-matching wildcard patterns",
         "publish to 16384 topics \"bench.hit.<k>\" (beyond the route cache), non-matching "
         "wildcard patterns"}};
    static const char *hit0[] = {"bench.hit.0"};
    static const char *const impl_names[3] = {"eventbus, 0 other subscriptions",
                                              "eventbus, 1k non-matching",
                                              "eventbus, 100k non-matching"};
    unsigned big = 100000;
    for (int kind = 0; kind < 2; kind++) {
        for (int tp = 0; tp < 2; tp++) {
            struct bn_case *c = bn_case_add(cases, n, cap);
            struct route_state *st = &states[kind][tp];
            st->noise[0] = 0;
            st->noise[1] = 1000;
            st->noise[2] = big;
            st->kind = kind;
            c->scenario = "routing";
            c->name = names[kind][tp];
            c->title = titles[kind][tp];
            c->state = st;
            c->setup = routing_setup;
            c->teardown = routing_teardown;
            metric(c, "events_per_s", "events/s", 0, 0);
            metric(c, "ns_per_event", "ns", 1, 1);
            struct tp_cfg cfg = tp_base(o, pick(o, 1000000, 50000), 1);
            if (tp == 0) {
                cfg.topics = hit0;
                cfg.ntopics = 1;
            } else {
                cfg.topics = route_topics();
                cfg.ntopics = ROUTE_TOPICS;
            }
            for (int i = 0; i < 3; i++)
                add_tp(c, impl_names[i], i == 0 ? BN_BASELINE : BN_OURS, run_routing, &tp_eventbus,
                       cfg);
        }
    }
}

/* ---- 6. payload sizes ------------------------------------------------------ */

static void build_payload(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    static const size_t sizes[] = {16, 256, 4096};
    static const char *const names[] = {"p16", "p256", "p4096"};
    static const char *const titles[] = {"1 publisher -> 1 subscriber, 16 B payload",
                                         "1 publisher -> 1 subscriber, 256 B payload",
                                         "1 publisher -> 1 subscriber, 4 KiB payload"};
    for (int i = 0; i < 3; i++) {
        struct bn_case *c = bn_case_add(cases, n, cap);
        c->scenario = "payload";
        c->name = names[i];
        c->title = titles[i];
        metric(c, "events_per_s", "events/s", 0, 0);
        metric(c, "bytes_per_s", "B/s", 0, 1);
        uint64_t total = sizes[i] >= 4096 ? pick(o, 500000, 25000) : pick(o, 1000000, 50000);
        struct tp_cfg cfg = tp_base(o, total, 1);
        cfg.payload_len = sizes[i];
        add_tp(c, "eventbus copy", BN_OURS, run_events, &tp_eventbus, cfg);
        struct tp_cfg zc = cfg;
        zc.zero_copy = 1;
        add_tp(c, "eventbus zero-copy (payload_free)", BN_OURS, run_events, &tp_eventbus, zc);
        add_tp(c, "mutex+condvar (by value)", BN_PEER, run_events, &tp_mutex, cfg);
    }
}

/* ---- 7. allocations ---------------------------------------------------------- */

static void build_allocs(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    struct bn_case *c = bn_case_add(cases, n, cap);
    c->scenario = "allocs";
    c->name = "steady";
    c->title = "malloc/calloc/realloc/memalign calls per event after warm-up (whole process)";
    metric(c, "allocs_per_event", "calls/event", 1, 0);
    metric(c, "frees_per_event", "calls/event", 1, 1);
    metric(c, "events_per_s", "events/s", 0, 1);
    uint64_t total = pick(o, 200000, 20000);
    struct tp_cfg cfg = tp_base(o, total, 1);
    /* Enough warm-up for the caches to hold everything the intake ring
       (8191 events) and the mailboxes can have in flight. */
    cfg.warm_events = pick(o, 100000, 50000);
    add_tp(c, "eventbus eb_publish", BN_OURS, run_allocs, &tp_eventbus, cfg);
    struct tp_cfg x = cfg;
    x.producers = 2;
    x.events /= 2;
    add_tp(c, "eventbus eb_publish, 2 publishers", BN_OURS, run_allocs, &tp_eventbus, x);
    x = cfg;
    x.observers = 4;
    add_tp(c, "eventbus fan-out to 4", BN_OURS, run_allocs, &tp_eventbus, x);
    x = cfg;
    x.batch = BATCH;
    add_tp(c, "eventbus eb_publish_batch", BN_OURS, run_allocs, &tp_eventbus, x);
    x = cfg;
    x.zero_copy = 1;
    add_tp(c, "eventbus zero-copy", BN_OURS, run_allocs, &tp_eventbus, x);
    x = cfg;
    x.wait = 1;
    x.events = pick(o, 20000, 2000);
    x.warm_events = x.events;
    add_tp(c, "eventbus eb_publish_wait", BN_OURS, run_allocs, &tp_eventbus, x);
    x = cfg;
    x.topics = route_topics();
    x.ntopics = ROUTE_TOPICS;
    x.events = pick(o, 200000, 40000);
    x.warm_events = x.events;
    add_tp(c, "eventbus, 16384 topics (route cache misses)", BN_OURS, run_allocs, &tp_eventbus, x);
    add_queue_peers(c, run_allocs, cfg);
}

/* ---- 8. idle ------------------------------------------------------------------ */

static void build_idle(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    struct bn_case *c = bn_case_add(cases, n, cap);
    c->scenario = "idle";
    c->name = o->quick ? "idle1s" : "idle5s";
    c->title = o->quick ? "process CPU time over 1 s with an idle bus (after a burst of events)"
                        : "process CPU time over 5 s with an idle bus (after a burst of events)";
    metric(c, "cpu_ms_per_s", "ms CPU/s", 1, 0);
    metric(c, "switches_per_s", "context switches/s", 1, 1);
    struct bn_impl *im =
        bn_impl_add(c, "eventbus (default config, 1 subscription)", BN_OURS, run_idle);
    im->spec.idle_kind = 1;
    im->spec.idle_seconds = o->quick ? 1.0 : 5.0;
    /* For information: one worker held up in a handler the whole time, the
       other parked (it watches the intake for a while, then sleeps). */
    im = bn_impl_add(c, "eventbus, one handler running long, nothing published", BN_OURS, run_idle);
    im->spec.idle_kind = 2;
    im->spec.idle_seconds = o->quick ? 1.0 : 5.0;
    im = bn_impl_add(c, "no bus (the process alone)", BN_BASELINE, run_idle);
    im->spec.idle_kind = 0;
    im->spec.idle_seconds = o->quick ? 1.0 : 5.0;
}

/* ---- 9. saga ------------------------------------------------------------------ */

static void build_saga(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    static char title[256];
    struct saga_cfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.orders = (uint32_t)pick(o, 100000, 10000);
    cfg.warm_orders = cfg.orders / 10;
    cfg.window = 2000;
    cfg.fail_rate = 0.2;
    cfg.max_ns = time_limit(o);
    snprintf(title, sizeof(title),
             "order saga over inventory (32 SKUs) and payment aggregates: %u orders (+%u warm-up), "
             "20%% of payments declined and compensated, default workers",
             cfg.orders, cfg.warm_orders);
    struct bn_case *c = bn_case_add(cases, n, cap);
    c->scenario = "saga";
    c->name = "orders";
    c->title = title;
    metric(c, "transitions_per_s", "transitions/s", 0, 0);
    metric(c, "orders_per_s", "orders/s", 0, 0);
    metric(c, "orders", "orders", 0, 1);
    metric(c, "compensated", "orders", 0, 1);
    metric(c, "rejected", "orders", 0, 1);
    metric(c, "retries", "deliveries", 1, 1);
    /* No peer: absolute figures only (both are "ours", so no ratio). */
    struct bn_impl *im = bn_impl_add(c, "eventbus saga, in-memory store", BN_OURS, run_saga);
    im->spec.scfg = cfg;
    im->spec.scfg.store = BN_SAGA_STORE_MEMORY;
    /* Each SQLite transition waits for its group commit (an fsync): fewer
       orders, so that a run stays within seconds. */
    static char sql_name[128];
    uint32_t sql_orders = (uint32_t)pick(o, 5000, 300);
    snprintf(sql_name, sizeof(sql_name),
             "eventbus saga, SQLite store (synchronous FULL; %u orders +%u warm-up)", sql_orders,
             sql_orders / 10);
    im = bn_impl_add(c, sql_name, BN_OURS, run_saga);
    im->spec.scfg = cfg;
    im->spec.scfg.store = BN_SAGA_STORE_SQLITE;
    im->spec.scfg.orders = sql_orders;
    im->spec.scfg.warm_orders = sql_orders / 10;
#ifndef BN_HAVE_EB_STORE
    im->skip = "built without the store (EB_WITH_SQLITE=OFF)";
#endif
}

const struct bn_scenario bn_scenarios[] = {
    {"throughput", "1. Fire-and-forget throughput", build_throughput},
    {"fanout", "2. Fan-out", build_fanout},
    {"roundtrip", "3. Wait-for-all round trip", build_roundtrip},
    {"batch", "4. Batch publishing", build_batch},
    {"routing", "5. Routing scale", build_routing},
    {"payload", "6. Payload sizes, copy vs zero-copy", build_payload},
    {"allocs", "7. Allocations per publish", build_allocs},
    {"idle", "8. Idle cost", build_idle},
    {"saga", "9. Saga transitions", build_saga},
    {"durable", "10. Durable publishing (SQLite store)", bn_build_durable},
};
const int bn_nscenarios = (int)(sizeof(bn_scenarios) / sizeof(bn_scenarios[0]));
