/*
 * lane — subscriptions and their lanes.
 *
 * A lane is the unit of ordering: a bounded mailbox (ck_ring, one producer:
 * the dispatch-token holder; one consumer: the worker running the lane) and a
 * `state` word that makes sure a lane is on the run queue at most once and
 * runs on at most one worker at a time:
 *
 *   IDLE --(dispatcher pushes, exchange 0->1)--> SCHEDULED (queued, running
 *   or waiting out a retry backoff) --(runner finds the mailbox empty, stores
 *   0, re-checks)--> IDLE
 *
 * Invariant: a non-empty mailbox (or a delivery in `cur`) implies SCHEDULED.
 * Each IDLE->SCHEDULED transition takes a subscription reference and counts
 * in bus->busy_lanes; the matching ->IDLE drops both.
 */
#ifndef EB_LANE_H
#define EB_LANE_H

#include <eventbus/eventbus.h>

#include <stdatomic.h>

#include "sync.h"

typedef struct eb__lane {
    /* Dispatcher side. */
    eb__ring mbox;
    struct eb_subscription *sub;
    unsigned index;
    /* CONCURRENT lanes: 1 + the worker that prefers to run it (runq_pop), so
       that an event's deliveries stay on one core; 0: none. */
    unsigned home;
    int64_t queued_at;        /* lanes with a home: coarse monotonic time it
                                 joined the run queue (runq_pop); protected
                                 by bus->rq_lock */
    uint64_t touch;           /* bus->touch_gen when last touched; token-protected */
    _Atomic uint64_t pushed;  /* written by the dispatcher only (relaxed) */
    _Atomic uint64_t evicted; /* dropped from the mailbox by DROP_OLDEST; ditto */
    atomic_int state;         /* 0 idle, 1 scheduled; see above */
    /* Set (seq_cst) by the dispatcher before it stalls on this full mailbox;
       the runner clears it and wakes the pool after it made room. */
    atomic_bool dispatcher_waiting;
    /* The tracked event the thread running this lane currently waits on (or
       NULL): a delivery of that event pushed here can never run. */
    _Atomic(eb_event *) wait_ticket;

    /* Runner side: touched only by the one worker running the lane. */
    struct eb__lane *rq_next, *rq_prev; /* protected by bus->rq_lock */
    eb_event *cur;                      /* delivery in progress or waiting for retry */
    /* Packed into the 8 bytes attempt and give_up took before last_rc:
       the lane's layout is part of the fan-out's speed (a field that moved
       the counters measured ×0.95). */
    uint16_t attempt; /* attempt number of cur, from 1 (at most 1000) */
    bool give_up;     /* the handler's failure is final: no retry
                         (eb__delivery_give_up) */
    int last_rc;      /* cur's last failure, while it waits to retry */
    /* Counters of finished deliveries. One writer at a time (the runner;
       the lane's state exchange hands it over), so bumped with a relaxed
       load and store, not a locked add; read relaxed by the stats. */
    _Atomic uint64_t done, delivered, failed, retried;
    atomic_bool in_backoff;     /* a timer will put the lane back on the run queue */
    _Atomic uint64_t timer_gen; /* generation of the armed backoff timer */
    /* When the handler call running now began (eb__now_coarse_ns, read once
       every RUN_CLOCK_EVERY calls of a turn: it may be the start of an
       earlier call of the same turn), 0 when none runs. Written by the
       runner around each call, read by
       eb_bus_shutdown to name the handlers that hold up a shutdown. Relaxed
       both ways: it is a diagnostic that publishes nothing else, and a
       stale value only misstates a duration. */
    _Atomic int64_t run_since;
} eb__lane;

struct eb_subscription {
    eb_bus *bus;
    eb_handler_fn fn;
    void *ctx;
    eb_delivery delivery;
    eb_overflow overflow;
    unsigned max_attempts;
    uint64_t backoff_initial_ns;
    uint64_t backoff_max_ns;
    unsigned nlanes;
    eb__lane *lanes;
    char *pattern;
    size_t pattern_len;
    char *name; /* the name it was given, else the pattern */
    bool named; /* it was given a name */

    unsigned rr; /* CONCURRENT round robin; protected by the dispatch token */

    /* References: 1 for the owner (dropped by unsubscribe or destroy), 1 while
       routed, 1 per scheduled lane, 1 per armed timer; plus EB__SUB_PIN while
       the dispatcher holds it in a stalled event's match set. The last one
       frees. A pin keeps the memory but never leads to a call once
       `cancelled` is set (the stalled event skips cancelled subscriptions),
       so eb_unsubscribe waits only for the low part (EB__SUB_REFS). */
    _Atomic uint64_t refs;
    atomic_bool cancelled;     /* set by the token holder when it unroutes */
    atomic_bool unsubscribing; /* eb_unsubscribe called */
    bool routed;               /* in the route table; protected by the token */

    /* Control-queue links; protected by bus->ctl_lock. */
    struct eb_subscription *ctl_next;
    int ctl_op; /* 1 add, 2 remove */
    int ctl_rc; /* result of the applied op; read after ctl_done */
    atomic_bool ctl_done;

    /* Registry links (bus->reg_head, or bus->gone_head when `gone`);
       protected by bus->reg_lock. */
    struct eb_subscription *reg_prev, *reg_next;
    /* Unsubscribed: listed in bus->gone_head until it is freed, so that a
       shutdown's report still names its handlers while they run (from one
       of them the unsubscribe does not wait for them; from elsewhere it
       waits). Set before the unsubscribe drops its reference (so the
       thread that frees it sees it). */
    bool gone;

    _Atomic uint64_t dropped; /* one writer: the token holder */

    /* Durable subscription state in the store, or NULL. Set before the
       subscription is routed, cleared after it is gone from routing. */
    struct eb__dsub *dsub;
};

/* Allocates a subscription with its lanes and mailboxes; NULL if out of
   memory. Options must be validated and defaults resolved. */
struct eb_subscription *eb__sub_new(eb_bus *bus, const char *pattern, size_t pattern_len,
                                    eb_handler_fn fn, void *ctx, const eb_subscribe_options *o,
                                    unsigned nlanes, unsigned mailbox);
void eb__sub_free(struct eb_subscription *s);

/* Lane for an event with this key (KEYED). */
unsigned eb__key_lane(const void *key, size_t len, unsigned nlanes);

static inline bool eb__lane_mbox_empty(const eb__lane *l)
{
    return eb__ring_size(&l->mbox) == 0;
}

#endif /* EB_LANE_H */
