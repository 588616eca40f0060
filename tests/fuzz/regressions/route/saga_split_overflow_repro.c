/*
 * Repro for regressions/route/saga-split-words-overflow (found by fuzz_route).
 *
 * saga.c's split_words() fills a word[129] array, assuming a topic of at
 * most 255 bytes has at most 128 words; but "." alone has two words, and a
 * topic of n dots has n + 1. A saga filters every event its subscription
 * receives with eb__topic_match(), so publishing a 129-dot topic writes past
 * the stack array of a worker thread (ASan: stack-buffer-overflow in
 * split_words; without ASan, silent stack corruption).
 *
 * Build with ASan (from the repo root):
 *   cc -std=c11 -fsanitize=address -Iinclude \
 *      tests/fuzz/regressions/route/saga_split_overflow_repro.c \
 *      -Lbuild-asan -leventbus -o /tmp/repro && LD_LIBRARY_PATH=build-asan /tmp/repro
 */
#include <eventbus/eventbus.h>

#include <stdio.h>
#include <string.h>

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
    const char *topics[] = {"#"};
    eb_saga_def def = {.name = "s",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .state_size = 8,
                       .transition = transition};
    eb_saga *saga;
    if (eb_saga_register(bus, &def, NULL, &saga) != EB_OK)
        return 2;
    char topic[130];
    memset(topic, '.', 129); /* 129 bytes, 130 (empty) words */
    topic[129] = '\0';
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.key = "k";
    o.key_len = 1;
    int rc = eb_publish_wait(bus, topic, NULL, 0, &o, NULL);
    printf("publish_wait: %s\n", eb_err_name(rc));
    eb_saga_unregister(saga);
    eb_bus_destroy(bus);
    return 0;
}
