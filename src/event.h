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

/* Size classes of blocks: events use the first EB__EV_CLASSES, carriers
   (eb_publish_batch) any; the last one only carriers. */
#define EB__EV_CLASSES 3
#define EB__CLASSES 4
#define EB__MAG_SIZE 64
#define EB__BIG_MAG 16 /* the magazines' size for the last (carrier) class */

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
    EB__EV_SAME_TOPIC = 1u << 8,
    /* Built inside its carrier's block (eb_publish_batch): its references
       are the carrier's (eb__carrier.refs), its block is the carrier's. */
    EB__EV_INLINE = 1u << 9,
    /* Its sequence, time and id are its carrier's (seq0 + idx, ts_ns,
       nonce), stamped once for the whole carrier: the dispatcher then
       writes nothing into the event's own lines. Only for EB__EV_INLINE
       events that reach the dispatcher in their carrier. */
    EB__EV_PACKED = 1u << 10
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
    atomic_uint refs; /* unused by EB__EV_INLINE events: see eb__carrier */
    uint16_t flags;
    uint8_t cls;
    uint8_t idx; /* EB__EV_INLINE: its index in the carrier */
    uint16_t topic_len;
    uint16_t key_len; /* 0: no key; the key follows the topic's NUL */
    uint32_t off;     /* EB__EV_INLINE: bytes from the carrier's start */
    size_t payload_len;
    const void *payload;
    eb_bus *bus;
    eb__event_ext *ext; /* NULL unless the event needs it */

    /* Written by the dispatcher before the event is pushed into any lane
       mailbox (the mailbox ring's release publishes them); not for
       EB__EV_PACKED events, whose carrier holds them. Read them with
       eb__event_seq, eb__event_ts and eb__event_id. */
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
/* Adds about `blocks` blocks of class cls to d (fewer when out of memory). */
void eb__depot_prefill(eb__depot *d, int cls, unsigned blocks);
/* Returns this thread's cached blocks and magazines to d (worker exit). */
void eb__tcache_flush(eb__depot *d);

typedef struct eb__carrier eb__carrier;

/*
 * Allocates an event with room for topic, key, the extension (when with_ext;
 * zeroed), `extra` bytes and (when copy is true) the payload, and fills those.
 * refs = 1. NULL when out of memory. With `in` (a carrier its caller is
 * filling, not yet published) a copied event that fits the carrier's free
 * room is built there (EB__EV_INLINE | EB__EV_PACKED, at index in->n) and
 * counted in in->inl; the caller then counts them in the carrier's
 * references with eb__carrier_seal before anyone may drop one.
 */
eb_event *eb__event_new(eb_bus *bus, eb__depot *d, eb__carrier *in, const char *topic,
                        size_t topic_len, const void *key, size_t key_len, const void *payload,
                        size_t len, bool copy, bool with_ext, size_t extra);
/* Builds in carrier `in`, as eb__event_new does, a keyless event without
   extension whose header is a copy of tmpl's (the header of such an event
   built inline before, kept by the caller) but for its index and payload,
   with topic (tmpl->topic_len bytes and a NUL) and a copy of the payload.
   NULL when it does not fit in the carrier. */
eb_event *eb__event_repeat(eb__carrier *in, const eb_event *tmpl, const char *topic,
                           const void *payload, size_t len);
/* Where `extra` bytes requested from eb__event_new start (16-byte aligned). */
void *eb__event_extra(eb_event *ev);
/* Drops one reference; the last frees the event (payload_free first). */
void eb__event_unref(eb_event *ev, eb__depot *d);

/* Fills id from the dispatch time and sequence: UUIDv7, 48-bit Unix ms,
   version 7, then 26 bits of bus nonce and the 48 low bits of seq. */
void eb__event_stamp(eb_event *ev, uint64_t seq, int64_t now_ns, uint64_t nonce);

/*
 * A carrier takes up to EB__CARRIER_MAX events of one eb_publish_batch call
 * through the intake ring as one entry. On the ring it is tagged by bit 0
 * (events are at least 16-byte aligned, so their bit 0 is clear).
 *
 * Its block, of the smallest size class that holds the header and the
 * events the publisher means to put in it (at most EB__CARRIER_BLOCK bytes),
 * also holds the events that fit, back to back (EB__EV_INLINE): the
 * publisher writes
 * them in one sweep and the workers read them in one, where events in
 * blocks of their own lie wherever the thread caches handed those out.
 * Inline events share the carrier's reference count: one for the carrier
 * itself until the dispatcher has unpacked it (or the publisher has given
 * up on it), plus every reference to any of its inline events; the block
 * goes back to the cache when the count reaches 0. So a retained inline
 * event keeps its whole carrier's block. Events that do not fit, zero-copy
 * ones and the events of delayed or durable batches get blocks of their own.
 *
 * The dispatcher stamps a carrier once (seq0, ts_ns, nonce) for all its
 * EB__EV_PACKED events: the event at index i has sequence seq0 + i.
 */
#define EB__CARRIER_MAX 48
#define EB__CARRIER_BLOCK 12288
#define EB__CARRIER_HEAD 448 /* the header, rounded up to whole cache lines */
struct eb__carrier {
    /* Written by the publisher before the carrier is pushed on the intake
       (the ring's release publishes them), read-only afterwards. */
    unsigned n;    /* events in ev[] */
    unsigned inl;  /* of them inline */
    size_t used;   /* bytes of the block taken (header and inline events) */
    uint8_t cls;   /* the block's size class */
    bool keyed;    /* some event has a key */
    uint64_t same; /* bit i: ev[i] has EB__EV_SAME_TOPIC */
    /* Written by the dispatcher when it unpacks the carrier, before any of
       its events is pushed into a mailbox. */
    uint64_t seq0;
    int64_t ts_ns;
    uint64_t nonce;
    atomic_uint refs;
    eb_event *ev[EB__CARRIER_MAX];
};
#define EB__CARRIER_TAG(c) ((void *)((uintptr_t)(c) | 1u))
#define EB__IS_CARRIER(p) (((uintptr_t)(p)&1u) != 0)
#define EB__CARRIER_UNTAG(p) ((eb__carrier *)((uintptr_t)(p) & ~(uintptr_t)1u))
/* The bytes an event takes in a carrier (eb__event_new with copy and no
   extra). */
size_t eb__event_size(size_t topic_len, size_t key_len, size_t len, bool with_ext);
/* A carrier with no events and one reference (the caller's), in a block of
   at least `want` bytes (EB__CARRIER_HEAD: room for the header only) or the
   largest class. */
eb__carrier *eb__carrier_new(eb__depot *d, size_t want);
/* Counts the inline events built so far in the references (then 1 + inl):
   call once, after the last eb__event_new into c and before c or any of its
   events is handed to anyone or released. */
void eb__carrier_seal(eb__carrier *c);
/* Drops n references (d may be NULL: see eb__event_unref). */
void eb__carrier_unref(eb__depot *d, eb__carrier *c, unsigned n);
/* Drops the carrier's own reference. */
static inline void eb__carrier_put(eb__depot *d, eb__carrier *c)
{
    eb__carrier_unref(d, c, 1);
}

static inline eb__carrier *eb__event_carrier(const eb_event *ev)
{
    return (eb__carrier *)((char *)ev - ev->off);
}

static inline void eb__event_ref(eb_event *ev, unsigned n)
{
    /* Relaxed: the caller already holds a reference, which keeps the event
       alive; the new references are handed over through rings/locks that
       order them (ck_pr fences, mutex). */
    atomic_uint *r = (ev->flags & EB__EV_INLINE) ? &eb__event_carrier(ev)->refs : &ev->refs;
    atomic_fetch_add_explicit(r, n, memory_order_relaxed);
}

/* The sequence, timestamp and id the dispatcher gave ev (its own, or its
   carrier's for an EB__EV_PACKED event). */
static inline uint64_t eb__event_seq(const eb_event *ev)
{
    return (ev->flags & EB__EV_PACKED) ? eb__event_carrier(ev)->seq0 + ev->idx : ev->seq;
}
static inline int64_t eb__event_ts(const eb_event *ev)
{
    return (ev->flags & EB__EV_PACKED) ? eb__event_carrier(ev)->ts_ns : ev->ts_ns;
}
void eb__event_id(const eb_event *ev, uint8_t id[16]);

/* Tracking. eb__event_finish records one finished delivery (rc: EB_OK or the
   failure code; count false for the guard of an event that matched nothing,
   or one never dispatched)
   and returns true when it was the last. */
void eb__event_track_init(eb_event *ev);
bool eb__event_finish(eb_event *ev, int rc, bool count);
bool eb__event_done(const eb_event *ev);
void eb__event_result(const eb_event *ev, eb_publish_result *out);

#endif /* EB_EVENT_H */
