/*
 * store_sqlite — the durable store's side of the bus (internal interface).
 *
 * The bus hands the store durable events, dead letters and durable
 * subscriptions through these calls; the store's writer thread hands
 * committed events back through eb__bus_inject and eb__bus_store_done
 * (bus.c). When the library is built without SQLite, these are stubs and
 * eb_store_open returns EB_ENOTSUP, so no store can ever be attached.
 */
#ifndef EB_STORE_SQLITE_H
#define EB_STORE_SQLITE_H

#include <eventbus/eventbus.h>

typedef struct eb__dsub eb__dsub;

/* Attaches bus to store: EB_EBUSY (another bus), EB_ENOTSUP (read-only). */
int eb__store_attach(eb_store *store, eb_bus *bus);
/* Stops firing scheduled events into the bus and waits until the writer
   took note (everything it already handed over is counted by the bus). */
void eb__store_detach_begin(eb_store *store);
/* Forgets the bus; call once the bus drained. */
void eb__store_detach(eb_store *store);

/*
 * Queues n built events for the log. The bus counted them in its store
 * in-flight count first (eb__bus_store_done settles each). wait: returns
 * after their transaction ended: EB_OK (committed; the events belong to the
 * bus now) or EB_EIO/EB_EBUSY (rolled back: the events are the caller's
 * again, not counted any more). Lazy (wait false): EB_OK once queued, or
 * EB_EAGAIN / EB_ETIMEDOUT when the writer's queue is full (timeout_ns as
 * eb_publish; in_handler callers never wait for room).
 */
int eb__store_append(eb_store *store, eb_event **evs, size_t n, bool wait, int64_t timeout_ns,
                     bool in_handler);

/* Stores ev (not consumed) as a scheduled event due at Unix time due_ns;
   wait: returns after the commit. Errors: EB_EIO, EB_ENOMEM, EB_EAGAIN. */
int eb__store_schedule(eb_store *store, const eb_event *ev, int64_t due_ns, bool wait);

/* Records a dead letter (queued for the next commit). */
void eb__store_deadletter(eb_store *store, const eb_event *ev, const eb_deadletter_info *info);

/*
 * Durable subscriptions. open: registers name (EB_EEXIST if a live durable
 * subscription of this store has it), creates or loads its checkpoint.
 * start: once the subscription is routed, queues its replay (events logged
 * after the checkpoint). close: writes the final checkpoint and frees.
 */
int eb__dsub_open(eb_store *store, const char *name, const char *pattern, size_t pattern_len,
                  bool idempotent, void *sub, eb__dsub **out);
void eb__dsub_start(eb__dsub *d);
void eb__dsub_close(eb__dsub *d);
/* Stops the replay (eb_unsubscribe, before it waits for the handler). */
void eb__dsub_stop(eb__dsub *d);
/* Dispatcher (token holder): false if the live durable event ev must not go
   to this subscription (its replay covers it). */
bool eb__dsub_route(eb__dsub *d, const eb_event *ev);
/* Dispatcher: ev's delivery is about to be pushed to the subscription
   (track), or could not be after all (untrack the last tracked). */
void eb__dsub_track(eb__dsub *d, const eb_event *ev);
void eb__dsub_untrack(eb__dsub *d);
/* Runner: false if an idempotent subscription already processed ev. */
bool eb__dsub_fresh(eb__dsub *d, const eb_event *ev);
/* Runner: ev's delivery finished (succeeded: record its id if idempotent;
   failed: dead-lettered); advances the checkpoint. */
void eb__dsub_done(eb__dsub *d, const eb_event *ev, bool succeeded);

#endif /* EB_STORE_SQLITE_H */
