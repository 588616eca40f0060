/*
 * lane — allocation of subscriptions and lanes, and key-to-lane hashing.
 * The scheduling protocol itself lives in bus.c next to the dispatcher and
 * the workers that drive it; lane.h documents it.
 */
#include "lane.h"
#include "store_sqlite.h"

#include <stdlib.h>
#include <string.h>

struct eb_subscription *eb__sub_new(eb_bus *bus, const char *pattern, size_t pattern_len,
                                    eb_handler_fn fn, void *ctx, const eb_subscribe_options *o,
                                    unsigned nlanes, unsigned mailbox)
{
    const char *name = o->name ? o->name : pattern;
    size_t name_len = strlen(name);
    struct eb_subscription *s = calloc(1, sizeof(*s) + pattern_len + 1 + name_len + 1);
    if (s == NULL)
        return NULL;
    s->lanes = calloc(nlanes, sizeof(*s->lanes));
    if (s->lanes == NULL) {
        free(s);
        return NULL;
    }
    s->pattern = (char *)(s + 1);
    memcpy(s->pattern, pattern, pattern_len);
    s->pattern_len = pattern_len;
    s->name = s->pattern + pattern_len + 1;
    memcpy(s->name, name, name_len);
    s->named = o->name != NULL;
    s->bus = bus;
    s->fn = fn;
    s->ctx = ctx;
    s->delivery = o->delivery;
    s->overflow = o->overflow;
    s->max_attempts = o->max_attempts;
    s->backoff_initial_ns = o->backoff_initial_ns;
    s->backoff_max_ns = o->backoff_max_ns;
    s->nlanes = nlanes;
    atomic_init(&s->refs, 1);
    for (unsigned i = 0; i < nlanes; i++) {
        eb__lane *l = &s->lanes[i];
        if (eb__ring_init(&l->mbox, mailbox) != 0) {
            s->nlanes = i;
            eb__sub_free(s);
            return NULL;
        }
        l->sub = s;
        l->index = i;
        l->attempt = 1;
    }
    return s;
}

void eb__sub_free(struct eb_subscription *s)
{
    if (s->dsub != NULL)
        eb__dsub_close(s->dsub); /* the final checkpoint */
    for (unsigned i = 0; i < s->nlanes; i++)
        eb__ring_fini(&s->lanes[i].mbox);
    free(s->lanes);
    free(s);
}

unsigned eb__key_lane(const void *key, size_t len, unsigned nlanes)
{
    /* FNV-1a: cheap and spreads short keys well. No key: lane 0. */
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 32;
    return (unsigned)(h % nlanes);
}
