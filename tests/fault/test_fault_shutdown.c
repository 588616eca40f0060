/*
 * A handler that never returns (it blocks on a gate the test controls, for
 * at most the wait budget): the other subscriptions' lanes keep delivering,
 * and eb_bus_shutdown with a drain timeout reports it instead of hanging:
 * EB_ETIMEDOUT, the handle still valid, the bus closed to publishers, the
 * stuck subscription named in the log; once the handler returns, a second
 * call finishes the shutdown with every accepted event delivered.
 */
#include "fault_common.h"

TestSuite(shutdown, .timeout = EB_CRITERION_TIMEOUT);

typedef struct stuck {
    t_gate gate;
    atomic_uint calls;
    atomic_uint done;
} stuck;

static void stuck_init(stuck *s)
{
    memset(s, 0, sizeof *s);
    t_gate_init(&s->gate);
}

/* Every call waits for the gate. */
static int stuck_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    stuck *s = ctx;
    atomic_fetch_add(&s->calls, 1);
    t_gate_wait(&s->gate);
    atomic_fetch_add(&s->done, 1);
    return 0;
}

static eb_bus *bus_with_log(unsigned workers, fx_log *log, eb_store *store)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = workers;
    cfg.log = fx_log_fn;
    cfg.log_ctx = log;
    cfg.store = store;
    eb_bus *bus = NULL;
    int rc = eb_bus_create(&cfg, &bus);
    cr_assert_eq(rc, EB_OK, "eb_bus_create: %s", eb_err_name(rc));
    return bus;
}

static eb_subscription *sub_named(eb_bus *bus, const char *pattern, const char *name,
                                  eb_handler_fn fn, void *ctx, eb_overflow overflow)
{
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = name;
    o.overflow = overflow;
    eb_subscription *s = NULL;
    int rc = eb_subscribe(bus, pattern, fn, ctx, &o, &s);
    cr_assert_eq(rc, EB_OK, "eb_subscribe(%s): %s", pattern, eb_err_name(rc));
    return s;
}

/* ---- other lanes go on ------------------------------------------------------ */

Test(shutdown, a_handler_that_never_returns_does_not_stop_other_lanes)
{
    fx_log log;
    fx_log_init(&log);
    eb_bus *bus = bus_with_log(2, &log, NULL);
    stuck st;
    stuck_init(&st);
    t_counter live, keyed;
    t_counter_init(&live);
    t_counter_init(&keyed);
    sub_named(bus, "stuck.#", NULL, stuck_handler, &st, EB_OVERFLOW_BLOCK);
    t_sub(bus, "live.#", t_count_handler, &live, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "live.#", t_count_handler, &keyed, EB_DELIVERY_KEYED, 8);
    cr_assert_eq(t_pub_u32(bus, "stuck.a", 0), EB_OK);
    cr_assert(t_wait_ge(&st.calls, 1), "the stuck handler never ran");
    /* Ten more for the stuck lane (they wait behind it, within its
       mailbox), and a thousand for the others. */
    for (uint32_t i = 1; i <= 10; i++)
        cr_assert_eq(t_pub_u32(bus, "stuck.a", i), EB_OK);
    for (uint32_t i = 0; i < 1000; i++) {
        eb_publish_options o = t_bounded_opts();
        char key[8];
        snprintf(key, sizeof key, "k%u", i % 13);
        o.key = key;
        o.key_len = strlen(key);
        cr_assert_eq(eb_publish(bus, "live.x", &i, 4, &o), EB_OK);
    }
    cr_assert(t_wait_ge(&live.calls, 1000), "serial: %u of 1000", atomic_load(&live.calls));
    cr_assert(t_wait_ge(&keyed.calls, 1000), "keyed: %u of 1000", atomic_load(&keyed.calls));
    cr_assert_eq(atomic_load(&st.calls), 1, "the stuck lane ran another delivery");
    for (unsigned i = 0; i < 1000; i++)
        cr_assert_eq(live.rec[i], i, "serial order broken at %u", i);
    t_gate_open(&st.gate);
    cr_assert(t_wait_ge(&st.done, 11));
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&st.gate.expired), 0);
}

/* A stuck subscription that drops on overflow never holds up dispatch, even
   when its mailbox is full (a BLOCK one would, by design: backpressure). */
Test(shutdown, a_stuck_dropping_subscription_never_stalls_the_others)
{
    fx_log log;
    fx_log_init(&log);
    eb_bus *bus = bus_with_log(2, &log, NULL);
    stuck st;
    stuck_init(&st);
    t_counter live;
    t_counter_init(&live);
    eb_subscription *s = sub_named(bus, "e.#", NULL, stuck_handler, &st, EB_OVERFLOW_DROP_NEWEST);
    t_sub(bus, "e.#", t_count_handler, &live, EB_DELIVERY_SERIAL, 0);
    for (uint32_t i = 0; i < 2000; i++)
        cr_assert_eq(t_pub_u32(bus, "e.x", i), EB_OK);
    cr_assert(t_wait_ge(&live.calls, 2000), "%u of 2000", atomic_load(&live.calls));
    eb_subscription_stats ss;
    cr_assert_eq(eb_subscription_stats_get(s, &ss), EB_OK);
    cr_assert_gt(ss.dropped, 0, "the stuck subscription's mailbox never filled");
    t_gate_open(&st.gate);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&st.gate.expired), 0);
}

/* ---- the drain timeout ------------------------------------------------------- */

Test(shutdown, times_out_naming_the_stuck_handler_then_finishes_when_it_returns)
{
    fx_log log;
    fx_log_init(&log);
    eb_bus *bus = bus_with_log(2, &log, NULL);
    stuck st;
    stuck_init(&st);
    t_counter audit;
    t_counter_init(&audit);
    sub_named(bus, "orders.*", "billing", stuck_handler, &st, EB_OVERFLOW_BLOCK);
    eb_subscription *a = t_sub(bus, "audit.#", t_count_handler, &audit, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(t_pub_u32(bus, "orders.created", 0), EB_OK);
    cr_assert(t_wait_ge(&st.calls, 1));
    for (uint32_t i = 1; i <= 5; i++)
        cr_assert_eq(t_pub_u32(bus, "orders.created", i), EB_OK); /* queued behind it */
    for (uint32_t i = 0; i < 20; i++)
        cr_assert_eq(t_pub_u32(bus, "audit.log", i), EB_OK);
    cr_assert(t_wait_ge(&audit.calls, 20));

    int64_t t0 = t_now_ns();
    int rc = eb_bus_shutdown(bus, 100 * T_MS);
    int64_t took = t_now_ns() - t0;
    cr_assert_eq(rc, EB_ETIMEDOUT, "%s", eb_err_name(rc));
    cr_assert_geq(took, 100 * T_MS, "returned after %lld ns", (long long)took);
    cr_assert_lt(took, t_wait_budget_ns(), "took %lld ns", (long long)took);
    cr_assert(fx_log_has(&log, "'billing' (pattern 'orders.*') running for"), "log:\n%s", log.text);
    cr_assert(!fx_log_has(&log, "audit"), "an idle subscription was named:\n%s", log.text);
    cr_assert(fx_log_has(&log, "shutdown timed out"), "log:\n%s", log.text);

    /* Closed, but the handle is valid. */
    cr_assert_eq(t_pub_u32(bus, "audit.log", 99), EB_ECLOSED);
    cr_assert_eq(eb_subscribe(bus, "x", t_count_handler, &audit, NULL, NULL), EB_ECLOSED);
    eb_bus_stats bs;
    cr_assert_eq(eb_bus_stats_get(bus, &bs), EB_OK);
    cr_assert_eq(bs.published, 26);
    cr_assert_eq(eb_unsubscribe(a), EB_OK);
    /* Still stuck: another short shutdown times out again. */
    cr_assert_eq(eb_bus_shutdown(bus, 0), EB_ETIMEDOUT);

    t_gate_open(&st.gate);
    cr_assert_eq(eb_bus_shutdown(bus, -1), EB_OK);
    cr_assert_eq(atomic_load(&st.done), 6, "every accepted event is delivered");
    cr_assert_eq(atomic_load(&audit.calls), 20);
    cr_assert_eq(atomic_load(&st.gate.expired), 0);
}

Test(shutdown, a_second_call_after_the_handler_returned_finishes_within_its_timeout)
{
    fx_log log;
    fx_log_init(&log);
    eb_bus *bus = bus_with_log(2, &log, NULL);
    stuck st;
    stuck_init(&st);
    sub_named(bus, "a", NULL, stuck_handler, &st, EB_OVERFLOW_BLOCK);
    cr_assert_eq(t_pub_u32(bus, "a", 1), EB_OK);
    cr_assert(t_wait_ge(&st.calls, 1));
    cr_assert_eq(eb_bus_shutdown(bus, 20 * T_MS), EB_ETIMEDOUT);
    cr_assert(fx_log_has(&log, "handler of subscription 'a' running for"), "log:\n%s", log.text);
    t_gate_open(&st.gate);
    cr_assert(t_wait_ge(&st.done, 1));
    /* Drained by now (or within moments): a bounded wait is enough. */
    cr_assert_eq(eb_bus_shutdown(bus, t_wait_budget_ns()), EB_OK);
}

/* The report has one line per subscription: ten calls of a wide CONCURRENT
   subscription no longer fill its lines (eight) and hide a SERIAL one. */
Test(shutdown, the_report_names_every_stuck_subscription_once)
{
    fx_log log;
    fx_log_init(&log);
    eb_bus *bus = bus_with_log(12, &log, NULL);
    stuck wide, other;
    stuck_init(&wide);
    stuck_init(&other);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = "wide";
    o.delivery = EB_DELIVERY_CONCURRENT;
    o.lanes = 10;
    cr_assert_eq(eb_subscribe(bus, "w", stuck_handler, &wide, &o, NULL), EB_OK);
    sub_named(bus, "s", "other", stuck_handler, &other, EB_OVERFLOW_BLOCK);
    for (uint32_t i = 0; i < 10; i++)
        cr_assert_eq(t_pub_u32(bus, "w", i), EB_OK);
    cr_assert_eq(t_pub_u32(bus, "s", 0), EB_OK);
    cr_assert(t_wait_ge(&wide.calls, 10));
    cr_assert(t_wait_ge(&other.calls, 1));
    cr_assert_eq(eb_bus_shutdown(bus, 20 * T_MS), EB_ETIMEDOUT);
    cr_assert(fx_log_has(&log, "11 handler(s) still running"), "log:\n%s", log.text);
    cr_assert(fx_log_has(&log, "'wide' (pattern 'w') running for"), "log:\n%s", log.text);
    cr_assert(fx_log_has(&log, "(10 calls running, the longest)"), "log:\n%s", log.text);
    cr_assert(fx_log_has(&log, "'other' (pattern 's') running for"), "log:\n%s", log.text);
    t_gate_open(&wide.gate);
    t_gate_open(&other.gate);
    cr_assert_eq(eb_bus_shutdown(bus, -1), EB_OK);
    cr_assert_eq(atomic_load(&wide.done), 10);
}

/* A handler that unsubscribes its own subscription, then blocks: once
   every call of the subscription has begun (so none is skipped as
   cancelled), each unsubscribes (the first gets EB_OK) and waits for the
   gate. */
typedef struct quitter {
    stuck st;
    unsigned expect;
    eb_subscription *_Atomic sub;
    atomic_uint unsubscribed;
} quitter;

static int quitter_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    quitter *q = ctx;
    atomic_fetch_add(&q->st.calls, 1);
    if (!t_wait_ge(&q->st.calls, q->expect))
        return 0;
    if (eb_unsubscribe(atomic_load(&q->sub)) == EB_OK)
        atomic_fetch_add(&q->unsubscribed, 1);
    t_gate_wait(&q->st.gate);
    atomic_fetch_add(&q->st.done, 1);
    return 0;
}

/* A subscription unsubscribed by its own handler is no longer registered,
   but its handlers may still run: the report names them, marked as such. */
Test(shutdown, the_report_names_handlers_whose_subscription_they_unsubscribed)
{
    fx_log log;
    fx_log_init(&log);
    eb_bus *bus = bus_with_log(3, &log, NULL);
    quitter wide = {.expect = 2}, plain = {.expect = 1};
    stuck_init(&wide.st);
    stuck_init(&plain.st);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = "wide";
    o.delivery = EB_DELIVERY_CONCURRENT;
    o.lanes = 2;
    eb_subscription *s = NULL;
    cr_assert_eq(eb_subscribe(bus, "w", quitter_handler, &wide, &o, &s), EB_OK);
    atomic_store(&wide.sub, s);
    atomic_store(&plain.sub, t_sub(bus, "p", quitter_handler, &plain, EB_DELIVERY_SERIAL, 0));
    for (uint32_t i = 0; i < 2; i++)
        cr_assert_eq(t_pub_u32(bus, "w", i), EB_OK);
    cr_assert_eq(t_pub_u32(bus, "p", 0), EB_OK);
    cr_assert(t_wait_ge(&wide.unsubscribed, 1));
    cr_assert(t_wait_ge(&plain.unsubscribed, 1));
    eb_bus_stats bs;
    cr_assert_eq(eb_bus_stats_get(bus, &bs), EB_OK);
    cr_assert_eq(bs.subscriptions, 0, "unsubscribed, not counted");

    cr_assert_eq(eb_bus_shutdown(bus, 20 * T_MS), EB_ETIMEDOUT);
    cr_assert(fx_log_has(&log, "3 handler(s) still running"), "log:\n%s", log.text);
    cr_assert(fx_log_has(&log, "'wide' (pattern 'w', unsubscribed) running for"), "log:\n%s",
              log.text);
    cr_assert(fx_log_has(&log, "(2 calls running, the longest)"), "log:\n%s", log.text);
    cr_assert(fx_log_has(&log, "'p' (unsubscribed) running for"), "log:\n%s", log.text);
    t_gate_open(&wide.st.gate);
    t_gate_open(&plain.st.gate);
    cr_assert_eq(eb_bus_shutdown(bus, -1), EB_OK);
    cr_assert_eq(atomic_load(&wide.st.done), 2);
    cr_assert_eq(atomic_load(&plain.st.done), 1);
    cr_assert_eq(atomic_load(&wide.unsubscribed), 1);
    cr_assert_eq(atomic_load(&wide.st.gate.expired), 0);
}

/* A handler unsubscribes another subscription whose handler is stuck: the
   call waits for it, and the report names both, the other as unsubscribed. */
typedef struct remover {
    eb_subscription *victim;
    atomic_uint calls;
    atomic_int rc;
} remover;

static int remover_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    remover *r = ctx;
    atomic_fetch_add(&r->calls, 1);
    atomic_store(&r->rc, eb_unsubscribe(r->victim));
    return 0;
}

Test(shutdown, the_report_names_a_handler_whose_subscription_is_being_unsubscribed)
{
    fx_log log;
    fx_log_init(&log);
    eb_bus *bus = bus_with_log(2, &log, NULL);
    stuck st;
    stuck_init(&st);
    remover rm = {.rc = -1};
    rm.victim = sub_named(bus, "v", "victim", stuck_handler, &st, EB_OVERFLOW_BLOCK);
    sub_named(bus, "r", "remover", remover_handler, &rm, EB_OVERFLOW_BLOCK);
    cr_assert_eq(t_pub_u32(bus, "v", 0), EB_OK);
    cr_assert(t_wait_ge(&st.calls, 1));
    cr_assert_eq(t_pub_u32(bus, "r", 0), EB_OK);
    cr_assert(t_wait_ge(&rm.calls, 1));
    eb_bus_stats bs;
    for (int64_t end = t_now_ns() + t_wait_budget_ns(); t_now_ns() < end; t_sleep_ms(1)) {
        cr_assert_eq(eb_bus_stats_get(bus, &bs), EB_OK);
        if (bs.subscriptions == 1)
            break; /* the victim is unlinked: the call waits for its handler */
    }
    cr_assert_eq(bs.subscriptions, 1);

    cr_assert_eq(eb_bus_shutdown(bus, 20 * T_MS), EB_ETIMEDOUT);
    cr_assert(fx_log_has(&log, "2 handler(s) still running"), "log:\n%s", log.text);
    cr_assert(fx_log_has(&log, "'victim' (pattern 'v', unsubscribed) running for"), "log:\n%s",
              log.text);
    cr_assert(fx_log_has(&log, "'remover' (pattern 'r') running for"), "log:\n%s", log.text);
    t_gate_open(&st.gate);
    cr_assert_eq(eb_bus_shutdown(bus, -1), EB_OK);
    cr_assert_eq(atomic_load(&rm.rc), EB_OK);
    cr_assert_eq(atomic_load(&st.done), 1);
}

Test(shutdown, an_idle_bus_shuts_down_at_once_even_with_a_zero_timeout)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "x", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(t_pub_u32(bus, "x", i), EB_OK);
    cr_assert(t_quiesce(bus));
    cr_assert_eq(eb_bus_shutdown(bus, 0), EB_OK);
    cr_assert_eq(atomic_load(&c.calls), 100);
}

Test(shutdown, every_accepted_event_is_delivered_by_a_shutdown_without_timeout)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "x", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    for (uint32_t i = 0; i < 3000; i++)
        cr_assert_eq(t_pub_u32(bus, "x", i), EB_OK);
    cr_assert_eq(eb_bus_shutdown(bus, -1), EB_OK);
    cr_assert_eq(atomic_load(&c.calls), 3000);
}

typedef struct self_shutdown {
    eb_bus *bus;
    atomic_int rc;
    atomic_bool ran;
} self_shutdown;

static int shutdown_own_bus(const eb_event *ev, void *ctx)
{
    (void)ev;
    self_shutdown *s = ctx;
    atomic_store(&s->rc, eb_bus_shutdown(s->bus, 0));
    atomic_store(&s->ran, true);
    return 0;
}

Test(shutdown, refuses_null_and_a_handler_of_its_own_bus)
{
    cr_assert_eq(eb_bus_shutdown(NULL, 0), EB_EINVAL);
    eb_bus *bus = t_bus_new(2);
    self_shutdown s = {.bus = bus};
    t_counter c;
    t_counter_init(&c);
    cr_assert_eq(eb_subscribe(bus, "self", shutdown_own_bus, &s, NULL, NULL), EB_OK);
    t_sub(bus, "after", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(t_pub_u32(bus, "self", 1), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&s.ran));
    cr_assert(ok);
    cr_assert_eq(atomic_load(&s.rc), EB_EDEADLK);
    /* Nothing changed: the bus still takes and delivers events. */
    eb_publish_result r = t_pub_wait(bus, "after", "x", 1);
    cr_assert_eq(r.delivered, 1);
    cr_assert_eq(eb_bus_shutdown(bus, -1), EB_OK);
}

/* ---- with a store ---------------------------------------------------------------- */

static eb_store *open_store(fx_dir *d, fx_log *log)
{
    cr_assert(fx_dir_new(d));
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_OFF;
    o.log = fx_log_fn;
    o.log_ctx = log;
    eb_store *s = NULL;
    int rc = eb_store_open(d->path, &o, &s);
    cr_assert_eq(rc, EB_OK, "eb_store_open: %s", eb_err_name(rc));
    return s;
}

typedef struct ckpt {
    uint64_t checkpoint;
} ckpt;

static int read_ckpt(const eb_store_subscription_info *i, void *ctx)
{
    ((ckpt *)ctx)->checkpoint = i->checkpoint;
    return 0;
}

/* A store and a bus on it, each logging to its own fx_log, with a durable
   subscription "ledger" to pay.# whose handler is stuck on st's gate. */
typedef struct ledger {
    fx_dir d;
    fx_log slog, blog;
    eb_store *s;
    eb_bus *bus;
    stuck st;
} ledger;

static void ledger_open(ledger *l)
{
    fx_log_init(&l->slog);
    fx_log_init(&l->blog);
    l->s = open_store(&l->d, &l->slog);
    l->bus = bus_with_log(2, &l->blog, l->s);
    stuck_init(&l->st);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = "ledger";
    o.durable = true;
    cr_assert_eq(eb_subscribe(l->bus, "pay.#", stuck_handler, &l->st, &o, NULL), EB_OK);
}

/* Durable publish options for the ledger's events. */
static eb_publish_options durable_opts(void)
{
    eb_publish_options po = t_bounded_opts();
    po.flags = EB_PUBLISH_DURABLE;
    return po;
}

/* The documented order: the store is closed only after a shutdown call
   returned EB_OK. The durable subscription's checkpoint covers everything
   it finished. */
Test(shutdown, a_timed_out_bus_keeps_using_its_store_until_a_later_call_succeeds)
{
    ledger l;
    ledger_open(&l);
    eb_publish_options po = durable_opts();
    for (uint32_t i = 0; i < 3; i++)
        cr_assert_eq(eb_publish(l.bus, "pay.in", &i, 4, &po), EB_OK);
    cr_assert(t_wait_ge(&l.st.calls, 1));
    cr_assert_eq(eb_bus_shutdown(l.bus, 50 * T_MS), EB_ETIMEDOUT);
    cr_assert(fx_log_has(&l.blog, "'ledger' (pattern 'pay.#') running for"), "log:\n%s",
              l.blog.text);
    cr_assert_eq(eb_publish(l.bus, "pay.in", "x", 1, &po), EB_ECLOSED);
    /* The store still serves other callers meanwhile. */
    cr_assert_eq(eb_outbox_add(l.s, "cmd", "p", 1, NULL, 0, NULL), EB_OK);
    t_gate_open(&l.st.gate);
    cr_assert_eq(eb_bus_shutdown(l.bus, -1), EB_OK);
    cr_assert_eq(atomic_load(&l.st.done), 3);
    ckpt c = {0};
    cr_assert_eq(eb_store_subscriptions(l.s, read_ckpt, &c), EB_OK);
    cr_assert_eq(c.checkpoint, 3, "checkpoint %llu", (unsigned long long)c.checkpoint);
    eb_store_close(l.s);
    fx_dir_rm(&l.d);
    cr_assert_eq(atomic_load(&l.st.gate.expired), 0);
}

/* Closing the store while a timed-out bus still uses it is the misuse the
   header warns about; the store must refuse it (log an error, stay open)
   rather than free itself under the bus. */
Test(shutdown, closing_the_store_of_a_timed_out_bus_is_refused)
{
    if (EB_FAULT_PENDING_CLOSE_ATTACHED)
        cr_skip_test("pending fix in src/store_sqlite.c (EB_FAULT_PENDING_CLOSE_ATTACHED)");
    ledger l;
    ledger_open(&l);
    eb_publish_options po = durable_opts();
    uint32_t v = 1;
    cr_assert_eq(eb_publish(l.bus, "pay.in", &v, 4, &po), EB_OK);
    cr_assert(t_wait_ge(&l.st.calls, 1));
    cr_assert_eq(eb_bus_shutdown(l.bus, 20 * T_MS), EB_ETIMEDOUT);
    eb_store_close(l.s); /* refused: the bus still uses it */
    cr_assert(l.slog.warnings >= 1, "the refusal was not logged");
    eb_store_stats ss;
    cr_assert_eq(eb_store_stats_get(l.s, &ss), EB_OK, "the store was closed under the bus");
    t_gate_open(&l.st.gate);
    cr_assert_eq(eb_bus_shutdown(l.bus, -1), EB_OK);
    eb_store_close(l.s); /* now it closes */
    fx_dir_rm(&l.d);
}

/* ---- the deadlock scan of a waiting handler ------------------------------------ */

typedef struct waiter {
    eb_bus *bus;
    atomic_uint waits;
    atomic_uint bad;
} waiter;

/* Publishes to another subscription and waits for it: the wait scans this
   handler's own mailbox (deadlock detection) while the dispatcher keeps
   pushing into it. */
static int wait_on_other(const eb_event *ev, void *ctx)
{
    (void)ev;
    waiter *w = ctx;
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = t_wait_budget_ns();
    eb_publish_result r;
    /* EB_EDEADLK when the flood filled this lane's mailbox and the
       dispatcher stalls on it: the wait could never finish. */
    int rc = eb_publish_wait(w->bus, "other", "x", 1, &o, &r);
    if (rc != EB_EDEADLK && (rc != EB_OK || r.delivered != 1))
        atomic_fetch_add(&w->bad, 1);
    atomic_fetch_add(&w->waits, 1);
    return 0;
}

/* TSan reported the scan's read of a mailbox slot as racing with the
   dispatcher's write of it (ordered only by Concurrency Kit's fences, which
   TSan does not see); found by the soak test. */
Test(shutdown, a_waiting_handler_scans_its_mailbox_while_the_dispatcher_fills_it)
{
    eb_bus *bus = t_bus_new(2);
    waiter w = {.bus = bus};
    t_counter other;
    t_counter_init(&other);
    /* A mailbox the flood never fills: the dispatcher keeps pushing into it
       (a full one would stall it) while the handler scans it. */
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.mailbox_capacity = 1u << 15;
    cr_assert_eq(eb_subscribe(bus, "mine", wait_on_other, &w, &so, NULL), EB_OK);
    t_sub(bus, "other", t_count_handler, &other, EB_DELIVERY_SERIAL, 0);
    enum { N = 5000 };
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(t_pub_u32(bus, "mine", i), EB_OK);
    cr_assert(t_wait_ge(&w.waits, N), "%u of %u", atomic_load(&w.waits), N);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&w.bad), 0);
}
