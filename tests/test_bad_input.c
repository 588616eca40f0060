/*
 * Bad input (the last paragraph of eventbus.h): a NULL bus, topic, pattern or
 * handler; a topic or pattern longer than EB_TOPIC_MAX; a NULL payload with a
 * non-zero length; a key longer than 255 bytes or NULL with a length; unknown
 * flags; out-of-range option values. Each is refused with EB_EINVAL, leaves
 * the out-parameters untouched and changes nothing: no event is published,
 * no subscription is made (checked through the stats and a catch-all
 * subscriber).
 */
#include "common.h"

TestSuite(bad_input, .timeout = EB_CRITERION_TIMEOUT);

struct fixture {
    eb_bus *bus;
    t_counter all; /* "#": sees anything that would have been published */
    eb_bus_stats before;
};

static void fixture_open(struct fixture *f)
{
    f->bus = t_bus_new(2);
    t_counter_init(&f->all);
    t_sub(f->bus, "#", t_count_handler, &f->all, EB_DELIVERY_SERIAL, 0);
    cr_assert(t_quiesce(f->bus));
    cr_assert_eq(eb_bus_stats_get(f->bus, &f->before), EB_OK);
}

/* Checks nothing was published or subscribed since fixture_open, then tears
   down. A final good publish proves the bus still works. */
static void fixture_close(struct fixture *f)
{
    eb_publish_result r = t_pub_wait(f->bus, "still.works", NULL, 0);
    cr_assert_eq(r.matched, 1);
    eb_bus_stats after;
    cr_assert_eq(eb_bus_stats_get(f->bus, &after), EB_OK);
    eb_bus_destroy(f->bus);
    cr_assert_eq(after.published, f->before.published + 1, "a refused publish was accepted");
    cr_assert_eq(after.subscriptions, f->before.subscriptions,
                 "a refused subscribe was registered");
    cr_assert_eq(atomic_load(&f->all.calls), 1, "a refused publish was delivered");
}

static char *long_string(size_t len, char c)
{
    char *s = malloc(len + 1);
    memset(s, c, len);
    s[len] = '\0';
    return s;
}

static int never_called(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    return 0;
}

/* Runs the three publish entry points with the same arguments; each must
   return EB_EINVAL and leave the ticket and result untouched. */
static void expect_publish_einval(eb_bus *bus, const char *topic, const void *payload, size_t len,
                                  const eb_publish_options *o, const char *what)
{
    int rc = eb_publish(bus, topic, payload, len, o);
    cr_assert_eq(rc, EB_EINVAL, "eb_publish, %s: %s", what, eb_err_name(rc));
    eb_publish_result r;
    memset(&r, 0x5A, sizeof r);
    eb_publish_result untouched = r;
    rc = eb_publish_wait(bus, topic, payload, len, o, &r);
    cr_assert_eq(rc, EB_EINVAL, "eb_publish_wait, %s: %s", what, eb_err_name(rc));
    cr_assert_eq(memcmp(&r, &untouched, sizeof r), 0, "eb_publish_wait, %s: result written", what);
    eb_ticket *const sentinel = (eb_ticket *)(uintptr_t)0x7171;
    eb_ticket *t = sentinel;
    rc = eb_publish_async(bus, topic, payload, len, o, &t);
    cr_assert_eq(rc, EB_EINVAL, "eb_publish_async, %s: %s", what, eb_err_name(rc));
    cr_assert_eq(t, sentinel, "eb_publish_async, %s: ticket written", what);
}

Test(bad_input, publish_refuses_a_null_bus)
{
    eb_publish_options o;
    eb_publish_options_init(&o);
    expect_publish_einval(NULL, "t", "x", 1, &o, "NULL bus");
    expect_publish_einval(NULL, "t", "x", 1, NULL, "NULL bus, NULL options");
}

Test(bad_input, publish_refuses_null_and_overlong_topics)
{
    struct fixture f;
    fixture_open(&f);
    eb_publish_options o;
    eb_publish_options_init(&o);
    expect_publish_einval(f.bus, NULL, "x", 1, &o, "NULL topic");
    char *t256 = long_string(EB_TOPIC_MAX + 1, 'a');
    expect_publish_einval(f.bus, t256, "x", 1, &o, "256-byte topic");
    char *t4k = long_string(4096, 'b');
    expect_publish_einval(f.bus, t4k, "x", 1, &o, "4 KiB topic");
    free(t256);
    free(t4k);
    fixture_close(&f);
}

Test(bad_input, publish_accepts_a_topic_of_exactly_255_bytes)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "#", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    char *t255 = long_string(EB_TOPIC_MAX, 'a');
    eb_publish_result r = t_pub_wait(bus, t255, NULL, 0);
    free(t255);
    eb_bus_destroy(bus);
    cr_assert_eq(r.matched, 1);
    cr_assert_eq(atomic_load(&c.calls), 1);
}

Test(bad_input, publish_refuses_a_null_payload_with_a_length)
{
    struct fixture f;
    fixture_open(&f);
    eb_publish_options o;
    eb_publish_options_init(&o);
    expect_publish_einval(f.bus, "t", NULL, 1, &o, "NULL payload, len 1");
    expect_publish_einval(f.bus, "t", NULL, 100, NULL, "NULL payload, len 100");
    fixture_close(&f);
}

Test(bad_input, publish_refuses_bad_keys)
{
    struct fixture f;
    fixture_open(&f);
    char key[300];
    memset(key, 'k', sizeof key);
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.key = key;
    o.key_len = 256;
    expect_publish_einval(f.bus, "t", "x", 1, &o, "key_len 256");
    o.key_len = 300;
    expect_publish_einval(f.bus, "t", "x", 1, &o, "key_len 300");
    o.key = NULL;
    o.key_len = 1;
    expect_publish_einval(f.bus, "t", "x", 1, &o, "NULL key, key_len 1");
    fixture_close(&f);
}

Test(bad_input, publish_accepts_a_key_of_exactly_255_bytes)
{
    eb_bus *bus = t_bus_new(2);
    char key[255];
    memset(key, 'k', sizeof key);
    eb_publish_options o = t_bounded_opts();
    o.key = key;
    o.key_len = 255;
    cr_assert_eq(eb_publish_wait(bus, "t", NULL, 0, &o, NULL), EB_OK);
    eb_bus_destroy(bus);
}

Test(bad_input, publish_refuses_unknown_flags)
{
    struct fixture f;
    fixture_open(&f);
    eb_publish_options o;
    eb_publish_options_init(&o);
    /* 1 and 2 are the durable flags (EB_ENOTSUP without a store, see
       test_store.c); both at once, or any other bit, is bad input. */
    static const unsigned flags[] = {3u, 4u, 0x100u, 0x80000000u, ~0u};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "flags 0x%x", flags[i]);
        o.flags = flags[i];
        expect_publish_einval(f.bus, "t", "x", 1, &o, what);
    }
    fixture_close(&f);
}

Test(bad_input, publish_async_refuses_a_null_ticket_pointer)
{
    struct fixture f;
    fixture_open(&f);
    int rc = eb_publish_async(f.bus, "t", "x", 1, NULL, NULL);
    cr_assert_eq(rc, EB_EINVAL, "got %s", eb_err_name(rc));
    fixture_close(&f);
}

Test(bad_input, ticket_wait_refuses_a_null_ticket)
{
    eb_publish_result r;
    cr_assert_eq(eb_ticket_wait(NULL, 0, &r), EB_EINVAL);
    cr_assert_eq(eb_ticket_wait(NULL, -1, NULL), EB_EINVAL);
    eb_ticket_release(NULL);
}

/* ---- subscribe ---- */

static void expect_subscribe_einval(eb_bus *bus, const char *pattern, eb_handler_fn fn,
                                    const eb_subscribe_options *o, const char *what)
{
    eb_subscription *const sentinel = (eb_subscription *)(uintptr_t)0x6161;
    eb_subscription *sub = sentinel;
    int rc = eb_subscribe(bus, pattern, fn, NULL, o, &sub);
    cr_assert_eq(rc, EB_EINVAL, "eb_subscribe, %s: %s", what, eb_err_name(rc));
    cr_assert_eq(sub, sentinel, "eb_subscribe, %s: out written", what);
    rc = eb_subscribe(bus, pattern, fn, NULL, o, NULL);
    cr_assert_eq(rc, EB_EINVAL, "eb_subscribe (out NULL), %s: %s", what, eb_err_name(rc));
}

Test(bad_input, subscribe_refuses_null_bus_pattern_and_handler)
{
    expect_subscribe_einval(NULL, "a", never_called, NULL, "NULL bus");
    struct fixture f;
    fixture_open(&f);
    expect_subscribe_einval(f.bus, NULL, never_called, NULL, "NULL pattern");
    expect_subscribe_einval(f.bus, "a", NULL, NULL, "NULL handler");
    fixture_close(&f);
}

Test(bad_input, subscribe_refuses_overlong_patterns_and_names)
{
    struct fixture f;
    fixture_open(&f);
    char *p256 = long_string(EB_TOPIC_MAX + 1, 'p');
    expect_subscribe_einval(f.bus, p256, never_called, NULL, "256-byte pattern");
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = p256;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "256-byte name");
    free(p256);
    fixture_close(&f);
}

Test(bad_input, subscribe_refuses_out_of_range_options)
{
    struct fixture f;
    fixture_open(&f);
    eb_subscribe_options base;
    eb_subscribe_options_init(&base);
    eb_subscribe_options o;

    o = base;
    o.delivery = (eb_delivery)99;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "delivery 99");
    o = base;
    o.delivery = (eb_delivery)-1;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "delivery -1");
    o = base;
    o.overflow = (eb_overflow)99;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "overflow 99");
    o = base;
    o.delivery = EB_DELIVERY_SERIAL;
    o.lanes = 2;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "SERIAL lanes 2");
    o = base;
    o.delivery = EB_DELIVERY_KEYED;
    o.lanes = 2000;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "KEYED lanes 2000");
    o = base;
    o.delivery = EB_DELIVERY_KEYED;
    o.lanes = 1025;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "KEYED lanes 1025");
    o = base;
    o.delivery = EB_DELIVERY_CONCURRENT;
    o.lanes = 2000;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "CONCURRENT lanes 2000");
    o = base;
    o.max_attempts = 5000;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "max_attempts 5000");
    o = base;
    o.max_attempts = 1001;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "max_attempts 1001");
    o = base;
    o.mailbox_capacity = (1u << 20) + 1;
    expect_subscribe_einval(f.bus, "a", never_called, &o, "mailbox_capacity (1<<20)+1");
    fixture_close(&f);
}

Test(bad_input, subscribe_accepts_the_largest_in_range_options)
{
    eb_bus *bus = t_bus_new(2);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = EB_DELIVERY_KEYED;
    o.lanes = 1024;
    o.max_attempts = 1000;
    eb_subscription *s = NULL;
    cr_assert_eq(eb_subscribe(bus, "a", never_called, NULL, &o, &s), EB_OK);
    cr_assert_eq(eb_unsubscribe(s), EB_OK);
    o.delivery = EB_DELIVERY_SERIAL;
    o.lanes = 1;
    cr_assert_eq(eb_subscribe(bus, "a", never_called, NULL, &o, &s), EB_OK);
    cr_assert_eq(eb_unsubscribe(s), EB_OK);
    o.delivery = EB_DELIVERY_CONCURRENT;
    o.lanes = 1024;
    cr_assert_eq(eb_subscribe(bus, "a", never_called, NULL, &o, &s), EB_OK);
    char *p255 = long_string(EB_TOPIC_MAX, 'p');
    o.delivery = EB_DELIVERY_SERIAL;
    o.lanes = 0;
    o.name = p255;
    cr_assert_eq(eb_subscribe(bus, p255, never_called, NULL, &o, NULL), EB_OK);
    free(p255); /* the name and the pattern are copied */
    cr_assert_eq(t_pub_wait(bus, "a", NULL, 0).matched, 1);
    eb_bus_destroy(bus);
}

Test(bad_input, unsubscribe_refuses_null)
{
    cr_assert_eq(eb_unsubscribe(NULL), EB_EINVAL);
}

Test(bad_input, stats_refuse_null_arguments)
{
    eb_bus_stats st;
    eb_subscription_stats ss;
    cr_assert_eq(eb_bus_stats_get(NULL, &st), EB_EINVAL);
    cr_assert_eq(eb_subscription_stats_get(NULL, &ss), EB_EINVAL);
    eb_bus *bus = t_bus_new(1);
    cr_assert_eq(eb_bus_stats_get(bus, NULL), EB_EINVAL);
    eb_subscription *s = t_sub(bus, "a", never_called, NULL, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(eb_subscription_stats_get(s, NULL), EB_EINVAL);
    eb_bus_destroy(bus);
}

Test(bad_input, bus_create_refuses_out_of_range_workers)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 1000;
    eb_bus *const sentinel = (eb_bus *)(uintptr_t)0x4141;
    eb_bus *bus = sentinel;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_EINVAL);
    cr_assert_eq(bus, sentinel);
}
