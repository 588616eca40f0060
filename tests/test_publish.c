/*
 * Publishing: fire-and-forget, wait-for-all results, async tickets, payload
 * copy versus zero-copy ownership, the event accessors (topic, payload, key,
 * ids, sequence, timestamp) and event retention.
 */
#include "common.h"

TestSuite(publish, .timeout = EB_CRITERION_TIMEOUT);

Test(publish, fire_and_forget_is_delivered)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "ff", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(t_pub_u32(bus, "ff", 42), EB_OK);
    cr_assert(t_wait_ge(&c.calls, 1));
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&c.calls), 1);
    cr_assert_eq(c.rec[0], 42);
}

Test(publish, fire_and_forget_without_subscribers_succeeds)
{
    eb_bus *bus = t_bus_new(1);
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(eb_publish(bus, "nobody", "x", 1, NULL), EB_OK);
    }
    eb_bus_stats st;
    bool ok;
    T_WAIT_STATS(ok, bus, st, st.unrouted == 100);
    cr_assert(ok);
    eb_bus_destroy(bus);
}

static int return_ctx_code(const eb_event *ev, void *ctx)
{
    (void)ev;
    return (int)(intptr_t)ctx;
}

Test(publish, publish_wait_reports_matched_delivered_failed_and_first_error)
{
    eb_bus *bus = t_bus_new(2);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 1;
    cr_assert_eq(eb_subscribe(bus, "w", return_ctx_code, (void *)(intptr_t)0, &o, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(bus, "w", return_ctx_code, (void *)(intptr_t)0, &o, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(bus, "w", return_ctx_code, (void *)(intptr_t)EB_EIO, &o, NULL),
                 EB_OK);
    eb_publish_result r = t_pub_wait(bus, "w", "p", 1);
    cr_assert_eq(r.matched, 3);
    cr_assert_eq(r.delivered, 2);
    cr_assert_eq(r.failed, 1);
    cr_assert_eq(r.first_error, EB_EIO);
    eb_bus_destroy(bus);
}

Test(publish, publish_wait_with_every_handler_failing_reports_all_failed)
{
    eb_bus *bus = t_bus_new(2);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 1;
    cr_assert_eq(eb_subscribe(bus, "w", return_ctx_code, (void *)(intptr_t)-1000, &o, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(bus, "w", return_ctx_code, (void *)(intptr_t)-1000, &o, NULL), EB_OK);
    eb_publish_result r = t_pub_wait(bus, "w", NULL, 0);
    cr_assert_eq(r.matched, 2);
    cr_assert_eq(r.delivered, 0);
    cr_assert_eq(r.failed, 2);
    cr_assert_eq(r.first_error, -1000, "first_error is the handler's code");
    eb_bus_destroy(bus);
}

Test(publish, publish_wait_without_subscribers_reports_nothing_matched)
{
    eb_bus *bus = t_bus_new(2);
    eb_publish_result r = t_pub_wait(bus, "nobody", "x", 1);
    cr_assert_eq(r.matched, 0);
    cr_assert_eq(r.delivered, 0);
    cr_assert_eq(r.failed, 0);
    cr_assert_eq(r.first_error, EB_OK);
    /* result may be NULL, options may be NULL */
    cr_assert_eq(eb_publish_wait(bus, "nobody", NULL, 0, NULL, NULL), EB_OK);
    eb_bus_destroy(bus);
}

Test(publish, publish_wait_returns_after_the_handlers_ran)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c[3];
    for (int i = 0; i < 3; i++) {
        t_counter_init(&c[i]);
        t_sub(bus, "w.#", t_count_handler, &c[i], (eb_delivery)i, 0);
    }
    for (unsigned n = 1; n <= 50; n++) {
        eb_publish_result r = t_pub_wait(bus, "w.x", &n, sizeof n);
        cr_assert_eq(r.delivered, 3);
        for (int i = 0; i < 3; i++) {
            cr_assert_eq(atomic_load(&c[i].calls), n);
        }
    }
    cr_assert_eq(eb_publish_wait(bus, "w.x", NULL, 0, NULL, NULL), EB_OK);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(atomic_load(&c[i].calls), 51);
    }
    eb_bus_destroy(bus);
}

/* Blocks on a gate until the test opens it. */
struct gated {
    t_gate gate;
    atomic_uint calls;
};

static int gated_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct gated *g = ctx;
    t_gate_wait(&g->gate);
    atomic_fetch_add(&g->calls, 1);
    return 0;
}

static void gated_init(struct gated *g)
{
    t_gate_init(&g->gate);
    atomic_init(&g->calls, 0);
}

Test(publish, publish_wait_times_out_and_the_event_is_still_delivered)
{
    eb_bus *bus = t_bus_new(2);
    struct gated g;
    gated_init(&g);
    t_sub(bus, "slow", gated_handler, &g, EB_DELIVERY_SERIAL, 0);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = 30 * T_MS;
    eb_publish_result r;
    memset(&r, 0x5A, sizeof r);
    eb_publish_result untouched = r;
    int64_t t0 = t_now_ns();
    int rc = eb_publish_wait(bus, "slow", NULL, 0, &o, &r);
    int64_t waited = t_now_ns() - t0;
    t_gate_open(&g.gate);
    bool ok = t_wait_ge(&g.calls, 1);
    eb_bus_destroy(bus);
    cr_assert_eq(rc, EB_ETIMEDOUT, "got %s", eb_err_name(rc));
    cr_assert_geq(waited, 30 * T_MS - T_MS, "gave up after %lld ns", (long long)waited);
    cr_assert_eq(memcmp(&r, &untouched, sizeof r), 0, "result written on timeout");
    cr_assert(ok, "a timed-out event was not delivered");
}

Test(publish, publish_wait_with_zero_timeout_does_not_wait_for_completion)
{
    eb_bus *bus = t_bus_new(2);
    struct gated g;
    gated_init(&g);
    t_sub(bus, "slow", gated_handler, &g, EB_DELIVERY_SERIAL, 0);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = 0;
    int rc = eb_publish_wait(bus, "slow", NULL, 0, &o, NULL);
    t_gate_open(&g.gate);
    bool ok = t_wait_ge(&g.calls, 1);
    eb_bus_destroy(bus);
    cr_assert_eq(rc, EB_ETIMEDOUT, "got %s", eb_err_name(rc));
    cr_assert(ok);
}

/* ---- async tickets ---- */

Test(publish, async_tickets_complete_with_results)
{
    enum { N = 32 };
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "a.*", t_count_handler, &c, EB_DELIVERY_CONCURRENT, 0);
    eb_ticket *t[N];
    for (uint32_t i = 0; i < N; i++) {
        t[i] = NULL;
        cr_assert_eq(eb_publish_async(bus, i % 2 ? "a.b" : "x", &i, sizeof i, NULL, &t[i]), EB_OK);
        cr_assert_not_null(t[i]);
    }
    for (uint32_t i = 0; i < N; i++) {
        eb_publish_result r;
        cr_assert_eq(eb_ticket_wait(t[i], t_wait_budget_ns(), &r), EB_OK);
        cr_assert_eq(r.matched, i % 2 ? 1u : 0u);
        cr_assert_eq(r.delivered, r.matched);
        cr_assert_eq(r.failed, 0);
        cr_assert_eq(r.first_error, EB_OK);
        /* It may be waited on again, and polled. */
        eb_publish_result r2;
        cr_assert_eq(eb_ticket_wait(t[i], 0, &r2), EB_OK);
        cr_assert_eq(memcmp(&r, &r2, sizeof r), 0);
        cr_assert_eq(eb_ticket_wait(t[i], -1, NULL), EB_OK);
    }
    for (uint32_t i = 0; i < N; i++) {
        eb_ticket_release(t[i]);
    }
    eb_ticket_release(NULL);
    cr_assert_eq(atomic_load(&c.calls), N / 2);
    eb_bus_destroy(bus);
}

Test(publish, ticket_wait_times_out_then_later_succeeds)
{
    eb_bus *bus = t_bus_new(2);
    struct gated g;
    gated_init(&g);
    t_sub(bus, "slow", gated_handler, &g, EB_DELIVERY_SERIAL, 0);
    eb_ticket *t = NULL;
    cr_assert_eq(eb_publish_async(bus, "slow", "x", 1, NULL, &t), EB_OK);
    eb_publish_result r;
    memset(&r, 0x5A, sizeof r);
    eb_publish_result untouched = r;
    int rc0 = eb_ticket_wait(t, 0, &r);
    int64_t t0 = t_now_ns();
    int rc1 = eb_ticket_wait(t, 20 * T_MS, &r);
    int64_t waited = t_now_ns() - t0;
    bool same = memcmp(&r, &untouched, sizeof r) == 0;
    t_gate_open(&g.gate);
    int rc2 = eb_ticket_wait(t, t_wait_budget_ns(), &r);
    eb_ticket_release(t);
    eb_bus_destroy(bus);
    cr_assert_eq(rc0, EB_ETIMEDOUT, "poll: %s", eb_err_name(rc0));
    cr_assert_eq(rc1, EB_ETIMEDOUT, "timed wait: %s", eb_err_name(rc1));
    cr_assert_geq(waited, 20 * T_MS - T_MS);
    cr_assert(same, "result written on timeout");
    cr_assert_eq(rc2, EB_OK);
    cr_assert_eq(r.matched, 1);
    cr_assert_eq(r.delivered, 1);
}

Test(publish, a_ticket_may_be_released_before_its_event_is_delivered)
{
    eb_bus *bus = t_bus_new(2);
    struct gated g;
    gated_init(&g);
    t_sub(bus, "slow", gated_handler, &g, EB_DELIVERY_SERIAL, 0);
    for (int i = 0; i < 10; i++) {
        eb_ticket *t = NULL;
        cr_assert_eq(eb_publish_async(bus, "slow", "x", 1, NULL, &t), EB_OK);
        eb_ticket_release(t);
    }
    t_gate_open(&g.gate);
    bool ok = t_wait_ge(&g.calls, 10);
    eb_bus_destroy(bus);
    cr_assert(ok);
}

struct ticket_thread {
    eb_ticket *t;
    int rc;
    eb_publish_result r;
};

static void *ticket_waiter(void *arg)
{
    struct ticket_thread *tt = arg;
    tt->rc = eb_ticket_wait(tt->t, t_wait_budget_ns(), &tt->r);
    return NULL;
}

Test(publish, a_ticket_can_be_waited_on_from_another_thread)
{
    eb_bus *bus = t_bus_new(2);
    struct gated g;
    gated_init(&g);
    t_sub(bus, "slow", gated_handler, &g, EB_DELIVERY_SERIAL, 0);
    struct ticket_thread tt = {0};
    cr_assert_eq(eb_publish_async(bus, "slow", "x", 1, NULL, &tt.t), EB_OK);
    pthread_t th[2];
    struct ticket_thread copies[2] = {tt, tt};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(pthread_create(&th[i], NULL, ticket_waiter, &copies[i]), 0);
    }
    t_sleep_ms(20);
    t_gate_open(&g.gate);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
    }
    eb_ticket_release(tt.t);
    eb_bus_destroy(bus);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(copies[i].rc, EB_OK);
        cr_assert_eq(copies[i].r.delivered, 1);
    }
}

/* ---- payload ownership ---- */

struct payload_seen {
    t_gate gate;
    atomic_uint calls;
    const void *ptr;
    size_t len;
    char first; /* payload[0] when the payload is empty */
    char bytes[64];
};

static int payload_handler(const eb_event *ev, void *ctx)
{
    struct payload_seen *s = ctx;
    t_gate_wait(&s->gate);
    size_t len = 0;
    const void *p = eb_event_payload(ev, &len);
    s->ptr = p;
    s->len = len;
    /* The event is gone after the handler: keep what the tests look at. */
    s->first = (p != NULL && len == 0) ? ((const char *)p)[0] : 'X';
    if (p && len <= sizeof s->bytes) {
        memcpy(s->bytes, p, len);
    }
    atomic_fetch_add(&s->calls, 1);
    return 0;
}

static void payload_seen_init(struct payload_seen *s)
{
    memset(s, 0, sizeof *s);
    t_gate_init(&s->gate);
    atomic_init(&s->calls, 0);
}

Test(publish, payload_is_copied_by_default)
{
    eb_bus *bus = t_bus_new(2);
    struct payload_seen s;
    payload_seen_init(&s);
    t_sub(bus, "p", payload_handler, &s, EB_DELIVERY_SERIAL, 0);
    char buf[16] = "hello, world";
    cr_assert_eq(eb_publish(bus, "p", buf, 13, NULL), EB_OK);
    /* The caller may reuse its buffer as soon as publish returns. */
    memset(buf, 'X', sizeof buf);
    t_gate_open(&s.gate);
    cr_assert(t_wait_ge(&s.calls, 1));
    eb_bus_destroy(bus);
    cr_assert_neq(s.ptr, (const void *)buf);
    cr_assert_eq(s.len, 13);
    cr_assert_str_eq(s.bytes, "hello, world");
}

Test(publish, empty_payload_points_at_an_empty_string)
{
    eb_bus *bus = t_bus_new(2);
    struct payload_seen s;
    payload_seen_init(&s);
    t_gate_open(&s.gate);
    t_sub(bus, "p", payload_handler, &s, EB_DELIVERY_SERIAL, 0);
    s.len = 99;
    t_pub_wait(bus, "p", NULL, 0);
    cr_assert_not_null(s.ptr);
    cr_assert_eq(s.len, 0);
    cr_assert_eq(s.first, '\0');
    s.ptr = NULL;
    t_pub_wait(bus, "p", "ignored", 0);
    cr_assert_not_null(s.ptr);
    cr_assert_eq(s.len, 0);
    eb_bus_destroy(bus);
}

Test(publish, large_payloads_are_copied_whole)
{
    enum { LEN = 1 << 20 };
    eb_bus *bus = t_bus_new(2);
    unsigned char *big = malloc(LEN);
    for (size_t i = 0; i < LEN; i++) {
        big[i] = (unsigned char)(i * 7 + 3);
    }
    struct payload_seen s;
    payload_seen_init(&s);
    t_gate_open(&s.gate);
    t_sub(bus, "p", payload_handler, &s, EB_DELIVERY_SERIAL, 0);
    t_pub_wait(bus, "p", big, LEN);
    cr_assert_eq(s.len, LEN);
    eb_bus_destroy(bus);
    free(big);
}

static atomic_int g_free_calls;
static void *g_freed_ptr;

static void counting_free(void *p)
{
    g_freed_ptr = p;
    atomic_fetch_add(&g_free_calls, 1);
    free(p);
}

Test(publish, zero_copy_payload_is_passed_through_and_freed_exactly_once)
{
    atomic_store(&g_free_calls, 0);
    eb_bus *bus = t_bus_new(2);
    struct payload_seen s1, s2;
    payload_seen_init(&s1);
    payload_seen_init(&s2);
    t_gate_open(&s1.gate);
    t_gate_open(&s2.gate);
    t_sub(bus, "zc", payload_handler, &s1, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "zc", payload_handler, &s2, EB_DELIVERY_CONCURRENT, 0);
    char *p = malloc(8);
    memcpy(p, "zerocpy", 8);
    eb_publish_options o = t_bounded_opts();
    o.payload_free = counting_free;
    eb_publish_result r;
    cr_assert_eq(eb_publish_wait(bus, "zc", p, 8, &o, &r), EB_OK);
    cr_assert_eq(r.delivered, 2);
    cr_assert_eq(s1.ptr, (const void *)p, "zero-copy payload was copied");
    cr_assert_eq(s2.ptr, (const void *)p);
    cr_assert_str_eq(s1.bytes, "zerocpy");
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&g_free_calls) >= 1);
    eb_bus_destroy(bus);
    cr_assert(ok, "payload_free never called");
    cr_assert_eq(atomic_load(&g_free_calls), 1);
    cr_assert_eq(g_freed_ptr, (void *)p);
}

Test(publish, zero_copy_payload_is_freed_once_when_nobody_subscribed)
{
    atomic_store(&g_free_calls, 0);
    eb_bus *bus = t_bus_new(2);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.payload_free = counting_free;
    for (int i = 0; i < 10; i++) {
        char *p = malloc(4);
        memcpy(p, "abc", 4);
        cr_assert_eq(eb_publish(bus, "nobody", p, 4, &o), EB_OK);
    }
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&g_free_calls) >= 10);
    eb_bus_destroy(bus);
    cr_assert(ok, "payload_free called %d times", atomic_load(&g_free_calls));
    cr_assert_eq(atomic_load(&g_free_calls), 10);
}

Test(publish, zero_copy_payload_is_freed_once_by_destroy)
{
    atomic_store(&g_free_calls, 0);
    eb_bus *bus = t_bus_new(1);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "zc", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "zc", t_count_handler, &c, EB_DELIVERY_KEYED, 0);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.payload_free = counting_free;
    for (uint32_t i = 0; i < 50; i++) {
        uint32_t *p = malloc(sizeof *p);
        *p = i;
        cr_assert_eq(eb_publish(bus, "zc", p, sizeof *p, &o), EB_OK);
    }
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&c.calls), 100);
    cr_assert_eq(atomic_load(&g_free_calls), 50);
}

Test(publish, zero_copy_payload_stays_with_the_caller_when_publish_fails)
{
    atomic_store(&g_free_calls, 0);
    eb_bus *bus = t_bus_new(2);
    char *p = malloc(8);
    memcpy(p, "mine", 5);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.payload_free = counting_free;
    o.flags = 0x40; /* unknown flag: EB_EINVAL */
    eb_ticket *t = NULL;
    eb_publish_result r;
    cr_assert_eq(eb_publish(bus, "t", p, 5, &o), EB_EINVAL);
    cr_assert_eq(eb_publish_wait(bus, "t", p, 5, &o, &r), EB_EINVAL);
    cr_assert_eq(eb_publish_async(bus, "t", p, 5, &o, &t), EB_EINVAL);
    o.flags = 0;
    o.key = NULL;
    o.key_len = 3; /* NULL key with a length: EB_EINVAL */
    cr_assert_eq(eb_publish(bus, "t", p, 5, &o), EB_EINVAL);
    o.key_len = 0;
    cr_assert_eq(eb_publish(bus, NULL, p, 5, &o), EB_EINVAL);
    cr_assert_eq(eb_publish_async(bus, "t", p, 5, &o, NULL), EB_EINVAL);
    t_sleep_ms(20);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&g_free_calls), 0, "the bus freed a payload it did not own");
    cr_assert_str_eq(p, "mine");
    free(p);
}

/* Fills a tiny ring behind a blocked handler so publishes with timeout 0 fail. */
Test(publish, full_ring_returns_eagain_and_keeps_a_zero_copy_payload_with_the_caller)
{
    atomic_store(&g_free_calls, 0);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.intake_capacity = 2;
    cfg.mailbox_capacity = 2;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    struct gated g;
    gated_init(&g);
    t_sub(bus, "full", gated_handler, &g, EB_DELIVERY_SERIAL, 0);
    int rc;
    unsigned accepted = t_fill_until_stuck(bus, "full", &rc);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = 0;
    char *p = malloc(4);
    memcpy(p, "zc!", 4);
    o.payload_free = counting_free;
    int zrc = eb_publish(bus, "full", p, 4, &o);
    eb_ticket *t = NULL;
    int arc = eb_publish_async(bus, "full", p, 4, &o, &t);
    eb_publish_result r;
    memset(&r, 0x33, sizeof r);
    int wrc = eb_publish_wait(bus, "full", p, 4, &o, &r);
    o.timeout_ns = 10 * T_MS;
    int trc = eb_publish(bus, "full", p, 4, &o);
    /* EB_ETIMEDOUT from eb_publish_wait says "published, not finished": a
       full intake is EB_EAGAIN, also with a timeout. */
    int wtrc = eb_publish_wait(bus, "full", p, 4, &o, &r);
    t_gate_open(&g.gate);
    bool ok = t_wait_ge(&g.calls, accepted);
    eb_bus_destroy(bus);
    cr_assert_eq(rc, EB_EAGAIN, "got %s", eb_err_name(rc));
    cr_assert_eq(zrc, EB_EAGAIN, "got %s", eb_err_name(zrc));
    cr_assert_eq(arc, EB_EAGAIN, "got %s", eb_err_name(arc));
    cr_assert_null(t, "ticket written on failure");
    cr_assert_eq(wrc, EB_EAGAIN, "got %s", eb_err_name(wrc));
    cr_assert_eq(trc, EB_ETIMEDOUT, "got %s", eb_err_name(trc));
    cr_assert_eq(wtrc, EB_EAGAIN, "got %s", eb_err_name(wtrc));
    cr_assert(ok);
    cr_assert_eq(atomic_load(&g.calls), accepted, "a refused publish was delivered");
    cr_assert_eq(atomic_load(&g_free_calls), 0);
    free(p);
}

/* ---- accessors ---- */

struct accessor_seen {
    char topic[EB_TOPIC_MAX + 1];
    char key[300];
    size_t key_len;
    bool has_key;
    uint64_t seq;
    uint8_t id[16];
    int64_t ts;
    unsigned attempt;
    bool has_corr, has_cause;
    uint8_t corr[16], cause[16];
    atomic_uint calls;
};

static int accessor_handler(const eb_event *ev, void *ctx)
{
    struct accessor_seen *s = ctx;
    snprintf(s->topic, sizeof s->topic, "%s", eb_event_topic(ev));
    size_t klen = 12345;
    const void *k = eb_event_key(ev, &klen);
    s->has_key = k != NULL;
    s->key_len = klen;
    if (k && klen <= sizeof s->key) {
        memcpy(s->key, k, klen);
    }
    s->seq = eb_event_seq(ev);
    eb_event_id(ev, s->id);
    s->ts = eb_event_timestamp(ev);
    s->attempt = eb_event_attempt(ev);
    memset(s->corr, 0xAA, 16);
    memset(s->cause, 0xAA, 16);
    s->has_corr = eb_event_correlation_id(ev, s->corr);
    s->has_cause = eb_event_causation_id(ev, s->cause);
    atomic_fetch_add(&s->calls, 1);
    return 0;
}

static const uint8_t zero16[16];

Test(publish, handlers_see_topic_key_seq_id_timestamp_and_attempt)
{
    eb_bus *bus = t_bus_new(2);
    struct accessor_seen *s = calloc(1, sizeof *s);
    t_sub(bus, "acc.#", accessor_handler, s, EB_DELIVERY_SERIAL, 0);
    int64_t before = t_realtime_ns();
    eb_publish_options o = t_bounded_opts();
    char key[255];
    for (int i = 0; i < 255; i++) {
        key[i] = (char)(i + 1);
    }
    o.key = key;
    o.key_len = 255;
    cr_assert_eq(eb_publish_wait(bus, "acc.one", "v", 1, &o, NULL), EB_OK);
    int64_t after = t_realtime_ns();
    cr_assert_str_eq(s->topic, "acc.one");
    cr_assert(s->has_key);
    cr_assert_eq(s->key_len, 255);
    cr_assert_eq(memcmp(s->key, key, 255), 0);
    cr_assert_geq(s->seq, 1);
    cr_assert_neq(memcmp(s->id, zero16, 16), 0, "id is all zero");
    cr_assert_geq(s->ts, before - 2 * T_MS, "timestamp %lld before publish %lld", (long long)s->ts,
                  (long long)before);
    cr_assert_leq(s->ts, after + 2 * T_MS, "timestamp from the future");
    cr_assert_eq(s->attempt, 1);
    cr_assert_not(s->has_corr);
    cr_assert_not(s->has_cause);
    cr_assert_eq(memcmp(s->corr, zero16, 16), 0, "correlation id not zeroed");
    cr_assert_eq(memcmp(s->cause, zero16, 16), 0, "causation id not zeroed");

    /* No key: NULL and length 0. */
    cr_assert_eq(eb_publish_wait(bus, "acc.two", NULL, 0, NULL, NULL), EB_OK);
    cr_assert_not(s->has_key);
    cr_assert_eq(s->key_len, 0);
    cr_assert_str_eq(s->topic, "acc.two");
    eb_bus_destroy(bus);
    free(s);
}

Test(publish, explicit_correlation_and_causation_ids_are_kept)
{
    eb_bus *bus = t_bus_new(2);
    struct accessor_seen *s = calloc(1, sizeof *s);
    t_sub(bus, "ids", accessor_handler, s, EB_DELIVERY_SERIAL, 0);
    uint8_t corr[16], cause[16];
    for (int i = 0; i < 16; i++) {
        corr[i] = (uint8_t)(0x10 + i);
        cause[i] = (uint8_t)(0xC0 + i);
    }
    eb_publish_options o = t_bounded_opts();
    o.correlation_id = corr;
    o.causation_id = cause;
    cr_assert_eq(eb_publish_wait(bus, "ids", NULL, 0, &o, NULL), EB_OK);
    cr_assert(s->has_corr);
    cr_assert(s->has_cause);
    cr_assert_eq(memcmp(s->corr, corr, 16), 0);
    cr_assert_eq(memcmp(s->cause, cause, 16), 0);
    eb_bus_destroy(bus);
    free(s);
}

/* Chain root -> child -> grandchild: the child inherits the correlation id
   and gets the root's id as causation id. */
struct chain {
    eb_bus *bus;
    uint8_t root_id[16], child_id[16];
    struct accessor_seen child, grandchild, override;
    uint8_t explicit_corr[16];
    atomic_int rc_child, rc_grand, rc_override;
};

static int chain_root(const eb_event *ev, void *ctx)
{
    struct chain *c = ctx;
    eb_event_id(ev, c->root_id);
    atomic_store(&c->rc_child, eb_publish_wait(c->bus, "chain.child", NULL, 0, NULL, NULL));
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.correlation_id = c->explicit_corr;
    atomic_store(&c->rc_override, eb_publish_wait(c->bus, "chain.override", NULL, 0, &o, NULL));
    return 0;
}

static int chain_child(const eb_event *ev, void *ctx)
{
    struct chain *c = ctx;
    accessor_handler(ev, &c->child);
    eb_event_id(ev, c->child_id);
    atomic_store(&c->rc_grand, eb_publish(c->bus, "chain.grandchild", NULL, 0, NULL));
    return 0;
}

static int chain_grandchild(const eb_event *ev, void *ctx)
{
    return accessor_handler(ev, &((struct chain *)ctx)->grandchild);
}

static int chain_override(const eb_event *ev, void *ctx)
{
    return accessor_handler(ev, &((struct chain *)ctx)->override);
}

Test(publish, correlation_and_causation_ids_are_inherited_from_the_handled_event)
{
    struct chain *c = calloc(1, sizeof *c);
    c->bus = t_bus_new(2);
    for (int i = 0; i < 16; i++) {
        c->explicit_corr[i] = (uint8_t)(0x70 + i);
    }
    t_sub(c->bus, "chain.root", chain_root, c, EB_DELIVERY_SERIAL, 0);
    t_sub(c->bus, "chain.child", chain_child, c, EB_DELIVERY_SERIAL, 0);
    t_sub(c->bus, "chain.grandchild", chain_grandchild, c, EB_DELIVERY_SERIAL, 0);
    t_sub(c->bus, "chain.override", chain_override, c, EB_DELIVERY_SERIAL, 0);
    uint8_t corr[16];
    for (int i = 0; i < 16; i++) {
        corr[i] = (uint8_t)(0x30 + i);
    }
    eb_publish_options o = t_bounded_opts();
    o.correlation_id = corr;
    cr_assert_eq(eb_publish_wait(c->bus, "chain.root", NULL, 0, &o, NULL), EB_OK);
    cr_assert(t_wait_ge(&c->grandchild.calls, 1));
    eb_bus_destroy(c->bus);

    cr_assert_eq(atomic_load(&c->rc_child), EB_OK);
    cr_assert_eq(atomic_load(&c->rc_grand), EB_OK);
    cr_assert_eq(atomic_load(&c->rc_override), EB_OK);
    cr_assert(c->child.has_corr);
    cr_assert_eq(memcmp(c->child.corr, corr, 16), 0, "child did not inherit correlation");
    cr_assert(c->child.has_cause);
    cr_assert_eq(memcmp(c->child.cause, c->root_id, 16), 0, "child causation != root id");
    cr_assert(c->grandchild.has_corr);
    cr_assert_eq(memcmp(c->grandchild.corr, corr, 16), 0);
    cr_assert(c->grandchild.has_cause);
    cr_assert_eq(memcmp(c->grandchild.cause, c->child_id, 16), 0,
                 "grandchild causation != child id");
    cr_assert(c->override.has_corr);
    cr_assert_eq(memcmp(c->override.corr, c->explicit_corr, 16), 0,
                 "explicit correlation id lost inside a handler");
    cr_assert_eq(memcmp(c->override.cause, c->root_id, 16), 0);
    free(c);
}

/* Records seqs and ids in call order. */
enum { NSEQ = 1000 };
struct seq_rec {
    atomic_uint n;
    uint64_t seq[NSEQ];
    uint8_t id[NSEQ][16];
    uint32_t val[NSEQ];
    int64_t ts[NSEQ];
};

static int seq_handler(const eb_event *ev, void *ctx)
{
    struct seq_rec *r = ctx;
    unsigned i = atomic_load(&r->n);
    if (i < NSEQ) {
        r->seq[i] = eb_event_seq(ev);
        eb_event_id(ev, r->id[i]);
        memcpy(&r->val[i], eb_event_payload(ev, NULL), sizeof(uint32_t));
        r->ts[i] = eb_event_timestamp(ev);
    }
    atomic_store(&r->n, i + 1);
    return 0;
}

static uint64_t id_millis(const uint8_t id[16])
{
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++) {
        ms = ms << 8 | id[i];
    }
    return ms;
}

Test(publish, seq_increases_in_dispatch_order_and_ids_are_unique_and_time_ordered)
{
    eb_bus *bus = t_bus_new(2);
    struct seq_rec *r = calloc(1, sizeof *r);
    t_sub(bus, "seq", seq_handler, r, EB_DELIVERY_SERIAL, 0);
    int64_t before_ms = t_realtime_ns() / T_MS;
    for (uint32_t i = 0; i < NSEQ; i++) {
        cr_assert_eq(t_pub_u32(bus, "seq", i), EB_OK);
        if (i % 100 == 99) {
            t_sleep_ms(2); /* spread the ids over several milliseconds */
        }
    }
    bool ok = t_wait_ge(&r->n, NSEQ);
    int64_t after_ms = t_realtime_ns() / T_MS;
    eb_bus_destroy(bus);
    cr_assert(ok);
    for (unsigned i = 0; i < NSEQ; i++) {
        cr_assert_eq(r->val[i], i);
        cr_assert_geq(r->seq[i], 1);
        /* UUIDv7 layout: version 7, variant 10xx. */
        cr_assert_eq(r->id[i][6] >> 4, 7, "id %u is not version 7", i);
        cr_assert_eq(r->id[i][8] & 0xC0, 0x80, "id %u has the wrong variant", i);
        uint64_t ms = id_millis(r->id[i]);
        cr_assert_geq((int64_t)ms, before_ms - 1, "id time %llu before the test",
                      (unsigned long long)ms);
        cr_assert_leq((int64_t)ms, after_ms + 1, "id time %llu after the test",
                      (unsigned long long)ms);
        if (i > 0) {
            cr_assert_gt(r->seq[i], r->seq[i - 1], "seq not increasing at %u", i);
            cr_assert_geq(ms, id_millis(r->id[i - 1]), "id time went back at %u", i);
            cr_assert_geq(r->ts[i], r->ts[i - 1], "timestamp went back at %u", i);
        }
    }
    for (unsigned i = 0; i < NSEQ; i++) {
        for (unsigned j = i + 1; j < NSEQ; j++) {
            cr_assert_neq(memcmp(r->id[i], r->id[j], 16), 0, "ids %u and %u equal", i, j);
        }
    }
    free(r);
}

Test(publish, seq_starts_at_one_on_a_new_bus)
{
    eb_bus *bus = t_bus_new(1);
    struct seq_rec *r = calloc(1, sizeof *r);
    t_sub(bus, "seq", seq_handler, r, EB_DELIVERY_SERIAL, 0);
    uint32_t v = 0;
    t_pub_wait(bus, "seq", &v, sizeof v);
    eb_bus_destroy(bus);
    cr_assert_eq(r->seq[0], 1);
    free(r);
}

/* ---- retention ---- */

struct retained {
    const eb_event *ev;
    atomic_uint calls;
};

static int retain_handler(const eb_event *ev, void *ctx)
{
    struct retained *r = ctx;
    const eb_event *kept = eb_event_retain(ev);
    r->ev = kept == ev ? kept : NULL;
    atomic_fetch_add(&r->calls, 1);
    return 0;
}

Test(publish, retain_keeps_the_event_valid_after_the_handler_returned)
{
    atomic_store(&g_free_calls, 0);
    eb_bus *bus = t_bus_new(2);
    struct retained r = {0};
    t_sub(bus, "keep", retain_handler, &r, EB_DELIVERY_SERIAL, 0);
    char *p = malloc(6);
    memcpy(p, "kept!", 6);
    eb_publish_options o = t_bounded_opts();
    o.payload_free = counting_free;
    o.key = "k1";
    o.key_len = 2;
    cr_assert_eq(eb_publish_wait(bus, "keep", p, 6, &o, NULL), EB_OK);
    cr_assert_not_null(r.ev, "retain did not return its argument");
    /* The event outlives its delivery; the zero-copy payload is not freed. */
    t_sleep_ms(20);
    cr_assert_eq(atomic_load(&g_free_calls), 0, "payload freed while the event was retained");
    cr_assert_str_eq(eb_event_topic(r.ev), "keep");
    size_t len = 0;
    cr_assert_str_eq(eb_event_payload(r.ev, &len), "kept!");
    cr_assert_eq(len, 6);
    size_t klen = 0;
    cr_assert_eq(memcmp(eb_event_key(r.ev, &klen), "k1", 2), 0);
    cr_assert_eq(klen, 2);
    cr_assert_geq(eb_event_seq(r.ev), 1);
    cr_assert_eq(eb_event_attempt(r.ev), 1, "attempt outside the handler is 1");
    /* A second reference, from this thread. */
    eb_event_retain(r.ev);
    eb_event_release(r.ev);
    cr_assert_eq(atomic_load(&g_free_calls), 0);
    eb_event_release(r.ev);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&g_free_calls) == 1);
    cr_assert(ok, "last release did not free the payload");
    eb_event_release(NULL);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&g_free_calls), 1);
}

Test(publish, a_retained_event_may_outlive_its_bus)
{
    eb_bus *bus = t_bus_new(2);
    struct retained r = {0};
    t_sub(bus, "keep", retain_handler, &r, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(eb_publish(bus, "keep", "abc", 4, NULL), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&r.calls), 1);
    cr_assert_not_null(r.ev);
    cr_assert_str_eq(eb_event_topic(r.ev), "keep");
    cr_assert_str_eq(eb_event_payload(r.ev, NULL), "abc");
    eb_event_release(r.ev);
}

/* ---- publishing from many threads ---- */

struct mt_pub {
    eb_bus *bus;
    uint32_t id;
    int fails;
};

static void *mt_publisher(void *arg)
{
    struct mt_pub *p = arg;
    for (uint32_t i = 0; i < 500; i++) {
        uint32_t v = p->id << 16 | i;
        if (eb_publish(p->bus, "mt", &v, sizeof v, NULL) != EB_OK) {
            p->fails++;
        }
    }
    return NULL;
}

struct mt_order {
    atomic_uint n;
    uint32_t next[4]; /* next expected sequence per publisher */
    atomic_uint violations;
};

static int mt_handler(const eb_event *ev, void *ctx)
{
    struct mt_order *o = ctx;
    uint32_t v = t_u32(ev);
    uint32_t id = v >> 16, i = v & 0xFFFF;
    if (id >= 4 || i != o->next[id]) {
        atomic_fetch_add(&o->violations, 1);
    } else {
        o->next[id] = i + 1;
    }
    atomic_fetch_add(&o->n, 1);
    return 0;
}

Test(publish, events_of_one_thread_arrive_in_the_order_that_thread_published_them)
{
    eb_bus *bus = t_bus_new(2);
    struct mt_order ord;
    memset(&ord, 0, sizeof ord);
    t_sub(bus, "mt", mt_handler, &ord, EB_DELIVERY_SERIAL, 0);
    pthread_t th[4];
    struct mt_pub p[4];
    for (uint32_t i = 0; i < 4; i++) {
        p[i] = (struct mt_pub){bus, i, 0};
        cr_assert_eq(pthread_create(&th[i], NULL, mt_publisher, &p[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    bool ok = t_wait_ge(&ord.n, 2000);
    eb_bus_destroy(bus);
    cr_assert(ok);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(p[i].fails, 0);
        cr_assert_eq(ord.next[i], 500);
    }
    cr_assert_eq(atomic_load(&ord.violations), 0, "per-thread publish order broken");
}

/*
 * Waiting publishers from several threads, interleaved with fire-and-forget
 * events, on one SERIAL subscription: the handler never runs twice at once
 * and each thread's events arrive in its order. (A step that takes a lone
 * waited-for event off the intake may run its lane on the spot instead of
 * through the run queue; the lane must still run on one worker at a time.)
 */
enum { WS_THREADS = 4, WS_EVENTS = 3000 };

struct wait_serial {
    atomic_uint in_flight;
    atomic_uint overlaps;
    atomic_uint violations;
    atomic_uint n;
    uint32_t next[WS_THREADS]; /* the SERIAL handler's alone */
};

struct wait_serial_pub {
    eb_bus *bus;
    uint32_t id;
    unsigned fails;
};

static int wait_serial_handler(const eb_event *ev, void *ctx)
{
    struct wait_serial *w = ctx;
    if (atomic_fetch_add(&w->in_flight, 1) != 0)
        atomic_fetch_add(&w->overlaps, 1);
    uint32_t v = t_u32(ev);
    uint32_t id = v >> 16, i = v & 0xFFFF;
    if (id >= WS_THREADS || i != w->next[id])
        atomic_fetch_add(&w->violations, 1);
    else
        w->next[id] = i + 1;
    /* ~1 us of work: other deliveries arrive while the lane runs. */
    int64_t until = t_now_ns() + 1000;
    while (t_now_ns() < until)
        ;
    atomic_fetch_sub(&w->in_flight, 1);
    atomic_fetch_add(&w->n, 1);
    return 0;
}

static void *wait_serial_publisher(void *arg)
{
    struct wait_serial_pub *p = arg;
    for (uint32_t i = 0; i < WS_EVENTS; i++) {
        uint32_t v = (p->id << 16) | i;
        int rc;
        if (i % 3 == 0) {
            rc = eb_publish(p->bus, "ws", &v, sizeof v, NULL);
        } else {
            eb_publish_result r;
            rc = eb_publish_wait(p->bus, "ws", &v, sizeof v, NULL, &r);
            if (rc == EB_OK && (r.matched != 1 || r.delivered != 1))
                rc = EB_EIO;
        }
        if (rc != EB_OK)
            p->fails++;
    }
    return NULL;
}

Test(publish, waiting_publishers_on_several_threads_get_a_serial_handler_one_at_a_time_in_order)
{
    eb_bus *bus = t_bus_new(2);
    struct wait_serial w;
    memset(&w, 0, sizeof w);
    t_sub(bus, "ws", wait_serial_handler, &w, EB_DELIVERY_SERIAL, 0);
    pthread_t th[WS_THREADS];
    struct wait_serial_pub p[WS_THREADS];
    for (uint32_t i = 0; i < WS_THREADS; i++) {
        p[i] = (struct wait_serial_pub){bus, i, 0};
        cr_assert_eq(pthread_create(&th[i], NULL, wait_serial_publisher, &p[i]), 0);
    }
    for (int i = 0; i < WS_THREADS; i++)
        pthread_join(th[i], NULL);
    bool ok = t_wait_ge(&w.n, WS_THREADS * WS_EVENTS);
    eb_bus_destroy(bus);
    cr_assert(ok);
    for (int i = 0; i < WS_THREADS; i++) {
        cr_assert_eq(p[i].fails, 0);
        cr_assert_eq(w.next[i], WS_EVENTS);
    }
    cr_assert_eq(atomic_load(&w.overlaps), 0, "the SERIAL handler ran twice at once");
    cr_assert_eq(atomic_load(&w.violations), 0, "per-thread publish order broken");
}
