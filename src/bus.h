/*
 * bus — the bus object: intake ring, dispatch token, run queue, workers,
 * control queue (subscribe/unsubscribe), timers, registry and counters.
 *
 * Lock order (a thread holding one may take only those after it):
 *   reg_lock -> ctl_lock -> rq_lock -> side_lock -> timers.lock -> depot.lock
 *   (and intake.mp_lock, taken only by contended publishers around a ring push)
 * In practice each is a leaf: no code path holds two at once, and no user
 * callback runs under any of them. The dispatch token is a trylock and is
 * never waited for while one of these is held.
 */
#ifndef EB_BUS_H
#define EB_BUS_H

#include <eventbus/eventbus.h>

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>

#include "event.h"
#include "lane.h"
#include "route.h"
#include "store_sqlite.h"
#include "sync.h"
#include "timer.h"

#define EB__DISPATCH_BATCH 128 /* events routed per token hold */
#define EB__HELD_PLAIN 1u
#define EB__HELD_SAME 2u
#define EB__TOUCH_MAX 256 /* lanes scheduled at the end of a step */
#define EB__INFLIGHT_BITS 20
#define EB__INFLIGHT_MASK ((UINT64_C(1) << EB__INFLIGHT_BITS) - 1)
#define EB__MAX_NEST 64 /* lanes a worker may run nested inside waits */
#define EB__CACHELINE 64

/*
 * The innermost wait of a handler on a worker, for the cycle checks
 * (cycle_check in bus.c): the event waited on (NULL: none), until when,
 * the lanes held up until it is done (the whole stack then) and the
 * delivery each was running. Written by its worker when a wait begins and
 * ends, read by the checker, all under `lock`: while the checker holds it
 * the waiting handler cannot return, so these lanes stay alive. Kept apart
 * from eb__worker, whose layout is part of the dispatch's speed.
 */
typedef struct eb__wframe {
    pthread_mutex_t lock;
    eb_event *ev;
    unsigned n;
    int64_t deadline;
    eb__lane *lane[EB__MAX_NEST + 1];
    eb_event *cur[EB__MAX_NEST + 1];
    /* Set by a cycle check: the wait on this event closes a cycle and
       returns EB_EDEADLK. Cleared by the wait. */
    _Atomic(eb_event *) brk;
} eb__wframe;

typedef struct eb__worker {
    eb_bus *bus;
    pthread_t thread;
    unsigned index;
    /* Lanes whose handlers are running on this thread, innermost last (a
       waiting handler runs other lanes on top of its own). Thread-local. */
    eb__lane *stack[EB__MAX_NEST + 1];
    unsigned depth;
    /* Counters, written by this worker only (relaxed), summed by stats. */
    _Atomic uint64_t delivered, failed, retried, dead_lettered, cancelled;
    uint64_t rng;  /* xorshift state for backoff jitter */
    bool spinning; /* counted in bus->spinners */
    /* References of finished inline events of one carrier not dropped yet
       (release_event): dropped together when another carrier's event
       finishes or the lane's turn ends. Thread-local. */
    eb__carrier *rel_c;
    unsigned rel_n;
    /* Events and lanes of this worker's last dispatch step (see
       hold_small_step). Thread-local. */
    unsigned last_n, last_lanes;
    /* That step took carriers of batches (see batching in bus.c). */
    bool batched;
} eb__worker;

struct eb_bus {
    /* Publisher-side line: touched by every publish. */
    eb__ring intake;
    /* Low EB__INFLIGHT_BITS: publish calls between their closing check and
       the end of their push; above: events accepted so far. One word, so a
       publish pays one locked RMW for both. */
    alignas(EB__CACHELINE) _Atomic uint64_t gate;
    _Atomic uint64_t carried;  /* events in carriers on the intake */
    atomic_bool carriers_made; /* the depot was given carrier blocks */
    atomic_int closing;

    /* Dispatcher state: protected by the token (acquire on take, release on
       drop, so each holder sees the previous holder's writes). */
    alignas(EB__CACHELINE) atomic_bool token;
    eb__route *route;
    uint64_t seq;
    uint64_t nonce;
    eb_event *pend_ev; /* event stalled on a full mailbox */
    eb__match *pend_m; /* its match set (pinned) */
    unsigned pend_i;   /* next subscription of pend_m to push to */
    /* Lanes pushed to in this step, scheduled at its end; see lane_touch. */
    eb__lane *touched[EB__TOUCH_MAX];
    unsigned ntouched;
    unsigned step_lanes; /* lanes the last step pushed to */
    uint64_t touch_gen;
    /* This step took one event off the intake: its lanes are scheduled at
       the end of the step, not at their first push (see lane_touch). */
    bool touch_defer;
    /* Events popped in the current batch, stamped, not yet routed. */
    eb_event *held[EB__DISPATCH_BATCH + EB__CARRIER_MAX];
    /* Of held[i], from its carrier (not the event): EB__HELD_PLAIN, an inline
       event of a carrier without keys; EB__HELD_SAME, its topic is the one of
       the event before it (EB__EV_SAME_TOPIC). See route_plain. */
    uint8_t held_plain[EB__DISPATCH_BATCH + EB__CARRIER_MAX];
    unsigned held_i, held_n;
    /* The match set of the held event routed last, while the next held event
       may reuse it (EB__EV_SAME_TOPIC). Set only inside dispatch_held, which
       leaves it NULL whenever it returns (a stall included): no memo lives
       across a routing change (ctl_apply), the side list or a pending event. */
    eb__match *memo;
    /* The full lane the pending event waits for. Only compared, never
       dereferenced, outside the token (the lane may be freed meanwhile). */
    _Atomic(eb__lane *) stall_lane;
    atomic_bool stall_relief; /* the stall lane made room since the stall */
    atomic_bool pend_retry;   /* pending for lack of memory: retry any time */
    _Atomic uint64_t dispatched, unrouted, dropped, cancelled; /* one writer: token holder */
    atomic_bool firing; /* a worker is moving due timer entries (timers_fire) */
    /* Real minus monotonic time, as memory_due last took it (0: not yet). */
    _Atomic int64_t clock_offset;

    /* Control queue: subscriptions to add to / remove from routing. */
    pthread_mutex_t ctl_lock;
    struct eb_subscription *ctl_head, *ctl_tail; /* protected by ctl_lock */
    atomic_uint ctl_pending;
    eb__ec ctl_ec; /* bumped when ops are applied or a cancelled sub drains */

    /* Events that must not wait for the intake (see side_push in bus.c). */
    pthread_mutex_t side_lock;
    eb_event **side;         /* protected by side_lock */
    size_t side_n, side_cap; /* protected by side_lock */
    atomic_size_t side_count;
    /* Side events taken by the dispatcher and not yet all routed: token. */
    eb_event **sb;
    size_t sb_i, sb_n;
    unsigned sb_gate; /* intake p_tail when the batch was taken */
    atomic_bool side_busy;

    /* Run queue of scheduled lanes. */
    alignas(EB__CACHELINE) pthread_mutex_t rq_lock;
    eb__lane *rq_head, *rq_tail; /* protected by rq_lock */
    atomic_uint rq_len;

    /* Parking. */
    alignas(EB__CACHELINE) eb__ec work_ec; /* bumped when there is new work */
    atomic_int idle;                       /* workers parked or about to */
    atomic_uint spinners;                  /* idle workers spinning, not parked */
    atomic_bool watcher;                   /* a parked worker watches the intake (park) */
    unsigned max_spinners;
    eb__ec space_ec; /* bumped after intake space frees */

    alignas(EB__CACHELINE) atomic_long busy_lanes; /* lanes SCHEDULED */
    atomic_bool stop;
    /* eb_bus_shutdown closed the bus (only its caller reads or writes this:
       no other call on the bus may run concurrently with it). */
    bool shutdown_begun;

    eb__timers timers;
    _Atomic uint64_t scheduled; /* delayed events in the timer heap */

    /* Durable store (cfg.store) and the events handed to it that the bus
       has accepted and not yet taken back from its writer (see
       eb__bus_store_done): the bus is not drained while any is out. */
    eb_store *store;
    _Atomic uint64_t store_inflight;
    eb__depot depot;

    pthread_mutex_t reg_lock;
    struct eb_subscription *reg_head; /* protected by reg_lock */
    /* Unsubscribed and not yet freed (their handlers may still run);
       protected by reg_lock. */
    struct eb_subscription *gone_head;
    unsigned nsubs; /* protected by reg_lock */

    eb_bus_config cfg;
    unsigned nworkers;
    eb__worker *workers;
    /* Wait cycles (cycle_check in bus.c): each worker's wait (wf[i] is
       workers[i]'s); one checker at a time, once every CYCLE_NS, and its
       scratch (allocated at the first check). */
    eb__wframe *wf;
    atomic_bool cyc_busy;
    _Atomic int64_t cyc_next;
    struct eb__cyc *cyc; /* owned by the checker (cyc_busy) */
};

/* Events accepted by publish calls so far, memory-only and durable alike
   (relaxed: a rate estimate for the store's writer). */
static inline uint64_t eb__bus_accepted(eb_bus *b)
{
    return atomic_load_explicit(&b->gate, memory_order_relaxed) >> EB__INFLIGHT_BITS;
}

/* ---- the store's writer hands events back (store_sqlite.c) ---------- */

/* Puts a committed (or replayed, or fired) event on the intake without
   waiting; false if the intake is full (retry later). */
bool eb__bus_inject(eb_bus *bus, eb_event *ev);
/* n events counted in store_inflight were injected or dropped. */
void eb__bus_store_done(eb_bus *bus, uint64_t n);
/* Counts n more events on their way from the store (replay, scheduled). */
void eb__bus_store_add(eb_bus *bus, uint64_t n);
/* Builds an event for the store's writer (logged, replayed or fired). */
eb_event *eb__bus_event_new(eb_bus *bus, const char *topic, const void *key, size_t key_len,
                            const void *payload, size_t len, const uint8_t *corr,
                            const uint8_t *caus);
/* Makes ev a replayed copy for sub only (takes a reference on sub). */
void eb__bus_replay_target(eb_bus *bus, eb_event *ev, struct eb_subscription *sub);
/* Releases an event reference from outside a worker. */
void eb__bus_event_unref(eb_bus *bus, eb_event *ev);
/* True if the calling thread is a worker of bus (running a handler). */
bool eb__bus_in_handler(const eb_bus *bus);
/* Called from a handler about to return a failure that no retry can
   mend: its delivery is dead-lettered at once (saga.c: a command without
   an aggregate id). */
void eb__delivery_give_up(void);
/* True if a handler of sub is on the calling worker's stack: the caller is
   that handler, or runs nested inside it while it waits (saga.c). */
bool eb__sub_on_stack(const struct eb_subscription *sub);
/* eb_publish_async (memory-only, blocking) of an event without payload
   that goes to sub only, not routed by its topic; corr may be NULL. saga.c's
   recovery, so that it runs on the lane of the instance it recovers. */
int eb__publish_only(eb_bus *bus, struct eb_subscription *sub, const char *topic, const void *key,
                     size_t key_len, const uint8_t corr[16], eb_ticket **ticket);
/* True for an event published with eb__publish_only (or a durable
   subscription's replay): a handler of a subscription that is not durable
   sees it only from eb__publish_only. */
bool eb__event_is_only(const eb_event *ev);

#endif /* EB_BUS_H */
