/*
 * Routing: AMQP 0-9-1 topic-exchange semantics as RabbitMQ implements them,
 * observed through the public API only (eb_publish_wait's result.matched and
 * the handlers' hit counts).
 */
#include "common.h"

TestSuite(route, .timeout = EB_CRITERION_TIMEOUT);

/*
 * Subscribes pattern, publishes topic and waits; returns how many
 * subscriptions matched, after checking that the handler was called exactly
 * that many times. The subscription is removed before returning.
 */
static unsigned match_once(eb_bus *bus, const char *pattern, const char *topic)
{
    t_counter c;
    t_counter_init(&c);
    eb_subscription *sub = NULL;
    int rc = eb_subscribe(bus, pattern, t_count_handler, &c, NULL, &sub);
    cr_assert_eq(rc, EB_OK, "subscribe \"%s\": %s", pattern, eb_err_name(rc));
    eb_publish_result r = t_pub_wait(bus, topic, NULL, 0);
    cr_assert_eq(r.delivered, r.matched, "pattern \"%s\" topic \"%s\"", pattern, topic);
    cr_assert_eq(r.failed, 0);
    cr_assert_eq(atomic_load(&c.calls), r.matched, "pattern \"%s\" topic \"%s\"", pattern, topic);
    cr_assert_eq(eb_unsubscribe(sub), EB_OK);
    return r.matched;
}

struct route_case {
    const char *pattern;
    const char *topic;
    bool match;
};

static void check_cases(const struct route_case *cases, size_t n)
{
    eb_bus *bus = t_bus_new(2);
    for (size_t i = 0; i < n; i++) {
        unsigned m = match_once(bus, cases[i].pattern, cases[i].topic);
        cr_assert_eq(m, cases[i].match ? 1u : 0u, "pattern \"%s\" vs topic \"%s\": expected %s",
                     cases[i].pattern, cases[i].topic, cases[i].match ? "a match" : "no match");
        /* eb_topic_matches answers as routing does. */
        cr_assert_eq(eb_topic_matches(cases[i].pattern, cases[i].topic), cases[i].match ? 1 : 0,
                     "eb_topic_matches(\"%s\", \"%s\")", cases[i].pattern, cases[i].topic);
    }
    eb_bus_destroy(bus);
}

#define CHECK(cases) check_cases((cases), sizeof(cases) / sizeof((cases)[0]))

Test(route, exact_pattern_matches_only_the_same_topic)
{
    static const struct route_case cases[] = {
        {"a.b.c", "a.b.c", true},
        {"a.b.c", "a.b", false},
        {"a.b.c", "a.b.c.d", false},
        {"a.b.c", "a.b.x", false},
        {"a.b.c", "x.b.c", false},
        {"a.b.c", "", false},
        {"a", "a", true},
        {"a", "ab", false},
        {"ab", "a", false},
        {"A", "a", false},
        {"orders.created", "orders.created", true},
    };
    CHECK(cases);
}

Test(route, star_matches_exactly_one_word)
{
    static const struct route_case cases[] = {
        {"*", "a", true},
        {"*", "", false},
        {"*", "a.b", false},
        {"a.*", "a.b", true},
        {"a.*", "a", false},
        {"a.*", "a.b.c", false},
        {"*.b", "a.b", true},
        {"*.b", "b", false},
        {"a.*.c", "a.b.c", true},
        {"a.*.c", "a.c", false},
        {"a.*.c", "a.b.b.c", false},
        {"*.*", "a.b", true},
        {"*.*", "a", false},
        {"*.*", "a.b.c", false},
        {"*.*.*", "x.y.z", true},
    };
    CHECK(cases);
}

Test(route, hash_matches_zero_or_more_words)
{
    static const struct route_case cases[] = {
        {"#", "a", true},           {"#", "a.b.c", true},
        {"a.#", "a", true},         {"a.#", "a.b", true},
        {"a.#", "a.b.c", true},     {"a.#", "b.a", false},
        {"a.#", "", false},         {"a.#", "ab", false},
        {"#.a", "a", true},         {"#.a", "b.a", true},
        {"#.a", "b.c.a", true},     {"#.a", "a.b", false},
        {"a.#.c", "a.c", true},     {"a.#.c", "a.b.c", true},
        {"a.#.c", "a.b.d.c", true}, {"a.#.c", "a.b", false},
        {"a.#.c", "a.c.d", false},  {"#.a.#", "a", true},
        {"#.a.#", "x.a.y", true},   {"#.a.#", "x.y.a", true},
        {"#.a.#", "x.y", false},    {"#.b.#.d", "a.b.c.d", true},
        {"#.b.#.d", "b.d", true},   {"#.b.#.d", "a.b.c", false},
    };
    CHECK(cases);
}

Test(route, hash_matches_zero_words)
{
    static const struct route_case cases[] = {
        {"#", "", true},    {"#.#", "", true},  {"#.#.#", "", true},
        {"a.#", "a", true}, {"#.a", "a", true}, {"a.#.b", "a.b", true},
    };
    CHECK(cases);
}

Test(route, combinations_of_star_and_hash)
{
    static const struct route_case cases[] = {
        {"*.#", "a", true},    {"*.#", "a.b.c", true},     {"*.#", "", false},
        {"#.*", "a", true},    {"#.*", "a.b", true},       {"#.*", "", false},
        {"#.*.#", "a", true},  {"#.*.#", "", false},       {"*.#.*", "a.b", true},
        {"*.#.*", "a", false}, {"*.#.*", "a.b.c.d", true}, {"#.#", "a.b", true},
        {"a.*.#", "a", false}, {"a.*.#", "a.b", true},     {"a.#.*", "a.b.c", true},
        {"#.*.*", "a", false}, {"#.*.*", "a.b", true},     {"*.*.#", "a.b", true},
    };
    CHECK(cases);
}

Test(route, empty_topic_has_zero_words)
{
    static const struct route_case cases[] = {
        {"", "", true}, {"", "a", false}, {"*", "", false}, {"#", "", true}, {"a", "", false},
    };
    CHECK(cases);
}

Test(route, empty_words_between_dots_are_words)
{
    /* RabbitMQ splits "a..b" into three words: "a", "" and "b". */
    static const struct route_case cases[] = {
        {"a.*.b", "a..b", true}, {"a.b", "a..b", false}, {"a.#.b", "a..b", true},
        {"#", "a..b", true},     {"*.*", ".", true},     {"*", ".", false},
        {"a..b", "a..b", true},  {"a..b", "a.b", false},
    };
    CHECK(cases);
}

Test(route, wildcards_count_only_as_whole_words)
{
    static const struct route_case cases[] = {
        {"a*.b", "a*.b", true}, {"a*.b", "ax.b", false}, {"a#", "a#", true},
        {"a#", "a.b", false},   {"a#", "a", false},      {"*a", "ba", false},
    };
    CHECK(cases);
}

Test(route, long_topics_with_many_words)
{
    char topic[EB_TOPIC_MAX + 1];
    /* 128 words "a" separated by dots: 255 bytes, the longest topic. */
    size_t n = 0;
    for (int i = 0; i < 128; i++) {
        if (i) {
            topic[n++] = '.';
        }
        topic[n++] = 'a';
    }
    topic[n] = '\0';
    cr_assert_eq(strlen(topic), EB_TOPIC_MAX);
    static const struct route_case shapes[] = {
        {"#", NULL, true},           {"#.a", NULL, true},       {"a.#.a", NULL, true},
        {"*.#", NULL, true},         {"#.b", NULL, false},      {"*", NULL, false},
        {"#.#.#.#.#.#", NULL, true}, {"#.*.#.*.#", NULL, true},
    };
    struct route_case cases[sizeof shapes / sizeof shapes[0] + 1];
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        cases[i] = shapes[i];
        cases[i].topic = topic;
    }
    /* The longest pattern matches itself. */
    cases[sizeof shapes / sizeof shapes[0]] = (struct route_case){topic, topic, true};
    CHECK(cases);
}

Test(route, one_event_reaches_every_matching_subscription_and_no_other)
{
    eb_bus *bus = t_bus_new(2);
    static const char *patterns[] = {"orders.created", "orders.*",   "#",      "orders.#",
                                     "*.created",      "payments.*", "orders", "*.*.*"};
    static const bool expect[] = {true, true, true, true, true, false, false, false};
    enum { NP = sizeof patterns / sizeof patterns[0] };
    t_counter c[NP];
    for (int i = 0; i < NP; i++) {
        t_counter_init(&c[i]);
        t_sub(bus, patterns[i], t_count_handler, &c[i], (eb_delivery)(i % 3), 0);
    }
    eb_publish_result r = t_pub_wait(bus, "orders.created", NULL, 0);
    cr_assert_eq(r.matched, 5);
    cr_assert_eq(r.delivered, 5);
    cr_assert_eq(r.failed, 0);
    cr_assert_eq(r.first_error, EB_OK);
    for (int i = 0; i < NP; i++) {
        cr_assert_eq(atomic_load(&c[i].calls), expect[i] ? 1u : 0u, "pattern %s", patterns[i]);
    }
    eb_bus_destroy(bus);
}

Test(route, identical_patterns_each_get_the_event)
{
    eb_bus *bus = t_bus_new(2);
    t_counter a, b;
    t_counter_init(&a);
    t_counter_init(&b);
    eb_subscription *sa = t_sub(bus, "x.*", t_count_handler, &a, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "x.*", t_count_handler, &b, EB_DELIVERY_SERIAL, 0);
    eb_publish_result r = t_pub_wait(bus, "x.y", NULL, 0);
    cr_assert_eq(r.matched, 2);
    cr_assert_eq(eb_unsubscribe(sa), EB_OK);
    r = t_pub_wait(bus, "x.y", NULL, 0);
    cr_assert_eq(r.matched, 1);
    cr_assert_eq(atomic_load(&a.calls), 1);
    cr_assert_eq(atomic_load(&b.calls), 2);
    eb_bus_destroy(bus);
}

Test(route, unsubscribe_removes_the_route)
{
    eb_bus *bus = t_bus_new(2);
    t_counter exact, wild;
    t_counter_init(&exact);
    t_counter_init(&wild);
    eb_subscription *se = t_sub(bus, "a.b", t_count_handler, &exact, EB_DELIVERY_SERIAL, 0);
    eb_subscription *sw = t_sub(bus, "a.#", t_count_handler, &wild, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(t_pub_wait(bus, "a.b", NULL, 0).matched, 2);
    cr_assert_eq(eb_unsubscribe(se), EB_OK);
    cr_assert_eq(t_pub_wait(bus, "a.b", NULL, 0).matched, 1);
    cr_assert_eq(eb_unsubscribe(sw), EB_OK);
    eb_publish_result r = t_pub_wait(bus, "a.b", NULL, 0);
    cr_assert_eq(r.matched, 0);
    cr_assert_eq(r.delivered, 0);
    cr_assert_eq(atomic_load(&exact.calls), 1);
    cr_assert_eq(atomic_load(&wild.calls), 2);
    /* Resubscribing the same pattern works again. */
    t_sub(bus, "a.b", t_count_handler, &exact, EB_DELIVERY_SERIAL, 0);
    cr_assert_eq(t_pub_wait(bus, "a.b", NULL, 0).matched, 1);
    cr_assert_eq(atomic_load(&exact.calls), 2);
    eb_bus_destroy(bus);
}

Test(route, many_patterns_route_like_one_at_a_time)
{
    /* All patterns subscribed at once: the routing table must give the same
       answer for each topic as the patterns one by one. */
    static const char *patterns[] = {"a",     "a.b",   "a.*", "a.#", "#", "*",   "*.b",  "#.b",
                                     "a.*.c", "a.#.c", "*.#", "#.*", "",  "b.#", "#.c.#"};
    static const char *topics[] = {"", "a", "b", "a.b", "a.c", "a.b.c", "b.b", "x.c.y", "a.x.y.c"};
    enum { NP = sizeof patterns / sizeof patterns[0], NT = sizeof topics / sizeof topics[0] };
    eb_bus *bus = t_bus_new(2);
    unsigned single[NT];
    for (int t = 0; t < NT; t++) {
        single[t] = 0;
        for (int p = 0; p < NP; p++) {
            single[t] += match_once(bus, patterns[p], topics[t]);
        }
    }
    t_counter c[NP];
    for (int p = 0; p < NP; p++) {
        t_counter_init(&c[p]);
        t_sub(bus, patterns[p], t_count_handler, &c[p], EB_DELIVERY_SERIAL, 0);
    }
    unsigned total = 0;
    for (int t = 0; t < NT; t++) {
        eb_publish_result r = t_pub_wait(bus, topics[t], NULL, 0);
        cr_assert_eq(r.matched, single[t], "topic \"%s\"", topics[t]);
        total += r.matched;
    }
    unsigned calls = 0;
    for (int p = 0; p < NP; p++) {
        calls += atomic_load(&c[p].calls);
    }
    cr_assert_eq(calls, total);
    /* Spot checks of the expected AMQP answers. */
    cr_assert_eq(single[0], 2, "\"\" is matched by \"#\" and \"\"");
    cr_assert_eq(single[1], 6, "\"a\": a, a.#, #, *, *.# and #.*");
    eb_bus_destroy(bus);
}

/* ---- reserved $ topics ---- */

static int fail_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    return EB_EIO;
}

/* Patterns, and whether each matches the dead-letter topic of
   orders.created. */
static const char *const dl_patterns[] = {"#",
                                          "*.orders.created",
                                          "#.created",
                                          "#.orders.created",
                                          "*.#",
                                          "$deadletter.#",
                                          "$deadletter.orders.created",
                                          "$deadletter.*.created",
                                          "$deadletter.*",
                                          "$other.#"};
static const unsigned dl_expect[] = {0, 0, 0, 0, 0, 1, 1, 1, 0, 0};
#define NP_DL (sizeof dl_patterns / sizeof dl_patterns[0])

Test(route, deadletter_topics_are_matched_only_by_patterns_that_spell_out_the_first_word)
{
    eb_bus *bus = t_bus_new(2);
    const char *const *patterns = dl_patterns;
    const unsigned *expect_dl = dl_expect;
    enum { NP = NP_DL };
    t_counter c[NP];
    for (int i = 0; i < NP; i++) {
        t_counter_init(&c[i]);
        t_sub(bus, patterns[i], t_count_handler, &c[i], EB_DELIVERY_SERIAL, 0);
    }
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 1;
    cr_assert_eq(eb_subscribe(bus, "orders.created", fail_handler, NULL, &o, NULL), EB_OK);

    eb_publish_result r = t_pub_wait(bus, "orders.created", NULL, 0);
    cr_assert_eq(r.failed, 1);
    /* The dead-letter event reached its literal subscribers ... */
    cr_assert(t_wait_ge(&c[5].calls, 1), "$deadletter.# never saw the dead letter");
    cr_assert(t_wait_ge(&c[6].calls, 1));
    cr_assert(t_wait_ge(&c[7].calls, 1));
    /* ... and was dispatched before this event, so every lane that could
       have received it has handled it once this returns. */
    t_pub_wait(bus, "sync", NULL, 0);
    for (int i = 0; i < NP; i++) {
        cr_assert_eq(atomic_load(&c[i].dollar_topics), expect_dl[i],
                     "pattern \"%s\" got %u $-topic events, expected %u", patterns[i],
                     atomic_load(&c[i].dollar_topics), expect_dl[i]);
    }
    /* The original event itself still went to the wildcard patterns. */
    cr_assert_eq(atomic_load(&c[0].calls), 2, "# saw orders.created and the sync event");
    cr_assert_eq(atomic_load(&c[2].calls), 1, "#.created saw orders.created");
    eb_bus_destroy(bus);
}

Test(route, topic_matches_keeps_the_dollar_rule_and_refuses_bad_arguments)
{
    for (size_t i = 0; i < NP_DL; i++)
        cr_assert_eq(eb_topic_matches(dl_patterns[i], "$deadletter.orders.created"),
                     (int)dl_expect[i], "pattern \"%s\"", dl_patterns[i]);
    cr_assert_eq(eb_topic_matches(NULL, "a"), EB_EINVAL);
    cr_assert_eq(eb_topic_matches("a", NULL), EB_EINVAL);
    char pat[EB_TOPIC_MAX + 2];
    memset(pat, 'p', EB_TOPIC_MAX + 1);
    pat[EB_TOPIC_MAX + 1] = '\0';
    cr_assert_eq(eb_topic_matches(pat, "p"), EB_EINVAL, "a pattern of EB_TOPIC_MAX + 1 bytes");
    pat[EB_TOPIC_MAX] = '\0';
    cr_assert_eq(eb_topic_matches(pat, pat), 1, "a pattern of EB_TOPIC_MAX bytes");
    /* A dead-letter topic may be 12 bytes longer than a published one. */
    char top[12 + EB_TOPIC_MAX + 2];
    memcpy(top, "$deadletter.", 12);
    memcpy(top + 12, pat, EB_TOPIC_MAX + 1); /* with its NUL */
    cr_assert_eq(eb_topic_matches("$deadletter.#", top), 1);
    top[12 + EB_TOPIC_MAX] = 'p';
    top[12 + EB_TOPIC_MAX + 1] = '\0';
    cr_assert_eq(eb_topic_matches("$deadletter.#", top), EB_EINVAL,
                 "a topic of EB_TOPIC_MAX + 13 bytes");
}

/* $deadletter.<topic> events come only from the bus (eb_event_deadletter_info
   describes them): publishing on the first word "$deadletter" is refused
   with EB_EINVAL by every publish call, and other '$' topics are allowed. */
Test(route, publishing_on_a_deadletter_topic_is_refused)
{
    eb_bus *bus = t_bus_new(1);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "$deadletter.#", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    static const char *const refused[] = {"$deadletter", "$deadletter.a", "$deadletter.a.b"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        const char *t = refused[i];
        cr_assert_eq(eb_publish(bus, t, "x", 1, NULL), EB_EINVAL, "%s", t);
        eb_publish_result r;
        cr_assert_eq(eb_publish_wait(bus, t, "x", 1, NULL, &r), EB_EINVAL, "%s", t);
        eb_ticket *tk = NULL;
        cr_assert_eq(eb_publish_async(bus, t, "x", 1, NULL, &tk), EB_EINVAL, "%s", t);
        cr_assert_null(tk);
        eb_message m[2] = {{.topic = "ok"}, {.topic = t}};
        size_t accepted = 77;
        cr_assert_eq(eb_publish_batch(bus, m, 2, NULL, &accepted), EB_EINVAL, "%s", t);
        cr_assert_eq(accepted, 77, "a refused batch wrote *accepted");
        eb_scope *sc = NULL;
        cr_assert_eq(eb_scope_begin(bus, &sc), EB_OK);
        cr_assert_eq(eb_scope_publish(sc, t, "x", 1, NULL, 0), EB_EINVAL, "%s", t);
        eb_scope_abort(sc);
    }
    /* Other '$' topics, and words that only begin like it, are the caller's. */
    eb_publish_result r = t_pub_wait(bus, "$deadletterx.a", NULL, 0);
    cr_assert_eq(r.matched, 0);
    r = t_pub_wait(bus, "$other.a", NULL, 0);
    cr_assert_eq(r.matched, 0);
    eb_bus_stats st;
    cr_assert_eq(eb_bus_stats_get(bus, &st), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&c.calls), 0);
    cr_assert_eq(st.published, 2);
}
