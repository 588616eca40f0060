/*
 * saga — the workload of scenario 9: the order-fulfillment saga of
 * examples/order_fulfillment.c, copied and adapted for the harness (the
 * example does not depend on bench/, and this file does not depend on it).
 *
 *   order.placed ──► saga ──inventory.reserve──► inventory (per SKU)
 *                     ▲   ◄──order.stock.reserved / rejected──┘
 *                     │   ──payment.charge──► payment (per order) + timeout
 *                     │   ◄──order.payment.charged / declined
 *                     │   charged:  ──inventory.ship──►      → completed
 *                     └── declined: ──inventory.release──►   → compensated
 *
 * One run: a fresh bus with the default workers (one per CPU), a command
 * bus with the two aggregate types, the saga on its store, and one
 * subscriber of "report.order.finished". The main thread places orders in
 * batches of 64, keeping at most `window` of them open (as the example
 * does), first the untimed warm-up orders, then the timed ones; the clock
 * stops when the last timed order reached its final state (polled every
 * 200 µs). A share of payments (fail_rate) is declined by the payment
 * aggregate and compensated (the reservation released). Every order also
 * schedules its payment timeout, as the example does, but with a delay far
 * beyond the run, and no payment goes unanswered: timeouts never fire here
 * (the pending ones are dropped when the bus is destroyed), so the figure is
 * not a measure of the timer's delay.
 *
 * A transition is one saved saga step: 4 per completed or compensated order
 * (placed, reserved, charged/declined, shipped/released), 2 per order
 * rejected for lack of stock. transitions/s = saga transitions saved during
 * the timed phase / its duration; orders/s likewise.
 *
 * Checks (any failure voids the figure): every order placed reached exactly
 * one final state; stock balances to the unit per SKU (on hand + reserved +
 * shipped = initial, nothing left reserved, shipped = what the completed
 * orders bought); payments balance (a charge stays exactly for the
 * completed orders); every order was started and completed once by the
 * saga and the timed phase saved exactly the transitions its outcomes
 * imply. Orders that stop finishing for 10 s fail the run.
 */
#include "bench.h"

#include <eventbus/eventbus.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SKUS 32u
#define CHUNK 64u
#define PAYMENT_TIMEOUT_NS (3600LL * 1000000000LL) /* never fires during a run */
#define STALL_NS 10000000000ull                    /* no order finished for this long */

typedef struct order_msg {
    uint32_t order;
    uint32_t sku;
    uint32_t qty;
    uint32_t cents;
} order_msg;

enum outcome { OUT_NONE = 0, OUT_COMPLETED, OUT_COMPENSATED, OUT_TIMED_OUT, OUT_REJECTED, OUT_N };

typedef struct finished_msg {
    uint32_t order;
    uint32_t outcome;
} finished_msg;

enum stage { RESERVING = 1, PAYING, SHIPPING, COMPENSATING, TIMING_OUT };
enum { AWAIT_RELEASE = 1, AWAIT_VOID = 2 };
typedef struct order_state {
    order_msg m;
    uint8_t stage;
    uint8_t awaiting;
} order_state;

typedef struct stock {
    int64_t on_hand, reserved, shipped;
} stock;

enum pay_status { PAY_NEW = 0, PAY_CHARGED, PAY_DECLINED, PAY_VOIDED };
typedef struct payment {
    uint32_t status;
    uint32_t cents;
} payment;

/* One run's shared state. Handlers run on the bus's workers: everything
   they share is atomic or written before the bus sees the first order. */
typedef struct run {
    uint32_t orders; /* warm-up + timed: ids 0..orders-1 */
    double fail_rate;
    uint64_t seed;
    int64_t initial_stock;
    _Atomic uint8_t *final; /* per order: its outcome, set once */
    atomic_uint finished;
    atomic_uint duplicates;
    atomic_uint bad_reports;
} run;

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1), from (seed, order, salt) only: every run places the
   same orders and declines the same payments. */
static double uniform(const run *r, uint32_t order, uint64_t salt)
{
    return (double)(mix64(r->seed ^ mix64(order * 4ULL + salt)) >> 11) / 9007199254740992.0;
}

static order_msg make_order(const run *r, uint32_t i)
{
    order_msg m = {i, (uint32_t)(uniform(r, i, 1) * SKUS), 1 + (uint32_t)(uniform(r, i, 2) * 3), 0};
    m.cents = m.qty * 1999;
    return m;
}

static const order_msg *payload_msg(const eb_event *ev)
{
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    return len == sizeof(order_msg) ? p : NULL;
}

/* ---- inventory: one aggregate per SKU ----------------------------------- */

static void stock_init(void *state, const void *id, size_t id_len, void *ctx)
{
    (void)id;
    (void)id_len;
    ((stock *)state)->on_hand = ((run *)ctx)->initial_stock;
}

static int stock_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    (void)ctx;
    stock *s = state;
    const order_msg *m = payload_msg(cmd);
    if (m == NULL)
        return 0;
    const char *t = eb_event_topic(cmd);
    const char *reply;
    if (strcmp(t, "inventory.reserve") == 0) {
        if (s->on_hand < m->qty) {
            reply = "order.stock.rejected";
        } else {
            s->on_hand -= m->qty;
            s->reserved += m->qty;
            reply = "order.stock.reserved";
        }
    } else if (strcmp(t, "inventory.release") == 0) {
        s->reserved -= m->qty;
        s->on_hand += m->qty;
        reply = "order.stock.released";
    } else {
        s->reserved -= m->qty; /* inventory.ship */
        s->shipped += m->qty;
        reply = "order.stock.shipped";
    }
    return eb_aggregate_emit(ac, reply, m, sizeof(*m), &m->order, sizeof(m->order));
}

/* ---- payment: one aggregate per order's payment ------------------------- */

static int payment_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    run *r = ctx;
    payment *p = state;
    const order_msg *m = payload_msg(cmd);
    if (m == NULL)
        return 0;
    const char *reply;
    if (strcmp(eb_event_topic(cmd), "payment.charge") == 0) {
        if (p->status == PAY_NEW) {
            p->status = uniform(r, m->order, 3) < r->fail_rate ? PAY_DECLINED : PAY_CHARGED;
            p->cents = p->status == PAY_CHARGED ? m->cents : 0;
        }
        reply = p->status == PAY_CHARGED ? "order.payment.charged" : "order.payment.declined";
    } else { /* payment.void (only after a timeout, which does not fire here) */
        p->status = PAY_VOIDED;
        reply = "order.payment.voided";
    }
    return eb_aggregate_emit(ac, reply, m, sizeof(*m), &m->order, sizeof(m->order));
}

/* ---- the order saga (as in the example) ---------------------------------- */

static int finish(eb_saga_ctx *sc, const order_state *s, enum outcome o)
{
    finished_msg f = {s->m.order, (uint32_t)o};
    eb_saga_complete(sc);
    return eb_saga_publish(sc, "report.order.finished", &f, sizeof(f), NULL, 0);
}

static int order_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ctx;
    order_state *s = state;
    const char *t = eb_event_topic(ev);
    const order_msg *m = payload_msg(ev);
    const uint32_t *sku = &s->m.sku, *order = &s->m.order;

    if (strcmp(t, "order.placed") == 0) {
        if (!eb_saga_is_new(sc) || m == NULL)
            return 0;
        s->m = *m;
        s->stage = RESERVING;
        return eb_saga_send(sc, "inventory.reserve", &s->m, sizeof(s->m), sku, sizeof(*sku));
    }
    switch (s->stage) {
    case RESERVING:
        if (strcmp(t, "order.stock.rejected") == 0)
            return finish(sc, s, OUT_REJECTED);
        if (strcmp(t, "order.stock.reserved") == 0) {
            s->stage = PAYING;
            int rc = eb_saga_send(sc, "payment.charge", &s->m, sizeof(s->m), order, sizeof(*order));
            if (rc == 0)
                rc = eb_saga_schedule_timeout(sc, PAYMENT_TIMEOUT_NS, "order.payment.timeout", NULL,
                                              0);
            return rc;
        }
        break;
    case PAYING:
        if (strcmp(t, "order.payment.charged") == 0) {
            s->stage = SHIPPING;
            return eb_saga_send(sc, "inventory.ship", &s->m, sizeof(s->m), sku, sizeof(*sku));
        }
        if (strcmp(t, "order.payment.declined") == 0) {
            s->stage = COMPENSATING;
            return eb_saga_send(sc, "inventory.release", &s->m, sizeof(s->m), sku, sizeof(*sku));
        }
        if (strcmp(t, "order.payment.timeout") == 0) {
            s->stage = TIMING_OUT;
            s->awaiting = AWAIT_RELEASE | AWAIT_VOID;
            int rc = eb_saga_send(sc, "inventory.release", &s->m, sizeof(s->m), sku, sizeof(*sku));
            if (rc == 0)
                rc = eb_saga_send(sc, "payment.void", &s->m, sizeof(s->m), order, sizeof(*order));
            return rc;
        }
        break;
    case SHIPPING:
        if (strcmp(t, "order.stock.shipped") == 0)
            return finish(sc, s, OUT_COMPLETED);
        break;
    case COMPENSATING:
        if (strcmp(t, "order.stock.released") == 0)
            return finish(sc, s, OUT_COMPENSATED);
        break;
    case TIMING_OUT:
        if (strcmp(t, "order.stock.released") == 0)
            s->awaiting &= (uint8_t)~AWAIT_RELEASE;
        else if (strcmp(t, "order.payment.voided") == 0)
            s->awaiting &= (uint8_t)~AWAIT_VOID;
        if (s->awaiting == 0)
            return finish(sc, s, OUT_TIMED_OUT);
        break;
    }
    return 0;
}

/* ---- the report: one observer of finished orders -------------------------- */

static int on_finished(const eb_event *ev, void *ctx)
{
    run *r = ctx;
    finished_msg f;
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    if (len != sizeof(f)) {
        atomic_fetch_add(&r->bad_reports, 1);
        return 0;
    }
    memcpy(&f, p, sizeof(f));
    if (f.order >= r->orders || f.outcome == OUT_NONE || f.outcome >= OUT_N) {
        atomic_fetch_add(&r->bad_reports, 1);
        return 0;
    }
    if (atomic_exchange(&r->final[f.order], (uint8_t)f.outcome) != OUT_NONE)
        atomic_fetch_add(&r->duplicates, 1);
    /* Release: the main thread's acquire load of finished then sees this
       order's outcome and everything that led to it. */
    atomic_fetch_add_explicit(&r->finished, 1, memory_order_release);
    return 0;
}

/* ---- one run ------------------------------------------------------------------ */

static void fail(struct saga_out *out, const char *fmt, const char *a, int rc)
{
    if (out->err[0] != 0)
        return;
    out->ok = 0;
    snprintf(out->err, sizeof(out->err), fmt, a, eb_strerror(rc));
}

/* Places orders [from, to), keeping at most window open. Returns the end
   of what was placed (< to if the phase was cut short at deadline), or
   UINT32_MAX with out->err set. */
static uint32_t place(eb_bus *bus, run *r, uint32_t from, uint32_t to, uint32_t window,
                      uint64_t deadline, struct saga_out *out)
{
    order_msg msgs[CHUNK];
    eb_message batch[CHUNK];
    uint32_t placed = from;
    uint64_t last_progress = bn_now_ns();
    uint32_t last_done = 0;
    while (placed < to) {
        uint32_t done = atomic_load_explicit(&r->finished, memory_order_acquire);
        uint64_t now = bn_now_ns();
        if (done != last_done) {
            last_done = done;
            last_progress = now;
        }
        if (deadline != 0 && now > deadline)
            break;
        if (placed - done + CHUNK > window) {
            if (now - last_progress > STALL_NS) {
                snprintf(out->err, sizeof(out->err),
                         "saga: no order finished for %.0f s with %u open (stalled)",
                         STALL_NS / 1e9, placed - done);
                return UINT32_MAX;
            }
            bn_sleep_ns(200000);
            continue;
        }
        uint32_t n = to - placed < CHUNK ? to - placed : CHUNK;
        for (uint32_t k = 0; k < n; k++) {
            msgs[k] = make_order(r, placed + k);
            batch[k] = (eb_message){"order.placed", &msgs[k], sizeof(msgs[k]), &msgs[k].order,
                                    sizeof(msgs[k].order)};
        }
        size_t accepted = 0;
        int rc = eb_publish_batch(bus, batch, n, NULL, &accepted);
        if (rc != EB_OK || accepted != n) {
            snprintf(out->err, sizeof(out->err), "eb_publish_batch: %s (%zu of %u accepted)",
                     eb_strerror(rc), accepted, n);
            return UINT32_MAX;
        }
        placed += n;
    }
    return placed;
}

/* Waits until `until` orders finished; 0, or -1 after STALL_NS without
   progress (out->err set). */
static int wait_finished(run *r, uint32_t until, struct saga_out *out)
{
    uint32_t last = atomic_load_explicit(&r->finished, memory_order_acquire);
    uint64_t last_progress = bn_now_ns();
    for (;;) {
        uint32_t done = atomic_load_explicit(&r->finished, memory_order_acquire);
        if (done >= until)
            return 0;
        uint64_t now = bn_now_ns();
        if (done != last) {
            last = done;
            last_progress = now;
        } else if (now - last_progress > STALL_NS) {
            snprintf(out->err, sizeof(out->err),
                     "saga: %u of %u orders never reached a final state (no progress for %.0f s)",
                     until - done, until, STALL_NS / 1e9);
            return -1;
        }
        bn_sleep_ns(200000);
    }
}

/* The checks over orders [0, placed) once all of them are final. Returns
   0, or -1 with out->err set. Fills the outcome counts of [timed_from,
   placed) and the transitions those outcomes imply. */
static int check(run *r, uint32_t placed, uint32_t timed_from, eb_aggregate *inventory,
                 eb_aggregate *payments, struct saga_out *out, uint64_t *want_transitions)
{
    unsigned missing = 0, dups = atomic_load(&r->duplicates), bad = atomic_load(&r->bad_reports);
    unsigned timed_out = 0;
    int64_t want_shipped[SKUS] = {0};
    int64_t want_cents = 0, got_cents = 0;
    unsigned pay_bad = 0;
    *want_transitions = 0;
    for (uint32_t i = 0; i < placed; i++) {
        uint8_t o = atomic_load(&r->final[i]);
        order_msg m = make_order(r, i);
        if (o == OUT_NONE)
            missing++;
        if (o == OUT_TIMED_OUT)
            timed_out++;
        if (o == OUT_COMPLETED) {
            want_shipped[m.sku] += m.qty;
            want_cents += m.cents;
        }
        if (i >= timed_from) {
            out->completed += o == OUT_COMPLETED;
            out->compensated += o == OUT_COMPENSATED;
            out->rejected += o == OUT_REJECTED;
            *want_transitions += o == OUT_REJECTED ? 2 : 4;
        }
        payment p;
        if (eb_aggregate_read(payments, &m.order, sizeof(m.order), &p, sizeof(p)) == EB_OK) {
            if (p.status == PAY_CHARGED)
                got_cents += p.cents;
            if ((p.status == PAY_CHARGED) != (o == OUT_COMPLETED))
                pay_bad++;
        } else if (o == OUT_COMPLETED || o == OUT_COMPENSATED) {
            pay_bad++; /* it was charged or declined: the payment must exist */
        }
    }
    if (missing || dups || bad || timed_out) {
        snprintf(out->err, sizeof(out->err),
                 "saga: of %u orders, %u without a final state, %u with more than one, %u timed "
                 "out (no payment is lost here), %u malformed reports",
                 placed, missing, dups, timed_out, bad);
        return -1;
    }
    int64_t units_bad = 0;
    for (uint32_t k = 0; k < SKUS; k++) {
        stock s = {0, 0, 0};
        if (eb_aggregate_read(inventory, &k, sizeof(k), &s, sizeof(s)) != EB_OK)
            s.on_hand = r->initial_stock; /* never ordered */
        int64_t off = s.on_hand + s.reserved + s.shipped - r->initial_stock;
        int64_t ship_off = s.shipped - want_shipped[k];
        units_bad += (off < 0 ? -off : off) + (s.reserved < 0 ? -s.reserved : s.reserved) +
                     (ship_off < 0 ? -ship_off : ship_off);
    }
    if (units_bad != 0) {
        snprintf(out->err, sizeof(out->err),
                 "saga: stock does not balance: %lld units off (on hand + reserved + shipped vs "
                 "initial, reserved left, shipped vs completed orders)",
                 (long long)units_bad);
        return -1;
    }
    if (pay_bad != 0 || got_cents != want_cents) {
        snprintf(out->err, sizeof(out->err),
                 "saga: payments do not balance: %u payments disagree with their order, charged "
                 "%lld cents for %lld cents of completed orders",
                 pay_bad, (long long)got_cents, (long long)want_cents);
        return -1;
    }
    return 0;
}

void saga_run(const struct saga_cfg *cfg, struct saga_out *out)
{
    memset(out, 0, sizeof(*out));
    /* BN_SAGA_STORE_SQLITE: a fresh store file per run, attached to the bus
       as well (dead letters go there), as the example's --store does. */
    eb_store *store = NULL;
    eb_saga_store *saga_store = NULL;
    char path[600] = "";
    if (cfg->store == BN_SAGA_STORE_SQLITE) {
#ifdef BN_HAVE_EB_STORE
        int src;
        if (bn_db_path_new(path, sizeof(path), "saga", out->err, sizeof(out->err)) != 0)
            return;
        if ((src = eb_store_open(path, NULL, &store)) != EB_OK ||
            (src = eb_saga_sqlite_store_create(store, &saga_store)) != EB_OK) {
            fail(out, "%s: %s", "saga: SQLite store", src);
            eb_store_close(store);
            bn_db_remove(path);
            return;
        }
#else
        snprintf(out->err, sizeof(out->err), "saga: built without the store (EB_WITH_SQLITE=OFF)");
        return;
#endif
    }
    run r;
    memset(&r, 0, sizeof(r));
    r.orders = cfg->warm_orders + cfg->orders;
    r.fail_rate = cfg->fail_rate;
    r.seed = 42;
    /* Enough stock for every order on average, with some slack (as the
       example): a few orders may still be rejected for lack of stock. */
    r.initial_stock = (int64_t)r.orders * 3 / SKUS + 10;
    r.final = calloc(r.orders ? r.orders : 1, sizeof(*r.final));
    if (r.final == NULL) {
        snprintf(out->err, sizeof(out->err), "saga: out of memory");
        goto close_store;
    }

    /* The example's configuration: default workers, a larger intake and
       mailboxes than the defaults (thousands of orders are open at once). */
    eb_bus_config bc;
    eb_bus_config_init(&bc);
    bc.intake_capacity = 1u << 16;
    bc.mailbox_capacity = 1023;
    bc.store = store;
    eb_bus *bus = NULL;
    eb_command_bus *cb = NULL;
    eb_aggregate *inventory = NULL, *payments = NULL;
    eb_saga *saga = NULL;
    int rc = eb_bus_create(&bc, &bus);
    if (rc != EB_OK) {
        fail(out, "%s: %s", "eb_bus_create", rc);
        free(r.final);
        goto close_store;
    }
    const char *inv_cmds[] = {"inventory.reserve", "inventory.release", "inventory.ship"};
    eb_aggregate_def inv = {.name = "inventory",
                            .commands = inv_cmds,
                            .n_commands = 3,
                            .state_size = sizeof(stock),
                            .init = stock_init,
                            .handle = stock_handle,
                            .ctx = &r};
    const char *pay_cmds[] = {"payment.charge", "payment.void"};
    eb_aggregate_def pay = {.name = "payment",
                            .commands = pay_cmds,
                            .n_commands = 2,
                            .state_size = sizeof(payment),
                            .handle = payment_handle,
                            .ctx = &r};
    const char *topics[] = {"order.placed", "order.stock.*", "order.payment.*"};
    const char *starts[] = {"order.placed"};
    eb_saga_def order = {.name = "order",
                         .topics = topics,
                         .n_topics = 3,
                         .start_topics = starts,
                         .n_start_topics = 1,
                         .state_size = sizeof(order_state),
                         .transition = order_transition,
                         .ctx = &r};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = saga_store; /* NULL: the saga's private in-memory store */
    eb_subscribe_options ro;
    eb_subscribe_options_init(&ro);
    ro.name = "report";
    if ((rc = eb_command_bus_create(bus, &cb)) != EB_OK)
        fail(out, "%s: %s", "eb_command_bus_create", rc);
    else if ((rc = eb_aggregate_register(cb, &inv, NULL, &inventory)) != EB_OK)
        fail(out, "%s: %s", "eb_aggregate_register(inventory)", rc);
    else if ((rc = eb_aggregate_register(cb, &pay, NULL, &payments)) != EB_OK)
        fail(out, "%s: %s", "eb_aggregate_register(payment)", rc);
    else {
        so.commands = cb;
        if ((rc = eb_saga_register(bus, &order, &so, &saga)) != EB_OK)
            fail(out, "%s: %s", "eb_saga_register", rc);
        else if ((rc = eb_subscribe(bus, "report.order.finished", on_finished, &r, &ro, NULL)) !=
                 EB_OK)
            fail(out, "%s: %s", "eb_subscribe", rc);
    }
    if (out->err[0] != 0)
        goto teardown;

    /* Warm-up: untimed, on the same bus (caches, store tables, lanes). */
    uint32_t warm = cfg->warm_orders;
    if (place(bus, &r, 0, warm, cfg->window, 0, out) == UINT32_MAX ||
        wait_finished(&r, warm, out) != 0)
        goto teardown;

    eb_saga_stats s0, s1;
    eb_saga_stats_get(saga, &s0);
    uint64_t t0 = bn_now_ns();
    uint64_t deadline = cfg->max_ns ? t0 + cfg->max_ns : 0;
    uint32_t placed = place(bus, &r, warm, r.orders, cfg->window, deadline, out);
    if (placed == UINT32_MAX || wait_finished(&r, placed, out) != 0)
        goto teardown;
    uint64_t t1 = bn_now_ns();
    eb_saga_stats_get(saga, &s1);

    out->seconds = (double)(t1 - t0) / 1e9;
    out->orders = placed - warm;
    out->cut = placed < r.orders;
    out->transitions = s1.transitions - s0.transitions;
    uint64_t want_transitions = 0;
    if (check(&r, placed, warm, inventory, payments, out, &want_transitions) != 0)
        goto teardown;
    if (s1.started != placed || s1.completed != placed || out->transitions != want_transitions) {
        snprintf(out->err, sizeof(out->err),
                 "saga: %u orders, but %llu instances started and %llu completed; %llu "
                 "transitions saved in the timed phase where its outcomes imply %llu "
                 "(failures %llu, conflicts %llu, redispatched %llu, ignored %llu)",
                 placed, (unsigned long long)s1.started, (unsigned long long)s1.completed,
                 (unsigned long long)out->transitions, (unsigned long long)want_transitions,
                 (unsigned long long)s1.failures, (unsigned long long)s1.conflicts,
                 (unsigned long long)s1.redispatched, (unsigned long long)s1.ignored);
        goto teardown;
    }
    out->retries = (s1.failures - s0.failures) + (s1.conflicts - s0.conflicts);
    if (out->seconds > 0) {
        out->transitions_per_s = (double)out->transitions / out->seconds;
        out->orders_per_s = (double)out->orders / out->seconds;
    }
    out->ok = 1;

teardown:
    if (saga != NULL && (rc = eb_saga_unregister(saga)) != EB_OK && out->ok) {
        out->ok = 0;
        snprintf(out->err, sizeof(out->err), "eb_saga_unregister: %s", eb_strerror(rc));
    }
    eb_command_bus_destroy(cb);
    eb_bus_destroy(bus); /* drops the pending payment timeouts */
    free(r.final);
close_store:
    eb_saga_store_destroy(saga_store);
#ifdef BN_HAVE_EB_STORE
    eb_store_close(store);
    if (path[0] != 0) {
        bn_db_remove(path);
        bn_db_dir_remove();
    }
#endif
}
