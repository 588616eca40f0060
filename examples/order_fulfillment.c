/*
 * order_fulfillment.c — the main demo: an order saga that coordinates two
 * kinds of aggregates over the bus, for thousands of concurrent orders.
 *
 *   order.placed ──► saga ──inventory.reserve──► inventory (per SKU)
 *                     ▲   ◄──order.stock.reserved──┘
 *                     │   ──payment.charge──► payment (per order) + timeout
 *                     │   ◄──order.payment.charged / declined / (nothing)
 *                     │   charged:  ──inventory.ship──►      → completed
 *                     │   declined: ──inventory.release──►   → compensated
 *                     └── timeout:  ──inventory.release + payment.void──► → timed out
 *
 * The saga persists each transition before its commands leave; the bus runs
 * every instance and every aggregate on KEYED lanes, so one order (or one
 * SKU) is handled one event at a time while thousands run concurrently. The
 * program itself starts no thread: it places orders and waits.
 *
 * At the end it checks that every order reached exactly one final state,
 * that stock balances to the unit (on hand + shipped = initial, nothing
 * left reserved) and that payments balance (every completed order charged,
 * every other charge voided); it exits non-zero if a check fails.
 *
 * Usage: order-fulfillment [--orders N] [--workers N] [--fail-rate P]
 *                          [--lost-rate P] [--timeout-ms N] [--store PATH]
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, clock_gettime */

#include <eventbus/eventbus.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SKUS 32u

/* Every message of the demo carries the order it is about. */
typedef struct order_msg {
    uint32_t order;
    uint32_t sku;
    uint32_t qty;
    uint32_t cents;
} order_msg;

enum outcome { OUT_NONE = 0, OUT_COMPLETED, OUT_COMPENSATED, OUT_TIMED_OUT, OUT_REJECTED, OUT_N };
static const char *const outcome_name[OUT_N] = {"-", "completed", "compensated", "timed out",
                                                "rejected"};

typedef struct finished_msg {
    uint32_t order;
    uint32_t outcome;
} finished_msg;

/* Saga state of one order. */
enum stage { RESERVING = 1, PAYING, SHIPPING, COMPENSATING, TIMING_OUT };
enum { AWAIT_RELEASE = 1, AWAIT_VOID = 2 };
typedef struct order_state {
    order_msg m;
    uint8_t stage;
    uint8_t awaiting;
} order_state;

/* Aggregates. */
typedef struct stock {
    int64_t on_hand, reserved, shipped;
} stock;

enum pay_status { PAY_NEW = 0, PAY_CHARGED, PAY_DECLINED, PAY_SILENT, PAY_VOIDED };
typedef struct payment {
    uint32_t status;
    uint32_t cents;
} payment;

/* Demo-wide settings and results. Handlers run on the bus's workers, so
   everything they share is atomic or written once before the bus runs. */
typedef struct demo {
    uint32_t orders;
    double fail_rate, lost_rate;
    int64_t timeout_ns;
    uint64_t seed;
    int64_t initial_stock;
    _Atomic uint8_t *final; /* per order: its outcome, set once */
    atomic_uint finished;
    atomic_uint duplicates;
    atomic_uint by_outcome[OUT_N];
} demo;

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A uniform number in [0, 1) that depends only on (seed, order, salt):
   runs are reproducible and no generator state is shared across threads. */
static double uniform(const demo *d, uint32_t order, uint64_t salt)
{
    return (double)(mix64(d->seed ^ mix64(order * 4ULL + salt)) >> 11) / 9007199254740992.0;
}

static order_msg make_order(const demo *d, uint32_t i)
{
    order_msg m = {i, (uint32_t)(uniform(d, i, 1) * SKUS), 1 + (uint32_t)(uniform(d, i, 2) * 3), 0};
    m.cents = m.qty * 1999;
    return m;
}

static const order_msg *payload_msg(const eb_event *ev)
{
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    return len == sizeof(order_msg) ? p : NULL;
}

/* ---- inventory: one aggregate per SKU --------------------------------- */

static void stock_init(void *state, const void *id, size_t id_len, void *ctx)
{
    (void)id;
    (void)id_len;
    ((stock *)state)->on_hand = ((demo *)ctx)->initial_stock;
}

static int stock_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    (void)ctx;
    stock *s = state;
    const order_msg *m = payload_msg(cmd);
    if (m == NULL)
        return 0; /* not a command of ours: nothing to do */
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
    /* Replies are keyed by order: that is the saga's correlation key. */
    return eb_aggregate_emit(ac, reply, m, sizeof(*m), &m->order, sizeof(m->order));
}

/* ---- payment: one aggregate per order's payment ----------------------- */

static int payment_handle(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    demo *d = ctx;
    payment *p = state;
    const order_msg *m = payload_msg(cmd);
    if (m == NULL)
        return 0;
    const char *reply = NULL;
    if (strcmp(eb_event_topic(cmd), "payment.charge") == 0) {
        if (p->status == PAY_NEW) {
            /* The card gateway: declines some, never answers for a few. */
            double u = uniform(d, m->order, 3);
            p->status = u < d->fail_rate                  ? PAY_DECLINED
                        : u < d->fail_rate + d->lost_rate ? PAY_SILENT
                                                          : PAY_CHARGED;
            p->cents = p->status == PAY_CHARGED ? m->cents : 0;
        }
        /* A repeated command (at-least-once) gets the same answer again. */
        if (p->status == PAY_CHARGED)
            reply = "order.payment.charged";
        else if (p->status == PAY_DECLINED)
            reply = "order.payment.declined";
    } else { /* payment.void: refund a charge, or make sure none happens */
        p->status = PAY_VOIDED;
        reply = "order.payment.voided";
    }
    if (reply == NULL)
        return 0;
    return eb_aggregate_emit(ac, reply, m, sizeof(*m), &m->order, sizeof(m->order));
}

/* ---- the order saga ---------------------------------------------------- */

static int finish(eb_saga_ctx *sc, const order_state *s, enum outcome o)
{
    finished_msg f = {s->m.order, (uint32_t)o};
    eb_saga_complete(sc);
    /* Published only once this final transition is saved. */
    return eb_saga_publish(sc, "report.order.finished", &f, sizeof(f), NULL, 0);
}

static int order_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    demo *d = ctx;
    order_state *s = state;
    const char *t = eb_event_topic(ev);
    const order_msg *m = payload_msg(ev);
    const uint32_t *sku = &s->m.sku, *order = &s->m.order;

    if (strcmp(t, "order.placed") == 0) {
        if (!eb_saga_is_new(sc) || m == NULL)
            return 0; /* a duplicate order.placed: the instance exists */
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
                rc = eb_saga_schedule_timeout(sc, d->timeout_ns, "order.payment.timeout", NULL, 0);
            return rc;
        }
        break;
    case PAYING:
        if (strcmp(t, "order.payment.charged") == 0) {
            s->stage = SHIPPING;
            return eb_saga_send(sc, "inventory.ship", &s->m, sizeof(s->m), sku, sizeof(*sku));
        }
        if (strcmp(t, "order.payment.declined") == 0) {
            s->stage = COMPENSATING; /* undo the reservation */
            return eb_saga_send(sc, "inventory.release", &s->m, sizeof(s->m), sku, sizeof(*sku));
        }
        if (strcmp(t, "order.payment.timeout") == 0) {
            /* No answer: release the stock and void the payment, so a
               charge that was only slow is refunded. */
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
    return 0; /* late or repeated (e.g. a charge after the timeout): ignored */
}

/* ---- the report: one observer of finished orders ------------------------ */

static int on_finished(const eb_event *ev, void *ctx)
{
    demo *d = ctx;
    finished_msg f;
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    if (len != sizeof(f))
        return 0;
    memcpy(&f, p, sizeof(f));
    if (f.order >= d->orders || f.outcome == OUT_NONE || f.outcome >= OUT_N)
        return 0;
    if (atomic_exchange(&d->final[f.order], (uint8_t)f.outcome) != OUT_NONE)
        atomic_fetch_add(&d->duplicates, 1);
    atomic_fetch_add(&d->by_outcome[f.outcome], 1);
    /* Release: the main thread's acquire load of finished then sees this
       order's outcome and everything that led to it. */
    atomic_fetch_add_explicit(&d->finished, 1, memory_order_release);
    return 0;
}

/* ---- main --------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--orders N] [--workers N] [--fail-rate P] [--lost-rate P]\n"
            "          [--timeout-ms N] [--store PATH]\n"
            "  --orders N      orders to place, 1..10000000 (default 10000)\n"
            "  --workers N     bus worker threads, at most 256 (default: one per CPU)\n"
            "  --fail-rate P   share of payments declined, 0..1 (default 0.2)\n"
            "  --lost-rate P   share of payments never answered, 0..1 (default 0.01)\n"
            "  --timeout-ms N  how long an order waits for its payment, 1..3600000\n"
            "                  (default 500)\n"
            "  --store PATH    keep saga state (and dead letters) in this SQLite store file\n",
            argv0);
    return 2;
}

static int check(const char *what, bool ok, const char *detail)
{
    printf("  check: %-58s %s%s%s\n", what, ok ? "ok" : "FAILED", detail[0] ? " — " : "", detail);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    demo d;
    memset(&d, 0, sizeof(d));
    d.orders = 10000;
    d.fail_rate = 0.2;
    d.lost_rate = 0.01;
    d.timeout_ns = 500 * 1000000LL;
    d.seed = 42;
    unsigned workers = 0;
    const char *store_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return usage(argv[0]), 0;
        if (v == NULL)
            return usage(argv[0]);
        char *end = NULL;
        unsigned long long n = 0;
        if (strcmp(a, "--orders") == 0) {
            n = strtoull(v, &end, 10);
            d.orders = n > 10000000 ? 0 : (uint32_t)n; /* 0: refused below */
        } else if (strcmp(a, "--workers") == 0) {
            n = strtoull(v, &end, 10);
            workers = n > 256 ? 257 : (unsigned)n; /* 257: refused below */
        } else if (strcmp(a, "--fail-rate") == 0)
            d.fail_rate = strtod(v, &end);
        else if (strcmp(a, "--lost-rate") == 0)
            d.lost_rate = strtod(v, &end);
        else if (strcmp(a, "--timeout-ms") == 0) {
            long long ms = strtoll(v, &end, 10);
            d.timeout_ns = ms > 0 && ms <= 3600000 ? ms * 1000000LL : 0; /* 0: refused below */
        } else if (strcmp(a, "--store") == 0) {
            store_path = v;
            end = (char *)v + strlen(v);
        } else
            return usage(argv[0]);
        if (end == v || *end != '\0')
            return usage(argv[0]);
        i++;
    }
    /* !(x >= 0) also refuses NaN. */
    if (d.orders == 0 || d.orders > 10000000 || !(d.fail_rate >= 0) || !(d.lost_rate >= 0) ||
        !(d.fail_rate + d.lost_rate <= 1) || d.timeout_ns <= 0 || workers > 256)
        return usage(argv[0]);
    /* Enough stock for every order on average, with some slack. */
    d.initial_stock = (int64_t)d.orders * 3 / SKUS + 10;
    d.final = calloc(d.orders, sizeof(*d.final));
    if (d.final == NULL)
        return 1;

    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = workers;
    cfg.intake_capacity = 1u << 16;
    cfg.mailbox_capacity = 1023;
    eb_bus *bus;
    eb_command_bus *cb;
    eb_aggregate *inventory, *payments;
    eb_saga *saga;
    eb_store *store = NULL;
    eb_saga_store *saga_store = NULL;
    int rc;
    if (store_path != NULL) {
        /* Saga state and each transition's commands are saved in one
           transaction; concurrent transitions share a commit (group commit). */
        if ((rc = eb_store_open(store_path, NULL, &store)) != EB_OK ||
            (rc = eb_saga_sqlite_store_create(store, &saga_store)) != EB_OK) {
            fprintf(stderr, "order-fulfillment: --store %s: %s\n", store_path, eb_strerror(rc));
            return 1;
        }
        cfg.store = store;
    }
    rc = eb_bus_create(&cfg, &bus);
    if (rc != EB_OK) {
        fprintf(stderr, "eb_bus_create: %s\n", eb_strerror(rc));
        return 1;
    }
    eb_bus_stats bs;
    eb_bus_stats_get(bus, &bs);

    /* Commands are point to point: one aggregate type per command topic. */
    eb_command_bus_create(bus, &cb);
    const char *inv_cmds[] = {"inventory.reserve", "inventory.release", "inventory.ship"};
    eb_aggregate_def inv = {.name = "inventory",
                            .commands = inv_cmds,
                            .n_commands = 3,
                            .state_size = sizeof(stock),
                            .init = stock_init,
                            .handle = stock_handle,
                            .ctx = &d};
    const char *pay_cmds[] = {"payment.charge", "payment.void"};
    eb_aggregate_def pay = {.name = "payment",
                            .commands = pay_cmds,
                            .n_commands = 2,
                            .state_size = sizeof(payment),
                            .handle = payment_handle,
                            .ctx = &d};
    const char *topics[] = {"order.placed", "order.stock.*", "order.payment.*"};
    const char *starts[] = {"order.placed"};
    eb_saga_def order = {.name = "order",
                         .topics = topics,
                         .n_topics = 3,
                         .start_topics = starts,
                         .n_start_topics = 1,
                         .state_size = sizeof(order_state),
                         .transition = order_transition,
                         .ctx = &d};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.commands = cb;      /* eb_saga_send refuses commands nobody handles */
    so.store = saga_store; /* NULL: the in-memory store */
    eb_subscribe_options ro;
    eb_subscribe_options_init(&ro);
    ro.name = "report";
    if ((rc = eb_aggregate_register(cb, &inv, NULL, &inventory)) != EB_OK ||
        (rc = eb_aggregate_register(cb, &pay, NULL, &payments)) != EB_OK ||
        (rc = eb_saga_register(bus, &order, &so, &saga)) != EB_OK ||
        (rc = eb_subscribe(bus, "report.order.finished", on_finished, &d, &ro, NULL)) != EB_OK) {
        fprintf(stderr, "setup: %s\n", eb_strerror(rc));
        return 1;
    }

    printf("order fulfillment: %u orders, %u workers, payments declined %.0f%%, "
           "unanswered %.1f%%, payment timeout %lld ms, saga store %s\n",
           d.orders, bs.workers, d.fail_rate * 100, d.lost_rate * 100,
           (long long)(d.timeout_ns / 1000000), store_path ? store_path : "in memory");

    /* Place the orders, keeping at most `window` of them open at once so
       the intake and the mailboxes stay far from full. */
    const uint32_t window = 2000, chunk = 64;
    double t0 = now_s();
    uint32_t placed = 0;
    order_msg msgs[64];
    eb_message batch[64];
    while (placed < d.orders) {
        uint32_t done = atomic_load_explicit(&d.finished, memory_order_acquire);
        if (placed - done + chunk > window) {
            sleep_us(200);
            continue;
        }
        uint32_t n = d.orders - placed < chunk ? d.orders - placed : chunk;
        for (uint32_t k = 0; k < n; k++) {
            msgs[k] = make_order(&d, placed + k);
            batch[k] = (eb_message){"order.placed", &msgs[k], sizeof(msgs[k]), &msgs[k].order,
                                    sizeof(msgs[k].order)};
        }
        size_t accepted = 0;
        rc = eb_publish_batch(bus, batch, n, NULL, &accepted);
        if (rc != EB_OK) {
            fprintf(stderr, "eb_publish_batch: %s\n", eb_strerror(rc));
            return 1;
        }
        placed += n;
    }
    /* Bounded wait: a lost order shows up as a failed check, not a hang. */
    double deadline = now_s() + 60 + (double)d.timeout_ns / 1e9 + d.orders / 1000.0;
    while (atomic_load_explicit(&d.finished, memory_order_acquire) < d.orders && now_s() < deadline)
        sleep_us(500);
    double elapsed = now_s() - t0;
    uint32_t finished = atomic_load_explicit(&d.finished, memory_order_acquire);

    eb_saga_stats ss;
    eb_saga_stats_get(saga, &ss);
    unsigned c[OUT_N];
    for (int o = 0; o < OUT_N; o++)
        c[o] = atomic_load(&d.by_outcome[o]);
    printf("  %-12s %7u  shipped\n", outcome_name[OUT_COMPLETED], c[OUT_COMPLETED]);
    printf("  %-12s %7u  payment declined -> stock released\n", outcome_name[OUT_COMPENSATED],
           c[OUT_COMPENSATED]);
    printf("  %-12s %7u  payment never answered -> stock released, payment voided\n",
           outcome_name[OUT_TIMED_OUT], c[OUT_TIMED_OUT]);
    printf("  %-12s %7u  out of stock\n", outcome_name[OUT_REJECTED], c[OUT_REJECTED]);
    printf("  throughput   %.0f orders/s, %.0f saga transitions/s (%llu transitions, "
           "%llu commands and events sent, %.2f s including the payment timeout)\n",
           finished / elapsed, ss.transitions / elapsed, (unsigned long long)ss.transitions,
           (unsigned long long)ss.commands, elapsed);

    /* Checks. Every order is final, so every command it caused was handled
       and its aggregate state stored before the reply that finished it:
       the aggregates are at rest for these reads. */
    int failures = 0;
    char detail[160] = "";
    unsigned missing = 0;
    for (uint32_t i = 0; i < d.orders; i++)
        missing += atomic_load(&d.final[i]) == OUT_NONE;
    unsigned dups = atomic_load(&d.duplicates);
    snprintf(detail, sizeof(detail), "%u without a final state, %u with more than one", missing,
             dups);
    failures += check("every order reached exactly one final state", missing == 0 && dups == 0,
                      missing || dups ? detail : "");

    int64_t want_shipped[SKUS] = {0};
    int64_t want_cents = 0, got_cents = 0;
    unsigned pay_bad = 0;
    for (uint32_t i = 0; i < d.orders; i++) {
        order_msg m = make_order(&d, i);
        uint8_t o = atomic_load(&d.final[i]);
        if (o == OUT_COMPLETED) {
            want_shipped[m.sku] += m.qty;
            want_cents += m.cents;
        }
        payment p;
        if (eb_aggregate_read(payments, &m.order, sizeof(m.order), &p, sizeof(p)) == EB_OK) {
            /* Charged money stays only for completed orders. */
            if (p.status == PAY_CHARGED)
                got_cents += p.cents;
            if ((p.status == PAY_CHARGED) != (o == OUT_COMPLETED))
                pay_bad++;
        } else if (o == OUT_COMPLETED) {
            pay_bad++;
        }
    }
    int64_t units_bad = 0;
    for (uint32_t k = 0; k < SKUS; k++) {
        stock s = {0, 0, 0};
        if (eb_aggregate_read(inventory, &k, sizeof(k), &s, sizeof(s)) != EB_OK)
            s.on_hand = d.initial_stock; /* never ordered */
        int64_t off = (s.on_hand + s.reserved + s.shipped - d.initial_stock);
        units_bad += (off < 0 ? -off : off) + (s.reserved < 0 ? -s.reserved : s.reserved) +
                     (s.shipped > want_shipped[k] ? s.shipped - want_shipped[k]
                                                  : want_shipped[k] - s.shipped);
    }
    snprintf(detail, sizeof(detail), "%lld units off", (long long)units_bad);
    failures += check("stock balances to the unit (on hand + shipped = initial)", units_bad == 0,
                      units_bad ? detail : "");
    snprintf(detail, sizeof(detail), "%u payments disagree with their order", pay_bad);
    failures += check("payments balance (charged = completed orders)",
                      pay_bad == 0 && got_cents == want_cents, pay_bad ? detail : "");

    eb_saga_unregister(saga);
    eb_command_bus_destroy(cb);
    eb_bus_destroy(bus);
    eb_saga_store_destroy(saga_store);
    eb_store_close(store);
    free(d.final);
    printf("%s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
