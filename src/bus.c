/*
 * bus — intake, dispatch, workers, publishing, waiting and lifecycle.
 *
 * Threads
 *  - Publishers (any thread) build an event from their thread cache and push
 *    its pointer on the intake ring (ck_ring MPMC producer side). No lock, no
 *    malloc, no system call unless a worker is parked (then one futex wake).
 *  - Workers loop: (1) fire due backoff timers, (2) take the dispatch token
 *    if it is free and there is intake (flat combining: whoever holds it
 *    drains up to EB__DISPATCH_BATCH events in ring order, routes them and pushes
 *    one delivery per matching subscription into a lane mailbox), (3) take a
 *    lane from the run queue and run up to LANE_BATCH of its deliveries,
 *    (4) spin briefly, then park on work_ec.
 *  - The token holder is the only consumer of the intake ring and the only
 *    producer of every mailbox, so it uses ck_ring's single-consumer dequeue
 *    and single-producer enqueue; the token's acquire/release hands these
 *    roles from one worker to the next. It also owns the routing table, and
 *    applies subscribe/unsubscribe operations from the control queue between
 *    events, so routing needs no locks and no epoch reclamation.
 *  - A waiting caller on a worker thread (publish-and-wait, ticket wait,
 *    unsubscribe, publish on a full ring) keeps running steps (2)-(3) while it
 *    waits, recording the lanes it is running so that a wait that needs one
 *    of them returns EB_EDEADLK; and publishing its wait (bus->wf) so that
 *    a cycle of waits across workers is found and broken (cycle_check).
 *
 * Ordering: one token holder at a time pops the intake ring in order and
 * stamps the sequence, so every mailbox receives events in sequence order.
 *
 * Shutdown: `closing` is set; publishers that entered before it (inflight)
 * finish their push; workers keep going until, under the token, no lane is
 * scheduled and the intake, side list and control queue are empty. Then
 * `stop` is set and the workers exit.
 */
#include "bus.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define LANE_BATCH 64      /* deliveries run per lane turn */
#define IDLE_SPINS 2048    /* idle loops (~100 us) before a spinning worker parks */
#define WATCH_NS 1000000   /* a parked worker's look at the intake while others work */
#define QUIET_LOOKS 8      /* looks at an intake nobody used before the watcher retires */
#define HOLD_BELOW 16      /* a stream's steps smaller than this wait HOLD_PAUSES first */
#define HOLD_PAUSES 32     /* pause instructions (~0.5-1.5 us) before such a step */
#define RUN_CLOCK_EVERY 16 /* handler calls of a lane turn per clock read */
#define WAIT_SPINS 2000    /* loops before an outside waiter sleeps */
#define CYCLE_NS 5000000   /* how often waiting handlers look for a wait cycle */
#define MAX_WORKERS 256
#define MAX_LANES 1024
#define MAX_ATTEMPTS 1000
#define MAX_MAILBOX ((1u << 20) - 1)
#define MAX_INTAKE ((1u << 24) - 1)
#define DL_PREFIX EB__DL_WORD "."

static __thread eb__worker *tls_worker;

/* Timer entries are lanes (backoff) or, tagged in bit 0, delayed events. */
#define EV_TIMER_TAG(ev) ((void *)((uintptr_t)(ev) | 1u))
#define IS_EV_TIMER(p) (((uintptr_t)(p)&1u) != 0)
#define EV_TIMER_UNTAG(p) ((eb_event *)((uintptr_t)(p) & ~(uintptr_t)1u))

static void runq_push(eb_bus *b, eb__lane *l);
static bool help_once(eb_bus *b, eb__worker *w);

/* ---- small helpers ---------------------------------------------------- */

static eb__worker *self_worker(const eb_bus *b)
{
    eb__worker *w = tls_worker;
    return w != NULL && w->bus == b ? w : NULL;
}

static void logf_(eb_bus *b, eb_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(eb_bus *b, eb_log_level lvl, const char *fmt, ...)
{
    if (b->cfg.log == NULL || lvl < b->cfg.log_level)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    b->cfg.log(lvl, msg, b->cfg.log_ctx);
}

static void wake_pool(eb_bus *b)
{
    eb__ec_inc(&b->work_ec);
}

/*
 * After new work was made visible and a full fence: wake parked workers only
 * if nobody spins. A spinner that is about to park decrements `spinners`,
 * increments `idle` and re-checks for work, all seq_cst after our store, so
 * if we still saw it spinning it will see the work (Dekker); and a worker
 * that parked without spinning is not woken for work a spinner takes anyway,
 * which would cost a futex wake and a context switch per publish.
 */
static void wake_for_work(eb_bus *b)
{
    if (atomic_load_explicit(&b->idle, memory_order_seq_cst) > 0 &&
        atomic_load_explicit(&b->spinners, memory_order_seq_cst) == 0)
        wake_pool(b);
}

/*
 * wake_for_work for a publisher: while some worker is awake it comes round
 * to the intake itself, so a publisher wakes a parked one only when every
 * worker is parked, no parked one watches the intake (see park), or the
 * intake is an eighth full (the awake ones may be held up in handlers). A
 * handler publishing wakes one as before.
 * Waking one for every publish that finds a worker parked cost the
 * publisher a futex system call, and the woken worker, placed next to the
 * publisher by the scheduler, then took that CPU from it.
 */
static void publisher_wake(eb_bus *b)
{
    int idle = atomic_load_explicit(&b->idle, memory_order_seq_cst);
    if (idle > 0 && atomic_load_explicit(&b->spinners, memory_order_seq_cst) == 0 &&
        ((unsigned)idle >= b->nworkers ||
         !atomic_load_explicit(&b->watcher, memory_order_seq_cst) ||
         eb__ring_size(&b->intake) >= eb__ring_capacity(&b->intake) / 8 ||
         /* A handler's events: a parked worker runs them in parallel with
            the rest of its lane (sagas measured x0.93 without). */
         self_worker(b) != NULL))
        wake_pool(b);
}

/* Called after making work visible with a store: the seq_cst fence orders
   that store before the load of `idle`, pairing with park()'s increment of
   idle before its re-check for work (Dekker), so no wake-up is lost. */
static void wake_if_idle(eb_bus *b)
{
    eb__fence_seq_cst();
    wake_for_work(b);
}

static bool token_take(eb_bus *b)
{
    /* Acquire: see everything the previous holder wrote (routing table,
       pending event, ring consumer/producer indices). */
    if (atomic_load_explicit(&b->token, memory_order_relaxed))
        return false;
    return !atomic_exchange_explicit(&b->token, true, memory_order_acquire);
}

static void token_drop(eb_bus *b)
{
    atomic_store_explicit(&b->token, false, memory_order_release);
}

static bool in_stack(const eb__worker *w, const eb__lane *l)
{
    for (unsigned i = 0; i < w->depth; i++)
        if (w->stack[i] == l)
            return true;
    return false;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static struct timespec mono_ts(int64_t deadline)
{
    return eb__ts_from_ns(deadline);
}

/* ---- subscriptions: references ---------------------------------------- */

/* A stalled event's pin: counted apart from the references eb_unsubscribe
   waits for (see lane.h). */
#define EB__SUB_PIN ((uint64_t)1 << 32)
#define EB__SUB_REFS(r) ((r) & (EB__SUB_PIN - 1))

static void sub_ref_n(struct eb_subscription *s, uint64_t n)
{
    /* Relaxed: the caller holds a reference or the token, which keeps s. */
    atomic_fetch_add_explicit(&s->refs, n, memory_order_relaxed);
}

static void sub_ref(struct eb_subscription *s)
{
    sub_ref_n(s, 1);
}

static void reg_unlink(eb_bus *b, struct eb_subscription *s, bool to_gone);

static void sub_unref_n(eb_bus *b, struct eb_subscription *s, uint64_t n)
{
    /* Read before the decrement: once it is done, the owner may free s. */
    bool cancelled = atomic_load_explicit(&s->cancelled, memory_order_relaxed);
    /* acq_rel: the thread freeing s must see every other holder's writes. */
    uint64_t left = atomic_fetch_sub_explicit(&s->refs, n, memory_order_acq_rel) - n;
    if (left == 0) {
        if (s->gone)
            reg_unlink(b, s, false);
        eb__sub_free(s);
        eb__ec_inc(&b->ctl_ec);
    } else if (EB__SUB_REFS(left) == 1 && cancelled) {
        /* An unsubscribe may wait for exactly this. */
        eb__ec_inc(&b->ctl_ec);
    }
}

static void sub_unref(eb_bus *b, struct eb_subscription *s)
{
    sub_unref_n(b, s, 1);
}

/* ---- run queue -------------------------------------------------------- */

/*
 * A worker's own loop (not a wait inside a handler) whose last dispatch step
 * took batches (carriers of eb_publish_batch, EB__CARRIER_MAX events to one
 * intake entry). Such a worker does not wake a parked one to share its work:
 * dispatching a batch costs little per event, so the second worker would
 * only take turns with it, and with a publisher busy on the other CPU the
 * scheduler puts the woken worker next to that publisher, where it preempts
 * it (~25 k wakes a second: batches of 64 measured 28-30 M events/s with the
 * default pool of 2 workers and 38-40 M with one). It wakes one when a
 * second lane is queued (its handlers can run in parallel); a handler that
 * blocks leaves the intake to the watcher (see park), as publishers do.
 */
static bool batching(const eb__worker *w)
{
    return w != NULL && w->depth == 0 && w->batched;
}

static void runq_push(eb_bus *b, eb__lane *l)
{
    int64_t now = l->home != 0 ? eb__now_coarse_ns() : 0;
    pthread_mutex_lock(&b->rq_lock);
    l->queued_at = now;
    l->rq_next = NULL;
    l->rq_prev = b->rq_tail;
    if (b->rq_tail != NULL)
        b->rq_tail->rq_next = l;
    else
        b->rq_head = l;
    b->rq_tail = l;
    pthread_mutex_unlock(&b->rq_lock);
    /* seq_cst RMW: orders the queue before the load of idle (Dekker with
       park). */
    unsigned before = atomic_fetch_add_explicit(&b->rq_len, 1, memory_order_seq_cst);
    if (before > 0 || !batching(self_worker(b)))
        wake_for_work(b);
}

/*
 * Takes the oldest lane (a worker's own loop: fairness), or the newest one
 * (newest true: a worker helping while it waits). The newest lane is the
 * one most likely to hold what the waiter waits for — the delivery its own
 * nested publish just queued — so helping finishes waits instead of stacking
 * ever more waiting handlers on the worker's stack.
 *
 * A worker's own loop prefers the lanes of its home (CONCURRENT lanes, see
 * eb__lane.home): when the oldest lane is another worker's, it takes the
 * first of the next RQ_SCAN lanes that is its own or has no home, else the
 * oldest anyway. The oldest is passed over only while it has waited less
 * than RQ_PASS_NS (coarse clock: a few ms at most): its home worker may be
 * busy for long (a blocking handler), and under steady load there is always
 * another lane to prefer. (A limit of 2 or 8 pass-overs instead cost fan-out
 * to 4 CONCURRENT subscribers x0.81-0.94.)
 */
#define RQ_SCAN 8
#define RQ_PASS_NS 2000000
static eb__lane *runq_pop(eb_bus *b, bool newest, const eb__worker *w)
{
    if (atomic_load_explicit(&b->rq_len, memory_order_relaxed) == 0)
        return NULL;
    pthread_mutex_lock(&b->rq_lock);
    eb__lane *l = newest ? b->rq_tail : b->rq_head;
    if (!newest && l != NULL && l->home != 0 && l->home != w->index + 1 &&
        eb__now_coarse_ns() - l->queued_at < RQ_PASS_NS) {
        eb__lane *c = l->rq_next;
        for (unsigned k = 0; c != NULL && k < RQ_SCAN; k++, c = c->rq_next) {
            if (c->home == 0 || c->home == w->index + 1) {
                l = c;
                break;
            }
        }
    }
    if (l != NULL) {
        if (l->rq_prev != NULL)
            l->rq_prev->rq_next = l->rq_next;
        else
            b->rq_head = l->rq_next;
        if (l->rq_next != NULL)
            l->rq_next->rq_prev = l->rq_prev;
        else
            b->rq_tail = l->rq_prev;
        atomic_fetch_sub_explicit(&b->rq_len, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&b->rq_lock);
    return l;
}

/* IDLE -> SCHEDULED; see lane.h. Returns false if the lane was scheduled
   already. The exchange is seq_cst: it follows the mailbox push, and the
   runner's store of 0 precedes its re-check of the mailbox, so either the
   runner sees the new item or we see state 0. */
static bool lane_claim(eb_bus *b, eb__lane *l)
{
    if (atomic_exchange_explicit(&l->state, 1, memory_order_seq_cst) != 0)
        return false;
    sub_ref(l->sub);
    atomic_fetch_add_explicit(&b->busy_lanes, 1, memory_order_seq_cst);
    return true;
}

/* Claims an idle lane and puts it on the run queue. */
static void lane_schedule(eb_bus *b, eb__lane *l)
{
    if (lane_claim(b, l))
        runq_push(b, l);
}

/* SCHEDULED -> IDLE, or back on the run queue when more work waits. */
static void lane_release(eb_bus *b, eb__lane *l)
{
    if (l->cur != NULL || !eb__lane_mbox_empty(l)) {
        runq_push(b, l);
        return;
    }
    atomic_store_explicit(&l->state, 0, memory_order_seq_cst);
    if (!eb__lane_mbox_empty(l) &&
        atomic_exchange_explicit(&l->state, 1, memory_order_seq_cst) == 0) {
        runq_push(b, l);
        return;
    }
    struct eb_subscription *s = l->sub;
    atomic_fetch_sub_explicit(&b->busy_lanes, 1, memory_order_seq_cst);
    sub_unref(b, s);
}

/* ---- completion -------------------------------------------------------- */

static void track_finish(eb_bus *b, eb_event *ev, int rc, bool count)
{
    if (!(ev->flags & EB__EV_TRACKED))
        return;
    if (eb__event_finish(ev, rc, count) &&
        atomic_load_explicit(&ev->ext->waiter_worker, memory_order_seq_cst))
        wake_pool(b);
}

/* A delivery that ends without running (dropped or cancelled). */
static void delivery_abort(eb_bus *b, eb_event *ev, int rc)
{
    track_finish(b, ev, rc, true);
    eb__event_unref(ev, &b->depot);
}

/* Drops the references that release_event put aside. */
static void release_flush(eb_bus *b, eb__worker *w)
{
    if (w->rel_n > 0)
        eb__carrier_unref(&b->depot, w->rel_c, w->rel_n);
    w->rel_c = NULL;
    w->rel_n = 0;
}

/* Drops a finished delivery's reference. Consecutive deliveries of one
   carrier's inline events (a lane running a batch) drop theirs with one
   atomic update of the carrier's count instead of one each; run_lane
   drops what is left at the end of its turn. */
static void release_event(eb_bus *b, eb__worker *w, eb_event *ev)
{
    if (!(ev->flags & EB__EV_INLINE)) {
        eb__event_unref(ev, &b->depot);
        return;
    }
    eb__carrier *c = eb__event_carrier(ev);
    if (c != w->rel_c) {
        release_flush(b, w);
        w->rel_c = c;
    }
    w->rel_n++;
}

static void lane_finish(eb_bus *b, eb__worker *w, eb__lane *l, int rc)
{
    eb_event *ev = l->cur;
    l->cur = NULL;
    l->attempt = 1;
    eb__count(&l->done, 1);
    track_finish(b, ev, rc, true);
    release_event(b, w, ev);
}

/* ---- intake ----------------------------------------------------------- */

/* Puts an internal event (a dead letter, a due delayed event) where the
   dispatcher will find it, without ever blocking: the ring if it has room
   and no side events are pending, else the side list, behind them (a due
   event that found the ring full went there, and the next must not
   overtake it). */
static int side_push(eb_bus *b, eb_event *ev);

static int enqueue_internal(eb_bus *b, eb_event *ev)
{
    if (atomic_load_explicit(&b->side_count, memory_order_acquire) == 0 &&
        !atomic_load_explicit(&b->side_busy, memory_order_acquire) &&
        eb__ring_push_mp(&b->intake, ev)) {
        wake_if_idle(b);
        return EB_OK;
    }
    return side_push(b, ev);
}

/*
 * The side list takes events that must not wait for the intake: dead letters
 * and due delayed events when the intake is full, and events published from
 * a handler whose own lane holds up dispatch (waiting would deadlock). The
 * dispatcher routes a batch of side events only after every intake entry
 * that was there when it took the batch (gate), and while side events are
 * pending, handlers publish to the side list too: so events keep the order
 * of the thread that published them.
 */
static int side_push(eb_bus *b, eb_event *ev)
{
    pthread_mutex_lock(&b->side_lock);
    if (b->side_n == b->side_cap) {
        size_t cap = b->side_cap ? b->side_cap * 2 : 64;
        eb_event **v = realloc(b->side, cap * sizeof(*v));
        if (v == NULL) {
            pthread_mutex_unlock(&b->side_lock);
            return EB_ENOMEM;
        }
        b->side = v;
        b->side_cap = cap;
    }
    b->side[b->side_n++] = ev;
    atomic_fetch_add_explicit(&b->side_count, 1, memory_order_seq_cst);
    pthread_mutex_unlock(&b->side_lock);
    wake_if_idle(b);
    return EB_OK;
}

/* ---- dispatch --------------------------------------------------------- */

enum { PUSH_OK, PUSH_FULL };

static eb__lane *pick_lane(struct eb_subscription *s, const eb_event *ev)
{
    switch (s->delivery) {
    case EB_DELIVERY_KEYED:
        return &s->lanes[ev->key_len ? eb__key_lane(eb__event_key(ev), ev->key_len, s->nlanes) : 0];
    case EB_DELIVERY_CONCURRENT: {
        /* Round robin, skipping full lanes so one slow delivery does not
           stall dispatch while another lane has room. */
        unsigned start = s->rr++ % s->nlanes;
        for (unsigned i = 0; i < s->nlanes; i++) {
            eb__lane *l = &s->lanes[(start + i) % s->nlanes];
            if (eb__ring_size(&l->mbox) < eb__ring_capacity(&l->mbox))
                return l;
        }
        return &s->lanes[start];
    }
    default:
        return &s->lanes[0];
    }
}

/*
 * A lane is scheduled when the step first pushes to it (so a runner can start
 * at once, in parallel with the rest of the step) and once more at the end of
 * the step (touch_flush), instead of one atomic exchange per delivery. The
 * second exchange covers a runner that drained the lane and went IDLE in
 * between: scheduling only has to follow the last push, and the runner's
 * "store IDLE, re-check the mailbox" meets our later exchange.
 */
static void lane_touch(eb_bus *b, eb__lane *l)
{
    if (l->touch == b->touch_gen)
        return;
    l->touch = b->touch_gen;
    if (!b->touch_defer)
        lane_schedule(b, l);
    b->touched[b->ntouched++] = l;
    if (b->ntouched == EB__TOUCH_MAX) {
        for (unsigned i = 0; i < b->ntouched; i++)
            lane_schedule(b, b->touched[i]);
        b->ntouched = 0;
        b->touch_gen++;
    }
}

/*
 * Schedules the lanes the step touched. With `direct` not NULL, a step that
 * took a single event off the intake and touched a single idle lane, while
 * no lane waits on the run queue, hands that lane to the caller instead (it
 * is SCHEDULED, as if popped off the run queue): the caller runs it at once,
 * without the run queue's lock and counters. There is nothing else in the
 * step to run in parallel with it, and nobody queued before it.
 */
static void touch_flush(eb_bus *b, eb__lane **direct)
{
    if (direct != NULL && b->touch_defer && b->ntouched == 1 &&
        atomic_load_explicit(&b->rq_len, memory_order_relaxed) == 0) {
        if (lane_claim(b, b->touched[0]))
            *direct = b->touched[0];
    } else {
        for (unsigned i = 0; i < b->ntouched; i++)
            lane_schedule(b, b->touched[i]);
    }
    b->ntouched = 0;
    b->touch_gen++;
    b->touch_defer = false;
}

/* Pushes one delivery of ev (whose reference for it is already taken; an
   untracked ev must not be touched once pushed: a runner may free it). */
static int push_one(eb_bus *b, eb_event *ev, struct eb_subscription *s, bool tracked)
{
    eb__lane *l = pick_lane(s, ev);
    /* A durable subscription tracks the log sequences it was given before
       the runner can finish them (its checkpoint is their low-water mark). */
    bool logged = s->dsub != NULL && (ev->flags & EB__EV_LOGGED);
    if (logged)
        eb__dsub_track(s->dsub, ev);
    while (!eb__ring_push_sp(&l->mbox, ev)) {
        if (s->overflow == EB_OVERFLOW_DROP_NEWEST) {
            eb__count(&b->dropped, 1);
            eb__count(&s->dropped, 1);
            delivery_abort(b, ev, EB_EOVERFLOW);
            return PUSH_OK;
        }
        if (s->overflow == EB_OVERFLOW_DROP_OLDEST) {
            void *old;
            /* Races with the runner's multi-consumer pop; whoever wins the
               CAS owns the item. If the runner won, the push now fits. */
            if (eb__ring_pop_mc(&l->mbox, &old)) {
                eb__count(&b->dropped, 1);
                eb__count(&s->dropped, 1);
                eb__count(&l->evicted, 1);
                delivery_abort(b, old, EB_EOVERFLOW);
            }
            continue;
        }
        /* Block: tell the runner we wait, then look again (Dekker with the
           runner's pop followed by its fence and load of the flag). */
        atomic_store_explicit(&b->stall_relief, false, memory_order_relaxed);
        atomic_store_explicit(&b->stall_lane, l, memory_order_seq_cst);
        atomic_store_explicit(&l->dispatcher_waiting, true, memory_order_seq_cst);
        if (!eb__ring_push_sp(&l->mbox, ev)) {
            if (logged)
                eb__dsub_untrack(s->dsub);
            return PUSH_FULL;
        }
        atomic_store_explicit(&l->dispatcher_waiting, false, memory_order_relaxed);
        atomic_store_explicit(&b->stall_lane, NULL, memory_order_relaxed);
        break;
    }
    eb__count(&l->pushed, 1);
    if (tracked) {
        /* Pairs with worker_wait's store of wait_ticket then scan of its
           lanes' mailboxes: one of us sees the other. (The ticket's
           reference keeps a tracked event alive here.) */
        eb__fence_seq_cst();
        if (atomic_load_explicit(&l->wait_ticket, memory_order_relaxed) == ev) {
            atomic_store_explicit(&ev->ext->deadlock, true, memory_order_seq_cst);
            wake_pool(b);
        }
    }
    lane_touch(b, l);
    return PUSH_OK;
}

static void pending_clear(eb_bus *b)
{
    eb__match *m = b->pend_m;
    atomic_store_explicit(&b->stall_lane, NULL, memory_order_relaxed);
    if (m != NULL) {
        for (unsigned j = 0; j < m->n; j++)
            sub_unref_n(b, m->subs[j], EB__SUB_PIN);
        eb__match_unpin(m);
    }
    b->pend_ev = NULL;
    b->pend_m = NULL;
    b->pend_i = 0;
}

/* Pushes ev's deliveries from index i on. Returns false when it stalled (the
   event is then pending and holds the token holder's attention). */
static bool push_from(eb_bus *b, eb_event *ev, eb__match *m, unsigned i)
{
    /* Read first: an untracked event's intake reference went to the first
       delivery, so it may be freed as soon as its last delivery is pushed. */
    bool tracked = (ev->flags & EB__EV_TRACKED) != 0;
    unsigned n = m->n;
    for (; i < n; i++) {
        struct eb_subscription *s = m->subs[i];
        if (atomic_load_explicit(&s->cancelled, memory_order_relaxed)) {
            eb__count(&b->cancelled, 1);
            delivery_abort(b, ev, EB_ECANCELED);
            continue;
        }
        if (s->dsub != NULL && (ev->flags & (EB__EV_LOGGED | EB__EV_REPLAY)) == EB__EV_LOGGED &&
            !eb__dsub_route(s->dsub, ev)) {
            /* A durable subscription still replaying: its replay covers ev. */
            delivery_abort(b, ev, EB_OK);
            continue;
        }
        if (push_one(b, ev, s, tracked) == PUSH_FULL) {
            if (b->pend_ev == NULL) {
                /* Keep the match set and its subscriptions alive while the
                   event waits; routing changes may drop them meanwhile. */
                m = eb__match_keep(b->route, m);
                for (unsigned j = 0; j < m->n; j++)
                    sub_ref_n(m->subs[j], EB__SUB_PIN);
                b->pend_ev = ev;
                b->pend_m = m;
            }
            b->pend_i = i;
            return false;
        }
    }
    if (b->pend_ev == ev)
        pending_clear(b);
    /* Counted once every delivery is in its mailbox (or dropped). */
    eb__count(&b->dispatched, 1);
    if (tracked) {
        /* With nothing routed, the guard ends here; else the first delivery
           took it over (route_event). Either may let the waiter return and
           drop the ticket while we still look at the event (push_one's
           deadlock check, track_finish): the intake's reference, kept for a
           tracked event, holds it until here. */
        if (n == 0)
            track_finish(b, ev, EB_OK, false);
        eb__event_unref(ev, &b->depot);
    } else if (n == 0) {
        eb__event_unref(ev, &b->depot); /* the intake's reference */
    }
    return true;
}

/* Routes one event taken off the intake, to the subscriptions of memo if
   not NULL (the event before it had the same topic, and the routes have not
   changed since). If used is not NULL, *used is the match set the event
   took when it could serve the next one (routed to the end, not a replay),
   else NULL. Returns false when it stalled. */
static bool route_event(eb_bus *b, eb_event *ev, eb__match *memo, eb__match **used)
{
    eb__match *m;
    if (used != NULL)
        *used = NULL;
    if (memo != NULL) {
        m = memo;
    } else if (ev->flags & EB__EV_REPLAY) {
        /* A replayed event goes to its durable subscription only (if that is
           still routed), which it kept alive with a reference. */
        struct eb_subscription *t = ev->ext->target;
        bool live =
            t != NULL && t->routed && !atomic_load_explicit(&t->cancelled, memory_order_relaxed);
        m = eb__route_only(b->route, live ? t : NULL);
        if (m != NULL && t != NULL) {
            ev->ext->target = NULL;
            sub_unref(b, t);
        }
    } else {
        m = eb__route_match(b->route, ev->topic, ev->topic_len);
    }
    if (m == NULL) {
        /* Out of memory while routing: keep the event pending and retry. */
        b->pend_ev = ev;
        b->pend_m = NULL;
        b->pend_i = 0;
        atomic_store_explicit(&b->pend_retry, true, memory_order_relaxed);
        return false;
    }
    bool tracked = (ev->flags & EB__EV_TRACKED) != 0;
    if (__builtin_expect(tracked, 0) && m->n != 1) {
        /* The counts hold the publisher's guard, which becomes the first
           delivery's count: the waiter cannot see none remaining before the
           last delivery is pushed and finished. A single match (the usual
           case, and what the publisher wrote) writes nothing to the line the
           waiter spins on. With none, push_from ends the guard. */
        ev->ext->matched = m->n;
        if (m->n > 1)
            atomic_fetch_add_explicit(&ev->ext->counts, m->n - 1, memory_order_relaxed);
    }
    /* One reference per delivery. An untracked event's intake reference
       becomes the first one; a tracked event keeps it until push_from's end,
       so that it needs one more. */
    if (m->n == 0)
        eb__count(&b->unrouted, 1);
    if (m->n + tracked > 1)
        eb__event_ref(ev, m->n + tracked - 1);
    /* Read before the push: ev may be freed once its last delivery is in. A
       replayed event's set is the scratch one, for one target: no memo. */
    bool replay = (ev->flags & EB__EV_REPLAY) != 0;
    if (!push_from(b, ev, m, 0))
        return false;
    if (used != NULL && !replay)
        *used = m;
    return true;
}

/*
 * Routes an event of a plain carrier (held_plain: inline events of a batch
 * without keys, so never tracked, replayed or logged) whose topic is the
 * one before it, with that event's match set m (b->memo). With one plain
 * subscription to push to (the usual case) the event itself is not read:
 * its lines go from the publisher's core to the lane runner's only, not to
 * the dispatcher's too. Otherwise, as route_event.
 */
static bool route_plain(eb_bus *b, eb_event *ev, eb__match *m)
{
    struct eb_subscription *s;
    if (m->n != 1 || (s = m->subs[0])->dsub != NULL ||
        atomic_load_explicit(&s->cancelled, memory_order_relaxed))
        return route_event(b, ev, m, &b->memo);
    if (push_one(b, ev, s, false) == PUSH_FULL) {
        /* Stalled: push_from makes it pending. The memo must not outlive a
           stall (routing may change before the next step). */
        b->memo = NULL;
        if (!push_from(b, ev, m, 0))
            return false;
        b->memo = m;
        return true;
    }
    eb__count(&b->dispatched, 1);
    return true;
}

static bool resume_pending(eb_bus *b)
{
    eb_event *ev = b->pend_ev;
    if (b->pend_m == NULL) {
        b->pend_ev = NULL;
        atomic_store_explicit(&b->pend_retry, false, memory_order_relaxed);
        return route_event(b, ev, NULL, NULL);
    }
    return push_from(b, ev, b->pend_m, b->pend_i);
}

static void stamp(eb_bus *b, eb_event *ev, int64_t now)
{
    eb__event_stamp(ev, ++b->seq, now, b->nonce);
}

static void ctl_apply(eb_bus *b);

/* Routes the events of the last batch that are still held (a stall stopped
   the batch). Returns false when it stalled again. */
static bool dispatch_held(eb_bus *b)
{
    while (b->held_i < b->held_n) {
        unsigned plain = b->held_plain[b->held_i];
        eb_event *ev = b->held[b->held_i++];
        if (plain == (EB__HELD_PLAIN | EB__HELD_SAME) && b->memo != NULL) {
            if (!route_plain(b, ev, b->memo))
                return false;
            continue;
        }
        /* An event flagged by eb_publish_batch follows its carrier
           predecessor in held[]; the memo is that event's set if the
           iteration just before routed it to the end. */
        eb__match *memo = (ev->flags & EB__EV_SAME_TOPIC) ? b->memo : NULL;
        if (!route_event(b, ev, memo, &b->memo))
            return false;
    }
    b->memo = NULL;
    b->held_i = b->held_n = 0;
    return true;
}

static bool dispatch_batch(eb_bus *b);

/*
 * Routes side-list events (see side_push): takes the list when the previous
 * batch is done and notes the intake's producer position (gate); routes the
 * batch once the intake has been consumed up to that gate. Returns false when
 * it stalled; sets *progress when it routed something. The caller holds the
 * token.
 */
static bool dispatch_side(eb_bus *b, bool *progress)
{
    if (b->sb_i == b->sb_n && atomic_load_explicit(&b->side_count, memory_order_acquire) > 0) {
        free(b->sb);
        pthread_mutex_lock(&b->side_lock);
        b->sb = b->side;
        b->sb_n = b->side_n;
        b->sb_i = 0;
        b->side = NULL;
        b->side_n = b->side_cap = 0;
        /* side_busy before side_count drops (release): a handler that sees
           the count at 0 (acquire, intake_push) sees side_busy too and
           joins the side list, behind its events we just took. Set after
           the count, a handler publishing in between went to the intake
           below the gate and was routed before its earlier side events
           (found by an audit: 1–19 inversions in 5 M events). */
        atomic_store_explicit(&b->side_busy, true, memory_order_relaxed);
        atomic_store_explicit(&b->side_count, 0, memory_order_release);
        pthread_mutex_unlock(&b->side_lock);
        /* Entries committed before we took the list are below this. */
        b->sb_gate = eb__ring_produced(&b->intake);
    }
    if (b->sb_i == b->sb_n)
        return true;
    /* Earlier intake entries first (their leftovers too). */
    if ((int)(eb__ring_consumed(&b->intake) - b->sb_gate) < 0 || b->held_i != b->held_n)
        return true;
    int64_t now = eb__now_real_ns();
    while (b->sb_i < b->sb_n) {
        eb_event *ev = b->sb[b->sb_i++];
        stamp(b, ev, now);
        *progress = true;
        if (!route_event(b, ev, NULL, NULL))
            return false;
    }
    free(b->sb);
    b->sb = NULL;
    b->sb_i = b->sb_n = 0;
    atomic_store_explicit(&b->side_busy, false, memory_order_relaxed);
    return true;
}

/* One dispatch step; the caller holds the token. Returns whether it did
   anything. *direct: see touch_flush (NULL: no direct hand-over). */
static bool dispatch_locked(eb_bus *b, eb__lane **direct)
{
    bool progress = dispatch_batch(b);
    b->step_lanes = b->ntouched;
    touch_flush(b, direct);
    return progress;
}

static bool dispatch_batch(eb_bus *b)
{
    bool progress = false;
    if (atomic_load_explicit(&b->ctl_pending, memory_order_acquire) > 0) {
        ctl_apply(b);
        progress = true;
    }
    if (b->pend_ev != NULL) {
        if (!resume_pending(b))
            return progress;
        progress = true;
    }
    /* Leftovers of the last batch, then side events whose gate has passed. */
    if (!dispatch_held(b) || !dispatch_side(b, &progress))
        return true;
    /* Pop a whole batch first and prefetch the events: they were written on
       the publishers' cores, and issuing all the misses at once overlaps
       them instead of paying one cache-line transfer after another. */
    unsigned n = 0, pos, taken = 0, carriers = 0;
    unsigned avail = eb__ring_peek_sc(&b->intake, &pos);
    int64_t now = 0;
    while (n < EB__DISPATCH_BATCH && taken < avail) {
        void *p = eb__ring_at(&b->intake, pos + taken++);
        if (EB__IS_CARRIER(p)) {
            eb__carrier *c = EB__CARRIER_UNTAG(p);
            if (c->inl > 0) {
                /* Stamped once for its packed events: the event at index
                   i is the n + i-th of this batch. */
                if (now == 0)
                    now = eb__now_real_ns();
                c->seq0 = b->seq + 1 + n;
                c->ts_ns = now;
                c->nonce = b->nonce;
            }
            memcpy(&b->held[n], c->ev, c->n * sizeof(c->ev[0]));
            bool plain = c->inl == c->n && !c->keyed;
            for (unsigned i = 0; i < c->n; i++)
                b->held_plain[n + i] =
                    plain ? (uint8_t)(EB__HELD_PLAIN | ((c->same >> i & 1) ? EB__HELD_SAME : 0))
                          : 0;
            n += c->n;
            carriers += c->n > 1;
            atomic_fetch_sub_explicit(&b->carried, c->n, memory_order_relaxed);
            /* Its events hold it from now on, the inline ones by their
               references. */
            eb__carrier_put(&b->depot, c);
        } else {
            b->held_plain[n] = 0;
            b->held[n++] = p;
        }
    }
    if (taken > 0) {
        eb__ring_consume_sc(&b->intake, taken);
        if (tls_worker != NULL)
            tls_worker->batched = carriers > 0;
    }
    if (n > 0) {
        for (unsigned i = 0; i < n; i++) {
            if (b->held_plain[i])
                continue; /* stamped with their carrier, maybe never read */
            __builtin_prefetch(b->held[i], 1);
            __builtin_prefetch((char *)b->held[i] + 64, 1);
            __builtin_prefetch((char *)b->held[i] + 128, 0);
        }
        if (now == 0)
            now = eb__now_real_ns(); /* one clock read per batch */
        for (unsigned i = 0; i < n; i++) {
            eb_event *ev = b->held[i];
            if (b->held_plain[i] || (ev->flags & EB__EV_PACKED))
                b->seq++; /* its carrier's seq0 counted it */
            else
                stamp(b, ev, now);
        }
        b->held_n = n;
        b->held_i = 0;
        progress = true;
        /* A lone event whose publisher waits: its lane may be run at once by
           this worker (touch_flush). Not for fire-and-forget events: there
           the run queue lets the other workers share the lanes, which
           measured better for throughput (1 publisher x0.92-0.95). */
        b->touch_defer = n == 1 && (b->held[0]->flags & EB__EV_TRACKED);
        if (!dispatch_held(b))
            return true;
        /* Publishers asleep on a full intake are woken once it is half
           empty, not after every batch: each wake-up then buys them room
           for many events instead of one futex round trip per batch. */
        if (eb__ring_size(&b->intake) <= eb__ring_capacity(&b->intake) / 2)
            eb__ec_inc(&b->space_ec);
    }
    dispatch_side(b, &progress);
    return progress;
}

static bool dispatch_ready(eb_bus *b)
{
    if (atomic_load_explicit(&b->ctl_pending, memory_order_relaxed) > 0)
        return true;
    if (atomic_load_explicit(&b->pend_retry, memory_order_relaxed))
        return true;
    if (atomic_load_explicit(&b->stall_lane, memory_order_relaxed) != NULL)
        return atomic_load_explicit(&b->stall_relief, memory_order_acquire);
    return eb__ring_size(&b->intake) > 0 ||
           atomic_load_explicit(&b->side_count, memory_order_relaxed) > 0 ||
           atomic_load_explicit(&b->side_busy, memory_order_relaxed);
}

/*
 * A worker that keeps up with a stream of single publishes to one lane takes
 * a few events per step, and every step pulls the intake's lines from the
 * publisher, who then pays a cache-line transfer for its next push: the
 * publisher, not the worker, is the bottleneck, and the smaller the steps the
 * slower it gets (a faster lane runner made one publisher x0.87). So when
 * this worker's last step took a few events (2 to HOLD_BELOW) for one lane,
 * no lane waits to run, and the intake again holds a few, it waits
 * HOLD_PAUSES pause instructions first and then takes a bigger step. Single
 * waited-for events (the round trip) and steps for many lanes (fan-out,
 * where the workers are the bottleneck) do not wait.
 */
static void hold_small_step(eb_bus *b, const eb__worker *w)
{
    if (w == NULL || w->last_n < 2 || w->last_n >= HOLD_BELOW || w->last_lanes != 1 ||
        atomic_load_explicit(&b->rq_len, memory_order_relaxed) != 0)
        return;
    unsigned size = eb__ring_size(&b->intake);
    if (size > 1 && size < HOLD_BELOW)
        for (unsigned i = 0; i < HOLD_PAUSES; i++)
            ck_pr_stall();
}

static bool dispatch_step(eb_bus *b, eb__lane **direct)
{
    if (!dispatch_ready(b))
        return false;
    eb__worker *w = tls_worker;
    hold_small_step(b, w);
    if (!token_take(b))
        return false;
    uint64_t seq = b->seq;
    bool progress = dispatch_locked(b, direct);
    if (w != NULL) {
        w->last_n = (unsigned)(b->seq - seq);
        w->last_lanes = b->step_lanes;
    }
    token_drop(b);
    return progress;
}

/* ---- control queue (subscribe / unsubscribe) -------------------------- */

/*
 * Ends the backoff of the subscription's lanes now instead of at their
 * timers: the lanes go back on the run queue and discard their deliveries.
 * Their timer entries are taken out of the heap with the subscription
 * references they hold; before, a new entry due at once was added and the
 * old one kept its reference until its deadline, so eb_unsubscribe waited
 * out the whole backoff (up to backoff_max_ns; test
 * unsubscribe::unsubscribing_a_lane_in_a_long_backoff_returns_at_once).
 * The caller holds the token. A timer that fires meanwhile and loses the
 * exchange of in_backoff drops its own reference.
 */
static void cancel_backoffs(eb_bus *b, struct eb_subscription *s)
{
    for (unsigned i = 0; i < s->nlanes; i++) {
        eb__lane *l = &s->lanes[i];
        if (!atomic_load_explicit(&l->in_backoff, memory_order_seq_cst))
            continue;
        uint64_t gen = atomic_load_explicit(&l->timer_gen, memory_order_acquire);
        if (!atomic_exchange_explicit(&l->in_backoff, false, memory_order_acq_rel))
            continue; /* its timer fired first and requeued it */
        runq_push(b, l);
        if (eb__timers_remove(&b->timers, l, gen))
            sub_unref(b, s); /* the entry's reference */
    }
}

/* Applies queued operations; the caller holds the token. */
static void ctl_apply(eb_bus *b)
{
    pthread_mutex_lock(&b->ctl_lock);
    struct eb_subscription *s = b->ctl_head;
    b->ctl_head = b->ctl_tail = NULL;
    pthread_mutex_unlock(&b->ctl_lock);
    while (s != NULL) {
        struct eb_subscription *next = s->ctl_next;
        int rc = EB_OK;
        if (s->ctl_op == 1) {
            if (eb__route_add(b->route, s->pattern, s->pattern_len, s) != 0) {
                rc = EB_ENOMEM;
            } else {
                s->routed = true;
                sub_ref(s);
            }
        } else {
            bool routed = s->routed;
            if (routed)
                eb__route_remove(b->route, s->pattern, s->pattern_len, s);
            s->routed = false;
            /* Lanes that see cancelled discard their deliveries. seq_cst:
               Dekker with arm_backoff (store in_backoff, load cancelled),
               so a backoff armed now is cancelled by one side or both. */
            atomic_store_explicit(&s->cancelled, true, memory_order_seq_cst);
            cancel_backoffs(b, s);
            if (routed)
                sub_unref(b, s);
        }
        s->ctl_rc = rc;
        atomic_fetch_sub_explicit(&b->ctl_pending, 1, memory_order_relaxed);
        /* Release: ctl_rc and the routing change are visible to the waiter
           that acquires ctl_done. s may be freed right after by its owner. */
        atomic_store_explicit(&s->ctl_done, true, memory_order_release);
        s = next;
    }
    eb__ec_inc(&b->ctl_ec);
}

/* Posts op for s and returns once it was applied, with its result. */
static int ctl_run(eb_bus *b, struct eb_subscription *s, int op)
{
    atomic_store_explicit(&s->ctl_done, false, memory_order_relaxed);
    s->ctl_op = op;
    s->ctl_next = NULL;
    pthread_mutex_lock(&b->ctl_lock);
    if (b->ctl_tail != NULL)
        b->ctl_tail->ctl_next = s;
    else
        b->ctl_head = s;
    b->ctl_tail = s;
    pthread_mutex_unlock(&b->ctl_lock);
    atomic_fetch_add_explicit(&b->ctl_pending, 1, memory_order_seq_cst);

    eb__worker *w = self_worker(b);
    for (unsigned spins = 0;; spins++) {
        if (atomic_load_explicit(&s->ctl_done, memory_order_acquire))
            break;
        /* Apply it ourselves when the token is free; the holder otherwise
           applies it at the start of its next step. */
        if (token_take(b)) {
            if (atomic_load_explicit(&b->ctl_pending, memory_order_acquire) > 0)
                ctl_apply(b);
            token_drop(b);
            continue;
        }
        if (w != NULL && help_once(b, w))
            continue;
        if (spins < 64) {
            eb__cpu_relax();
            continue;
        }
        uint32_t snap = eb__ec_value(&b->ctl_ec);
        if (atomic_load_explicit(&s->ctl_done, memory_order_acquire))
            break;
        struct timespec ts = mono_ts(eb__now_mono_ns() + 200000);
        eb__ec_wait(&b->ctl_ec, snap, &ts);
    }
    return s->ctl_rc;
}

/* ---- lanes ------------------------------------------------------------ */

static void arm_backoff(eb_bus *b, eb__worker *w, eb__lane *l)
{
    struct eb_subscription *s = l->sub;
    unsigned shift = l->attempt - 2; /* attempt is the next one, >= 2 */
    uint64_t delay = s->backoff_initial_ns;
    while (shift-- > 0 && delay < s->backoff_max_ns)
        delay = delay > UINT64_MAX / 2 ? UINT64_MAX : delay * 2;
    if (delay > s->backoff_max_ns)
        delay = s->backoff_max_ns;
    if (delay > INT64_MAX)
        delay = INT64_MAX; /* about 292 years: never, in effect */
    /* Equal jitter: half fixed, half random, so retries of many lanes that
       failed together spread out but never come back too early. */
    delay = delay / 2 + rng_next(&w->rng) % (delay / 2 + 1);
    int64_t at = eb__ns_after(eb__now_mono_ns(), (int64_t)delay);
    if (at == INT64_MAX)
        at--; /* INT64_MAX is the heap's "no timer" */
    uint64_t gen = atomic_load_explicit(&l->timer_gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&l->timer_gen, gen, memory_order_release);
    /* Two references before anyone can see in_backoff: the timer entry's,
       and this call's own until it returns. An unsubscribe may requeue the
       lane and take the entry out at once (cancel_backoffs), and the lane
       may then finish and the subscription be freed under this call. */
    sub_ref_n(s, 2);
    atomic_store_explicit(&l->in_backoff, true, memory_order_seq_cst);
    bool earlier = false;
    if (eb__timers_push(&b->timers, at, l, gen, &earlier) != 0) {
        /* No memory for a timer: retry without waiting rather than stall. */
        if (atomic_exchange_explicit(&l->in_backoff, false, memory_order_acq_rel))
            runq_push(b, l);
        sub_unref_n(b, s, 2);
        return;
    }
    /* Dekker with ctl_apply (store cancelled, then load in_backoff in
       cancel_backoffs): an unsubscribe that did not see this backoff is
       seen here. Its cancel_backoffs may have run before the entry was in
       the heap: then this takes the entry out, and the lane goes back on
       the run queue to finish its deliveries, instead of the unsubscribe
       waiting out the whole backoff. */
    eb__fence_seq_cst();
    if (atomic_load_explicit(&s->cancelled, memory_order_seq_cst)) {
        if (atomic_exchange_explicit(&l->in_backoff, false, memory_order_acq_rel))
            runq_push(b, l);
        if (eb__timers_remove(&b->timers, l, gen))
            sub_unref(b, s); /* the entry's reference */
    } else if (earlier) {
        wake_pool(b);
    }
    sub_unref(b, s); /* this call's */
}

static bool timers_fire(eb_bus *b)
{
    if (eb__timers_next(&b->timers) == INT64_MAX)
        return false;
    int64_t now = eb__now_mono_ns();
    /* One worker at a time: due events reach the intake in the heap's
       order (two workers popping one each could push them swapped). The
       others skip; the one firing takes every entry due. */
    if (eb__timers_next(&b->timers) > now ||
        atomic_exchange_explicit(&b->firing, true, memory_order_seq_cst))
        return false;
    eb__timer_entry e;
    bool any = false;
    unsigned unhold = 0;
    /* The lane entries' references are dropped once firing is clear: the
       last one may free a durable subscription, which waits for a commit,
       and the other workers would spin meanwhile (has_work). At most
       UNREF_MAX per call; the rest wait for the next. */
    enum { UNREF_MAX = 32 };
    struct eb_subscription *unref[UNREF_MAX];
    unsigned nunref = 0;
    /* Each entry's slot stays held until we know it is not needed again. */
    while (nunref < UNREF_MAX && eb__timers_pop_due_held(&b->timers, now, &e)) {
        any = true;
        if (IS_EV_TIMER(e.what)) {
            /* A delayed event is due: into the intake (or the side list),
               never blocking a worker. With no memory for the side list it
               goes back into its held slot, which cannot fail: an event
               accepted for later is never lost (nor its waiter left
               waiting). */
            eb_event *ev = EV_TIMER_UNTAG(e.what);
            if (enqueue_internal(b, ev) == EB_OK) {
                atomic_fetch_sub_explicit(&b->scheduled, 1, memory_order_relaxed);
                unhold++;
            } else {
                logf_(b, EB_LOG_ERROR, "no memory to dispatch scheduled %s; retrying", ev->topic);
                bool earlier;
                eb__timers_rearm(&b->timers, now + 1000000, e.what, 0, &earlier);
            }
            continue;
        }
        unhold++;
        eb__lane *l = e.what;
        struct eb_subscription *s = l->sub;
        if (e.gen == atomic_load_explicit(&l->timer_gen, memory_order_acquire) &&
            atomic_exchange_explicit(&l->in_backoff, false, memory_order_acq_rel))
            runq_push(b, l);
        unref[nunref++] = s;
    }
    eb__timers_unhold(&b->timers, unhold);
    atomic_store_explicit(&b->firing, false, memory_order_release);
    for (unsigned i = 0; i < nunref; i++)
        sub_unref(b, unref[i]);
    return any;
}

static void deadletter(eb_bus *b, eb__worker *w, eb__lane *l, eb_event *ev, int rc)
{
    struct eb_subscription *s = l->sub;
    if (ev->flags & EB__EV_DEADLETTER) {
        /* A dead letter's own failure is not dead-lettered again. */
        logf_(b, EB_LOG_ERROR, "dead letter %s failed in subscription '%s': %s", ev->topic, s->name,
              eb_strerror(rc));
        return;
    }
    eb_deadletter_info info = {.subscription = s->name,
                               .topic = ev->topic,
                               .error = rc,
                               .attempts = l->attempt,
                               .seq = eb__event_seq(ev)};
    if (b->cfg.on_deadletter != NULL)
        b->cfg.on_deadletter(ev, &info, b->cfg.deadletter_ctx);
    if (b->store != NULL)
        eb__store_deadletter(b->store, ev, &info);
    /* Counted once handed to the callback and the store: whoever sees the
       count and then flushes the store finds the row. */
    eb__count(&w->dead_lettered, 1);
    logf_(b, EB_LOG_WARN, "dead-lettered %s (seq %llu) from '%s' after %u attempts: %s", ev->topic,
          (unsigned long long)info.seq, s->name, l->attempt, eb_strerror(rc));

    char topic[sizeof(DL_PREFIX) + EB_TOPIC_MAX + 1];
    size_t tl = (size_t)snprintf(topic, sizeof(topic), DL_PREFIX "%s", ev->topic);
    if (tl >= sizeof(topic))
        tl = sizeof(topic) - 1;
    size_t nl = strlen(s->name);
    size_t extra = sizeof(eb__deadletter) + nl + 1 + ev->topic_len + 1;
    eb_event *d = eb__event_new(b, &b->depot, NULL, topic, tl, eb__event_key(ev), ev->key_len,
                                ev->payload, ev->payload_len, true, true, extra);
    if (d == NULL) {
        logf_(b, EB_LOG_ERROR, "no memory for the dead letter of %s", ev->topic);
        return;
    }
    eb__deadletter *dl = eb__event_extra(d);
    char *names = (char *)(dl + 1);
    memcpy(names, s->name, nl + 1);
    memcpy(names + nl + 1, ev->topic, ev->topic_len + 1);
    dl->info = info;
    dl->info.subscription = names;
    dl->info.topic = names + nl + 1;
    d->ext->dl = dl;
    d->flags |= EB__EV_DEADLETTER | EB__EV_CAUS | EB__EV_CORR;
    eb__event_id(ev, d->ext->caus);
    if (ev->flags & EB__EV_CORR)
        memcpy(d->ext->corr, ev->ext->corr, 16);
    else
        memcpy(d->ext->corr, d->ext->caus, 16);
    if (enqueue_internal(b, d) != EB_OK) {
        logf_(b, EB_LOG_ERROR, "no memory to queue the dead letter of %s", ev->topic);
        eb__event_unref(d, &b->depot);
    }
}

/* The delivery in progress failed for good (its last attempt, a final
   failure, or retries an unsubscribe cut short): counted, dead-lettered,
   finished with rc. */
static void give_up_delivery(eb_bus *b, eb__worker *w, eb__lane *l, int rc, bool logged)
{
    eb__count(&l->failed, 1);
    eb__count(&w->failed, 1);
    deadletter(b, w, l, l->cur, rc);
    if (logged)
        eb__dsub_done(l->sub->dsub, l->cur, false); /* dead-lettered counts as done */
    lane_finish(b, w, l, rc);
}

/* Runs up to LANE_BATCH deliveries of l; the caller popped l from the run
   queue, so no other thread runs it. */
static void run_lane(eb_bus *b, eb__worker *w, eb__lane *l)
{
    struct eb_subscription *s = l->sub;
    bool mc = s->overflow == EB_OVERFLOW_DROP_OLDEST;
    bool backoff = false;
    int64_t since = 0;
    w->stack[w->depth++] = l;
    for (unsigned n = 0; n < LANE_BATCH; n++) {
        if (l->cur == NULL) {
            void *p;
            if (!(mc ? eb__ring_pop_mc(&l->mbox, &p) : eb__ring_pop_sc(&l->mbox, &p)))
                break;
            l->cur = p;
            l->attempt = 1;
        }
        /* Acquire: pairs with the store in ctl_apply. */
        if (atomic_load_explicit(&s->cancelled, memory_order_acquire)) {
            if (l->attempt > 1) {
                /* It failed, and the unsubscribe cuts its retries short:
                   dead-lettered with its last error, as a failure seen
                   after the unsubscribe is (below). */
                l->attempt--;
                give_up_delivery(b, w, l, l->last_rc,
                                 s->dsub != NULL && (l->cur->flags & EB__EV_LOGGED));
            } else {
                eb__count(&w->cancelled, 1);
                lane_finish(b, w, l, EB_ECANCELED);
            }
            continue;
        }
        bool logged = s->dsub != NULL && (l->cur->flags & EB__EV_LOGGED);
        if (logged && l->attempt == 1 && !eb__dsub_fresh(s->dsub, l->cur)) {
            /* An idempotent subscription already processed this event id. */
            eb__dsub_done(s->dsub, l->cur, false);
            lane_finish(b, w, l, EB_OK);
            continue;
        }
        /* A coarse clock read (vDSO, no system call) every RUN_CLOCK_EVERY
           calls of a turn, so that a shutdown that times out can say how
           long a handler has run (at most that many calls too long). Per
           call it was ~4% of the workers' time in fan-out. */
        if (n % RUN_CLOCK_EVERY == 0)
            since = eb__now_coarse_ns();
        atomic_store_explicit(&l->run_since, since, memory_order_relaxed);
        if (l->attempt > 1) {
            /* Counted when the retry runs: one an unsubscribe cut short
               (above) was never retried. */
            eb__count(&l->retried, 1);
            eb__count(&w->retried, 1);
        }
        int rc = s->fn(l->cur, s->ctx);
        atomic_store_explicit(&l->run_since, 0, memory_order_relaxed);
        bool final = l->give_up; /* the handler said no retry can mend it */
        if (final)
            l->give_up = false;
        if (rc == 0) {
            eb__count(&l->delivered, 1);
            eb__count(&w->delivered, 1);
            if (logged)
                eb__dsub_done(s->dsub, l->cur, true);
            lane_finish(b, w, l, EB_OK);
            continue;
        }
        if (rc > 0)
            rc = EB_EHANDLER;
        if (!final && l->attempt < s->max_attempts &&
            !atomic_load_explicit(&s->cancelled, memory_order_acquire)) {
            l->attempt++;
            l->last_rc = rc;
            backoff = true;
            break;
        }
        give_up_delivery(b, w, l, rc, logged);
    }
    release_flush(b, w);
    w->depth--;
    /* We consumed from the mailbox (stores of c_head); the fence orders them
       before the load of the flag, pairing with push_one's store of the flag
       and re-check (Dekker), so a stalled dispatcher is always woken. */
    eb__fence_seq_cst();
    if (atomic_load_explicit(&l->dispatcher_waiting, memory_order_relaxed) &&
        atomic_exchange_explicit(&l->dispatcher_waiting, false, memory_order_relaxed)) {
        atomic_store_explicit(&b->stall_relief, true, memory_order_release);
        if (!batching(w))
            wake_pool(b);
    }
    if (backoff)
        arm_backoff(b, w, l); /* the lane stays SCHEDULED; the timer requeues it */
    else
        lane_release(b, l);
}

/* ---- workers ---------------------------------------------------------- */

static bool has_work(eb_bus *b)
{
    return dispatch_ready(b) || atomic_load_explicit(&b->rq_len, memory_order_relaxed) > 0 ||
           eb__timers_next(&b->timers) <= eb__now_mono_ns();
}

/* A spinning worker that is about to run handlers stops counting as a
   spinner first: a handler may block, and publishers skip waking parked
   workers while someone spins (wake_for_work). */
static void stop_spinning(eb_bus *b, eb__worker *w)
{
    if (w->spinning) {
        atomic_fetch_sub_explicit(&b->spinners, 1, memory_order_seq_cst);
        w->spinning = false;
    }
}

static bool help_once(eb_bus *b, eb__worker *w)
{
    bool progress = timers_fire(b);
    /* A worker's own loop may take the lane of a one-event step directly
       (touch_flush); a waiting worker goes through the run queue. */
    eb__lane *l = NULL;
    progress |= dispatch_step(b, w->depth == 0 ? &l : NULL);
    if (w->depth < EB__MAX_NEST) {
        if (l == NULL)
            l = runq_pop(b, w->depth > 0, w);
        if (l != NULL) {
            stop_spinning(b, w);
            /* A handler may run long or block: if more work is waiting, make
               sure a parked worker is awake for it (unless one spins). A
               batching worker leaves the intake to the watcher instead. */
            if (atomic_load_explicit(&b->rq_len, memory_order_seq_cst) > 0 ||
                (!batching(w) && dispatch_ready(b)))
                wake_for_work(b);
            run_lane(b, w, l);
            progress = true;
        }
    }
    return progress;
}

/* Sleeps until new work, a timer deadline, `limit` (monotonic ns) or a
   wake; while the bus is closing, at most 5 ms (the last worker to go idle
   is the one that sees the bus drained). */
static void park(eb_bus *b, int64_t limit)
{
    uint32_t snap = eb__ec_value(&b->work_ec);
    atomic_fetch_add_explicit(&b->idle, 1, memory_order_seq_cst);
    /* closing is read after the snapshot: the shutdown stores it before its
       wake_pool, so either we see it here or its increment of work_ec comes
       after our snapshot and the wait returns at once. (Read before the
       snapshot, a shutdown in between was missed for good: no deadline, and
       its wake already spent.) */
    if (atomic_load_explicit(&b->closing, memory_order_seq_cst)) {
        int64_t soon = eb__now_mono_ns() + 5000000;
        if (soon < limit)
            limit = soon;
    }
    if (!has_work(b) && !atomic_load_explicit(&b->stop, memory_order_seq_cst)) {
        /* While another worker is awake, publishers leave the intake to it
           (publisher_wake), and it may be held up in a handler: one parked
           worker, the watcher, wakes up every WATCH_NS and takes the intake
           over if nobody has taken anything from it meanwhile and there is
           something to dispatch. After QUIET_LOOKS looks at an intake that
           nothing went through (nothing published: a handler runs long on
           an otherwise idle bus), it retires for the rest of this park and
           sleeps without looking: a publisher then wakes a worker itself,
           instead of the watcher costing ~17 us of CPU a millisecond for
           as long as the handler runs. */
        unsigned seen = eb__ring_consumed(&b->intake);
        unsigned quiet = 0;
        bool watcher = false;
        for (;;) {
            int64_t deadline = eb__timers_next(&b->timers);
            if (limit < deadline)
                deadline = limit;
            bool watch = quiet < QUIET_LOOKS && (unsigned)atomic_load_explicit(
                                                    &b->idle, memory_order_seq_cst) < b->nworkers;
            if (watch && !watcher) {
                watcher = !atomic_exchange_explicit(&b->watcher, true, memory_order_seq_cst);
            } else if (!watch && watcher) {
                /* Everyone is parked (or waiting in a handler, counted as
                   parked), or the intake stayed quiet: give the role up, or
                   publishers would go on leaving the intake to a watcher
                   that no longer looks. Then look once more: a publisher
                   may have seen the role taken just before (Dekker: its
                   push, then its load of watcher). */
                atomic_store_explicit(&b->watcher, false, memory_order_seq_cst);
                watcher = false;
                /* dispatch_ready's loads are not seq_cst: keep them after
                   the store (a release store and a later load may pass each
                   other on other architectures). */
                eb__fence_seq_cst();
                if (dispatch_ready(b))
                    break;
            }
            watch = watch && watcher;
            int64_t until = deadline;
            if (watch) {
                int64_t w = eb__now_mono_ns() + WATCH_NS;
                if (w < until)
                    until = w;
            }
            if (until == INT64_MAX) {
                eb__ec_wait(&b->work_ec, snap, NULL);
            } else {
                struct timespec ts = mono_ts(until);
                eb__ec_wait(&b->work_ec, snap, &ts);
            }
            if (!watch || eb__ec_value(&b->work_ec) != snap || eb__now_mono_ns() >= deadline ||
                atomic_load_explicit(&b->stop, memory_order_seq_cst))
                break;
            /* Nothing taken from the intake since the last look, and there
               is something to do (not a dispatch stalled on a full
               mailbox, which the lane's runner will relieve): ours. */
            unsigned consumed = eb__ring_consumed(&b->intake);
            if (consumed == seen && dispatch_ready(b))
                break;
            quiet = consumed == seen ? quiet + 1 : 0;
            seen = consumed;
        }
        if (watcher) {
            atomic_store_explicit(&b->watcher, false, memory_order_seq_cst);
            /* A park with a limit (a worker waiting inside a handler, or for
               room on the intake) that ends at its limit returns to the
               handler without looking at the intake: an event published
               after our last look was left to us (the publisher saw the
               role taken) and would wait for some handler to return. Hand
               it to the pool (Dekker as above; found by a review). */
            if (limit != INT64_MAX) {
                eb__fence_seq_cst();
                if (dispatch_ready(b))
                    wake_pool(b);
            }
        }
    }
    atomic_fetch_sub_explicit(&b->idle, 1, memory_order_seq_cst);
}

/* Under the token: is everything accepted delivered? Then stop the pool. */
static bool try_finish(eb_bus *b)
{
    if ((atomic_load_explicit(&b->gate, memory_order_seq_cst) & EB__INFLIGHT_MASK) != 0 ||
        !token_take(b))
        return false;
    /* busy_lanes first: once it is 0 no handler runs, so nothing can publish
       internally any more; then the queues cannot refill behind our back. */
    bool done = atomic_load_explicit(&b->busy_lanes, memory_order_seq_cst) == 0 &&
                b->pend_ev == NULL && b->held_i == b->held_n &&
                atomic_load_explicit(&b->ctl_pending, memory_order_seq_cst) == 0 &&
                /* No delayed event due and none being moved to the intake
                   (the heap's lock orders this after any pop, and the
                   mover set firing before its pop); one not due yet when
                   the pool stops is dropped (bus_free), as at the start of
                   the shutdown. Then the side list and the ring. */
                !eb__timers_due(&b->timers, eb__now_mono_ns()) &&
                !atomic_load_explicit(&b->firing, memory_order_seq_cst) &&
                atomic_load_explicit(&b->side_count, memory_order_seq_cst) == 0 &&
                b->sb_i == b->sb_n &&
                /* Before the ring: the writer pushes, then settles the count. */
                atomic_load_explicit(&b->store_inflight, memory_order_seq_cst) == 0 &&
                eb__ring_size(&b->intake) == 0;
    if (done)
        atomic_store_explicit(&b->stop, true, memory_order_seq_cst);
    token_drop(b);
    if (done)
        wake_pool(b);
    return done;
}

static void *worker_main(void *arg)
{
    eb__worker *w = arg;
    eb_bus *b = w->bus;
    tls_worker = w;
    unsigned spins = 0;
    for (;;) {
        if (help_once(b, w)) {
            stop_spinning(b, w);
            spins = 0;
            continue;
        }
        if (atomic_load_explicit(&b->stop, memory_order_acquire))
            break;
        if (atomic_load_explicit(&b->closing, memory_order_acquire) && try_finish(b))
            break;
        /* Idle: at most max_spinners workers spin waiting for work (so a
           publish finds one awake without a futex wake); the others park at
           once instead of taking CPU from publishers and busy workers. */
        if (!w->spinning) {
            unsigned n = atomic_load_explicit(&b->spinners, memory_order_relaxed);
            w->spinning = n < b->max_spinners &&
                          atomic_compare_exchange_strong_explicit(
                              &b->spinners, &n, n + 1, memory_order_seq_cst, memory_order_relaxed);
        }
        if (w->spinning && ++spins < IDLE_SPINS) {
            eb__spin_pause(spins);
            continue;
        }
        /* seq_cst, before park's increment of idle: see wake_for_work. */
        stop_spinning(b, w);
        spins = 0;
        park(b, INT64_MAX);
    }
    eb__tcache_flush(&b->depot);
    tls_worker = NULL;
    return NULL;
}

/* ---- waiting ---------------------------------------------------------- */

/* Makes ev (NULL: none) the wait w's handlers are in until `deadline`,
   holding up w's first n stack lanes (its frame f: see eb__wframe in
   bus.h). Called by w only. */
static void wf_set(eb__wframe *f, const eb__worker *w, eb_event *ev, unsigned n, int64_t deadline)
{
    pthread_mutex_lock(&f->lock);
    for (unsigned i = 0; i < n; i++) {
        f->lane[i] = w->stack[i];
        f->cur[i] = w->stack[i]->cur;
    }
    f->ev = ev;
    f->n = n;
    f->deadline = deadline;
    pthread_mutex_unlock(&f->lock);
}

/* Scratch of cycle_check (one checker at a time: b->cyc_busy). */
struct eb__cyc {
    unsigned idx[MAX_WORKERS]; /* node -> worker */
    eb_event *on[MAX_WORKERS]; /* the event the node waits for */
    int64_t dl[MAX_WORKERS];   /* until when */
    bool gone[MAX_WORKERS];    /* broken this round */
    bool seen[MAX_WORKERS];
    unsigned from[MAX_WORKERS]; /* DFS: how a node was reached */
    unsigned todo[MAX_WORKERS];
    struct eb__cyc_key {
        eb_event *ev;
        unsigned node;
    } key[MAX_WORKERS];                          /* (on, node) sorted by event */
    uint64_t dep[MAX_WORKERS][MAX_WORKERS / 64]; /* dep[i] bit j: i waits on j */
};

static int cyc_key_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const struct eb__cyc_key *)a)->ev;
    uintptr_t y = (uintptr_t)((const struct eb__cyc_key *)b)->ev;
    return x < y ? -1 : x > y;
}

/* Node i waits on every node whose held lanes hold ev (see cycle_check). */
static void cyc_depend(struct eb__cyc *c, unsigned nw, const eb_event *ev, unsigned j)
{
    unsigned lo = 0, hi = nw;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if ((uintptr_t)c->key[mid].ev < (uintptr_t)ev)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < nw && c->key[lo].ev == ev; lo++) {
        unsigned i = c->key[lo].node;
        c->dep[i][j / 64] |= (uint64_t)1 << (j % 64);
    }
}

/* A cycle through node s among the nodes not gone: its last node before s
   (from[] leads back to s), or -1. */
static int cyc_find(struct eb__cyc *c, unsigned nw, unsigned s)
{
    unsigned ntodo = 0;
    memset(c->seen, 0, nw * sizeof(c->seen[0]));
    c->todo[ntodo++] = s;
    c->seen[s] = true;
    while (ntodo > 0) {
        unsigned i = c->todo[--ntodo];
        for (unsigned j = 0; j < nw; j++) {
            if (c->gone[j] || !(c->dep[i][j / 64] >> (j % 64) & 1))
                continue;
            if (j == s)
                return (int)i;
            if (!c->seen[j]) {
                c->seen[j] = true;
                c->from[j] = i;
                c->todo[ntodo++] = j;
            }
        }
    }
    return -1;
}

/*
 * Looks for cycles of waiting handlers (two handlers on different workers
 * each waiting for an event queued on the other's lane, or longer rings)
 * and breaks each: the wait on it that would end first by its timeout (the
 * lowest worker index among equals) is told to return EB_EDEADLK
 * (eb__wframe.brk), and the others then finish.
 *
 * Worker x's wait depends on worker y's when a delivery of the event x
 * waits for is one that a lane y holds up is running, or is queued in such
 * a lane's mailbox (not one that drops its oldest events: a later event
 * may push it out). Every worker's wait is read with all their frames' locks
 * held, one moment for all of them: no waiting handler can return
 * meanwhile, so the lanes read stay alive and each dependency found held
 * at that moment, and a cycle of them can only end by a timeout. At most
 * one worker checks at a time, once every CYCLE_NS for the whole bus.
 */
static void cycle_check(eb_bus *b, int64_t now)
{
    if (atomic_exchange_explicit(&b->cyc_busy, true, memory_order_acquire))
        return;
    if (now < atomic_load_explicit(&b->cyc_next, memory_order_relaxed))
        goto out;
    atomic_store_explicit(&b->cyc_next, now + CYCLE_NS, memory_order_relaxed);
    if (b->cyc == NULL && (b->cyc = malloc(sizeof(*b->cyc))) == NULL)
        goto out; /* looked again in CYCLE_NS */
    struct eb__cyc *c = b->cyc;
    unsigned n = b->nworkers, nw = 0;
    for (unsigned i = 0; i < n; i++)
        pthread_mutex_lock(&b->wf[i].lock);
    for (unsigned i = 0; i < n; i++) {
        eb__wframe *f = &b->wf[i];
        if (f->ev == NULL)
            continue;
        c->idx[nw] = i;
        c->on[nw] = f->ev;
        c->dl[nw] = f->deadline;
        c->gone[nw] = false;
        c->key[nw].ev = f->ev;
        c->key[nw].node = nw;
        memset(c->dep[nw], 0, sizeof(c->dep[nw]));
        nw++;
    }
    bool broke = false;
    if (nw >= 2) {
        qsort(c->key, nw, sizeof(c->key[0]), cyc_key_cmp);
        for (unsigned j = 0; j < nw; j++) {
            eb__wframe *f = &b->wf[c->idx[j]];
            for (unsigned k = 0; k < f->n; k++) {
                eb__lane *l = f->lane[k];
                cyc_depend(c, nw, f->cur[k], j);
                if (l->sub->overflow == EB_OVERFLOW_DROP_OLDEST)
                    continue;
                /* The lane's runner waits, and cannot move it now. */
                unsigned pos, avail = eb__ring_peek_sc(&l->mbox, &pos);
                for (unsigned q = 0; q < avail; q++)
                    cyc_depend(c, nw, eb__ring_at(&l->mbox, pos + q), j);
            }
        }
        for (unsigned s = 0; s < nw; s++) {
            int last;
            while (!c->gone[s] && (last = cyc_find(c, nw, s)) >= 0) {
                /* The cycle s -> ... -> last -> s: break it at the wait
                   that would end first. */
                unsigned br = s;
                for (unsigned i = (unsigned)last; i != s; i = c->from[i])
                    if (c->dl[i] < c->dl[br] || (c->dl[i] == c->dl[br] && c->idx[i] < c->idx[br]))
                        br = i;
                atomic_store_explicit(&b->wf[c->idx[br]].brk, c->on[br], memory_order_relaxed);
                c->gone[br] = true;
                broke = true;
            }
        }
    }
    for (unsigned i = n; i-- > 0;)
        pthread_mutex_unlock(&b->wf[i].lock);
    if (broke)
        wake_pool(b);
out:
    atomic_store_explicit(&b->cyc_busy, false, memory_order_release);
}

/* A worker waits for ev while running other work. */
static int worker_wait(eb_bus *b, eb__worker *w, eb_event *ev, int64_t deadline)
{
    eb_event *saved[EB__MAX_NEST + 1];
    int rc = EB_OK;
    bool first = true;
    eb__wframe *f = &b->wf[w->index];
    eb_event *outer_ev = f->ev; /* an outer wait of this worker's */
    unsigned outer_n = f->n;
    int64_t outer_deadline = f->deadline;
    atomic_store_explicit(&ev->ext->waiter_worker, true, memory_order_seq_cst);
    wf_set(f, w, ev, w->depth, deadline);
    for (unsigned i = 0; i < w->depth; i++) {
        saved[i] = atomic_load_explicit(&w->stack[i]->wait_ticket, memory_order_relaxed);
        atomic_store_explicit(&w->stack[i]->wait_ticket, ev, memory_order_seq_cst);
    }
    /* Pairs with push_one's fence: a delivery pushed before our store of
       wait_ticket is in a mailbox we scan now; one pushed after is flagged. */
    eb__fence_seq_cst();
    for (unsigned i = 0; i < w->depth && rc == EB_OK; i++) {
        if (w->stack[i]->cur == ev || eb__ring_contains_sc(&w->stack[i]->mbox, ev))
            rc = EB_EDEADLK;
    }
    while (rc == EB_OK && !eb__event_done(ev)) {
        if (atomic_load_explicit(&ev->ext->deadlock, memory_order_seq_cst)) {
            rc = EB_EDEADLK;
            break;
        }
        eb__lane *stall = atomic_load_explicit(&b->stall_lane, memory_order_acquire);
        if (stall != NULL && in_stack(w, stall)) {
            rc = EB_EDEADLK;
            break;
        }
        /* Even a poll (a deadline already past) takes one step of other
           work: a handler polling in a loop lets the pool (and the
           dispatch that finds its deadlock) go on. */
        int64_t now = eb__now_mono_ns();
        if (now >= deadline && !first) {
            rc = EB_ETIMEDOUT;
            break;
        }
        first = false;
        if (now >= atomic_load_explicit(&b->cyc_next, memory_order_relaxed))
            cycle_check(b, now);
        if (atomic_load_explicit(&f->brk, memory_order_relaxed) == ev) {
            rc = EB_EDEADLK; /* this wait closes a cycle: see cycle_check */
            break;
        }
        if (help_once(b, w))
            continue;
        if (now >= deadline) {
            rc = EB_ETIMEDOUT;
            break;
        }
        park(b, deadline < now + 1000000 ? deadline : now + 1000000);
    }
    wf_set(f, w, outer_ev, outer_n, outer_deadline);
    /* Told to break a cycle: done, or about to time out with the cycle
       unbroken (the check found it while this wait went on). A check
       after wf_set can only name the outer wait's event. */
    eb_event *told = ev;
    if (atomic_compare_exchange_strong_explicit(&f->brk, &told, NULL, memory_order_relaxed,
                                                memory_order_relaxed) &&
        rc == EB_ETIMEDOUT)
        rc = EB_EDEADLK;
    for (unsigned i = 0; i < w->depth; i++)
        atomic_store_explicit(&w->stack[i]->wait_ticket, saved[i], memory_order_relaxed);
    return rc;
}

static int wait_event(eb_bus *b, eb_event *ev, int64_t deadline)
{
    eb__worker *w = self_worker(b);
    if (w != NULL)
        return worker_wait(b, w, ev, deadline);
    for (unsigned i = 0; i < WAIT_SPINS; i++) {
        if (eb__event_done(ev))
            return EB_OK;
        /* A pure spin first: a round trip completes within it, and a
           yield there costs the waiter the p99 latency (a yield to another
           spinning waiter ends only when that one yields back). */
        if (i < WAIT_SPINS / 4)
            eb__cpu_relax();
        else
            eb__spin_pause(i);
    }
    for (;;) {
        uint32_t snap = eb__ec_value(&ev->ext->done);
        if (eb__event_done(ev))
            return EB_OK;
        if (deadline != INT64_MAX && eb__now_mono_ns() >= deadline)
            return EB_ETIMEDOUT;
        if (deadline == INT64_MAX) {
            eb__ec_wait(&ev->ext->done, snap, NULL);
        } else {
            struct timespec ts = mono_ts(deadline);
            eb__ec_wait(&ev->ext->done, snap, &ts);
        }
    }
}

/* ---- publishing ------------------------------------------------------- */

static bool topic_ok(const char *t, size_t *len)
{
    if (t == NULL)
        return false;
    *len = strnlen(t, EB_TOPIC_MAX + 1);
    return *len <= EB_TOPIC_MAX;
}

/* A topic a caller may publish: a valid one outside $deadletter. */
static bool publish_topic_ok(const char *t, size_t *len)
{
    return topic_ok(t, len) && !eb__topic_is_deadletter(t, *len);
}

/* Pushes ev on the intake, waiting as opts allow. */
/*
 * One attempt to put an entry on the intake. A carrier of n events also
 * needs room in the `carried` budget: carriers would otherwise let the intake
 * hold 48 times as many events as its capacity. Single events do not touch
 * the budget (no extra atomic on their path).
 */
static bool intake_try(eb_bus *b, void *entry, unsigned n)
{
    if (n > 0) {
        uint64_t cap = eb__ring_capacity(&b->intake);
        uint64_t now = atomic_fetch_add_explicit(&b->carried, n, memory_order_relaxed);
        if (now > 0 && now + n > cap) {
            atomic_fetch_sub_explicit(&b->carried, n, memory_order_relaxed);
            return false;
        }
    }
    if (eb__ring_push_mp(&b->intake, entry))
        return true;
    if (n > 0)
        atomic_fetch_sub_explicit(&b->carried, n, memory_order_relaxed);
    return false;
}

/* Pushes an entry (an event, or a carrier of n events) on the intake, waiting
   as timeout_ns allows. */
static int side_push_entry(eb_bus *b, void *entry)
{
    if (!EB__IS_CARRIER(entry))
        return side_push(b, entry);
    eb__carrier *c = EB__CARRIER_UNTAG(entry);
    for (unsigned i = 0; i < c->n; i++) {
        /* Routed on its own, out of its carrier: stamped on its own. The
           event is still ours (not on the list yet). */
        c->ev[i]->flags &= (uint16_t)~EB__EV_PACKED;
        int rc = side_push(b, c->ev[i]);
        if (rc != EB_OK) {
            /* Accepted so far: i events; the caller owns the rest and the
               carrier. */
            memmove(c->ev, c->ev + i, (c->n - i) * sizeof(c->ev[0]));
            c->n -= i;
            return rc;
        }
    }
    eb__carrier_put(&b->depot, c);
    return EB_OK;
}

static int intake_push(eb_bus *b, void *ev, unsigned n, int64_t timeout_ns)
{
    eb__worker *w = self_worker(b);
    /* A handler publishing while side events are pending joins them, so its
       events stay in the order it published them. */
    if (w != NULL && (atomic_load_explicit(&b->side_count, memory_order_acquire) > 0 ||
                      atomic_load_explicit(&b->side_busy, memory_order_acquire)))
        return side_push_entry(b, ev);
    if (intake_try(b, ev, n))
        return EB_OK;
    if (timeout_ns == 0)
        return EB_EAGAIN;
    int64_t deadline = eb__deadline_after(timeout_ns);
    for (;;) {
        if (w != NULL) {
            /* Only our own lane's progress can free the intake: waiting would
               deadlock, so the event takes the side list. */
            eb__lane *stall = atomic_load_explicit(&b->stall_lane, memory_order_acquire);
            if (stall != NULL && in_stack(w, stall))
                return side_push_entry(b, ev);
            if (!help_once(b, w))
                park(b, eb__now_mono_ns() + 1000000);
        } else {
            /* The workers drain a batch in microseconds: look for room a
               while before sleeping. */
            for (unsigned i = 0; i < WAIT_SPINS; i++) {
                if (eb__ring_size(&b->intake) < eb__ring_capacity(&b->intake) &&
                    intake_try(b, ev, n))
                    return EB_OK;
                eb__spin_pause(i);
            }
            uint32_t snap = eb__ec_value(&b->space_ec);
            if (intake_try(b, ev, n))
                return EB_OK;
            wake_if_idle(b);
            struct timespec ts = mono_ts(
                deadline < eb__now_mono_ns() + 10000000 ? deadline : eb__now_mono_ns() + 10000000);
            eb__ec_wait(&b->space_ec, snap, &ts);
        }
        if (intake_try(b, ev, n))
            return EB_OK;
        if (deadline != INT64_MAX && eb__now_mono_ns() >= deadline)
            return EB_ETIMEDOUT;
    }
}

#define DURABLE_FLAGS (EB_PUBLISH_DURABLE | EB_PUBLISH_DURABLE_LAZY)

static bool opts_ok(const eb_publish_options *o)
{
    return o->key_len <= 255 && (o->key != NULL || o->key_len == 0) &&
           (o->flags & ~DURABLE_FLAGS) == 0 && o->flags != DURABLE_FLAGS && o->delay_ns >= 0 &&
           o->at_ns >= 0 && !(o->at_ns > 0 && o->delay_ns > 0);
}

/* The delay asked for by delay_ns or at_ns (an at_ns in the past: none). */
static int64_t opts_delay(const eb_publish_options *o)
{
    if (o->at_ns > 0) {
        int64_t d = o->at_ns - eb__now_real_ns();
        return d > 0 ? d : 0;
    }
    return o->delay_ns;
}

/* When a durable event delayed by delay (opts_delay, > 0) falls due, in
   Unix time: at_ns itself when given, so that events given one at_ns share
   one due time. */
static int64_t durable_due(const eb_publish_options *o, int64_t delay)
{
    return o->at_ns > 0 ? o->at_ns : eb__ns_after(eb__now_real_ns(), delay);
}

/* Offsets between the clocks that differ by less than this are one. */
#define CLOCK_OFFSET_SLACK_NS 1000000
/* A sample of the offset whose two monotonic reads lie further apart than
   this was preempted between them: not used. */
#define CLOCK_SAMPLE_MAX_NS 20000

/* Real minus monotonic time, kept per bus: a sample (real time read between
   two monotonic reads, against their midpoint, so off by at most half of
   CLOCK_SAMPLE_MAX_NS) replaces the kept offset only when they differ by
   more than CLOCK_OFFSET_SLACK_NS, that is when the system clock was set
   or slewed that far. */
static int64_t clock_offset(eb_bus *b)
{
    int64_t cur = atomic_load_explicit(&b->clock_offset, memory_order_relaxed);
    for (int tries = 0; tries < 4; tries++) {
        int64_t m1 = eb__now_mono_ns(), r = eb__now_real_ns(), m2 = eb__now_mono_ns();
        if (m2 - m1 > CLOCK_SAMPLE_MAX_NS)
            continue;
        int64_t off = r - (m1 + (m2 - m1) / 2);
        if (cur == 0 || off - cur > CLOCK_OFFSET_SLACK_NS || cur - off > CLOCK_OFFSET_SLACK_NS) {
            atomic_store_explicit(&b->clock_offset, off, memory_order_relaxed);
            cur = off;
        }
        return cur;
    }
    /* Preempted four times over: the kept offset, or a rough one. */
    return cur != 0 ? cur : eb__now_real_ns() - eb__now_mono_ns();
}

/*
 * When a memory-only event published with opts falls due, on the monotonic
 * clock; 0: not delayed (publish now). A Unix time (at_ns) is converted with
 * the bus's one clock offset (clock_offset), so events given one at_ns get
 * one deadline, and the timer heap keeps equal deadlines in the order they
 * came: one thread's events keep their order (unless the system clock is
 * set between two of them). Reading both clocks per call gave each its own
 * jitter (an audit saw 780 inversions among 2000 events with one at_ns). An
 * at_ns already past goes through the heap too, behind earlier events with
 * the same at_ns (a due one is delivered even once a shutdown has begun).
 */
static int64_t memory_due(eb_bus *b, const eb_publish_options *o)
{
    if (o->at_ns > 0) {
        int64_t off = clock_offset(b);
        /* at - off, saturating (off < 0 only if the clock is set before
           1970 plus the uptime); at least 1, "due now". */
        int64_t due =
            off >= 0 ? o->at_ns - off : eb__ns_after(o->at_ns, off == INT64_MIN ? INT64_MAX : -off);
        return due > 0 ? due : 1;
    }
    return o->delay_ns > 0 ? eb__ns_after(eb__now_mono_ns(), o->delay_ns) : 0;
}

/* Accepts ev for dispatch at `at` (monotonic ns, from memory_due): it waits
   in the timer heap. */
static int schedule_event(eb_bus *b, eb_event *ev, int64_t at)
{
    /* It reaches the intake on its own, among other events: no memo. */
    ev->flags &= (uint16_t)~EB__EV_SAME_TOPIC;
    bool earlier = false;
    if (at == INT64_MAX)
        at--; /* INT64_MAX is the heap's "no timer" */
    if (eb__timers_push(&b->timers, at, EV_TIMER_TAG(ev), 0, &earlier) != 0)
        return EB_ENOMEM;
    atomic_fetch_add_explicit(&b->scheduled, 1, memory_order_relaxed);
    if (earlier)
        wake_pool(b);
    return EB_OK;
}

/* Counts the caller as in flight unless the bus is closing. seq_cst pairs
   with destroy's store of closing and the workers' load of the gate: a
   publish that saw closing == 0 is counted before anyone concludes that
   nothing is on its way. */
static int publish_enter(eb_bus *b)
{
    atomic_fetch_add_explicit(&b->gate, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&b->closing, memory_order_seq_cst)) {
        atomic_fetch_sub_explicit(&b->gate, 1, memory_order_seq_cst);
        return EB_ECLOSED;
    }
    return EB_OK;
}

static void publish_exit(eb_bus *b, size_t accepted)
{
    /* One RMW leaves the in-flight count and counts what was published. It
       is seq_cst: it also orders the ring push before the load of idle
       (Dekker with park), so a parked worker is always woken. */
    atomic_fetch_add_explicit(&b->gate, ((uint64_t)accepted << EB__INFLIGHT_BITS) - 1,
                              memory_order_seq_cst);
    if (accepted > 0)
        publisher_wake(b);
}

/* The event the calling handler is processing, if any. */
static const eb_event *handler_cause(void)
{
    eb__worker *w = tls_worker;
    return w != NULL && w->depth > 0 ? w->stack[w->depth - 1]->cur : NULL;
}

/* Whether an event built with opts needs its extension (eb__event_ext). */
static bool needs_ext(const eb_publish_options *opts, bool track, const eb_event *cause)
{
    return track || cause != NULL || opts->payload_free != NULL || opts->correlation_id != NULL ||
           opts->causation_id != NULL || (opts->flags & DURABLE_FLAGS) != 0;
}

/* Builds an event (in carrier `in` when it fits there: see eb__event_new);
   correlation and causation are explicit, else inherited from `cause`, the
   event the calling handler is processing (handler_cause()). */
static eb_event *build_event(eb_bus *b, eb__carrier *in, const char *topic, size_t tl,
                             const void *payload, size_t len, const void *key, size_t key_len,
                             const eb_publish_options *opts, bool track, const eb_event *cause)
{
    bool ext = needs_ext(opts, track, cause);
    eb_event *ev = eb__event_new(b, &b->depot, in, topic, tl, key, key_len, payload, len,
                                 opts->payload_free == NULL, ext, 0);
    if (ev == NULL || !ext)
        return ev;
    eb__event_ext *x = ev->ext;
    x->payload_free = opts->payload_free;
    if (opts->correlation_id != NULL) {
        memcpy(x->corr, opts->correlation_id, 16);
        ev->flags |= EB__EV_CORR;
    } else if (cause != NULL) {
        if (cause->flags & EB__EV_CORR)
            memcpy(x->corr, cause->ext->corr, 16);
        else
            eb__event_id(cause, x->corr);
        ev->flags |= EB__EV_CORR;
    }
    if (opts->causation_id != NULL) {
        memcpy(x->caus, opts->causation_id, 16);
        ev->flags |= EB__EV_CAUS;
    } else if (cause != NULL) {
        eb__event_id(cause, x->caus);
        ev->flags |= EB__EV_CAUS;
    }
    if (track)
        eb__event_track_init(ev);
    return ev;
}

/* Drops an event that was never published: the caller keeps its payload. */
static void unbuild_event(eb_bus *b, eb_event *ev)
{
    if (ev->ext != NULL)
        ev->ext->payload_free = NULL;
    eb__event_unref(ev, &b->depot);
}

/* Hands built events to the store (see eb__store_append); counts them as
   on their way until its writer gives them back to the intake. */
static int durable_append(eb_bus *b, eb_event **evs, size_t n, unsigned durable, int64_t timeout_ns)
{
    atomic_fetch_add_explicit(&b->store_inflight, n, memory_order_seq_cst);
    int rc = eb__store_append(b->store, evs, n, durable == EB_PUBLISH_DURABLE, timeout_ns,
                              self_worker(b) != NULL);
    if (rc != EB_OK)
        atomic_fetch_sub_explicit(&b->store_inflight, n, memory_order_seq_cst);
    return rc;
}

static int publish_common(eb_bus *b, const char *topic, const void *payload, size_t len,
                          const eb_publish_options *opts, bool track, eb_event **out)
{
    size_t tl;
    eb_publish_options defaults;
    if (opts == NULL) {
        eb_publish_options_init(&defaults);
        opts = &defaults;
    }
    if (b == NULL || !publish_topic_ok(topic, &tl) || (payload == NULL && len > 0) ||
        !opts_ok(opts))
        return EB_EINVAL;
    int64_t delay = opts_delay(opts);
    unsigned durable = opts->flags & DURABLE_FLAGS;
    if (durable && (b->store == NULL || (delay > 0 && track)))
        return EB_ENOTSUP; /* no store; a durable scheduled event has no ticket */
    int rc = publish_enter(b);
    if (rc != EB_OK)
        return rc;
    eb_event *ev = build_event(b, NULL, topic, tl, payload, len, opts->key, opts->key_len, opts,
                               track, handler_cause());
    if (ev == NULL) {
        publish_exit(b, 0);
        return EB_ENOMEM;
    }
    if (track)
        eb__event_ref(ev, 1); /* the ticket's reference */
    if (durable && delay > 0) {
        /* The store keeps its own copy; ours goes (the payload with it). */
        rc = eb__store_schedule(b->store, ev, durable_due(opts, delay),
                                durable == EB_PUBLISH_DURABLE);
        if (rc == EB_OK) {
            eb__event_unref(ev, &b->depot);
            publish_exit(b, 1);
            return EB_OK;
        }
    } else if (durable) {
        rc = durable_append(b, &ev, 1, durable, opts->timeout_ns);
    } else {
        int64_t due = memory_due(b, opts);
        rc = due > 0 ? schedule_event(b, ev, due) : intake_push(b, ev, 0, opts->timeout_ns);
    }
    if (rc != EB_OK) {
        if (track)
            eb__event_unref(ev, &b->depot);
        unbuild_event(b, ev);
    } else if (out != NULL) {
        *out = ev;
    }
    publish_exit(b, rc == EB_OK ? 1 : 0);
    return rc;
}

/* Gives the depot big carrier blocks, at the first batch that builds its
   events inline (a bus that never publishes batches does not pay for them),
   so that a steady load of batches does not malloc while the number of
   carriers in flight is still growing towards its peak: enough for the
   intake to be full of carriers of 24 events, and for what partly filled
   magazines hold (workers, publisher, dispatcher; counted for 16 workers at
   most). 2.8 MiB with the defaults on 2 CPUs (240 blocks of 12 KiB). */
static void prefill_carriers(eb_bus *b)
{
    unsigned cap = eb__ring_capacity(&b->intake);
    unsigned workers = b->cfg.workers < 16 ? b->cfg.workers : 16;
    eb__depot_prefill(&b->depot, EB__CLASSES - 1,
                      (cap < 8192 ? cap : 8192) / 24 + (workers + 2) * EB__BIG_MAG);
}

/* The durable part of eb_publish_batch: chunks of events, each handed to
   the store at once (one transaction when waiting). */
static int durable_batch(eb_bus *b, const eb_message *msgs, size_t n,
                         const eb_publish_options *opts, unsigned durable, size_t *done)
{
    enum { CHUNK = 1024 };
    eb_event *stack[CHUNK], **evs = stack;
    const eb_event *cause = handler_cause();
    int64_t delay = opts_delay(opts);
    /* A waited batch due now is one transaction, however long: all of it is
       committed, or none (a scope is a unit of work). Lazy and delayed ones
       go in chunks: the writer commits them as it goes. */
    bool whole = durable == EB_PUBLISH_DURABLE && delay == 0;
    size_t chunk = CHUNK;
    if (whole && n > CHUNK) {
        evs = malloc(n * sizeof(*evs));
        if (evs == NULL)
            return EB_ENOMEM;
        chunk = n;
    }
    int rc = EB_OK;
    while (*done < n && rc == EB_OK) {
        size_t k = 0, want = n - *done < chunk ? n - *done : chunk;
        for (; k < want; k++) {
            const eb_message *m = &msgs[*done + k];
            evs[k] = build_event(b, NULL, m->topic, strlen(m->topic), m->payload, m->len, m->key,
                                 m->key_len, opts, false, cause);
            if (evs[k] == NULL) {
                rc = EB_ENOMEM;
                break;
            }
        }
        size_t ok = 0;
        if (delay > 0) {
            int64_t due = durable_due(opts, delay);
            for (; ok < k; ok++) {
                int src = eb__store_schedule(b->store, evs[ok], due, durable == EB_PUBLISH_DURABLE);
                if (src != EB_OK) {
                    rc = src;
                    break;
                }
                eb__event_unref(evs[ok], &b->depot);
            }
        } else if (k > 0 && (rc == EB_OK || !whole)) {
            /* (A one-transaction batch that could not build every event
               publishes none of them.) */
            int arc = durable_append(b, evs, k, durable, opts->timeout_ns);
            if (arc == EB_OK)
                ok = k;
            else
                rc = arc;
        }
        for (size_t i = ok; i < k; i++)
            unbuild_event(b, evs[i]);
        *done += ok;
    }
    if (evs != stack)
        free(evs);
    return rc;
}

EB_API int eb_publish_batch(eb_bus *bus, const eb_message *msgs, size_t n,
                            const eb_publish_options *opts, size_t *accepted)
{
    eb_publish_options defaults;
    size_t done = 0;
    if (opts == NULL) {
        eb_publish_options_init(&defaults);
        opts = &defaults;
    }
    if (bus == NULL || (msgs == NULL && n > 0) || !opts_ok(opts))
        return EB_EINVAL;
    const char *checked = NULL; /* the last topic found valid */
    for (size_t i = 0; i < n; i++) {
        size_t tl;
        /* A batch often repeats one topic string: measured once. */
        if (msgs[i].topic == NULL || msgs[i].topic != checked) {
            if (!publish_topic_ok(msgs[i].topic, &tl))
                return EB_EINVAL;
            checked = msgs[i].topic;
        }
        if ((msgs[i].payload == NULL && msgs[i].len > 0) || msgs[i].key_len > 255 ||
            (msgs[i].key == NULL && msgs[i].key_len > 0))
            return EB_EINVAL;
    }
    /* Valid (EB_EINVAL leaves *accepted alone): every other outcome says
       its prefix, none so far. */
    if (accepted != NULL)
        *accepted = 0;
    unsigned durable = opts->flags & DURABLE_FLAGS;
    if (durable && bus->store == NULL)
        return EB_ENOTSUP;
    /* Memory-only events: due now (0) or at this monotonic time. */
    int64_t due = durable ? 0 : memory_due(bus, opts);
    int rc = publish_enter(bus);
    if (rc != EB_OK)
        return rc;
    if (durable) {
        rc = durable_batch(bus, msgs, n, opts, durable, &done);
        n = done; /* the carrier loop below has nothing left to do */
    }
    /* Events travel in carriers of up to EB__CARRIER_MAX: one intake
       operation (and one cache-line hand-off of the ring) per carrier. */
    /* Copied events of an immediate batch are built inside their carrier
       (see eb__carrier); delayed events leave it one by one for the timer
       heap and zero-copy ones have payloads of their own: blocks of their
       own for those. */
    bool inline_ok = !durable && due == 0 && opts->payload_free == NULL;
    const eb_event *cause = handler_cause();
    bool ext = needs_ext(opts, false, cause);
    if (inline_ok && n > 1 && !atomic_load_explicit(&bus->carriers_made, memory_order_relaxed) &&
        !atomic_exchange_explicit(&bus->carriers_made, true, memory_order_relaxed))
        prefill_carriers(bus);
    while (done < n && rc == EB_OK) {
        /* Carriers of equal size: 64 events go as 32 + 32, not 48 + 16, so
           that their blocks are of one class. */
        size_t left = n - done, carriers = (left + EB__CARRIER_MAX - 1) / EB__CARRIER_MAX;
        size_t want = (left + carriers - 1) / carriers;
        /* A block just big enough for the header and these events, so that
           small batches do not hold big blocks. */
        size_t room = EB__CARRIER_HEAD;
        const char *sized = NULL;                      /* the last message's topic, */
        size_t sized_key = 0, sized_len = 0, size = 0; /* key and payload length, size */
        for (size_t k = 0; inline_ok && k < want && room < EB__CARRIER_BLOCK; k++) {
            const eb_message *m = &msgs[done + k];
            size_t kl = m->key != NULL ? m->key_len : 0;
            if (m->topic != sized || kl != sized_key || m->len != sized_len || k == 0) {
                size = eb__event_size(strlen(m->topic), kl, m->len, ext);
                sized = m->topic;
                sized_key = kl;
                sized_len = m->len;
            }
            room += size;
        }
        eb__carrier *c = eb__carrier_new(&bus->depot, room);
        if (c == NULL) {
            rc = EB_ENOMEM;
            break;
        }
        const char *prev = NULL;
        size_t prev_len = 0;
        /* The header of the last event if it is inline, keyless and without
           extension: the next one of the same topic and no key is a copy of
           it (eb__event_repeat). A copy, because reading back the lines just
           written costs a store-forwarding stall per event. */
        eb_event tmpl;
        bool have_tmpl = false;
        eb__carrier *in = inline_ok ? c : NULL;
        for (c->n = 0; c->n < want; c->n++) {
            const eb_message *m = &msgs[done + c->n];
            eb_event *ev;
            if (have_tmpl && m->topic == prev && m->key == NULL &&
                (ev = eb__event_repeat(in, &tmpl, m->topic, m->payload, m->len)) != NULL) {
                c->same |= (uint64_t)1 << c->n; /* tmpl has EB__EV_SAME_TOPIC */
                c->ev[c->n] = ev;
                continue;
            }
            size_t tl = m->topic == prev ? prev_len : strlen(m->topic);
            ev = build_event(bus, in, m->topic, tl, m->payload, m->len, m->key, m->key_len, opts,
                             false, cause);
            if (ev == NULL) {
                rc = EB_ENOMEM;
                break;
            }
            /* A run of one topic is routed once per carrier (dispatch_held);
               delayed events travel one by one (schedule_event). */
            if (due == 0 && prev != NULL && tl == prev_len &&
                (m->topic == prev || memcmp(m->topic, prev, tl) == 0)) {
                ev->flags |= EB__EV_SAME_TOPIC;
                c->same |= (uint64_t)1 << c->n;
            }
            if (m->key != NULL && m->key_len > 0)
                c->keyed = true;
            prev = m->topic;
            prev_len = tl;
            have_tmpl = (ev->flags & EB__EV_INLINE) && ev->key_len == 0 && !ext;
            if (have_tmpl) {
                tmpl = *ev;
                tmpl.flags |= EB__EV_SAME_TOPIC;
            }
            c->ev[c->n] = ev;
        }
        unsigned cn = c->n;
        eb__carrier_seal(c);
        if (cn > 0 && due == 0) {
            int prc = intake_push(bus, EB__CARRIER_TAG(c), cn, opts->timeout_ns);
            if (prc == EB_OK) {
                /* The carrier is the dispatcher's now (it may already be
                   unpacked and freed): not touched again. */
                done += cn;
                continue;
            }
            /* The side list may have taken a prefix of the carrier before
               it ran out of memory (side_push_entry): those cn - c->n
               events are accepted; c->ev[0..c->n) holds the rest and
               the carrier is still ours. */
            done += cn - c->n;
            for (unsigned i = 0; i < c->n; i++)
                unbuild_event(bus, c->ev[i]);
            rc = prc;
        } else if (cn > 0) {
            /* Delayed: each event waits in the timer heap on its own. */
            unsigned k = 0;
            int prc = EB_OK;
            while (k < cn && (prc = schedule_event(bus, c->ev[k], due)) == EB_OK)
                k++;
            for (unsigned i = k; i < cn; i++)
                unbuild_event(bus, c->ev[i]);
            done += k;
            if (prc != EB_OK)
                rc = prc;
        }
        eb__carrier_put(&bus->depot, c);
    }
    publish_exit(bus, done);
    if (accepted != NULL)
        *accepted = done;
    return rc;
}

EB_API void eb_publish_options_init(eb_publish_options *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->timeout_ns = -1;
}

EB_API int eb_publish(eb_bus *bus, const char *topic, const void *payload, size_t len,
                      const eb_publish_options *opts)
{
    return publish_common(bus, topic, payload, len, opts, false, NULL);
}

EB_API int eb_publish_async(eb_bus *bus, const char *topic, const void *payload, size_t len,
                            const eb_publish_options *opts, eb_ticket **ticket)
{
    if (ticket == NULL)
        return EB_EINVAL;
    eb_event *ev;
    int rc = publish_common(bus, topic, payload, len, opts, true, &ev);
    if (rc == EB_OK)
        *ticket = (eb_ticket *)ev;
    return rc;
}

/* A memory-only event to sub only, as eb_publish_async publishes. Kept out
   of publish_common, and built as the store's writer builds its events
   rather than with build_event: a parameter more for publish_common, or a
   fourth caller of build_event (which GCC then stopped inlining), cost one
   publisher 3-7% (alternating rounds, session 16). */
int eb__publish_only(eb_bus *b, struct eb_subscription *sub, const char *topic, const void *key,
                     size_t key_len, const uint8_t corr[16], eb_ticket **ticket)
{
    size_t tl;
    if (b == NULL || sub == NULL || ticket == NULL || !publish_topic_ok(topic, &tl) ||
        (key == NULL && key_len > 0) || key_len > 255)
        return EB_EINVAL;
    int rc = publish_enter(b);
    if (rc != EB_OK)
        return rc;
    eb_event *ev = eb__bus_event_new(b, topic, key, key_len, NULL, 0, corr, NULL);
    if (ev == NULL) {
        publish_exit(b, 0);
        return EB_ENOMEM;
    }
    eb__event_track_init(ev);
    eb__event_ref(ev, 1); /* the ticket's reference */
    eb__bus_replay_target(b, ev, sub);
    rc = intake_push(b, ev, 0, -1);
    if (rc == EB_OK) {
        *ticket = (eb_ticket *)ev;
    } else {
        ev->ext->target = NULL;
        sub_unref(b, sub);
        eb__event_unref(ev, &b->depot);
        unbuild_event(b, ev);
    }
    publish_exit(b, rc == EB_OK ? 1 : 0);
    return rc;
}

bool eb__event_is_only(const eb_event *ev)
{
    return (ev->flags & EB__EV_REPLAY) != 0;
}

EB_API int eb_ticket_wait(eb_ticket *ticket, int64_t timeout_ns, eb_publish_result *result)
{
    if (ticket == NULL)
        return EB_EINVAL;
    eb_event *ev = (eb_event *)ticket;
    int rc = EB_OK;
    /* A poll (timeout 0) from a handler still gets EB_EDEADLK when only its
       own lane could finish the event (worker_wait checks first). */
    if (!eb__event_done(ev))
        rc = timeout_ns == 0 && self_worker(ev->bus) == NULL
                 ? EB_ETIMEDOUT
                 : wait_event(ev->bus, ev, eb__deadline_after(timeout_ns));
    if (rc == EB_OK && result != NULL)
        eb__event_result(ev, result);
    return rc;
}

EB_API void eb_ticket_release(eb_ticket *ticket)
{
    if (ticket != NULL)
        eb__event_unref((eb_event *)ticket, NULL);
}

EB_API int eb_publish_wait(eb_bus *bus, const char *topic, const void *payload, size_t len,
                           const eb_publish_options *opts, eb_publish_result *result)
{
    int64_t timeout = opts != NULL ? opts->timeout_ns : -1;
    int64_t deadline = eb__deadline_after(timeout);
    eb_ticket *t;
    int rc = eb_publish_async(bus, topic, payload, len, opts, &t);
    if (rc == EB_ETIMEDOUT)
        return EB_EAGAIN; /* nothing published: EB_ETIMEDOUT says it was */
    if (rc != EB_OK)
        return rc;
    int64_t left = deadline == INT64_MAX ? -1 : deadline - eb__now_mono_ns();
    rc = eb_ticket_wait(t, left < 0 && deadline != INT64_MAX ? 0 : left, result);
    eb__event_unref((eb_event *)t, &bus->depot); /* the bus is alive: use its depot */
    return rc;
}

/* ---- events ----------------------------------------------------------- */

/* Users may release events and tickets after their bus is gone: these paths
   never touch the bus (no depot: the block goes to the thread's cache or
   back to malloc). */
EB_API void eb_event_release(const eb_event *ev)
{
    if (ev != NULL)
        eb__event_unref((eb_event *)ev, NULL);
}

EB_API unsigned eb_event_attempt(const eb_event *ev)
{
    eb__worker *w = tls_worker;
    if (w != NULL && ev != NULL)
        for (unsigned i = w->depth; i-- > 0;)
            if (w->stack[i]->cur == ev)
                return w->stack[i]->attempt;
    return 1;
}

/* ---- the store's side ------------------------------------------------- */

bool eb__bus_inject(eb_bus *bus, eb_event *ev)
{
    return intake_try(bus, ev, 0);
}

void eb__bus_store_add(eb_bus *bus, uint64_t n)
{
    atomic_fetch_add_explicit(&bus->store_inflight, n, memory_order_seq_cst);
}

void eb__bus_store_done(eb_bus *bus, uint64_t n)
{
    if (n == 0)
        return;
    /* seq_cst, after the pushes: try_finish reads this count, then the
       ring, so it never sees neither. */
    uint64_t left = atomic_fetch_sub_explicit(&bus->store_inflight, n, memory_order_seq_cst) - n;
    wake_for_work(bus);
    if (left == 0 && atomic_load_explicit(&bus->closing, memory_order_seq_cst))
        wake_pool(bus); /* the workers may be waiting for us to finish */
}

eb_event *eb__bus_event_new(eb_bus *bus, const char *topic, const void *key, size_t key_len,
                            const void *payload, size_t len, const uint8_t *corr,
                            const uint8_t *caus)
{
    eb_event *ev = eb__event_new(bus, &bus->depot, NULL, topic, strlen(topic), key, key_len,
                                 payload, len, true, true, 0);
    if (ev == NULL)
        return NULL;
    if (corr != NULL) {
        memcpy(ev->ext->corr, corr, 16);
        ev->flags |= EB__EV_CORR;
    }
    if (caus != NULL) {
        memcpy(ev->ext->caus, caus, 16);
        ev->flags |= EB__EV_CAUS;
    }
    return ev;
}

void eb__bus_replay_target(eb_bus *bus, eb_event *ev, struct eb_subscription *sub)
{
    (void)bus;
    sub_ref(sub); /* dropped when the dispatcher routes ev */
    ev->ext->target = sub;
    ev->flags |= EB__EV_REPLAY;
}

void eb__bus_event_unref(eb_bus *bus, eb_event *ev)
{
    if (ev->flags & EB__EV_REPLAY && ev->ext->target != NULL) {
        struct eb_subscription *t = ev->ext->target;
        ev->ext->target = NULL;
        sub_unref(bus, t);
    }
    eb__event_unref(ev, &bus->depot);
}

bool eb__bus_in_handler(const eb_bus *bus)
{
    return self_worker(bus) != NULL;
}

void eb__delivery_give_up(void)
{
    eb__worker *w = tls_worker;
    if (w != NULL && w->depth > 0)
        w->stack[w->depth - 1]->give_up = true;
}

bool eb__sub_on_stack(const struct eb_subscription *sub)
{
    eb__worker *w = self_worker(sub->bus);
    for (unsigned i = 0; w != NULL && i < w->depth; i++)
        if (w->stack[i]->sub == sub)
            return true;
    return false;
}

/* ---- subscribing ------------------------------------------------------ */

EB_API void eb_subscribe_options_init(eb_subscribe_options *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->delivery = EB_DELIVERY_SERIAL;
    opts->max_attempts = 3;
    opts->backoff_initial_ns = 1000000;
    opts->backoff_max_ns = 1000000000;
}

/* eb_subscribe's checks of its options, which it fills with their defaults:
   EB_OK, EB_EINVAL or EB_ENOTSUP. */
static int subscribe_options_check(const eb_bus *bus, eb_subscribe_options *o)
{
    if ((unsigned)o->delivery > EB_DELIVERY_CONCURRENT ||
        (unsigned)o->overflow > EB_OVERFLOW_DROP_NEWEST || o->lanes > MAX_LANES ||
        o->max_attempts > MAX_ATTEMPTS || o->mailbox_capacity > MAX_MAILBOX ||
        (o->delivery == EB_DELIVERY_SERIAL && o->lanes > 1) ||
        (o->name != NULL && strnlen(o->name, 256) > 255) ||
        (o->durable &&
         (o->name == NULL || o->name[0] == '\0' || o->overflow != EB_OVERFLOW_BLOCK)) ||
        (o->idempotent && !o->durable))
        return EB_EINVAL;
    if (o->durable && bus->store == NULL)
        return EB_ENOTSUP;
    if (o->max_attempts == 0)
        o->max_attempts = 3;
    if (o->backoff_initial_ns == 0)
        o->backoff_initial_ns = 1000000;
    if (o->backoff_max_ns == 0)
        o->backoff_max_ns = 1000000000;
    return o->backoff_max_ns < o->backoff_initial_ns ? EB_EINVAL : EB_OK;
}

EB_API int eb_subscribe(eb_bus *bus, const char *pattern, eb_handler_fn fn, void *ctx,
                        const eb_subscribe_options *opts, eb_subscription **out)
{
    size_t pl;
    eb_subscribe_options o;
    if (opts != NULL)
        o = *opts;
    else
        eb_subscribe_options_init(&o);
    if (bus == NULL || fn == NULL || !topic_ok(pattern, &pl))
        return EB_EINVAL;
    int rc = subscribe_options_check(bus, &o);
    if (rc != EB_OK)
        return rc;
    unsigned nlanes = 1;
    if (o.delivery == EB_DELIVERY_KEYED)
        nlanes = o.lanes ? o.lanes : 16;
    else if (o.delivery == EB_DELIVERY_CONCURRENT)
        nlanes = o.lanes ? o.lanes : bus->nworkers;
    unsigned mailbox = o.mailbox_capacity ? o.mailbox_capacity : bus->cfg.mailbox_capacity;
    if (atomic_load_explicit(&bus->closing, memory_order_acquire))
        return EB_ECLOSED;

    struct eb_subscription *s = eb__sub_new(bus, pattern, pl, fn, ctx, &o, nlanes, mailbox);
    if (s == NULL)
        return EB_ENOMEM;
    if (o.delivery == EB_DELIVERY_CONCURRENT)
        for (unsigned i = 0; i < nlanes; i++)
            s->lanes[i].home = 1 + i % bus->nworkers;
    if (o.durable)
        rc = eb__dsub_open(bus->store, o.name, pattern, pl, o.idempotent, s, &s->dsub);
    if (rc == EB_OK)
        rc = ctl_run(bus, s, 1);
    if (rc != EB_OK) {
        eb__sub_free(s);
        return rc;
    }
    if (s->dsub != NULL)
        eb__dsub_start(s->dsub); /* routed: the replay may begin */
    pthread_mutex_lock(&bus->reg_lock);
    s->reg_next = bus->reg_head;
    if (bus->reg_head != NULL)
        bus->reg_head->reg_prev = s;
    bus->reg_head = s;
    bus->nsubs++;
    pthread_mutex_unlock(&bus->reg_lock);
    if (out != NULL)
        *out = s;
    return EB_OK;
}

/* Takes s out of the registry (or, when s->gone, out of the gone list);
   then, with to_gone, puts it on the gone list (see report_busy). */
static void reg_unlink(eb_bus *b, struct eb_subscription *s, bool to_gone)
{
    pthread_mutex_lock(&b->reg_lock);
    struct eb_subscription **head = s->gone ? &b->gone_head : &b->reg_head;
    if (s->reg_prev != NULL)
        s->reg_prev->reg_next = s->reg_next;
    else
        *head = s->reg_next;
    if (s->reg_next != NULL)
        s->reg_next->reg_prev = s->reg_prev;
    if (!s->gone)
        b->nsubs--;
    s->reg_prev = s->reg_next = NULL;
    if (to_gone) {
        s->gone = true;
        s->reg_next = b->gone_head;
        if (b->gone_head != NULL)
            b->gone_head->reg_prev = s;
        b->gone_head = s;
    }
    pthread_mutex_unlock(&b->reg_lock);
}

EB_API int eb_unsubscribe(eb_subscription *sub)
{
    if (sub == NULL || atomic_exchange_explicit(&sub->unsubscribing, true, memory_order_acq_rel))
        return EB_EINVAL;
    eb_bus *b = sub->bus;
    ctl_run(b, sub, 2);
    if (sub->dsub != NULL)
        eb__dsub_stop(sub->dsub); /* no more replayed events for it */
    reg_unlink(b, sub, true);     /* gone: listed until freed (see report_busy) */
    eb__worker *w = self_worker(b);
    if (!eb__sub_on_stack(sub)) {
        /* Wait until only our reference is left: no lane is scheduled, so no
           handler runs and none will (cancelled is set). */
        /* A stalled event's pin does not count: it never calls a cancelled
           subscription, and it may be held up by the caller's own lane. */
        while (EB__SUB_REFS(atomic_load_explicit(&sub->refs, memory_order_acquire)) > 1) {
            if (w != NULL && help_once(b, w))
                continue;
            uint32_t snap = eb__ec_value(&b->ctl_ec);
            if (EB__SUB_REFS(atomic_load_explicit(&sub->refs, memory_order_acquire)) <= 1)
                break;
            if (w != NULL) {
                park(b, eb__now_mono_ns() + 1000000);
            } else {
                struct timespec ts = mono_ts(eb__now_mono_ns() + 10000000);
                eb__ec_wait(&b->ctl_ec, snap, &ts);
            }
        }
    }
    sub_unref(b, sub);
    return EB_OK;
}

EB_API int eb_subscription_stats_get(eb_subscription *sub, eb_subscription_stats *out)
{
    if (sub == NULL || out == NULL)
        return EB_EINVAL;
    eb_subscription_stats st = {0};
    st.dropped = atomic_load_explicit(&sub->dropped, memory_order_relaxed);
    for (unsigned i = 0; i < sub->nlanes; i++) {
        const eb__lane *l = &sub->lanes[i];
        st.delivered += atomic_load_explicit(&l->delivered, memory_order_relaxed);
        st.failed += atomic_load_explicit(&l->failed, memory_order_relaxed);
        st.retried += atomic_load_explicit(&l->retried, memory_order_relaxed);
        uint64_t done = atomic_load_explicit(&l->done, memory_order_relaxed) +
                        atomic_load_explicit(&l->evicted, memory_order_relaxed);
        uint64_t pushed = atomic_load_explicit(&l->pushed, memory_order_relaxed);
        st.lag += pushed > done ? pushed - done : 0;
    }
    *out = st;
    return EB_OK;
}

/* ---- bus lifecycle ---------------------------------------------------- */

EB_API void eb_bus_config_init(eb_bus_config *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->intake_capacity = 4095;
    cfg->mailbox_capacity = 255;
    cfg->log_level = EB_LOG_WARN;
}

EB_API int eb_bus_create(const eb_bus_config *cfg, eb_bus **out)
{
    eb_bus_config c;
    if (cfg != NULL)
        c = *cfg;
    else
        eb_bus_config_init(&c);
    if (out == NULL || c.workers > MAX_WORKERS || c.intake_capacity > MAX_INTAKE ||
        c.mailbox_capacity > MAX_MAILBOX || (unsigned)c.log_level > EB_LOG_ERROR)
        return EB_EINVAL;
    if (c.intake_capacity == 0)
        c.intake_capacity = 4095;
    if (c.mailbox_capacity == 0)
        c.mailbox_capacity = 255;
    if (c.workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c.workers = n > 0 ? (unsigned)(n > MAX_WORKERS ? MAX_WORKERS : n) : 1;
    }

    eb_bus *b = aligned_alloc(EB__CACHELINE,
                              (sizeof(*b) + EB__CACHELINE - 1) & ~(size_t)(EB__CACHELINE - 1));
    if (b == NULL)
        return EB_ENOMEM;
    memset(b, 0, sizeof(*b));
    b->cfg = c;
    b->nworkers = c.workers;
    b->touch_gen = 1; /* lanes start with touch 0: "not touched" */
    b->max_spinners = c.workers > 3 ? c.workers / 2 : 1;
    if (getrandom(&b->nonce, sizeof(b->nonce), 0) != sizeof(b->nonce))
        b->nonce = (uint64_t)eb__now_real_ns() ^ (uint64_t)(uintptr_t)b;
    eb__ec_init(&b->work_ec);
    eb__ec_init(&b->space_ec);
    eb__ec_init(&b->ctl_ec);
    int rc = EB_ENOMEM;
    if (eb__ring_init(&b->intake, c.intake_capacity) != 0)
        goto fail_ring;
    if ((b->route = eb__route_new()) == NULL)
        goto fail_route;
    if (eb__timers_init(&b->timers) != 0)
        goto fail_timers;
    /* As many blocks as can be in flight with one subscription's mailbox
       full, so that a steady load never mallocs (bench scenario 7): the
       intake (at most 8192 of it), one default mailbox (at most 1024), the
       dispatcher's batch, and the free blocks that sit in partly filled
       per-thread magazines (workers, publisher, dispatcher; counted for
       16 workers at most). 2.1 MiB with the defaults, 4.5 MiB at most. */
    unsigned prefill = (c.intake_capacity < 8192 ? c.intake_capacity : 8192) +
                       (c.mailbox_capacity < 1024 ? c.mailbox_capacity : 1024) +
                       EB__DISPATCH_BATCH + EB__CARRIER_MAX +
                       ((c.workers < 16 ? c.workers : 16) + 2) * EB__MAG_SIZE;
    /* And two empty magazines per size class for each thread that frees
       blocks (workers, publishers, the store's writer; counted for 16
       workers at most): 0.1 MiB at most. */
    unsigned spare_mags = ((c.workers < 16 ? c.workers : 16) + 4) * 2 * EB__CLASSES;
    if (eb__depot_init(&b->depot, prefill, spare_mags) != 0)
        goto fail_depot;
    pthread_mutex_init(&b->ctl_lock, NULL);
    pthread_mutex_init(&b->side_lock, NULL);
    pthread_mutex_init(&b->rq_lock, NULL);
    pthread_mutex_init(&b->reg_lock, NULL);
    if (c.store != NULL && (rc = eb__store_attach(c.store, b)) != EB_OK)
        goto fail_store;
    b->store = c.store;
    rc = EB_ENOMEM;
    b->workers = calloc(c.workers, sizeof(*b->workers));
    b->wf = calloc(c.workers, sizeof(*b->wf));
    if (b->workers == NULL || b->wf == NULL) {
        free(b->workers);
        free(b->wf);
        goto fail_workers;
    }
    unsigned started = 0;
    for (; started < c.workers; started++) {
        eb__worker *w = &b->workers[started];
        w->bus = b;
        w->index = started;
        if (pthread_mutex_init(&b->wf[started].lock, NULL) != 0)
            break;
        w->rng = b->nonce ^ (0x9e3779b97f4a7c15ULL * (started + 1));
        if (w->rng == 0)
            w->rng = 1;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            pthread_mutex_destroy(&b->wf[started].lock);
            break;
        }
        /* "eb-worker-N" in top -H, ps -L, gdb and perf (best effort: a
           name is at most 15 characters). */
        char name[16];
        snprintf(name, sizeof(name), "eb-worker-%u", started % 1000); /* workers <= 256 */
        (void)pthread_setname_np(w->thread, name);
    }
    if (started < c.workers) {
        rc = EB_EIO;
        atomic_store(&b->closing, 1);
        atomic_store(&b->stop, true);
        wake_pool(b);
        for (unsigned i = 0; i < started; i++) {
            pthread_join(b->workers[i].thread, NULL);
            pthread_mutex_destroy(&b->wf[i].lock);
        }
        free(b->workers);
        free(b->wf);
        goto fail_workers;
    }
    *out = b;
    return EB_OK;

fail_workers:
    if (b->store != NULL)
        eb__store_detach(b->store);
fail_store:
    pthread_mutex_destroy(&b->ctl_lock);
    pthread_mutex_destroy(&b->side_lock);
    pthread_mutex_destroy(&b->rq_lock);
    pthread_mutex_destroy(&b->reg_lock);
    eb__depot_fini(&b->depot);
fail_depot:
    eb__timers_fini(&b->timers);
fail_timers:
    eb__route_free(b->route);
fail_route:
    eb__ring_fini(&b->intake);
fail_ring:
    free(b);
    return rc;
}

/* A delayed event not due at shutdown: released undelivered, its waiter
   told EB_ECLOSED. */
static void drop_unfired(eb_bus *b, eb_event *ev)
{
    if (ev->flags & EB__EV_TRACKED) {
        atomic_store_explicit(&ev->ext->first_error, EB_ECLOSED, memory_order_relaxed);
        ev->ext->matched = 0; /* never routed */
        eb__event_finish(ev, EB_ECLOSED, false);
    }
    eb__event_unref(ev, &b->depot);
}

/* At the start of a shutdown: the delayed events not yet due leave the
   timer heap at once (their retries' timers stay), so that a handler
   waiting for one returns (EB_ECLOSED) instead of holding the shutdown
   until it falls due. Without memory for the list they go in bus_free. */
static void drop_scheduled(eb_bus *b)
{
    eb__timer_entry *v;
    /* Only those not due yet: a due one (an at_ns already past, say) is
       accepted for now and is delivered like any event on the intake. */
    unsigned n = eb__timers_take_tagged(&b->timers, eb__now_mono_ns(), &v);
    for (unsigned i = 0; i < n; i++)
        drop_unfired(b, EV_TIMER_UNTAG(v[i].what));
    free(v);
    if (n > 0) {
        atomic_fetch_sub_explicit(&b->scheduled, n, memory_order_relaxed);
        logf_(b, EB_LOG_WARN, "%u scheduled events were not due at shutdown and were dropped", n);
    }
}

/* Frees a bus whose workers were joined. */
static void bus_free(eb_bus *b)
{
    /* Timer entries left behind by cancelled backoffs hold references;
       delayed events not yet due are released undelivered. */
    eb__timer_entry e;
    size_t unfired = 0;
    while (eb__timers_pop_due(&b->timers, INT64_MAX, &e)) {
        if (IS_EV_TIMER(e.what)) {
            drop_unfired(b, EV_TIMER_UNTAG(e.what));
            unfired++;
            continue;
        }
        sub_unref(b, ((eb__lane *)e.what)->sub);
    }
    if (unfired > 0)
        logf_(b, EB_LOG_WARN, "%zu scheduled events were not due at shutdown and were dropped",
              unfired);
    struct eb_subscription *s = b->reg_head;
    while (s != NULL) {
        struct eb_subscription *next = s->reg_next;
        eb__sub_free(s); /* a durable one writes its final checkpoint */
        s = next;
    }
    if (b->store != NULL)
        eb__store_detach(b->store);
    eb__route_free(b->route);
    eb__ring_fini(&b->intake);
    free(b->side);
    free(b->sb);
    for (unsigned i = 0; i < b->nworkers; i++)
        pthread_mutex_destroy(&b->wf[i].lock);
    free(b->workers);
    free(b->wf);
    free(b->cyc);
    eb__timers_fini(&b->timers);
    eb__depot_fini(&b->depot);
    pthread_mutex_destroy(&b->ctl_lock);
    pthread_mutex_destroy(&b->side_lock);
    pthread_mutex_destroy(&b->rq_lock);
    pthread_mutex_destroy(&b->reg_lock);
    free(b);
}

/* Is a delivery still to run or running: an event on the intake, the side
   list, the timer heap or on its way from the store, a delivery not
   finished (queued, or waiting out a retry), or a handler call? */
static bool deliveries_left(eb_bus *b)
{
    if (eb__ring_size(&b->intake) > 0 ||
        atomic_load_explicit(&b->side_count, memory_order_seq_cst) > 0 ||
        atomic_load_explicit(&b->scheduled, memory_order_seq_cst) > 0 ||
        atomic_load_explicit(&b->store_inflight, memory_order_seq_cst) > 0)
        return true;
    bool left = false;
    pthread_mutex_lock(&b->reg_lock);
    struct eb_subscription *lists[2] = {b->reg_head, b->gone_head};
    for (unsigned k = 0; k < 2; k++) {
        for (struct eb_subscription *s = lists[k]; s != NULL && !left; s = s->reg_next) {
            if (!s->gone) {
                eb_subscription_stats ss;
                eb_subscription_stats_get(s, &ss);
                left = ss.lag > 0;
            }
            for (unsigned i = 0; i < s->nlanes && !left; i++)
                left = atomic_load_explicit(&s->lanes[i].run_since, memory_order_relaxed) != 0;
        }
    }
    pthread_mutex_unlock(&b->reg_lock);
    return left;
}

#define FINISH_GRACE_NS 10000000 /* see wait_drained */

/* Waits until the workers set stop (the bus drained) or the deadline. */
static bool wait_drained(eb_bus *b, int64_t deadline)
{
    for (;;) {
        /* try_finish bumps work_ec after it set stop. */
        uint32_t snap = eb__ec_value(&b->work_ec);
        /* The caller may see the bus drained itself (try_finish works
           under the token, from any thread): an idle bus shuts down at once,
           even with a zero timeout. */
        if (atomic_load_explicit(&b->stop, memory_order_acquire) || try_finish(b))
            return true;
        if (eb__now_mono_ns() >= deadline) {
            /* Past the deadline with no delivery left to run or running,
               what remains is the workers' own bookkeeping of the last one
               (a lane going idle, a check under the token): let it end, at
               most FINISH_GRACE_NS, rather than call an idle bus busy. */
            int64_t grace = eb__now_mono_ns() + FINISH_GRACE_NS;
            while (!deliveries_left(b) && eb__now_mono_ns() < grace) {
                if (atomic_load_explicit(&b->stop, memory_order_acquire) || try_finish(b))
                    return true;
                sched_yield();
            }
            return false;
        }
        struct timespec ts = mono_ts(deadline);
        eb__ec_wait(&b->work_ec, snap, &ts);
    }
}

#define BUSY_REPORT_MAX 8

/* Logs (WARN) why a shutdown timed out: every handler still running, with
   its subscription and how long it has run, and what is still queued. */
static void report_busy(eb_bus *b, int64_t waited_ns)
{
    /* One line per subscription (its running calls and the longest), so
       that a wide CONCURRENT one cannot hide the others. */
    struct {
        char name[256];
        char pattern[EB_TOPIC_MAX + 1];
        bool named, gone;
        unsigned calls;
        int64_t ms;
    } busy[BUSY_REPORT_MAX];
    unsigned nbusy = 0, more = 0, calls = 0;
    uint64_t queued = 0;
    int64_t now = eb__now_coarse_ns();
    /* A subscription in the registry or on the gone list is alive while
       reg_lock is held (it is unlinked before it can be freed). Strings are
       copied: the log callback runs after the lock is released. A gone one
       (unsubscribed: by one of its handlers, or by a call still waiting for
       them) has nothing queued that will run, only handlers that may still
       be running. */
    pthread_mutex_lock(&b->reg_lock);
    struct eb_subscription *lists[2] = {b->reg_head, b->gone_head};
    for (unsigned k = 0; k < 2; k++) {
        for (struct eb_subscription *s = lists[k]; s != NULL; s = s->reg_next) {
            if (!s->gone) {
                eb_subscription_stats ss;
                eb_subscription_stats_get(s, &ss);
                queued += ss.lag;
            }
            unsigned running = 0;
            int64_t oldest = INT64_MAX;
            for (unsigned i = 0; i < s->nlanes; i++) {
                int64_t since = atomic_load_explicit(&s->lanes[i].run_since, memory_order_relaxed);
                if (since != 0) {
                    running++;
                    oldest = since < oldest ? since : oldest;
                }
            }
            if (running == 0)
                continue;
            calls += running;
            if (nbusy == BUSY_REPORT_MAX) {
                more++;
                continue;
            }
            snprintf(busy[nbusy].name, sizeof busy[nbusy].name, "%s", s->name);
            snprintf(busy[nbusy].pattern, sizeof busy[nbusy].pattern, "%s", s->pattern);
            busy[nbusy].named = s->named;
            busy[nbusy].gone = s->gone;
            busy[nbusy].calls = running;
            busy[nbusy].ms = now > oldest ? (now - oldest) / 1000000 : 0;
            nbusy++;
        }
    }
    pthread_mutex_unlock(&b->reg_lock);
    logf_(b, EB_LOG_WARN,
          "shutdown timed out after %lld ms: %u handler(s) still running, %llu delivery(ies) "
          "not finished, %u event(s) on the intake; the bus stays closed and allocated",
          (long long)(waited_ns / 1000000), calls, (unsigned long long)queued,
          eb__ring_size(&b->intake));
    for (unsigned i = 0; i < nbusy; i++) {
        char also[48] = "";
        if (busy[i].calls > 1)
            snprintf(also, sizeof also, " (%u calls running, the longest)", busy[i].calls);
        if (busy[i].named)
            logf_(b, EB_LOG_WARN,
                  "shutdown: handler of subscription '%s' (pattern '%s'%s) running for %lld ms%s",
                  busy[i].name, busy[i].pattern, busy[i].gone ? ", unsubscribed" : "",
                  (long long)busy[i].ms, also);
        else
            logf_(b, EB_LOG_WARN, "shutdown: handler of subscription '%s'%s running for %lld ms%s",
                  busy[i].pattern, busy[i].gone ? " (unsubscribed)" : "", (long long)busy[i].ms,
                  also);
    }
    if (more > 0)
        logf_(b, EB_LOG_WARN, "shutdown: and %u more subscription(s) with handlers running", more);
}

EB_API int eb_bus_shutdown(eb_bus *b, int64_t timeout_ns)
{
    if (b == NULL)
        return EB_EINVAL;
    /* A worker of this bus would wait for itself. */
    if (self_worker(b) != NULL)
        return EB_EDEADLK;
    int64_t start = eb__now_mono_ns();
    int64_t deadline = eb__deadline_after(timeout_ns);
    if (!b->shutdown_begun) {
        b->shutdown_begun = true;
        /* First the store's writer stops firing scheduled events into the
           bus (what it fired already is counted in store_inflight, which
           the workers wait out before they stop); then publishing closes.
           seq_cst: pairs with publish_enter's increment of the gate then
           load of closing. */
        if (b->store != NULL)
            eb__store_detach_begin(b->store);
        atomic_store_explicit(&b->closing, 1, memory_order_seq_cst);
        drop_scheduled(b);
        wake_pool(b);
    }
    if (deadline != INT64_MAX && !wait_drained(b, deadline)) {
        report_busy(b, eb__now_mono_ns() - start);
        return EB_ETIMEDOUT;
    }
    /* Drained (or no deadline): the workers exit once they see stop. */
    for (unsigned i = 0; i < b->nworkers; i++)
        pthread_join(b->workers[i].thread, NULL);
    bus_free(b);
    return EB_OK;
}

EB_API void eb_bus_destroy(eb_bus *b)
{
    if (b != NULL)
        (void)eb_bus_shutdown(b, -1);
}

EB_API int eb_bus_stats_get(eb_bus *b, eb_bus_stats *out)
{
    if (b == NULL || out == NULL)
        return EB_EINVAL;
    eb_bus_stats st = {0};
    st.published = eb__bus_accepted(b);
    st.dispatched = atomic_load_explicit(&b->dispatched, memory_order_relaxed);
    st.unrouted = atomic_load_explicit(&b->unrouted, memory_order_relaxed);
    st.dropped = atomic_load_explicit(&b->dropped, memory_order_relaxed);
    st.cancelled = atomic_load_explicit(&b->cancelled, memory_order_relaxed);
    for (unsigned i = 0; i < b->nworkers; i++) {
        eb__worker *w = &b->workers[i];
        st.delivered += atomic_load_explicit(&w->delivered, memory_order_relaxed);
        st.failed += atomic_load_explicit(&w->failed, memory_order_relaxed);
        st.retried += atomic_load_explicit(&w->retried, memory_order_relaxed);
        st.dead_lettered += atomic_load_explicit(&w->dead_lettered, memory_order_relaxed);
        st.cancelled += atomic_load_explicit(&w->cancelled, memory_order_relaxed);
    }
    st.intake_depth = eb__ring_size(&b->intake);
    st.intake_capacity = eb__ring_capacity(&b->intake);
    st.workers = b->nworkers;
    st.scheduled = atomic_load_explicit(&b->scheduled, memory_order_relaxed);
    pthread_mutex_lock(&b->reg_lock);
    st.subscriptions = b->nsubs;
    for (struct eb_subscription *s = b->reg_head; s != NULL; s = s->reg_next) {
        eb_subscription_stats ss;
        eb_subscription_stats_get(s, &ss);
        if (ss.lag > st.max_lag)
            st.max_lag = ss.lag;
    }
    pthread_mutex_unlock(&b->reg_lock);
    *out = st;
    return EB_OK;
}
