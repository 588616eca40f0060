/*
 * Stress tests: several publisher threads released together by a barrier,
 * every event tagged with its producer id and per-producer sequence number,
 * delivered to up to 64 subscriptions mixing SERIAL, KEYED and CONCURRENT.
 * Each subscription records what it saw; afterwards the test counts losses,
 * duplicates and order violations:
 *  - every subscription sees each matching event exactly once (or, with a
 *    drop policy, delivered + dropped adds up and nothing is duplicated);
 *  - SERIAL: per-publisher order, one call at a time, and every SERIAL
 *    subscription sees the same total order (same eb_event_seq sequence);
 *  - KEYED: per-key order (seq increasing, per-publisher pseq increasing),
 *    one call per key at a time.
 *
 * EB_STRESS_SCALE (default 1) multiplies the event counts.
 */
#include "common.h"

TestSuite(stress, .timeout = EB_CRITERION_TIMEOUT);

typedef struct tag {
    uint32_t producer;
    uint32_t pseq;
} tag;

static unsigned stress_scale(void)
{
    const char *s = getenv("EB_STRESS_SCALE");
    long v = s ? strtol(s, NULL, 10) : 1;
    return v < 1 ? 1u : (unsigned)v;
}

enum { MAX_PUBS = 8, MAX_SUBS = 64, MAX_KEYS = 32 };

struct srec {
    eb_delivery mode;
    int only_producer; /* -1: pattern matches every producer */
    unsigned expected; /* deliveries expected */
    atomic_uint n;
    uint32_t cap;
    uint64_t *seq;
    uint32_t *prod;
    uint32_t *pseq;
    atomic_uchar *seen; /* per event: times delivered */
    atomic_uint in_flight;
    atomic_uint max_in_flight;
    atomic_uint key_in_flight[MAX_KEYS];
    atomic_uint key_overlap; /* two calls of one key at once */
    atomic_uint bad_payload;
    eb_subscription *sub;
    bool late_check; /* churn: count calls after unsubscribe returned */
    atomic_int unsubscribed;
    atomic_uint late_calls;
};

struct run {
    unsigned pubs;
    unsigned per_pub;
    unsigned keys;
    unsigned nsubs;
    struct srec subs[MAX_SUBS];
    eb_bus *bus;
    pthread_barrier_t barrier;
    atomic_uint publish_errors;
    atomic_int last_error;
    unsigned wait_every; /* every Nth publish is a publish_wait (0: none) */
    atomic_uint wait_mismatch;
};

static unsigned key_of(const struct run *r, uint32_t producer, uint32_t pseq)
{
    return (producer * 7u + pseq) % r->keys;
}

static void srec_init(struct srec *s, unsigned total, eb_delivery mode, int only_producer)
{
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->only_producer = only_producer;
    s->cap = total;
    s->seq = calloc(total, sizeof *s->seq);
    s->prod = calloc(total, sizeof *s->prod);
    s->pseq = calloc(total, sizeof *s->pseq);
    s->seen = calloc(total, sizeof *s->seen);
    cr_assert(s->seq && s->prod && s->pseq && s->seen);
}

static void srec_free(struct srec *s)
{
    free(s->seq);
    free(s->prod);
    free(s->pseq);
    free((void *)s->seen);
}

/* The run a handler belongs to; handlers get their srec as ctx and find the
   run through this (one run at a time per test process). */
static struct run *g_run;

static void max_update(atomic_uint *max, unsigned v)
{
    unsigned m = atomic_load(max);
    while (v > m && !atomic_compare_exchange_weak(max, &m, v)) {
    }
}

static int stress_handler(const eb_event *ev, void *ctx)
{
    struct srec *s = ctx;
    struct run *r = g_run;
    if (s->late_check && atomic_load(&s->unsubscribed)) {
        atomic_fetch_add(&s->late_calls, 1);
    }
    unsigned now = atomic_fetch_add(&s->in_flight, 1) + 1;
    max_update(&s->max_in_flight, now);
    size_t len = 0;
    const void *p = eb_event_payload(ev, &len);
    tag t;
    if (len != sizeof t) {
        atomic_fetch_add(&s->bad_payload, 1);
        atomic_fetch_sub(&s->in_flight, 1);
        return 0;
    }
    memcpy(&t, p, sizeof t);
    if (t.producer >= r->pubs || t.pseq >= r->per_pub) {
        atomic_fetch_add(&s->bad_payload, 1);
        atomic_fetch_sub(&s->in_flight, 1);
        return 0;
    }
    unsigned k = key_of(r, t.producer, t.pseq);
    if (s->mode == EB_DELIVERY_KEYED && atomic_fetch_add(&s->key_in_flight[k], 1) != 0) {
        atomic_fetch_add(&s->key_overlap, 1);
    }
    atomic_fetch_add(&s->seen[t.producer * r->per_pub + t.pseq], 1);
    unsigned i = atomic_fetch_add(&s->n, 1);
    if (i < s->cap) {
        s->seq[i] = eb_event_seq(ev);
        s->prod[i] = t.producer;
        s->pseq[i] = t.pseq;
    }
    if (s->mode == EB_DELIVERY_KEYED) {
        atomic_fetch_sub(&s->key_in_flight[k], 1);
    }
    atomic_fetch_sub(&s->in_flight, 1);
    return 0;
}

struct pub_arg {
    struct run *r;
    uint32_t id;
};

static void *publisher(void *arg)
{
    struct pub_arg *a = arg;
    struct run *r = a->r;
    char topic[32];
    snprintf(topic, sizeof topic, "stress.p%u", a->id);
    pthread_barrier_wait(&r->barrier);
    for (uint32_t i = 0; i < r->per_pub; i++) {
        tag t = {a->id, i};
        char key[16];
        int klen = snprintf(key, sizeof key, "key-%u", key_of(r, a->id, i));
        eb_publish_options o;
        eb_publish_options_init(&o);
        o.key = key;
        o.key_len = (size_t)klen;
        int rc;
        if (r->wait_every && i % r->wait_every == 0) {
            o.timeout_ns = t_wait_budget_ns() * 4;
            eb_publish_result res;
            rc = eb_publish_wait(r->bus, topic, &t, sizeof t, &o, &res);
            if (rc == EB_OK) {
                unsigned want = 0;
                for (unsigned s = 0; s < r->nsubs; s++) {
                    if (r->subs[s].only_producer < 0 || r->subs[s].only_producer == (int)a->id) {
                        want++;
                    }
                }
                if (res.matched != want || res.delivered != want) {
                    atomic_fetch_add(&r->wait_mismatch, 1);
                }
            }
        } else {
            rc = eb_publish(r->bus, topic, &t, sizeof t, &o);
        }
        if (rc != EB_OK) {
            atomic_fetch_add(&r->publish_errors, 1);
            atomic_store(&r->last_error, rc);
        }
    }
    return NULL;
}

static void add_sub(struct run *r, const char *pattern, eb_delivery mode, unsigned lanes,
                    int only_producer)
{
    cr_assert_lt(r->nsubs, MAX_SUBS);
    struct srec *s = &r->subs[r->nsubs];
    unsigned total = r->pubs * r->per_pub;
    srec_init(s, total, mode, only_producer);
    s->expected = only_producer < 0 ? total : r->per_pub;
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = mode;
    o.lanes = lanes;
    int rc = eb_subscribe(r->bus, pattern, stress_handler, s, &o, &s->sub);
    cr_assert_eq(rc, EB_OK, "subscribe %s: %s", pattern, eb_err_name(rc));
    r->nsubs++;
}

static void run_init(struct run *r, unsigned pubs, unsigned per_pub, unsigned keys,
                     unsigned workers, unsigned intake, unsigned mailbox)
{
    memset(r, 0, sizeof *r);
    r->pubs = pubs;
    r->per_pub = per_pub;
    r->keys = keys;
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = workers;
    cfg.intake_capacity = intake;
    cfg.mailbox_capacity = mailbox;
    cr_assert_eq(eb_bus_create(&cfg, &r->bus), EB_OK);
    g_run = r;
}

/* Releases the publishers together, waits for them and for every delivery,
   destroys the bus. Returns false if deliveries did not complete in time. */
static bool run_publishers(struct run *r)
{
    pthread_t th[MAX_PUBS];
    struct pub_arg args[MAX_PUBS];
    cr_assert_eq(pthread_barrier_init(&r->barrier, NULL, r->pubs + 1), 0);
    for (unsigned i = 0; i < r->pubs; i++) {
        args[i] = (struct pub_arg){r, i};
        cr_assert_eq(pthread_create(&th[i], NULL, publisher, &args[i]), 0);
    }
    pthread_barrier_wait(&r->barrier);
    for (unsigned i = 0; i < r->pubs; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_barrier_destroy(&r->barrier);
    bool ok = true;
    int64_t deadline = t_now_ns() + t_wait_budget_ns() * (2 + stress_scale());
    for (unsigned s = 0; s < r->nsubs && ok; s++) {
        while (atomic_load(&r->subs[s].n) < r->subs[s].expected) {
            if (t_now_ns() > deadline) {
                ok = false;
                break;
            }
            t_sleep_ns(200000);
        }
    }
    eb_bus_destroy(r->bus);
    r->bus = NULL;
    return ok;
}

/* Checks every recorded subscription and frees the records. */
static void run_check(struct run *r, bool completed)
{
    (void)completed; /* an incomplete run shows up as losses below */
    cr_assert_eq(atomic_load(&r->publish_errors), 0, "%u publishes failed, last %s",
                 atomic_load(&r->publish_errors), eb_err_name(atomic_load(&r->last_error)));
    cr_assert_eq(atomic_load(&r->wait_mismatch), 0, "publish_wait results disagreed");
    const struct srec *first_serial = NULL;
    for (unsigned si = 0; si < r->nsubs; si++) {
        struct srec *s = &r->subs[si];
        unsigned n = atomic_load(&s->n);
        cr_assert_eq(atomic_load(&s->bad_payload), 0, "sub %u: corrupt payloads", si);
        /* Losses and duplicates. */
        unsigned lost = 0, dup = 0;
        for (unsigned p = 0; p < r->pubs; p++) {
            if (s->only_producer >= 0 && (int)p != s->only_producer) {
                for (unsigned i = 0; i < r->per_pub; i++) {
                    cr_assert_eq(atomic_load(&s->seen[p * r->per_pub + i]), 0,
                                 "sub %u got producer %u's event", si, p);
                }
                continue;
            }
            for (unsigned i = 0; i < r->per_pub; i++) {
                unsigned c = atomic_load(&s->seen[p * r->per_pub + i]);
                lost += c == 0;
                dup += c > 1 ? c - 1 : 0;
            }
        }
        cr_assert_eq(lost, 0, "sub %u (mode %d): %u events lost", si, s->mode, lost);
        cr_assert_eq(dup, 0, "sub %u (mode %d): %u duplicates", si, s->mode, dup);
        cr_assert_eq(n, s->expected, "sub %u: %u deliveries, expected %u", si, n, s->expected);

        if (s->mode == EB_DELIVERY_SERIAL) {
            cr_assert_eq(atomic_load(&s->max_in_flight), 1, "sub %u: SERIAL ran concurrently", si);
            uint32_t next[MAX_PUBS] = {0};
            for (unsigned i = 0; i < n; i++) {
                if (i > 0) {
                    cr_assert_gt(s->seq[i], s->seq[i - 1], "sub %u: seq went back at %u", si, i);
                }
                cr_assert_eq(s->pseq[i], next[s->prod[i]],
                             "sub %u: producer %u's event %u arrived when %u was due", si,
                             s->prod[i], s->pseq[i], next[s->prod[i]]);
                next[s->prod[i]] = s->pseq[i] + 1;
            }
            if (s->only_producer < 0) {
                if (first_serial == NULL) {
                    first_serial = s;
                } else {
                    for (unsigned i = 0; i < n; i++) {
                        cr_assert_eq(s->seq[i], first_serial->seq[i],
                                     "sub %u: total order differs from the first SERIAL "
                                     "subscription at %u",
                                     si, i);
                        cr_assert(s->prod[i] == first_serial->prod[i] &&
                                      s->pseq[i] == first_serial->pseq[i],
                                  "sub %u: seq %llu names a different event", si,
                                  (unsigned long long)s->seq[i]);
                    }
                }
            }
        } else if (s->mode == EB_DELIVERY_KEYED) {
            cr_assert_eq(atomic_load(&s->key_overlap), 0, "sub %u: one key ran two calls at once",
                         si);
            uint64_t last_seq[MAX_KEYS] = {0};
            int64_t last_pseq[MAX_KEYS][MAX_PUBS];
            for (unsigned k = 0; k < MAX_KEYS; k++) {
                for (unsigned p = 0; p < MAX_PUBS; p++) {
                    last_pseq[k][p] = -1;
                }
            }
            for (unsigned i = 0; i < n; i++) {
                unsigned k = key_of(r, s->prod[i], s->pseq[i]);
                cr_assert_gt(s->seq[i], last_seq[k], "sub %u key %u: seq went back", si, k);
                last_seq[k] = s->seq[i];
                cr_assert_gt((int64_t)s->pseq[i], last_pseq[k][s->prod[i]],
                             "sub %u key %u: producer %u order broken", si, k, s->prod[i]);
                last_pseq[k][s->prod[i]] = s->pseq[i];
            }
        }
    }
    for (unsigned si = 0; si < r->nsubs; si++) {
        srec_free(&r->subs[si]);
    }
}

Test(stress, serial_subscriptions_lose_nothing_and_share_one_total_order)
{
    struct run *r = malloc(sizeof *r);
    run_init(r, 4, 2000 * stress_scale(), 8, 2, 0, 0);
    for (int i = 0; i < 8; i++) {
        add_sub(r, i % 2 ? "stress.#" : "#", EB_DELIVERY_SERIAL, 0, -1);
    }
    bool ok = run_publishers(r);
    run_check(r, ok);
    cr_assert(ok, "deliveries did not complete in time");
    free(r);
}

Test(stress, keyed_subscriptions_keep_order_per_key_under_eight_publishers)
{
    struct run *r = malloc(sizeof *r);
    run_init(r, 8, 1000 * stress_scale(), 13, 2, 0, 0);
    static const unsigned lanes[] = {1, 4, 16, 64};
    for (int i = 0; i < 4; i++) {
        add_sub(r, "stress.*", EB_DELIVERY_KEYED, lanes[i], -1);
    }
    add_sub(r, "stress.#", EB_DELIVERY_SERIAL, 0, -1);
    bool ok = run_publishers(r);
    run_check(r, ok);
    cr_assert(ok, "deliveries did not complete in time");
    free(r);
}

Test(stress, concurrent_subscriptions_lose_and_duplicate_nothing)
{
    struct run *r = malloc(sizeof *r);
    run_init(r, 8, 1000 * stress_scale(), 8, 2, 0, 0);
    add_sub(r, "#", EB_DELIVERY_CONCURRENT, 0, -1);
    add_sub(r, "stress.*", EB_DELIVERY_CONCURRENT, 64, -1);
    add_sub(r, "*.#", EB_DELIVERY_CONCURRENT, 2, -1);
    bool ok = run_publishers(r);
    run_check(r, ok);
    cr_assert(ok, "deliveries did not complete in time");
    free(r);
}

Test(stress, sixty_four_mixed_subscriptions_under_two_publishers)
{
    struct run *r = malloc(sizeof *r);
    run_init(r, 2, 1000 * stress_scale(), 16, 2, 0, 0);
    for (int i = 0; i < MAX_SUBS; i++) {
        eb_delivery mode = (eb_delivery)(i % 3);
        unsigned lanes = mode == EB_DELIVERY_SERIAL ? 0 : (unsigned)(1 << (i % 7));
        switch (i % 4) {
        case 0:
            add_sub(r, "stress.#", mode, lanes, -1);
            break;
        case 1:
            add_sub(r, "*.*", mode, lanes, -1);
            break;
        case 2:
            add_sub(r, i % 8 == 2 ? "stress.p0" : "*.p1", mode, lanes, i % 8 == 2 ? 0 : 1);
            break;
        default:
            add_sub(r, "#.p0", mode, lanes, 0);
            break;
        }
    }
    bool ok = run_publishers(r);
    run_check(r, ok);
    cr_assert(ok, "deliveries did not complete in time");
    free(r);
}

Test(stress, tiny_rings_and_mailboxes_apply_backpressure_without_losing_events)
{
    struct run *r = malloc(sizeof *r);
    run_init(r, 8, 500 * stress_scale(), 8, 2, 4, 2);
    add_sub(r, "#", EB_DELIVERY_SERIAL, 0, -1);
    add_sub(r, "stress.*", EB_DELIVERY_KEYED, 4, -1);
    add_sub(r, "stress.#", EB_DELIVERY_CONCURRENT, 0, -1);
    add_sub(r, "stress.#", EB_DELIVERY_SERIAL, 1, -1);
    bool ok = run_publishers(r);
    run_check(r, ok);
    cr_assert(ok, "deliveries did not complete in time");
    free(r);
}

Test(stress, many_threads_publishing_and_waiting_see_full_results)
{
    struct run *r = malloc(sizeof *r);
    run_init(r, 4, 400 * stress_scale(), 8, 2, 0, 0);
    r->wait_every = 4;
    add_sub(r, "#", EB_DELIVERY_SERIAL, 0, -1);
    add_sub(r, "stress.*", EB_DELIVERY_KEYED, 0, -1);
    add_sub(r, "stress.#", EB_DELIVERY_CONCURRENT, 0, -1);
    add_sub(r, "stress.p2", EB_DELIVERY_SERIAL, 0, 2);
    bool ok = run_publishers(r);
    run_check(r, ok);
    cr_assert(ok, "deliveries did not complete in time");
    free(r);
}

/* ---- drop policy under load ---- */

struct drop_rec {
    atomic_uint n;
    atomic_uint overlap;
    atomic_uint in_flight;
    atomic_uchar *seen;
    uint32_t *next; /* per producer: smallest pseq still acceptable */
    atomic_uint order_violations;
    unsigned per_pub;
};

static int drop_handler(const eb_event *ev, void *ctx)
{
    struct drop_rec *d = ctx;
    if (atomic_fetch_add(&d->in_flight, 1) != 0) {
        atomic_fetch_add(&d->overlap, 1);
    }
    tag t;
    memcpy(&t, eb_event_payload(ev, NULL), sizeof t);
    atomic_fetch_add(&d->seen[t.producer * d->per_pub + t.pseq], 1);
    if (t.pseq < d->next[t.producer]) {
        atomic_fetch_add(&d->order_violations, 1);
    }
    d->next[t.producer] = t.pseq + 1;
    if (t.pseq % 16 == 0) {
        t_sleep_ns(20000); /* slow enough to overflow the mailbox */
    }
    atomic_fetch_add(&d->n, 1);
    atomic_fetch_sub(&d->in_flight, 1);
    return 0;
}

static void drop_run(eb_overflow policy)
{
    struct run *r = malloc(sizeof *r);
    unsigned pubs = 4, per = 2000 * stress_scale(), total = pubs * per;
    run_init(r, pubs, per, 8, 2, 0, 0);
    /* A lossless SERIAL observer next to the dropping one. */
    add_sub(r, "#", EB_DELIVERY_SERIAL, 0, -1);
    struct drop_rec d;
    memset(&d, 0, sizeof d);
    d.per_pub = per;
    d.seen = calloc(total, sizeof *d.seen);
    d.next = calloc(pubs, sizeof *d.next);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.mailbox_capacity = 4;
    o.overflow = policy;
    eb_subscription *sub = NULL;
    cr_assert_eq(eb_subscribe(r->bus, "stress.#", drop_handler, &d, &o, &sub), EB_OK);

    bool ok = true;
    {
        /* run_publishers destroys the bus: read the dropping subscription's
           counters first, so publish, then wait here. */
        pthread_t th[MAX_PUBS];
        struct pub_arg args[MAX_PUBS];
        cr_assert_eq(pthread_barrier_init(&r->barrier, NULL, pubs + 1), 0);
        for (unsigned i = 0; i < pubs; i++) {
            args[i] = (struct pub_arg){r, i};
            cr_assert_eq(pthread_create(&th[i], NULL, publisher, &args[i]), 0);
        }
        pthread_barrier_wait(&r->barrier);
        for (unsigned i = 0; i < pubs; i++) {
            pthread_join(th[i], NULL);
        }
        pthread_barrier_destroy(&r->barrier);
    }
    eb_subscription_stats ss;
    int64_t deadline = t_now_ns() + t_wait_budget_ns() * (2 + stress_scale());
    for (;;) {
        cr_assert_eq(eb_subscription_stats_get(sub, &ss), EB_OK);
        if ((ss.delivered + ss.dropped >= total && ss.lag == 0 &&
             atomic_load(&r->subs[0].n) >= total) ||
            t_now_ns() > deadline) {
            break;
        }
        t_sleep_ns(500000);
    }
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(r->bus, &st), EB_OK);
    eb_bus_destroy(r->bus);
    r->bus = NULL;
    ok = ss.delivered + ss.dropped == total;
    unsigned dup = 0, seen = 0;
    for (unsigned i = 0; i < total; i++) {
        unsigned c = atomic_load(&d.seen[i]);
        seen += c > 0;
        dup += c > 1 ? c - 1 : 0;
    }
    unsigned n = atomic_load(&d.n);
    unsigned overlap = atomic_load(&d.overlap);
    unsigned order = atomic_load(&d.order_violations);
    free((void *)d.seen);
    free(d.next);
    run_check(r, true);
    free(r);
    cr_assert(ok, "delivered %llu + dropped %llu != %u", (unsigned long long)ss.delivered,
              (unsigned long long)ss.dropped, total);
    cr_assert_eq(dup, 0, "%u duplicates", dup);
    cr_assert_eq(n, ss.delivered);
    cr_assert_eq(seen, n);
    cr_assert_eq(st.dropped, ss.dropped, "bus and subscription disagree on drops");
    cr_assert_eq(overlap, 0, "SERIAL dropping subscription ran concurrently");
    cr_assert_eq(order, 0, "a dropping SERIAL subscription delivered out of order");
}

Test(stress, drop_newest_accounts_for_every_event_under_load)
{
    drop_run(EB_OVERFLOW_DROP_NEWEST);
}

Test(stress, drop_oldest_accounts_for_every_event_under_load)
{
    drop_run(EB_OVERFLOW_DROP_OLDEST);
}

/* ---- subscription churn while publishing ---- */

struct churn {
    eb_bus *bus;
    atomic_int stop;
    atomic_uint rounds;
    atomic_uint late_calls;
    atomic_uint errors;
};

struct churn_sub {
    atomic_int unsubscribed;
    atomic_uint late;
};

static int churn_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct churn_sub *c = ctx;
    if (atomic_load(&c->unsubscribed)) {
        atomic_fetch_add(&c->late, 1);
    }
    return 0;
}

static void *churner(void *arg)
{
    struct churn *c = arg;
    static const char *patterns[] = {"stress.#", "*.p1", "#", "stress.p0"};
    unsigned i = 0;
    while (!atomic_load(&c->stop)) {
        struct churn_sub cs;
        atomic_init(&cs.unsubscribed, 0);
        atomic_init(&cs.late, 0);
        eb_subscribe_options o;
        eb_subscribe_options_init(&o);
        o.delivery = (eb_delivery)(i % 3);
        eb_subscription *sub = NULL;
        if (eb_subscribe(c->bus, patterns[i % 4], churn_handler, &cs, &o, &sub) != EB_OK) {
            atomic_fetch_add(&c->errors, 1);
            break;
        }
        t_sleep_ns(200000);
        if (eb_unsubscribe(sub) != EB_OK) {
            atomic_fetch_add(&c->errors, 1);
        }
        atomic_store(&cs.unsubscribed, 1);
        /* Any call that starts now would touch a dead stack frame in real
           code; here it is counted. */
        t_sleep_ns(100000);
        atomic_fetch_add(&c->late_calls, atomic_load(&cs.late));
        atomic_fetch_add(&c->rounds, 1);
        i++;
    }
    return NULL;
}

Test(stress, subscribing_and_unsubscribing_while_publishing_loses_nothing)
{
    struct run *r = malloc(sizeof *r);
    run_init(r, 4, 2000 * stress_scale(), 8, 2, 0, 0);
    add_sub(r, "#", EB_DELIVERY_SERIAL, 0, -1);
    add_sub(r, "stress.*", EB_DELIVERY_KEYED, 8, -1);
    struct churn c;
    memset(&c, 0, sizeof c);
    c.bus = r->bus;
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, churner, &c), 0);
    pthread_t pubs[MAX_PUBS];
    struct pub_arg args[MAX_PUBS];
    cr_assert_eq(pthread_barrier_init(&r->barrier, NULL, r->pubs + 1), 0);
    for (unsigned i = 0; i < r->pubs; i++) {
        args[i] = (struct pub_arg){r, i};
        cr_assert_eq(pthread_create(&pubs[i], NULL, publisher, &args[i]), 0);
    }
    pthread_barrier_wait(&r->barrier);
    for (unsigned i = 0; i < r->pubs; i++) {
        pthread_join(pubs[i], NULL);
    }
    pthread_barrier_destroy(&r->barrier);
    atomic_store(&c.stop, 1);
    pthread_join(th, NULL);
    bool ok = true;
    int64_t deadline = t_now_ns() + t_wait_budget_ns() * (2 + stress_scale());
    for (unsigned s = 0; s < r->nsubs && ok; s++) {
        while (atomic_load(&r->subs[s].n) < r->subs[s].expected && ok) {
            ok = t_now_ns() < deadline;
            t_sleep_ns(200000);
        }
    }
    eb_bus_destroy(r->bus);
    r->bus = NULL;
    run_check(r, ok);
    free(r);
    cr_assert(ok);
    cr_assert_eq(atomic_load(&c.errors), 0);
    cr_assert_gt(atomic_load(&c.rounds), 0);
    cr_assert_eq(atomic_load(&c.late_calls), 0, "%u calls after unsubscribe returned",
                 atomic_load(&c.late_calls));
}

/* ---- a handler's own events while the side list is taken ------------------- */

/* Handlers publish runs of numbered events while due delayed events spill
   into the side list (an intake of 3): the dispatcher keeps taking the side
   list while handlers publish. Each handler call's events must reach the
   SERIAL observer in the order it published them. The list used to be
   taken by clearing its count before marking it busy: a handler publishing
   in between went to the intake ahead of its own earlier side events. */
struct side_order {
    eb_bus *bus;
    atomic_int stop;
    atomic_uint calls;      /* handler calls: numbers them */
    atomic_ullong accepted; /* their events the bus accepted (not once closing) */
    /* The observer is SERIAL: one call at a time. */
    uint32_t last_call, last_i;
    uint64_t seen, inversions;
};

static int side_order_observe(const eb_event *ev, void *ctx)
{
    struct side_order *so = ctx;
    size_t len;
    const uint32_t *v = eb_event_payload(ev, &len);
    if (len == 8) {
        if (v[0] == so->last_call && v[1] <= so->last_i)
            so->inversions++;
        so->last_call = v[0];
        so->last_i = v[1];
        so->seen++;
    }
    return 0;
}

static int side_order_publisher(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct side_order *so = ctx;
    uint32_t call = atomic_fetch_add(&so->calls, 1) + 1;
    for (uint32_t i = 0; i < 64; i++) {
        uint32_t v[2] = {call, i};
        if (eb_publish(so->bus, "side.x", v, sizeof v, NULL) == EB_OK)
            atomic_fetch_add(&so->accepted, 1);
    }
    return 0;
}

static int side_order_sink(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    return 0;
}

static void *side_order_delayed(void *arg)
{
    struct side_order *so = arg;
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.delay_ns = 1;
    for (unsigned n = 1; !atomic_load(&so->stop); n++) {
        eb_publish(so->bus, "side.d", NULL, 0, &o);
        if (n % 64 == 0)
            sched_yield();
    }
    return NULL;
}

static void *side_order_trigger(void *arg)
{
    struct side_order *so = arg;
    while (!atomic_load(&so->stop))
        eb_publish(so->bus, "side.trig", NULL, 0, NULL);
    return NULL;
}

Test(stress, a_handlers_events_keep_their_order_while_the_side_list_is_taken)
{
    static struct side_order so;
    memset(&so, 0, sizeof so);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.intake_capacity = 3;
    cr_assert_eq(eb_bus_create(&cfg, &so.bus), EB_OK);
    cr_assert_eq(eb_subscribe(so.bus, "side.x", side_order_observe, &so, NULL, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(so.bus, "side.d", side_order_sink, NULL, NULL, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(so.bus, "side.trig", side_order_publisher, &so, NULL, NULL), EB_OK);
    pthread_t d, t;
    cr_assert_eq(pthread_create(&d, NULL, side_order_delayed, &so), 0);
    cr_assert_eq(pthread_create(&t, NULL, side_order_trigger, &so), 0);
    t_sleep_ms(1500 * stress_scale());
    atomic_store(&so.stop, 1);
    pthread_join(d, NULL);
    pthread_join(t, NULL);
    eb_bus_destroy(so.bus); /* delivers everything first */
    cr_assert_eq(so.seen, atomic_load(&so.accepted), "%llu of %llu accepted events",
                 (unsigned long long)so.seen, (unsigned long long)atomic_load(&so.accepted));
    cr_assert_gt(so.seen, 0);
    cr_assert_eq(so.inversions, 0, "%llu events arrived before an earlier one of the same call",
                 (unsigned long long)so.inversions);
}
