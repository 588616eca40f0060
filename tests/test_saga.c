/*
 * Sagas, aggregates and units of work (src/saga.c): persist before dispatch,
 * one transition at a time per instance, one instance per key, the
 * compensation and timeout paths of a small order saga, scope abort,
 * point-to-point command rules and the store's version check.
 */
#include "common.h"
#include "saga.h"

static eb_bus *new_bus(unsigned workers)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = workers;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    return bus;
}

/* ---------------------------------------------------------------------- */

Test(saga, topic_match_and_cover_follow_amqp_rules)
{
    cr_expect(eb__topic_match("a.*.c", "a.b.c"));
    cr_expect(!eb__topic_match("a.*", "a.b.c"));
    cr_expect(eb__topic_match("a.#", "a"));
    cr_expect(eb__topic_match("#.c", "a.b.c"));
    cr_expect(eb__topic_match("#", ""));
    cr_expect(!eb__topic_match("#", "$deadletter.a"));
    cr_expect(eb__topic_match("$deadletter.#", "$deadletter.a"));
    /* A 255-byte topic of dots has 256 (empty) words. */
    char dots[256];
    memset(dots, '.', 255);
    dots[255] = '\0';
    cr_expect(eb__topic_match("#", dots));
    cr_expect(!eb__topic_match("*", dots));
    char cover[EB_TOPIC_MAX + 1];
    const char *const shared[] = {"$x.a", "$x.b"};
    cr_expect_eq(eb__cover_pattern(shared, 2, cover), EB_OK);
    cr_expect_str_eq(cover, "$x.#");
    cr_expect(eb__topic_match(cover, "$x.a"));
    char longer[300];
    memset(longer, 'a', 299);
    longer[299] = '\0';
    cr_expect(!eb__topic_match("#", longer), "a topic over 267 bytes never matches");
    /* A dead letter's topic may be 12 bytes longer than a published one. */
    char dl[12 + EB_TOPIC_MAX + 1];
    memcpy(dl, "$deadletter.", 12);
    memset(dl + 12, 'a', EB_TOPIC_MAX);
    dl[12 + EB_TOPIC_MAX] = '\0';
    cr_expect(eb__topic_match("$deadletter.#", dl), "a dead letter of a 255-byte topic");
    cr_expect(!eb__topic_match(longer, "a"), "a pattern over 255 bytes never matches");
    const char *const many[] = {dots, "a"};
    cr_expect_eq(eb__cover_pattern(many, 2, cover), EB_OK);
    cr_expect_str_eq(cover, "#");
    char out[EB_TOPIC_MAX + 1];
    const char *p1[] = {"order.placed", "order.stock.*", "order.payment.#"};
    cr_assert_eq(eb__cover_pattern(p1, 3, out), EB_OK);
    cr_expect_str_eq(out, "order.#");
    const char *p2[] = {"inventory.reserve"};
    cr_assert_eq(eb__cover_pattern(p2, 1, out), EB_OK);
    cr_expect_str_eq(out, "inventory.reserve");
    const char *p3[] = {"a.b", "c.d"};
    cr_assert_eq(eb__cover_pattern(p3, 2, out), EB_OK);
    cr_expect_str_eq(out, "#");
}

/* ---------------------------------------------------------------------- */
/* Persist before dispatch                                                 */
/* ---------------------------------------------------------------------- */

/* A store that fails its next `fail` writes, and notes how many commands a
   subscriber had seen at each failure (must be 0: nothing may leave). */
typedef struct failstore {
    eb_saga_store base;
    eb_saga_store *inner;
    atomic_int fail;
    atomic_uint failed;
    atomic_uint cmds_at_failure;
    atomic_uint *cmds;
    atomic_uint dispatched; /* outboxes marked sent */
} failstore;

static int fs_load(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                   eb_saga_record *rec)
{
    failstore *f = (failstore *)s;
    return f->inner->load(f->inner, saga, key, key_len, rec);
}

static bool fs_should_fail(failstore *f)
{
    if (atomic_fetch_sub(&f->fail, 1) <= 0) {
        atomic_fetch_add(&f->fail, 1);
        return false;
    }
    atomic_fetch_add(&f->failed, 1);
    atomic_fetch_add(&f->cmds_at_failure, atomic_load(f->cmds));
    return true;
}

static int fs_create(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                     const eb_saga_record *rec)
{
    failstore *f = (failstore *)s;
    if (fs_should_fail(f))
        return EB_EIO;
    return f->inner->create(f->inner, saga, key, key_len, rec);
}

static int fs_save(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                   uint64_t expected, const eb_saga_record *rec)
{
    failstore *f = (failstore *)s;
    if (fs_should_fail(f))
        return EB_EIO;
    return f->inner->save(f->inner, saga, key, key_len, expected, rec);
}

static int fs_remove(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                     uint64_t expected)
{
    failstore *f = (failstore *)s;
    return f->inner->remove(f->inner, saga, key, key_len, expected);
}

static int fs_dispatched(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                         uint64_t version)
{
    failstore *f = (failstore *)s;
    int rc = f->inner->dispatched(f->inner, saga, key, key_len, version);
    atomic_fetch_add(&f->dispatched, 1);
    return rc;
}

typedef struct pbd_ctx {
    atomic_uint transitions;
    atomic_uint cmds;
    uint8_t last_id[16]; /* written by the SERIAL command observer only */
    uint8_t last_corr[16];
} pbd_ctx;

static int pbd_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    pbd_ctx *c = ctx;
    (void)ev;
    atomic_fetch_add(&c->transitions, 1);
    (*(uint32_t *)state)++;
    return eb_saga_send(sc, "pbd.cmd", "x", 1, "agg", 3);
}

static int pbd_on_cmd(const eb_event *ev, void *ctx)
{
    pbd_ctx *c = ctx;
    eb_command_id(ev, c->last_id);
    eb_event_correlation_id(ev, c->last_corr);
    atomic_fetch_add(&c->cmds, 1);
    return 0;
}

Test(saga, failed_save_sends_nothing_and_the_retried_event_succeeds)
{
    eb_bus *bus = new_bus(2);
    pbd_ctx c;
    memset(&c, 0, sizeof(c));
    failstore fs;
    memset(&fs, 0, sizeof(fs));
    cr_assert_eq(eb_saga_memory_store_create(&fs.inner), EB_OK);
    fs.base.load = fs_load;
    fs.base.create = fs_create;
    fs.base.save = fs_save;
    fs.base.remove = fs_remove;
    fs.base.dispatched = fs_dispatched;
    fs.cmds = &c.cmds;
    atomic_store(&fs.fail, 2);
    cr_assert_eq(eb_subscribe(bus, "pbd.cmd", pbd_on_cmd, &c, NULL, NULL), EB_OK);

    const char *topics[] = {"pbd.start", "pbd.next"};
    const char *starts[] = {"pbd.start"};
    eb_saga_def def = {.name = "pbd",
                       .topics = topics,
                       .n_topics = 2,
                       .start_topics = starts,
                       .n_start_topics = 1,
                       .state_size = sizeof(uint32_t),
                       .transition = pbd_transition,
                       .ctx = &c};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = &fs.base;
    so.on_complete = EB_SAGA_ARCHIVE;
    eb_saga *saga;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &saga), EB_OK);

    eb_publish_options po;
    eb_publish_options_init(&po);
    po.key = "k1";
    po.key_len = 2;
    cr_assert_eq(eb_publish(bus, "pbd.start", NULL, 0, &po), EB_OK);
    cr_assert(t_wait_ge(&c.cmds, 1));
    /* The create failed twice before it succeeded on the third attempt. */
    cr_expect_eq(atomic_load(&fs.failed), 2);
    cr_expect_eq(atomic_load(&fs.cmds_at_failure), 0, "a command left before the save");
    cr_expect_eq(atomic_load(&c.transitions), 3);
    /* The command id comes from the instance (its key and the id of the
       event that created it, kept in the record) and the transition. */
    uint32_t state = 0;
    eb_saga_record rec = {.state = &state, .state_size = sizeof(state)};
    cr_assert_eq(fs.inner->load(fs.inner, "pbd", "k1", 2, &rec), EB_OK);
    free(rec.outbox);
    static const uint8_t zero[16];
    cr_expect(memcmp(rec.start_id, zero, 16) != 0, "the record keeps its start id");
    uint8_t want[16];
    eb__saga_tag tag;
    eb__saga_tag_init(&tag, "pbd", "k1", 2, rec.start_id);
    eb__saga_command_id(&tag, 1, 0, want);
    cr_expect(memcmp(c.last_id, want, 16) == 0, "command id is derived from the transition");
    eb__saga_id("pbd", "k1", 2, false, 0, 0, want);
    cr_expect(memcmp(c.last_corr, want, 16) == 0, "correlation id is the instance id");

    /* A later transition whose save fails once: again nothing leaves first. */
    atomic_store(&fs.fail, 1);
    cr_assert_eq(eb_publish(bus, "pbd.next", NULL, 0, &po), EB_OK);
    cr_assert(t_wait_ge(&c.cmds, 2));
    cr_expect_eq(atomic_load(&fs.failed), 3);
    cr_expect_eq(atomic_load(&fs.cmds_at_failure), 1, "a command left before the save");
    eb__saga_command_id(&tag, 2, 0, want);
    cr_expect(memcmp(c.last_id, want, 16) == 0);

    /* The command can reach its subscriber before the saga marks the
       outbox sent (which follows the publish): wait for that too. */
    cr_assert(t_wait_ge(&fs.dispatched, 2));
    eb_saga_stats st;
    cr_assert_eq(eb_saga_stats_get(saga, &st), EB_OK);
    cr_expect_eq(st.transitions, 2);
    cr_expect_eq(st.failures, 3);
    cr_expect_eq(st.started, 1);

    cr_assert_eq(fs.inner->load(fs.inner, "pbd", "k1", 2, &rec), EB_OK);
    cr_expect_eq(rec.version, 2);
    cr_expect_eq(state, 2);
    cr_expect_null(rec.outbox, "dispatched outbox is dropped");

    cr_assert_eq(eb_saga_unregister(saga), EB_OK);
    eb_bus_destroy(bus);
    cr_expect_eq(atomic_load(&c.cmds), 2, "each saved transition sent its command once");
    eb_saga_store_destroy(fs.inner);
}

/* ---------------------------------------------------------------------- */
/* One transition at a time per instance                                   */
/* ---------------------------------------------------------------------- */

#define SER_KEYS 4
#define SER_THREADS 4
#define SER_PER_THREAD 150

typedef struct ser_ctx {
    atomic_int inflight[SER_KEYS];
    atomic_uint overlaps;
    atomic_uint max_parallel; /* instances in a transition at once, seen */
    atomic_int running;
    eb_bus *bus;
} ser_ctx;

static int ser_key(const eb_event *ev)
{
    size_t len;
    const char *k = eb_event_key(ev, &len);
    return k[1] - '0';
}

static int ser_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    ser_ctx *c = ctx;
    (void)sc;
    int k = ser_key(ev);
    if (atomic_fetch_add(&c->inflight[k], 1) != 0)
        atomic_fetch_add(&c->overlaps, 1);
    unsigned par = (unsigned)atomic_fetch_add(&c->running, 1) + 1;
    unsigned m = atomic_load(&c->max_parallel);
    while (par > m && !atomic_compare_exchange_weak(&c->max_parallel, &m, par)) {
    }
    uint32_t *n = state;
    uint32_t before = *n;
    for (int i = 0; i < 200; i++) /* widen the window a race would need */
        atomic_signal_fence(memory_order_seq_cst);
    *n = before + 1;
    atomic_fetch_sub(&c->running, 1);
    atomic_fetch_sub(&c->inflight[k], 1);
    return 0;
}

static void *ser_publisher(void *arg)
{
    ser_ctx *c = arg;
    char key[3] = {'k', '0', 0};
    for (int i = 0; i < SER_PER_THREAD * SER_KEYS; i++) {
        key[1] = (char)('0' + i % SER_KEYS);
        eb_publish_options po;
        eb_publish_options_init(&po);
        po.key = key;
        po.key_len = 2;
        if (eb_publish(c->bus, "ser.tick", NULL, 0, &po) != EB_OK)
            return (void *)1;
    }
    return NULL;
}

Test(saga, one_transition_at_a_time_per_instance)
{
    ser_ctx c;
    memset(&c, 0, sizeof(c));
    c.bus = new_bus(2);
    eb_saga_store *store;
    cr_assert_eq(eb_saga_memory_store_create(&store), EB_OK);
    const char *topics[] = {"ser.tick"};
    eb_saga_def def = {.name = "ser",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .state_size = sizeof(uint32_t),
                       .transition = ser_transition,
                       .ctx = &c};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = store;
    eb_saga *saga;
    cr_assert_eq(eb_saga_register(c.bus, &def, &so, &saga), EB_OK);

    pthread_t th[SER_THREADS];
    for (int i = 0; i < SER_THREADS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, ser_publisher, &c), 0);
    for (int i = 0; i < SER_THREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        cr_expect_null(r);
    }
    const uint64_t total = (uint64_t)SER_THREADS * SER_PER_THREAD * SER_KEYS;
    bool ok;
    eb_saga_stats st;
    T_WAIT_FOR(ok, eb_saga_stats_get(saga, &st) == EB_OK && st.transitions >= total);
    cr_assert(ok, "transitions: %llu of %llu", (unsigned long long)st.transitions,
              (unsigned long long)total);
    cr_expect_eq(atomic_load(&c.overlaps), 0, "two transitions of one instance ran at once");
    cr_expect_eq(st.started, SER_KEYS);
    for (int k = 0; k < SER_KEYS; k++) {
        char key[3] = {'k', (char)('0' + k), 0};
        uint32_t n = 0;
        eb_saga_record rec = {.state = &n, .state_size = sizeof(n)};
        cr_assert_eq(store->load(store, "ser", key, 2, &rec), EB_OK);
        cr_expect_eq(n, SER_THREADS * SER_PER_THREAD, "lost update on %s", key);
        cr_expect_eq(rec.version, SER_THREADS * SER_PER_THREAD);
        free(rec.outbox);
    }
    cr_assert_eq(eb_saga_unregister(saga), EB_OK);
    eb_bus_destroy(c.bus);
    eb_saga_store_destroy(store);
}

/* ---------------------------------------------------------------------- */
/* Duplicate start events                                                  */
/* ---------------------------------------------------------------------- */

typedef struct dup_ctx {
    atomic_uint inits;
    atomic_uint transitions;
} dup_ctx;

static void dup_init(void *state, const eb_event *ev, void *ctx)
{
    (void)state;
    (void)ev;
    atomic_fetch_add(&((dup_ctx *)ctx)->inits, 1);
}

static int dup_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)sc;
    (void)ev;
    (*(uint32_t *)state)++;
    atomic_fetch_add(&((dup_ctx *)ctx)->transitions, 1);
    return 0;
}

Test(saga, duplicate_start_events_create_one_instance)
{
    eb_bus *bus = new_bus(2);
    dup_ctx c;
    memset(&c, 0, sizeof(c));
    eb_saga_store *store;
    cr_assert_eq(eb_saga_memory_store_create(&store), EB_OK);
    const char *topics[] = {"dup.placed"};
    eb_saga_def def = {.name = "dup",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .state_size = sizeof(uint32_t),
                       .init = dup_init,
                       .transition = dup_transition,
                       .ctx = &c};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = store;
    eb_saga *saga;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &saga), EB_OK);
    eb_message msgs[20];
    for (int i = 0; i < 20; i++)
        msgs[i] = (eb_message){"dup.placed", "order 7", 7, "o7", 2};
    cr_assert_eq(eb_publish_batch(bus, msgs, 20, NULL, NULL), EB_OK);
    cr_assert(t_wait_ge(&c.transitions, 20));
    cr_expect_eq(atomic_load(&c.inits), 1, "the instance was created more than once");
    eb_saga_stats st;
    cr_assert_eq(eb_saga_stats_get(saga, &st), EB_OK);
    cr_expect_eq(st.started, 1);
    uint32_t n = 0;
    eb_saga_record rec = {.state = &n, .state_size = sizeof(n)};
    cr_assert_eq(store->load(store, "dup", "o7", 2, &rec), EB_OK);
    cr_expect_eq(n, 20);
    cr_assert_eq(eb_saga_unregister(saga), EB_OK);
    eb_bus_destroy(bus);
    eb_saga_store_destroy(store);
}

/* ---------------------------------------------------------------------- */
/* A small order saga: compensation and timeout                            */
/* ---------------------------------------------------------------------- */

enum { PAY_CHARGE = 0, PAY_DECLINE, PAY_SILENT };
enum { OUT_NONE = 0, OUT_COMPLETED, OUT_COMPENSATED, OUT_TIMED_OUT };
enum { ST_RESERVING = 1, ST_CHARGING, ST_RELEASING };

typedef struct ord_msg {
    char order[8];
    int32_t qty;
} ord_msg;

typedef struct ord_state {
    ord_msg m;
    int32_t stage;
    int32_t timed_out;
} ord_state;

typedef struct stock_state {
    int32_t on_hand;
    int32_t reserved;
} stock_state;

typedef struct dom {
    eb_bus *bus;
    eb_command_bus *cb;
    eb_aggregate *stock, *pay;
    eb_saga *saga;
    int pay_mode;
    atomic_int outcome;
    atomic_uint done;
    atomic_uint timeouts_seen;
} dom;

static void stock_init(void *state, const void *id, size_t id_len, void *ctx)
{
    (void)id;
    (void)id_len;
    (void)ctx;
    ((stock_state *)state)->on_hand = 10;
}

static int stock_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    (void)ctx;
    stock_state *s = state;
    const ord_msg *m = eb_event_payload(cmd, NULL);
    if (strcmp(eb_event_topic(cmd), "stock.reserve") == 0) {
        s->on_hand -= m->qty;
        s->reserved += m->qty;
        return eb_aggregate_emit(ac, "t.stock.reserved", m, sizeof(*m), m->order, strlen(m->order));
    }
    s->on_hand += m->qty; /* stock.release */
    s->reserved -= m->qty;
    return eb_aggregate_emit(ac, "t.stock.released", m, sizeof(*m), m->order, strlen(m->order));
}

static int pay_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    dom *d = ctx;
    (void)state;
    const ord_msg *m = eb_event_payload(cmd, NULL);
    if (d->pay_mode == PAY_SILENT)
        return 0;
    return eb_aggregate_emit(ac, d->pay_mode == PAY_CHARGE ? "t.pay.charged" : "t.pay.declined", m,
                             sizeof(*m), m->order, strlen(m->order));
}

static int ord_finish(eb_saga_ctx *sc, int outcome)
{
    eb_saga_complete(sc);
    return eb_saga_publish(sc, "t.done", &outcome, sizeof(outcome), NULL, 0);
}

static int ord_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ctx;
    ord_state *s = state;
    const char *t = eb_event_topic(ev);
    if (strcmp(t, "t.order.placed") == 0) {
        if (!eb_saga_is_new(sc))
            return 0;
        memcpy(&s->m, eb_event_payload(ev, NULL), sizeof(s->m));
        s->stage = ST_RESERVING;
        return eb_saga_send(sc, "stock.reserve", &s->m, sizeof(s->m), "sku1", 4);
    }
    if (strcmp(t, "t.stock.reserved") == 0 && s->stage == ST_RESERVING) {
        s->stage = ST_CHARGING;
        int rc =
            eb_saga_send(sc, "pay.charge", &s->m, sizeof(s->m), s->m.order, strlen(s->m.order));
        if (rc == 0)
            rc = eb_saga_schedule_timeout(sc, 20 * T_MS, "t.order.timeout", NULL, 0);
        return rc;
    }
    if (strcmp(t, "t.pay.charged") == 0 && s->stage == ST_CHARGING)
        return ord_finish(sc, OUT_COMPLETED);
    if ((strcmp(t, "t.pay.declined") == 0 || strcmp(t, "t.order.timeout") == 0) &&
        s->stage == ST_CHARGING) {
        s->stage = ST_RELEASING;
        s->timed_out = t[2] == 'o';
        return eb_saga_send(sc, "stock.release", &s->m, sizeof(s->m), "sku1", 4);
    }
    if (strcmp(t, "t.stock.released") == 0 && s->stage == ST_RELEASING)
        return ord_finish(sc, s->timed_out ? OUT_TIMED_OUT : OUT_COMPENSATED);
    return 0; /* late or duplicate: nothing to do */
}

static int on_done(const eb_event *ev, void *ctx)
{
    dom *d = ctx;
    int out;
    memcpy(&out, eb_event_payload(ev, NULL), sizeof(out));
    atomic_store(&d->outcome, out);
    atomic_fetch_add(&d->done, 1);
    return 0;
}

static void dom_setup(dom *d, int pay_mode)
{
    memset(d, 0, sizeof(*d));
    d->pay_mode = pay_mode;
    d->bus = new_bus(2);
    cr_assert_eq(eb_command_bus_create(d->bus, &d->cb), EB_OK);
    const char *stock_cmds[] = {"stock.reserve", "stock.release"};
    eb_aggregate_def sd = {.name = "stock",
                           .commands = stock_cmds,
                           .n_commands = 2,
                           .state_size = sizeof(stock_state),
                           .init = stock_init,
                           .handle = stock_handle};
    cr_assert_eq(eb_aggregate_register(d->cb, &sd, NULL, &d->stock), EB_OK);
    const char *pay_cmds[] = {"pay.charge"};
    eb_aggregate_def pd = {
        .name = "pay", .commands = pay_cmds, .n_commands = 1, .handle = pay_handle, .ctx = d};
    cr_assert_eq(eb_aggregate_register(d->cb, &pd, NULL, &d->pay), EB_OK);
    const char *topics[] = {"t.order.#", "t.stock.*", "t.pay.*"};
    const char *starts[] = {"t.order.placed"};
    eb_saga_def od = {.name = "order",
                      .topics = topics,
                      .n_topics = 3,
                      .start_topics = starts,
                      .n_start_topics = 1,
                      .state_size = sizeof(ord_state),
                      .transition = ord_transition,
                      .ctx = d};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.commands = d->cb;
    cr_assert_eq(eb_saga_register(d->bus, &od, &so, &d->saga), EB_OK);
    cr_assert_eq(eb_subscribe(d->bus, "t.done", on_done, d, NULL, NULL), EB_OK);
}

static void dom_place(dom *d, const char *order, int qty)
{
    ord_msg m;
    memset(&m, 0, sizeof(m));
    strcpy(m.order, order);
    m.qty = qty;
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.key = order;
    po.key_len = strlen(order);
    cr_assert_eq(eb_publish(d->bus, "t.order.placed", &m, sizeof(m), &po), EB_OK);
}

static void dom_teardown(dom *d)
{
    cr_assert_eq(eb_saga_unregister(d->saga), EB_OK);
    eb_command_bus_destroy(d->cb);
    eb_bus_destroy(d->bus);
}

Test(saga, charged_order_completes_and_keeps_its_stock_reserved)
{
    dom d;
    dom_setup(&d, PAY_CHARGE);
    dom_place(&d, "o1", 3);
    cr_assert(t_wait_ge(&d.done, 1));
    cr_expect_eq(atomic_load(&d.outcome), OUT_COMPLETED);
    stock_state s;
    cr_assert_eq(eb_aggregate_read(d.stock, "sku1", 4, &s, sizeof(s)), EB_OK);
    cr_expect_eq(s.on_hand, 7);
    cr_expect_eq(s.reserved, 3);
    eb_saga_stats st;
    cr_assert_eq(eb_saga_stats_get(d.saga, &st), EB_OK);
    cr_expect_eq(st.completed, 1);
    dom_teardown(&d);
}

Test(saga, declined_payment_compensates_by_releasing_stock)
{
    dom d;
    dom_setup(&d, PAY_DECLINE);
    dom_place(&d, "o2", 4);
    cr_assert(t_wait_ge(&d.done, 1));
    cr_expect_eq(atomic_load(&d.outcome), OUT_COMPENSATED);
    stock_state s;
    cr_assert_eq(eb_aggregate_read(d.stock, "sku1", 4, &s, sizeof(s)), EB_OK);
    cr_expect_eq(s.on_hand, 10, "stock was not released");
    cr_expect_eq(s.reserved, 0);
    dom_teardown(&d);
}

Test(saga, unanswered_payment_times_out_and_releases_stock)
{
    dom d;
    dom_setup(&d, PAY_SILENT);
    int64_t t0 = t_now_ns();
    dom_place(&d, "o3", 2);
    cr_assert(t_wait_ge(&d.done, 1));
    cr_expect_geq(t_now_ns() - t0, 20 * T_MS, "timed out before its delay");
    cr_expect_eq(atomic_load(&d.outcome), OUT_TIMED_OUT);
    stock_state s;
    cr_assert_eq(eb_aggregate_read(d.stock, "sku1", 4, &s, sizeof(s)), EB_OK);
    cr_expect_eq(s.on_hand, 10);
    cr_expect_eq(s.reserved, 0);
    /* The completed instance was removed: the store holds nothing for it,
       so a second timeout or late reply would be ignored. */
    eb_saga_stats st;
    cr_assert_eq(eb_saga_stats_get(d.saga, &st), EB_OK);
    cr_expect_eq(st.completed, 1);
    dom_teardown(&d);
}

/* ---------------------------------------------------------------------- */
/* Archive                                                                 */
/* ---------------------------------------------------------------------- */

static int arc_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ev;
    (void)ctx;
    (*(uint32_t *)state)++;
    eb_saga_complete(sc);
    return 0;
}

Test(saga, archived_instance_is_kept_and_ignores_later_events)
{
    eb_bus *bus = new_bus(2);
    eb_saga_store *store;
    cr_assert_eq(eb_saga_memory_store_create(&store), EB_OK);
    const char *topics[] = {"arc.go"};
    eb_saga_def def = {.name = "arc",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .state_size = sizeof(uint32_t),
                       .transition = arc_transition};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = store;
    so.on_complete = EB_SAGA_ARCHIVE;
    eb_saga *saga;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &saga), EB_OK);
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.key = "a";
    po.key_len = 1;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(eb_publish(bus, "arc.go", NULL, 0, &po), EB_OK);
    bool ok;
    eb_saga_stats st;
    T_WAIT_FOR(ok, eb_saga_stats_get(saga, &st) == EB_OK && st.transitions + st.ignored >= 3);
    cr_assert(ok);
    cr_expect_eq(st.transitions, 1);
    cr_expect_eq(st.ignored, 2);
    uint32_t n = 0;
    eb_saga_record rec = {.state = &n, .state_size = sizeof(n)};
    cr_assert_eq(store->load(store, "arc", "a", 1, &rec), EB_OK);
    cr_expect(rec.completed);
    cr_expect_eq(n, 1);
    cr_assert_eq(eb_saga_unregister(saga), EB_OK);
    eb_bus_destroy(bus);
    eb_saga_store_destroy(store);
}

/* ---------------------------------------------------------------------- */
/* Unit of work                                                            */
/* ---------------------------------------------------------------------- */

typedef struct uow_ctx {
    atomic_uint seen;   /* events other than the markers */
    atomic_uint marker; /* markers seen */
    unsigned order_ok;  /* SERIAL handler only */
    unsigned next;
} uow_ctx;

static int uow_on(const eb_event *ev, void *ctx)
{
    uow_ctx *c = ctx;
    const char *t = eb_event_topic(ev);
    if (strcmp(t, "uow.marker") == 0) {
        atomic_fetch_add(&c->marker, 1);
        return 0;
    }
    unsigned v;
    memcpy(&v, eb_event_payload(ev, NULL), sizeof(v));
    if (v == c->next)
        c->order_ok++;
    c->next = v + 1;
    atomic_fetch_add(&c->seen, 1);
    return 0;
}

Test(scope, aborted_scope_shows_nothing_and_committed_scope_everything)
{
    eb_bus *bus = new_bus(2);
    uow_ctx c;
    memset(&c, 0, sizeof(c));
    cr_assert_eq(eb_subscribe(bus, "uow.#", uow_on, &c, NULL, NULL), EB_OK);

    eb_scope *s;
    cr_assert_eq(eb_scope_begin(bus, &s), EB_OK);
    for (unsigned i = 0; i < 5; i++)
        cr_assert_eq(eb_scope_publish(s, "uow.item", &i, sizeof(i), NULL, 0), EB_OK);
    cr_expect_eq(eb_scope_publish(s, NULL, NULL, 0, NULL, 0), EB_EINVAL);
    eb_scope_abort(s);
    /* The marker is published after the abort; a SERIAL subscriber sees it
       after anything published before it, so by then it saw the scope. */
    eb_publish_result r;
    cr_assert_eq(eb_publish_wait(bus, "uow.marker", NULL, 0, NULL, &r), EB_OK);
    cr_expect_eq(atomic_load(&c.seen), 0, "an aborted scope reached a subscriber");

    cr_assert_eq(eb_scope_begin(bus, &s), EB_OK);
    for (unsigned i = 0; i < 100; i++)
        cr_assert_eq(eb_scope_publish(s, "uow.item", &i, sizeof(i), "k", 1), EB_OK);
    cr_expect_eq(atomic_load(&c.seen), 0, "a scope leaked before its commit");
    size_t published = 77;
    /* The scope publishes its own copies: a free function for them is
       refused (it was called on pointers into the scope's buffer). */
    eb_publish_options zc;
    eb_publish_options_init(&zc);
    zc.payload_free = free;
    cr_assert_eq(eb_scope_commit(s, &zc, &published), EB_EINVAL);
    /* Bad input leaves the out-parameter alone, from the batch's check too. */
    eb_publish_options bad;
    eb_publish_options_init(&bad);
    bad.flags = 0x80;
    cr_assert_eq(eb_scope_commit(s, &bad, &published), EB_EINVAL);
    cr_assert_eq(published, 77, "a refused commit wrote *published");
    cr_assert_eq(eb_scope_commit(s, NULL, &published), EB_OK);
    cr_expect_eq(published, 100);
    cr_assert_eq(eb_publish_wait(bus, "uow.marker", NULL, 0, NULL, &r), EB_OK);
    cr_expect_eq(atomic_load(&c.seen), 100);
    eb_bus_destroy(bus);
    cr_expect_eq(c.order_ok, 100, "committed events arrived out of order");
}

/* ---------------------------------------------------------------------- */
/* Point-to-point commands                                                 */
/* ---------------------------------------------------------------------- */

typedef struct p2p_ctx {
    atomic_uint handled;
    atomic_int send_rc;
    atomic_int dl_rc[3]; /* send, publish, timeout on $deadletter: refused */
    atomic_uint ran;
} p2p_ctx;

static int p2p_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    (void)ac;
    (void)cmd;
    (*(uint32_t *)state)++;
    atomic_fetch_add(&((p2p_ctx *)ctx)->handled, 1);
    return 0;
}

static int p2p_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    p2p_ctx *c = ctx;
    (void)ev;
    (void)state;
    atomic_store(&c->send_rc, eb_saga_send(sc, "nobody.listens", NULL, 0, "x", 1));
    atomic_store(&c->dl_rc[0], eb_saga_send(sc, "$deadletter.x", NULL, 0, "x", 1));
    atomic_store(&c->dl_rc[1], eb_saga_publish(sc, "$deadletter.x", NULL, 0, NULL, 0));
    atomic_store(&c->dl_rc[2], eb_saga_schedule_timeout(sc, T_SEC, "$deadletter.x", NULL, 0));
    atomic_fetch_add(&c->ran, 1);
    return 0;
}

Test(command, second_handler_for_a_topic_is_refused_and_unhandled_commands_fail)
{
    eb_bus *bus = new_bus(2);
    p2p_ctx c;
    memset(&c, 0, sizeof(c));
    eb_command_bus *cb;
    cr_assert_eq(eb_command_bus_create(bus, &cb), EB_OK);
    const char *cmds[] = {"acct.deposit", "acct.withdraw"};
    eb_aggregate_def def = {.name = "acct",
                            .commands = cmds,
                            .n_commands = 2,
                            .state_size = sizeof(uint32_t),
                            .handle = p2p_handle,
                            .ctx = &c};
    eb_aggregate *a1, *a2 = NULL;
    cr_assert_eq(eb_aggregate_register(cb, &def, NULL, &a1), EB_OK);
    const char *clash[] = {"acct.audit", "acct.withdraw"};
    eb_aggregate_def def2 = def;
    def2.name = "acct2";
    def2.commands = clash;
    cr_expect_eq(eb_aggregate_register(cb, &def2, NULL, &a2), EB_EEXIST);
    cr_expect_null(a2);
    const char *wild[] = {"acct.*"};
    def2.commands = wild;
    def2.n_commands = 1;
    cr_expect_eq(eb_aggregate_register(cb, &def2, NULL, &a2), EB_EINVAL);

    eb_publish_options po;
    eb_publish_options_init(&po);
    po.key = "alice";
    po.key_len = 5;
    /* "acct.audit" was not registered by the refused call. */
    cr_expect_eq(eb_command_send(cb, "acct.audit", NULL, 0, &po), EB_ENOENT);
    cr_expect_eq(eb_command_send(cb, "nobody.listens", NULL, 0, &po), EB_ENOENT);
    cr_expect_eq(eb_command_send(cb, "acct.deposit", NULL, 0, NULL), EB_EINVAL);
    cr_expect_eq(eb_command_send(cb, "$deadletter.acct", NULL, 0, &po), EB_EINVAL);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(eb_command_send(cb, "acct.deposit", NULL, 0, &po), EB_OK);
    cr_assert(t_wait_ge(&c.handled, 3));
    uint32_t n = 0;
    bool ok;
    T_WAIT_FOR(ok, eb_aggregate_read(a1, "alice", 5, &n, sizeof(n)) == EB_OK && n == 3);
    cr_expect(ok);
    cr_expect_eq(eb_aggregate_read(a1, "bob", 3, &n, sizeof(n)), EB_ENOENT);

    /* A saga given the command bus cannot queue a command nobody handles. */
    const char *topics[] = {"p2p.go"};
    eb_saga_def sd = {.name = "p2p",
                      .topics = topics,
                      .n_topics = 1,
                      .start_topics = topics,
                      .n_start_topics = 1,
                      .transition = p2p_transition,
                      .ctx = &c};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.commands = cb;
    eb_saga *saga;
    cr_assert_eq(eb_saga_register(bus, &sd, &so, &saga), EB_OK);
    eb_publish_options ko;
    eb_publish_options_init(&ko);
    ko.key = "i1";
    ko.key_len = 2;
    cr_assert_eq(eb_publish(bus, "p2p.go", NULL, 0, &ko), EB_OK);
    cr_assert(t_wait_ge(&c.ran, 1));
    cr_expect_eq(atomic_load(&c.send_rc), EB_ENOENT);
    /* The bus's own dead-letter topics are refused before anything is saved. */
    for (int i = 0; i < 3; i++)
        cr_expect_eq(atomic_load(&c.dl_rc[i]), EB_EINVAL, "call %d on $deadletter", i);

    /* Once the first aggregate is gone, the topic is free again. */
    cr_assert_eq(eb_aggregate_unregister(a1), EB_OK);
    cr_expect_eq(eb_command_send(cb, "acct.deposit", NULL, 0, &po), EB_ENOENT);
    def2.commands = clash;
    def2.n_commands = 2;
    cr_expect_eq(eb_aggregate_register(cb, &def2, NULL, &a2), EB_OK);
    cr_assert_eq(eb_saga_unregister(saga), EB_OK);
    eb_command_bus_destroy(cb); /* unregisters a2 */
    eb_bus_destroy(bus);
}

/* ---------------------------------------------------------------------- */
/* Store versions                                                          */
/* ---------------------------------------------------------------------- */

Test(saga_store, stale_version_is_refused_with_econflict)
{
    eb_saga_store *s;
    cr_assert_eq(eb_saga_memory_store_create(&s), EB_OK);
    uint32_t v = 10;
    eb_saga_record rec = {.state = &v, .state_size = sizeof(v), .version = 1};
    cr_assert_eq(s->create(s, "inv", "k", 1, &rec), EB_OK);
    cr_expect_eq(s->create(s, "inv", "k", 1, &rec), EB_EEXIST);
    cr_expect_eq(s->create(s, "other", "k", 1, &rec), EB_OK, "records are per saga name");
    v = 11;
    rec.version = 2;
    cr_assert_eq(s->save(s, "inv", "k", 1, 1, &rec), EB_OK);
    v = 99;
    rec.version = 2;
    cr_expect_eq(s->save(s, "inv", "k", 1, 1, &rec), EB_ECONFLICT, "stale write accepted");
    cr_expect_eq(s->remove(s, "inv", "k", 1, 1), EB_ECONFLICT);
    cr_expect_eq(s->save(s, "inv", "nope", 4, 1, &rec), EB_ENOENT);
    uint32_t got = 0;
    eb_saga_record out = {.state = &got, .state_size = sizeof(got)};
    cr_assert_eq(s->load(s, "inv", "k", 1, &out), EB_OK);
    cr_expect_eq(got, 11);
    cr_expect_eq(out.version, 2);
    cr_expect_eq(s->remove(s, "inv", "k", 1, 2), EB_OK);
    cr_expect_eq(s->load(s, "inv", "k", 1, &out), EB_ENOENT);
    cr_expect_str_eq(eb_err_name(EB_ECONFLICT), "EB_ECONFLICT");
    eb_saga_store_destroy(s);
}

Test(saga, register_refuses_bad_definitions)
{
    eb_bus *bus = new_bus(1);
    const char *topics[] = {"a.b"};
    eb_saga_def def = {.name = "x",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .transition = dup_transition};
    eb_saga *saga = NULL;
    eb_saga_def bad = def;
    bad.transition = NULL;
    cr_expect_eq(eb_saga_register(bus, &bad, NULL, &saga), EB_EINVAL);
    bad = def;
    bad.n_start_topics = 0;
    cr_expect_eq(eb_saga_register(bus, &bad, NULL, &saga), EB_EINVAL);
    bad = def;
    bad.name = "";
    cr_expect_eq(eb_saga_register(bus, &bad, NULL, &saga), EB_EINVAL);
    cr_expect_eq(eb_saga_register(NULL, &def, NULL, &saga), EB_EINVAL);
    const char *empty[] = {""};
    bad = def;
    bad.topics = empty;
    cr_expect_eq(eb_saga_register(bus, &bad, NULL, &saga), EB_EINVAL, "an empty topic");
    bad = def;
    bad.start_topics = empty;
    cr_expect_eq(eb_saga_register(bus, &bad, NULL, &saga), EB_EINVAL, "an empty start topic");
    /* "#" would cover these but never reaches the reserved "$x.a". */
    const char *reserved[] = {"$x.a", "y"};
    bad = def;
    bad.topics = reserved;
    bad.n_topics = 2;
    cr_expect_eq(eb_saga_register(bus, &bad, NULL, &saga), EB_EINVAL);
    eb_saga_options o;
    eb_saga_options_init(&o);
    o.publish_flags = 0x80;
    cr_expect_eq(eb_saga_register(bus, &def, &o, &saga), EB_EINVAL);
    o.publish_flags = EB_PUBLISH_DURABLE; /* this bus has no store */
    cr_expect_eq(eb_saga_register(bus, &def, &o, &saga), EB_ENOTSUP);
    cr_expect_null(saga);
    cr_expect_eq(eb_saga_unregister(NULL), EB_OK);
    eb_bus_destroy(bus);
}

/* A saga store whose recovery walk fails; the rest is never reached. */
static int t_load_none(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                       eb_saga_record *rec)
{
    (void)st, (void)saga, (void)key, (void)key_len, (void)rec;
    return EB_ENOENT;
}

static int t_create_none(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                         const eb_saga_record *rec)
{
    (void)st, (void)saga, (void)key, (void)key_len, (void)rec;
    return EB_ENOMEM;
}

static int t_save_none(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                       uint64_t expected, const eb_saga_record *rec)
{
    (void)st, (void)saga, (void)key, (void)key_len, (void)expected, (void)rec;
    return EB_ENOMEM;
}

static int t_remove_none(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                         uint64_t expected)
{
    (void)st, (void)saga, (void)key, (void)key_len, (void)expected;
    return EB_ENOENT;
}

static int t_pending_fails(eb_saga_store *st, const char *saga,
                           int (*fn)(const void *key, size_t key_len, const eb_saga_record *rec,
                                     void *ctx),
                           void *ctx)
{
    (void)st, (void)saga, (void)fn, (void)ctx;
    return EB_EIO;
}

/* A stub saga store whose recovery walk is `pending` (the rest is never
   reached), and a saga "x" on the one topic "a.b" registered with it. */
static eb_saga_store
stub_store(int (*pending)(eb_saga_store *, const char *,
                          int (*)(const void *, size_t, const eb_saga_record *, void *), void *))
{
    return (eb_saga_store){.load = t_load_none,
                           .create = t_create_none,
                           .save = t_save_none,
                           .remove = t_remove_none,
                           .pending = pending};
}

static const char *const ab_topic[] = {"a.b"};
static const eb_saga_def ab_saga = {.name = "x",
                                    .topics = ab_topic,
                                    .n_topics = 1,
                                    .start_topics = ab_topic,
                                    .n_start_topics = 1,
                                    .transition = dup_transition};

Test(saga, a_failing_recovery_walk_fails_register_and_subscribes_nothing)
{
    eb_bus *bus = new_bus(1);
    eb_saga_store store = stub_store(t_pending_fails);
    eb_saga_def def = ab_saga;
    eb_saga_options o;
    eb_saga_options_init(&o);
    o.store = &store;
    eb_saga *saga = NULL;
    cr_assert_eq(eb_saga_register(bus, &def, &o, &saga), EB_EIO);
    cr_assert_null(saga);
    eb_publish_result res;
    eb_publish_options po = t_bounded_opts();
    po.key = "k";
    po.key_len = 1;
    cr_assert_eq(eb_publish_wait(bus, "a.b", NULL, 0, &po, &res), EB_OK);
    cr_assert_eq(res.matched, 0, "a saga whose register failed is subscribed");
    eb_bus_destroy(bus);
}

/* ---- unregistering from inside (audit: a use after free) ---- */

struct unreg_inside {
    eb_bus *bus;
    eb_saga *saga;
    eb_aggregate *agg;
    eb_command_bus *cb;
    atomic_int rc;   /* what the unregister returned (1: not yet called) */
    atomic_int done; /* the transition or command handler returned */
};

static struct unreg_inside g_ui;

static int ui_wait_for_stop(void)
{
    return eb_publish_wait(g_ui.bus, "admin.stop", NULL, 0, NULL, NULL);
}

static int ui_transition(eb_saga_ctx *sc, const eb_event *ev, void *st, void *ctx)
{
    (void)sc;
    (void)ev;
    (void)st;
    (void)ctx;
    int rc = ui_wait_for_stop();
    atomic_store(&g_ui.done, 1);
    return rc == EB_OK ? 0 : rc;
}

static int ui_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *st, void *ctx)
{
    (void)ac;
    (void)cmd;
    (void)st;
    (void)ctx;
    int rc = ui_wait_for_stop();
    atomic_store(&g_ui.done, 1);
    return rc == EB_OK ? 0 : rc;
}

/* Runs nested on the waiting transition's (only) worker. */
static int ui_on_stop(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    if (g_ui.saga != NULL)
        atomic_store(&g_ui.rc, eb_saga_unregister(g_ui.saga));
    else {
        atomic_store(&g_ui.rc, eb_aggregate_unregister(g_ui.agg));
        eb_command_bus_destroy(g_ui.cb); /* does nothing here either */
    }
    return 0;
}

/* A handler nested inside one of a saga's (or an aggregate's) waiting
   transitions once unregistered it: the unsubscribe could not wait for its
   caller and the saga was freed under the transition. */
static void unregister_from_inside(bool saga)
{
    memset(&g_ui, 0, sizeof g_ui);
    atomic_init(&g_ui.rc, 1);
    g_ui.bus = new_bus(1);
    cr_assert_eq(eb_subscribe(g_ui.bus, "admin.stop", ui_on_stop, NULL, NULL, NULL), EB_OK);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.key = "k1";
    o.key_len = 2;
    if (saga) {
        const char *topics[] = {"order.placed"};
        eb_saga_def d = {.name = "s",
                         .topics = topics,
                         .n_topics = 1,
                         .start_topics = topics,
                         .n_start_topics = 1,
                         .state_size = 8,
                         .transition = ui_transition};
        cr_assert_eq(eb_saga_register(g_ui.bus, &d, NULL, &g_ui.saga), EB_OK);
        cr_assert_eq(eb_publish(g_ui.bus, "order.placed", "x", 1, &o), EB_OK);
    } else {
        cr_assert_eq(eb_command_bus_create(g_ui.bus, &g_ui.cb), EB_OK);
        const char *cmds[] = {"acct.open"};
        eb_aggregate_def d = {.name = "acct",
                              .commands = cmds,
                              .n_commands = 1,
                              .state_size = 8,
                              .handle = ui_handle};
        cr_assert_eq(eb_aggregate_register(g_ui.cb, &d, NULL, &g_ui.agg), EB_OK);
        cr_assert_eq(eb_command_send(g_ui.cb, "acct.open", "x", 1, &o), EB_OK);
    }
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&g_ui.done) == 1);
    cr_assert(ok, "the transition never returned");
    cr_assert_eq(atomic_load(&g_ui.rc), EB_EDEADLK, "got %s", eb_err_name(atomic_load(&g_ui.rc)));
    if (saga)
        cr_assert_eq(eb_saga_unregister(g_ui.saga), EB_OK, "from outside it works");
    else
        eb_command_bus_destroy(g_ui.cb);
    eb_bus_destroy(g_ui.bus);
}

Test(saga, unregistering_a_saga_from_a_handler_nested_in_its_transition_returns_edeadlk)
{
    unregister_from_inside(true);
}

Test(saga, unregistering_an_aggregate_from_a_handler_nested_in_its_command_returns_edeadlk)
{
    unregister_from_inside(false);
}

/* ---- the saga's own timeouts (audit) ---- */

struct own_to {
    atomic_uint transitions;
    atomic_uint timeouts; /* transitions that received the timeout */
    bool complete_first;  /* the first transition completes the instance */
};

static int own_to_transition(eb_saga_ctx *sc, const eb_event *ev, void *st, void *ctx)
{
    (void)st;
    struct own_to *o = ctx;
    atomic_fetch_add(&o->transitions, 1);
    if (strcmp(eb_event_topic(ev), "order.timeout") == 0) {
        atomic_fetch_add(&o->timeouts, 1);
        eb_saga_complete(sc);
        return 0;
    }
    int rc = eb_saga_schedule_timeout(sc, 20 * T_MS, "order.timeout", NULL, 0);
    if (o->complete_first)
        eb_saga_complete(sc);
    return rc;
}

/* Reads the order id from the first 4 payload bytes; a timeout has none. */
static int own_to_key(const eb_event *ev, const void **key, size_t *len, void *ctx)
{
    (void)ctx;
    size_t n;
    const void *p = eb_event_payload(ev, &n);
    if (n < 4)
        return EB_ENOENT;
    *key = p;
    *len = 4;
    return EB_OK;
}

static void own_timeout_run(struct own_to *o, bool key_fn, eb_saga_stats *st)
{
    eb_bus *bus = new_bus(2);
    const char *topics[] = {"order.#"};
    eb_saga_def d = {.name = "own",
                     .topics = topics,
                     .n_topics = 1,
                     .start_topics = topics,
                     .n_start_topics = 1,
                     .key = key_fn ? own_to_key : NULL,
                     .state_size = 8,
                     .transition = own_to_transition,
                     .ctx = o};
    eb_saga *saga = NULL;
    cr_assert_eq(eb_saga_register(bus, &d, NULL, &saga), EB_OK);
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.key = "o-17";
    po.key_len = 4;
    cr_assert_eq(eb_publish(bus, "order.placed", "o-17", 4, &po), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, eb_saga_stats_get(saga, st) == EB_OK && st->transitions + st->ignored >= 2);
    cr_assert(ok, "the timeout never came back");
    t_sleep_ms(50);
    cr_assert_eq(eb_saga_stats_get(saga, st), EB_OK);
    cr_assert_eq(eb_saga_unregister(saga), EB_OK);
    eb_bus_destroy(bus);
}

/* A completed and removed instance ignores its timeout: it created a new
   instance (order.# is also a start topic). */
Test(saga, a_removed_instance_ignores_its_own_timeout)
{
    struct own_to o = {.complete_first = true};
    eb_saga_stats st;
    own_timeout_run(&o, false, &st);
    cr_assert_eq(st.started, 1, "the timeout started a new instance");
    cr_assert_eq(atomic_load(&o.timeouts), 0);
    cr_assert_eq(st.ignored, 1);
}

/* EB_SAGA_REMOVE: the remove of a completed instance fails once (a store
   error there is ignored: it is retried by the next event of the key).
   The next start event removes it and creates the new instance, as it
   would have if the remove had worked (it used to be ignored: lost). */
static int rf_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ev;
    (void)state;
    size_t kl;
    const void *k = eb_saga_key(sc, &kl);
    atomic_fetch_add((atomic_uint *)ctx, 1);
    eb_saga_complete(sc); /* a one-shot workflow: one command, done */
    return eb_saga_publish(sc, "job.done", "x", 1, k, kl);
}

Test(saga, a_start_event_after_a_failed_remove_creates_the_next_instance)
{
    eb_bus *bus = t_bus_new(2);
    eb_saga_store *real = NULL;
    cr_assert_eq(eb_saga_memory_store_create(&real), EB_OK);
    t_saga_fwd wrapper;
    t_saga_fwd_init(&wrapper, real);
    atomic_uint runs = 0;
    t_counter done;
    t_counter_init(&done);
    eb_subscription *sub = t_sub(bus, "job.done", t_count_handler, &done, EB_DELIVERY_SERIAL, 0);
    const char *topics[] = {"job.start"};
    eb_saga_def def = {.name = "job",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .state_size = 8,
                       .transition = rf_transition,
                       .ctx = &runs};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = &wrapper.store;
    eb_saga *g = NULL;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &g), EB_OK);
    eb_publish_options po = t_bounded_opts();
    po.key = "K";
    po.key_len = 1;
    cr_assert_eq(eb_publish_wait(bus, "job.start", NULL, 0, &po, NULL), EB_OK);
    atomic_store(&wrapper.fail_remove, 1); /* the next completion's remove fails */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(eb_publish_wait(bus, "job.start", NULL, 0, &po, NULL), EB_OK);
    cr_assert_eq(atomic_load(&runs), 4, "a start event was lost");
    cr_assert(t_wait_ge(&done.calls, 4));
    eb_saga_stats st;
    cr_assert_eq(eb_saga_stats_get(g, &st), EB_OK);
    cr_assert_eq(st.started, 4);
    cr_assert_eq(st.ignored, 0);
    cr_assert_eq(eb_saga_unregister(g), EB_OK);
    cr_assert_eq(eb_unsubscribe(sub), EB_OK);
    eb_bus_destroy(bus);
    eb_saga_store_destroy(real);
}

/* A command id of an instance with a start id carries its tag, and only
   such ids of this saga and key give one back. */
Test(saga, command_ids_carry_their_instance_tag_and_no_other_id_passes_for_one)
{
    uint8_t s1[16], s2[16];
    for (int i = 0; i < 16; i++) {
        s1[i] = (uint8_t)(i + 1);
        s2[i] = (uint8_t)(i + 2);
    }
    eb__saga_tag t1, t2, k2, other_saga;
    eb__saga_tag_init(&t1, "inc", "K", 1, s1);
    eb__saga_tag_init(&t2, "inc", "K", 1, s2);
    eb__saga_tag_init(&k2, "inc", "K2", 2, s1);
    eb__saga_tag_init(&other_saga, "other", "K", 1, s1);
    cr_assert_neq(t1.tag, t2.tag);
    uint8_t a[16], b[16], c[16], other[16];
    eb__saga_command_id(&t1, 1, 0, a);
    eb__saga_command_id(&t1, 1, 1, b);
    eb__saga_command_id(&t1, 2, 0, c);
    cr_assert(memcmp(a, b, 16) != 0 && memcmp(a, c, 16) != 0 && memcmp(b, c, 16) != 0);
    cr_assert_eq(a[6] >> 4, 8, "UUID version 8");
    cr_assert_eq(a[8] >> 6, 2, "RFC 9562 variant");
    uint64_t got = 0;
    cr_assert(eb__saga_tag_of(&t2, a, &got), "an id of the key, whatever its instance");
    cr_assert_eq(got, t1.tag);
    cr_assert(eb__saga_tag_of(&t1, c, &got));
    cr_assert_eq(got, t1.tag);
    cr_assert_not(eb__saga_tag_of(&k2, a, &got), "another key");
    cr_assert_not(eb__saga_tag_of(&other_saga, a, &got), "another saga");
    eb__saga_id("inc", "K", 1, true, 1, 0, other); /* a record without a start id */
    cr_assert_not(eb__saga_tag_of(&t1, other, &got));
    memcpy(other, a, 16);
    other[6] = (uint8_t)((other[6] & 0x0f) | 0x70); /* a bus event id's version */
    cr_assert_not(eb__saga_tag_of(&t1, other, &got));
}

/* EB_SAGA_REMOVE: instance A of a key completes and is removed while its
   timeout is pending; instance B of the same key starts before it fires.
   A's timeout is ignored (it used to reach B, carrying A's ids), B gets
   its own, and the two send their first commands with different ids (they
   used to repeat: ids came from the key and the transition number). */
Test(saga, a_new_instance_of_a_key_ignores_the_timeouts_of_the_one_before)
{
    eb_bus *bus = t_bus_new(2);
    eb_saga_store *store = NULL;
    cr_assert_eq(eb_saga_memory_store_create(&store), EB_OK);
    t_inc t = {.delay_ns = 300 * T_MS};
    eb_saga_stats st;
    t_inc_run(bus, store, 0, &t, &st);
    cr_expect_eq(atomic_load(&t.foreign), 0, "B got A's timeout");
    cr_expect_eq(atomic_load(&t.timeouts), 1);
    cr_expect_eq(st.ignored, 1, "A's timeout was not ignored");
    cr_expect_eq(st.started, 2);
    cr_expect(memcmp(t.ids[0], t.ids[1], 16) != 0, "A and B sent the same command id");
    eb_bus_destroy(bus);
    eb_saga_store_destroy(store);
}

/* A store that keeps no start id (a custom store written before them)
   cannot tell the instances of a key apart: A's timeout reaches B, as it
   did before start ids. Only the transition that creates an instance knows
   its start id without the store, so the first commands still differ. */
Test(saga, a_store_that_keeps_no_start_id_cannot_tell_the_instances_of_a_key_apart)
{
    eb_bus *bus = t_bus_new(2);
    eb_saga_store *real = NULL;
    cr_assert_eq(eb_saga_memory_store_create(&real), EB_OK);
    t_saga_fwd wrapper;
    t_saga_fwd_init(&wrapper, real);
    wrapper.drop_start = true;
    t_inc t = {.delay_ns = 300 * T_MS};
    eb_saga_stats st;
    t_inc_run(bus, &wrapper.store, 0, &t, &st);
    cr_expect_eq(atomic_load(&t.foreign), 1);
    cr_expect_eq(st.started, 2);
    cr_expect(memcmp(t.ids[0], t.ids[1], 16) != 0);
    eb_bus_destroy(bus);
    eb_saga_store_destroy(real);
}

/* With a key function that reads the payload, the timeout (no payload)
   still comes back to its instance, by its event key. */
Test(saga, a_timeout_comes_back_to_its_instance_when_the_saga_has_a_key_function)
{
    struct own_to o = {.complete_first = false};
    eb_saga_stats st;
    own_timeout_run(&o, true, &st);
    cr_assert_eq(atomic_load(&o.timeouts), 1, "the timeout was ignored");
    cr_assert_eq(st.started, 1);
    cr_assert_eq(st.completed, 1);
}

/* ---- register checks its options before its recovery (audit) ---- */

static atomic_int ps_walked;

static int ps_pending(eb_saga_store *st, const char *saga,
                      int (*fn)(const void *key, size_t key_len, const eb_saga_record *rec,
                                void *ctx),
                      void *ctx)
{
    (void)st, (void)saga, (void)fn, (void)ctx;
    atomic_fetch_add(&ps_walked, 1);
    return EB_OK;
}

/* Options that eb_subscribe refuses used to be found only after the
   recovery had re-sent a crashed transition's commands. */
Test(saga, register_refuses_bad_subscription_options_before_its_recovery_runs)
{
    eb_bus *bus = new_bus(1);
    eb_saga_store st = stub_store(ps_pending);
    eb_saga_def def = ab_saga;
    eb_saga_options o;
    eb_saga_options_init(&o);
    o.store = &st;
    o.mailbox_capacity = 1u << 21;
    eb_saga *saga = NULL;
    atomic_store(&ps_walked, 0);
    cr_assert_eq(eb_saga_register(bus, &def, &o, &saga), EB_EINVAL);
    o.mailbox_capacity = 0;
    o.backoff_initial_ns = 2000000000;
    o.backoff_max_ns = 1000000000;
    cr_assert_eq(eb_saga_register(bus, &def, &o, &saga), EB_EINVAL);
    cr_assert_eq(atomic_load(&ps_walked), 0, "the recovery ran");
    o.backoff_initial_ns = 0;
    o.backoff_max_ns = 0;
    cr_assert_eq(eb_saga_register(bus, &def, &o, &saga), EB_OK);
    cr_assert_eq(atomic_load(&ps_walked), 1);
    cr_assert_eq(eb_saga_unregister(saga), EB_OK);
    eb_bus_destroy(bus);
}

/* A command published without a key (not through eb_command_send) was
   retried max_attempts times with backoff, ahead of every command of its
   KEYED lane (about 90 s with the defaults): it is dead-lettered at once. */
Test(command, a_command_without_an_aggregate_id_is_dead_lettered_at_once)
{
    eb_bus *bus = new_bus(2);
    p2p_ctx c;
    memset(&c, 0, sizeof(c));
    eb_command_bus *cb;
    cr_assert_eq(eb_command_bus_create(bus, &cb), EB_OK);
    const char *cmds[] = {"acct.deposit"};
    eb_aggregate_def def = {.name = "acct",
                            .commands = cmds,
                            .n_commands = 1,
                            .state_size = sizeof(uint32_t),
                            .handle = p2p_handle,
                            .ctx = &c};
    eb_aggregate_options ao;
    eb_aggregate_options_init(&ao);
    ao.lanes = 1; /* every aggregate id behind the keyless command */
    eb_aggregate *a = NULL;
    cr_assert_eq(eb_aggregate_register(cb, &def, &ao, &a), EB_OK);
    cr_assert_eq(eb_publish(bus, "acct.deposit", NULL, 0, NULL), EB_OK);
    eb_publish_options po;
    eb_publish_options_init(&po);
    for (int i = 0; i < 16; i++) {
        char id[8];
        snprintf(id, sizeof id, "a%d", i);
        po.key = id;
        po.key_len = strlen(id);
        cr_assert_eq(eb_command_send(cb, "acct.deposit", NULL, 0, &po), EB_OK);
    }
    bool ok = t_wait_ge(&c.handled, 16);
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    eb_command_bus_destroy(cb);
    eb_bus_destroy(bus);
    cr_assert(ok, "%u of 16 commands handled", atomic_load(&c.handled));
    cr_assert_eq(st.dead_lettered, 1);
    cr_assert_eq(st.retried, 0, "the keyless command was retried");
}
