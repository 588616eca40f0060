/*
 * eb_publish_batch: order, validation before anything is published, the
 * accepted prefix on a full intake, and that carriers do not let a batch
 * publisher hold more events on the intake than its capacity.
 */
#include "common.h"

TestSuite(batch, .timeout = EB_CRITERION_TIMEOUT);

enum { N = 1000 };

static void fill(eb_message *m, uint32_t *vals, unsigned n, const char *topic)
{
    for (uint32_t i = 0; i < n; i++) {
        vals[i] = i;
        m[i] = (eb_message){.topic = topic, .payload = &vals[i], .len = sizeof vals[i]};
    }
}

/* Publishes events 0 .. n-1 (4-byte payloads) on topic in one batch. */
static void publish_numbered(eb_bus *bus, const char *topic, unsigned n)
{
    eb_message m[64];
    uint32_t vals[64];
    cr_assert(n <= 64);
    fill(m, vals, n, topic);
    cr_assert_eq(eb_publish_batch(bus, m, n, NULL, NULL), EB_OK);
}

Test(batch, a_batch_is_delivered_whole_and_in_order)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "b", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    static eb_message m[N];
    static uint32_t vals[N];
    fill(m, vals, N, "b");
    size_t accepted = 0;
    cr_assert_eq(eb_publish_batch(bus, m, N, NULL, &accepted), EB_OK);
    cr_assert_eq(accepted, N);
    cr_assert(t_wait_ge(&c.calls, N));
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.published, N);
    eb_bus_destroy(bus);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(c.rec[i], i, "event %u arrived as %u", i, c.rec[i]);
}

Test(batch, one_bad_message_refuses_the_whole_batch)
{
    eb_bus *bus = t_bus_new(1);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "#", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    eb_message m[3] = {{.topic = "ok", .payload = "x", .len = 1},
                       {.topic = "ok", .payload = NULL, .len = 5},
                       {.topic = "ok", .payload = "x", .len = 1}};
    size_t accepted = 77;
    cr_assert_eq(eb_publish_batch(bus, m, 3, NULL, &accepted), EB_EINVAL);
    cr_assert_eq(accepted, 77, "accepted must be untouched on EB_EINVAL");
    m[1] = (eb_message){.topic = NULL};
    cr_assert_eq(eb_publish_batch(bus, m, 3, NULL, NULL), EB_EINVAL);
    cr_assert_eq(eb_publish_batch(bus, NULL, 3, NULL, NULL), EB_EINVAL);
    cr_assert_eq(eb_publish_batch(NULL, m, 1, NULL, NULL), EB_EINVAL);
    cr_assert_eq(eb_publish_batch(bus, NULL, 0, NULL, &accepted), EB_OK);
    cr_assert_eq(accepted, 0);
    /* Refusals after validation say their (empty) prefix. */
    eb_publish_options durable;
    eb_publish_options_init(&durable);
    durable.flags = EB_PUBLISH_DURABLE;
    accepted = 77;
    cr_assert_eq(eb_publish_batch(bus, &m[0], 1, &durable, &accepted), EB_ENOTSUP, "no store");
    cr_assert_eq(accepted, 0);
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.published, 0);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&c.calls), 0);
}

struct gate_rec {
    t_gate gate;
    atomic_uint calls;
};

static int gated(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct gate_rec *g = ctx;
    if (atomic_fetch_add(&g->calls, 1) == 0)
        t_gate_wait(&g->gate);
    return 0;
}

Test(batch, a_closed_bus_refuses_a_batch_and_says_none_was_accepted)
{
    eb_bus *bus = t_bus_new(1);
    struct gate_rec g;
    t_gate_init(&g.gate);
    atomic_init(&g.calls, 0);
    t_sub(bus, "held", gated, &g, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(t_pub_u32(bus, "held", 1), EB_OK);
    cr_assert(t_wait_ge(&g.calls, 1));
    cr_assert_eq(eb_bus_shutdown(bus, 0), EB_ETIMEDOUT, "a handler still runs");
    eb_message m = {.topic = "held", .payload = "x", .len = 1};
    size_t accepted = 77;
    cr_assert_eq(eb_publish_batch(bus, &m, 1, NULL, &accepted), EB_ECLOSED);
    cr_assert_eq(accepted, 0, "*accepted left at %zu", accepted);
    t_gate_open(&g.gate);
    eb_bus_destroy(bus);
}

Test(batch, a_full_intake_returns_eagain_with_the_accepted_prefix_and_bounds_the_events)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.intake_capacity = 63;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    struct gate_rec g = {0};
    t_gate_init(&g.gate);
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.mailbox_capacity = 7;
    cr_assert_eq(eb_subscribe(bus, "full", gated, &g, &so, NULL), EB_OK);
    cr_assert_eq(eb_publish(bus, "full", "x", 1, NULL), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&g.gate.waiting) == 1);
    cr_assert(ok);

    static eb_message m[N];
    static uint32_t vals[N];
    fill(m, vals, N, "full");
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = 0;
    size_t total = 0;
    int rc = EB_OK;
    for (int round = 0; round < 20 && rc == EB_OK; round++) {
        size_t accepted = 0;
        rc = eb_publish_batch(bus, m, N, &o, &accepted);
        cr_assert(accepted <= N);
        total += accepted;
    }
    cr_assert_eq(rc, EB_EAGAIN, "got %s", eb_err_name(rc));
    /* The handler holds one event; the mailbox, the held batch, the intake
       (entries and carried events) bound the rest — far below 48 events per
       intake entry. */
    cr_assert_leq(total, 7 + 1 + 176 + 63 + 63 + 48, "%zu events accepted", total);
    t_gate_open(&g.gate);
    cr_assert(t_wait_ge(&g.calls, (unsigned)total + 1));
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&g.calls), total + 1, "every accepted event is delivered");
}

static atomic_uint freed;
static void count_free(void *p)
{
    (void)p;
    atomic_fetch_add(&freed, 1);
}

Test(batch, zero_copy_payloads_of_a_batch_are_each_freed_once)
{
    atomic_store(&freed, 0);
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "z", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    static eb_message m[100];
    static uint32_t vals[100];
    fill(m, vals, 100, "z");
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.payload_free = count_free;
    size_t accepted = 0;
    cr_assert_eq(eb_publish_batch(bus, m, 100, &o, &accepted), EB_OK);
    cr_assert_eq(accepted, 100);
    cr_assert(t_wait_ge(&c.calls, 100));
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&freed), 100);
}

/* Regression: a batch publisher read its carrier after handing it to the
   dispatcher, which may already have unpacked and freed it and a worker
   reused the block (here: handlers that publish batches themselves). Events
   were then duplicated or lost. Counts every event of every stage. */
enum { RB_THREADS = 2, RB_PER = 20000, RB_BATCH = 50 };

struct relay {
    eb_bus *bus;
    atomic_uchar seen1[RB_THREADS * RB_PER];
    atomic_uchar seen2[RB_THREADS * RB_PER];
    atomic_uint n1, n2, dups, relay_errors;
};

static int relay_first(const eb_event *ev, void *ctx)
{
    struct relay *r = ctx;
    uint32_t id;
    memcpy(&id, eb_event_payload(ev, NULL), sizeof id);
    if (atomic_fetch_add(&r->seen1[id], 1) != 0)
        atomic_fetch_add(&r->dups, 1);
    atomic_fetch_add(&r->n1, 1);
    eb_message m = {.topic = "relay.second", .payload = &id, .len = sizeof id};
    if (eb_publish_batch(r->bus, &m, 1, NULL, NULL) != EB_OK)
        atomic_fetch_add(&r->relay_errors, 1);
    return 0;
}

static int relay_second(const eb_event *ev, void *ctx)
{
    struct relay *r = ctx;
    uint32_t id;
    memcpy(&id, eb_event_payload(ev, NULL), sizeof id);
    if (atomic_fetch_add(&r->seen2[id], 1) != 0)
        atomic_fetch_add(&r->dups, 1);
    atomic_fetch_add(&r->n2, 1);
    return 0;
}

struct relay_pub {
    struct relay *r;
    uint32_t base;
    int rc;
};

static void *relay_publisher(void *arg)
{
    struct relay_pub *p = arg;
    static _Thread_local uint32_t ids[RB_BATCH];
    eb_message m[RB_BATCH];
    for (uint32_t i = 0; i < RB_PER && p->rc == EB_OK; i += RB_BATCH) {
        for (uint32_t j = 0; j < RB_BATCH; j++) {
            ids[j] = p->base + i + j;
            m[j] = (eb_message){.topic = "relay.first", .payload = &ids[j], .len = sizeof ids[j]};
        }
        size_t accepted = 0;
        p->rc = eb_publish_batch(p->r->bus, m, RB_BATCH, NULL, &accepted);
        if (p->rc == EB_OK && accepted != RB_BATCH)
            p->rc = EB_EIO;
    }
    return NULL;
}

Test(batch, carriers_are_not_touched_after_they_are_handed_over)
{
    struct relay *r = calloc(1, sizeof *r);
    r->bus = t_bus_new(2);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = EB_DELIVERY_CONCURRENT;
    cr_assert_eq(eb_subscribe(r->bus, "relay.first", relay_first, r, &o, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(r->bus, "relay.second", relay_second, r, &o, NULL), EB_OK);
    pthread_t th[RB_THREADS];
    struct relay_pub p[RB_THREADS];
    for (unsigned t = 0; t < RB_THREADS; t++) {
        p[t] = (struct relay_pub){.r = r, .base = t * RB_PER, .rc = EB_OK};
        cr_assert_eq(pthread_create(&th[t], NULL, relay_publisher, &p[t]), 0);
    }
    for (unsigned t = 0; t < RB_THREADS; t++) {
        pthread_join(th[t], NULL);
        cr_assert_eq(p[t].rc, EB_OK, "publisher %u: %s", t, eb_err_name(p[t].rc));
    }
    unsigned total = RB_THREADS * RB_PER;
    cr_assert(t_wait_ge(&r->n2, total), "%u of %u relayed", atomic_load(&r->n2), total);
    eb_bus_destroy(r->bus);
    cr_assert_eq(atomic_load(&r->dups), 0);
    cr_assert_eq(atomic_load(&r->relay_errors), 0);
    cr_assert_eq(atomic_load(&r->n1), total);
    cr_assert_eq(atomic_load(&r->n2), total);
    free(r);
}

/*
 * A run of one topic inside a carrier is routed once (EB__EV_SAME_TOPIC):
 * each event must still reach exactly the subscriptions of its own topic, in
 * order, including when a full mailbox stops the dispatcher in the middle of
 * a run and it resumes later.
 */
enum { RUNS_N = 3000 };

struct recorder {
    atomic_uint n;
    uint32_t rec[RUNS_N];
    unsigned slow_first; /* sleep 50 us in each of the first calls */
};

static int record(const eb_event *ev, void *ctx)
{
    struct recorder *r = ctx;
    uint32_t v = t_u32(ev);
    unsigned i = atomic_fetch_add(&r->n, 1);
    if (i < RUNS_N)
        r->rec[i] = v;
    if (i < r->slow_first)
        t_sleep_ns(50000);
    return 0;
}

static void expect_in_order(const struct recorder *r, const uint32_t *want, unsigned n,
                            const char *who)
{
    cr_assert_eq(atomic_load(&r->n), n, "%s: %u deliveries, expected %u", who, atomic_load(&r->n),
                 n);
    for (unsigned i = 0; i < n; i++)
        cr_assert_eq(r->rec[i], want[i], "%s: delivery %u is event %u, expected %u", who, i,
                     r->rec[i], want[i]);
}

Test(batch, runs_of_one_topic_reach_exactly_their_subscribers_across_stalls)
{
    static const char *const topics[] = {"r.a", "r.b", "r.a.x"};
    static eb_message m[RUNS_N];
    static uint32_t vals[RUNS_N];
    static uint32_t want_a[RUNS_N], want_b[RUNS_N], want_star[RUNS_N], want_all[RUNS_N];
    unsigned na = 0, nb = 0, nstar = 0;
    uint64_t rng = 12345;
    for (unsigned i = 0; i < RUNS_N;) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        unsigned t = (unsigned)(rng >> 33) % 3, run = 1 + (unsigned)(rng >> 40) % 60;
        for (; run > 0 && i < RUNS_N; run--, i++) {
            vals[i] = i;
            m[i] = (eb_message){.topic = topics[t], .payload = &vals[i], .len = sizeof vals[i]};
            if (t == 0)
                want_a[na++] = i;
            if (t == 1)
                want_b[nb++] = i;
            if (t != 2)
                want_star[nstar++] = i;
            want_all[i] = i;
        }
    }
    /* Copies of equal topics, not the same pointers: the publisher compares
       the bytes. */
    static char copies[RUNS_N][8];
    for (unsigned i = 0; i < RUNS_N; i += 2) {
        strcpy(copies[i], m[i].topic);
        m[i].topic = copies[i];
    }

    eb_bus *bus = t_bus_new(2);
    static struct recorder ra, rb, rstar, rall;
    ra.slow_first = 200;
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.mailbox_capacity = 2; /* stalls the dispatcher inside runs of r.a */
    cr_assert_eq(eb_subscribe(bus, "r.a", record, &ra, &o, NULL), EB_OK);
    t_sub(bus, "r.b", record, &rb, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "r.*", record, &rstar, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "r.#", record, &rall, EB_DELIVERY_SERIAL, 0);
    for (unsigned i = 0; i < RUNS_N; i += 500) {
        size_t accepted = 0;
        cr_assert_eq(eb_publish_batch(bus, m + i, 500, NULL, &accepted), EB_OK);
        cr_assert_eq(accepted, 500);
    }
    cr_assert(t_quiesce(bus));
    eb_bus_destroy(bus);
    expect_in_order(&ra, want_a, na, "r.a");
    expect_in_order(&rb, want_b, nb, "r.b");
    expect_in_order(&rstar, want_star, nstar, "r.*");
    expect_in_order(&rall, want_all, RUNS_N, "r.#");
}

/* A routing change between two batches of one topic is seen by the second
   one's events, even while the first batch is still held up by a full
   mailbox when the change is made. */
Test(batch, a_subscription_made_between_two_batches_of_one_topic_gets_the_second)
{
    enum { HALF = 300 };
    static eb_message m[2 * HALF];
    static uint32_t vals[2 * HALF], want[2 * HALF];
    for (unsigned i = 0; i < 2 * HALF; i++) {
        vals[i] = want[i] = i;
        m[i] = (eb_message){.topic = "s", .payload = &vals[i], .len = sizeof vals[i]};
    }
    eb_bus *bus = t_bus_new(2);
    static struct recorder r1, r2, r3;
    r1.slow_first = 100;
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.mailbox_capacity = 1;
    eb_subscription *s3 = NULL;
    cr_assert_eq(eb_subscribe(bus, "s", record, &r1, &o, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(bus, "s", record, &r3, NULL, &s3), EB_OK);
    cr_assert_eq(eb_publish_batch(bus, m, HALF, NULL, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(bus, "#", record, &r2, NULL, NULL), EB_OK);
    cr_assert_eq(eb_unsubscribe(s3), EB_OK);
    unsigned r3_after_unsubscribe = atomic_load(&r3.n);
    cr_assert_eq(eb_publish_batch(bus, m + HALF, HALF, NULL, NULL), EB_OK);
    cr_assert(t_quiesce(bus));
    eb_bus_destroy(bus);
    expect_in_order(&r1, want, 2 * HALF, "first subscriber");
    /* The new one: possibly some of the first batch (dispatched after it
       was made), then every event of the second, in order. */
    unsigned n2 = atomic_load(&r2.n);
    cr_assert_geq(n2, HALF);
    for (unsigned i = 0; i < n2; i++)
        cr_assert_eq(r2.rec[i], 2 * HALF - n2 + i, "delivery %u of the new subscription", i);
    cr_assert_eq(atomic_load(&r3.n), r3_after_unsubscribe, "no delivery after eb_unsubscribe");
    cr_assert_leq(r3_after_unsubscribe, HALF);
}

/* Delayed events of a batch go through the timer heap one by one and reach
   the intake among other publishers' events: none may take another event's
   route (the same-topic flag is for carriers only). */
struct topic_count {
    const char *topic;
    atomic_uint n, wrong;
};

static int count_topic(const eb_event *ev, void *ctx)
{
    struct topic_count *c = ctx;
    if (strcmp(eb_event_topic(ev), c->topic) != 0)
        atomic_fetch_add(&c->wrong, 1);
    atomic_fetch_add(&c->n, 1);
    return 0;
}

struct flood {
    eb_bus *bus;
    atomic_bool stop;
    unsigned sent;
};

static void *flood_b(void *arg)
{
    struct flood *f = arg;
    uint32_t v = 0;
    while (!atomic_load(&f->stop)) {
        if (eb_publish(f->bus, "b", &v, sizeof v, NULL) == EB_OK)
            f->sent++;
    }
    return NULL;
}

Test(batch, delayed_events_of_a_batch_keep_their_own_route_among_other_traffic)
{
    enum { BATCHES = 40, PER = 48 };
    eb_bus *bus = t_bus_new(2);
    static struct topic_count a = {.topic = "a"}, b = {.topic = "b"};
    t_sub(bus, "a", count_topic, &a, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "b", count_topic, &b, EB_DELIVERY_SERIAL, 0);
    struct flood f = {.bus = bus};
    atomic_init(&f.stop, false);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, flood_b, &f), 0);
    static eb_message m[PER];
    static uint32_t vals[PER];
    fill(m, vals, PER, "a");
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.delay_ns = 1000000;
    for (unsigned i = 0; i < BATCHES; i++) {
        cr_assert_eq(eb_publish_batch(bus, m, PER, &o, NULL), EB_OK);
        t_sleep_ns(500000);
    }
    t_sleep_ms(5);
    atomic_store(&f.stop, true);
    pthread_join(th, NULL);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&a.n) + atomic_load(&b.n) >= BATCHES * PER + f.sent);
    cr_assert(ok, "%u + %u deliveries of %u", atomic_load(&a.n), atomic_load(&b.n),
              BATCHES * PER + f.sent);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&a.wrong), 0, "events of other topics delivered to \"a\"");
    cr_assert_eq(atomic_load(&b.wrong), 0, "delayed \"a\" events delivered to \"b\"");
    cr_assert_eq(atomic_load(&a.n), BATCHES * PER);
    cr_assert_eq(atomic_load(&b.n), f.sent);
}

/* ---- events built inside their carrier --------------------------------- */

enum { PK_N = 400, PK_BIG = 2000, PK_KEEP = 8 };

struct packed_rec {
    atomic_uint n;
    uint32_t val[PK_N];
    uint64_t seq[PK_N];
    int64_t ts[PK_N];
    uint8_t id[PK_N][16];
    bool payload_ok[PK_N];
    char topic[PK_N][8];
    char key[PK_N][8];             /* "-" when the event has none */
    const eb_event *kept[PK_KEEP]; /* retained past their delivery */
    atomic_uint n_kept;
};

static size_t pk_len(uint32_t i)
{
    return i % 7 == 3 ? PK_BIG : 4 + i % 29;
}

static const char *const pk_topics[] = {"pk.a", "pk.a", "pk.a", "pk.bb.c"};

/* Every fifth event has a key, in the middle of runs of one topic. */
static size_t pk_key(uint32_t i, char out[8])
{
    return i % 5 == 2 ? (size_t)snprintf(out, 8, "k%u", i % 1000) : 0;
}

static bool pk_payload_ok(const eb_event *ev, uint32_t *val)
{
    size_t len = 0;
    const unsigned char *p = eb_event_payload(ev, &len);
    memcpy(val, p, sizeof *val);
    if (len != pk_len(*val) || p[len] != '\0')
        return false;
    for (size_t k = sizeof *val; k < len; k++)
        if (p[k] != (unsigned char)(*val + k))
            return false;
    return true;
}

static int pk_record(const eb_event *ev, void *ctx)
{
    struct packed_rec *r = ctx;
    uint32_t v = 0;
    bool ok = pk_payload_ok(ev, &v);
    unsigned i = atomic_fetch_add(&r->n, 1);
    if (i < PK_N) {
        r->val[i] = v;
        r->seq[i] = eb_event_seq(ev);
        r->ts[i] = eb_event_timestamp(ev);
        eb_event_id(ev, r->id[i]);
        r->payload_ok[i] = ok;
        snprintf(r->topic[i], sizeof r->topic[i], "%s", eb_event_topic(ev));
        size_t kl = 0;
        const char *k = eb_event_key(ev, &kl);
        snprintf(r->key[i], sizeof r->key[i], "%.*s", k != NULL ? (int)kl : 1, k ? k : "-");
    }
    if (v % 50 == 7) {
        unsigned k = atomic_fetch_add(&r->n_kept, 1);
        if (k < PK_KEEP)
            r->kept[k] = eb_event_retain(ev);
    }
    return 0;
}

/* Small events are built inside their carrier's block and take their
   sequence, time and id from it; events too big for the room left get blocks
   of their own in the same carrier. Either way every event keeps its own
   sequence (consecutive, publish order), a UUIDv7 id made of it, its topic,
   key and payload (runs of one topic without keys are built as copies of
   their first event's header: keys and other payload lengths in between),
   and an event retained in its handler outlives its bus. */
Test(batch, events_in_a_carrier_keep_their_own_sequence_id_and_payload_and_outlive_the_bus)
{
    eb_bus *bus = t_bus_new(2);
    static struct packed_rec r;
    memset(&r, 0, sizeof r);
    t_sub(bus, "pk.#", pk_record, &r, EB_DELIVERY_SERIAL, 0);
    static eb_message m[PK_N];
    static unsigned char bufs[PK_N][PK_BIG];
    static char keys[PK_N][8];
    for (uint32_t i = 0; i < PK_N; i++) {
        size_t len = pk_len(i);
        memcpy(bufs[i], &i, sizeof i);
        for (size_t k = sizeof i; k < len; k++)
            bufs[i][k] = (unsigned char)(i + k);
        size_t kl = pk_key(i, keys[i]);
        m[i] = (eb_message){.topic = pk_topics[i % 4],
                            .payload = bufs[i],
                            .len = len,
                            .key = kl > 0 ? keys[i] : NULL,
                            .key_len = kl};
    }
    int64_t before = t_realtime_ns();
    size_t accepted = 0;
    cr_assert_eq(eb_publish_batch(bus, m, PK_N, NULL, &accepted), EB_OK);
    cr_assert_eq(accepted, PK_N);
    cr_assert(t_wait_ge(&r.n, PK_N));
    int64_t after = t_realtime_ns();
    eb_bus_destroy(bus);

    for (uint32_t i = 0; i < PK_N; i++) {
        cr_assert_eq(r.val[i], i, "delivery %u is event %u", i, r.val[i]);
        cr_assert(r.payload_ok[i], "event %u: payload damaged", i);
        cr_assert_str_eq(r.topic[i], pk_topics[i % 4], "event %u: topic", i);
        char key[8] = "-";
        pk_key(i, key);
        cr_assert_str_eq(r.key[i], key, "event %u: key", i);
        if (i > 0)
            cr_assert_eq(r.seq[i], r.seq[i - 1] + 1, "event %u: seq %llu after %llu", i,
                         (unsigned long long)r.seq[i], (unsigned long long)r.seq[i - 1]);
        cr_assert(r.ts[i] >= before - T_SEC && r.ts[i] <= after + T_SEC, "event %u: ts", i);
        /* UUIDv7: 48-bit ms of the timestamp, version 7, variant 10, and the
           low 48 bits of the sequence at the end. */
        uint64_t ms = 0, low = 0;
        for (int k = 0; k < 6; k++) {
            ms = ms << 8 | r.id[i][k];
            low = low << 8 | r.id[i][10 + k];
        }
        cr_assert_eq(ms, (uint64_t)(r.ts[i] / 1000000), "event %u: id time", i);
        cr_assert_eq(r.id[i][6] >> 4, 7);
        cr_assert_eq(r.id[i][8] >> 6, 2);
        cr_assert_eq(low, r.seq[i] & 0xffffffffffffULL, "event %u: id sequence", i);
        if (i > 0)
            cr_assert_neq(memcmp(r.id[i], r.id[i - 1], 16), 0);
    }
    /* Retained events (small ones, built in their carriers) are intact
       after their bus is gone; releasing them frees the carriers. */
    unsigned kept = atomic_load(&r.n_kept);
    cr_assert_eq(kept, PK_N / 50);
    for (unsigned k = 0; k < kept; k++) {
        uint32_t v = 0;
        cr_assert(pk_payload_ok(r.kept[k], &v));
        cr_assert_eq(v % 50, 7);
        cr_assert_str_eq(eb_event_topic(r.kept[k]), pk_topics[v % 4]);
        cr_assert_eq(eb_event_seq(r.kept[k]), r.seq[v]);
        uint8_t id[16];
        eb_event_id(r.kept[k], id);
        cr_assert_eq(memcmp(id, r.id[v], 16), 0);
        eb_event_release(r.kept[k]);
    }
}

struct cause_rec {
    eb_bus *bus;
    atomic_uint n_in, n_out;
    uint8_t in_id[16][16];
    uint8_t caus[16][16], corr[16][16];
    bool has[16];
};

static int cause_relay(const eb_event *ev, void *ctx)
{
    struct cause_rec *c = ctx;
    uint32_t v = t_u32(ev);
    if (v < 16)
        eb_event_id(ev, c->in_id[v]);
    atomic_fetch_add(&c->n_in, 1);
    return eb_publish(c->bus, "cz.out", &v, sizeof v, NULL);
}

static int cause_out(const eb_event *ev, void *ctx)
{
    struct cause_rec *c = ctx;
    uint32_t v = t_u32(ev);
    if (v < 16)
        c->has[v] =
            eb_event_causation_id(ev, c->caus[v]) && eb_event_correlation_id(ev, c->corr[v]);
    atomic_fetch_add(&c->n_out, 1);
    return 0;
}

/* An event published from the handler of an event of a batch takes that
   event's id (its carrier's stamp) as causation and correlation. */
Test(batch, events_published_from_a_batch_events_handler_name_it_as_their_cause)
{
    static struct cause_rec c;
    memset(&c, 0, sizeof c);
    eb_bus *bus = c.bus = t_bus_new(2);
    t_sub(bus, "cz.in", cause_relay, &c, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "cz.out", cause_out, &c, EB_DELIVERY_SERIAL, 0);
    publish_numbered(bus, "cz.in", 16);
    cr_assert(t_wait_ge(&c.n_out, 16));
    eb_bus_destroy(bus);
    for (unsigned i = 0; i < 16; i++) {
        cr_assert(c.has[i], "event %u: no causation or correlation", i);
        cr_assert_eq(memcmp(c.caus[i], c.in_id[i], 16), 0, "event %u: causation", i);
        cr_assert_eq(memcmp(c.corr[i], c.in_id[i], 16), 0, "event %u: correlation", i);
    }
}

struct dz_rec {
    atomic_uint failed, dead, dl_events;
    uint64_t seq[8];   /* eb_event_seq in the failing handler */
    uint8_t id[8][16]; /* eb_event_id there */
    uint64_t info_seq[8];
    uint8_t dl_caus[8][16];
    bool dl_has[8];
};

static int dz_fail(const eb_event *ev, void *ctx)
{
    struct dz_rec *d = ctx;
    uint32_t v = t_u32(ev);
    if (v < 8) {
        d->seq[v] = eb_event_seq(ev);
        eb_event_id(ev, d->id[v]);
    }
    atomic_fetch_add(&d->failed, 1);
    return EB_EIO;
}

static void dz_on_dead(const eb_event *ev, const eb_deadletter_info *info, void *ctx)
{
    struct dz_rec *d = ctx;
    uint32_t v = t_u32(ev);
    if (v < 8)
        d->info_seq[v] = info->seq;
    atomic_fetch_add(&d->dead, 1);
}

static int dz_dead_letter(const eb_event *ev, void *ctx)
{
    struct dz_rec *d = ctx;
    uint32_t v = t_u32(ev);
    if (v < 8)
        d->dl_has[v] = eb_event_causation_id(ev, d->dl_caus[v]);
    atomic_fetch_add(&d->dl_events, 1);
    return 0;
}

/* A dead-lettered event of a batch reports its own sequence, and its dead
   letter names its id as causation. */
Test(batch, a_dead_lettered_event_of_a_batch_reports_its_own_sequence_and_id)
{
    static struct dz_rec d;
    memset(&d, 0, sizeof d);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.on_deadletter = dz_on_dead;
    cfg.deadletter_ctx = &d;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 1;
    eb_subscription *sub = NULL;
    cr_assert_eq(eb_subscribe(bus, "dz", dz_fail, &d, &o, &sub), EB_OK);
    t_sub(bus, "$deadletter.dz", dz_dead_letter, &d, EB_DELIVERY_SERIAL, 0);
    publish_numbered(bus, "dz", 8);
    cr_assert(t_wait_ge(&d.dl_events, 8));
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&d.failed), 8);
    cr_assert_eq(atomic_load(&d.dead), 8);
    for (unsigned i = 0; i < 8; i++) {
        if (i > 0)
            cr_assert_eq(d.seq[i], d.seq[i - 1] + 1);
        cr_assert_eq(d.info_seq[i], d.seq[i], "event %u: dead-letter info seq", i);
        cr_assert(d.dl_has[i]);
        cr_assert_eq(memcmp(d.dl_caus[i], d.id[i], 16), 0, "event %u: causation", i);
    }
}

/*
 * A worker whose last dispatch step took batches does not wake a parked one
 * for work it can do itself (batching in bus.c): a lane it queues alone, a
 * requeue, a stall's relief, the intake before a lane turn. When its
 * handler then blocks, the batches published meanwhile must still be taken
 * by the parked worker (the intake's watcher) and delivered, while the
 * handler is still blocked.
 */
struct held_batch {
    unsigned want; /* fast events the first slow one waits for */
    atomic_uint entered;
    atomic_uint fast_done;
    atomic_int saw_fast; /* 1: the fast events came while held, -1: not */
};

static int held_until_fast(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct held_batch *h = ctx;
    if (atomic_fetch_add(&h->entered, 1) == 0) {
        bool ok;
        T_WAIT_FOR(ok, atomic_load(&h->fast_done) >= h->want);
        atomic_store(&h->saw_fast, ok ? 1 : -1);
    }
    return 0;
}

static int count_fast(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((struct held_batch *)ctx)->fast_done, 1);
    return 0;
}

/* Every fast event arrived while the slow handler was still blocked; then
   the bus drains and is destroyed. */
static void expect_fast_while_held(eb_bus *bus, struct held_batch *h)
{
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&h->saw_fast) != 0);
    cr_assert(ok);
    cr_assert(t_quiesce(bus));
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&h->saw_fast), 1, "fast events waited for the blocked handler");
    cr_assert_eq(atomic_load(&h->fast_done), h->want);
}

Test(batch, batches_published_while_a_batch_handler_blocks_are_delivered_by_another_worker)
{
    eb_bus *bus = t_bus_new(2);
    struct held_batch h;
    memset(&h, 0, sizeof h);
    h.want = 3 * 64;
    t_sub(bus, "slow", held_until_fast, &h, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "fast", count_fast, &h, EB_DELIVERY_SERIAL, 0);
    publish_numbered(bus, "slow", 8);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&h.entered) == 1);
    cr_assert(ok);
    for (unsigned i = 0; i < 3; i++) {
        publish_numbered(bus, "fast", 64);
        t_sleep_ms(2); /* the other worker parks again between batches */
    }
    expect_fast_while_held(bus, &h);
    cr_assert_eq(atomic_load(&h.entered), 8);
}

/* The same with the blocked handler's lane and a busy one fed from one
   batch: a batch of events for two lanes wakes the parked worker (two lanes
   queued), and events for the busy lane keep flowing through a small
   mailbox (its stalls relieved by the worker that runs it) while the other
   lane's handler blocks. */
Test(batch, a_batch_for_two_lanes_runs_one_while_the_other_blocks)
{
    eb_bus *bus = t_bus_new(2);
    struct held_batch h;
    memset(&h, 0, sizeof h);
    h.want = 3 * 64 - 1; /* the first batch's first event is the slow one */
    t_sub(bus, "slow", held_until_fast, &h, EB_DELIVERY_SERIAL, 0);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.mailbox_capacity = 2; /* stalls the dispatcher on the fast lane */
    cr_assert_eq(eb_subscribe(bus, "fast", count_fast, &h, &o, NULL), EB_OK);
    eb_message m[64];
    uint32_t vals[64];
    for (unsigned k = 0; k < 3; k++) {
        fill(m, vals, 64, "fast");
        if (k == 0)
            m[0].topic = "slow";
        size_t accepted = 0;
        cr_assert_eq(eb_publish_batch(bus, m, 64, NULL, &accepted), EB_OK);
        cr_assert_eq(accepted, 64);
    }
    expect_fast_while_held(bus, &h);
}
