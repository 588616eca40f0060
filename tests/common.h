/*
 * Helpers shared by the Criterion test files.
 *
 * Rules the tests follow:
 *  - Handlers never call cr_assert (Criterion assertions may only fail on the
 *    test's own thread). They record what they saw in atomics or in arrays,
 *    and the test thread asserts once everything was torn down or waited for.
 *  - Every wait is bounded (t_wait_budget_ns(), 10 s by default, scaled by
 *    EB_TEST_WAIT_SCALE for slow sanitizer runs), so a bug fails a test
 *    instead of hanging the suite. Timing is only ever asserted as a lower
 *    bound.
 *  - Every test destroys its bus and frees what it allocated, so ASan/LSan
 *    stay clean.
 */
#ifndef EB_TESTS_COMMON_H
#define EB_TESTS_COMMON_H

#include <criterion/criterion.h>
#include <eventbus/eventbus.h>

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Criterion's per-test wall-clock limit, seconds (the build raises it for
   sanitizer runs): a hang fails the one test instead of the whole file. */
#ifndef EB_CRITERION_TIMEOUT
#define EB_CRITERION_TIMEOUT 120
#endif

#define T_MS 1000000LL
#define T_SEC 1000000000LL

static inline int64_t t_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * T_SEC + ts.tv_nsec;
}

static inline int64_t t_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * T_SEC + ts.tv_nsec;
}

static inline void t_sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / T_SEC), (long)(ns % T_SEC)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline void t_sleep_ms(int64_t ms)
{
    t_sleep_ns(ms * T_MS);
}

/* How long a bounded wait may last before the test calls it a failure. */
static inline int64_t t_wait_budget_ns(void)
{
    const char *s = getenv("EB_TEST_WAIT_SCALE");
    long scale = s ? strtol(s, NULL, 10) : 1;
    if (scale < 1) {
        scale = 1;
    }
    return 10 * T_SEC * scale;
}

/* Bounded polling wait: evaluates cond every 100 us until it holds or the
   wait budget is spent. Leaves `ok` true if cond held. */
#define T_WAIT_FOR(ok, cond)                                                                       \
    do {                                                                                           \
        int64_t t__deadline = t_now_ns() + t_wait_budget_ns();                                     \
        (ok) = false;                                                                              \
        for (;;) {                                                                                 \
            if (cond) {                                                                            \
                (ok) = true;                                                                       \
                break;                                                                             \
            }                                                                                      \
            if (t_now_ns() > t__deadline) {                                                        \
                break;                                                                             \
            }                                                                                      \
            t_sleep_ns(100000);                                                                    \
        }                                                                                          \
    } while (0)

/* Waits until *v >= target; true if it got there in time. */
static inline bool t_wait_ge(atomic_uint *v, unsigned target)
{
    bool ok;
    T_WAIT_FOR(ok, atomic_load(v) >= target);
    return ok;
}

static inline bool t_wait_ge64(atomic_uint_fast64_t *v, uint64_t target)
{
    bool ok;
    T_WAIT_FOR(ok, atomic_load(v) >= target);
    return ok;
}

/*
 * A gate handlers can block on. Waiting is bounded by the wait budget so a
 * test that forgets (or fails before) opening it still terminates; a wait
 * that ran out is counted in `expired` so the test can fail on it.
 */
typedef struct t_gate {
    atomic_int open;
    atomic_uint waiting; /* handlers currently blocked on it */
    atomic_uint expired; /* waits that ran out of budget */
} t_gate;

static inline void t_gate_init(t_gate *g)
{
    atomic_init(&g->open, 0);
    atomic_init(&g->waiting, 0);
    atomic_init(&g->expired, 0);
}

static inline void t_gate_open(t_gate *g)
{
    atomic_store(&g->open, 1);
}

/* Returns true if the gate opened, false if the wait ran out. */
static inline bool t_gate_wait(t_gate *g)
{
    bool ok;
    atomic_fetch_add(&g->waiting, 1);
    T_WAIT_FOR(ok, atomic_load(&g->open) != 0);
    atomic_fetch_sub(&g->waiting, 1);
    if (!ok) {
        atomic_fetch_add(&g->expired, 1);
    }
    return ok;
}

/* Reads a stat through a bounded wait: waits until expr (over `st`, a fresh
   eb_bus_stats snapshot each round) holds. */
#define T_WAIT_STATS(ok, bus, st, cond)                                                            \
    T_WAIT_FOR(ok, (eb_bus_stats_get((bus), &(st)) == EB_OK && (cond)))

#define T_WAIT_SUB_STATS(ok, sub, st, cond)                                                        \
    T_WAIT_FOR(ok, (eb_subscription_stats_get((sub), &(st)) == EB_OK && (cond)))

/* A bus on store (NULL: none) with a fixed worker count and otherwise
   default configuration. */
static inline eb_bus *t_bus_store(eb_store *store, unsigned workers)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = workers;
    cfg.store = store;
    eb_bus *bus = NULL;
    int rc = eb_bus_create(&cfg, &bus);
    cr_assert_eq(rc, EB_OK, "eb_bus_create: %s", eb_err_name(rc));
    cr_assert_not_null(bus);
    return bus;
}

/* A bus with a fixed worker count and otherwise default configuration. */
static inline eb_bus *t_bus_new(unsigned workers)
{
    return t_bus_store(NULL, workers);
}

/* How many threads of this process are named `name` (/proc/self/task). */
static inline unsigned t_threads_named(const char *name)
{
    unsigned n = 0;
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[64], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%.20s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        if (fgets(comm, sizeof(comm), f) != NULL) {
            comm[strcspn(comm, "\n")] = '\0';
            n += strcmp(comm, name) == 0;
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

/* A handler context that counts calls and can record the payload of each
   call as an integer (first 4 bytes, if present). */
#define T_REC_MAX 4096
typedef struct t_counter {
    atomic_uint calls;
    atomic_uint dollar_topics; /* calls whose topic begins with '$' */
    atomic_uint n_rec;
    uint32_t rec[T_REC_MAX];
    int rc; /* what the handler returns */
} t_counter;

static inline void t_counter_init(t_counter *c)
{
    memset(c, 0, sizeof(*c));
    atomic_init(&c->calls, 0);
    atomic_init(&c->dollar_topics, 0);
    atomic_init(&c->n_rec, 0);
}

static inline int t_count_handler(const eb_event *ev, void *ctx)
{
    t_counter *c = ctx;
    size_t len = 0;
    const void *p = eb_event_payload(ev, &len);
    const char *topic = eb_event_topic(ev);
    if (topic && topic[0] == '$') {
        atomic_fetch_add(&c->dollar_topics, 1);
    }
    if (len >= sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        unsigned i = atomic_fetch_add(&c->n_rec, 1);
        if (i < T_REC_MAX) {
            c->rec[i] = v;
        }
    }
    atomic_fetch_add(&c->calls, 1);
    return c->rc;
}

/* Subscribes with a given delivery mode and otherwise default options. */
static inline eb_subscription *t_sub(eb_bus *bus, const char *pattern, eb_handler_fn fn, void *ctx,
                                     eb_delivery delivery, unsigned lanes)
{
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = delivery;
    o.lanes = lanes;
    eb_subscription *sub = NULL;
    int rc = eb_subscribe(bus, pattern, fn, ctx, &o, &sub);
    cr_assert_eq(rc, EB_OK, "eb_subscribe(%s): %s", pattern, eb_err_name(rc));
    cr_assert_not_null(sub);
    return sub;
}

/* A handler that always fails with EB_EIO, counting its calls. */
typedef struct t_failing {
    atomic_uint calls;
} t_failing;

static inline int t_fail_handler(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((t_failing *)ctx)->calls, 1);
    return EB_EIO;
}

/* Subscribes t_fail_handler (counting in f, zeroed) on topic with these
   retries. */
static inline eb_subscription *t_sub_failing(eb_bus *bus, const char *topic, t_failing *f,
                                             unsigned attempts, uint64_t backoff_ns,
                                             uint64_t backoff_max_ns)
{
    atomic_init(&f->calls, 0);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = attempts;
    o.backoff_initial_ns = backoff_ns;
    o.backoff_max_ns = backoff_max_ns;
    eb_subscription *sub = NULL;
    cr_assert_eq(eb_subscribe(bus, topic, t_fail_handler, f, &o, &sub), EB_OK);
    return sub;
}

/* Publishes a 4-byte integer payload, fire and forget, waiting for space. */
static inline int t_pub_u32(eb_bus *bus, const char *topic, uint32_t v)
{
    return eb_publish(bus, topic, &v, sizeof v, NULL);
}

/* The 4-byte integer payload of an event published with t_pub_u32. */
static inline uint32_t t_u32(const eb_event *ev)
{
    uint32_t v;
    memcpy(&v, eb_event_payload(ev, NULL), sizeof v);
    return v;
}

/* Options with a bounded timeout so a wait in the test can not hang. */
static inline eb_publish_options t_bounded_opts(void)
{
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = t_wait_budget_ns();
    return o;
}

/* Publishes and waits, bounded; asserts EB_OK and returns the result. */
static inline eb_publish_result t_pub_wait(eb_bus *bus, const char *topic, const void *p,
                                           size_t len)
{
    eb_publish_options o = t_bounded_opts();
    eb_publish_result r;
    memset(&r, 0xEE, sizeof r);
    int rc = eb_publish_wait(bus, topic, p, len, &o, &r);
    cr_assert_eq(rc, EB_OK, "eb_publish_wait(%s): %s", topic, eb_err_name(rc));
    return r;
}

/* Blocks until every event accepted so far was dispatched and finished:
   polls the stats until dispatched catches up with published and no
   subscription lags. */
static inline bool t_quiesce(eb_bus *bus)
{
    bool ok;
    eb_bus_stats st;
    T_WAIT_STATS(ok, bus, st,
                 st.dispatched >= st.published && st.intake_depth == 0 && st.max_lag == 0);
    return ok;
}

/*
 * Publishes 4-byte events numbered 0, 1, 2, ... with timeout_ns = 0 until
 * the intake ring is full and dispatch is stalled (the caller has blocked a
 * handler behind a small mailbox). A single EB_EAGAIN is not proof: the
 * dispatcher may merely be slow to take events (sanitizers), so the ring
 * counts as stuck only once it stays full and nothing is dispatched for a
 * while. Returns how many events were accepted; *last_rc is the result of
 * one more publish made after the stall was confirmed (EB_EAGAIN expected).
 */
static inline uint32_t t_fill_until_stuck(eb_bus *bus, const char *topic, int *last_rc)
{
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.timeout_ns = 0;
    uint32_t accepted = 0;
    int rc = EB_OK;
    int64_t deadline = t_now_ns() + t_wait_budget_ns();
    while (t_now_ns() < deadline && accepted < 100000) {
        rc = eb_publish(bus, topic, &accepted, sizeof accepted, &o);
        if (rc == EB_OK) {
            accepted++;
            continue;
        }
        if (rc != EB_EAGAIN) {
            break;
        }
        eb_bus_stats a, b;
        t_sleep_ms(30);
        eb_bus_stats_get(bus, &a);
        t_sleep_ms(30);
        eb_bus_stats_get(bus, &b);
        if (a.dispatched == b.dispatched && b.intake_depth >= b.intake_capacity) {
            rc = eb_publish(bus, topic, &accepted, sizeof accepted, &o);
            if (rc == EB_OK) {
                accepted++;
            }
            break;
        }
    }
    *last_rc = rc;
    return accepted;
}

/* Starts the program exe with argv, its stdin and stdout on pipes:
   *to_child and *from_child get the parent's ends. The caller waits for it
   (waitpid). */
static inline pid_t t_spawn(const char *exe, char *const argv[], int *to_child, int *from_child)
{
    int in[2], out[2];
    cr_assert_eq(pipe(in), 0);
    cr_assert_eq(pipe(out), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        execv(exe, argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    *to_child = in[1];
    *from_child = out[0];
    return pid;
}

/* A saga store that forwards load, create, save and remove to `real`, and
   has neither `dispatched` nor `pending` (a store that does not track
   dispatch: what a crash between save and dispatch looks like to the next
   run); its first fail_remove removes fail with EB_EBUSY. Give the saga
   &f->store. */
typedef struct t_saga_fwd {
    eb_saga_store store; /* first: the functions get &store */
    eb_saga_store *real;
    atomic_int fail_remove;
    bool drop_start; /* keeps no start id, as a store written before them */
} t_saga_fwd;

static inline eb_saga_store *t_fwd_real(eb_saga_store *s)
{
    return ((t_saga_fwd *)s)->real;
}

static inline int t_fwd_load(eb_saga_store *s, const char *g, const void *k, size_t kl,
                             eb_saga_record *r)
{
    return t_fwd_real(s)->load(t_fwd_real(s), g, k, kl, r);
}

static inline int t_fwd_create(eb_saga_store *s, const char *g, const void *k, size_t kl,
                               const eb_saga_record *r)
{
    if (!((t_saga_fwd *)s)->drop_start)
        return t_fwd_real(s)->create(t_fwd_real(s), g, k, kl, r);
    eb_saga_record bare = *r;
    memset(bare.start_id, 0, sizeof bare.start_id);
    return t_fwd_real(s)->create(t_fwd_real(s), g, k, kl, &bare);
}

static inline int t_fwd_save(eb_saga_store *s, const char *g, const void *k, size_t kl, uint64_t v,
                             const eb_saga_record *r)
{
    return t_fwd_real(s)->save(t_fwd_real(s), g, k, kl, v, r);
}

static inline int t_fwd_remove(eb_saga_store *s, const char *g, const void *k, size_t kl,
                               uint64_t v)
{
    if (atomic_fetch_sub(&((t_saga_fwd *)s)->fail_remove, 1) > 0)
        return EB_EBUSY; /* a lock held past busy_timeout_ms, say */
    return t_fwd_real(s)->remove(t_fwd_real(s), g, k, kl, v);
}

static inline void t_saga_fwd_init(t_saga_fwd *f, eb_saga_store *real)
{
    memset(f, 0, sizeof *f);
    f->store = (eb_saga_store){
        .load = t_fwd_load, .create = t_fwd_create, .save = t_fwd_save, .remove = t_fwd_remove};
    f->real = real;
}

/* ---- one saga key, two instances (test_saga, test_store) ------------- */

/* Saga "inc" (topics inc.#, start inc.start, EB_SAGA_REMOVE): a start
   event's first payload byte is its token, kept in the state; its
   transition schedules inc.timeout (delay_ns, the token as payload) and
   publishes cmd.inc (the token, keyed by the instance), and token 'A'
   completes at once. A timeout completes the instance and counts whether
   its token is another instance's. */
typedef struct t_inc {
    int64_t delay_ns;
    atomic_uint timeouts, foreign;
    atomic_uint cmds;
    uint8_t ids[2][16]; /* command ids of cmd.inc 'A' and 'B' (SERIAL observer) */
} t_inc;

static inline int t_inc_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    t_inc *t = ctx;
    size_t n, kl;
    const char *p = eb_event_payload(ev, &n);
    const void *k = eb_saga_key(sc, &kl);
    char tok = n > 0 ? p[0] : 0;
    if (strcmp(eb_event_topic(ev), "inc.timeout") == 0) {
        atomic_fetch_add(&t->timeouts, 1);
        if (tok != *(char *)state)
            atomic_fetch_add(&t->foreign, 1);
        eb_saga_complete(sc);
        return EB_OK;
    }
    *(char *)state = tok;
    int rc = eb_saga_schedule_timeout(sc, t->delay_ns, "inc.timeout", &tok, 1);
    if (rc == EB_OK)
        rc = eb_saga_publish(sc, "cmd.inc", &tok, 1, k, kl);
    if (tok == 'A')
        eb_saga_complete(sc);
    return rc;
}

static inline int t_inc_on_cmd(const eb_event *ev, void *ctx)
{
    t_inc *t = ctx;
    size_t n;
    const char *p = eb_event_payload(ev, &n);
    if (n == 1 && (p[0] == 'A' || p[0] == 'B'))
        eb_command_id(ev, t->ids[p[0] - 'A']);
    atomic_fetch_add(&t->cmds, 1);
    return EB_OK;
}

/* Starts instance 'A' of key K (it completes and is removed, its timeout
   still pending), then instance 'B' of K before A's timeout fires, and
   waits until B's transitions and the saga's ignored count show both
   timeouts handled. */
static inline void t_inc_run(eb_bus *bus, eb_saga_store *store, unsigned flags, t_inc *t,
                             eb_saga_stats *st)
{
    eb_subscription *cmd = t_sub(bus, "cmd.inc", t_inc_on_cmd, t, EB_DELIVERY_SERIAL, 0);
    const char *topics[] = {"inc.#"}, *starts[] = {"inc.start"};
    eb_saga_def def = {.name = "inc",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = starts,
                       .n_start_topics = 1,
                       .state_size = 1,
                       .transition = t_inc_transition,
                       .ctx = t};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = store;
    so.publish_flags = flags;
    eb_saga *g = NULL;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &g), EB_OK);
    eb_publish_options po = t_bounded_opts();
    po.key = "K";
    po.key_len = 1;
    cr_assert_eq(eb_publish_wait(bus, "inc.start", "A", 1, &po, NULL), EB_OK);
    cr_assert_eq(eb_publish_wait(bus, "inc.start", "B", 1, &po, NULL), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, eb_saga_stats_get(g, st) == EB_OK && st->completed >= 2 &&
                       st->transitions + st->ignored >= 4);
    cr_assert(ok, "the timeouts did not come back");
    cr_assert(t_wait_ge(&t->cmds, 2));
    cr_assert_eq(eb_saga_unregister(g), EB_OK);
    cr_assert_eq(eb_unsubscribe(cmd), EB_OK);
}

#endif /* EB_TESTS_COMMON_H */
