/*
 * Waiting from inside handlers: nested publish-and-wait and ticket waits keep
 * the worker running other work, and a wait that could only finish after the
 * caller's own lane runs returns EB_EDEADLK instead of hanging.
 */
#include "common.h"

TestSuite(nested, .timeout = EB_CRITERION_TIMEOUT);

struct nest {
    eb_bus *bus;
    atomic_uint outer_calls;
    atomic_uint inner_calls;
    atomic_uint nested_ok;  /* nested waits that returned EB_OK with delivered 1 */
    atomic_int last_bad_rc; /* last nested rc that was not EB_OK */
    atomic_uint bad;
    const char *inner_topic;
};

static void nest_init(struct nest *n, eb_bus *bus, const char *inner_topic)
{
    n->bus = bus;
    atomic_init(&n->outer_calls, 0);
    atomic_init(&n->inner_calls, 0);
    atomic_init(&n->nested_ok, 0);
    atomic_init(&n->last_bad_rc, EB_OK);
    atomic_init(&n->bad, 0);
    n->inner_topic = inner_topic;
}

static int inner_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((struct nest *)ctx)->inner_calls, 1);
    return 0;
}

static int outer_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct nest *n = ctx;
    eb_publish_options o = t_bounded_opts();
    eb_publish_result r;
    memset(&r, 0, sizeof r);
    int rc = eb_publish_wait(n->bus, n->inner_topic, "in", 2, &o, &r);
    if (rc == EB_OK && r.matched == 1 && r.delivered == 1) {
        atomic_fetch_add(&n->nested_ok, 1);
    } else {
        atomic_store(&n->last_bad_rc, rc);
        atomic_fetch_add(&n->bad, 1);
    }
    atomic_fetch_add(&n->outer_calls, 1);
    return 0;
}

static void nested_run(unsigned workers, unsigned events)
{
    eb_bus *bus = t_bus_new(workers);
    struct nest n;
    nest_init(&n, bus, "inner");
    t_sub(bus, "outer", outer_handler, &n, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "inner", inner_handler, &n, EB_DELIVERY_SERIAL, 0);
    /* One from the test thread with a wait, the rest fire-and-forget so that
       outer events queue up behind each other. */
    eb_publish_result r = t_pub_wait(bus, "outer", NULL, 0);
    for (unsigned i = 1; i < events; i++) {
        cr_assert_eq(eb_publish(bus, "outer", NULL, 0, NULL), EB_OK);
    }
    bool ok = t_wait_ge(&n.outer_calls, events);
    eb_bus_destroy(bus);
    cr_assert_eq(r.delivered, 1);
    cr_assert(ok, "only %u of %u outer handlers finished", atomic_load(&n.outer_calls), events);
    cr_assert_eq(atomic_load(&n.bad), 0, "a nested wait failed: %s",
                 eb_err_name(atomic_load(&n.last_bad_rc)));
    cr_assert_eq(atomic_load(&n.nested_ok), events);
    cr_assert_eq(atomic_load(&n.inner_calls), events);
}

Test(nested, publish_wait_from_a_handler_works_with_one_worker)
{
    nested_run(1, 20);
}
Test(nested, publish_wait_from_a_handler_works_with_two_workers)
{
    nested_run(2, 20);
}

/* a -> waits for b -> waits for c, on a single worker. */
struct chain3 {
    eb_bus *bus;
    atomic_int rc_ab, rc_bc;
    atomic_uint c_calls;
};

static int chain_a(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct chain3 *c = ctx;
    eb_publish_options o = t_bounded_opts();
    atomic_store(&c->rc_ab, eb_publish_wait(c->bus, "b", NULL, 0, &o, NULL));
    return 0;
}

static int chain_b(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct chain3 *c = ctx;
    eb_publish_options o = t_bounded_opts();
    atomic_store(&c->rc_bc, eb_publish_wait(c->bus, "c", NULL, 0, &o, NULL));
    return 0;
}

static int chain_c(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((struct chain3 *)ctx)->c_calls, 1);
    return 0;
}

Test(nested, nested_waits_two_levels_deep_work_with_one_worker)
{
    struct chain3 c;
    atomic_init(&c.rc_ab, 1);
    atomic_init(&c.rc_bc, 1);
    atomic_init(&c.c_calls, 0);
    c.bus = t_bus_new(1);
    t_sub(c.bus, "a", chain_a, &c, EB_DELIVERY_SERIAL, 0);
    t_sub(c.bus, "b", chain_b, &c, EB_DELIVERY_KEYED, 0);
    t_sub(c.bus, "c", chain_c, &c, EB_DELIVERY_CONCURRENT, 0);
    eb_publish_result r = t_pub_wait(c.bus, "a", NULL, 0);
    eb_bus_destroy(c.bus);
    cr_assert_eq(r.delivered, 1);
    cr_assert_eq(atomic_load(&c.rc_ab), EB_OK);
    cr_assert_eq(atomic_load(&c.rc_bc), EB_OK);
    cr_assert_eq(atomic_load(&c.c_calls), 1);
}

Test(nested, sixty_four_concurrent_handlers_each_waiting_on_a_nested_publish_all_complete)
{
    enum { N = 64 };
    eb_bus *bus = t_bus_new(2);
    struct nest n;
    nest_init(&n, bus, "inner");
    t_sub(bus, "outer", outer_handler, &n, EB_DELIVERY_CONCURRENT, 64);
    t_sub(bus, "inner", inner_handler, &n, EB_DELIVERY_SERIAL, 0);
    eb_ticket *t[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(eb_publish_async(bus, "outer", NULL, 0, NULL, &t[i]), EB_OK);
    }
    int rcs[N];
    eb_publish_result rs[N];
    for (int i = 0; i < N; i++) {
        rcs[i] = eb_ticket_wait(t[i], t_wait_budget_ns() * 2, &rs[i]);
    }
    for (int i = 0; i < N; i++) {
        eb_ticket_release(t[i]);
    }
    bool ok = t_wait_ge(&n.outer_calls, N);
    eb_bus_destroy(bus);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(rcs[i], EB_OK, "outer %d: %s", i, eb_err_name(rcs[i]));
        cr_assert_eq(rs[i].delivered, 1);
    }
    cr_assert(ok);
    cr_assert_eq(atomic_load(&n.bad), 0, "a nested wait failed: %s",
                 eb_err_name(atomic_load(&n.last_bad_rc)));
    cr_assert_eq(atomic_load(&n.nested_ok), N);
    cr_assert_eq(atomic_load(&n.inner_calls), N);
}

Test(nested, sixty_four_concurrent_handlers_waiting_on_concurrent_inner_events_complete)
{
    enum { N = 64 };
    eb_bus *bus = t_bus_new(2);
    struct nest n;
    nest_init(&n, bus, "inner");
    t_sub(bus, "outer", outer_handler, &n, EB_DELIVERY_CONCURRENT, 64);
    t_sub(bus, "inner", inner_handler, &n, EB_DELIVERY_CONCURRENT, 64);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(eb_publish(bus, "outer", NULL, 0, NULL), EB_OK);
    }
    bool ok = t_wait_ge(&n.outer_calls, N);
    eb_bus_destroy(bus);
    cr_assert(ok, "only %u of %u finished", atomic_load(&n.outer_calls), N);
    cr_assert_eq(atomic_load(&n.bad), 0, "a nested wait failed: %s",
                 eb_err_name(atomic_load(&n.last_bad_rc)));
    cr_assert_eq(atomic_load(&n.inner_calls), N);
}

/* ---- EB_EDEADLK ---- */

struct self_wait {
    eb_bus *bus;
    atomic_uint calls;
    atomic_int rc;
    eb_publish_result r;
    eb_delivery delivery;
    bool use_ticket;
    bool poll; /* the ticket waited on with timeout 0 */
};

static int self_wait_handler(const eb_event *ev, void *ctx)
{
    struct self_wait *s = ctx;
    unsigned call = atomic_fetch_add(&s->calls, 1);
    if (call == 0) {
        /* Publish an event that routes to this very lane (same key for
           KEYED), then wait for it: it can only run after we return. */
        eb_publish_options o = t_bounded_opts();
        size_t klen;
        o.key = eb_event_key(ev, &klen);
        o.key_len = klen;
        memset(&s->r, 0x5A, sizeof s->r);
        if (s->use_ticket) {
            eb_ticket *t = NULL;
            int rc = eb_publish_async(s->bus, eb_event_topic(ev), NULL, 0, &o, &t);
            if (rc == EB_OK) {
                int64_t until = t_now_ns() + t_wait_budget_ns();
                do
                    rc = eb_ticket_wait(t, s->poll ? 0 : t_wait_budget_ns(), &s->r);
                while (s->poll && rc == EB_ETIMEDOUT && t_now_ns() < until);
                eb_ticket_release(t);
            }
            atomic_store(&s->rc, rc);
        } else {
            atomic_store(&s->rc, eb_publish_wait(s->bus, eb_event_topic(ev), NULL, 0, &o, &s->r));
        }
    }
    return 0;
}

static void self_wait_run(eb_delivery delivery, bool use_ticket, bool poll, unsigned workers)
{
    struct self_wait s;
    memset(&s, 0, sizeof s);
    atomic_init(&s.calls, 0);
    atomic_init(&s.rc, 1);
    s.use_ticket = use_ticket;
    s.poll = poll;
    s.bus = t_bus_new(workers);
    t_sub(s.bus, "self.x", self_wait_handler, &s, delivery, 0);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.key = "K";
    o.key_len = 1;
    cr_assert_eq(eb_publish(s.bus, "self.x", NULL, 0, &o), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&s.rc) != 1);
    /* The nested event was published and is delivered after the handler
       returned. */
    bool second = t_wait_ge(&s.calls, 2);
    eb_bus_destroy(s.bus);
    cr_assert(ok, "the self-wait never returned");
    cr_assert_eq(atomic_load(&s.rc), EB_EDEADLK, "self-wait returned %s",
                 eb_err_name(atomic_load(&s.rc)));
    eb_publish_result untouched;
    memset(&untouched, 0x5A, sizeof untouched);
    cr_assert_eq(memcmp(&s.r, &untouched, sizeof s.r), 0, "result written on EB_EDEADLK");
    cr_assert(second, "the event waited on was not delivered afterwards");
    cr_assert_eq(atomic_load(&s.calls), 2);
}

Test(nested, publish_wait_on_an_event_for_the_own_serial_lane_returns_edeadlk)
{
    self_wait_run(EB_DELIVERY_SERIAL, false, false, 2);
}

Test(nested, publish_wait_on_the_own_serial_lane_returns_edeadlk_with_one_worker)
{
    self_wait_run(EB_DELIVERY_SERIAL, false, false, 1);
}

Test(nested, publish_wait_on_the_own_keyed_lane_returns_edeadlk)
{
    self_wait_run(EB_DELIVERY_KEYED, false, false, 2);
}

Test(nested, ticket_wait_on_an_event_for_the_own_lane_returns_edeadlk)
{
    self_wait_run(EB_DELIVERY_SERIAL, true, false, 2);
}

/* Polls said EB_ETIMEDOUT for ever: a handler polling in a loop never
   returned. */
Test(nested, polling_a_ticket_for_the_own_lane_returns_edeadlk)
{
    self_wait_run(EB_DELIVERY_SERIAL, true, true, 2);
}

Test(nested, polling_a_ticket_for_the_own_lane_returns_edeadlk_with_one_worker)
{
    self_wait_run(EB_DELIVERY_SERIAL, true, true, 1);
}

/* Wait on an event that goes to the own lane AND to another subscription. */
struct mixed_wait {
    eb_bus *bus;
    atomic_int rc;
    atomic_uint self_calls;
    atomic_uint other_calls;
};

static int mixed_self(const eb_event *ev, void *ctx)
{
    struct mixed_wait *m = ctx;
    if (atomic_fetch_add(&m->self_calls, 1) == 0) {
        eb_publish_options o = t_bounded_opts();
        atomic_store(&m->rc, eb_publish_wait(m->bus, eb_event_topic(ev), NULL, 0, &o, NULL));
    }
    return 0;
}

static int mixed_other(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((struct mixed_wait *)ctx)->other_calls, 1);
    return 0;
}

Test(nested, publish_wait_returns_edeadlk_when_one_of_several_deliveries_is_the_own_lane)
{
    struct mixed_wait m;
    atomic_init(&m.rc, 1);
    atomic_init(&m.self_calls, 0);
    atomic_init(&m.other_calls, 0);
    m.bus = t_bus_new(2);
    t_sub(m.bus, "m", mixed_self, &m, EB_DELIVERY_SERIAL, 0);
    t_sub(m.bus, "m", mixed_other, &m, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(eb_publish(m.bus, "m", NULL, 0, NULL), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&m.rc) != 1);
    bool all = t_wait_ge(&m.self_calls, 2) && t_wait_ge(&m.other_calls, 2);
    eb_bus_destroy(m.bus);
    cr_assert(ok);
    cr_assert_eq(atomic_load(&m.rc), EB_EDEADLK, "got %s", eb_err_name(atomic_load(&m.rc)));
    cr_assert(all);
}

/* A handler publishing into its own full lane would wait for ever (the
   dispatcher waits for the lane, the lane waits for the handler): instead the
   events overflow onto the side list, none is refused or lost, and they arrive
   in the order the handler published them. */
struct flood {
    eb_bus *bus;
    atomic_int rc;
    atomic_uint accepted;
    atomic_uint calls;
};

static atomic_uint flood_next, flood_order_errors;

static int flood_self(const eb_event *ev, void *ctx)
{
    struct flood *f = ctx;
    if (atomic_fetch_add(&f->calls, 1) == 0) {
        eb_publish_options o = t_bounded_opts();
        int rc = EB_OK;
        for (uint32_t i = 0; i < 1000 && rc == EB_OK; i++) {
            rc = eb_publish(f->bus, "flood", &i, sizeof i, &o);
            if (rc == EB_OK) {
                atomic_fetch_add(&f->accepted, 1);
            }
        }
        atomic_store(&f->rc, rc);
        return 0;
    }
    uint32_t v = t_u32(ev);
    if (v != atomic_fetch_add(&flood_next, 1))
        atomic_fetch_add(&flood_order_errors, 1);
    return 0;
}

Test(nested, publishing_into_the_own_full_lane_overflows_instead_of_hanging)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.intake_capacity = 4;
    cfg.mailbox_capacity = 2;
    struct flood f;
    atomic_store(&flood_next, 0);
    atomic_store(&flood_order_errors, 0);
    atomic_init(&f.rc, 1);
    atomic_init(&f.accepted, 0);
    atomic_init(&f.calls, 0);
    cr_assert_eq(eb_bus_create(&cfg, &f.bus), EB_OK);
    t_sub(f.bus, "flood", flood_self, &f, EB_DELIVERY_SERIAL, 0);
    uint32_t first = 0;
    cr_assert_eq(eb_publish(f.bus, "flood", &first, sizeof first, NULL), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&f.rc) != 1);
    bool all = ok && t_wait_ge(&f.calls, atomic_load(&f.accepted) + 1);
    eb_bus_destroy(f.bus);
    cr_assert(ok, "the flooding handler never returned");
    cr_assert_eq(atomic_load(&f.rc), EB_OK, "got %s", eb_err_name(atomic_load(&f.rc)));
    cr_assert_eq(atomic_load(&f.accepted), 1000);
    cr_assert(all, "accepted events were not all delivered");
    cr_assert_eq(atomic_load(&flood_order_errors), 0, "events arrived out of publish order");
    cr_assert_eq(atomic_load(&f.calls), atomic_load(&f.accepted) + 1);
}

/* ---- wait cycles across workers ---- */

/* A ring of handlers on as many workers: member i's first call waits, once
   every member is running, for an event of member i+1's lane, which only
   runs after member i+1's wait. No wait can finish by itself: one of them
   (the one on the lowest worker) returns EB_EDEADLK, its lane moves on, and
   the others then finish with EB_OK. `hold` > 0 instead makes the last
   member sleep that long instead of waiting: a chain, not a cycle, where
   every wait must finish with EB_OK. */
#define RING_MAX 4

struct ring;

struct ring_member {
    struct ring *ring;
    unsigned i;
    atomic_uint calls;
    atomic_int rc;
};

struct ring {
    eb_bus *bus;
    unsigned n;
    bool ticket;
    int64_t hold_ms;
    int poller; /* this member polls its ticket every 1 ms (-1: none) */
    int hasty;  /* this member waits 2 s at most (-1: none) */
    atomic_uint arrived;
    struct ring_member m[RING_MAX];
};

static int ring_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    struct ring_member *m = ctx;
    struct ring *r = m->ring;
    if (atomic_fetch_add(&m->calls, 1) != 0)
        return 0;
    atomic_fetch_add(&r->arrived, 1);
    bool all;
    T_WAIT_FOR(all, atomic_load(&r->arrived) >= r->n);
    if (!all) {
        atomic_store(&m->rc, 100); /* the members never all ran at once */
        return 0;
    }
    if (r->hold_ms > 0 && m->i == r->n - 1) {
        t_sleep_ms(r->hold_ms);
        atomic_store(&m->rc, EB_OK);
        return 0;
    }
    char topic[16];
    snprintf(topic, sizeof topic, "ring.%u", (m->i + 1) % r->n);
    eb_publish_options o = t_bounded_opts();
    if ((int)m->i == r->hasty)
        o.timeout_ns = 2 * T_SEC;
    int rc;
    if (r->ticket || (int)m->i == r->poller) {
        eb_ticket *t = NULL;
        rc = eb_publish_async(r->bus, topic, NULL, 0, &o, &t);
        if (rc == EB_OK && (int)m->i == r->poller) {
            int64_t until = t_now_ns() + t_wait_budget_ns();
            do
                rc = eb_ticket_wait(t, T_MS, NULL);
            while (rc == EB_ETIMEDOUT && t_now_ns() < until);
            eb_ticket_release(t);
        } else if (rc == EB_OK) {
            rc = eb_ticket_wait(t, o.timeout_ns, NULL);
            eb_ticket_release(t);
        }
    } else {
        rc = eb_publish_wait(r->bus, topic, NULL, 0, &o, NULL);
    }
    atomic_store(&m->rc, rc);
    return 0;
}

/* Runs the ring; returns the member whose wait returned EB_EDEADLK (-1:
   none, -2: more than one), asserting that every other one returned EB_OK
   and every published event ran. */
static int ring_run_ex(unsigned n, bool ticket, int64_t hold_ms, int poller, int hasty)
{
    static struct ring r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.ticket = ticket;
    r.hold_ms = hold_ms;
    r.poller = poller;
    r.hasty = hasty;
    r.bus = t_bus_new(n);
    for (unsigned i = 0; i < n; i++) {
        r.m[i].ring = &r;
        r.m[i].i = i;
        atomic_init(&r.m[i].rc, 1);
        char topic[16];
        snprintf(topic, sizeof topic, "ring.%u", i);
        t_sub(r.bus, topic, ring_handler, &r.m[i], EB_DELIVERY_SERIAL, 0);
    }
    for (unsigned i = 0; i < n; i++) {
        char topic[16];
        snprintf(topic, sizeof topic, "ring.%u", i);
        cr_assert_eq(eb_publish(r.bus, topic, NULL, 0, NULL), EB_OK);
    }
    bool done = true;
    for (unsigned i = 0; i < n; i++) {
        bool ok;
        T_WAIT_FOR(ok, atomic_load(&r.m[i].rc) != 1);
        done = done && ok;
    }
    /* Each member ran its first event, and the one the previous published
       (the last member of a chain publishes nothing). */
    bool ran = true;
    for (unsigned i = 0; i < n; i++)
        ran = ran && t_wait_ge(&r.m[i].calls, hold_ms > 0 && i == 0 ? 1 : 2);
    eb_bus_destroy(r.bus);
    cr_assert(done, "a wait never returned");
    int who = -1;
    for (unsigned i = 0; i < n; i++) {
        int rc = atomic_load(&r.m[i].rc);
        cr_assert(rc == EB_OK || rc == EB_EDEADLK, "member %u's wait returned %s (%d)", i,
                  eb_err_name(rc), rc);
        if (rc == EB_EDEADLK)
            who = who == -1 ? (int)i : -2;
    }
    cr_assert(ran, "an event published by a member did not run");
    return who;
}

static int ring_run(unsigned n, bool ticket, int64_t hold_ms)
{
    return ring_run_ex(n, ticket, hold_ms, -1, -1);
}

Test(nested, two_handlers_waiting_for_each_other_end_with_one_edeadlk)
{
    cr_assert_geq(ring_run(2, false, 0), 0, "not exactly one EB_EDEADLK");
}

Test(nested, a_ring_of_three_ticket_waits_ends_with_one_edeadlk)
{
    cr_assert_geq(ring_run(3, true, 0), 0, "not exactly one EB_EDEADLK");
}

Test(nested, a_chain_of_waits_behind_a_slow_handler_is_not_called_a_deadlock)
{
    /* 0 waits for 1, 1 waits for 2, 2 sleeps well past the cycle check. */
    cr_assert_eq(ring_run(3, false, 60), -1);
}

Test(nested, a_cycle_is_broken_at_the_wait_that_ends_first)
{
    /* Worker order must not matter: the member polling every 1 ms (its
       deadline is always the nearest) gets EB_EDEADLK, whichever worker
       runs it; so does the one waiting 2 s against the others' budget. */
    cr_assert_eq(ring_run_ex(2, false, 0, 0, -1), 0);
    cr_assert_eq(ring_run_ex(2, false, 0, 1, -1), 1);
    cr_assert_eq(ring_run_ex(3, true, 0, -1, 2), 2);
}
