/*
 * eventbus — a concurrent in-process event bus for C programs.
 *
 * Publishers hand events to a bounded lock-free intake ring; a pool of worker
 * threads dispatches each event to every subscription whose pattern matches
 * its topic, and runs the handlers concurrently with one another.
 *
 * Guarantees
 *  - Delivery: every event accepted by a publish call (EB_OK) is delivered to
 *    every subscription that matched it when it was dispatched, unless that
 *    subscription chose to drop on overflow (counted) or was unsubscribed
 *    first. A failing handler is retried with exponential backoff and jitter
 *    up to its max_attempts, then dead-lettered. eb_bus_destroy delivers
 *    everything accepted before it returns; eb_bus_shutdown does too, or
 *    reports at its deadline which handlers are still running.
 *  - Ordering: events are dispatched one at a time in intake-ring order and
 *    stamped with a bus-wide sequence number. Every lane sees events in that
 *    order, so all SERIAL observers see the same relative order, and events
 *    published by one thread arrive in the order that thread published them
 *    (delayed ones when they fall due: those due at one time, such as one
 *    at_ns, in the order published, unless the system clock is set between
 *    the calls). SERIAL: one delivery at a time, in order. KEYED: in order per
 * key, concurrent across keys. CONCURRENT: no order, as parallel as the pool. A lane retrying a
 * delivery holds back the later events of that lane.
 *  - Progress: a full lane mailbox pauses dispatch (backpressure) until the
 *    lane drains; a full intake ring blocks publishers, or returns EB_EAGAIN /
 *    EB_ETIMEDOUT when they asked not to wait. A handler that waits (nested
 *    publish-and-wait, ticket wait, unsubscribe) keeps its worker running
 *    other work (up to 64 waits nested on one worker; deeper, it only
 *    waits); a wait that could only finish after the caller's own lane
 *    runs returns EB_EDEADLK instead of hanging. So does one wait of a
 *    cycle of handlers on different workers, each waiting for an event
 *    that the next one's waiting handler holds up (queued on its lane or
 *    being handled by it), within about 5 ms: the wait whose timeout is
 *    nearest (the lowest worker among equal ones), after which the others
 *    finish. Not found: a cycle that runs through a mailbox dropping its
 *    oldest events, through dispatch held up by a full mailbox, or
 *    through an unsubscribe (a handler unsubscribing one whose handler
 *    waits for it); those wait until their timeouts (unsubscribe has
 *    none). A publish from a handler
 *    never waits for its own lane: when the intake is full and dispatch is
 *    held up by that lane, the event goes to an overflow list the dispatcher
 *    drains in order (the only case where the intake bound is exceeded; it
 *    is bounded by what handlers publish). An idle bus uses no CPU.
 *  - Threads: every function is thread-safe unless its comment says
 *    otherwise. Handlers run on the bus's worker threads and may publish,
 *    subscribe and unsubscribe; they must not destroy their own bus.
 *
 * Conventions: every fallible call returns EB_OK (0) or a negative EB_E*
 * code and leaves its out-parameters untouched on failure. Option structs
 * are filled with their _init() function; zero fields mean "default" unless
 * the field says otherwise; NULL options mean all defaults. Copyright and
 * license: see the LICENSE file of the distribution.
 */
#ifndef EVENTBUS_EVENTBUS_H
#define EVENTBUS_EVENTBUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(EB_STATIC)
#define EB_API
#elif defined(__GNUC__)
#define EB_API __attribute__((visibility("default")))
#else
#define EB_API
#endif

#define EB_VERSION_MAJOR 0
#define EB_VERSION_MINOR 1
#define EB_VERSION_PATCH 0

/* Returns the library version as "MAJOR.MINOR.PATCH" (static storage).
   Thread-safe: yes. */
EB_API const char *eb_version(void);

/* ---------------------------------------------------------------------- */
/* Errors                                                                  */
/* ---------------------------------------------------------------------- */

/*
 * X(name, value, message). Every code a function of this library returns is
 * in this table; eb_strerror and eb_err_name are generated from it.
 */
#define EB_ERRNO_MAP(X)                                                                            \
    X(EB_OK, 0, "success")                                                                         \
    X(EB_EINVAL, -1, "invalid argument")                                                           \
    X(EB_ENOMEM, -2, "out of memory")                                                              \
    X(EB_EAGAIN, -3, "intake ring full and the caller asked not to wait")                          \
    X(EB_ETIMEDOUT, -4, "timed out")                                                               \
    X(EB_ECLOSED, -5, "bus is shutting down")                                                      \
    X(EB_EDEADLK, -6, "wait would deadlock: it needs the caller's own lane, or a wait cycle")      \
    X(EB_ENOENT, -7, "no such entry")                                                              \
    X(EB_EIO, -8, "input/output error")                                                            \
    X(EB_ECORRUPT, -9, "data is corrupt or not ours")                                              \
    X(EB_ECANCELED, -10, "subscription was cancelled before delivery")                             \
    X(EB_EOVERFLOW, -11, "dropped: subscription mailbox was full")                                 \
    X(EB_EEXIST, -12, "already exists")                                                            \
    X(EB_ENOTSUP, -13, "not supported")                                                            \
    X(EB_EBUSY, -14, "resource busy")                                                              \
    X(EB_EHANDLER, -15, "handler failed")                                                          \
    X(EB_ECONFLICT, -16, "stale version: the stored state changed since it was loaded")

enum eb_errno {
#define EB__ERR_ENUM(name, value, msg) name = value,
    EB_ERRNO_MAP(EB__ERR_ENUM)
#undef EB__ERR_ENUM
};

/* Message for a code; never NULL, for any int ("unknown error"); static
   storage. Thread-safe: yes. */
EB_API const char *eb_strerror(int code);
/* Symbolic name of a code ("EB_EINVAL"); never NULL ("EB_UNKNOWN"); static
   storage. Thread-safe: yes. */
EB_API const char *eb_err_name(int code);

/* ---------------------------------------------------------------------- */
/* Handles                                                                 */
/* ---------------------------------------------------------------------- */

typedef struct eb_bus eb_bus;
typedef struct eb_event eb_event;
typedef struct eb_subscription eb_subscription;
typedef struct eb_ticket eb_ticket;
typedef struct eb_store eb_store; /* durable store: <eventbus/store.h> */

/* Longest topic or pattern, in bytes, not counting the terminating NUL,
   that a caller may publish or subscribe. The bus's own dead-letter topics
   ($deadletter.<topic>) are up to 12 bytes longer: a handler copying
   eb_event_topic needs EB_TOPIC_MAX + 13 bytes for them. */
#define EB_TOPIC_MAX 255

/* ---------------------------------------------------------------------- */
/* Bus                                                                     */
/* ---------------------------------------------------------------------- */

typedef enum eb_log_level { EB_LOG_DEBUG = 0, EB_LOG_INFO, EB_LOG_WARN, EB_LOG_ERROR } eb_log_level;

/* Log sink. Called from any thread of the bus, never under a lock of ours. */
typedef void (*eb_log_fn)(eb_log_level level, const char *msg, void *ctx);

/* What a dead-lettered delivery was. Valid during the callback only. */
typedef struct eb_deadletter_info {
    const char *subscription; /* the subscription's name, or its pattern */
    const char *topic;        /* the original topic */
    int error;                /* the handler's last return value (< 0) */
    unsigned attempts;        /* how many times the handler was called */
    uint64_t seq;             /* the original event's sequence number */
} eb_deadletter_info;

/*
 * Called on a worker thread for each delivery that failed its last attempt
 * (or whose retries an unsubscribe cut short), with the original event,
 * before the $deadletter.<topic> event is published. Not for a failed
 * delivery of a $deadletter.<topic> event itself: that is not dead-lettered
 * again. Must not block for long; may publish.
 */
typedef void (*eb_deadletter_fn)(const eb_event *ev, const eb_deadletter_info *info, void *ctx);

typedef struct eb_bus_config {
    unsigned workers;         /* 0: one per online CPU; at most 256 */
    unsigned intake_capacity; /* entries; 0: 4095; at most 2^24 - 1. Rounded
                                 up to the next 2^k - 1 (Concurrency Kit's
                                 ring keeps one slot of 2^k free), so the
                                 ring holds at least this many;
                                 eb_bus_stats_get reports the result */
    eb_log_fn log;            /* NULL: no logging */
    void *log_ctx;
    eb_log_level log_level;         /* lowest level passed to log; default WARN
                                       (eb_bus_config_init; a zeroed field is
                                       EB_LOG_DEBUG) */
    eb_deadletter_fn on_deadletter; /* NULL: none */
    void *deadletter_ctx;
    unsigned mailbox_capacity; /* default per-lane mailbox, events; 0: 255;
                                  rounded up to 2^k - 1 like intake_capacity;
                                  at most 2^20 - 1 */
    eb_store *store;           /* NULL: memory only. Else the durable store
                                  (eb_store_open) for durable publishes,
                                  durable subscriptions, scheduled events and
                                  dead letters; not owned, must outlive the
                                  bus; one bus per store at a time */
} eb_bus_config;

/* Fills cfg with the defaults. Thread-safe: yes. */
EB_API void eb_bus_config_init(eb_bus_config *cfg);

/*
 * Creates a bus and starts its workers (threads named "eb-worker-0", ...).
 * cfg NULL: defaults. On EB_OK *out owns the bus; release it with
 * eb_bus_destroy.
 * Errors: EB_EINVAL (out NULL, a field out of range), EB_ENOMEM, EB_EIO
 * (threads could not be started), EB_EBUSY (cfg->store is attached to
 * another bus), EB_ENOTSUP (cfg->store is read-only).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_bus_create(const eb_bus_config *cfg, eb_bus **out);

/*
 * Shuts the bus down gracefully: new publishes fail with EB_ECLOSED, every
 * event already accepted is dispatched and delivered (retries included),
 * workers are joined and everything is freed, including subscriptions that
 * were not unsubscribed (their handles become invalid). Tickets and retained
 * events stay valid until released. NULL is a no-op. Same as
 * eb_bus_shutdown(bus, -1), which it may follow after that returned
 * EB_ETIMEDOUT.
 * Thread-safe: with other calls on other buses only; no call on this bus may
 * run concurrently or follow. May be called from a handler: no (not one of
 * this bus: there it does nothing, as it would wait for itself).
 */
EB_API void eb_bus_destroy(eb_bus *bus);

/*
 * eb_bus_destroy with a drain timeout: closes the bus to new publishes and
 * subscribes (EB_ECLOSED), delivers every event already accepted (retries
 * included), joins the workers and frees everything — waiting at most
 * timeout_ns for the deliveries to finish (< 0: forever, as eb_bus_destroy;
 * 0: do not wait). The store's writer finishing a transaction it is in
 * (busy_timeout_ms of another process's lock, an fsync) is not bounded by
 * the timeout; nor is, once no delivery is left, the workers' own
 * bookkeeping of the last one (at most 10 ms): a bus with nothing left to
 * deliver shuts down with EB_OK even with a zero timeout.
 * EB_OK: the bus was destroyed; the handle is invalid.
 * EB_ETIMEDOUT: deliveries were still running or queued at the deadline.
 *   The bus stays closed but is not freed, and the handle stays valid; the
 *   log callback (cfg.log, at WARN) names the subscriptions whose handlers
 *   are still running, one line each for the first 8 (name, pattern, how
 *   many calls, how long the longest has run: since the start of that call
 *   or of one of the 15 calls of its lane before it), counts the rest, and
 *   says how much is still queued. A subscription unsubscribed while its
 *   handlers run (by one of them, or by a handler's eb_unsubscribe waiting
 *   for them) is listed too, marked "unsubscribed". Call eb_bus_shutdown
 *   again later, or eb_bus_destroy to wait for good. Meanwhile the workers go on delivering
 *   (a handler may still publish: EB_ECLOSED), calls on the handle other
 *   than publishing and subscribing work as before, and the bus still uses
 *   its store: close the store only after a call returned EB_OK.
 * EB_EINVAL: bus is NULL. EB_EDEADLK: called from a handler of this bus
 *   (nothing changed).
 * Thread-safe: with other calls on other buses only; no other call on this
 * bus may run concurrently with it (after EB_ETIMEDOUT other calls may be
 * made between calls to it). May be called from a handler: yes, not from
 * one of this bus.
 */
EB_API int eb_bus_shutdown(eb_bus *bus, int64_t timeout_ns);

typedef struct eb_bus_stats {
    uint64_t published;     /* events accepted by publish calls */
    uint64_t dispatched;    /* events routed: every delivery of them is in its
                               mailbox or dropped (dead letters included) */
    uint64_t delivered;     /* handler calls that returned 0 */
    uint64_t failed;        /* deliveries that failed their last attempt */
    uint64_t retried;       /* handler calls that failed and were retried
                               (counted when the retry runs) */
    uint64_t dead_lettered; /* deliveries dead-lettered */
    uint64_t dropped;       /* deliveries dropped by an overflow policy */
    uint64_t unrouted;      /* events that matched no subscription */
    uint32_t intake_depth;  /* events waiting on the intake ring now */
    uint32_t intake_capacity;
    uint32_t workers;
    uint32_t subscriptions; /* live subscriptions */
    uint64_t max_lag;       /* largest per-subscription lag (see below) */
    uint64_t scheduled;     /* delayed events waiting for their time */
    uint64_t cancelled;     /* deliveries ended by an unsubscribe before their
                               first call (EB_ECANCELED); one that failed and
                               waited to retry is dead-lettered instead */
} eb_bus_stats;

/*
 * Snapshot of the bus counters. Counters are read without stopping the bus,
 * so they are each exact but not a single atomic snapshot. An event counts
 * as dispatched after its last delivery is in its mailbox, so `delivered`
 * may count its deliveries (and eb_publish_wait may have returned) a moment
 * before `dispatched` counts the event.
 * Errors: EB_EINVAL (bus or out NULL). Thread-safe: yes. From a handler: yes.
 */
EB_API int eb_bus_stats_get(eb_bus *bus, eb_bus_stats *out);

/* ---------------------------------------------------------------------- */
/* Subscribing                                                             */
/* ---------------------------------------------------------------------- */

/*
 * A handler returns 0 on success or a negative code on failure (failures are
 * retried, then dead-lettered). It runs on a worker thread; the event is
 * valid until it returns (eb_event_retain to keep it longer).
 */
typedef int (*eb_handler_fn)(const eb_event *ev, void *ctx);

typedef enum eb_delivery {
    EB_DELIVERY_SERIAL = 0, /* one at a time, in order (default) */
    EB_DELIVERY_KEYED,      /* in order per event key, concurrent across keys
                               (lane = hash(key) mod lanes; events without a
                               key share one lane) */
    EB_DELIVERY_CONCURRENT  /* no ordering, as parallel as the pool: events
                               are dealt round robin to the lanes, each of
                               which runs one delivery at a time, so a slow
                               delivery holds back the later events dealt to
                               its lane (not those of the other lanes) */
} eb_delivery;

typedef enum eb_overflow {
    EB_OVERFLOW_BLOCK = 0,   /* a full mailbox pauses dispatch (default) */
    EB_OVERFLOW_DROP_OLDEST, /* drop the oldest queued event, counted */
    EB_OVERFLOW_DROP_NEWEST  /* drop the incoming event, counted */
} eb_overflow;

typedef struct eb_subscribe_options {
    eb_delivery delivery;
    unsigned lanes;              /* KEYED: 0 = 16; CONCURRENT: 0 = workers; at
                                    most 1024; SERIAL: must be 0 or 1 */
    unsigned max_attempts;       /* 0 = 3; 1 = no retry; at most 1000 */
    uint64_t backoff_initial_ns; /* 0 = 1 ms; delay d before the 2nd attempt,
                                    doubled for each further one; each delay
                                    is taken at random from [d/2, d] (equal
                                    jitter). Above INT64_MAX: INT64_MAX */
    uint64_t backoff_max_ns;     /* 0 = 1 s; cap of the doubling delay */
    unsigned mailbox_capacity;   /* per lane; 0 = the bus default; at most 2^20 - 1 */
    eb_overflow overflow;
    const char *name; /* NULL: the pattern; copied; at most 255 bytes */
    bool durable;     /* keep a checkpoint in the bus's store under name
                         (required): on subscribing again, durable events
                         logged after the checkpoint are delivered first
                         (see <eventbus/store.h>). Needs a store
                         (EB_ENOTSUP), overflow BLOCK (EB_EINVAL), a name
                         not used by another live durable subscription
                         of the bus (EB_EEXIST) */
    bool idempotent;  /* durable only: record the event ids the handler
                         succeeded on and never deliver one twice */
} eb_subscribe_options;

/* Fills opts with the defaults. Thread-safe: yes. */
EB_API void eb_subscribe_options_init(eb_subscribe_options *opts);

/*
 * Subscribes fn to every topic matching pattern (AMQP 0-9-1 topic rules, as
 * RabbitMQ implements them: words separated by '.', '*' matches exactly one
 * word, '#' zero or more words; the empty topic has zero words). Topics whose
 * first word begins with '$' are set apart: a pattern matches them only if
 * its own first word is spelled out literally (so '#' does not see dead
 * letters). The first word "$deadletter" is the bus's own: publish calls
 * refuse it (EB_EINVAL); other '$' words are the caller's to use.
 * Events published after this call returns are routed to the subscription.
 * On EB_OK, if out is not NULL, *out is the handle for eb_unsubscribe; the
 * bus frees the subscription at unsubscribe or destroy.
 * Errors: EB_EINVAL (bus, pattern or fn NULL, pattern longer than 255 bytes,
 * an option out of range), EB_ECLOSED (bus shutting down), EB_ENOMEM; for
 * durable ones also EB_ENOTSUP, EB_EEXIST (see the options) and EB_EIO
 * (the checkpoint could not be read or created).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_subscribe(eb_bus *bus, const char *pattern, eb_handler_fn fn, void *ctx,
                        const eb_subscribe_options *opts, eb_subscription **out);

/*
 * Whether topic matches pattern by the rules of eb_subscribe, the '$'
 * reservation included: returns 1 if it does, 0 if not, EB_EINVAL if either
 * is NULL, pattern is longer than EB_TOPIC_MAX bytes or topic longer than
 * EB_TOPIC_MAX + 12 (a dead-letter topic). For filtering events read back
 * from a store, testing a pattern, and the like; routing a publish does not
 * call it. Thread-safe: yes (no state). May be called from a handler: yes.
 */
EB_API int eb_topic_matches(const char *pattern, const char *topic);

/*
 * Removes a subscription. Returns once the handler is not running and will
 * not be called again; deliveries still queued for it complete as
 * EB_ECANCELED (their waiters are told; eb_bus_stats counts them as
 * cancelled), except one that failed and waits to retry, or fails after
 * the call began: that is dead-lettered with its last error, as after its
 * last attempt (attempts: the calls made). From inside that subscription's own
 * handler (or from a handler running nested on its worker while that
 * handler waits) it returns at once and no further call starts after the
 * handler returns; a durable subscription's name is then free once the handler
 * returned (subscribing it again before gets EB_EEXIST). The handle is
 * invalid afterwards.
 * Errors: EB_EINVAL (sub NULL or already being unsubscribed).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_unsubscribe(eb_subscription *sub);

typedef struct eb_subscription_stats {
    uint64_t delivered; /* handler calls that returned 0 */
    uint64_t failed;    /* deliveries that failed their last attempt */
    uint64_t retried;   /* failed calls that were retried (counted when the
                           retry runs) */
    uint64_t dropped;   /* deliveries dropped by the overflow policy */
    uint64_t lag;       /* deliveries routed to it and not yet finished */
} eb_subscription_stats;

/*
 * Counters of one subscription. Errors: EB_EINVAL (NULL argument).
 * Thread-safe: yes, while the subscription is live. From a handler: yes.
 */
EB_API int eb_subscription_stats_get(eb_subscription *sub, eb_subscription_stats *out);

/* ---------------------------------------------------------------------- */
/* Publishing                                                              */
/* ---------------------------------------------------------------------- */

/*
 * Zero-copy payload destructor (SQLite's idiom): called exactly once, on any
 * thread, when the last reference to the event is gone. Ownership of the
 * payload passes to the bus only when the publish returns EB_OK.
 */
typedef void (*eb_free_fn)(void *payload);

typedef struct eb_publish_options {
    const void *key;               /* ordering key for KEYED lanes; may be NULL */
    size_t key_len;                /* at most 255 */
    int64_t timeout_ns;            /* how long to wait for ring space and, for the
                                      waiting calls, completion: <0 forever (the _init
                                      default), 0 do not wait. EB_PUBLISH_DURABLE:
                                      bounds the wait for room in the store's queue
                                      only; the commit is always waited for (see
                                      EB_PUBLISH_DURABLE) */
    unsigned flags;                /* EB_PUBLISH_* below, or 0 */
    eb_free_fn payload_free;       /* non-NULL: zero-copy, the bus owns payload */
    const uint8_t *correlation_id; /* 16 bytes, or NULL: the correlation id of
                                      the event being handled, or its id if it
                                      has none; outside a handler none */
    const uint8_t *causation_id;   /* 16 bytes, or NULL: the id of the event
                                      being handled, else none */
    int64_t delay_ns;              /* > 0: dispatch no earlier than this long after the
                                      call (the event waits in the bus's timer heap, not on
                                      the intake, so it never blocks or gets EB_EAGAIN);
                                      0: now; < 0: EB_EINVAL. Not durable: scheduled events
                                      not yet due when the bus's shutdown begins
                                      (eb_bus_shutdown, eb_bus_destroy) are released
                                      undelivered at once (their waiters get first_error
                                      EB_ECLOSED) — unless durable: then the event
                                      waits in the store and fires once, also
                                      after a restart */
    int64_t at_ns;                 /* > 0: dispatch no earlier than this Unix time
                                      (ns), as delay_ns; 0: unused; not with delay_ns */
} eb_publish_options;

/*
 * Durable publishing (needs a bus with a store, else EB_ENOTSUP):
 * EB_PUBLISH_DURABLE: the event is appended to the store's log and the call
 *   returns EB_OK only after that transaction committed (group commit: one
 *   fsync serves every publisher waiting at that moment). The event is
 *   dispatched once committed, with its log sequence. EB_EIO if the commit
 *   failed (nothing was published). The call waits for the commit whatever
 *   timeout_ns says (which bounds only the wait for room in the store's
 *   queue): an EB_OK must mean committed, and a commit that was started
 *   cannot be called off. It ends with the commit's outcome: EB_OK,
 *   EB_EBUSY (another connection held the file's lock past the store's
 *   busy_timeout_ms) or EB_EIO.
 * EB_PUBLISH_DURABLE_LAZY: the event is queued for the next group commit
 *   and the call returns at once (fast: one transaction per batch). It is
 *   dispatched once committed; eb_store_flush waits for it. If its commit
 *   fails it is dispatched without a log sequence, logged and counted in
 *   eb_store_stats.write_errors.
 * Durable events are dispatched in log order; an event a thread publishes
 * in memory after a durable one may be dispatched before it.
 */
#define EB_PUBLISH_DURABLE 0x1u
#define EB_PUBLISH_DURABLE_LAZY 0x2u

/* Fills opts with the defaults (timeout_ns = -1). Thread-safe: yes. */
EB_API void eb_publish_options_init(eb_publish_options *opts);

typedef struct eb_publish_result {
    uint32_t matched;   /* subscriptions the event was routed to */
    uint32_t delivered; /* handlers that returned 0 */
    uint32_t failed;    /* deliveries that failed after their last attempt,
                           were dropped or cancelled */
    int first_error;    /* first failure's code, EB_OK if none */
} eb_publish_result;

/*
 * Fire and forget: returns once the bus accepted the event (it is on the
 * intake ring). The payload is copied unless opts->payload_free is set.
 * Errors: EB_EINVAL (see the last paragraph of this header's notes),
 * EB_ECLOSED, EB_EAGAIN (ring full, timeout_ns == 0), EB_ETIMEDOUT (ring
 * still full after timeout_ns), EB_ENOMEM. On failure nothing was published.
 * With a durable flag (EB_PUBLISH_DURABLE* below) also: EB_ENOTSUP (the bus
 * has no store; or a durable delayed event with eb_publish_wait/_async,
 * which cannot be tracked), EB_EIO or EB_EBUSY (the commit failed), and
 * EB_EAGAIN/EB_ETIMEDOUT when the store's queue is full.
 * From a handler, a full intake that only the handler's own lane could free
 * does not block: the event overflows (see the guarantees above).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_publish(eb_bus *bus, const char *topic, const void *payload, size_t len,
                      const eb_publish_options *opts);

/*
 * Wait for all: publishes, then returns once every matching delivery has
 * finished, with the outcome in *result (may be NULL). The wait is bounded
 * by opts->timeout_ns as a whole, except for EB_PUBLISH_DURABLE's wait for
 * its commit (see there).
 * Errors: those of eb_publish (nothing published), except that an intake
 * (or store queue) that stayed full for the whole timeout gives EB_EAGAIN:
 * EB_ETIMEDOUT and EB_EDEADLK always mean that the event was published (it
 * will still be delivered, a zero-copy payload belongs to the bus; *result
 * is then untouched).
 * Thread-safe: yes. May be called from a handler: yes (the worker keeps
 * running other work while it waits).
 */
EB_API int eb_publish_wait(eb_bus *bus, const char *topic, const void *payload, size_t len,
                           const eb_publish_options *opts, eb_publish_result *result);

/*
 * Async: publishes and returns a ticket to wait on later. On EB_OK *ticket
 * must be released with eb_ticket_release. Errors: those of eb_publish, and
 * EB_EINVAL for a NULL ticket pointer. Thread-safe: yes. From a handler: yes.
 */
EB_API int eb_publish_async(eb_bus *bus, const char *topic, const void *payload, size_t len,
                            const eb_publish_options *opts, eb_ticket **ticket);

/* One message of a batch. */
typedef struct eb_message {
    const char *topic;
    const void *payload;
    size_t len;
    const void *key; /* ordering key for KEYED lanes; may be NULL */
    size_t key_len;  /* at most 255 */
} eb_message;

/*
 * Publishes msgs[0..n) in order, fire and forget, handing the bus many events
 * per intake operation (the fast path for producers that have several events
 * at hand). opts applies to every message except its key fields, which each
 * message has of its own; with payload_free set, each accepted payload is
 * freed by it. Every message is validated first: EB_EINVAL publishes nothing.
 * Otherwise the messages are accepted in order until one cannot be, and
 * *accepted (may be NULL) gets how many were (their payloads now belong to
 * the bus; the rest stay the caller's). With EB_PUBLISH_DURABLE and no
 * delay the batch is one transaction, however long: all accepted, or none.
 * Lazy and delayed durable batches are handed to the store in chunks (of
 * 1024 events) and can stop between two.
 * Errors: EB_EINVAL, EB_ECLOSED, EB_EAGAIN, EB_ETIMEDOUT, EB_ENOMEM
 * as for eb_publish, and with a durable flag its durable errors (EB_ENOTSUP,
 * EB_EIO, EB_EBUSY), returned with the accepted prefix.
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_publish_batch(eb_bus *bus, const eb_message *msgs, size_t n,
                            const eb_publish_options *opts, size_t *accepted);

/*
 * Waits until every delivery of the ticket's event finished (timeout_ns: <0
 * forever, 0 poll) and fills *result (may be NULL). May be called again.
 * From a handler, a wait, a poll too, first runs one step of other work on
 * its worker (a lane's batch of deliveries, say), so that a handler polling
 * in a loop makes progress even on a bus with one worker.
 * Errors: EB_EINVAL (NULL ticket), EB_ETIMEDOUT, EB_EDEADLK (called from a
 * handler whose own lane holds a delivery of this event, or whose wait is
 * the one chosen to break a cycle of waiting handlers: see Progress
 * above).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_ticket_wait(eb_ticket *ticket, int64_t timeout_ns, eb_publish_result *result);

/* Releases a ticket; NULL is a no-op; allowed after the bus was destroyed.
   Thread-safe: yes; once per ticket. */
EB_API void eb_ticket_release(eb_ticket *ticket);

/* ---------------------------------------------------------------------- */
/* Events                                                                  */
/* ---------------------------------------------------------------------- */

/*
 * Accessors. An event is immutable once published. It is valid during the
 * handler; eb_event_retain keeps it valid until the matching release, even
 * after its bus was destroyed (so does a ticket, for eb_ticket_release). All
 * accessors are thread-safe and may be called from any thread while the
 * event is valid.
 */
EB_API const char *eb_event_topic(const eb_event *ev);
/* Payload bytes; *len (if not NULL) gets the length. Never NULL (an empty
   payload points at an empty string). */
EB_API const void *eb_event_payload(const eb_event *ev, size_t *len);
/* Ordering key, or NULL if none (then *len is 0). */
EB_API const void *eb_event_key(const eb_event *ev, size_t *len);
/* Bus-wide dispatch order, from 1. */
EB_API uint64_t eb_event_seq(const eb_event *ev);
/* Position in the store's event log, from 1; 0 if the event is not durable. */
EB_API uint64_t eb_event_log_seq(const eb_event *ev);
/* Time-ordered 128-bit id in the UUIDv7 layout, assigned at dispatch; a
   durable event keeps the one it was logged with (also when replayed). */
EB_API void eb_event_id(const eb_event *ev, uint8_t id[16]);
/* Correlation and causation ids; false (and id zeroed) if the event has none. */
EB_API bool eb_event_correlation_id(const eb_event *ev, uint8_t id[16]);
EB_API bool eb_event_causation_id(const eb_event *ev, uint8_t id[16]);
/* Unix time in nanoseconds at which the event was dispatched; for a durable
   event, at which it was logged (also when replayed). */
EB_API int64_t eb_event_timestamp(const eb_event *ev);
/* 1 on the first delivery to the calling handler, 2 on the first retry...;
   1 when called outside that handler. */
EB_API unsigned eb_event_attempt(const eb_event *ev);
/* For an event on a $deadletter.<topic> topic: fills *info and returns true.
   info->subscription and info->topic live as long as the event. */
EB_API bool eb_event_deadletter_info(const eb_event *ev, eb_deadletter_info *info);
/* Takes a reference; returns ev. Memory: an event of an eb_publish_batch
   call may share one block (up to 12 KiB) with up to 47 other events of
   that call, and the block is freed when the last of them is released, so
   retaining one such event keeps the block. */
EB_API const eb_event *eb_event_retain(const eb_event *ev);
/* Drops a reference taken with eb_event_retain; NULL is a no-op. */
EB_API void eb_event_release(const eb_event *ev);

/*
 * Bad input: a NULL bus, topic, pattern or handler; a topic or pattern
 * longer than EB_TOPIC_MAX bytes; publishing on a topic whose first word is
 * "$deadletter" (the bus's own dead letters); a payload pointer of NULL with a non-zero
 * length; a key longer than 255 bytes or NULL with a non-zero length; unknown
 * flags; options with out-of-range values — all are refused with EB_EINVAL
 * and change nothing. A publish on a bus that is shutting down returns
 * EB_ECLOSED. EB_EAGAIN means the intake ring was full and the caller asked
 * not to wait.
 */

/* ---------------------------------------------------------------------- */
/* Sagas, aggregates and units of work                                     */
/* ---------------------------------------------------------------------- */

/*
 * A saga is a long-running workflow driven by events: for every event it
 * reacts to, the helper finds the instance the event belongs to (its
 * correlation key), runs a transition that mutates the instance's state and
 * queues follow-up commands, persists the new state together with the
 * queued commands, and only then publishes the commands. Aggregates are
 * in-memory objects addressed by id that handle commands point to point and
 * emit events. A scope (unit of work) collects events and publishes them
 * together on commit, or drops them on abort.
 *
 * Guarantees
 *  - Isolation: a saga is one KEYED subscription, so the events of one
 *    instance (same event key) are handled one at a time, in dispatch order;
 *    different instances run concurrently. The same holds for the commands
 *    of one aggregate id.
 *  - Persist before dispatch: no queued command or event leaves before the
 *    store accepted the new state. If the transition or the save fails,
 *    nothing leaves and the handler fails, so the bus retries the event.
 *  - At least once: if the save succeeded but publishing failed, the retried
 *    event does not run the transition again; it publishes the stored
 *    commands again, with the same ids. Command ids are derived from (saga
 *    name, instance key, start id, transition number, position), the start
 *    id being the id of the event that created the instance, so a
 *    redelivered transition produces the same ids and the instances a key
 *    has over time (EB_SAGA_REMOVE) send different ones; handlers
 *    deduplicate by eb_command_id.
 *  - One instance per key: a start event for a key that has an instance
 *    is handled by that instance, so duplicate start events create it once.
 *
 * Lifetimes: register sagas and aggregates after the bus was created and
 * unregister them (eb_saga_unregister, eb_aggregate_unregister or
 * eb_command_bus_destroy) before eb_bus_destroy. Handles become invalid when
 * unregistered.
 */

typedef struct eb_saga eb_saga;
typedef struct eb_saga_ctx eb_saga_ctx;
typedef struct eb_saga_store eb_saga_store;
typedef struct eb_command_bus eb_command_bus;
typedef struct eb_aggregate eb_aggregate;
typedef struct eb_aggregate_ctx eb_aggregate_ctx;
typedef struct eb_scope eb_scope;

/* Longest saga or aggregate name, in bytes. */
#define EB_NAME_MAX 200

/*
 * Correlation key: maps an event to the instance it belongs to. Sets *key
 * and *key_len (the bytes must stay valid until the next call on this
 * event, e.g. point into its payload; at most 255 bytes) and returns EB_OK;
 * returns EB_ENOENT if the event belongs to no instance (it is then ignored);
 * any other negative code fails the delivery (it is retried).
 * Events of one instance should carry that instance's key as their event
 * key: the lanes hash the event key, so only then are the instance's events
 * serialized by the bus. Otherwise two transitions of one instance may run
 * at once on separate copies of the state; the store's version check lets
 * the first save win and the other fails with EB_ECONFLICT and is retried.
 */
typedef int (*eb_saga_key_fn)(const eb_event *ev, const void **key, size_t *key_len, void *ctx);

/* Fills the state of a new instance (state_size bytes, zeroed before the
   call) from the event that starts it. */
typedef void (*eb_saga_init_fn)(void *state, const eb_event *ev, void *ctx);

/*
 * A transition: mutates state (the instance's state_size bytes; a private
 * copy, saved only if this returns EB_OK), may queue commands and events
 * (eb_saga_send, eb_saga_publish, eb_saga_schedule_timeout) and may mark
 * the instance complete (eb_saga_complete). Returns EB_OK, or a negative
 * code: then nothing is saved or sent and the bus retries the event. It
 * runs on a worker thread and must not wait for events of its own saga.
 */
typedef int (*eb_saga_transition_fn)(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx);

typedef struct eb_saga_def {
    const char *name;                /* unique per store; at most EB_NAME_MAX bytes */
    const char *const *topics;       /* patterns the saga reacts to */
    size_t n_topics;                 /* at least 1 */
    const char *const *start_topics; /* patterns of the events that may create an
                                        instance (an event must also match topics) */
    size_t n_start_topics;           /* at least 1 */
    eb_saga_key_fn key;              /* NULL: the event key */
    size_t state_size;               /* bytes of state per instance; at most 1 MiB */
    eb_saga_init_fn init;            /* NULL: the state starts zeroed */
    eb_saga_transition_fn transition;
    void *ctx; /* passed to key, init and transition */
} eb_saga_def;

/* What happens to an instance once a transition called eb_saga_complete. */
typedef enum eb_saga_on_complete {
    EB_SAGA_REMOVE = 0, /* removed from the store after its commands left (default);
                           a later start event with its key creates a new instance */
    EB_SAGA_ARCHIVE     /* kept, marked completed; later events for it are ignored */
} eb_saga_on_complete;

typedef struct eb_saga_options {
    eb_saga_store *store;     /* NULL: a private in-memory store. Not owned: it
                                 must outlive the saga */
    eb_command_bus *commands; /* non-NULL: eb_saga_send refuses topics that have no
                                 aggregate there (EB_ENOENT). Must outlive the saga */
    eb_saga_on_complete on_complete;
    unsigned lanes;              /* KEYED lanes; 0 = 16; at most 1024 */
    unsigned max_attempts;       /* per event; 0 = 100; at most 1000 */
    uint64_t backoff_initial_ns; /* 0 = 1 ms */
    uint64_t backoff_max_ns;     /* 0 = 1 s */
    unsigned mailbox_capacity;   /* per lane; 0 = the bus default */
    unsigned publish_flags;      /* 0, EB_PUBLISH_DURABLE or EB_PUBLISH_DURABLE_LAZY:
                                    the flags every command and event the saga
                                    sends is published with (needs a bus with a
                                    store). EB_PUBLISH_DURABLE: a transition counts
                                    as dispatched only once its commands are in
                                    the event log */
} eb_saga_options;

/* Fills opts with the defaults. Thread-safe: yes. */
EB_API void eb_saga_options_init(eb_saga_options *opts);

/*
 * Registers a saga: subscribes one KEYED subscription (named "saga:<name>")
 * to the narrowest pattern covering def->topics (their common leading
 * literal words followed by '#', or the one pattern itself) and ignores the
 * events that match none of def->topics. def and its strings are copied.
 * Then recovery: if the store lists pending outboxes (eb_saga_store's
 * pending; the SQLite store does), the commands a crash left saved but
 * unsent are published again (same command ids) and marked dispatched, each
 * instance's on its lane before any later event of that instance is
 * handled, and the call returns once they were; replies to them reach the
 * saga (it is subscribed). Register the aggregates and subscribers that
 * receive them before the saga. On EB_OK *out is the handle for
 * eb_saga_unregister.
 * Errors: EB_EINVAL (NULL bus, def, out or transition; a name, topic or
 * start topic missing, empty or too long; a topic whose first word starts
 * with '$' while the topics share no first word, which no covering pattern
 * could reach; a field out of range, unknown publish_flags), EB_ENOTSUP
 * (publish_flags on a bus without a store), EB_ENOMEM, EB_ECLOSED, the
 * errors of eb_subscribe, and those of the recovery's store walk and
 * publishes (then the saga is unsubscribed again; what was already sent may
 * be sent again next time).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_saga_register(eb_bus *bus, const eb_saga_def *def, const eb_saga_options *opts,
                            eb_saga **out);

/*
 * Unsubscribes the saga (returns once no transition of it runs; events
 * still queued for it are cancelled) and frees it, and its private store
 * with every instance in it. NULL is a no-op.
 * Errors: EB_EDEADLK (called from one of this saga's transitions, or from
 * a handler running nested inside one while it waits: nothing changed);
 * those of eb_unsubscribe (the saga is freed anyway).
 * Thread-safe: yes, once per saga. May be called from a handler: yes, but
 * not from one of this saga's own transitions (EB_EDEADLK).
 */
EB_API int eb_saga_unregister(eb_saga *saga);

typedef struct eb_saga_stats {
    uint64_t transitions;  /* transitions saved */
    uint64_t started;      /* instances created */
    uint64_t completed;    /* instances marked complete */
    uint64_t ignored;      /* events for no instance, a completed one, or a
                              topic the saga does not react to */
    uint64_t conflicts;    /* saves refused with EB_ECONFLICT or EB_EEXIST */
    uint64_t failures;     /* deliveries that returned a failure (retried) */
    uint64_t commands;     /* commands and events published (redispatches included) */
    uint64_t redispatched; /* transitions whose stored commands were published
                              again: redelivered ones, and those recovered at
                              registration */
} eb_saga_stats;

/* Counters of a saga. Errors: EB_EINVAL (NULL argument).
   Thread-safe: yes. May be called from a handler: yes. */
EB_API int eb_saga_stats_get(eb_saga *saga, eb_saga_stats *out);

/*
 * Queues a command for after the save: topic, payload (copied) and key (the
 * target aggregate's id, copied; required). It is published with correlation
 * id = the instance id and causation id = its command id (see
 * eb_command_id). If the saga was registered with a command bus, a topic
 * with no aggregate registered there is refused with EB_ENOENT.
 * Errors: EB_EINVAL (NULL sc or topic, topic too long, payload NULL with
 * len > 0, key NULL or longer than 255 bytes), EB_ENOENT, EB_ENOMEM.
 * Thread-safe: no — only inside the transition that got sc.
 */
EB_API int eb_saga_send(eb_saga_ctx *sc, const char *topic, const void *payload, size_t len,
                        const void *key, size_t key_len);

/*
 * Queues an event (no aggregate check; key optional) for after the save,
 * with the same ids as eb_saga_send. Errors and threads: as eb_saga_send,
 * without EB_ENOENT.
 */
EB_API int eb_saga_publish(eb_saga_ctx *sc, const char *topic, const void *payload, size_t len,
                           const void *key, size_t key_len);

/*
 * Queues a timeout: after the save, topic is published with delay_ns
 * (eb_publish_options.delay_ns) and the instance key as its event key, so
 * it comes back to this instance if topic matches the saga's topics (the
 * saga knows its own timeouts by their correlation id, the instance id: no
 * key function is asked, and one never starts an instance). A
 * timeout cannot be cancelled: the transition that receives it decides from
 * the state whether it still matters. An instance that was removed or
 * archived ignores it, and with EB_SAGA_REMOVE a later instance of the
 * same key ignores the timeouts (and the events with its key) a removed
 * predecessor queued: their command ids carry the predecessor's start id.
 * Only a store that keeps no start id (eb_saga_record) cannot tell them
 * apart; its instances get them. (Replies an aggregate emits to a
 * predecessor's command carry the command's event id as causation, not its
 * command id: a later instance that reacts to them tells them apart from
 * the state.) A timeout is published with the saga's
 * publish_flags: durable when they are (it waits in the store and fires
 * once, also after a restart), else not (see delay_ns).
 * Errors: EB_EINVAL (NULL sc or topic, delay_ns <= 0, payload NULL with
 * len > 0), EB_ENOMEM. Thread-safe: no — only inside the transition.
 */
EB_API int eb_saga_schedule_timeout(eb_saga_ctx *sc, int64_t delay_ns, const char *topic,
                                    const void *payload, size_t len);

/* Marks the instance complete once this transition is saved (see
   eb_saga_on_complete). Thread-safe: no — only inside the transition. */
EB_API void eb_saga_complete(eb_saga_ctx *sc);

/* These four read the transition's context: thread-safe: no — only inside
   the transition. */
/* The instance key (valid during the transition); *len gets its length. */
EB_API const void *eb_saga_key(const eb_saga_ctx *sc, size_t *len);
/* The number this transition will have once saved: 1 for the transition
   that creates the instance. */
EB_API uint64_t eb_saga_transition_number(const eb_saga_ctx *sc);
/* True if this transition creates the instance. */
EB_API bool eb_saga_is_new(const eb_saga_ctx *sc);
/* The instance id: 16 bytes derived from (saga name, instance key); the
   correlation id of everything the saga sends. */
EB_API void eb_saga_instance_id(const eb_saga_ctx *sc, uint8_t id[16]);

/*
 * The id of a command: its causation id, which eb_saga_send, eb_saga_publish,
 * eb_saga_schedule_timeout and eb_command_send set to the command's own id
 * (derived from saga name, instance key, the instance's start id,
 * transition number and position for saga commands, so a redelivered
 * transition sends the same ids; from the first four only for an instance
 * whose store keeps no start id, see eb_saga_record). Returns
 * false (id zeroed) if the event carries no causation id.
 * Thread-safe: yes, while the event is valid.
 */
EB_API bool eb_command_id(const eb_event *ev, uint8_t id[16]);

/* ---- saga stores ------------------------------------------------------ */

/*
 * One stored saga instance. state points at state_size bytes. outbox holds
 * the commands the transition that wrote this version queued (an opaque
 * byte string the helper writes and reads; NULL/0 if none or already
 * dispatched); event_id is the id of the event whose transition wrote it.
 * start_id is the id of the event whose transition created the instance:
 * it tells the instances one key has over time apart (see
 * eb_saga_schedule_timeout). A store sets it at create and leaves it at
 * save. All zero: unknown (a record of a library before it, or a store
 * that does not keep it); the instance then gets the ids it had before.
 */
typedef struct eb_saga_record {
    void *state;
    size_t state_size;
    uint64_t version; /* transitions applied; 1 after the first */
    bool completed;
    uint8_t event_id[16];
    void *outbox;
    size_t outbox_len;
    uint8_t start_id[16];
} eb_saga_record;

/*
 * A saga store: a table of function pointers a backend fills (the in-memory
 * store below; a SQLite store later). Records are addressed by (saga name,
 * key). The functions are called from worker threads concurrently (for
 * different keys; for one key only as described at eb_saga_key_fn), never
 * under a lock of the helper, and return EB_OK or a negative code.
 */
struct eb_saga_store {
    /* Copies the record's state into rec->state (rec->state_size bytes, as
       allocated by the caller) and fills version, completed, event_id,
       start_id (zero if not kept) and outbox: a malloc'ed copy the caller
       frees with free(), or NULL.
       Errors: EB_ENOENT (no such record), EB_EINVAL (another state size). */
    int (*load)(eb_saga_store *store, const char *saga, const void *key, size_t key_len,
                eb_saga_record *rec);
    /* Inserts rec (state, version, completed, event_id, outbox and
       start_id copied).
       Errors: EB_EEXIST (a record with that key exists), EB_ENOMEM. */
    int (*create)(eb_saga_store *store, const char *saga, const void *key, size_t key_len,
                  const eb_saga_record *rec);
    /* Replaces the record if its version is still expected_version (state
       and outbox in one step; start_id stays as created). Errors: EB_ECONFLICT (another version),
       EB_ENOENT, EB_EINVAL (another state size), EB_ENOMEM. */
    int (*save)(eb_saga_store *store, const char *saga, const void *key, size_t key_len,
                uint64_t expected_version, const eb_saga_record *rec);
    /* Deletes the record if its version is expected_version.
       Errors: EB_ECONFLICT, EB_ENOENT. */
    int (*remove)(eb_saga_store *store, const char *saga, const void *key, size_t key_len,
                  uint64_t expected_version);
    /* Optional (NULL: never called): the outbox of that version was
       published; the store may drop it. Errors are ignored (the commands
       may then be published again: at least once). */
    int (*dispatched)(eb_saga_store *store, const char *saga, const void *key, size_t key_len,
                      uint64_t version);
    /* Optional: frees the store (eb_saga_store_destroy). */
    void (*destroy)(eb_saga_store *store);
    /* Optional (NULL: nothing to recover, as in a store that does not
       outlive its process): calls fn for each record of saga whose outbox
       was saved but not marked dispatched, with its key, version, completed
       and outbox set (rec->state NULL, state_size 0). fn runs under no lock
       of the store and may call it; a non-zero return stops the walk and is
       returned. eb_saga_register calls this to send what a crash between a
       save and its dispatch left behind. Errors: EB_ENOMEM, EB_EIO. */
    int (*pending)(eb_saga_store *store, const char *saga,
                   int (*fn)(const void *key, size_t key_len, const eb_saga_record *rec, void *ctx),
                   void *ctx);
};

/*
 * Creates the in-memory saga store: a hash table striped over 64 locks,
 * shareable by several sagas (records are keyed by saga name and key).
 * On EB_OK *out owns the store; free it with eb_saga_store_destroy after
 * every saga using it was unregistered. Errors: EB_EINVAL (out NULL),
 * EB_ENOMEM. Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_saga_memory_store_create(eb_saga_store **out);

/* Calls store->destroy if set; NULL is a no-op. Thread-safe: once per
   store, after no saga uses it. May be called from a handler: yes. */
EB_API void eb_saga_store_destroy(eb_saga_store *store);

/* ---- aggregates and point-to-point commands ---------------------------- */

/*
 * Creates a command bus over bus: the registry that makes commands point to
 * point (one aggregate per command topic). On EB_OK *out owns it.
 * Errors: EB_EINVAL (NULL argument), EB_ENOMEM.
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_command_bus_create(eb_bus *bus, eb_command_bus **out);

/*
 * Unregisters every aggregate still registered (see eb_aggregate_unregister)
 * and frees the command bus. NULL is a no-op. Call before eb_bus_destroy and
 * after the sagas that name it were unregistered.
 * Thread-safe: once, with no other call on it running. May be called from a
 * handler: yes, but not from one of its aggregates' handlers (or one nested
 * inside one while it waits): there it does nothing.
 */
EB_API void eb_command_bus_destroy(eb_command_bus *cb);

/*
 * Sends a command to the aggregate registered for topic: publishes it with
 * opts->key as the aggregate id (required) and causation id =
 * opts->causation_id if set, else a fresh unique command id (read it back
 * with eb_command_id). opts's other fields apply as for eb_publish.
 * Errors: EB_ENOENT (no aggregate handles topic), EB_EINVAL (NULL cb, topic
 * or opts, no key, and the bad input of eb_publish), and the errors of
 * eb_publish (nothing was sent).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_command_send(eb_command_bus *cb, const char *topic, const void *payload, size_t len,
                           const eb_publish_options *opts);

/* Fills the state of an aggregate the first time a command addresses its id
   (state_size bytes, zeroed before the call). */
typedef void (*eb_aggregate_init_fn)(void *state, const void *id, size_t id_len, void *ctx);

/*
 * A command handler. state is a private copy of the aggregate's state,
 * stored back only if this returns EB_OK; then the events it emitted with
 * eb_aggregate_emit are published (if that fails, the state is rolled back
 * and the command retried). A negative code leaves the aggregate unchanged,
 * emits nothing, and the bus retries the command.
 */
typedef int (*eb_aggregate_fn)(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx);

typedef struct eb_aggregate_def {
    const char *name;            /* at most EB_NAME_MAX bytes */
    const char *const *commands; /* exact command topics (no wildcards) */
    size_t n_commands;           /* at least 1 */
    size_t state_size;           /* bytes per aggregate; at most 1 MiB */
    eb_aggregate_init_fn init;   /* NULL: the state starts zeroed */
    eb_aggregate_fn handle;
    void *ctx; /* passed to init and handle */
} eb_aggregate_def;

typedef struct eb_aggregate_options {
    unsigned lanes;              /* KEYED lanes; 0 = 16; at most 1024 */
    unsigned max_attempts;       /* 0 = 100; at most 1000 */
    uint64_t backoff_initial_ns; /* 0 = 1 ms */
    uint64_t backoff_max_ns;     /* 0 = 1 s */
    unsigned mailbox_capacity;   /* per lane; 0 = the bus default */
} eb_aggregate_options;

/* Fills opts with the defaults. Thread-safe: yes. */
EB_API void eb_aggregate_options_init(eb_aggregate_options *opts);

/*
 * Registers an aggregate type for its command topics: one KEYED
 * subscription ("aggregate:<name>") by aggregate id (the event key), so the
 * commands of one aggregate run one at a time and different aggregates run
 * concurrently. Aggregates are created on their first command and live in
 * memory until unregistered. Plain subscribers may still observe command
 * topics; only aggregates are exclusive.
 * Errors: EB_EEXIST (a command topic already has an aggregate on cb; nothing
 * is registered), EB_EINVAL (NULL argument, empty or wildcard topic, a
 * topic starting with '$' while the topics share no first word, field out of
 * range), EB_ENOMEM, and the errors of eb_subscribe.
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_aggregate_register(eb_command_bus *cb, const eb_aggregate_def *def,
                                 const eb_aggregate_options *opts, eb_aggregate **out);

/*
 * Unsubscribes the aggregate type, frees its topics for other aggregates,
 * and frees every aggregate of it. Errors: EB_EDEADLK (called from one of
 * its command handlers, or from a handler running nested inside one while
 * it waits: nothing changed); those of eb_unsubscribe (freed anyway). NULL
 * is a no-op. Thread-safe: yes, once. May be called from a handler: yes,
 * not from one of its own (EB_EDEADLK).
 */
EB_API int eb_aggregate_unregister(eb_aggregate *agg);

/*
 * Queues an event (topic, payload and key copied) that is published with
 * eb_publish_batch when the handler returns EB_OK, right after the new state
 * was stored, so whoever handles the event finds that state; dropped if the
 * handler fails. Correlation id: inherited from the command.
 * Errors: EB_EINVAL (bad topic, payload or key), EB_ENOMEM.
 * Thread-safe: no — only inside the handler that got ac.
 */
EB_API int eb_aggregate_emit(eb_aggregate_ctx *ac, const char *topic, const void *payload,
                             size_t len, const void *key, size_t key_len);

/* The aggregate id (valid during the handler); *len gets its length.
   Thread-safe: no — only inside the command handler. */
EB_API const void *eb_aggregate_id(const eb_aggregate_ctx *ac, size_t *len);

/*
 * Copies the stored state of aggregate id into out (size must be the
 * state_size). Sees the state between two commands, never half of one
 * (possibly a state whose events are still being published).
 * Errors: EB_EINVAL (NULL argument, other size), EB_ENOENT (no command
 * reached that id yet). Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_aggregate_read(eb_aggregate *agg, const void *id, size_t id_len, void *out,
                             size_t size);

/* ---- unit of work ------------------------------------------------------ */

/*
 * Opens a scope: events published into it are held back until
 * eb_scope_commit publishes them together (one eb_publish_batch), or
 * eb_scope_abort drops them — subscribers never see any event of an aborted
 * scope. On EB_OK *out owns the scope until commit succeeds or abort.
 * Errors: EB_EINVAL (NULL argument), EB_ENOMEM.
 * Thread-safe: yes; a scope itself is used by one thread at a time.
 * May be called from a handler: yes.
 */
EB_API int eb_scope_begin(eb_bus *bus, eb_scope **out);

/* Adds an event to the scope (topic, payload and key copied). Nothing is
   published yet. Errors: EB_EINVAL (NULL scope or topic, topic longer than
   EB_TOPIC_MAX, payload NULL with len > 0, bad key), EB_ENOMEM.
   Thread-safe: no (one thread per scope). */
EB_API int eb_scope_publish(eb_scope *scope, const char *topic, const void *payload, size_t len,
                            const void *key, size_t key_len);

/*
 * Publishes the scope's events in order with eb_publish_batch (opts as
 * there; NULL: defaults) and, on EB_OK, frees the scope. *published (may be
 * NULL) gets how many events were accepted. With EB_PUBLISH_DURABLE (no
 * delay) the scope is one transaction: all of it is committed, or none. On
 * other failures the accepted prefix is published (the in-memory bus
 * cannot take back events it accepted) and
 * the scope stays open with the events not yet accepted: commit again or
 * abort. Errors: those of eb_publish_batch; EB_EINVAL also for an
 * opts->payload_free (the scope publishes its own copies of the payloads).
 * Thread-safe: no (one thread per scope). May be called from a handler: yes.
 */
EB_API int eb_scope_commit(eb_scope *scope, const eb_publish_options *opts, size_t *published);

/* Drops the scope's events unpublished and frees it. NULL is a no-op.
   Thread-safe: no (one thread per scope). From a handler: yes. */
EB_API void eb_scope_abort(eb_scope *scope);

#ifdef __cplusplus
}
#endif

#include <eventbus/store.h>

#endif /* EVENTBUS_EVENTBUS_H */
