/*
 * route — topic routing table (AMQP 0-9-1 topic exchange semantics).
 *
 * Owned by whoever holds the dispatch token: every function here is called by
 * one thread at a time and the table needs no locks or reclamation of its own
 * (bus.c applies subscribe/unsubscribe through the dispatcher).
 */
#ifndef EB_ROUTE_H
#define EB_ROUTE_H

#include <stddef.h>
#include <stdint.h>

typedef struct eb__route eb__route;

/*
 * The subscriptions one topic matched. Immutable once built. pins counts the
 * users beyond the cache (the dispatcher pins the set of an event it could not
 * finish dispatching); a set dropped from the cache is freed when unpinned.
 */
typedef struct eb__match {
    unsigned pins;   /* protected by the dispatch token */
    unsigned cached; /* 1 while the cache references it */
    unsigned n;
    void *subs[];
} eb__match;

eb__route *eb__route_new(void);
void eb__route_free(eb__route *r);

/* Adds sub under pattern (validated by the caller). Returns 0, or -1 when out
   of memory (the table is unchanged). */
int eb__route_add(eb__route *r, const char *pattern, size_t len, void *sub);
/* Removes sub from pattern; a pattern/sub pair that is absent is ignored. */
void eb__route_remove(eb__route *r, const char *pattern, size_t len, void *sub);

/* Subscriptions matching topic, each once; NULL when out of memory. The set is
   valid until the next add/remove/match unless pinned. */
eb__match *eb__route_match(eb__route *r, const char *topic, size_t len);
void eb__match_pin(eb__match *m);
void eb__match_unpin(eb__match *m);

/* True if the pattern contains '*' or '#' words. */
int eb__pattern_is_wild(const char *pattern, size_t len);

#endif /* EB_ROUTE_H */
