/*
 * event — the event object, its reference count, its completion tracking
 * (tickets) and the allocator that builds events without a malloc per publish.
 *
 * An event is built in one block: header, topic, key and (unless zero-copy)
 * payload. Blocks of three size classes come from a per-thread magazine
 * cache; whole magazines move between threads through a per-bus depot under a
 * mutex, so the lock is taken once per EB__MAG_SIZE events, not per event.
 */
#ifndef EB_EVENT_H
#define EB_EVENT_H

#include <eventbus/eventbus.h>

#include <pthread.h>
#include <stdatomic.h>

#include "sync.h"

#define EB__CLASSES 3
#define EB__MAG_SIZE 64

enum {
    EB__EV_ZERO_COPY = 1u << 0,  /* payload is the publisher's, freed by payload_free */
    EB__EV_HEAP = 1u << 1,       /* block is too big for a class: plain malloc/free */
    EB__EV_TRACKED = 1u << 2,    /* a waiter counts its deliveries (ticket) */
    EB__EV_CORR = 1u << 3,       /* has a correlation id */
    EB__EV_CAUS = 1u << 4,       /* has a causation id */
    EB__EV_DEADLETTER = 1u << 5, /* dl points at dead-letter details */
    EB__EV_LOGGED = 1u << 6,     /* in the store's log: id, ts and ext->log_seq are
                                    the logged ones, dispatch stamps only seq */
    EB__EV_REPLAY = 1u << 7,     /* a replayed copy for ext->target only */
    /* Same topic as the event before it in its carrier (eb_publish_batch):
       the dispatcher reuses that event's match set instead of routing. */
    EB__EV_SAME_TOPIC = 1u << 8
};

typedef struct eb__deadletter {
    eb_deadletter_info info; /* strings point into the same block */
} eb__deadletter;

/*
 * What only some events need: a zero-copy destructor, correlation and
 * causation ids, completion tracking for a waiter, dead-letter details.
 * It lives in the event's own block (no extra allocation) and is absent
 * from plain fire-and-forget events, whose header then stays within the
 * first 80 bytes with the topic right behind it: the dispatcher touches
 * two cache lines of an event it routes instead of four.
 */
typedef struct eb__event_ext {
    eb_free_fn payload_free;
    eb__deadletter *dl;
    uint8_t corr[16];
    uint8_t caus[16];
    /* Completion tracking, used only when EB__EV_TRACKED. */
    /* Deliveries not finished (low 32 bits) and delivered (high 32 bits),
       one word, so that a successful delivery finishes with one update of
       the line the waiter spins on. Not finished starts at 1, a guard until
       the dispatcher routed the event: the guard becomes the first
       delivery's count, or ends when nothing matched. */
    _Atomic uint64_t counts;
    atomic_uint failed;
    atomic_int first_error;
    atomic_bool deadlock;      /* a delivery landed on a lane its waiter blocks */
    atomic_bool waiter_worker; /* a worker waits: completion wakes the pool */
    uint32_t matched;          /* 1 from the publisher; the dispatcher writes
                                  another number of matches before any
                                  delivery (a single match writes nothing) */
    eb__ec done;               /* bumped when no delivery remains */
    /* Durable events: set by the store's writer before it hands the event
       to the intake (whose release publishes them). */
    uint64_t log_seq;               /* position in the store's log */
    struct eb_subscription *target; /* EB__EV_REPLAY: the only subscription */
} eb__event_ext;

struct eb_event {
    /* Written once by the publisher before the event is enqueued (the ring's
       release publishes them), read-only afterwards. */
    atomic_uint refs;
    uint16_t flags;
    uint8_t cls;
    uint16_t topic_len;
    uint16_t key_len; /* 0: no key; the key follows the topic's NUL */
    size_t payload_len;
    const void *payload;
    eb_bus *bus;
    eb__event_ext *ext; /* NULL unless the event needs it */

    /* Written by the dispatcher before the event is pushed into any lane
       mailbox (the mailbox ring's release publishes them). */
    uint64_t seq;
    int64_t ts_ns;
    uint8_t id[16];

    char topic[]; /* topic_len bytes and a NUL, then the key */
};

static inline const void *eb__event_key(const eb_event *ev)
{
    return ev->key_len > 0 ? ev->topic + ev->topic_len + 1 : NULL;
}

/* Per-bus store of full and empty magazines. */
typedef struct eb__mag eb__mag;
typedef struct eb__depot {
    pthread_mutex_t lock;
    eb__mag *full[EB__CLASSES]; /* protected by lock */
    eb__mag *empty;             /* protected by lock */
} eb__depot;

/* prefill: class-0 blocks to allocate up front (rounded up to magazines);
   spare_mags: empty magazines to allocate up front. */
int eb__depot_init(eb__depot *d, unsigned prefill, unsigned spare_mags);
void eb__depot_fini(eb__depot *d);
/* Returns this thread's cached blocks and magazines to d (worker exit). */
void eb__tcache_flush(eb__depot *d);

/*
 * Allocates an event with room for topic, key, the extension (when with_ext;
 * zeroed), `extra` bytes and (when copy is true) the payload, and fills those.
 * refs = 1. NULL when out of memory.
 */
eb_event *eb__event_new(eb_bus *bus, eb__depot *d, const char *topic, size_t topic_len,
                        const void *key, size_t key_len, const void *payload, size_t len, bool copy,
                        bool with_ext, size_t extra);
/* Where `extra` bytes requested from eb__event_new start (16-byte aligned). */
void *eb__event_extra(eb_event *ev);
/* Drops one reference; the last frees the event (payload_free first). */
void eb__event_unref(eb_event *ev, eb__depot *d);

static inline void eb__event_ref(eb_event *ev, unsigned n)
{
    /* Relaxed: the caller already holds a reference, which keeps the event
       alive; the new references are handed over through rings/locks that
       order them (ck_pr fences, mutex). */
    atomic_fetch_add_explicit(&ev->refs, n, memory_order_relaxed);
}

/* Fills id from the dispatch time and sequence: UUIDv7, 48-bit Unix ms,
   version 7, then 26 bits of bus nonce and the 48 low bits of seq. */
void eb__event_stamp(eb_event *ev, uint64_t seq, int64_t now_ns, uint64_t nonce);

/*
 * A carrier takes up to EB__CARRIER_MAX events of one eb_publish_batch call
 * through the intake ring as one entry. On the ring it is tagged by bit 0
 * (events are at least 16-byte aligned, so their bit 0 is clear).
 */
#define EB__CARRIER_MAX 48
typedef struct eb__carrier {
    unsigned n;
    eb_event *ev[EB__CARRIER_MAX];
} eb__carrier;
#define EB__CARRIER_TAG(c) ((void *)((uintptr_t)(c) | 1u))
#define EB__IS_CARRIER(p) (((uintptr_t)(p)&1u) != 0)
#define EB__CARRIER_UNTAG(p) ((eb__carrier *)((uintptr_t)(p) & ~(uintptr_t)1u))
eb__carrier *eb__carrier_new(eb__depot *d);
void eb__carrier_free(eb__depot *d, eb__carrier *c);

/* Tracking. eb__event_finish records one finished delivery (rc: EB_OK or the
   failure code; count false for the guard of an event that matched nothing,
   or one never dispatched)
   and returns true when it was the last. */
void eb__event_track_init(eb_event *ev);
bool eb__event_finish(eb_event *ev, int rc, bool count);
bool eb__event_done(const eb_event *ev);
void eb__event_result(const eb_event *ev, eb_publish_result *out);

#endif /* EB_EVENT_H */
