/*
 * outside_test.c — eventbus seen from the outside.
 *
 * This program is compiled only against the *installed* library (the header
 * under <prefix>/include and -leventbus from pkg-config), so it can use
 * nothing but the public API of <eventbus/eventbus.h>. tests/outside/run.sh
 * builds, installs and runs it.
 *
 * What it checks, one section each:
 *  a. RabbitMQ's own topic-exchange routing table (routing_SUITE:topic1, the
 *     former rabbit_tests:test_topic_matching), bindings added and removed.
 *  b. Per-publisher order, and the same order at every SERIAL observer, with
 *     two publisher threads.
 *  c. A slow SERIAL observer does not hold back a fast one.
 *  d. Wait-for-all results with a failing handler (matched / delivered /
 *     failed / first_error), retries, dead letters, tickets, timeouts.
 *  e. 64 concurrent handlers on a 2-worker bus, each doing a nested
 *     eb_publish_wait; all must complete.
 *  f. No handler call after eb_unsubscribe returns while publishing goes on.
 *  g. Bad input refused with EB_EINVAL, and nothing published.
 *  h. EB_EAGAIN on a full intake ring; eb_bus_destroy delivers every
 *     accepted event.
 *  i. Publisher threads that exit while the bus lives on (their per-thread
 *     event caches are torn down under a live bus).
 *
 * Every wait is bounded and each section runs under an alarm, so a bug makes
 * a check fail instead of hanging the run. The last line printed is
 * "N passed, M failed"; the exit status is non-zero if anything failed.
 *
 * Usage: outside_test [SECTIONS]   e.g. "outside_test ceg" runs c, e and g
 * only (default: all).
 */
#define _POSIX_C_SOURCE 200809L

#include <eventbus/eventbus.h>

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Tiny harness                                                              */
/* ------------------------------------------------------------------------ */

static int g_passed;
static int g_failed;
static const char *volatile g_section = "startup";

/* Checks are made on the main thread only; handlers record, main checks. */
#define CHECK(cond, ...) check_(!!(cond), __LINE__, __VA_ARGS__)

static bool check_(int ok, int line, const char *fmt, ...)
{
    if (ok) {
        g_passed++;
        return true;
    }
    g_failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "  FAIL [%s] line %d: ", g_section, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
    return false;
}

static void put_str(const char *s)
{
    (void)!write(STDOUT_FILENO, s, strlen(s));
}

static void put_int(int v)
{
    char buf[16];
    int i = (int)sizeof buf;
    unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i > 1);
    if (v < 0)
        buf[--i] = '-';
    (void)!write(STDOUT_FILENO, buf + i, sizeof buf - (size_t)i);
}

/* A section that runs past its alarm has hung: say where, count it, leave. */
static void on_alarm(int sig)
{
    (void)sig;
    put_str("  FAIL [");
    put_str(g_section);
    put_str("] timed out (hung); giving up\n");
    put_int(g_passed);
    put_str(" passed, ");
    put_int(g_failed + 1);
    put_str(" failed\n");
    _exit(3);
}

/* A crash (in the library or here) still ends with the closing line. */
static void on_crash(int sig)
{
    put_str("  FAIL [");
    put_str(g_section);
    put_str("] crashed with signal ");
    put_int(sig);
    put_str("\n");
    put_int(g_passed);
    put_str(" passed, ");
    put_int(g_failed + 1);
    put_str(" failed\n");
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_crash_handlers(void)
{
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* Sanitizers print better reports than we can: leave them their signals. */
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], on_crash);
#endif
}

static void section(const char *name, unsigned alarm_s)
{
    fflush(stdout);
    g_section = name;
    printf("== %s\n", name);
    fflush(stdout);
    alarm(alarm_s);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

#define MS(x) ((int64_t)(x)*1000000)

/* Polls until *v >= target or timeout_ms passed; returns the last value. */
static long wait_ge(atomic_long *v, long target, long timeout_ms)
{
    int64_t end = now_ns() + MS(timeout_ms);
    long cur;
    while ((cur = atomic_load(v)) < target && now_ns() < end)
        sleep_us(500);
    return cur;
}

/* A gate handlers can wait on, with a bound so a bug cannot hang them. */
typedef struct gate {
    atomic_int open;
} gate;

static bool gate_wait(gate *g, long timeout_ms)
{
    int64_t end = now_ns() + MS(timeout_ms);
    while (!atomic_load(&g->open)) {
        if (now_ns() >= end)
            return false;
        sleep_us(200);
    }
    return true;
}

static void max_update(atomic_long *max, long v)
{
    long cur = atomic_load(max);
    while (v > cur && !atomic_compare_exchange_weak(max, &cur, v)) {
    }
}

static eb_bus *make_bus(unsigned workers, unsigned intake)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = workers;
    cfg.intake_capacity = intake;
    eb_bus *bus = NULL;
    int rc = eb_bus_create(&cfg, &bus);
    CHECK(rc == EB_OK && bus != NULL, "eb_bus_create = %s", eb_err_name(rc));
    return rc == EB_OK ? bus : NULL;
}

static eb_publish_options timeout_opts(int64_t timeout_ns)
{
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = timeout_ns;
    return o;
}

/* ------------------------------------------------------------------------ */
/* (a) RabbitMQ topic-exchange routing table                                */
/* ------------------------------------------------------------------------ */

/*
 * Ported from RabbitMQ, rabbitmq/rabbitmq-server
 * deps/rabbit/test/routing_SUITE.erl, topic1/1 (in older releases
 * rabbit_tests.erl, test_topic_matching/0). Each binding {Key, Queue} becomes
 * one subscription; the set of queues whose handler ran must equal RabbitMQ's
 * expected set. The two "args-test" bindings to t27 differ only by binding
 * arguments in RabbitMQ (eventbus has none): here they are two subscriptions
 * with the same pattern, so t27 is reached through either of them.
 */
static const struct {
    const char *key;
    const char *queue;
} k_bindings[] = {
    {"a.b.c", "t1"},
    {"a.*.c", "t2"},
    {"a.#.b", "t3"},
    {"a.b.b.c", "t4"},
    {"#", "t5"},
    {"#.#", "t6"},
    {"#.b", "t7"},
    {"*.*", "t8"},
    {"a.*", "t9"},
    {"*.b.c", "t10"},
    {"a.#", "t11"},
    {"a.#.#", "t12"},
    {"b.b.c", "t13"},
    {"a.b.b", "t14"},
    {"a.b", "t15"},
    {"b.c", "t16"},
    {"", "t17"},
    {"*.*.*", "t18"},
    {"vodka.martini", "t19"},
    {"a.b.c", "t20"},
    {"*.#", "t21"},
    {"#.*.#", "t22"},
    {"*.#.#", "t23"},
    {"#.#.#", "t24"},
    {"*", "t25"},
    {"#.b.#", "t26"},
    {"args-test", "t27"}, /* binding arguments foo=bar in RabbitMQ */
    {"args-test", "t27"}, /* foo=baz: "Note aliasing" */
};
#define N_BINDINGS (sizeof k_bindings / sizeof k_bindings[0])

typedef struct expect_row {
    const char *key;
    const char *queues[16]; /* NULL-terminated */
} expect_row;

static const expect_row k_expect_all[] = {
    {"a.b.c",
     {"t1", "t2", "t5", "t6", "t10", "t11", "t12", "t18", "t20", "t21", "t22", "t23", "t24",
      "t26"}},
    {"a.b",
     {"t3", "t5", "t6", "t7", "t8", "t9", "t11", "t12", "t15", "t21", "t22", "t23", "t24", "t26"}},
    {"a.b.b",
     {"t3", "t5", "t6", "t7", "t11", "t12", "t14", "t18", "t21", "t22", "t23", "t24", "t26"}},
    {"", {"t5", "t6", "t17", "t24"}},
    {"b.c.c", {"t5", "t6", "t18", "t21", "t22", "t23", "t24", "t26"}},
    {"a.a.a.a.a", {"t5", "t6", "t11", "t12", "t21", "t22", "t23", "t24"}},
    {"vodka.gin", {"t5", "t6", "t8", "t21", "t22", "t23", "t24"}},
    {"vodka.martini", {"t5", "t6", "t8", "t19", "t21", "t22", "t23", "t24"}},
    {"b.b.c", {"t5", "t6", "t10", "t13", "t18", "t21", "t22", "t23", "t24", "t26"}},
    {"nothing.here.at.all", {"t5", "t6", "t21", "t22", "t23", "t24"}},
    {"oneword", {"t5", "t6", "t21", "t22", "t23", "t24", "t25"}},
    {"args-test", {"t5", "t6", "t21", "t22", "t23", "t24", "t25", "t27"}},
};

/* RabbitMQ removes bindings number 1, 5, 11, 19, 21 and 28 (1-based). */
static const unsigned k_removed[] = {1, 5, 11, 19, 21, 28};

static const expect_row k_expect_after_removal[] = {
    {"a.b.c", {"t2", "t6", "t10", "t12", "t18", "t20", "t22", "t23", "t24", "t26"}},
    {"a.b", {"t3", "t6", "t7", "t8", "t9", "t12", "t15", "t22", "t23", "t24", "t26"}},
    {"a.b.b", {"t3", "t6", "t7", "t12", "t14", "t18", "t22", "t23", "t24", "t26"}},
    {"", {"t6", "t17", "t24"}},
    {"b.c.c", {"t6", "t18", "t22", "t23", "t24", "t26"}},
    {"a.a.a.a.a", {"t6", "t12", "t22", "t23", "t24"}},
    {"vodka.gin", {"t6", "t8", "t22", "t23", "t24"}},
    {"vodka.martini", {"t6", "t8", "t22", "t23", "t24"}},
    {"b.b.c", {"t6", "t10", "t13", "t18", "t22", "t23", "t24", "t26"}},
    {"nothing.here.at.all", {"t6", "t22", "t23", "t24"}},
    {"oneword", {"t6", "t22", "t23", "t24", "t25"}},
    {"args-test", {"t6", "t22", "t23", "t24", "t25", "t27"}},
};

/* After the exchange is deleted (every binding removed), nothing matches. */
static const expect_row k_expect_none[] = {{"a.b.c", {NULL}}, {"b.b.c", {NULL}}, {"", {NULL}}};

typedef struct topic_binding {
    unsigned index;
    eb_subscription *sub;
    bool live;
    atomic_long hits;
    atomic_long wrong_topic; /* handler saw a topic other than the one published */
} topic_binding;

static topic_binding g_tb[N_BINDINGS];
static _Atomic(const char *) g_tb_current_key;

static int topic_handler(const eb_event *ev, void *ctx)
{
    topic_binding *b = ctx;
    const char *t = eb_event_topic(ev);
    if (t == NULL || strcmp(t, atomic_load(&g_tb_current_key)) != 0)
        atomic_fetch_add(&b->wrong_topic, 1);
    atomic_fetch_add(&b->hits, 1);
    return 0;
}

static bool row_has(const expect_row *row, const char *queue)
{
    for (size_t i = 0; row->queues[i] != NULL; i++)
        if (strcmp(row->queues[i], queue) == 0)
            return true;
    return false;
}

static uint64_t g_tb_published, g_tb_delivered, g_tb_unrouted;

static void topic_expect(eb_bus *bus, const char *phase, const expect_row *rows, size_t n)
{
    for (size_t r = 0; r < n; r++) {
        const expect_row *row = &rows[r];
        for (size_t i = 0; i < N_BINDINGS; i++) {
            atomic_store(&g_tb[i].hits, 0);
            atomic_store(&g_tb[i].wrong_topic, 0);
        }
        atomic_store(&g_tb_current_key, row->key);

        uint32_t want = 0;
        for (size_t i = 0; i < N_BINDINGS; i++)
            if (g_tb[i].live && row_has(row, k_bindings[i].queue))
                want++;

        eb_publish_options o = timeout_opts(MS(10000));
        eb_publish_result res;
        memset(&res, 0xAB, sizeof res);
        int rc = eb_publish_wait(bus, row->key, NULL, 0, &o, &res);
        if (!CHECK(rc == EB_OK, "%s: eb_publish_wait(\"%s\") = %s", phase, row->key,
                   eb_err_name(rc)))
            continue;
        g_tb_published++;
        g_tb_delivered += want;
        if (want == 0)
            g_tb_unrouted++;

        /* Queues reached, in table order, versus RabbitMQ's expected set. */
        char got[256] = "", exp[256] = "";
        bool per_binding_ok = true, topic_ok = true;
        for (size_t i = 0; i < N_BINDINGS; i++) {
            long hits = atomic_load(&g_tb[i].hits);
            bool expected = g_tb[i].live && row_has(row, k_bindings[i].queue);
            if (hits != (expected ? 1 : 0))
                per_binding_ok = false;
            if (atomic_load(&g_tb[i].wrong_topic) != 0)
                topic_ok = false;
            /* queue names are unique per table position except t27 */
            bool dup = i > 0 && strcmp(k_bindings[i].queue, k_bindings[i - 1].queue) == 0;
            if (!dup && hits > 0) {
                strcat(got, " ");
                strcat(got, k_bindings[i].queue);
            }
            if (!dup && row_has(row, k_bindings[i].queue)) {
                strcat(exp, " ");
                strcat(exp, k_bindings[i].queue);
            }
        }
        CHECK(strcmp(got, exp) == 0,
              "%s: routing key \"%s\": queues reached {%s }, RabbitMQ "
              "expects {%s }",
              phase, row->key, got, exp);
        CHECK(per_binding_ok,
              "%s: routing key \"%s\": some binding ran other than exactly once "
              "(or a removed binding ran)",
              phase, row->key);
        CHECK(topic_ok, "%s: routing key \"%s\": a handler saw a different topic", phase, row->key);
        CHECK(res.matched == want && res.delivered == want && res.failed == 0 &&
                  res.first_error == EB_OK,
              "%s: routing key \"%s\": result matched=%u delivered=%u failed=%u first_error=%d, "
              "want matched=delivered=%u failed=0 first_error=0",
              phase, row->key, res.matched, res.delivered, res.failed, res.first_error, want);
    }
}

static void test_topic_routing(void)
{
    section("a. RabbitMQ topic exchange routing table", 120);
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;

    int sub_fail = 0;
    for (size_t i = 0; i < N_BINDINGS; i++) {
        g_tb[i].index = (unsigned)i;
        g_tb[i].sub = NULL;
        g_tb[i].live = false;
        atomic_init(&g_tb[i].hits, 0);
        atomic_init(&g_tb[i].wrong_topic, 0);
        eb_subscribe_options so;
        eb_subscribe_options_init(&so);
        so.name = k_bindings[i].queue;
        int rc = eb_subscribe(bus, k_bindings[i].key, topic_handler, &g_tb[i], &so, &g_tb[i].sub);
        if (rc == EB_OK && g_tb[i].sub != NULL)
            g_tb[i].live = true;
        else {
            sub_fail++;
            printf("  eb_subscribe(\"%s\") = %s\n", k_bindings[i].key, eb_err_name(rc));
        }
    }
    CHECK(sub_fail == 0, "%d of %zu bindings could not be subscribed", sub_fail, N_BINDINGS);

    topic_expect(bus, "all bindings", k_expect_all, sizeof k_expect_all / sizeof k_expect_all[0]);

    int unsub_fail = 0;
    for (size_t k = 0; k < sizeof k_removed / sizeof k_removed[0]; k++) {
        topic_binding *b = &g_tb[k_removed[k] - 1];
        if (!b->live)
            continue;
        int rc = eb_unsubscribe(b->sub);
        if (rc != EB_OK)
            unsub_fail++;
        b->live = false;
    }
    CHECK(unsub_fail == 0, "%d eb_unsubscribe calls failed", unsub_fail);

    topic_expect(bus, "after removing 1,5,11,19,21,28", k_expect_after_removal,
                 sizeof k_expect_after_removal / sizeof k_expect_after_removal[0]);

    /* RabbitMQ deletes the exchange; here: every remaining binding goes. */
    unsub_fail = 0;
    for (size_t i = 0; i < N_BINDINGS; i++) {
        if (!g_tb[i].live)
            continue;
        if (eb_unsubscribe(g_tb[i].sub) != EB_OK)
            unsub_fail++;
        g_tb[i].live = false;
    }
    CHECK(unsub_fail == 0, "%d eb_unsubscribe calls failed", unsub_fail);
    topic_expect(bus, "all bindings removed", k_expect_none,
                 sizeof k_expect_none / sizeof k_expect_none[0]);

    /* The counters agree with what was routed (polled: they may lag the wait). */
    eb_bus_stats st;
    memset(&st, 0, sizeof st);
    int64_t end = now_ns() + MS(2000);
    int rc;
    do {
        rc = eb_bus_stats_get(bus, &st);
        if (rc == EB_OK && st.delivered == g_tb_delivered && st.unrouted == g_tb_unrouted)
            break;
        sleep_us(1000);
    } while (now_ns() < end);
    CHECK(rc == EB_OK, "eb_bus_stats_get = %s", eb_err_name(rc));
    CHECK(st.published == g_tb_published && st.dispatched == g_tb_published,
          "stats published=%llu dispatched=%llu, want %llu", (unsigned long long)st.published,
          (unsigned long long)st.dispatched, (unsigned long long)g_tb_published);
    CHECK(st.delivered == g_tb_delivered, "stats delivered=%llu, want %llu",
          (unsigned long long)st.delivered, (unsigned long long)g_tb_delivered);
    CHECK(st.unrouted == g_tb_unrouted, "stats unrouted=%llu, want %llu",
          (unsigned long long)st.unrouted, (unsigned long long)g_tb_unrouted);
    CHECK(st.subscriptions == 0 && st.failed == 0,
          "stats subscriptions=%u failed=%llu, want 0 and 0", st.subscriptions,
          (unsigned long long)st.failed);
    eb_bus_destroy(bus);
}

/* ------------------------------------------------------------------------ */
/* (b) per-publisher order, same order at every SERIAL observer             */
/* ------------------------------------------------------------------------ */

#define B_PUBLISHERS 2
#define B_PER_PUBLISHER 10000
#define B_TOTAL (B_PUBLISHERS * B_PER_PUBLISHER)
#define B_OBSERVERS 3

typedef struct order_observer {
    uint32_t *log; /* producer << 24 | sequence, in arrival order */
    atomic_long count;
    atomic_long in_flight, max_in_flight;
    atomic_long bad_payload;
    atomic_long seq_not_increasing;
    uint64_t last_seq; /* only touched by this SERIAL observer's handler */
} order_observer;

typedef struct order_publisher {
    eb_bus *bus;
    unsigned id;
    atomic_int *start;
    long errors;
    int first_error;
} order_publisher;

static int order_handler(const eb_event *ev, void *ctx)
{
    order_observer *o = ctx;
    max_update(&o->max_in_flight, atomic_fetch_add(&o->in_flight, 1) + 1);
    size_t len = 0;
    const uint32_t *p = eb_event_payload(ev, &len);
    uint32_t rec[2] = {0xFFFFFFFFu, 0};
    if (p != NULL && len == sizeof rec)
        memcpy(rec, p, sizeof rec);
    else
        atomic_fetch_add(&o->bad_payload, 1);
    uint64_t seq = eb_event_seq(ev);
    if (seq <= o->last_seq)
        atomic_fetch_add(&o->seq_not_increasing, 1);
    o->last_seq = seq;
    long n = atomic_load_explicit(&o->count, memory_order_relaxed);
    if (n < B_TOTAL)
        o->log[n] = rec[0] << 24 | (rec[1] & 0xFFFFFFu);
    atomic_fetch_sub(&o->in_flight, 1);
    /* release: the log entry above is visible to whoever reads the count */
    atomic_fetch_add_explicit(&o->count, 1, memory_order_release);
    return 0;
}

static void *order_publisher_main(void *arg)
{
    order_publisher *p = arg;
    char topic[32];
    snprintf(topic, sizeof topic, "orders.p%u.placed", p->id);
    while (!atomic_load(p->start)) {
    }
    for (uint32_t i = 0; i < B_PER_PUBLISHER; i++) {
        uint32_t rec[2] = {p->id, i};
        int rc = eb_publish(p->bus, topic, rec, sizeof rec, NULL);
        if (rc != EB_OK) {
            if (p->errors++ == 0)
                p->first_error = rc;
        }
    }
    return NULL;
}

static void test_ordering(void)
{
    section("b. per-publisher order, identical order across SERIAL observers", 180);
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;
    order_observer obs[B_OBSERVERS];
    for (int i = 0; i < B_OBSERVERS; i++) {
        obs[i].log = calloc(B_TOTAL, sizeof(uint32_t));
        atomic_init(&obs[i].count, 0);
        atomic_init(&obs[i].in_flight, 0);
        atomic_init(&obs[i].max_in_flight, 0);
        atomic_init(&obs[i].bad_payload, 0);
        atomic_init(&obs[i].seq_not_increasing, 0);
        obs[i].last_seq = 0;
        /* different patterns that all match orders.pN.placed */
        static const char *pats[B_OBSERVERS] = {"orders.#", "orders.*.placed", "#.placed"};
        int rc = eb_subscribe(bus, pats[i], order_handler, &obs[i], NULL, NULL);
        CHECK(rc == EB_OK, "eb_subscribe(\"%s\") = %s", pats[i], eb_err_name(rc));
    }

    atomic_int start;
    atomic_init(&start, 0);
    order_publisher pubs[B_PUBLISHERS];
    pthread_t th[B_PUBLISHERS];
    for (unsigned i = 0; i < B_PUBLISHERS; i++) {
        pubs[i] = (order_publisher){bus, i, &start, 0, 0};
        pthread_create(&th[i], NULL, order_publisher_main, &pubs[i]);
    }
    atomic_store(&start, 1); /* release both publishers together */
    for (unsigned i = 0; i < B_PUBLISHERS; i++)
        pthread_join(th[i], NULL);
    for (unsigned i = 0; i < B_PUBLISHERS; i++)
        CHECK(pubs[i].errors == 0, "publisher %u: %ld publishes failed, first %s", i,
              pubs[i].errors, eb_err_name(pubs[i].first_error));

    for (int i = 0; i < B_OBSERVERS; i++) {
        long n = wait_ge(&obs[i].count, B_TOTAL, 60000);
        CHECK(n == B_TOTAL, "observer %d received %ld of %d events", i, n, B_TOTAL);
        CHECK(atomic_load(&obs[i].bad_payload) == 0, "observer %d: %ld bad payloads", i,
              atomic_load(&obs[i].bad_payload));
        CHECK(atomic_load(&obs[i].max_in_flight) == 1,
              "observer %d (SERIAL) ran %ld handler calls at once", i,
              atomic_load(&obs[i].max_in_flight));
        CHECK(atomic_load(&obs[i].seq_not_increasing) == 0,
              "observer %d: eb_event_seq went backwards %ld times", i,
              atomic_load(&obs[i].seq_not_increasing));

        /* Each producer's events arrive as 0, 1, 2, ... with nothing missing. */
        uint32_t next[B_PUBLISHERS] = {0};
        long bad = 0, first_bad = -1;
        long limit = n < B_TOTAL ? n : B_TOTAL;
        for (long k = 0; k < limit; k++) {
            uint32_t prod = obs[i].log[k] >> 24, seq = obs[i].log[k] & 0xFFFFFFu;
            if (prod >= B_PUBLISHERS || seq != next[prod]) {
                if (bad++ == 0)
                    first_bad = k;
                if (prod < B_PUBLISHERS)
                    next[prod] = seq + 1;
            } else {
                next[prod]++;
            }
        }
        CHECK(bad == 0, "observer %d: %ld events out of per-publisher order (first at #%ld)", i,
              bad, first_bad);
    }
    /* Every SERIAL observer saw the very same interleaving. */
    for (int i = 1; i < B_OBSERVERS; i++) {
        long diff = -1;
        for (long k = 0; k < B_TOTAL; k++)
            if (obs[i].log[k] != obs[0].log[k]) {
                diff = k;
                break;
            }
        CHECK(diff < 0, "observer %d differs from observer 0 first at event #%ld", i, diff);
    }
    long switches = 0;
    for (long k = 1; k < B_TOTAL; k++)
        if ((obs[0].log[k] >> 24) != (obs[0].log[k - 1] >> 24))
            switches++;
    printf("  (the two publishers interleaved %ld times)\n", switches);

    eb_bus_destroy(bus);
    for (int i = 0; i < B_OBSERVERS; i++)
        free(obs[i].log);
}

/* ------------------------------------------------------------------------ */
/* (c) a slow observer does not hold back a fast one                        */
/* ------------------------------------------------------------------------ */

#define C_EVENTS 64

typedef struct slow_state {
    gate gate;
    atomic_long started, done, in_flight, max_in_flight;
    atomic_long gate_timeouts;
} slow_state;

static int slow_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    slow_state *s = ctx;
    atomic_fetch_add(&s->started, 1);
    max_update(&s->max_in_flight, atomic_fetch_add(&s->in_flight, 1) + 1);
    if (!gate_wait(&s->gate, 15000))
        atomic_fetch_add(&s->gate_timeouts, 1);
    sleep_us(2000); /* and slow even once released */
    atomic_fetch_sub(&s->in_flight, 1);
    atomic_fetch_add(&s->done, 1);
    return 0;
}

static int count_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add((atomic_long *)ctx, 1);
    return 0;
}

static void test_slow_observer(void)
{
    section("c. a slow observer does not hold back a fast one", 60);
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;
    slow_state s;
    atomic_init(&s.gate.open, 0);
    atomic_init(&s.started, 0);
    atomic_init(&s.done, 0);
    atomic_init(&s.in_flight, 0);
    atomic_init(&s.max_in_flight, 0);
    atomic_init(&s.gate_timeouts, 0);
    atomic_long fast;
    atomic_init(&fast, 0);

    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.name = "slow";
    int rc = eb_subscribe(bus, "tick.#", slow_handler, &s, &so, NULL);
    CHECK(rc == EB_OK, "subscribe slow = %s", eb_err_name(rc));
    so.name = "fast";
    rc = eb_subscribe(bus, "tick.#", count_handler, &fast, &so, NULL);
    CHECK(rc == EB_OK, "subscribe fast = %s", eb_err_name(rc));

    int errs = 0;
    for (int i = 0; i < C_EVENTS; i++) {
        eb_publish_options o = timeout_opts(MS(5000));
        if (eb_publish(bus, "tick.second", &i, sizeof i, &o) != EB_OK)
            errs++;
    }
    CHECK(errs == 0, "%d publishes failed", errs);

    long f = wait_ge(&fast, C_EVENTS, 10000);
    long slow_done = atomic_load(&s.done), slow_started = atomic_load(&s.started);
    CHECK(f == C_EVENTS, "fast observer got %ld of %d events while the slow one was stuck", f,
          C_EVENTS);
    CHECK(slow_done == 0 && slow_started == 1,
          "slow observer should still be in its first call: started=%ld done=%ld", slow_started,
          slow_done);

    atomic_store(&s.gate.open, 1);
    long d = wait_ge(&s.done, C_EVENTS, 20000);
    CHECK(d == C_EVENTS, "slow observer finished %ld of %d events after release", d, C_EVENTS);
    CHECK(atomic_load(&s.max_in_flight) == 1, "slow SERIAL observer ran %ld calls at once",
          atomic_load(&s.max_in_flight));
    CHECK(atomic_load(&s.gate_timeouts) == 0, "slow handler's gate timed out");
    eb_bus_destroy(bus);
}

/* ------------------------------------------------------------------------ */
/* (d) wait-for-all results with a failing handler                          */
/* ------------------------------------------------------------------------ */

#define D_HANDLER_ERROR (-77)

typedef struct fail_state {
    atomic_long calls;
    atomic_uint attempts[16];
} fail_state;

static int failing_handler(const eb_event *ev, void *ctx)
{
    fail_state *f = ctx;
    long n = atomic_fetch_add(&f->calls, 1);
    if (n < 16)
        atomic_store(&f->attempts[n], eb_event_attempt(ev));
    return D_HANDLER_ERROR;
}

typedef struct dl_state {
    atomic_long callbacks;
    atomic_long cb_bad; /* callback fields not as expected */
    atomic_long events;
    atomic_long ev_bad;
    char last_cb_sub[64], last_ev_topic[300];
} dl_state;

static void on_deadletter(const eb_event *ev, const eb_deadletter_info *info, void *ctx)
{
    dl_state *d = ctx;
    bool ok = info != NULL && info->error == D_HANDLER_ERROR && info->attempts == 3 &&
              info->topic != NULL && strcmp(info->topic, "pay.card") == 0 &&
              info->subscription != NULL && strcmp(info->subscription, "card-gateway") == 0 &&
              strcmp(eb_event_topic(ev), "pay.card") == 0 && info->seq == eb_event_seq(ev);
    if (info && info->subscription)
        snprintf(d->last_cb_sub, sizeof d->last_cb_sub, "%s", info->subscription);
    if (!ok)
        atomic_fetch_add(&d->cb_bad, 1);
    atomic_fetch_add(&d->callbacks, 1);
}

static int deadletter_handler(const eb_event *ev, void *ctx)
{
    dl_state *d = ctx;
    eb_deadletter_info info;
    memset(&info, 0, sizeof info);
    bool has = eb_event_deadletter_info(ev, &info);
    snprintf(d->last_ev_topic, sizeof d->last_ev_topic, "%s", eb_event_topic(ev));
    bool ok = has && strcmp(eb_event_topic(ev), "$deadletter.pay.card") == 0 &&
              info.error == D_HANDLER_ERROR && info.attempts == 3 && info.topic != NULL &&
              strcmp(info.topic, "pay.card") == 0 && info.subscription != NULL &&
              strcmp(info.subscription, "card-gateway") == 0;
    if (!ok)
        atomic_fetch_add(&d->ev_bad, 1);
    atomic_fetch_add(&d->events, 1);
    return 0;
}

static int reserved_spy(const eb_event *ev, void *ctx)
{
    if (eb_event_topic(ev)[0] == '$')
        atomic_fetch_add((atomic_long *)ctx, 1);
    return 0;
}

static int gated_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    gate_wait(ctx, 15000);
    return 0;
}

static void check_result(const char *what, int rc, const eb_publish_result *r, uint32_t matched,
                         uint32_t delivered, uint32_t failed, int first_error)
{
    if (!CHECK(rc == EB_OK, "%s: returned %s", what, eb_err_name(rc)))
        return;
    CHECK(r->matched == matched && r->delivered == delivered && r->failed == failed &&
              r->first_error == first_error,
          "%s: matched=%u delivered=%u failed=%u first_error=%d (%s); want %u/%u/%u/%d", what,
          r->matched, r->delivered, r->failed, r->first_error, eb_err_name(r->first_error), matched,
          delivered, failed, first_error);
}

static void test_wait_results(void)
{
    section("d. wait-for-all results with a failing handler", 60);
    dl_state dl;
    memset(&dl, 0, sizeof dl);
    atomic_init(&dl.callbacks, 0);
    atomic_init(&dl.cb_bad, 0);
    atomic_init(&dl.events, 0);
    atomic_init(&dl.ev_bad, 0);

    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.on_deadletter = on_deadletter;
    cfg.deadletter_ctx = &dl;
    eb_bus *bus = NULL;
    int rc = eb_bus_create(&cfg, &bus);
    if (!CHECK(rc == EB_OK, "eb_bus_create = %s", eb_err_name(rc)))
        return;

    fail_state fs;
    atomic_init(&fs.calls, 0);
    for (int i = 0; i < 16; i++)
        atomic_init(&fs.attempts[i], 0);
    atomic_long ok1, ok2, spy_reserved;
    atomic_init(&ok1, 0);
    atomic_init(&ok2, 0);
    atomic_init(&spy_reserved, 0);

    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.name = "card-gateway";
    so.max_attempts = 3;
    so.backoff_initial_ns = MS(1);
    so.backoff_max_ns = MS(4);
    rc = eb_subscribe(bus, "pay.card", failing_handler, &fs, &so, NULL);
    CHECK(rc == EB_OK, "subscribe failing = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, "pay.#", count_handler, &ok1, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe ok1 = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, "pay.*", count_handler, &ok2, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe ok2 = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, "#", reserved_spy, &spy_reserved, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe spy = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, "$deadletter.#", deadletter_handler, &dl, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe $deadletter.# = %s", eb_err_name(rc));

    /* 1. one failing handler among four */
    eb_publish_options o = timeout_opts(MS(10000));
    eb_publish_result r;
    memset(&r, 0xAB, sizeof r);
    rc = eb_publish_wait(bus, "pay.card", "42.00", 5, &o, &r);
    check_result("publish_wait(pay.card)", rc, &r, 4, 3, 1, D_HANDLER_ERROR);
    CHECK(atomic_load(&fs.calls) == 3, "failing handler called %ld times, want 3 (max_attempts)",
          atomic_load(&fs.calls));
    CHECK(atomic_load(&fs.attempts[0]) == 1 && atomic_load(&fs.attempts[1]) == 2 &&
              atomic_load(&fs.attempts[2]) == 3,
          "eb_event_attempt gave %u,%u,%u; want 1,2,3", atomic_load(&fs.attempts[0]),
          atomic_load(&fs.attempts[1]), atomic_load(&fs.attempts[2]));

    long cbs = wait_ge(&dl.callbacks, 1, 5000);
    long evs = wait_ge(&dl.events, 1, 5000);
    CHECK(cbs == 1, "on_deadletter called %ld times, want 1", cbs);
    CHECK(atomic_load(&dl.cb_bad) == 0,
          "on_deadletter info not as expected (subscription "
          "\"%s\", want \"card-gateway\"; error -77; attempts 3; topic pay.card)",
          dl.last_cb_sub);
    CHECK(evs == 1, "$deadletter.# subscriber got %ld events, want 1", evs);
    CHECK(atomic_load(&dl.ev_bad) == 0,
          "$deadletter event not as expected (topic \"%s\", want "
          "\"$deadletter.pay.card\" with eb_event_deadletter_info filled)",
          dl.last_ev_topic);

    /* 2. all succeed */
    memset(&r, 0xAB, sizeof r);
    rc = eb_publish_wait(bus, "pay.cash", "7.50", 4, &o, &r);
    check_result("publish_wait(pay.cash)", rc, &r, 3, 3, 0, EB_OK);

    /* 3. only the wide patterns match (pay.# and #) */
    memset(&r, 0xAB, sizeof r);
    rc = eb_publish_wait(bus, "pay.card.refund", NULL, 0, &o, &r);
    check_result("publish_wait(pay.card.refund)", rc, &r, 2, 2, 0, EB_OK);

    /* 4. the same through an async ticket, waited on twice */
    eb_ticket *t = NULL;
    rc = eb_publish_async(bus, "pay.card", "1.00", 4, NULL, &t);
    if (CHECK(rc == EB_OK && t != NULL, "eb_publish_async = %s", eb_err_name(rc))) {
        memset(&r, 0xAB, sizeof r);
        rc = eb_ticket_wait(t, MS(10000), &r);
        check_result("eb_ticket_wait", rc, &r, 4, 3, 1, D_HANDLER_ERROR);
        memset(&r, 0xAB, sizeof r);
        rc = eb_ticket_wait(t, 0, &r);
        check_result("eb_ticket_wait again", rc, &r, 4, 3, 1, D_HANDLER_ERROR);
        eb_ticket_release(t);
    }
    wait_ge(&dl.events, 2, 5000);
    CHECK(atomic_load(&spy_reserved) == 0,
          "a \"#\" subscriber received %ld $-topics (reserved: need a literal first word)",
          atomic_load(&spy_reserved));

    /* 5. a bounded wait on a handler that does not finish in time */
    gate g;
    atomic_init(&g.open, 0);
    rc = eb_subscribe(bus, "slow.job", gated_handler, &g, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe gated = %s", eb_err_name(rc));
    eb_publish_options quick = timeout_opts(MS(50));
    memset(&r, 0xAB, sizeof r);
    eb_publish_result untouched;
    memset(&untouched, 0xAB, sizeof untouched);
    int64_t t0 = now_ns();
    rc = eb_publish_wait(bus, "slow.job", NULL, 0, &quick, &r);
    int64_t took = now_ns() - t0;
    CHECK(rc == EB_ETIMEDOUT,
          "publish_wait on a stuck handler with 50 ms timeout = %s, want "
          "EB_ETIMEDOUT",
          eb_err_name(rc));
    CHECK(took >= MS(40) && took < MS(5000), "the 50 ms wait took %lld ms",
          (long long)(took / 1000000));
    CHECK(memcmp(&r, &untouched, sizeof r) == 0, "result was written on EB_ETIMEDOUT");
    atomic_store(&g.open, 1);

    eb_bus_stats st;
    rc = eb_bus_stats_get(bus, &st);
    CHECK(rc == EB_OK && st.dead_lettered == 2 && st.failed == 2 && st.retried == 4,
          "stats dead_lettered=%llu failed=%llu retried=%llu; want 2, 2, 4",
          (unsigned long long)st.dead_lettered, (unsigned long long)st.failed,
          (unsigned long long)st.retried);
    eb_bus_destroy(bus);
}

/* ------------------------------------------------------------------------ */
/* (e) 64 concurrent handlers, each with a nested eb_publish_wait           */
/* ------------------------------------------------------------------------ */

#define E_HANDLERS 64

typedef struct nest_state {
    eb_bus *bus;
    bool inner_waits_for_all; /* phase 2: inner handler blocks until 64 outers run */
    atomic_long started, in_flight, max_in_flight, inner_calls, inner_gate_timeouts;
    atomic_int rc[E_HANDLERS];
    atomic_uint matched[E_HANDLERS], delivered[E_HANDLERS];
    atomic_long bad_index;
} nest_state;

static int inner_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    nest_state *s = ctx;
    if (s->inner_waits_for_all && atomic_load(&s->inner_gate_timeouts) == 0) {
        int64_t end = now_ns() + MS(15000);
        while (atomic_load(&s->started) < E_HANDLERS && now_ns() < end)
            sleep_us(200);
        if (atomic_load(&s->started) < E_HANDLERS)
            atomic_fetch_add(&s->inner_gate_timeouts, 1);
    }
    atomic_fetch_add(&s->inner_calls, 1);
    return 0;
}

static int outer_handler(const eb_event *ev, void *ctx)
{
    nest_state *s = ctx;
    size_t len = 0;
    const unsigned *p = eb_event_payload(ev, &len);
    unsigned idx = E_HANDLERS;
    if (p && len == sizeof idx)
        memcpy(&idx, p, sizeof idx);
    if (idx >= E_HANDLERS) {
        atomic_fetch_add(&s->bad_index, 1);
        return 0;
    }
    atomic_fetch_add(&s->started, 1);
    max_update(&s->max_in_flight, atomic_fetch_add(&s->in_flight, 1) + 1);
    char topic[32];
    snprintf(topic, sizeof topic, "inner.%u", idx);
    eb_publish_options o = timeout_opts(MS(40000));
    eb_publish_result r;
    memset(&r, 0, sizeof r);
    int rc = eb_publish_wait(s->bus, topic, &idx, sizeof idx, &o, &r);
    atomic_store(&s->rc[idx], rc);
    atomic_store(&s->matched[idx], r.matched);
    atomic_store(&s->delivered[idx], r.delivered);
    atomic_fetch_sub(&s->in_flight, 1);
    return 0;
}

static void run_nested(bool all_at_once)
{
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;
    nest_state *s = calloc(1, sizeof *s);
    s->bus = bus;
    s->inner_waits_for_all = all_at_once;
    for (int i = 0; i < E_HANDLERS; i++)
        atomic_init(&s->rc[i], 1);

    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.delivery = EB_DELIVERY_CONCURRENT;
    so.lanes = 64;
    int rc = eb_subscribe(bus, "outer.*", outer_handler, s, &so, NULL);
    CHECK(rc == EB_OK, "subscribe outer (CONCURRENT, 64 lanes) = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, "inner.*", inner_handler, s, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe inner = %s", eb_err_name(rc));

    eb_ticket *tickets[E_HANDLERS] = {NULL};
    int pub_err = 0;
    for (unsigned i = 0; i < E_HANDLERS; i++) {
        char topic[32];
        snprintf(topic, sizeof topic, "outer.%u", i);
        if (eb_publish_async(bus, topic, &i, sizeof i, NULL, &tickets[i]) != EB_OK)
            pub_err++;
    }
    CHECK(pub_err == 0, "%d eb_publish_async calls failed", pub_err);

    int64_t deadline = now_ns() + MS(60000);
    int wait_bad = 0, first_wait_rc = EB_OK;
    for (unsigned i = 0; i < E_HANDLERS; i++) {
        if (!tickets[i])
            continue;
        int64_t left = deadline - now_ns();
        eb_publish_result r;
        memset(&r, 0, sizeof r);
        int wrc = eb_ticket_wait(tickets[i], left > 0 ? left : 0, &r);
        if (wrc != EB_OK || r.matched != 1 || r.delivered != 1) {
            if (wait_bad++ == 0)
                first_wait_rc = wrc;
        }
        eb_ticket_release(tickets[i]);
    }
    CHECK(wait_bad == 0, "%d outer events did not complete (first ticket wait: %s)", wait_bad,
          eb_err_name(first_wait_rc));

    int nested_bad = 0, first_bad = -1, first_bad_rc = 0;
    for (int i = 0; i < E_HANDLERS; i++) {
        if (atomic_load(&s->rc[i]) != EB_OK || atomic_load(&s->matched[i]) != 1 ||
            atomic_load(&s->delivered[i]) != 1) {
            if (nested_bad++ == 0) {
                first_bad = i;
                first_bad_rc = atomic_load(&s->rc[i]);
            }
        }
    }
    CHECK(nested_bad == 0, "%d nested eb_publish_wait calls failed (first: handler %d, rc %d %s)",
          nested_bad, first_bad, first_bad_rc, eb_err_name(first_bad_rc));
    CHECK(atomic_load(&s->inner_calls) == E_HANDLERS, "inner handler ran %ld times, want %d",
          atomic_load(&s->inner_calls), E_HANDLERS);
    CHECK(atomic_load(&s->bad_index) == 0, "outer handler got a bad payload");
    if (all_at_once) {
        CHECK(atomic_load(&s->max_in_flight) == E_HANDLERS &&
                  atomic_load(&s->inner_gate_timeouts) == 0,
              "only %ld of %d handlers were ever in flight at once on 2 workers (waiting "
              "workers must keep running other work)",
              atomic_load(&s->max_in_flight), E_HANDLERS);
    }
    printf("  (%s: at most %ld outer handlers in flight at once)\n",
           all_at_once ? "all-at-once" : "free-running", atomic_load(&s->max_in_flight));
    eb_bus_destroy(bus);
    free(s);
}

static void test_nested_waits(void)
{
    section("e. 64 concurrent handlers each doing a nested eb_publish_wait", 150);
    run_nested(false);
    /* Now force all 64 to be in flight together: the inner handler holds on
       until every outer handler has started. With 2 workers this only
       completes if a waiting worker keeps running other lanes. */
    run_nested(true);
}

/* ------------------------------------------------------------------------ */
/* (f) no handler call after eb_unsubscribe returns                         */
/* ------------------------------------------------------------------------ */

typedef struct unsub_state {
    atomic_long calls, in_flight, late_calls;
    atomic_int unsubscribed;
    /* self-unsubscribe variant */
    eb_subscription *self;
    long self_at;
    atomic_int self_rc;
} unsub_state;

static int unsub_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    unsub_state *u = ctx;
    atomic_fetch_add(&u->in_flight, 1);
    if (atomic_load(&u->unsubscribed))
        atomic_fetch_add(&u->late_calls, 1);
    atomic_fetch_add(&u->calls, 1);
    sleep_us(20);
    atomic_fetch_sub(&u->in_flight, 1);
    return 0;
}

static int self_unsub_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    unsub_state *u = ctx;
    long n = atomic_fetch_add(&u->calls, 1) + 1;
    if (atomic_load(&u->unsubscribed))
        atomic_fetch_add(&u->late_calls, 1);
    if (n == u->self_at) {
        atomic_store(&u->self_rc, eb_unsubscribe(u->self));
        atomic_store(&u->unsubscribed, 1); /* no call may start after we return */
    }
    return 0;
}

typedef struct pub_loop {
    eb_bus *bus;
    const char *topic;
    atomic_int stop;
    long published, errors;
    int first_error;
} pub_loop;

static void *pub_loop_main(void *arg)
{
    pub_loop *p = arg;
    eb_publish_options o = timeout_opts(MS(100));
    while (!atomic_load(&p->stop)) {
        int rc = eb_publish(p->bus, p->topic, "x", 1, &o);
        if (rc == EB_OK)
            p->published++;
        else if (rc != EB_ETIMEDOUT && p->errors++ == 0)
            p->first_error = rc;
    }
    return NULL;
}

static void unsub_variant(const char *label, eb_delivery delivery, unsigned lanes)
{
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;
    unsub_state u;
    memset(&u, 0, sizeof u);
    atomic_init(&u.calls, 0);
    atomic_init(&u.in_flight, 0);
    atomic_init(&u.late_calls, 0);
    atomic_init(&u.unsubscribed, 0);
    atomic_long keep;
    atomic_init(&keep, 0);

    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.delivery = delivery;
    so.lanes = lanes;
    eb_subscription *sub = NULL;
    int rc = eb_subscribe(bus, "unsub.#", unsub_handler, &u, &so, &sub);
    CHECK(rc == EB_OK, "%s: subscribe = %s", label, eb_err_name(rc));
    /* a second subscriber that stays, so events keep flowing afterwards */
    rc = eb_subscribe(bus, "unsub.*", count_handler, &keep, NULL, NULL);
    CHECK(rc == EB_OK, "%s: subscribe keeper = %s", label, eb_err_name(rc));

    pub_loop p = {.bus = bus, .topic = "unsub.tick"};
    atomic_init(&p.stop, 0);
    pthread_t th;
    pthread_create(&th, NULL, pub_loop_main, &p);

    long c = wait_ge(&u.calls, 2000, 20000);
    CHECK(c >= 2000, "%s: handler ran only %ld times before unsubscribing", label, c);
    rc = eb_unsubscribe(sub);
    long in_flight_after = atomic_load(&u.in_flight);
    atomic_store(&u.unsubscribed, 1);
    long calls_at_return = atomic_load(&u.calls);
    CHECK(rc == EB_OK, "%s: eb_unsubscribe = %s", label, eb_err_name(rc));
    CHECK(in_flight_after == 0,
          "%s: %ld handler calls still running when eb_unsubscribe "
          "returned",
          label, in_flight_after);

    long keep_before = atomic_load(&keep);
    sleep_us(200000); /* publishing goes on */
    long keep_after = atomic_load(&keep);
    atomic_store(&p.stop, 1);
    pthread_join(th, NULL);
    CHECK(p.errors == 0, "%s: %ld publishes failed (first %s)", label, p.errors,
          eb_err_name(p.first_error));
    CHECK(keep_after > keep_before, "%s: events stopped flowing after the unsubscribe", label);
    CHECK(atomic_load(&u.late_calls) == 0 && atomic_load(&u.calls) == calls_at_return,
          "%s: %ld handler calls started after eb_unsubscribe returned", label,
          atomic_load(&u.calls) - calls_at_return);
    eb_bus_destroy(bus);
    CHECK(atomic_load(&u.late_calls) == 0, "%s: late handler calls during destroy", label);
}

static void test_unsubscribe(void)
{
    section("f. no handler call after eb_unsubscribe returns", 90);
    unsub_variant("SERIAL", EB_DELIVERY_SERIAL, 0);
    unsub_variant("CONCURRENT x4", EB_DELIVERY_CONCURRENT, 4);

    /* From inside its own handler: returns at once, no call starts after. */
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;
    unsub_state u;
    memset(&u, 0, sizeof u);
    atomic_init(&u.calls, 0);
    atomic_init(&u.late_calls, 0);
    atomic_init(&u.unsubscribed, 0);
    atomic_init(&u.self_rc, 1);
    u.self_at = 100;
    int rc = eb_subscribe(bus, "self.#", self_unsub_handler, &u, NULL, &u.self);
    CHECK(rc == EB_OK, "self: subscribe = %s", eb_err_name(rc));
    pub_loop p = {.bus = bus, .topic = "self.tick"};
    atomic_init(&p.stop, 0);
    pthread_t th;
    pthread_create(&th, NULL, pub_loop_main, &p);
    long c = wait_ge(&u.calls, 100, 20000);
    sleep_us(200000);
    atomic_store(&p.stop, 1);
    pthread_join(th, NULL);
    CHECK(c >= 100, "self: handler ran only %ld times", c);
    CHECK(atomic_load(&u.self_rc) == EB_OK, "self: eb_unsubscribe from own handler = %s",
          eb_err_name(atomic_load(&u.self_rc)));
    CHECK(atomic_load(&u.calls) == 100 && atomic_load(&u.late_calls) == 0,
          "self: handler called %ld times, want exactly 100 (SERIAL, unsubscribed in call 100)",
          atomic_load(&u.calls));
    eb_bus_destroy(bus);
}

/* ------------------------------------------------------------------------ */
/* (g) bad input is refused with EB_EINVAL and nothing is published         */
/* ------------------------------------------------------------------------ */

static void test_bad_input(void)
{
    section("g. bad input refused with EB_EINVAL", 30);
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;
    atomic_long seen;
    atomic_init(&seen, 0);
    int rc = eb_subscribe(bus, "#", count_handler, &seen, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe # = %s", eb_err_name(rc));

    char t256[257], t255[256];
    memset(t256, 'a', 256);
    t256[256] = '\0';
    memset(t255, 'b', 255);
    t255[255] = '\0';
    static const char pl[] = "payload";
    eb_publish_options o = timeout_opts(MS(1000));
    eb_publish_options badkey = o;
    badkey.key = NULL;
    badkey.key_len = 4;
    eb_publish_options badflags = o;
    badflags.flags = 0x80000000u;

    struct {
        const char *what;
        eb_bus *bus;
        const char *topic;
        const void *payload;
        size_t len;
        const eb_publish_options *opts;
    } cases[] = {
        {"NULL bus", NULL, "a.b", pl, sizeof pl, NULL},
        {"NULL topic", bus, NULL, pl, sizeof pl, NULL},
        {"256-byte topic", bus, t256, pl, sizeof pl, NULL},
        {"NULL payload with len 5", bus, "a.b", NULL, 5, NULL},
        {"NULL key with key_len 4", bus, "a.b", pl, sizeof pl, &badkey},
        {"unknown flags", bus, "a.b", pl, sizeof pl, &badflags},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rc =
            eb_publish(cases[i].bus, cases[i].topic, cases[i].payload, cases[i].len, cases[i].opts);
        CHECK(rc == EB_EINVAL, "eb_publish(%s) = %s, want EB_EINVAL", cases[i].what,
              eb_err_name(rc));

        eb_publish_result r, untouched;
        memset(&r, 0x5A, sizeof r);
        memset(&untouched, 0x5A, sizeof untouched);
        rc = eb_publish_wait(cases[i].bus, cases[i].topic, cases[i].payload, cases[i].len,
                             cases[i].opts, &r);
        CHECK(rc == EB_EINVAL, "eb_publish_wait(%s) = %s, want EB_EINVAL", cases[i].what,
              eb_err_name(rc));
        CHECK(memcmp(&r, &untouched, sizeof r) == 0,
              "eb_publish_wait(%s) wrote its result on failure", cases[i].what);

        eb_ticket *sentinel = (eb_ticket *)&untouched, *t = sentinel;
        rc = eb_publish_async(cases[i].bus, cases[i].topic, cases[i].payload, cases[i].len,
                              cases[i].opts, &t);
        CHECK(rc == EB_EINVAL && t == sentinel,
              "eb_publish_async(%s) = %s (ticket %s), want EB_EINVAL and ticket untouched",
              cases[i].what, eb_err_name(rc), t == sentinel ? "untouched" : "written");
        if (rc == EB_OK && t != sentinel)
            eb_ticket_release(t);
    }
    rc = eb_publish_async(bus, "a.b", pl, sizeof pl, NULL, NULL);
    CHECK(rc == EB_EINVAL, "eb_publish_async(NULL ticket) = %s", eb_err_name(rc));

    /* subscribe */
    eb_subscription *sentinel = (eb_subscription *)&seen, *s = sentinel;
    rc = eb_subscribe(NULL, "a.b", count_handler, &seen, NULL, &s);
    CHECK(rc == EB_EINVAL && s == sentinel, "eb_subscribe(NULL bus) = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, NULL, count_handler, &seen, NULL, &s);
    CHECK(rc == EB_EINVAL && s == sentinel, "eb_subscribe(NULL pattern) = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, "a.b", NULL, &seen, NULL, &s);
    CHECK(rc == EB_EINVAL && s == sentinel, "eb_subscribe(NULL handler) = %s", eb_err_name(rc));
    rc = eb_subscribe(bus, t256, count_handler, &seen, NULL, &s);
    CHECK(rc == EB_EINVAL && s == sentinel, "eb_subscribe(256-byte pattern) = %s", eb_err_name(rc));
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.lanes = 2; /* SERIAL must be 0 or 1 */
    rc = eb_subscribe(bus, "a.b", count_handler, &seen, &so, &s);
    CHECK(rc == EB_EINVAL && s == sentinel, "eb_subscribe(SERIAL with 2 lanes) = %s",
          eb_err_name(rc));
    rc = eb_unsubscribe(NULL);
    CHECK(rc == EB_EINVAL, "eb_unsubscribe(NULL) = %s", eb_err_name(rc));

    /* misc */
    rc = eb_bus_create(NULL, NULL);
    CHECK(rc == EB_EINVAL, "eb_bus_create(NULL, NULL) = %s", eb_err_name(rc));
    eb_bus_stats st;
    rc = eb_bus_stats_get(NULL, &st);
    CHECK(rc == EB_EINVAL, "eb_bus_stats_get(NULL) = %s", eb_err_name(rc));
    CHECK(eb_strerror(12345) != NULL && eb_err_name(12345) != NULL &&
              strcmp(eb_err_name(EB_EINVAL), "EB_EINVAL") == 0,
          "eb_strerror/eb_err_name");

    /* nothing of the above was published or subscribed */
    memset(&st, 0, sizeof st);
    rc = eb_bus_stats_get(bus, &st);
    CHECK(rc == EB_OK && st.published == 0 && st.subscriptions == 1,
          "after refused calls: published=%llu subscriptions=%u, want 0 and 1",
          (unsigned long long)st.published, st.subscriptions);

    /* a 255-byte topic is fine, and an empty payload may be NULL */
    eb_publish_result r;
    rc = eb_publish_wait(bus, t255, NULL, 0, &o, &r);
    check_result("publish_wait(255-byte topic)", rc, &r, 1, 1, 0, EB_OK);
    CHECK(atomic_load(&seen) == 1, "handler saw %ld events, want only the valid one",
          atomic_load(&seen));
    eb_bus_destroy(bus);
    CHECK(atomic_load(&seen) == 1, "after destroy the handler saw %ld events, want 1",
          atomic_load(&seen));
}

/* ------------------------------------------------------------------------ */
/* (h) EB_EAGAIN on a full ring; destroy delivers every accepted event      */
/* ------------------------------------------------------------------------ */

typedef struct full_state {
    eb_bus *bus;
    gate gate;
    atomic_long handled;
    atomic_long gate_timeouts;
    atomic_long late_publish, late_closed; /* publishes tried after the gate opened */
    atomic_int late_rc;
} full_state;

static int full_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    full_state *f = ctx;
    if (!gate_wait(&f->gate, 15000))
        atomic_fetch_add(&f->gate_timeouts, 1);
    /* The gate opens only while eb_bus_destroy runs: publishing must be refused. */
    if (atomic_load(&f->late_publish) < 3) {
        eb_publish_options o = timeout_opts(0);
        int rc = eb_publish(f->bus, "other.topic", NULL, 0, &o);
        atomic_fetch_add(&f->late_publish, 1);
        if (rc == EB_ECLOSED)
            atomic_fetch_add(&f->late_closed, 1);
        else
            atomic_store(&f->late_rc, rc);
    }
    atomic_fetch_add(&f->handled, 1);
    return 0;
}

static void *open_gate_later(void *arg)
{
    sleep_us(300000);
    atomic_store(&((gate *)arg)->open, 1);
    return NULL;
}

static void test_full_ring(void)
{
    section("h. EB_EAGAIN on a full ring; destroy delivers all accepted", 60);
    eb_bus *bus = make_bus(2, 4);
    if (!bus)
        return;
    full_state *f = calloc(1, sizeof *f);
    f->bus = bus;
    atomic_init(&f->gate.open, 0);
    atomic_init(&f->handled, 0);
    atomic_init(&f->late_rc, EB_ECLOSED);

    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.mailbox_capacity = 1;
    int rc = eb_subscribe(bus, "full.#", full_handler, f, &so, NULL);
    CHECK(rc == EB_OK, "subscribe = %s", eb_err_name(rc));

    eb_bus_stats st;
    rc = eb_bus_stats_get(bus, &st);
    CHECK(rc == EB_OK && st.intake_capacity >= 4 && st.intake_capacity <= 7 && st.workers == 2,
          "stats intake_capacity=%u workers=%u, want 4..7 (2^k-1 >= 4) and 2", st.intake_capacity,
          st.workers);

    eb_publish_options nowait = timeout_opts(0);
    long accepted = 0, other = 0;
    int other_rc = EB_OK;
    bool got_eagain = false;
    for (int i = 0; i < 1000 && !got_eagain; i++) {
        rc = eb_publish(bus, "full.x", &i, sizeof i, &nowait);
        if (rc == EB_OK)
            accepted++;
        else if (rc == EB_EAGAIN)
            got_eagain = true;
        else if (other++ == 0)
            other_rc = rc;
        sleep_us(2000); /* let the dispatcher move what it can before the next one */
    }
    CHECK(got_eagain, "no EB_EAGAIN after %ld accepted publishes with timeout_ns = 0", accepted);
    CHECK(other == 0, "%ld publishes returned %s", other, eb_err_name(other_rc));
    printf("  (%ld publishes accepted before EB_EAGAIN)\n", accepted);
    CHECK(accepted >= 4 && accepted <= 64,
          "%ld publishes accepted (intake 4, mailbox 1, one in the handler)", accepted);

    eb_publish_options brief = timeout_opts(MS(20));
    int64_t t0 = now_ns();
    rc = eb_publish(bus, "full.x", NULL, 0, &brief);
    int64_t took = now_ns() - t0;
    if (rc == EB_OK)
        accepted++;
    CHECK(rc == EB_ETIMEDOUT,
          "publish with a 20 ms timeout on a full ring = %s, want "
          "EB_ETIMEDOUT",
          eb_err_name(rc));
    CHECK(took >= MS(15) && took < MS(5000), "the 20 ms publish took %lld ms",
          (long long)(took / 1000000));

    rc = eb_bus_stats_get(bus, &st);
    CHECK(rc == EB_OK && st.published == (uint64_t)accepted, "stats published=%llu, accepted %ld",
          (unsigned long long)st.published, accepted);
    CHECK(atomic_load(&f->handled) == 0, "handler finished %ld events with its gate shut",
          atomic_load(&f->handled));

    /* Destroy while the handler is still stuck; the gate opens 300 ms later. */
    pthread_t th;
    pthread_create(&th, NULL, open_gate_later, &f->gate);
    t0 = now_ns();
    eb_bus_destroy(bus);
    took = now_ns() - t0;
    pthread_join(th, NULL);
    long handled = atomic_load(&f->handled);
    CHECK(handled == accepted, "eb_bus_destroy returned with %ld of %ld accepted events handled",
          handled, accepted);
    CHECK(took >= MS(250),
          "eb_bus_destroy returned after %lld ms, before the handler could "
          "finish",
          (long long)(took / 1000000));
    CHECK(atomic_load(&f->gate_timeouts) == 0, "handler gate timed out");
    CHECK(atomic_load(&f->late_publish) > 0 &&
              atomic_load(&f->late_closed) == atomic_load(&f->late_publish),
          "publish from a handler during eb_bus_destroy returned %s, want EB_ECLOSED",
          eb_err_name(atomic_load(&f->late_rc)));
    free(f);
}

/* ------------------------------------------------------------------------ */
/* (i) publisher threads that exit while the bus lives on                   */
/* ------------------------------------------------------------------------ */

#define I_THREADS 6
#define I_PER_THREAD 20000

typedef struct short_pub {
    eb_bus *bus;
    long errors;
} short_pub;

static void *short_pub_main(void *arg)
{
    short_pub *p = arg;
    for (int i = 0; i < I_PER_THREAD; i++)
        if (eb_publish(p->bus, "short.lived", &i, sizeof i, NULL) != EB_OK)
            p->errors++;
    return NULL; /* the thread ends; the bus does not */
}

static void test_short_lived_publishers(void)
{
    section("i. publisher threads that exit while the bus lives on", 120);
    eb_bus *bus = make_bus(2, 0);
    if (!bus)
        return;
    atomic_long seen;
    atomic_init(&seen, 0);
    int rc = eb_subscribe(bus, "short.*", count_handler, &seen, NULL, NULL);
    CHECK(rc == EB_OK, "subscribe = %s", eb_err_name(rc));
    long errors = 0;
    for (int t = 0; t < I_THREADS; t++) { /* one after the other */
        short_pub p = {bus, 0};
        pthread_t th;
        pthread_create(&th, NULL, short_pub_main, &p);
        pthread_join(th, NULL);
        errors += p.errors;
    }
    CHECK(errors == 0, "%ld publishes failed", errors);
    long n = wait_ge(&seen, (long)I_THREADS * I_PER_THREAD, 60000);
    CHECK(n == (long)I_THREADS * I_PER_THREAD, "handler saw %ld of %ld events", n,
          (long)I_THREADS * I_PER_THREAD);
    eb_bus_destroy(bus);
}

/* ------------------------------------------------------------------------ */

static const char *g_only; /* sections to run, NULL: all */

static bool selected(char letter)
{
    return g_only == NULL || strchr(g_only, letter) != NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        g_only = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    install_crash_handlers();

    section("version", 10);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", EB_VERSION_MAJOR, EB_VERSION_MINOR, EB_VERSION_PATCH);
    const char *v = eb_version();
    CHECK(v != NULL && strcmp(v, want) == 0, "eb_version() = \"%s\", header says \"%s\"",
          v ? v : "(null)", want);
    printf("  eventbus %s\n", v ? v : "(null)");

    if (selected('a'))
        test_topic_routing();
    if (selected('b'))
        test_ordering();
    if (selected('c'))
        test_slow_observer();
    if (selected('d'))
        test_wait_results();
    if (selected('e'))
        test_nested_waits();
    if (selected('f'))
        test_unsubscribe();
    if (selected('g'))
        test_bad_input();
    if (selected('h'))
        test_full_ring();
    if (selected('i'))
        test_short_lived_publishers();
    alarm(0);

    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
