/*
 * Bus lifecycle: creation with defaults, configuration validation, graceful
 * destroy (everything accepted is delivered, publishing while closing is
 * refused with EB_ECLOSED) and the statistics counters.
 */
#include "common.h"

#include <sys/resource.h>

TestSuite(bus, .timeout = EB_CRITERION_TIMEOUT);

Test(bus, create_with_null_config_uses_the_defaults)
{
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(NULL, &bus), EB_OK);
    cr_assert_not_null(bus);

    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_assert_eq(st.workers, (uint32_t)(cpus > 0 ? cpus : 1));
    cr_assert_eq(st.intake_capacity, 4095, "intake_capacity is %u", st.intake_capacity);
    cr_assert_eq(st.published, 0);
    cr_assert_eq(st.dispatched, 0);
    cr_assert_eq(st.delivered, 0);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.retried, 0);
    cr_assert_eq(st.dead_lettered, 0);
    cr_assert_eq(st.dropped, 0);
    cr_assert_eq(st.unrouted, 0);
    cr_assert_eq(st.intake_depth, 0);
    cr_assert_eq(st.subscriptions, 0);
    cr_assert_eq(st.max_lag, 0);
    eb_bus_destroy(bus);
}

Test(bus, config_init_fills_defaults_that_create_accepts)
{
    eb_bus_config cfg;
    memset(&cfg, 0xA5, sizeof cfg);
    eb_bus_config_init(&cfg);
    cr_assert_null(cfg.log);
    cr_assert_null(cfg.on_deadletter);
    cr_assert_eq(cfg.log_level, EB_LOG_WARN);

    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.intake_capacity, 4095, "intake_capacity is %u", st.intake_capacity);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_assert_eq(st.workers, (uint32_t)(cpus > 0 ? cpus : 1));
    eb_bus_destroy(bus);
}

Test(bus, create_honours_workers_and_rounds_intake_capacity_up_to_two_to_the_k_minus_one)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 3;
    cfg.intake_capacity = 1000;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.workers, 3);
    cr_assert_eq(st.intake_capacity, 1023, "intake_capacity is %u", st.intake_capacity);
    eb_bus_destroy(bus);

    cfg.workers = 1;
    cfg.intake_capacity = (1 << 13) - 1;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.workers, 1);
    cr_assert_eq(st.intake_capacity, (1 << 13) - 1, "intake_capacity is %u", st.intake_capacity);
    eb_bus_destroy(bus);
}

Test(bus, workers_are_named_for_top_ps_and_gdb)
{
    eb_bus *bus = t_bus_new(3);
    cr_assert_eq(t_threads_named("eb-worker-0"), 1);
    cr_assert_eq(t_threads_named("eb-worker-1"), 1);
    cr_assert_eq(t_threads_named("eb-worker-2"), 1);
    cr_assert_eq(t_threads_named("eb-worker-3"), 0);
    eb_bus_destroy(bus);
    cr_assert_eq(t_threads_named("eb-worker-0"), 0, "joined with the bus");
}

Test(bus, create_refuses_out_of_range_config_with_einval_and_leaves_out_untouched)
{
    eb_bus *const sentinel = (eb_bus *)(uintptr_t)0x5151;
    eb_bus_config base;
    eb_bus_config_init(&base);

    struct {
        const char *what;
        eb_bus_config cfg;
    } cases[8];
    size_t n = 0;
    cases[n].what = "workers = 257";
    cases[n].cfg = base;
    cases[n++].cfg.workers = 257;
    cases[n].what = "workers = 1000";
    cases[n].cfg = base;
    cases[n++].cfg.workers = 1000;
    cases[n].what = "intake_capacity = 1<<24";
    cases[n].cfg = base;
    cases[n++].cfg.intake_capacity = 1u << 24;
    cases[n].what = "intake_capacity = UINT_MAX";
    cases[n].cfg = base;
    cases[n++].cfg.intake_capacity = ~0u;
    cases[n].what = "mailbox_capacity = 1<<20";
    cases[n].cfg = base;
    cases[n++].cfg.mailbox_capacity = 1u << 20;
    cases[n].what = "log_level = 99";
    cases[n].cfg = base;
    cases[n++].cfg.log_level = (eb_log_level)99;

    for (size_t i = 0; i < n; i++) {
        eb_bus *bus = sentinel;
        int rc = eb_bus_create(&cases[i].cfg, &bus);
        cr_assert_eq(rc, EB_EINVAL, "%s: got %s", cases[i].what, eb_err_name(rc));
        cr_assert_eq(bus, sentinel, "%s: out was written", cases[i].what);
    }
    cr_assert_eq(eb_bus_create(&base, NULL), EB_EINVAL, "out NULL");
    cr_assert_eq(eb_bus_create(NULL, NULL), EB_EINVAL, "out NULL, cfg NULL");
}

Test(bus, create_accepts_the_largest_capacities)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 1;
    cfg.intake_capacity = (1u << 24) - 1;
    cfg.mailbox_capacity = (1u << 20) - 1;
    eb_bus *bus = NULL;
    int rc = eb_bus_create(&cfg, &bus);
    cr_assert(rc == EB_OK || rc == EB_ENOMEM, "got %s", eb_err_name(rc));
    if (rc == EB_OK) {
        eb_bus_stats st;
        cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
        cr_assert_eq(st.intake_capacity, (1u << 24) - 1, "intake_capacity is %u",
                     st.intake_capacity);
        eb_bus_destroy(bus);
    }
}

Test(bus, destroy_of_null_is_a_no_op)
{
    eb_bus_destroy(NULL);
}

Test(bus, destroy_without_any_activity_frees_everything)
{
    for (int i = 0; i < 5; i++) {
        eb_bus *bus = t_bus_new((unsigned)(i % 3) + 1);
        eb_bus_destroy(bus);
    }
}

Test(bus, destroy_frees_subscriptions_that_were_never_unsubscribed)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    for (int i = 0; i < 10; i++) {
        eb_subscribe_options o;
        eb_subscribe_options_init(&o);
        o.delivery = (eb_delivery)(i % 3);
        o.name = "leaky";
        cr_assert_eq(eb_subscribe(bus, "a.#", t_count_handler, &c, &o, NULL), EB_OK);
    }
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.subscriptions, 10);
    cr_assert_eq(t_pub_u32(bus, "a.b", 7), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&c.calls), 10);
}

/* A handler slow enough that a destroy right after publishing finds most of
   the events still queued. */
static int slow_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    t_sleep_ns(200000);
    atomic_fetch_add((atomic_uint *)ctx, 1);
    return 0;
}

Test(bus, destroy_delivers_every_accepted_event)
{
    enum { N = 300 };
    eb_bus *bus = t_bus_new(2);
    atomic_uint serial = 0, keyed = 0, conc = 0;
    t_sub(bus, "d.#", slow_handler, &serial, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "d.#", slow_handler, &keyed, EB_DELIVERY_KEYED, 4);
    t_sub(bus, "d.#", slow_handler, &conc, EB_DELIVERY_CONCURRENT, 0);
    unsigned accepted = 0;
    for (uint32_t i = 0; i < N; i++) {
        eb_publish_options o;
        eb_publish_options_init(&o);
        o.key = &i;
        o.key_len = sizeof i;
        if (eb_publish(bus, "d.x", &i, sizeof i, &o) == EB_OK) {
            accepted++;
        }
    }
    cr_assert_eq(accepted, N);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&serial), N);
    cr_assert_eq(atomic_load(&keyed), N);
    cr_assert_eq(atomic_load(&conc), N);
}

static int fail_first_attempt(const eb_event *ev, void *ctx)
{
    atomic_fetch_add((atomic_uint *)ctx, 1);
    return eb_event_attempt(ev) == 1 ? EB_EIO : 0;
}

Test(bus, destroy_delivers_retries_of_accepted_events)
{
    enum { N = 20 };
    eb_bus *bus = t_bus_new(2);
    atomic_uint calls = 0;
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 2;
    o.backoff_initial_ns = 5 * T_MS;
    cr_assert_eq(eb_subscribe(bus, "r", fail_first_attempt, &calls, &o, NULL), EB_OK);
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(t_pub_u32(bus, "r", i), EB_OK);
    }
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&calls), 2 * N);
}

/*
 * Publishing while the bus shuts down: a handler that is running when destroy
 * starts keeps publishing until it is refused. Everything it got accepted
 * before that must still be delivered, and the refusals must be EB_ECLOSED.
 */
struct closing_ctx {
    eb_bus *bus;
    atomic_int destroying;
    atomic_uint accepted;  /* publishes of "closing.b" that returned EB_OK */
    atomic_uint b_calls;   /* deliveries of "closing.b" */
    atomic_int final_rc;   /* the publish rc that stopped the loop */
    atomic_int wait_rc;    /* eb_publish_wait after the refusal */
    atomic_int async_rc;   /* eb_publish_async after the refusal */
    atomic_int sub_rc;     /* eb_subscribe after the refusal */
    atomic_int free_calls; /* zero-copy payload frees */
    atomic_int zc_rc;      /* zero-copy publish after the refusal */
    atomic_int got_ticket; /* the async publish wrote its out-param */
};

static struct closing_ctx *g_closing;

static void closing_free(void *p)
{
    atomic_fetch_add(&g_closing->free_calls, 1);
    free(p);
}

static int closing_b(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((struct closing_ctx *)ctx)->b_calls, 1);
    return 0;
}

static int closing_a(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct closing_ctx *c = ctx;
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&c->destroying) != 0);
    (void)ok; /* if destroy never started, the loop below ends on its own */
    int64_t deadline = t_now_ns() + t_wait_budget_ns();
    int rc = EB_OK;
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = 0;
    while (t_now_ns() < deadline) {
        rc = eb_publish(c->bus, "closing.b", "x", 1, &o);
        if (rc == EB_OK) {
            atomic_fetch_add(&c->accepted, 1);
        } else if (rc != EB_EAGAIN) {
            break;
        }
        t_sleep_ns(100000);
    }
    atomic_store(&c->final_rc, rc);
    if (rc == EB_ECLOSED) {
        eb_publish_result r;
        atomic_store(&c->wait_rc, eb_publish_wait(c->bus, "closing.b", "y", 1, &o, &r));
        eb_ticket *t = (eb_ticket *)(uintptr_t)0x77;
        atomic_store(&c->async_rc, eb_publish_async(c->bus, "closing.b", "z", 1, &o, &t));
        atomic_store(&c->got_ticket, t != (eb_ticket *)(uintptr_t)0x77);
        eb_subscription *s = NULL;
        atomic_store(&c->sub_rc, eb_subscribe(c->bus, "late.#", closing_b, c, NULL, &s));
        char *p = malloc(8);
        memcpy(p, "payload", 8);
        o.payload_free = closing_free;
        int zrc = eb_publish(c->bus, "closing.b", p, 8, &o);
        atomic_store(&c->zc_rc, zrc);
        if (zrc != EB_OK) {
            free(p); /* ownership stayed with us */
        }
    }
    return 0;
}

static void *destroy_thread(void *arg)
{
    struct closing_ctx *c = arg;
    atomic_store(&c->destroying, 1);
    eb_bus_destroy(c->bus);
    return NULL;
}

Test(bus, publish_while_closing_returns_eclosed_and_accepted_events_are_delivered)
{
    struct closing_ctx c;
    memset(&c, 0, sizeof c);
    atomic_init(&c.final_rc, 1);
    atomic_init(&c.wait_rc, 1);
    atomic_init(&c.async_rc, 1);
    atomic_init(&c.sub_rc, 1);
    atomic_init(&c.zc_rc, 1);
    g_closing = &c;
    c.bus = t_bus_new(2);
    t_sub(c.bus, "closing.a", closing_a, &c, EB_DELIVERY_SERIAL, 0);
    t_sub(c.bus, "closing.b", closing_b, &c, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(eb_publish(c.bus, "closing.a", NULL, 0, NULL), EB_OK);

    /* Destroy runs on its own thread only so that this thread stays free to
       assert; it is the only call on the bus once it starts. */
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, destroy_thread, &c), 0);
    pthread_join(th, NULL);

    cr_assert_eq(atomic_load(&c.final_rc), EB_ECLOSED, "publish while closing: %s",
                 eb_err_name(atomic_load(&c.final_rc)));
    cr_assert_eq(atomic_load(&c.b_calls), atomic_load(&c.accepted), "accepted %u, delivered %u",
                 atomic_load(&c.accepted), atomic_load(&c.b_calls));
    cr_assert_eq(atomic_load(&c.wait_rc), EB_ECLOSED);
    cr_assert_eq(atomic_load(&c.async_rc), EB_ECLOSED);
    cr_assert_eq(atomic_load(&c.got_ticket), 0, "ticket written on failure");
    cr_assert_eq(atomic_load(&c.sub_rc), EB_ECLOSED);
    cr_assert_eq(atomic_load(&c.zc_rc), EB_ECLOSED);
    cr_assert_eq(atomic_load(&c.free_calls), 0, "payload_free called on a refused publish");
}

/* ---- statistics ---- */

static int always_fail(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add((atomic_uint *)ctx, 1);
    return EB_EIO;
}

Test(bus, stats_count_published_delivered_failed_retried_dead_lettered_and_unrouted)
{
    eb_bus *bus = t_bus_new(2);
    t_counter ok;
    t_counter_init(&ok);
    atomic_uint fail_calls = 0;
    eb_subscription *s_ok = t_sub(bus, "s.*", t_count_handler, &ok, EB_DELIVERY_SERIAL, 0);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 2;
    o.backoff_initial_ns = 1 * T_MS;
    eb_subscription *s_fail = NULL;
    cr_assert_eq(eb_subscribe(bus, "s.fail", always_fail, &fail_calls, &o, &s_fail), EB_OK);

    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.subscriptions, 2);

    eb_publish_result r = t_pub_wait(bus, "s.ok", NULL, 0);
    cr_assert_eq(r.matched, 1);
    cr_assert_eq(r.delivered, 1);
    r = t_pub_wait(bus, "s.fail", NULL, 0);
    cr_assert_eq(r.matched, 2);
    cr_assert_eq(r.delivered, 1);
    cr_assert_eq(r.failed, 1);
    cr_assert_eq(r.first_error, EB_EIO);
    r = t_pub_wait(bus, "nobody.listens", NULL, 0);
    cr_assert_eq(r.matched, 0);
    cr_assert_eq(atomic_load(&fail_calls), 2);

    bool done;
    T_WAIT_STATS(done, bus, st,
                 st.delivered >= 2 && st.failed >= 1 && st.dead_lettered >= 1 && st.unrouted >= 1 &&
                     st.max_lag == 0 && st.intake_depth == 0);
    cr_assert(done, "counters did not settle");
    cr_assert_geq(st.published, 3);
    cr_assert_geq(st.dispatched, 3);
    cr_assert_eq(st.delivered, 2);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.retried, 1);
    cr_assert_eq(st.dead_lettered, 1);
    cr_assert_eq(st.dropped, 0);
    /* "nobody.listens" and the unobserved "$deadletter.s.fail" */
    cr_assert_geq(st.unrouted, 1);
    cr_assert_leq(st.unrouted, 2);
    cr_assert_eq(st.subscriptions, 2);

    eb_subscription_stats ss;
    cr_assert_eq(eb_subscription_stats_get(s_ok, &ss), EB_OK);
    cr_assert_eq(ss.delivered, 2);
    cr_assert_eq(ss.failed, 0);
    cr_assert_eq(ss.retried, 0);
    cr_assert_eq(ss.dropped, 0);
    cr_assert_eq(ss.lag, 0);
    cr_assert_eq(eb_subscription_stats_get(s_fail, &ss), EB_OK);
    cr_assert_eq(ss.delivered, 0);
    cr_assert_eq(ss.failed, 1);
    cr_assert_eq(ss.retried, 1);
    cr_assert_eq(ss.lag, 0);

    cr_assert_eq(eb_unsubscribe(s_fail), EB_OK);
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.subscriptions, 1);
    eb_bus_destroy(bus);
}

Test(bus, stats_published_and_dispatched_match_for_fire_and_forget)
{
    enum { N = 100 };
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "x", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    for (uint32_t i = 0; i < N; i++) {
        cr_assert_eq(t_pub_u32(bus, "x", i), EB_OK);
    }
    cr_assert(t_wait_ge(&c.calls, N));
    eb_bus_stats st;
    bool ok;
    T_WAIT_STATS(ok, bus, st, st.delivered >= N);
    cr_assert(ok);
    cr_assert_eq(st.published, N);
    cr_assert_eq(st.dispatched, N);
    cr_assert_eq(st.delivered, N);
    cr_assert_eq(st.unrouted, 0);
    eb_bus_destroy(bus);
}

struct lag_ctx {
    t_gate gate;
    atomic_uint calls;
};

static int lag_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct lag_ctx *c = ctx;
    t_gate_wait(&c->gate);
    atomic_fetch_add(&c->calls, 1);
    return 0;
}

Test(bus, stats_report_the_lag_of_a_blocked_subscription)
{
    eb_bus *bus = t_bus_new(2);
    struct lag_ctx c;
    t_gate_init(&c.gate);
    atomic_init(&c.calls, 0);
    eb_subscription *sub = t_sub(bus, "lag", lag_handler, &c, EB_DELIVERY_SERIAL, 0);
    for (uint32_t i = 0; i < 5; i++) {
        cr_assert_eq(t_pub_u32(bus, "lag", i), EB_OK);
    }
    eb_subscription_stats ss;
    bool ok;
    T_WAIT_SUB_STATS(ok, sub, ss, ss.lag == 5);
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    t_gate_open(&c.gate);
    cr_assert(ok, "lag never reached 5 (last %llu)", (unsigned long long)ss.lag);
    cr_assert_geq(st.max_lag, 5);

    cr_assert(t_wait_ge(&c.calls, 5));
    T_WAIT_SUB_STATS(ok, sub, ss, ss.lag == 0);
    cr_assert(ok);
    cr_assert(t_quiesce(bus));
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    cr_assert_eq(st.max_lag, 0);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&c.gate.expired), 0);
}

/* A handler may create and destroy a bus other than its own. */
static int nested_bus_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 1;
    eb_bus *inner = NULL;
    if (eb_bus_create(&cfg, &inner) != EB_OK) {
        return EB_EIO;
    }
    t_counter c;
    t_counter_init(&c);
    int rc = eb_subscribe(inner, "in", t_count_handler, &c, NULL, NULL);
    if (rc == EB_OK) {
        rc = eb_publish(inner, "in", NULL, 0, NULL);
    }
    eb_bus_destroy(inner);
    if (rc == EB_OK && atomic_load(&c.calls) == 1) {
        atomic_fetch_add((atomic_uint *)ctx, 1);
    }
    return 0;
}

Test(bus, a_handler_may_create_and_destroy_another_bus)
{
    eb_bus *bus = t_bus_new(2);
    atomic_uint ok = 0;
    t_sub(bus, "outer", nested_bus_handler, &ok, EB_DELIVERY_SERIAL, 0);
    eb_publish_result r = t_pub_wait(bus, "outer", NULL, 0);
    cr_assert_eq(r.delivered, 1);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&ok), 1);
}

Test(bus, an_idle_bus_uses_no_cpu)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "x", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    t_pub_wait(bus, "x", NULL, 0);
    /* Let the workers finish spinning and park. */
    t_sleep_ms(300);
    struct rusage a, b;
    getrusage(RUSAGE_SELF, &a);
    int64_t t0 = t_now_ns();
    t_sleep_ms(1000);
    int64_t wall = t_now_ns() - t0;
    getrusage(RUSAGE_SELF, &b);
    int64_t cpu = ((int64_t)(b.ru_utime.tv_sec - a.ru_utime.tv_sec) * T_SEC +
                   (int64_t)(b.ru_utime.tv_usec - a.ru_utime.tv_usec) * 1000) +
                  ((int64_t)(b.ru_stime.tv_sec - a.ru_stime.tv_sec) * T_SEC +
                   (int64_t)(b.ru_stime.tv_usec - a.ru_stime.tv_usec) * 1000);
    eb_bus_destroy(bus);
    /* A spinning worker would burn about `wall`; an idle bus almost nothing.
       A quarter of one core is generous for timer ticks and noise. */
    cr_assert_lt(cpu, wall / 4, "idle bus used %lld ns of CPU in %lld ns", (long long)cpu,
                 (long long)wall);
}

/* ---- log callback ---- */

struct log_rec {
    atomic_uint warn, error, other;
    char last[256];
    pthread_mutex_t lock;
};

static void log_sink(eb_log_level level, const char *msg, void *ctx)
{
    struct log_rec *r = ctx;
    if (level == EB_LOG_WARN)
        atomic_fetch_add(&r->warn, 1);
    else if (level == EB_LOG_ERROR)
        atomic_fetch_add(&r->error, 1);
    else
        atomic_fetch_add(&r->other, 1);
    pthread_mutex_lock(&r->lock);
    snprintf(r->last, sizeof r->last, "%s", msg);
    pthread_mutex_unlock(&r->lock);
}

static int always_fails(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    return EB_EIO;
}

static void dead_letter_with_log_level(eb_log_level level, struct log_rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.log = log_sink;
    cfg.log_ctx = r;
    cfg.log_level = level;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 1;
    o.name = "logged";
    cr_assert_eq(eb_subscribe(bus, "log.me", always_fails, NULL, &o, NULL), EB_OK);
    eb_publish_result res = t_pub_wait(bus, "log.me", "x", 1);
    cr_assert_eq(res.failed, 1);
    eb_bus_destroy(bus);
    pthread_mutex_destroy(&r->lock);
}

Test(bus, a_dead_letter_is_reported_to_the_log_callback)
{
    struct log_rec r;
    dead_letter_with_log_level(EB_LOG_WARN, &r);
    cr_assert_eq(atomic_load(&r.warn), 1, "%u warnings", atomic_load(&r.warn));
    cr_assert(strstr(r.last, "log.me") != NULL, "message: %s", r.last);
    cr_assert(strstr(r.last, "logged") != NULL, "message: %s", r.last);
}

Test(bus, the_log_level_filters_messages_below_it)
{
    struct log_rec r;
    dead_letter_with_log_level(EB_LOG_ERROR, &r);
    cr_assert_eq(atomic_load(&r.warn), 0);
    cr_assert_eq(atomic_load(&r.other), 0);
}
