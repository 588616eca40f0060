/*
 * Unsubscribing: once eb_unsubscribe returns the handler is not running and
 * is never called again, even under concurrent publishing; from inside the
 * own handler it returns at once; deliveries still queued complete as
 * EB_ECANCELED for their waiters.
 */
#include "common.h"

TestSuite(unsubscribe, .timeout = EB_CRITERION_TIMEOUT);

struct race {
    eb_bus *bus;
    atomic_int stop;
    atomic_int unsubscribed; /* set once eb_unsubscribe returned */
    atomic_uint in_handler;
    atomic_uint calls;
    atomic_uint late_calls; /* calls that started after unsubscribe returned */
    atomic_uint published;
};

static int race_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct race *r = ctx;
    atomic_fetch_add(&r->in_handler, 1);
    if (atomic_load(&r->unsubscribed)) {
        atomic_fetch_add(&r->late_calls, 1);
    }
    unsigned n = atomic_fetch_add(&r->calls, 1);
    if (n % 8 == 0) {
        t_sleep_ns(100000); /* widen the window in which unsubscribe can race */
    }
    atomic_fetch_sub(&r->in_handler, 1);
    return 0;
}

static void *race_publisher(void *arg)
{
    struct race *r = arg;
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = 0;
    uint32_t i = 0;
    while (!atomic_load(&r->stop)) {
        o.key = &i;
        o.key_len = sizeof i;
        if (eb_publish(r->bus, "race", &i, sizeof i, &o) == EB_OK) {
            atomic_fetch_add(&r->published, 1);
        } else {
            t_sleep_ns(50000);
        }
        i++;
    }
    return NULL;
}

static void race_run(eb_delivery delivery)
{
    struct race r;
    memset(&r, 0, sizeof r);
    r.bus = t_bus_new(2);
    eb_subscription *sub = t_sub(r.bus, "race", race_handler, &r, delivery, 0);
    /* A second subscription keeps receiving, so publishing stays busy. */
    t_counter keep;
    t_counter_init(&keep);
    t_sub(r.bus, "race", t_count_handler, &keep, EB_DELIVERY_SERIAL, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, race_publisher, &r), 0);
    bool warm = t_wait_ge(&r.calls, 200);
    int rc = eb_unsubscribe(sub);
    unsigned running_at_return = atomic_load(&r.in_handler);
    atomic_store(&r.unsubscribed, 1);
    unsigned calls_at_return = atomic_load(&r.calls);
    unsigned pub_at_return = atomic_load(&r.published);
    bool more;
    T_WAIT_FOR(more, atomic_load(&r.published) > pub_at_return + 200);
    t_sleep_ms(20);
    atomic_store(&r.stop, 1);
    pthread_join(th, NULL);
    eb_bus_destroy(r.bus);
    cr_assert(warm, "the handler was never called 200 times");
    cr_assert_eq(rc, EB_OK);
    cr_assert_eq(running_at_return, 0, "the handler was still running when unsubscribe returned");
    cr_assert(more, "publishing stalled after the unsubscribe");
    cr_assert_eq(atomic_load(&r.late_calls), 0, "%u calls after unsubscribe returned",
                 atomic_load(&r.late_calls));
    cr_assert_eq(atomic_load(&r.calls), calls_at_return);
    cr_assert_eq(atomic_load(&keep.calls), atomic_load(&r.published),
                 "the other subscription lost events");
}

Test(unsubscribe, no_serial_call_after_unsubscribe_returns_under_concurrent_publishing)
{
    race_run(EB_DELIVERY_SERIAL);
}

Test(unsubscribe, no_keyed_call_after_unsubscribe_returns_under_concurrent_publishing)
{
    race_run(EB_DELIVERY_KEYED);
}

Test(unsubscribe, no_concurrent_call_after_unsubscribe_returns_under_concurrent_publishing)
{
    race_run(EB_DELIVERY_CONCURRENT);
}

/* ---- waiting for a running handler ---- */

struct running {
    t_gate gate;
    atomic_uint calls;
    atomic_int finished;
};

static int running_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct running *r = ctx;
    atomic_fetch_add(&r->calls, 1);
    t_gate_wait(&r->gate);
    t_sleep_ms(5);
    atomic_store(&r->finished, 1);
    return 0;
}

struct unsub_thread {
    eb_subscription *sub;
    atomic_int returned;
    int rc;
    int finished_at_return;
    struct running *r;
};

static void *unsub_thread_fn(void *arg)
{
    struct unsub_thread *u = arg;
    u->rc = eb_unsubscribe(u->sub);
    u->finished_at_return = atomic_load(&u->r->finished);
    atomic_store(&u->returned, 1);
    return NULL;
}

Test(unsubscribe, unsubscribe_waits_for_the_running_handler_to_return)
{
    eb_bus *bus = t_bus_new(2);
    struct running r;
    t_gate_init(&r.gate);
    atomic_init(&r.calls, 0);
    atomic_init(&r.finished, 0);
    eb_subscription *sub = t_sub(bus, "run", running_handler, &r, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(eb_publish(bus, "run", NULL, 0, NULL), EB_OK);
    bool started;
    T_WAIT_FOR(started, atomic_load(&r.gate.waiting) == 1);
    struct unsub_thread u = {.sub = sub, .r = &r};
    atomic_init(&u.returned, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, unsub_thread_fn, &u), 0);
    t_sleep_ms(100);
    int returned_early = atomic_load(&u.returned);
    t_gate_open(&r.gate);
    pthread_join(th, NULL);
    eb_bus_destroy(bus);
    cr_assert(started);
    cr_assert_eq(returned_early, 0, "unsubscribe returned while the handler ran");
    cr_assert_eq(u.rc, EB_OK);
    cr_assert_eq(u.finished_at_return, 1);
    cr_assert_eq(atomic_load(&r.calls), 1);
}

Test(unsubscribe, a_second_unsubscribe_while_the_first_waits_returns_einval)
{
    eb_bus *bus = t_bus_new(2);
    struct running r;
    t_gate_init(&r.gate);
    atomic_init(&r.calls, 0);
    atomic_init(&r.finished, 0);
    eb_subscription *sub = t_sub(bus, "run", running_handler, &r, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(eb_publish(bus, "run", NULL, 0, NULL), EB_OK);
    bool started;
    T_WAIT_FOR(started, atomic_load(&r.gate.waiting) == 1);
    struct unsub_thread u = {.sub = sub, .r = &r};
    atomic_init(&u.returned, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, unsub_thread_fn, &u), 0);
    t_sleep_ms(100);
    /* The first call is still waiting for the handler, so the handle is
       still valid; a second call is refused. */
    int second = atomic_load(&u.returned) ? 1 : eb_unsubscribe(sub);
    t_gate_open(&r.gate);
    pthread_join(th, NULL);
    eb_bus_destroy(bus);
    cr_assert(started);
    cr_assert_eq(second, EB_EINVAL, "got %s", eb_err_name(second));
    cr_assert_eq(u.rc, EB_OK);
}

/* ---- cancelled deliveries ---- */

Test(unsubscribe, queued_deliveries_of_a_cancelled_subscription_complete_as_ecanceled)
{
    enum { N = 5 };
    eb_bus *bus = t_bus_new(2);
    struct running r;
    t_gate_init(&r.gate);
    atomic_init(&r.calls, 0);
    atomic_init(&r.finished, 0);
    eb_subscription *sub = t_sub(bus, "q", running_handler, &r, EB_DELIVERY_SERIAL, 0);
    eb_ticket *t[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(eb_publish_async(bus, "q", NULL, 0, NULL, &t[i]), EB_OK);
    }
    bool dispatched;
    eb_bus_stats st;
    T_WAIT_STATS(dispatched, bus, st, st.dispatched >= N);
    bool started;
    T_WAIT_FOR(started, atomic_load(&r.gate.waiting) == 1);
    struct unsub_thread u = {.sub = sub, .r = &r};
    atomic_init(&u.returned, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, unsub_thread_fn, &u), 0);
    /* Let the unsubscribe start (it waits for the running handler). */
    t_sleep_ms(300);
    t_gate_open(&r.gate);
    pthread_join(th, NULL);
    int rcs[N];
    eb_publish_result rs[N];
    for (int i = 0; i < N; i++) {
        rcs[i] = eb_ticket_wait(t[i], t_wait_budget_ns(), &rs[i]);
        eb_ticket_release(t[i]);
    }
    eb_bus_destroy(bus);
    cr_assert(dispatched);
    cr_assert(started);
    cr_assert_eq(u.rc, EB_OK);
    cr_assert_eq(atomic_load(&r.calls), 1, "a queued delivery ran after unsubscribe");
    cr_assert_eq(rcs[0], EB_OK);
    cr_assert_eq(rs[0].delivered, 1, "the running delivery finished normally");
    for (int i = 1; i < N; i++) {
        cr_assert_eq(rcs[i], EB_OK, "ticket %d: %s", i, eb_err_name(rcs[i]));
        cr_assert_eq(rs[i].matched, 1);
        cr_assert_eq(rs[i].delivered, 0);
        cr_assert_eq(rs[i].failed, 1, "ticket %d: the cancelled delivery counts as failed", i);
        cr_assert_eq(rs[i].first_error, EB_ECANCELED, "ticket %d: %s", i,
                     eb_err_name(rs[i].first_error));
    }
}

/* ---- from inside the own handler ---- */

struct self_unsub {
    t_gate gate;
    _Atomic(eb_subscription *) sub;
    atomic_uint calls;
    atomic_int rc;
    atomic_int returned_at_once; /* unsubscribe returned while we still ran */
};

static int self_unsub_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct self_unsub *s = ctx;
    unsigned n = atomic_fetch_add(&s->calls, 1) + 1;
    if (n == 1) {
        t_gate_wait(&s->gate);
    }
    if (n == 3) {
        atomic_store(&s->rc, eb_unsubscribe(atomic_load(&s->sub)));
        atomic_store(&s->returned_at_once, 1);
    }
    return 0;
}

Test(unsubscribe, unsubscribe_from_the_own_handler_returns_at_once_and_stops_further_calls)
{
    enum { N = 10 };
    eb_bus *bus = t_bus_new(2);
    struct self_unsub s;
    t_gate_init(&s.gate);
    atomic_init(&s.sub, NULL);
    atomic_init(&s.calls, 0);
    atomic_init(&s.rc, 1);
    atomic_init(&s.returned_at_once, 0);
    atomic_store(&s.sub, t_sub(bus, "self", self_unsub_handler, &s, EB_DELIVERY_SERIAL, 0));
    t_counter other;
    t_counter_init(&other);
    t_sub(bus, "self", t_count_handler, &other, EB_DELIVERY_SERIAL, 0);
    eb_ticket *t[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(eb_publish_async(bus, "self", NULL, 0, NULL, &t[i]), EB_OK);
    }
    eb_bus_stats st;
    bool dispatched;
    T_WAIT_STATS(dispatched, bus, st, st.dispatched >= N);
    t_gate_open(&s.gate);
    int rcs[N];
    eb_publish_result rs[N];
    for (int i = 0; i < N; i++) {
        rcs[i] = eb_ticket_wait(t[i], t_wait_budget_ns(), &rs[i]);
        eb_ticket_release(t[i]);
    }
    /* Later events no longer match it. */
    eb_publish_result after = t_pub_wait(bus, "self", NULL, 0);
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    eb_bus_destroy(bus);
    cr_assert(dispatched);
    cr_assert_eq(atomic_load(&s.rc), EB_OK);
    cr_assert_eq(atomic_load(&s.returned_at_once), 1);
    cr_assert_eq(atomic_load(&s.calls), 3, "called %u times", atomic_load(&s.calls));
    for (int i = 0; i < N; i++) {
        cr_assert_eq(rcs[i], EB_OK, "ticket %d: %s", i, eb_err_name(rcs[i]));
        cr_assert_eq(rs[i].matched, 2);
        if (i < 3) {
            cr_assert_eq(rs[i].delivered, 2, "ticket %d", i);
        } else {
            cr_assert_eq(rs[i].delivered, 1, "ticket %d", i);
            cr_assert_eq(rs[i].failed, 1, "ticket %d", i);
            cr_assert_eq(rs[i].first_error, EB_ECANCELED, "ticket %d: %s", i,
                         eb_err_name(rs[i].first_error));
        }
    }
    cr_assert_eq(after.matched, 1);
    cr_assert_eq(atomic_load(&other.calls), N + 1);
    cr_assert_eq(st.subscriptions, 1);
}

/* ---- from another subscription's handler ---- */

struct cross_unsub {
    _Atomic(eb_subscription *) victim;
    atomic_int rc;
    atomic_int victim_running_at_return;
    struct running r; /* the victim */
};

static int killer_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct cross_unsub *c = ctx;
    atomic_store(&c->rc, eb_unsubscribe(atomic_load(&c->victim)));
    atomic_store(&c->victim_running_at_return,
                 atomic_load(&c->r.calls) > 0 && !atomic_load(&c->r.finished));
    return 0;
}

static void cross_unsub_run(unsigned workers, bool victim_running)
{
    eb_bus *bus = t_bus_new(workers);
    struct cross_unsub c;
    t_gate_init(&c.r.gate);
    atomic_init(&c.r.calls, 0);
    atomic_init(&c.r.finished, 0);
    atomic_init(&c.rc, 1);
    atomic_init(&c.victim_running_at_return, 0);
    atomic_init(&c.victim, NULL);
    atomic_store(&c.victim, t_sub(bus, "victim", running_handler, &c.r, EB_DELIVERY_SERIAL, 0));
    t_sub(bus, "killer", killer_handler, &c, EB_DELIVERY_SERIAL, 0);
    if (victim_running) {
        cr_assert_eq(eb_publish(bus, "victim", NULL, 0, NULL), EB_OK);
        bool started;
        T_WAIT_FOR(started, atomic_load(&c.r.gate.waiting) == 1);
        cr_assert(started);
    } else {
        t_gate_open(&c.r.gate);
    }
    cr_assert_eq(eb_publish(bus, "killer", NULL, 0, NULL), EB_OK);
    if (victim_running) {
        t_sleep_ms(50);
        t_gate_open(&c.r.gate);
    }
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&c.rc) != 1);
    eb_publish_result r = t_pub_wait(bus, "victim", NULL, 0);
    eb_bus_destroy(bus);
    cr_assert(ok, "unsubscribe from another handler never returned");
    cr_assert_eq(atomic_load(&c.rc), EB_OK);
    cr_assert_eq(atomic_load(&c.victim_running_at_return), 0);
    cr_assert_eq(r.matched, 0);
    cr_assert_eq(atomic_load(&c.r.calls), victim_running ? 1u : 0u);
}

Test(unsubscribe, a_handler_may_unsubscribe_another_idle_subscription_with_one_worker)
{
    cross_unsub_run(1, false);
}

Test(unsubscribe, a_handler_may_unsubscribe_another_running_subscription)
{
    cross_unsub_run(2, true);
}

/* ---- subscribing from a handler ---- */

struct sub_from_handler {
    eb_bus *bus;
    atomic_int rc;
    t_counter late;
};

static int subscriber_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct sub_from_handler *s = ctx;
    atomic_store(&s->rc, eb_subscribe(s->bus, "late", t_count_handler, &s->late, NULL, NULL));
    return 0;
}

Test(unsubscribe, a_handler_may_subscribe_and_the_new_subscription_gets_later_events)
{
    struct sub_from_handler s;
    atomic_init(&s.rc, 1);
    t_counter_init(&s.late);
    s.bus = t_bus_new(1);
    t_sub(s.bus, "make", subscriber_handler, &s, EB_DELIVERY_SERIAL, 0);
    t_pub_wait(s.bus, "make", NULL, 0);
    eb_publish_result r = t_pub_wait(s.bus, "late", NULL, 0);
    eb_bus_destroy(s.bus);
    cr_assert_eq(atomic_load(&s.rc), EB_OK);
    cr_assert_eq(r.matched, 1);
    cr_assert_eq(atomic_load(&s.late.calls), 1);
}

/* ---- a pending retry is cancelled ---- */

Test(unsubscribe, unsubscribe_cancels_a_pending_retry)
{
    eb_bus *bus = t_bus_new(2);
    t_failing p;
    eb_subscription *sub = t_sub_failing(bus, "pr", &p, 5, 2 * T_SEC, 4 * T_SEC);
    eb_ticket *t = NULL;
    cr_assert_eq(eb_publish_async(bus, "pr", NULL, 0, NULL, &t), EB_OK);
    cr_assert(t_wait_ge(&p.calls, 1));
    cr_assert_eq(eb_unsubscribe(sub), EB_OK);
    unsigned at_return = atomic_load(&p.calls);
    eb_publish_result r;
    int rc = eb_ticket_wait(t, t_wait_budget_ns(), &r);
    eb_ticket_release(t);
    t_sleep_ms(50);
    eb_bus_destroy(bus);
    cr_assert_eq(at_return, 1);
    cr_assert_eq(atomic_load(&p.calls), 1, "a retry ran after unsubscribe");
    cr_assert_eq(rc, EB_OK, "the ticket of a cancelled retry never completed: %s", eb_err_name(rc));
    cr_assert_eq(r.failed, 1);
    cr_assert_eq(r.delivered, 0);
    cr_assert_lt(r.first_error, 0);
}

/* A lane in a long backoff: eb_unsubscribe ends the backoff at once. Its
   timer entry held a reference to the subscription until its deadline, and
   the call waited that long (10 minutes here) before the fix. */
struct unsub_call {
    eb_subscription *sub;
    atomic_int rc;
    atomic_bool done;
};

static void *unsubscribe_thread(void *arg)
{
    struct unsub_call *u = arg;
    atomic_store(&u->rc, eb_unsubscribe(u->sub));
    atomic_store(&u->done, true);
    return NULL;
}

Test(unsubscribe, unsubscribing_a_lane_in_a_long_backoff_returns_at_once)
{
    eb_bus *bus = t_bus_new(2);
    t_failing p;
    static struct unsub_call u;
    memset(&u, 0, sizeof u);
    u.sub = t_sub_failing(bus, "lb", &p, 3, 600 * T_SEC, 600 * T_SEC);
    cr_assert_eq(t_pub_u32(bus, "lb", 1), EB_OK);
    cr_assert(t_wait_ge(&p.calls, 1));
    t_sleep_ms(20); /* the lane is in its backoff now */
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, unsubscribe_thread, &u), 0);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&u.done));
    cr_assert(ok, "eb_unsubscribe waited for the lane's backoff");
    pthread_join(th, NULL);
    cr_assert_eq(atomic_load(&u.rc), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&p.calls), 1, "a retry ran after unsubscribe");
}

/* eb_unsubscribe just as a failing handler returns, while its worker arms
   the retry's backoff: the call returns at once (it used to wait out the
   whole backoff when it came between the lane being marked in backoff and
   its timer being armed, and could free the subscription under the arming
   worker). Many rounds with a varying gap. */
struct failing_now {
    atomic_int returning;
};

static int fail_signalling(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_store(&((struct failing_now *)ctx)->returning, 1);
    return EB_EIO;
}

Test(unsubscribe, unsubscribing_as_a_failing_handler_returns_never_waits_out_its_backoff)
{
    eb_bus *bus = t_bus_new(2);
    static struct failing_now f;
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 3;
    o.backoff_initial_ns = o.backoff_max_ns = 600 * T_SEC;
    int64_t end = t_now_ns() + 700 * T_MS, worst = 0;
    unsigned rounds = 0, seed = 1;
    while (t_now_ns() < end) {
        eb_subscription *sub = NULL;
        cr_assert_eq(eb_subscribe(bus, "race", fail_signalling, &f, &o, &sub), EB_OK);
        atomic_store(&f.returning, 0);
        cr_assert_eq(eb_publish(bus, "race", NULL, 0, NULL), EB_OK);
        while (!atomic_load(&f.returning))
            ;
        seed = seed * 1103515245u + 12345u;
        for (volatile unsigned i = 0, n = (seed >> 16) % 3000; i < n; i++)
            ;
        int64_t t0 = t_now_ns();
        cr_assert_eq(eb_unsubscribe(sub), EB_OK);
        int64_t took = t_now_ns() - t0;
        if (took > worst)
            worst = took;
        rounds++;
    }
    eb_bus_destroy(bus);
    cr_assert_gt(rounds, 0);
    cr_assert_lt(worst, t_wait_budget_ns(), "an unsubscribe took %lld ms (%u rounds)",
                 (long long)(worst / T_MS), rounds);
}

/* Deliveries an unsubscribe ends before their first call complete as
   EB_ECANCELED and eb_bus_stats counts each of them as cancelled. */
struct gate_first {
    atomic_int entered, open;
    atomic_uint calls;
};

static int gated_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct gate_first *g = ctx;
    if (atomic_fetch_add(&g->calls, 1) == 0) {
        atomic_store(&g->entered, 1);
        while (!atomic_load(&g->open))
            t_sleep_ms(1);
    }
    return 0;
}

Test(unsubscribe, deliveries_cancelled_by_an_unsubscribe_are_counted_as_cancelled)
{
    eb_bus *bus = t_bus_new(2);
    static struct gate_first g;
    memset(&g, 0, sizeof g);
    static struct unsub_call u;
    memset(&u, 0, sizeof u);
    cr_assert_eq(eb_subscribe(bus, "gated", gated_handler, &g, NULL, &u.sub), EB_OK);
    enum { N = 10 };
    eb_ticket *t[N];
    for (int i = 0; i < N; i++)
        cr_assert_eq(eb_publish_async(bus, "gated", NULL, 0, NULL, &t[i]), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&g.entered));
    cr_assert(ok);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, unsubscribe_thread, &u), 0);
    t_sleep_ms(50); /* the unsubscribe is applied while the first call runs */
    atomic_store(&g.open, 1);
    pthread_join(th, NULL);
    cr_assert_eq(atomic_load(&u.rc), EB_OK);
    unsigned cancelled = 0;
    for (int i = 0; i < N; i++) {
        eb_publish_result r;
        cr_assert_eq(eb_ticket_wait(t[i], t_wait_budget_ns(), &r), EB_OK);
        eb_ticket_release(t[i]);
        if (r.first_error == EB_ECANCELED)
            cancelled++;
    }
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&g.calls), 1);
    cr_assert_eq(cancelled, N - 1);
    cr_assert_eq(st.cancelled, N - 1);
    cr_assert_eq(st.delivered, 1);
}
