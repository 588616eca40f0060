/*
 * Repro for regressions/route/cover-misses-dollar-topic (found by fuzz_route).
 *
 * A saga reacting to "$x.a" and "y" subscribes the covering pattern "#"
 * (eb__cover_pattern: no common literal word), and "#" never matches a
 * topic whose first word begins with '$'. So the saga never sees "$x.a":
 * the event is routed to no subscription at all. eb_aggregate_register has
 * the same problem for command topics like {"$cmd.a", "b"}.
 *
 * Build (from the repo root, against any build of the library):
 *   cc -std=c11 -Iinclude tests/fuzz/regressions/route/cover_dollar_repro.c \
 *      -Lbuild -leventbus -o /tmp/repro && LD_LIBRARY_PATH=build /tmp/repro
 * Prints "matched 0" and exits 1 while the bug is there; exits 0 once the
 * saga is either refused at registration or receives the event.
 */
#include <eventbus/eventbus.h>

#include <stdio.h>

static int transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)sc, (void)ev, (void)state, (void)ctx;
    return 0;
}

int main(void)
{
    eb_bus *bus;
    if (eb_bus_create(NULL, &bus) != EB_OK)
        return 2;
    const char *topics[] = {"$x.a", "y"};
    eb_saga_def def = {.name = "s",
                       .topics = topics,
                       .n_topics = 2,
                       .start_topics = topics,
                       .n_start_topics = 2,
                       .state_size = 8,
                       .transition = transition};
    eb_saga *saga;
    int rc = eb_saga_register(bus, &def, NULL, &saga);
    if (rc != EB_OK) { /* refusing such a saga is a fix too */
        printf("eb_saga_register: %s\n", eb_err_name(rc));
        eb_bus_destroy(bus);
        return 0;
    }
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.key = "k";
    o.key_len = 1;
    eb_publish_result res;
    rc = eb_publish_wait(bus, "$x.a", NULL, 0, &o, &res);
    printf("publish %s, matched %u\n", eb_err_name(rc), res.matched);
    eb_saga_unregister(saga);
    eb_bus_destroy(bus);
    return rc == EB_OK && res.matched == 1 ? 0 : 1;
}
