/*
 * The routing table from the inside (src/route.h): the per-topic cache, the
 * scratch set that serves once the cache is full, and sets kept across
 * matches (what the dispatcher does with an event stalled on a full mailbox).
 */
#include "common.h"
#include "route.h"

TestSuite(route_table, .timeout = EB_CRITERION_TIMEOUT);

static int tag[4];

static bool has(const eb__match *m, void *sub)
{
    for (unsigned i = 0; i < m->n; i++)
        if (m->subs[i] == sub)
            return true;
    return false;
}

Test(route_table, a_topic_is_matched_from_the_cache_the_second_time)
{
    eb__route *r = eb__route_new();
    cr_assert_not_null(r);
    cr_assert_eq(eb__route_add(r, "a.*", 3, &tag[0]), 0);
    eb__match *m1 = eb__route_match(r, "a.b", 3);
    cr_assert(m1 != NULL && m1->cached && m1->n == 1 && has(m1, &tag[0]));
    eb__match *m2 = eb__route_match(r, "a.b", 3);
    cr_assert_eq(m1, m2, "the second match is the cached set");
    eb__route_free(r);
}

Test(route_table, a_full_cache_serves_new_topics_from_the_scratch_set)
{
    eb__route *r = eb__route_new();
    cr_assert_eq(eb__route_add(r, "t.#", 3, &tag[0]), 0);
    cr_assert_eq(eb__route_add(r, "t.*.odd", 7, &tag[1]), 0);
    char topic[32];
    eb__match *m = NULL;
    /* 65536 topics fill the cache; the ones after it are not cached. */
    for (unsigned i = 0; i < 65536 + 100; i++) {
        int n = snprintf(topic, sizeof topic, "t.%u.%s", i, i % 2 ? "odd" : "even");
        m = eb__route_match(r, topic, (size_t)n);
        cr_assert_not_null(m);
        cr_assert_eq(m->n, i % 2 ? 2u : 1u, "topic %s matched %u", topic, m->n);
        if (i >= 65536)
            cr_assert(m->scratch && !m->cached, "topic %u should not be cached", i);
    }
    /* Subscribing drops the cache: topics are cached again. */
    cr_assert_eq(eb__route_add(r, "x", 1, &tag[2]), 0);
    m = eb__route_match(r, "t.1.odd", 7);
    cr_assert(m->cached && m->n == 2);
    eb__route_free(r);
}

Test(route_table, a_kept_scratch_set_survives_later_matches)
{
    eb__route *r = eb__route_new();
    cr_assert_eq(eb__route_add(r, "k.#", 3, &tag[0]), 0);
    cr_assert_eq(eb__route_add(r, "k.one", 5, &tag[1]), 0);
    char topic[32];
    for (unsigned i = 0; i < 65536; i++) {
        int n = snprintf(topic, sizeof topic, "fill.%u", i);
        cr_assert_not_null(eb__route_match(r, topic, (size_t)n));
    }
    eb__match *m = eb__route_match(r, "k.one", 5);
    cr_assert(m->scratch);
    eb__match *kept = eb__match_keep(r, m);
    cr_assert(!kept->scratch && kept->pins == 1);
    /* The route builds a new scratch set for the next uncached topics. */
    eb__match *other = eb__route_match(r, "k.two", 5);
    cr_assert_neq(other, kept);
    cr_assert_eq(other->n, 1);
    cr_assert(kept->n == 2 && has(kept, &tag[0]) && has(kept, &tag[1]));
    eb__match_unpin(kept);
    eb__route_free(r);
}

Test(route_table, a_kept_cached_set_outlives_a_cache_drop)
{
    eb__route *r = eb__route_new();
    cr_assert_eq(eb__route_add(r, "c.*", 3, &tag[0]), 0);
    eb__match *m = eb__match_keep(r, eb__route_match(r, "c.d", 3));
    cr_assert(m->cached);
    eb__route_remove(r, "c.*", 3, &tag[0]); /* drops the cache */
    cr_assert(!m->cached);
    cr_assert(m->n == 1 && has(m, &tag[0]), "a kept set is immutable");
    eb__match_unpin(m); /* frees it (ASan checks) */
    cr_assert_eq(eb__route_match(r, "c.d", 3)->n, 0);
    eb__route_free(r);
}

/* The last topic's set is reused for the same topic again (a compare, no
   hash): topics of one length must still get their own sets, and a route
   change must not leave the reused set stale. */
Test(route_table, topics_of_one_length_in_turn_get_their_own_sets)
{
    eb__route *r = eb__route_new();
    cr_assert_eq(eb__route_add(r, "a.b", 3, &tag[0]), 0);
    cr_assert_eq(eb__route_add(r, "a.c", 3, &tag[1]), 0);
    for (int i = 0; i < 4; i++) {
        eb__match *b = eb__route_match(r, "a.b", 3);
        cr_assert(b->n == 1 && has(b, &tag[0]));
        eb__match *b2 = eb__route_match(r, "a.b", 3);
        cr_assert_eq(b2, b);
        eb__match *c = eb__route_match(r, "a.c", 3);
        cr_assert(c->n == 1 && has(c, &tag[1]));
        cr_assert_eq(eb__route_match(r, "a.bc", 4)->n, 0, "a longer topic is another topic");
    }
    eb__route_free(r);
}

Test(route_table, the_same_topic_again_after_a_route_change_gets_the_new_set)
{
    eb__route *r = eb__route_new();
    cr_assert_eq(eb__route_add(r, "a.b", 3, &tag[0]), 0);
    cr_assert_eq(eb__route_match(r, "a.b", 3)->n, 1);
    cr_assert_eq(eb__route_add(r, "a.#", 3, &tag[1]), 0); /* drops the cache */
    eb__match *m = eb__route_match(r, "a.b", 3);
    cr_assert(m->n == 2 && has(m, &tag[0]) && has(m, &tag[1]));
    eb__route_remove(r, "a.b", 3, &tag[0]);
    m = eb__route_match(r, "a.b", 3);
    cr_assert(m->n == 1 && has(m, &tag[1]), "a removed subscription is still matched");
    eb__route_free(r);
}
