/*
 * route — topic routing table (AMQP 0-9-1 topic exchange semantics).
 *
 * Owned by whoever holds the dispatch token: every function here is called by
 * one thread at a time and the table needs no locks or reclamation of its own
 * (bus.c applies subscribe/unsubscribe through the dispatcher).
 */
#ifndef EB_ROUTE_H
#define EB_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct eb__route eb__route;

/*
 * The subscriptions one topic matched. Immutable once built. A set is either
 * cached (owned by the cache until it is dropped), or the route's scratch set
 * (reused by the next match: valid only until then). pins counts the users
 * that keep a set beyond that (the dispatcher keeps the set of an event it
 * could not finish dispatching); a kept set is freed at its last unpin once
 * the cache let go of it.
 */
typedef struct eb__match {
    unsigned pins; /* protected by the dispatch token */
    bool cached;   /* the cache references it */
    bool scratch;  /* it is the route's scratch set */
    bool own_subs; /* subs is a separate allocation */
    unsigned n;
    void **subs;
} eb__match;

eb__route *eb__route_new(void);
void eb__route_free(eb__route *r);

/* Adds sub under pattern (validated by the caller). Returns 0, or -1 when out
   of memory (the table is unchanged). */
int eb__route_add(eb__route *r, const char *pattern, size_t len, void *sub);
/* Removes sub from pattern; a pattern/sub pair that is absent is ignored. */
void eb__route_remove(eb__route *r, const char *pattern, size_t len, void *sub);

/* Subscriptions matching topic, each once; NULL when out of memory. The set is
   valid until the next add/remove/match unless kept. No allocation once the
   topic is cached, or once the cache is full (then the scratch set serves). */
eb__match *eb__route_match(eb__route *r, const char *topic, size_t len);
/* A set of just sub (none if sub is NULL), valid as a match result. */
eb__match *eb__route_only(eb__route *r, void *sub);
/* Keeps m valid past the next match (never fails: a scratch set is handed
   over, not copied). Returns m. */
eb__match *eb__match_keep(eb__route *r, eb__match *m);
void eb__match_unpin(eb__match *m);

/* Matches one topic against one pattern (the table's rules, without the
   table): for filters outside the dispatcher, e.g. log replay. */
bool eb__topic_matches(const char *pattern, size_t plen, const char *topic, size_t tlen);

/* The first word of the bus's own dead-letter topics ($deadletter.<topic>). */
#define EB__DL_WORD "$deadletter"
#define EB__DL_WORD_LEN (sizeof(EB__DL_WORD) - 1)

/* Whether topic's first word is EB__DL_WORD: the bus's own dead letters,
   which no caller may publish (EB_EINVAL). */
static inline bool eb__topic_is_deadletter(const char *topic, size_t len)
{
    return len >= EB__DL_WORD_LEN && topic[0] == '$' &&
           memcmp(topic, EB__DL_WORD, EB__DL_WORD_LEN) == 0 &&
           (len == EB__DL_WORD_LEN || topic[EB__DL_WORD_LEN] == '.');
}

/* True if the pattern contains '*' or '#' words. */
int eb__pattern_is_wild(const char *pattern, size_t len);

#endif /* EB_ROUTE_H */
