/*
 * Failure handling: retries with backoff (attempt numbers, counters, delay
 * lower bounds, lane order held during backoff), dead-lettering after the
 * last attempt (callback and $deadletter.<topic> event).
 */
#include "common.h"

TestSuite(retry, .timeout = EB_CRITERION_TIMEOUT);

enum { MAX_CALLS = 16 };

struct attempts {
    atomic_uint calls;
    unsigned attempt[MAX_CALLS];
    int64_t at[MAX_CALLS];
    unsigned fail_first; /* fail this many attempts, then succeed; ~0: always */
    int code;
};

static int attempts_handler(const eb_event *ev, void *ctx)
{
    struct attempts *a = ctx;
    unsigned i = atomic_load(&a->calls);
    unsigned att = eb_event_attempt(ev);
    if (i < MAX_CALLS) {
        a->attempt[i] = att;
        a->at[i] = t_now_ns();
    }
    atomic_store(&a->calls, i + 1);
    return att <= a->fail_first ? a->code : 0;
}

static eb_subscription *sub_with_retry(eb_bus *bus, const char *pattern, eb_handler_fn fn,
                                       void *ctx, unsigned max_attempts, uint64_t initial,
                                       uint64_t max, const char *name)
{
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = max_attempts;
    o.backoff_initial_ns = initial;
    o.backoff_max_ns = max;
    o.name = name;
    eb_subscription *sub = NULL;
    int rc = eb_subscribe(bus, pattern, fn, ctx, &o, &sub);
    cr_assert_eq(rc, EB_OK, "subscribe: %s", eb_err_name(rc));
    return sub;
}

Test(retry, a_handler_failing_twice_then_succeeding_is_called_three_times)
{
    eb_bus *bus = t_bus_new(2);
    struct attempts a = {.fail_first = 2, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    eb_subscription *sub = sub_with_retry(bus, "r", attempts_handler, &a, 5, T_MS, 0, NULL);
    eb_publish_result r = t_pub_wait(bus, "r", "x", 1);
    cr_assert_eq(r.matched, 1);
    cr_assert_eq(r.delivered, 1);
    cr_assert_eq(r.failed, 0);
    cr_assert_eq(r.first_error, EB_OK);
    cr_assert_eq(atomic_load(&a.calls), 3);
    cr_assert_eq(a.attempt[0], 1);
    cr_assert_eq(a.attempt[1], 2);
    cr_assert_eq(a.attempt[2], 3);

    eb_subscription_stats ss;
    bool ok;
    T_WAIT_SUB_STATS(ok, sub, ss, ss.delivered >= 1 && ss.lag == 0);
    cr_assert(ok);
    cr_assert_eq(ss.delivered, 1);
    cr_assert_eq(ss.retried, 2);
    cr_assert_eq(ss.failed, 0);
    eb_bus_stats st;
    T_WAIT_STATS(ok, bus, st, st.delivered >= 1);
    cr_assert(ok);
    cr_assert_eq(st.retried, 2);
    cr_assert_eq(st.delivered, 1);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.dead_lettered, 0);
    eb_bus_destroy(bus);
}

Test(retry, default_max_attempts_is_three)
{
    eb_bus *bus = t_bus_new(2);
    struct attempts a = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.backoff_initial_ns = T_MS;
    cr_assert_eq(eb_subscribe(bus, "r", attempts_handler, &a, &o, NULL), EB_OK);
    eb_publish_result r = t_pub_wait(bus, "r", NULL, 0);
    cr_assert_eq(r.failed, 1);
    cr_assert_eq(atomic_load(&a.calls), 3);
    eb_bus_destroy(bus);
}

Test(retry, max_attempts_one_means_no_retry)
{
    eb_bus *bus = t_bus_new(2);
    struct attempts a = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    eb_subscription *sub = sub_with_retry(bus, "r", attempts_handler, &a, 1, 0, 0, NULL);
    eb_publish_result r = t_pub_wait(bus, "r", NULL, 0);
    cr_assert_eq(r.failed, 1);
    cr_assert_eq(r.first_error, EB_EIO);
    cr_assert_eq(atomic_load(&a.calls), 1);
    eb_subscription_stats ss;
    bool ok;
    T_WAIT_SUB_STATS(ok, sub, ss, ss.failed >= 1);
    cr_assert(ok);
    cr_assert_eq(ss.retried, 0);
    cr_assert_eq(ss.failed, 1);
    eb_bus_destroy(bus);
}

/* ---- dead letters ---- */

struct dl_record {
    atomic_uint calls;
    char subscription[EB_TOPIC_MAX + 1];
    char topic[EB_TOPIC_MAX + 1];
    char ev_topic[EB_TOPIC_MAX + 1];
    char payload[32];
    int error;
    unsigned attempts;
    uint64_t seq;
    uint64_t ev_seq;
};

static void on_deadletter(const eb_event *ev, const eb_deadletter_info *info, void *ctx)
{
    struct dl_record *d = ctx;
    snprintf(d->subscription, sizeof d->subscription, "%s",
             info->subscription ? info->subscription : "(null)");
    snprintf(d->topic, sizeof d->topic, "%s", info->topic ? info->topic : "(null)");
    snprintf(d->ev_topic, sizeof d->ev_topic, "%s", eb_event_topic(ev));
    size_t len;
    const char *p = eb_event_payload(ev, &len);
    snprintf(d->payload, sizeof d->payload, "%.*s", (int)len, p);
    d->error = info->error;
    d->attempts = info->attempts;
    d->seq = info->seq;
    d->ev_seq = eb_event_seq(ev);
    atomic_fetch_add(&d->calls, 1);
}

/* A bus of 2 workers whose dead-letter callback records into cb (zeroed). */
static eb_bus *bus_with_dl_callback(struct dl_record *cb)
{
    memset(cb, 0, sizeof *cb);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.on_deadletter = on_deadletter;
    cfg.deadletter_ctx = cb;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    return bus;
}

/* A subscriber of dead letters: records eb_event_deadletter_info. */
struct dl_sub {
    atomic_uint calls;
    atomic_uint callback_calls_before; /* on_deadletter calls seen when it ran */
    struct dl_record *cb;
    bool has_info;
    eb_deadletter_info info;
    char subscription[EB_TOPIC_MAX + 1];
    char topic[EB_TOPIC_MAX + 1];
    char ev_topic[EB_TOPIC_MAX + 1];
    char payload[32];
};

static int dl_sub_handler(const eb_event *ev, void *ctx)
{
    struct dl_sub *s = ctx;
    memset(&s->info, 0, sizeof s->info);
    s->has_info = eb_event_deadletter_info(ev, &s->info);
    if (s->has_info) {
        snprintf(s->subscription, sizeof s->subscription, "%s",
                 s->info.subscription ? s->info.subscription : "(null)");
        snprintf(s->topic, sizeof s->topic, "%s", s->info.topic ? s->info.topic : "(null)");
    }
    snprintf(s->ev_topic, sizeof s->ev_topic, "%s", eb_event_topic(ev));
    size_t len;
    const char *p = eb_event_payload(ev, &len);
    snprintf(s->payload, sizeof s->payload, "%.*s", (int)len, p);
    if (s->cb) {
        atomic_store(&s->callback_calls_before, atomic_load(&s->cb->calls));
    }
    atomic_fetch_add(&s->calls, 1);
    return 0;
}

Test(retry, an_always_failing_handler_is_dead_lettered_after_max_attempts)
{
    struct dl_record cb;
    eb_bus *bus = bus_with_dl_callback(&cb);

    struct dl_sub all, exact;
    memset(&all, 0, sizeof all);
    memset(&exact, 0, sizeof exact);
    all.cb = &cb;
    exact.cb = &cb;
    t_sub(bus, "$deadletter.#", dl_sub_handler, &all, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "$deadletter.orders.created", dl_sub_handler, &exact, EB_DELIVERY_SERIAL, 0);

    struct attempts a = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    eb_subscription *sub =
        sub_with_retry(bus, "orders.*", attempts_handler, &a, 4, T_MS, 0, "orders-projection");

    eb_publish_options o = t_bounded_opts();
    eb_publish_result r;
    cr_assert_eq(eb_publish_wait(bus, "orders.created", "order-17", 8, &o, &r), EB_OK);
    cr_assert_eq(r.matched, 1);
    cr_assert_eq(r.delivered, 0);
    cr_assert_eq(r.failed, 1);
    cr_assert_eq(r.first_error, EB_EIO);
    cr_assert_eq(atomic_load(&a.calls), 4);
    for (unsigned i = 0; i < 4; i++) {
        cr_assert_eq(a.attempt[i], i + 1);
    }

    cr_assert(t_wait_ge(&all.calls, 1), "$deadletter.# never got the dead letter");
    cr_assert(t_wait_ge(&exact.calls, 1), "$deadletter.orders.created never got it");
    cr_assert(t_wait_ge(&cb.calls, 1));
    eb_subscription_stats ss;
    bool sub_ok;
    T_WAIT_SUB_STATS(sub_ok, sub, ss, ss.failed >= 1);
    cr_assert(sub_ok);
    eb_bus_stats st;
    bool ok;
    T_WAIT_STATS(ok, bus, st, st.dead_lettered >= 1 && st.delivered >= 2);
    eb_bus_destroy(bus);
    cr_assert(ok);

    /* The callback. */
    cr_assert_eq(atomic_load(&cb.calls), 1);
    cr_assert_str_eq(cb.subscription, "orders-projection");
    cr_assert_str_eq(cb.topic, "orders.created");
    cr_assert_str_eq(cb.ev_topic, "orders.created", "callback gets the original event");
    cr_assert_str_eq(cb.payload, "order-17");
    cr_assert_eq(cb.error, EB_EIO);
    cr_assert_eq(cb.attempts, 4);
    cr_assert_eq(cb.seq, cb.ev_seq);
    cr_assert_geq(cb.seq, 1);

    /* The $deadletter events. */
    struct dl_sub *subs[2] = {&all, &exact};
    for (int i = 0; i < 2; i++) {
        struct dl_sub *s = subs[i];
        cr_assert_eq(atomic_load(&s->calls), 1);
        cr_assert_str_eq(s->ev_topic, "$deadletter.orders.created");
        cr_assert(s->has_info, "eb_event_deadletter_info returned false");
        cr_assert_str_eq(s->subscription, "orders-projection");
        cr_assert_str_eq(s->topic, "orders.created");
        cr_assert_eq(s->info.error, EB_EIO);
        cr_assert_eq(s->info.attempts, 4);
        cr_assert_eq(s->info.seq, cb.seq);
        cr_assert_str_eq(s->payload, "order-17", "dead letter carries the payload");
        cr_assert_eq(atomic_load(&s->callback_calls_before), 1,
                     "the callback must run before the $deadletter event is published");
    }

    cr_assert_eq(ss.failed, 1);
    cr_assert_eq(ss.retried, 3);
    cr_assert_eq(ss.delivered, 0);
    cr_assert_eq(st.dead_lettered, 1);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.retried, 3);
}

Test(retry, dead_letter_info_names_the_pattern_when_the_subscription_has_no_name)
{
    struct dl_record cb;
    eb_bus *bus = bus_with_dl_callback(&cb);
    struct dl_sub all;
    memset(&all, 0, sizeof all);
    t_sub(bus, "$deadletter.#", dl_sub_handler, &all, EB_DELIVERY_SERIAL, 0);
    struct attempts a = {.fail_first = ~0u, .code = -77};
    atomic_init(&a.calls, 0);
    sub_with_retry(bus, "pay.#", attempts_handler, &a, 1, 0, 0, NULL);
    eb_publish_result r = t_pub_wait(bus, "pay.ment", NULL, 0);
    cr_assert_eq(r.first_error, -77);
    cr_assert(t_wait_ge(&all.calls, 1));
    cr_assert(t_wait_ge(&cb.calls, 1));
    eb_bus_destroy(bus);
    cr_assert_str_eq(cb.subscription, "pay.#");
    cr_assert_eq(cb.error, -77);
    cr_assert_eq(cb.attempts, 1);
    cr_assert_str_eq(all.ev_topic, "$deadletter.pay.ment");
    cr_assert_str_eq(all.subscription, "pay.#");
    cr_assert_eq(all.info.error, -77);
    cr_assert_eq(all.info.attempts, 1);
}

Test(retry, ordinary_events_have_no_dead_letter_info)
{
    eb_bus *bus = t_bus_new(2);
    struct dl_sub s;
    memset(&s, 0, sizeof s);
    t_sub(bus, "plain", dl_sub_handler, &s, EB_DELIVERY_SERIAL, 0);
    t_pub_wait(bus, "plain", "x", 1);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&s.calls), 1);
    cr_assert_not(s.has_info);
}

Test(retry, dead_lettering_works_without_a_callback_or_subscriber)
{
    eb_bus *bus = t_bus_new(2);
    struct attempts a = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    sub_with_retry(bus, "x", attempts_handler, &a, 2, T_MS, 0, NULL);
    eb_publish_result r = t_pub_wait(bus, "x", NULL, 0);
    cr_assert_eq(r.failed, 1);
    eb_bus_stats st;
    bool ok;
    T_WAIT_STATS(ok, bus, st, st.dead_lettered == 1);
    eb_bus_destroy(bus);
    cr_assert(ok);
    cr_assert_eq(atomic_load(&a.calls), 2);
}

/* ---- backoff ---- */

Test(retry, backoff_waits_at_least_roughly_the_configured_delay)
{
    /* Only lower bounds: the delay before attempt 2 is about the initial
       delay and then doubles; jitter is allowed to take up to half off. */
    const int64_t initial = 40 * T_MS;
    eb_bus *bus = t_bus_new(2);
    struct attempts a = {.fail_first = 2, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    sub_with_retry(bus, "b", attempts_handler, &a, 3, (uint64_t)initial, T_SEC, NULL);
    eb_publish_result r = t_pub_wait(bus, "b", NULL, 0);
    eb_bus_destroy(bus);
    cr_assert_eq(r.delivered, 1);
    cr_assert_eq(atomic_load(&a.calls), 3);
    int64_t d1 = a.at[1] - a.at[0];
    int64_t d2 = a.at[2] - a.at[1];
    cr_assert_geq(d1, initial / 2, "first backoff only %lld ns", (long long)d1);
    cr_assert_geq(d2, initial, "second backoff only %lld ns (expected ~2x initial)", (long long)d2);
}

/* Records the order of (event, attempt) calls of a SERIAL subscription. */
struct order_calls {
    atomic_uint n;
    uint32_t ev[16];
    unsigned attempt[16];
};

static int fail_event_one_once(const eb_event *ev, void *ctx)
{
    struct order_calls *o = ctx;
    uint32_t v = t_u32(ev);
    unsigned att = eb_event_attempt(ev);
    unsigned i = atomic_load(&o->n);
    if (i < 16) {
        o->ev[i] = v;
        o->attempt[i] = att;
    }
    atomic_store(&o->n, i + 1);
    return (v == 1 && att == 1) ? EB_EIO : 0;
}

Test(retry, serial_lane_holds_later_events_while_one_is_backing_off)
{
    eb_bus *bus = t_bus_new(2);
    struct order_calls o;
    memset(&o, 0, sizeof o);
    sub_with_retry(bus, "o", fail_event_one_once, &o, 3, 50 * T_MS, 0, NULL);
    for (uint32_t v = 1; v <= 3; v++) {
        cr_assert_eq(t_pub_u32(bus, "o", v), EB_OK);
    }
    bool ok = t_wait_ge(&o.n, 4);
    t_sleep_ms(20);
    eb_bus_destroy(bus);
    cr_assert(ok);
    cr_assert_eq(atomic_load(&o.n), 4);
    cr_assert(o.ev[0] == 1 && o.attempt[0] == 1, "call 0: event %u attempt %u", o.ev[0],
              o.attempt[0]);
    cr_assert(o.ev[1] == 1 && o.attempt[1] == 2,
              "event %u (attempt %u) ran before event 1 was retried", o.ev[1], o.attempt[1]);
    cr_assert(o.ev[2] == 2 && o.attempt[2] == 1);
    cr_assert(o.ev[3] == 3 && o.attempt[3] == 1);
}

/* A lane waiting out a backoff holds no worker: with a single worker another
   subscription's event is handled while the first one waits. */
struct backoff_free {
    atomic_uint a_calls;
    atomic_uint b_calls;
    atomic_uint b_calls_when_a_retried;
};

static int slow_retry_a(const eb_event *ev, void *ctx)
{
    struct backoff_free *f = ctx;
    atomic_fetch_add(&f->a_calls, 1);
    if (eb_event_attempt(ev) == 1) {
        return EB_EIO;
    }
    atomic_store(&f->b_calls_when_a_retried, atomic_load(&f->b_calls));
    return 0;
}

static int quick_b(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((struct backoff_free *)ctx)->b_calls, 1);
    return 0;
}

Test(retry, a_lane_waiting_out_a_backoff_holds_no_worker)
{
    eb_bus *bus = t_bus_new(1);
    struct backoff_free f;
    atomic_init(&f.a_calls, 0);
    atomic_init(&f.b_calls, 0);
    atomic_init(&f.b_calls_when_a_retried, 0);
    sub_with_retry(bus, "a", slow_retry_a, &f, 2, T_SEC, 0, NULL);
    t_sub(bus, "b", quick_b, &f, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(eb_publish(bus, "a", NULL, 0, NULL), EB_OK);
    bool first = t_wait_ge(&f.a_calls, 1);
    eb_publish_options o = t_bounded_opts();
    int rc = eb_publish_wait(bus, "b", NULL, 0, &o, NULL);
    bool retried = t_wait_ge(&f.a_calls, 2);
    eb_bus_destroy(bus);
    cr_assert(first);
    cr_assert_eq(rc, EB_OK);
    cr_assert(retried);
    cr_assert_eq(atomic_load(&f.b_calls_when_a_retried), 1,
                 "the only worker slept through the backoff instead of running b");
}

/* A publish_wait waiter learns the outcome only after the retries. */
Test(retry, publish_wait_returns_only_after_the_last_attempt)
{
    eb_bus *bus = t_bus_new(2);
    struct attempts a = {.fail_first = 3, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    sub_with_retry(bus, "w", attempts_handler, &a, 10, 2 * T_MS, 4 * T_MS, NULL);
    eb_ticket *t = NULL;
    cr_assert_eq(eb_publish_async(bus, "w", NULL, 0, NULL, &t), EB_OK);
    eb_publish_result r;
    cr_assert_eq(eb_ticket_wait(t, t_wait_budget_ns(), &r), EB_OK);
    unsigned calls = atomic_load(&a.calls);
    eb_ticket_release(t);
    eb_bus_destroy(bus);
    cr_assert_eq(calls, 4);
    cr_assert_eq(r.delivered, 1);
    cr_assert_eq(r.failed, 0);
}

/* ---- event accessors around retries and dead letters ---- */

struct retry_retain {
    const eb_event *kept;
    unsigned attempt_inside;
};

static int retain_on_second_attempt(const eb_event *ev, void *ctx)
{
    struct retry_retain *r = ctx;
    if (eb_event_attempt(ev) == 1) {
        return EB_EIO;
    }
    r->attempt_inside = eb_event_attempt(ev);
    r->kept = eb_event_retain(ev);
    return 0;
}

Test(retry, attempt_is_one_when_read_outside_the_handler)
{
    eb_bus *bus = t_bus_new(2);
    struct retry_retain r = {0};
    sub_with_retry(bus, "rr", retain_on_second_attempt, &r, 3, T_MS, 0, NULL);
    t_pub_wait(bus, "rr", NULL, 0);
    cr_assert_not_null(r.kept);
    cr_assert_eq(r.attempt_inside, 2);
    cr_assert_eq(eb_event_attempt(r.kept), 1);
    eb_event_release(r.kept);
    eb_bus_destroy(bus);
}

struct dl_keep {
    const eb_event *kept;
    atomic_uint calls;
};

static int keep_dead_letter(const eb_event *ev, void *ctx)
{
    struct dl_keep *k = ctx;
    k->kept = eb_event_retain(ev);
    atomic_fetch_add(&k->calls, 1);
    return 0;
}

Test(retry, dead_letter_info_strings_live_as_long_as_the_retained_event)
{
    eb_bus *bus = t_bus_new(2);
    struct dl_keep k = {0};
    atomic_init(&k.calls, 0);
    t_sub(bus, "$deadletter.#", keep_dead_letter, &k, EB_DELIVERY_SERIAL, 0);
    struct attempts a = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    char name[] = "temporary-name";
    eb_subscription *sub = sub_with_retry(bus, "gone", attempts_handler, &a, 1, 0, 0, name);
    memset(name, 'X', sizeof name - 1); /* the bus copied the name */
    t_pub_wait(bus, "gone", NULL, 0);
    cr_assert(t_wait_ge(&k.calls, 1));
    cr_assert_eq(eb_unsubscribe(sub), EB_OK); /* the subscription is gone too */
    eb_deadletter_info info;
    bool has = eb_event_deadletter_info(k.kept, &info);
    char subname[64] = "", topic[64] = "";
    if (has) {
        snprintf(subname, sizeof subname, "%s", info.subscription);
        snprintf(topic, sizeof topic, "%s", info.topic);
    }
    eb_event_release(k.kept);
    eb_bus_destroy(bus);
    cr_assert(has);
    cr_assert_str_eq(subname, "temporary-name");
    cr_assert_str_eq(topic, "gone");
    cr_assert_eq(info.attempts, 1);
}

struct dl_publisher {
    eb_bus *bus;
    atomic_int rc;
    t_counter alerts;
};

static void publish_from_deadletter_callback(const eb_event *ev, const eb_deadletter_info *info,
                                             void *ctx)
{
    (void)ev;
    (void)info;
    struct dl_publisher *p = ctx;
    atomic_store(&p->rc, eb_publish(p->bus, "alerts.deadletter", "!", 1, NULL));
}

Test(retry, the_dead_letter_callback_may_publish)
{
    struct dl_publisher p;
    atomic_init(&p.rc, 1);
    t_counter_init(&p.alerts);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.on_deadletter = publish_from_deadletter_callback;
    cfg.deadletter_ctx = &p;
    cr_assert_eq(eb_bus_create(&cfg, &p.bus), EB_OK);
    t_sub(p.bus, "alerts.#", t_count_handler, &p.alerts, EB_DELIVERY_SERIAL, 0);
    struct attempts a = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    sub_with_retry(p.bus, "x", attempts_handler, &a, 1, 0, 0, NULL);
    t_pub_wait(p.bus, "x", NULL, 0);
    bool ok = t_wait_ge(&p.alerts.calls, 1);
    eb_bus_destroy(p.bus);
    cr_assert_eq(atomic_load(&p.rc), EB_OK);
    cr_assert(ok);
}

Test(retry, a_failing_dead_letter_subscriber_does_not_loop_for_ever)
{
    eb_bus *bus = t_bus_new(2);
    struct attempts dl = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&dl.calls, 0);
    sub_with_retry(bus, "$deadletter.#", attempts_handler, &dl, 2, T_MS, 0, NULL);
    struct attempts a = {.fail_first = ~0u, .code = EB_EIO};
    atomic_init(&a.calls, 0);
    sub_with_retry(bus, "y", attempts_handler, &a, 1, 0, 0, NULL);
    t_pub_wait(bus, "y", NULL, 0);
    cr_assert(t_wait_ge(&dl.calls, 2));
    bool settled = t_quiesce(bus);
    t_sleep_ms(50);
    unsigned calls = atomic_load(&dl.calls);
    eb_bus_destroy(bus);
    cr_assert(settled);
    cr_assert_leq(calls, 4, "the dead-letter subscriber was called %u times", calls);
}

/* ---- retries an unsubscribe cuts short, and backoffs out of range ---- */

/* A delivery that failed and waits to retry when its subscription goes is
   dead-lettered with its last error and the attempts it made (as one that
   fails after the unsubscribe is), not dropped as cancelled; and the retry
   that never ran is not counted as retried. */
Test(retry, a_retry_cut_short_by_unsubscribe_is_dead_lettered_with_its_last_error)
{
    struct dl_record cb;
    eb_bus *bus = bus_with_dl_callback(&cb);
    struct dl_sub dl;
    memset(&dl, 0, sizeof dl);
    t_sub(bus, "$deadletter.#", dl_sub_handler, &dl, EB_DELIVERY_SERIAL, 0);
    t_failing f;
    eb_subscription *sub = t_sub_failing(bus, "cut.short", &f, 5, 600 * T_SEC, 600 * T_SEC);
    eb_ticket *t = NULL;
    cr_assert_eq(eb_publish_async(bus, "cut.short", "p", 1, NULL, &t), EB_OK);
    cr_assert(t_wait_ge(&f.calls, 1));
    t_sleep_ms(20); /* in its backoff now */
    cr_assert_eq(eb_unsubscribe(sub), EB_OK);
    eb_publish_result r;
    cr_assert_eq(eb_ticket_wait(t, t_wait_budget_ns(), &r), EB_OK);
    eb_ticket_release(t);
    cr_assert(t_wait_ge(&dl.calls, 1), "no $deadletter event");
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&f.calls), 1);
    cr_assert_eq(r.failed, 1);
    cr_assert_eq(r.first_error, EB_EIO, "%s", eb_err_name(r.first_error));
    cr_assert_eq(atomic_load(&cb.calls), 1);
    cr_assert_eq(cb.error, EB_EIO);
    cr_assert_eq(cb.attempts, 1);
    cr_assert_str_eq(cb.topic, "cut.short");
    cr_assert(dl.has_info);
    cr_assert_eq(dl.info.attempts, 1);
    cr_assert_eq(st.retried, 0, "a retry that never ran was counted");
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.dead_lettered, 1);
}

/* A backoff of 2^63 ns or more is "never" in effect: the retry waits. It
   used to wrap into the past and run at once. */
Test(retry, a_backoff_beyond_int64_max_waits_instead_of_retrying_at_once)
{
    eb_bus *bus = t_bus_new(2);
    t_failing f;
    eb_subscription *sub = t_sub_failing(bus, "far", &f, 3, UINT64_MAX, UINT64_MAX);
    cr_assert_eq(eb_publish(bus, "far", NULL, 0, NULL), EB_OK);
    cr_assert(t_wait_ge(&f.calls, 1));
    t_sleep_ms(100);
    cr_assert_eq(atomic_load(&f.calls), 1, "the retry ran at once");
    cr_assert_eq(eb_unsubscribe(sub), EB_OK); /* cuts the backoff short */
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&f.calls), 1);
}
