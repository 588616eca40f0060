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
