/*
 * Allocation failure at every allocation reached by an operation.
 *
 * For each operation (create a bus, subscribe, publish in every mode,
 * durable publishing, opening the store, outbox operations, a saga
 * transition with the SQLite saga store) and for N = 1, 2, ... the
 * operation runs with its N-th allocation failing — in whichever eligible
 * thread makes it: the caller, a worker, the store's writer (see shim.h) —
 * until a run makes fewer than N allocations. Each run:
 *   1. sets up a bus (and a store) with no failure armed,
 *   2. arms the failure, calls the operation and waits for its asynchronous
 *      part (dispatch, delivery, the commit) to finish, disarms,
 *   3. checks the outcome: the call returned EB_OK or a documented clean
 *      code; an event whose publish returned EB_OK was delivered exactly
 *      once, a refused one never; the bus and store keep working once
 *      allocations succeed again,
 *   4. tears everything down, on its own thread (fault_run), so the
 *      thread's event cache is freed too; then no block allocated during
 *      the run may still be live.
 * Every run's findings go to the test thread, which asserts.
 *
 * The whole of every run is tracked: leaks of the setup and teardown count
 * too. Each test prints (and appends to $EB_FAULT_REPORT) how many
 * allocations the operation made in its clean run, how many failures were
 * injected and how many distinct call sites were reached.
 *
 * Sanitizer builds run the same loops with a stride (every allocation up to
 * FX_DENSE, then every FX_STRIDE-th), see fx_next: TSan makes every run ten
 * times slower, and the stride keeps the suite within minutes there.
 *
 * Debugging a finding: EB_FAULT_ONLY=N runs the clean run and run N only,
 * EB_FAULT_VERBOSE=1 prints each run, EB_FAULT_BACKTRACE=1 prints the raw
 * stack of a crash (module + offset, for addr2line).
 */
#include "fault_common.h"
#include "shim.h"

#include <limits.h>

TestSuite(fault_alloc, .timeout = EB_CRITERION_TIMEOUT);

#define NIDS 256
#define MARK (NIDS - 1) /* the id of the marker event */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FX_DENSE 64
#define FX_STRIDE 5
#else
#define FX_DENSE LONG_MAX
#define FX_STRIDE 1
#endif

typedef struct fx fx;

typedef struct op_def {
    const char *name;
    bool store;              /* setup opens a store (a copy of the template) */
    bool dir_only;           /* setup makes a directory for a store, nothing more */
    bool bus;                /* setup creates a bus (with the store, if any) */
    void (*setup)(fx *f);    /* optional; nothing armed */
    int (*run)(fx *f);       /* armed: the operation and its asynchronous part */
    void (*check)(fx *f);    /* nothing armed: the outcome */
    void (*teardown)(fx *f); /* optional, before the bus and store go */
    const int *ok_codes;     /* codes the operation may return (EB_OK implied) */
} op_def;

struct fx {
    const op_def *op;
    long n;         /* the allocation to fail; 0: none */
    unsigned kinds; /* of allocation calls counted (shim.h) */
    bool strict;    /* tolerate no pending store bug (regression tests) */
    unsigned tolerated;
    long allocs;
    bool hit;
    int rc;
    fx_err err;
    const char *template_path;
    fx_dir dir;
    eb_store *store;
    eb_bus *bus;
    eb_subscription *sub;
    atomic_uint seen[NIDS]; /* deliveries per id to the recorder */
    atomic_uint frees;      /* zero-copy payload frees */
    size_t accepted;
    uint64_t log0; /* log events after setup */
    void *payload;
    int64_t ids[8];
    eb_saga_store *sstore;
    eb_saga *saga;
    uint8_t cmd_id[16];
    atomic_uint cmd_ids_differ;
};

static const int ENOMEM_ONLY[] = {EB_ENOMEM, 0};

/* A known symptom of a store bug whose fix is pending (fault_common.h):
   tolerated, and counted, unless the run is strict. */
static bool fx_tolerate(fx *f, int pending)
{
    if (!pending || f->strict)
        return false;
    f->tolerated++;
    return true;
}

/* ---- helpers (run on the scenario thread) -------------------------------- */

static int recorder(const eb_event *ev, void *ctx)
{
    fx *f = ctx;
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    uint32_t id = NIDS;
    if (len >= 4)
        memcpy(&id, p, 4);
    if (id < NIDS)
        atomic_fetch_add(&f->seen[id], 1);
    return 0;
}

static bool fx_wait_seen(fx *f, uint32_t id, unsigned want)
{
    bool ok;
    T_WAIT_FOR(ok, atomic_load(&f->seen[id]) >= want);
    return ok;
}

static eb_bus *fx_bus_new(fx *f, eb_store *store, unsigned intake, int *rc)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.intake_capacity = intake;
    cfg.store = store;
    eb_bus *bus = NULL;
    *rc = eb_bus_create(&cfg, &bus);
    (void)f;
    return bus;
}

static eb_store *fx_store_open(const char *path, int *rc)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_OFF;
    eb_store *s = NULL;
    *rc = eb_store_open(path, &o, &s);
    return s;
}

static bool fx_copy(const char *from, const char *to)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    bool ok = in >= 0 && out >= 0;
    char buf[16384];
    ssize_t n;
    while (ok && (n = read(in, buf, sizeof buf)) > 0)
        ok = write(out, buf, (size_t)n) == n;
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    return ok;
}

static uint64_t fx_log_count(fx *f)
{
    eb_store_stats st;
    if (eb_store_stats_get(f->store, &st) != EB_OK) {
        fx_fail(&f->err, "eb_store_stats_get failed");
        return 0;
    }
    return st.events;
}

static eb_subscription *fx_sub(fx *f, const char *pattern, eb_delivery d)
{
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = d;
    eb_subscription *s = NULL;
    int rc = eb_subscribe(f->bus, pattern, recorder, f, &o, &s);
    FX_CHECK(&f->err, rc == EB_OK, "setup: eb_subscribe(%s): %s", pattern, eb_err_name(rc));
    return s;
}

/* Publishes the marker on topic (with key, if any) and waits for it: every
   event this thread published earlier to the same lane was delivered. */
static void fx_marker(fx *f, const char *topic, const char *key)
{
    uint32_t id = MARK;
    eb_publish_options o = t_bounded_opts();
    o.key = key;
    o.key_len = key ? strlen(key) : 0;
    eb_publish_result r;
    int rc = eb_publish_wait(f->bus, topic, &id, 4, &o, &r);
    FX_CHECK(&f->err, rc == EB_OK && r.delivered >= 1, "marker: %s", eb_err_name(rc));
}

static bool code_ok(const op_def *op, int rc)
{
    if (rc == EB_OK)
        return true;
    const int *c = op->ok_codes ? op->ok_codes : ENOMEM_ONLY;
    for (; *c != 0; c++)
        if (*c == rc)
            return true;
    return false;
}

/* Exactly once if accepted, never if refused. */
static void fx_expect(fx *f, uint32_t id, bool accepted)
{
    unsigned n = atomic_load(&f->seen[id]);
    FX_CHECK(&f->err, n == (accepted ? 1u : 0u), "event %u delivered %u times (publish %s)", id, n,
             accepted ? "accepted" : "refused");
}

/* After the check: the bus still works (publish and deliver one event). */
static void fx_bus_alive(fx *f, const char *topic)
{
    atomic_store(&f->seen[200], 0);
    uint32_t id = 200;
    eb_publish_options o = t_bounded_opts();
    eb_publish_result r;
    int rc = eb_publish_wait(f->bus, topic, &id, 4, &o, &r);
    FX_CHECK(&f->err, rc == EB_OK && atomic_load(&f->seen[200]) >= 1,
             "the bus does not deliver after the failure: %s", eb_err_name(rc));
}

static void setup_recorder(fx *f);

/* ---- the scenario ---------------------------------------------------------- */

static void *scenario(void *arg)
{
    fx *f = arg;
    const op_def *op = f->op;
    int rc = EB_OK;
    if ((op->store || op->dir_only) && !fx_dir_new(&f->dir)) {
        fx_fail(&f->err, "mkdtemp");
        return NULL;
    }
    if (op->store) {
        if (!fx_copy(f->template_path, f->dir.path))
            fx_fail(&f->err, "copying the template store");
        f->store = fx_store_open(f->dir.path, &rc);
        FX_CHECK(&f->err, rc == EB_OK, "setup: eb_store_open: %s", eb_err_name(rc));
    }
    if (op->bus && f->err.msg[0] == '\0') {
        f->bus = fx_bus_new(f, f->store, 63, &rc);
        FX_CHECK(&f->err, rc == EB_OK, "setup: eb_bus_create: %s", eb_err_name(rc));
    }
    if (op->setup != NULL && f->err.msg[0] == '\0')
        op->setup(f);
    if (f->store != NULL && f->err.msg[0] == '\0')
        f->log0 = fx_log_count(f);
    if (f->err.msg[0] == '\0') {
        fault_arm_kind(f->n, f->kinds);
        f->rc = op->run(f);
        f->allocs = fault_disarm();
        f->hit = fault_hit();
        if (!code_ok(op, f->rc))
            fx_fail(&f->err, "returned %s", eb_err_name(f->rc));
        else
            op->check(f);
    }
    if (op->teardown != NULL)
        op->teardown(f);
    eb_bus_destroy(f->bus);
    eb_store_close(f->store);
    if (op->store || op->dir_only)
        fx_dir_rm(&f->dir);
    return NULL;
}

/* The next allocation to fail after n (see the note on sanitizer builds). */
static long fx_next(long n)
{
    return n < FX_DENSE ? n + 1 : n + FX_STRIDE;
}

static void fx_loop_kind(const op_def *op, unsigned kinds, bool strict)
{
    cr_assert(fault_shim_active(), "the malloc shim is not interposing");
    fx_backtrace_on_crash();
    static fx f; /* big: atomics for every id */
    fx_dir tdir;
    char tpath[sizeof tdir.path];
    const char *template_path = NULL;
    if (op->store) {
        /* A store file every run copies (opening an existing store is
           cheaper than creating the schema again). */
        cr_assert(fx_dir_new(&tdir));
        int rc;
        eb_store *s = fx_store_open(tdir.path, &rc);
        cr_assert_eq(rc, EB_OK);
        eb_store_close(s);
        snprintf(tpath, sizeof tpath, "%s", tdir.path);
        template_path = tpath;
    }
    fault_sites_reset();
    long clean = -1, injected = 0, runs = 0, tolerated = 0;
    for (long n = 0;; n = fx_next(n)) {
        memset(&f, 0, sizeof f);
        f.op = op;
        f.n = n;
        f.kinds = kinds;
        f.strict = strict;
        f.template_path = template_path;
        const char *only = getenv("EB_FAULT_ONLY");
        if (only != NULL && n > atol(only))
            break;
        if (only != NULL && n != 0 && n != atol(only))
            continue;
        if (getenv("EB_FAULT_VERBOSE") != NULL)
            fprintf(stderr, "%s: failing allocation %ld\n", op->name, n);
        fault_track_begin();
        cr_assert_eq(fault_run(scenario, &f), 0);
        long live = fault_track_end();
        runs++;
        if (live != 0)
            fault_track_print(stderr, 16);
        cr_assert_eq(live, 0, "%s, allocation %ld failing: %ld blocks leaked", op->name, n, live);
        cr_assert(f.err.msg[0] == '\0', "%s, allocation %ld failing: %s", op->name, n, f.err.msg);
        tolerated += f.tolerated;
        if (n == 0) {
            clean = f.allocs; /* the clean run: how many allocations it makes */
            continue;
        }
        if (!f.hit)
            break;
        injected++;
        cr_assert_lt(n, 100000, "%s: no end to the allocations", op->name);
    }
    unsigned total, exe, sq, lc;
    fault_sites_count(&total, &exe, &sq, &lc);
    fx_report("fault_alloc %-28s %s allocations %5ld  injected %5ld  runs %5ld  sites %3u "
              "(eventbus %u, sqlite %u, libc/ld.so %u)%s",
              op->name,
              kinds == FAULT_ALL       ? "all    "
              : kinds == FAULT_REALLOC ? "realloc"
              : kinds == FAULT_CALLOC  ? "calloc "
                                       : "some   ",
              clean, injected, runs, total, exe, sq, lc,
              tolerated ? "  TOLERATED pending store fix" : "");
    if (tolerated)
        fx_report("fault_alloc %-28s tolerated %ld runs with a pending store bug", op->name,
                  tolerated);
    if (op->store) {
        fx_dir_rm(&tdir);
    }
}

static void fx_loop(const op_def *op)
{
    fx_loop_kind(op, FAULT_ALL, false);
}

/* Defines the operation op_<test> (named nm in the report; the other
   arguments are its op_def fields) and Test(fault_alloc, <test>), which runs
   the loop over it. */
#define FX_TEST(test, nm, ...)                                                                     \
    static const op_def op_##test = {.name = nm, __VA_ARGS__};                                     \
    Test(fault_alloc, test)                                                                        \
    {                                                                                              \
        fx_loop(&op_##test);                                                                       \
    }

/* ---- bus ---------------------------------------------------------------------- */

static const int CREATE_CODES[] = {EB_ENOMEM, EB_EIO, 0}; /* EB_EIO: a thread did not start */

static int run_bus_create(fx *f)
{
    int rc;
    /* 300: the depot prefills five magazines of blocks. */
    f->bus = fx_bus_new(f, f->store, 300, &rc);
    return rc;
}

static void check_bus_create(fx *f)
{
    FX_CHECK(&f->err, (f->rc == EB_OK) == (f->bus != NULL), "out-parameter on %s",
             eb_err_name(f->rc));
    if (f->rc != EB_OK) {
        /* Nothing is left attached: a bus can be created now. */
        int rc;
        f->bus = fx_bus_new(f, f->store, 300, &rc);
        FX_CHECK(&f->err, rc == EB_OK, "create after the failure: %s", eb_err_name(rc));
    }
    if (f->bus == NULL)
        return;
    fx_sub(f, "b.#", EB_DELIVERY_SERIAL);
    for (uint32_t i = 0; i < 100; i++)
        if (eb_publish(f->bus, "b.x", &i, 4, NULL) != EB_OK)
            fx_fail(&f->err, "publish after create");
    for (uint32_t i = 0; i < 100; i++)
        if (!fx_wait_seen(f, i, 1))
            fx_fail(&f->err, "event %u not delivered", i);
    if (f->store != NULL) {
        uint32_t id = 150;
        eb_publish_options o = t_bounded_opts();
        o.flags = EB_PUBLISH_DURABLE;
        int rc = eb_publish(f->bus, "b.d", &id, 4, &o);
        FX_CHECK(&f->err, rc == EB_OK && fx_wait_seen(f, 150, 1), "durable publish: %s",
                 eb_err_name(rc));
    }
}

FX_TEST(bus_create, "bus_create", .run = run_bus_create, .check = check_bus_create,
        .ok_codes = CREATE_CODES)
FX_TEST(bus_create_with_a_store, "bus_create_with_store", .store = true, .run = run_bus_create,
        .check = check_bus_create, .ok_codes = CREATE_CODES)

/* Destroying a bus: events accepted before are all delivered, whatever
   allocation fails on the way (none may be needed, and none may leak). The
   store's writer has taken exactly one batch before, so its queue array is
   the unallocated spare when the destroy queues its detach jobs. */
static void setup_destroy(fx *f)
{
    setup_recorder(f);
    for (uint32_t i = 1; i <= 50; i++)
        if (eb_publish(f->bus, "p.x", &i, 4, NULL) != EB_OK)
            fx_fail(&f->err, "setup: publish");
    if (f->store != NULL) {
        uint32_t id = 51;
        eb_publish_options o = t_bounded_opts();
        o.flags = EB_PUBLISH_DURABLE;
        int rc = eb_publish(f->bus, "p.d", &id, 4, &o);
        FX_CHECK(&f->err, rc == EB_OK, "setup: durable publish: %s", eb_err_name(rc));
    }
}

static int run_destroy(fx *f)
{
    int rc = eb_bus_shutdown(f->bus, -1);
    if (rc == EB_OK)
        f->bus = NULL;
    return rc;
}

static void check_destroy(fx *f)
{
    uint32_t last = f->store != NULL ? 51 : 50;
    for (uint32_t i = 1; i <= last; i++)
        fx_expect(f, i, true);
    if (f->store != NULL) {
        /* The store is free for the next bus. */
        int rc;
        f->bus = fx_bus_new(f, f->store, 63, &rc);
        FX_CHECK(&f->err, rc == EB_OK, "a bus on the store after the destroy: %s", eb_err_name(rc));
    }
}

static const int NO_CODES[] = {0};
FX_TEST(bus_destroy, "bus_destroy", .bus = true, .setup = setup_destroy, .run = run_destroy,
        .check = check_destroy, .ok_codes = NO_CODES)
FX_TEST(bus_destroy_with_a_store, "bus_destroy_with_store", .store = true, .bus = true,
        .setup = setup_destroy, .run = run_destroy, .check = check_destroy, .ok_codes = NO_CODES)

/* ---- subscribe ------------------------------------------------------------------ */

typedef struct sub_kind {
    const char *pattern;
    eb_delivery delivery;
    unsigned lanes;
    bool durable;
} sub_kind;

static const sub_kind SUB_EXACT = {"s.exact", EB_DELIVERY_SERIAL, 0, false};
static const sub_kind SUB_WILD = {"s.*.w.#", EB_DELIVERY_SERIAL, 0, false};
static const sub_kind SUB_KEYED = {"s.exact", EB_DELIVERY_KEYED, 16, false};
static const sub_kind SUB_CONC = {"s.exact", EB_DELIVERY_CONCURRENT, 0, false};
static const sub_kind SUB_DURABLE = {"s.#", EB_DELIVERY_SERIAL, 0, true};

static const sub_kind *fx_kind(fx *f)
{
    const char *n = f->op->name;
    if (strstr(n, "wildcard"))
        return &SUB_WILD;
    if (strstr(n, "keyed"))
        return &SUB_KEYED;
    if (strstr(n, "concurrent"))
        return &SUB_CONC;
    if (strstr(n, "durable"))
        return &SUB_DURABLE;
    return &SUB_EXACT;
}

static int subscribe_kind(fx *f, const sub_kind *k, eb_subscription **out)
{
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = k->delivery;
    o.lanes = k->lanes;
    o.durable = k->durable;
    o.name = k->durable ? "dur" : NULL;
    return eb_subscribe(f->bus, k->pattern, recorder, f, &o, out);
}

static int run_subscribe(fx *f)
{
    return subscribe_kind(f, fx_kind(f), &f->sub);
}

static void check_subscribe(fx *f)
{
    const sub_kind *k = fx_kind(f);
    const char *topic = strcmp(k->pattern, "s.*.w.#") == 0 ? "s.a.w.b.c" : "s.exact";
    uint32_t id = 1;
    eb_publish_options o = t_bounded_opts();
    o.flags = k->durable ? EB_PUBLISH_DURABLE : 0;
    o.key = "k";
    o.key_len = 1;
    eb_publish_result r;
    int rc = eb_publish_wait(f->bus, topic, &id, 4, &o, &r);
    FX_CHECK(&f->err, rc == EB_OK, "publish after subscribe: %s", eb_err_name(rc));
    if (rc != EB_OK)
        return;
    bool ok = f->rc == EB_OK;
    /* (A live durable event skipped for a subscription whose replay is to
       cover it counts as delivered in the result.) */
    bool never_live = k->durable && ok && r.matched == 1 && atomic_load(&f->seen[1]) == 0 &&
                      fx_tolerate(f, EB_FAULT_PENDING_DSUB_START);
    if (!never_live) {
        FX_CHECK(&f->err, r.matched == (ok ? 1u : 0u) && r.delivered == r.matched,
                 "subscribe %s, the event matched %u, delivered %u", eb_err_name(f->rc), r.matched,
                 r.delivered);
        fx_expect(f, 1, ok);
    }
    eb_bus_stats st;
    eb_bus_stats_get(f->bus, &st);
    FX_CHECK(&f->err, st.subscriptions == (ok ? 1u : 0u), "%u subscriptions", st.subscriptions);
    if (ok) {
        FX_CHECK(&f->err, eb_unsubscribe(f->sub) == EB_OK, "unsubscribe");
    }
    /* A failed subscribe leaves nothing behind: the same one works now (a
       durable name included). */
    rc = subscribe_kind(f, k, &f->sub);
    FX_CHECK(&f->err, rc == EB_OK, "subscribe again: %s", eb_err_name(rc));
    id = 2;
    rc = eb_publish_wait(f->bus, topic, &id, 4, &o, &r);
    FX_CHECK(&f->err, rc == EB_OK && r.delivered == 1, "publish to the new subscription: %s",
             eb_err_name(rc));
    fx_expect(f, 2, true);
}

/* fx_kind picks the subscription from the name. */
#define SUB_TEST(test)                                                                             \
    FX_TEST(test, #test, .bus = true, .run = run_subscribe, .check = check_subscribe)

SUB_TEST(subscribe_exact)
SUB_TEST(subscribe_wildcard)
SUB_TEST(subscribe_keyed)
SUB_TEST(subscribe_concurrent)
static const int DSUB_CODES[] = {EB_ENOMEM, EB_EIO, 0};
FX_TEST(subscribe_durable, "subscribe_durable", .store = true, .bus = true, .run = run_subscribe,
        .check = check_subscribe, .ok_codes = DSUB_CODES)

/* A durable subscription with events to replay: three durable events are
   logged before it subscribes. While armed: the subscribe, the replay and a
   live durable marker behind it (the replay precedes every later event in
   the log order, so the marker arrives after the replayed events). */
static void setup_replay(fx *f)
{
    for (uint32_t id = 10; id < 13; id++) {
        eb_publish_options o = t_bounded_opts();
        o.flags = EB_PUBLISH_DURABLE;
        int rc = eb_publish(f->bus, "s.x", &id, 4, &o);
        FX_CHECK(&f->err, rc == EB_OK, "setup: durable publish: %s", eb_err_name(rc));
    }
}

/* Publishes a durable marker (retrying a refused one) and waits for it,
   at most budget_ns. */
static bool durable_marker(fx *f, uint32_t id, int64_t budget_ns)
{
    eb_publish_options o = t_bounded_opts();
    o.flags = EB_PUBLISH_DURABLE;
    int rc = EB_ENOMEM;
    for (int i = 0; i < 100 && rc != EB_OK; i++)
        rc = eb_publish(f->bus, "s.mark", &id, 4, &o);
    FX_CHECK(&f->err, rc == EB_OK, "durable marker: %s", eb_err_name(rc));
    if (rc != EB_OK)
        return false;
    int64_t deadline = t_now_ns() + budget_ns;
    while (atomic_load(&f->seen[id]) == 0 && t_now_ns() < deadline)
        t_sleep_ns(100000);
    return atomic_load(&f->seen[id]) > 0;
}

static int run_subscribe_replay(fx *f)
{
    int rc = subscribe_kind(f, &SUB_DURABLE, &f->sub);
    /* A subscription that never went live (pending DSUB_START) never gets
       the marker: wait less long while that is tolerated. */
    bool pending = EB_FAULT_PENDING_DSUB_START && !f->strict;
    int64_t budget = pending ? t_wait_budget_ns() / 5 : t_wait_budget_ns();
    if (rc == EB_OK && !durable_marker(f, 20, budget) &&
        !fx_tolerate(f, EB_FAULT_PENDING_DSUB_START))
        fx_fail(&f->err, "the live marker after the replay never came");
    return rc;
}

static void check_subscribe_replay(fx *f)
{
    bool first = true;
    for (uint32_t id = 10; id < 13; id++)
        first = first && atomic_load(&f->seen[id]) >= 1;
    if (f->rc == EB_OK && first)
        return;
    /* Refused, or its replay could not be queued: the checkpoint must not
       have passed the events, so the next subscribe replays them. */
    if (f->rc == EB_OK)
        FX_CHECK(&f->err, eb_unsubscribe(f->sub) == EB_OK, "unsubscribe");
    int rc = subscribe_kind(f, &SUB_DURABLE, &f->sub);
    FX_CHECK(&f->err, rc == EB_OK, "subscribe again: %s", eb_err_name(rc));
    FX_CHECK(&f->err, durable_marker(f, 21, t_wait_budget_ns()), "the second marker never came");
    bool all = true;
    for (uint32_t id = 10; id < 13; id++)
        all = all && atomic_load(&f->seen[id]) >= 1;
    if (all || fx_tolerate(f, EB_FAULT_PENDING_REPLAY_FREEZE))
        return;
    for (uint32_t id = 10; id < 13; id++)
        FX_CHECK(&f->err, atomic_load(&f->seen[id]) >= 1,
                 "logged event %u never delivered to the durable subscription (subscribe %s)", id,
                 eb_err_name(f->rc));
}

FX_TEST(subscribe_durable_with_a_replay, "subscribe_durable_replay", .store = true, .bus = true,
        .setup = setup_replay, .run = run_subscribe_replay, .check = check_subscribe_replay,
        .ok_codes = DSUB_CODES)

/* ---- publish ------------------------------------------------------------------------ */

static void setup_recorder(fx *f)
{
    f->sub = fx_sub(f, "p.#", EB_DELIVERY_SERIAL);
}

static void setup_keyed(fx *f)
{
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = EB_DELIVERY_KEYED;
    o.lanes = 8;
    int rc = eb_subscribe(f->bus, "p.#", recorder, f, &o, &f->sub);
    FX_CHECK(&f->err, rc == EB_OK, "setup: keyed subscribe: %s", eb_err_name(rc));
}

/* Publishes id 1 (opts as given) and, if accepted, waits for it. */
static int publish_one(fx *f, eb_publish_options *o)
{
    uint32_t id = 1;
    int rc = eb_publish(f->bus, "p.one", &id, 4, o);
    if (rc == EB_OK && !fx_wait_seen(f, 1, 1))
        fx_fail(&f->err, "accepted event not delivered");
    return rc;
}

static int run_publish(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    return publish_one(f, &o);
}

static void check_publish(fx *f)
{
    fx_marker(f, "p.mark", NULL);
    fx_expect(f, 1, f->rc == EB_OK);
    fx_bus_alive(f, "p.alive");
}

static int run_publish_key(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.key = "customer-7";
    o.key_len = strlen(o.key);
    return publish_one(f, &o);
}

static void check_publish_key(fx *f)
{
    fx_marker(f, "p.mark", "customer-7");
    fx_expect(f, 1, f->rc == EB_OK);
    fx_bus_alive(f, "p.alive");
}

static int run_publish_wait(fx *f)
{
    uint32_t id = 1;
    eb_publish_options o = t_bounded_opts();
    eb_publish_result r;
    memset(&r, 0xEE, sizeof r);
    int rc = eb_publish_wait(f->bus, "p.one", &id, 4, &o, &r);
    if (rc == EB_OK)
        FX_CHECK(&f->err, r.matched == 1 && r.delivered == 1 && r.failed == 0,
                 "result matched %u delivered %u failed %u", r.matched, r.delivered, r.failed);
    return rc;
}

static int run_publish_async(fx *f)
{
    uint32_t id = 1;
    eb_publish_options o = t_bounded_opts();
    eb_ticket *t = NULL;
    int rc = eb_publish_async(f->bus, "p.one", &id, 4, &o, &t);
    if (rc != EB_OK) {
        FX_CHECK(&f->err, t == NULL, "ticket set on %s", eb_err_name(rc));
        return rc;
    }
    eb_publish_result r;
    int wrc = eb_ticket_wait(t, t_wait_budget_ns(), &r);
    FX_CHECK(&f->err, wrc == EB_OK && r.matched == 1 && r.delivered == 1, "ticket wait: %s",
             eb_err_name(wrc));
    eb_ticket_release(t);
    return rc;
}

/* Publishes ids 1 .. n (at most 100) in one batch with flags, and waits for
   the accepted prefix (f->accepted) to be delivered. */
static int publish_batch_of(fx *f, uint32_t n, unsigned flags)
{
    eb_message m[100];
    uint32_t v[100];
    for (uint32_t i = 0; i < n; i++) {
        v[i] = i + 1;
        m[i] = (eb_message){.topic = "p.batch", .payload = &v[i], .len = 4};
    }
    eb_publish_options o = t_bounded_opts();
    o.flags = flags;
    size_t acc = 999;
    int rc = eb_publish_batch(f->bus, m, n, &o, &acc);
    f->accepted = acc;
    FX_CHECK(&f->err, acc <= n && (rc != EB_OK || acc == n), "accepted %zu with %s", acc,
             eb_err_name(rc));
    for (uint32_t i = 0; i < acc && i < n; i++)
        if (!fx_wait_seen(f, i + 1, 1))
            fx_fail(&f->err, "accepted event %u not delivered", i + 1);
    return rc;
}

static int run_publish_batch(fx *f)
{
    return publish_batch_of(f, 100, 0); /* three carriers */
}

static void check_publish_batch(fx *f)
{
    fx_marker(f, "p.mark", NULL);
    for (uint32_t i = 0; i < 100; i++)
        fx_expect(f, i + 1, i < f->accepted);
    fx_bus_alive(f, "p.alive");
}

static int run_publish_delayed(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.delay_ns = 2 * T_MS;
    return publish_one(f, &o);
}

static int run_publish_at(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.at_ns = t_realtime_ns() + 2 * T_MS;
    return publish_one(f, &o);
}

static void check_publish_delayed(fx *f)
{
    eb_bus_stats st;
    bool ok;
    T_WAIT_STATS(ok, f->bus, st, st.scheduled == 0);
    FX_CHECK(&f->err, ok, "%llu scheduled events left", (unsigned long long)st.scheduled);
    check_publish(f);
}

static void count_free(void *p)
{
    fx *f = *(fx **)p;
    atomic_fetch_add(&f->frees, 1);
    free(p);
}

static void setup_zero_copy(fx *f)
{
    setup_recorder(f);
    f->payload = malloc(sizeof(fx *) + 4); /* the id follows the back pointer */
    if (f->payload == NULL) {
        fx_fail(&f->err, "malloc");
        return;
    }
    *(fx **)f->payload = f;
}

static int zc_recorder(const eb_event *ev, void *ctx)
{
    fx *f = ctx;
    size_t len;
    eb_event_payload(ev, &len);
    if (len == sizeof(fx *) + 4)
        atomic_fetch_add(&f->seen[1], 1);
    else
        recorder(ev, ctx);
    return 0;
}

static void setup_zc_sub(fx *f)
{
    eb_subscription *s = NULL;
    int rc = eb_subscribe(f->bus, "p.#", zc_recorder, f, NULL, &s);
    FX_CHECK(&f->err, rc == EB_OK, "setup: subscribe: %s", eb_err_name(rc));
    f->sub = s;
    setup_zero_copy(f);
}

static int run_publish_zero_copy(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.payload_free = count_free;
    int rc = eb_publish(f->bus, "p.one", f->payload, sizeof(fx *) + 4, &o);
    if (rc == EB_OK && !fx_wait_seen(f, 1, 1))
        fx_fail(&f->err, "accepted event not delivered");
    return rc;
}

static void check_publish_zero_copy(fx *f)
{
    check_publish(f);
    if (f->rc == EB_OK) {
        bool ok;
        T_WAIT_FOR(ok, atomic_load(&f->frees) == 1);
        FX_CHECK(&f->err, ok, "payload freed %u times", atomic_load(&f->frees));
    } else {
        FX_CHECK(&f->err, atomic_load(&f->frees) == 0, "refused payload freed by the bus");
        free(f->payload); /* still ours */
    }
    f->payload = NULL;
}

#define PUB_TEST(test, nm, setupfn, runfn, checkfn)                                                \
    FX_TEST(test, nm, .bus = true, .setup = setupfn, .run = runfn, .check = checkfn)

/* A handler publishes (the nested event inherits ids from the one being
   handled) and returns the code: a refused publish fails the delivery, and
   the bus retries it, so the nested event is delivered exactly once. */
static int relay(const eb_event *ev, void *ctx)
{
    fx *f = ctx;
    (void)ev;
    uint32_t id = 2;
    return eb_publish(f->bus, "p.nested", &id, 4, NULL);
}

static void setup_relay(fx *f)
{
    setup_recorder(f);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.max_attempts = 20;
    o.backoff_initial_ns = 100000;
    o.backoff_max_ns = 1000000;
    int rc = eb_subscribe(f->bus, "r.in", relay, f, &o, NULL);
    FX_CHECK(&f->err, rc == EB_OK, "setup: relay subscribe: %s", eb_err_name(rc));
}

static int run_publish_from_handler(fx *f)
{
    uint32_t id = 1;
    int rc = eb_publish(f->bus, "r.in", &id, 4, NULL);
    if (rc == EB_OK && !fx_wait_seen(f, 2, 1))
        fx_fail(&f->err, "the event published by the handler never came");
    return rc;
}

static void check_publish_from_handler(fx *f)
{
    fx_marker(f, "p.mark", NULL);
    eb_bus_stats st;
    bool ok;
    T_WAIT_STATS(ok, f->bus, st, st.max_lag == 0 && st.dispatched >= st.published);
    FX_CHECK(&f->err, ok, "the bus did not settle");
    fx_expect(f, 2, f->rc == EB_OK);
    FX_CHECK(&f->err, st.dead_lettered == 0, "the relay was dead-lettered");
    fx_bus_alive(f, "p.alive");
}

PUB_TEST(publish, "publish", setup_recorder, run_publish, check_publish)
PUB_TEST(publish_wait, "publish_wait", setup_recorder, run_publish_wait, check_publish)
PUB_TEST(publish_async, "publish_async", setup_recorder, run_publish_async, check_publish)
PUB_TEST(publish_batch, "publish_batch", setup_recorder, run_publish_batch, check_publish_batch)
PUB_TEST(publish_with_key, "publish_with_key", setup_keyed, run_publish_key, check_publish_key)
PUB_TEST(publish_delayed, "publish_delayed", setup_recorder, run_publish_delayed,
         check_publish_delayed)
PUB_TEST(publish_at_a_time, "publish_at_time", setup_recorder, run_publish_at,
         check_publish_delayed)
PUB_TEST(publish_zero_copy, "publish_zero_copy", setup_zc_sub, run_publish_zero_copy,
         check_publish_zero_copy)
PUB_TEST(publish_from_a_handler, "publish_from_a_handler", setup_relay, run_publish_from_handler,
         check_publish_from_handler)

/* ---- durable publishing ----------------------------------------------------------- */

static const int DURABLE_CODES[] = {EB_ENOMEM, EB_EIO, 0};

static int run_durable(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.flags = EB_PUBLISH_DURABLE;
    return publish_one(f, &o);
}

static void check_durable(fx *f)
{
    check_publish(f);
    uint64_t n = fx_log_count(f) - f->log0;
    FX_CHECK(&f->err, n == (f->rc == EB_OK ? 1u : 0u), "%llu events logged, publish %s",
             (unsigned long long)n, eb_err_name(f->rc));
}

static int run_durable_lazy(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.flags = EB_PUBLISH_DURABLE_LAZY;
    return publish_one(f, &o);
}

static void check_durable_lazy(fx *f)
{
    check_publish(f);
    /* Logged unless its commit failed (then it was dispatched anyway). */
    FX_CHECK(&f->err, fx_log_count(f) - f->log0 <= 1, "logged twice");
    int rc = eb_store_flush(f->store, t_wait_budget_ns());
    FX_CHECK(&f->err, rc == EB_OK || rc == EB_EIO || rc == EB_ENOMEM, "flush: %s", eb_err_name(rc));
}

static int run_durable_batch(fx *f)
{
    return publish_batch_of(f, 20, EB_PUBLISH_DURABLE);
}

static void check_durable_batch(fx *f)
{
    fx_marker(f, "p.mark", NULL);
    for (uint32_t i = 0; i < 20; i++)
        fx_expect(f, i + 1, i < f->accepted);
    uint64_t n = fx_log_count(f) - f->log0;
    FX_CHECK(&f->err, n == f->accepted, "%llu logged, %zu accepted", (unsigned long long)n,
             f->accepted);
    fx_bus_alive(f, "p.alive");
}

static int run_durable_delayed(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.flags = EB_PUBLISH_DURABLE;
    o.delay_ns = 2 * T_MS;
    return publish_one(f, &o);
}

static void check_durable_delayed(fx *f)
{
    check_publish(f);
    eb_store_stats st;
    FX_CHECK(&f->err, eb_store_stats_get(f->store, &st) == EB_OK && st.scheduled == 0,
             "%llu scheduled rows left", (unsigned long long)st.scheduled);
}

#define DUR_TEST(test, runfn, checkfn)                                                             \
    FX_TEST(test, #test, .store = true, .bus = true, .setup = setup_recorder, .run = runfn,        \
            .check = checkfn, .ok_codes = DURABLE_CODES)

DUR_TEST(durable_publish, run_durable, check_durable)
DUR_TEST(durable_publish_lazy, run_durable_lazy, check_durable_lazy)
DUR_TEST(durable_publish_batch, run_durable_batch, check_durable_batch)
DUR_TEST(durable_publish_delayed, run_durable_delayed, check_durable_delayed)

/* ---- the store ---------------------------------------------------------------------- */

static const int OPEN_CODES[] = {EB_ENOMEM, EB_EIO, 0};

static int run_store_open_new(fx *f)
{
    int rc;
    f->store = fx_store_open(f->dir.path, &rc);
    return rc;
}

static void check_store_open(fx *f)
{
    FX_CHECK(&f->err, (f->rc == EB_OK) == (f->store != NULL), "out-parameter on %s",
             eb_err_name(f->rc));
    if (f->rc != EB_OK) {
        if (f->op->dir_only) {
            /* It created the file: it is removed unless a schema was
               written to it (another process may have opened it since: it
               stays, and the open below finds a whole store in it). */
            char p[160];
            struct stat st;
            if (f->n == 1 && fx_exists(f->dir.path) && fx_tolerate(f, EB_FAULT_PENDING_OPEN_UNLINK))
                unlink(f->dir.path); /* the store object itself was the failure */
            FX_CHECK(&f->err, stat(f->dir.path, &st) != 0 || st.st_size > 0,
                     "a failed open left an empty file");
            snprintf(p, sizeof p, "%s-wal", f->dir.path);
            FX_CHECK(&f->err, !fx_exists(p), "a failed open left the -wal file");
            snprintf(p, sizeof p, "%s-shm", f->dir.path);
            FX_CHECK(&f->err, !fx_exists(p), "a failed open left the -shm file");
        }
        int rc;
        f->store = fx_store_open(f->dir.path, &rc);
        FX_CHECK(&f->err, rc == EB_OK, "open after the failure: %s", eb_err_name(rc));
    }
    if (f->store == NULL)
        return;
    int64_t id = 0;
    int rc = eb_outbox_add(f->store, "x", "p", 1, NULL, 0, &id);
    FX_CHECK(&f->err, rc == EB_OK && id >= 1, "outbox add on the opened store: %s",
             eb_err_name(rc));
}

static void setup_store_existing(fx *f)
{
    /* The scenario opened the copy; this run opens it again itself. */
    eb_store_close(f->store);
    f->store = NULL;
}

FX_TEST(store_open_creating_the_file, "store_open_new", .dir_only = true, .run = run_store_open_new,
        .check = check_store_open, .ok_codes = OPEN_CODES)
FX_TEST(store_open_an_existing_file, "store_open_existing", .store = true,
        .setup = setup_store_existing, .run = run_store_open_new, .check = check_store_open,
        .ok_codes = OPEN_CODES)

/* ---- the outbox ----------------------------------------------------------------------- */

static const int OUTBOX_CODES[] = {EB_ENOMEM, EB_EIO, 0};

typedef struct ob_look {
    int64_t id;
    int status;
    unsigned attempts;
    size_t rows;
} ob_look;

static int ob_look_fn(const eb_outbox_message *m, void *ctx)
{
    ob_look *l = ctx;
    l->rows++;
    if (m->id == l->id) {
        l->status = (int)m->status;
        l->attempts = m->attempts;
    }
    return 0;
}

static ob_look ob_get(fx *f, int64_t id)
{
    ob_look l = {.id = id, .status = -1};
    int rc = eb_outbox_list(f->store, -1, 0, ob_look_fn, &l);
    FX_CHECK(&f->err, rc == EB_OK, "outbox list: %s", eb_err_name(rc));
    return l;
}

static void setup_outbox(fx *f)
{
    for (int i = 0; i < 3; i++) {
        int rc = eb_outbox_add(f->store, "job", &i, sizeof i, NULL, 0, &f->ids[i]);
        FX_CHECK(&f->err, rc == EB_OK, "setup: outbox add: %s", eb_err_name(rc));
    }
    if (strcmp(f->op->name, "outbox_add") == 0 || strcmp(f->op->name, "outbox_claim") == 0)
        return;
    eb_outbox_batch *b = NULL;
    int64_t lease = strcmp(f->op->name, "outbox_reap") == 0 ? 1 : 60 * T_SEC;
    int rc = eb_outbox_claim(f->store, 3, lease, &b);
    FX_CHECK(&f->err, rc == EB_OK && b->n == 3, "setup: claim: %s", eb_err_name(rc));
    if (rc == EB_OK)
        eb_outbox_batch_free(b);
    if (lease == 1)
        t_sleep_ms(2); /* the leases expired */
}

static int run_outbox_add(fx *f)
{
    return eb_outbox_add(f->store, "job.new", "payload", 7, "key", 3, &f->ids[3]);
}

static void check_outbox_add(fx *f)
{
    ob_look l = ob_get(f, f->rc == EB_OK ? f->ids[3] : 0);
    FX_CHECK(&f->err, l.rows == (f->rc == EB_OK ? 4u : 3u), "%zu rows after add %s", l.rows,
             eb_err_name(f->rc));
    if (f->rc == EB_OK)
        FX_CHECK(&f->err, l.status == EB_OUTBOX_READY, "new row status %d", l.status);
}

static int run_outbox_claim(fx *f)
{
    eb_outbox_batch *b = NULL;
    int rc = eb_outbox_claim(f->store, 3, 60 * T_SEC, &b);
    if (rc == EB_OK) {
        FX_CHECK(&f->err, b->n == 3, "claimed %zu of 3", b->n);
        eb_outbox_batch_free(b);
    } else {
        FX_CHECK(&f->err, b == NULL, "batch set on %s", eb_err_name(rc));
    }
    return rc;
}

static void check_outbox_claim(fx *f)
{
    for (int i = 0; i < 3; i++) {
        ob_look l = ob_get(f, f->ids[i]);
        int want = f->rc == EB_OK ? EB_OUTBOX_IN_PROGRESS : EB_OUTBOX_READY;
        FX_CHECK(&f->err, l.status == want, "row %d: status %d after claim %s", i, l.status,
                 eb_err_name(f->rc));
    }
    if (f->rc != EB_OK) {
        /* Nothing was taken: all three are claimable now. */
        eb_outbox_batch *b = NULL;
        int rc = eb_outbox_claim(f->store, 3, 60 * T_SEC, &b);
        FX_CHECK(&f->err, rc == EB_OK && b->n == 3, "claim after the failure: %s", eb_err_name(rc));
        if (rc == EB_OK)
            eb_outbox_batch_free(b);
    }
}

static int run_outbox_ack(fx *f)
{
    return eb_outbox_ack(f->store, f->ids[0]);
}

static int run_outbox_abandon(fx *f)
{
    return eb_outbox_abandon(f->store, f->ids[0], "later", 0);
}

static int run_outbox_fail(fx *f)
{
    return eb_outbox_fail(f->store, f->ids[0], "broken");
}

static void check_outbox_one(fx *f, int done_status)
{
    ob_look l = ob_get(f, f->ids[0]);
    int want = f->rc == EB_OK ? done_status : EB_OUTBOX_IN_PROGRESS;
    FX_CHECK(&f->err, l.status == want, "row status %d after %s returned %s", l.status, f->op->name,
             eb_err_name(f->rc));
    if (f->rc != EB_OK) {
        int rc = f->op->run(f); /* the same call works now */
        FX_CHECK(&f->err, rc == EB_OK, "%s after the failure: %s", f->op->name, eb_err_name(rc));
    }
}

static void check_outbox_ack(fx *f)
{
    check_outbox_one(f, EB_OUTBOX_DONE);
}

static void check_outbox_abandon(fx *f)
{
    check_outbox_one(f, EB_OUTBOX_READY);
}

static void check_outbox_fail(fx *f)
{
    check_outbox_one(f, EB_OUTBOX_FAILED);
}

static int run_outbox_reap(fx *f)
{
    size_t n = 99;
    int rc = eb_outbox_reap(f->store, &n);
    if (rc == EB_OK)
        FX_CHECK(&f->err, n == 3, "reaped %zu of 3", n);
    return rc;
}

static void check_outbox_reap(fx *f)
{
    int want = f->rc == EB_OK ? EB_OUTBOX_READY : EB_OUTBOX_IN_PROGRESS;
    for (int i = 0; i < 3; i++) {
        ob_look l = ob_get(f, f->ids[i]);
        FX_CHECK(&f->err, l.status == want, "row %d: status %d after reap %s", i, l.status,
                 eb_err_name(f->rc));
    }
}

/* setup_outbox reads the operation from the name. */
#define OB_TEST(test, runfn, checkfn)                                                              \
    FX_TEST(test, #test, .store = true, .setup = setup_outbox, .run = runfn, .check = checkfn,     \
            .ok_codes = OUTBOX_CODES)

OB_TEST(outbox_add, run_outbox_add, check_outbox_add)
OB_TEST(outbox_claim, run_outbox_claim, check_outbox_claim)
OB_TEST(outbox_ack, run_outbox_ack, check_outbox_ack)
OB_TEST(outbox_abandon, run_outbox_abandon, check_outbox_abandon)
OB_TEST(outbox_fail, run_outbox_fail, check_outbox_fail)
OB_TEST(outbox_reap, run_outbox_reap, check_outbox_reap)

/* ---- a saga transition with the SQLite saga store ----------------------------------- */

typedef struct order {
    uint32_t placed;
} order;

static int order_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ev;
    (void)ctx;
    order *o = state;
    o->placed++;
    uint32_t id = 7;
    return eb_saga_send(sc, "cmd.ship", &id, 4, "o1", 2);
}

static int cmd_recorder(const eb_event *ev, void *ctx)
{
    fx *f = ctx;
    uint8_t id[16];
    if (!eb_command_id(ev, id))
        atomic_fetch_add(&f->cmd_ids_differ, 1);
    else if (atomic_fetch_add(&f->seen[7], 1) == 0)
        memcpy(f->cmd_id, id, 16);
    else if (memcmp(f->cmd_id, id, 16) != 0)
        atomic_fetch_add(&f->cmd_ids_differ, 1);
    return 0;
}

static void setup_saga(fx *f)
{
    int rc = eb_saga_sqlite_store_create(f->store, &f->sstore);
    FX_CHECK(&f->err, rc == EB_OK, "setup: saga store: %s", eb_err_name(rc));
    if (rc != EB_OK)
        return;
    static const char *const topics[] = {"order.*"};
    static const char *const starts[] = {"order.placed"};
    eb_saga_def def = {.name = "order",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = starts,
                       .n_start_topics = 1,
                       .state_size = sizeof(order),
                       .transition = order_transition};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = f->sstore;
    so.backoff_initial_ns = 100000;
    so.backoff_max_ns = 1000000;
    rc = eb_saga_register(f->bus, &def, &so, &f->saga);
    FX_CHECK(&f->err, rc == EB_OK, "setup: saga register: %s", eb_err_name(rc));
    rc = eb_subscribe(f->bus, "cmd.ship", cmd_recorder, f, NULL, NULL);
    FX_CHECK(&f->err, rc == EB_OK, "setup: command subscriber: %s", eb_err_name(rc));
}

static int run_saga(fx *f)
{
    eb_publish_options o = t_bounded_opts();
    o.key = "o1";
    o.key_len = 2;
    int rc = eb_publish(f->bus, "order.placed", "x", 1, &o);
    if (rc == EB_OK && !fx_wait_seen(f, 7, 1))
        fx_fail(&f->err, "the saga's command never came");
    if (rc == EB_OK) {
        /* Its settle (the outbox marked dispatched) follows the publish. */
        eb_bus_stats st;
        bool ok;
        T_WAIT_STATS(ok, f->bus, st, st.max_lag == 0 && st.dispatched >= st.published);
        FX_CHECK(&f->err, ok, "the saga's delivery never finished");
    }
    return rc;
}

typedef struct saga_seen {
    unsigned n;
    uint64_t version;
    bool pending;
} saga_seen;

static int saga_look(const eb_store_saga_info *i, void *ctx)
{
    saga_seen *s = ctx;
    s->n++;
    s->version = i->version;
    s->pending = i->commands_pending;
    return 0;
}

static void check_saga(fx *f)
{
    FX_CHECK(&f->err, atomic_load(&f->cmd_ids_differ) == 0, "a command id differed");
    if (f->rc != EB_OK) {
        FX_CHECK(&f->err, atomic_load(&f->seen[7]) == 0, "a refused start event ran the saga");
        return;
    }
    /* At least once, with one id; the instance saved once, and its
       commands settled. */
    FX_CHECK(&f->err, atomic_load(&f->seen[7]) >= 1, "no command");
    saga_seen s = {0};
    int rc = eb_store_sagas(f->store, "order", 0, saga_look, &s);
    FX_CHECK(&f->err, rc == EB_OK && s.n == 1 && s.version == 1,
             "stored instances %u, version %llu: %s", s.n, (unsigned long long)s.version,
             eb_err_name(rc));
    eb_saga_stats st;
    eb_saga_stats_get(f->saga, &st);
    FX_CHECK(&f->err, st.transitions == 1 && st.started == 1, "transitions %llu, started %llu",
             (unsigned long long)st.transitions, (unsigned long long)st.started);
}

static void teardown_saga(fx *f)
{
    eb_saga_unregister(f->saga);
    eb_saga_store_destroy(f->sstore);
}

FX_TEST(saga_transition_with_the_sqlite_saga_store, "saga_transition_sqlite", .store = true,
        .bus = true, .setup = setup_saga, .run = run_saga, .check = check_saga,
        .teardown = teardown_saga)

/* ---- regressions of the bugs these loops found ------------------------------ */

#include "event.h"

TestSuite(fault_regress, .timeout = EB_CRITERION_TIMEOUT);

typedef struct prefill_run {
    eb__depot d;
    int init_rc;
    bool hit;
    bool got_block;
} prefill_run;

static void *prefill_init(void *arg)
{
    prefill_run *p = arg;
    fault_arm(2); /* the first block of the first magazine */
    p->init_rc = eb__depot_init(&p->d, EB__MAG_SIZE, 2);
    fault_disarm();
    p->hit = fault_hit();
    return NULL;
}

static void *prefill_take(void *arg)
{
    prefill_run *p = arg;
    /* A fresh thread: its cache is empty, so the block comes from the
       depot's full magazines (or malloc). */
    eb_event *ev = eb__event_new(NULL, &p->d, NULL, "t", 1, NULL, 0, "x", 1, true, false, 0);
    p->got_block = ev != NULL && strcmp(ev->topic, "t") == 0;
    if (ev != NULL)
        eb__event_unref(ev, &p->d);
    eb__tcache_flush(&p->d);
    return NULL;
}

/* eb__depot_init put a magazine whose first block failed (n == 0) on the
   full list; the next thread with an empty cache popped a block from it at
   index -1 (bus_create crashed with the 204th allocation failing). */
Test(fault_regress, a_prefill_magazine_without_blocks_is_never_handed_out)
{
    static prefill_run p;
    memset(&p, 0, sizeof p);
    fault_track_begin();
    cr_assert_eq(fault_run(prefill_init, &p), 0);
    cr_assert(p.hit);
    cr_assert_eq(p.init_rc, 0);
    cr_assert_eq(fault_run(prefill_take, &p), 0);
    cr_assert(p.got_block);
    eb__depot_fini(&p.d);
    cr_assert_eq(fault_track_end(), 0);
}

typedef struct spare_run {
    eb__depot d;
    eb_event *ev;
    bool hit;
} spare_run;

static void *spare_take(void *arg)
{
    spare_run *p = arg;
    p->ev = eb__event_new(NULL, &p->d, NULL, "t", 1, NULL, 0, "x", 1, true, false, 0);
    eb__tcache_flush(&p->d);
    return NULL;
}

static void *spare_free(void *arg)
{
    spare_run *p = arg;
    /* A fresh thread that has never taken a block (a worker): its first
       free needs an empty magazine to put the block in. */
    fault_arm(1);
    eb__event_unref(p->ev, &p->d);
    fault_disarm();
    p->hit = fault_hit();
    eb__tcache_flush(&p->d);
    return NULL;
}

/* A worker's first free took its magazine from malloc, in the middle of a
   steady load (bench scenario 7 counted it): the depot starts with empty
   magazines for that. */
Test(fault_regress, a_threads_first_free_takes_a_spare_magazine_not_malloc)
{
    static spare_run p;
    memset(&p, 0, sizeof p);
    fault_track_begin();
    cr_assert_eq(eb__depot_init(&p.d, EB__MAG_SIZE, 1), 0);
    cr_assert_eq(fault_run(spare_take, &p), 0);
    cr_assert_not_null(p.ev);
    cr_assert_eq(fault_run(spare_free, &p), 0);
    cr_assert(!p.hit, "the first free called malloc");
    eb__depot_fini(&p.d);
    cr_assert_eq(fault_track_end(), 0);
}

typedef struct side_run {
    fx_err err;
    eb_bus *bus;
    t_gate gate;
    atomic_uint seen[128];
    uint64_t seq[128]; /* of each "out" event, as its handler saw it */
    int64_t ts[128];
    atomic_int batch_rc;
    atomic_uint accepted;
    atomic_bool batch_done;
    bool hit;
} side_run;

static int side_in(const eb_event *ev, void *ctx)
{
    side_run *r = ctx;
    uint32_t id;
    memcpy(&id, eb_event_payload(ev, NULL), 4);
    if (id != 0)
        return 0;
    t_gate_wait(&r->gate);
    /* The dispatcher is stalled on this very lane and the intake is full:
       the batch goes to the side list, whose second growth fails. */
    enum { N = 100 };
    eb_message m[N];
    uint32_t v[N];
    for (uint32_t i = 0; i < N; i++) {
        v[i] = i;
        m[i] = (eb_message){.topic = "out", .payload = &v[i], .len = 4};
    }
    size_t acc = 999;
    fault_arm_kind(2, FAULT_REALLOC);
    int rc = eb_publish_batch(r->bus, m, N, NULL, &acc);
    fault_disarm();
    r->hit = fault_hit();
    atomic_store(&r->batch_rc, rc);
    atomic_store(&r->accepted, (unsigned)acc);
    atomic_store(&r->batch_done, true);
    return 0;
}

static int side_out(const eb_event *ev, void *ctx)
{
    side_run *r = ctx;
    uint32_t id;
    memcpy(&id, eb_event_payload(ev, NULL), 4);
    if (id < 128) {
        r->seq[id] = eb_event_seq(ev);
        r->ts[id] = eb_event_timestamp(ev);
        atomic_fetch_add(&r->seen[id], 1);
    }
    return 0;
}

/* A bus whose dispatch is stalled on a full mailbox and whose intake is
   full: 2 workers, intake and mailboxes of 1, in_fn on "in" (it must wait
   at gate for the event with id 0) and out_fn on out_topic. #0 runs and
   waits at the gate, #1 fills its mailbox, #2 stalls the dispatcher, #3
   fills the intake. NULL, with err set, if that could not be made. */
static eb_bus *stalled_bus_new(fx_err *err, t_gate *gate, eb_handler_fn in_fn,
                               const char *out_topic, eb_handler_fn out_fn, void *ctx)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.intake_capacity = 1;
    cfg.mailbox_capacity = 1;
    eb_bus *bus = NULL;
    int rc = eb_bus_create(&cfg, &bus);
    if (rc != EB_OK) {
        fx_fail(err, "create: %s", eb_err_name(rc));
        return NULL;
    }
    if (eb_subscribe(bus, "in", in_fn, ctx, NULL, NULL) != EB_OK ||
        eb_subscribe(bus, out_topic, out_fn, ctx, NULL, NULL) != EB_OK)
        fx_fail(err, "subscribe");
    bool ok;
    for (uint32_t i = 0; i < 4; i++) {
        eb_publish_options o = t_bounded_opts();
        if (eb_publish(bus, "in", &i, 4, &o) != EB_OK)
            fx_fail(err, "publish in");
        if (i == 0) {
            T_WAIT_FOR(ok, atomic_load(&gate->waiting) == 1);
            FX_CHECK(err, ok, "the handler never ran");
        }
    }
    eb_bus_stats st;
    T_WAIT_STATS(ok, bus, st, st.intake_depth == 1 && st.dispatched == 2);
    FX_CHECK(err, ok, "no stall: depth %u dispatched %llu", st.intake_depth,
             (unsigned long long)st.dispatched);
    return bus;
}

static void *side_scenario(void *arg)
{
    side_run *r = arg;
    int64_t t0 = t_realtime_ns();
    r->bus = stalled_bus_new(&r->err, &r->gate, side_in, "out", side_out, r);
    if (r->bus == NULL)
        return NULL;
    eb_bus_stats st;
    bool ok;
    t_gate_open(&r->gate);
    T_WAIT_FOR(ok, atomic_load(&r->batch_done));
    FX_CHECK(&r->err, ok, "the batch never returned");
    unsigned acc = atomic_load(&r->accepted);
    FX_CHECK(&r->err, r->hit && atomic_load(&r->batch_rc) == EB_ENOMEM && acc == 64,
             "batch: %s, accepted %u (hit %d)", eb_err_name(atomic_load(&r->batch_rc)), acc,
             r->hit);
    FX_CHECK(&r->err, t_quiesce(r->bus), "the bus did not drain");
    for (uint32_t i = 0; i < 100; i++)
        FX_CHECK(&r->err, atomic_load(&r->seen[i]) == (i < acc ? 1u : 0u),
                 "out %u delivered %u times, %u accepted", i, atomic_load(&r->seen[i]), acc);
    /* Events that left their carrier for the side list were stamped one by
       one: each has its own sequence, after the 4 "in" events, in order,
       and a time of this run. */
    int64_t t1 = t_realtime_ns();
    for (uint32_t i = 0; i < acc; i++)
        FX_CHECK(&r->err,
                 r->seq[i] > 4 && (i == 0 || r->seq[i] > r->seq[i - 1]) && r->ts[i] >= t0 &&
                     r->ts[i] <= t1,
                 "out %u: seq %llu (previous %llu), ts %lld not in [%lld, %lld]", i,
                 (unsigned long long)r->seq[i], (unsigned long long)(i ? r->seq[i - 1] : 0),
                 (long long)r->ts[i], (long long)t0, (long long)t1);
    T_WAIT_STATS(ok, r->bus, st, st.published == 4 + acc);
    FX_CHECK(&r->err, ok, "published %llu, want %u", (unsigned long long)st.published, 4 + acc);
    eb_bus_destroy(r->bus);
    return NULL;
}

/* A handler's eb_publish_batch that the side list took in part (it ran
   out of memory in the middle of a carrier) reported none of it as
   accepted and unbuilt events the bus had already accepted (some twice). */
Test(fault_regress, a_batch_the_side_list_takes_in_part_reports_its_accepted_prefix)
{
    static side_run r;
    memset(&r, 0, sizeof r);
    t_gate_init(&r.gate);
    fault_track_begin();
    cr_assert_eq(fault_run(side_scenario, &r), 0);
    long live = fault_track_end();
    cr_assert(r.err.msg[0] == '\0', "%s", r.err.msg);
    cr_assert_eq(live, 0, "%ld blocks leaked", live);
}

/* A delayed event falls due while the intake is full and no memory at all
   can be had (so not for the side list either): it must wait in the timer
   heap and be delivered once memory returns, never lost, and its waiter
   must get its result. Its retry re-armed the timer with a push that could
   itself fail for lack of memory (when other timers had filled the heap
   meanwhile), losing the event; now the popped entry keeps its slot. The
   code before that fix fails this test (the waiter times out). */
typedef struct due_run {
    eb_bus *bus;
    t_gate gate;
    atomic_uint due_seen;
    fx_err err;
} due_run;

static int due_in(const eb_event *ev, void *ctx)
{
    due_run *r = ctx;
    uint32_t id;
    memcpy(&id, eb_event_payload(ev, NULL), 4);
    if (id == 0)
        t_gate_wait(&r->gate);
    return 0;
}

static int due_out(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add(&((due_run *)ctx)->due_seen, 1);
    return 0;
}

static void *due_scenario(void *arg)
{
    due_run *r = arg;
    r->bus = stalled_bus_new(&r->err, &r->gate, due_in, "due", due_out, r);
    if (r->bus == NULL)
        return NULL;
    eb_bus_stats st;
    bool ok;
    /* The timer heap starts with room for 16: 14 events for much later,
       then (below) the due one make 15. */
    uint32_t v = 7;
    eb_publish_options later = t_bounded_opts();
    later.delay_ns = 600 * T_SEC;
    for (int i = 0; i < 14; i++)
        FX_CHECK(&r->err, eb_publish(r->bus, "later", &v, 4, &later) == EB_OK, "publish later");
    /* No memory from now on (events come from the bus's prefilled cache,
       and the heap has room: publishing needs none). The event falls due
       while the intake is full and finds no memory for the side list; its
       retries go on, one a millisecond, while this thread keeps scheduling
       events for later: one of them takes the slot the due event left in
       the heap, if it left it, and the due event's way back would then
       have to grow the heap, without memory. */
    fault_arm_from(1);
    eb_publish_options o = t_bounded_opts();
    o.delay_ns = 2 * T_MS;
    eb_ticket *t = NULL;
    int rc = eb_publish_async(r->bus, "due", &v, 4, &o, &t);
    FX_CHECK(&r->err, rc == EB_OK, "publish due: %s", eb_err_name(rc));
    later.timeout_ns = 0;
    unsigned landed = 0;
    int64_t end = t_now_ns() + t_wait_budget_ns();
    int64_t hit_at = 0;
    while (t_now_ns() < end && (hit_at == 0 || t_now_ns() < hit_at + 10 * T_MS)) {
        if (eb_publish(r->bus, "later", &v, 4, &later) == EB_OK)
            landed++;
        if (hit_at == 0 && fault_hit())
            hit_at = t_now_ns();
    }
    fault_disarm();
    FX_CHECK(&r->err, hit_at != 0, "no allocation was refused: the test proves nothing");
    (void)eb_bus_stats_get(r->bus, &st);
    FX_CHECK(&r->err, st.scheduled == 15 + landed && atomic_load(&r->due_seen) == 0,
             "scheduled %llu (%u landed), delivered %u: the due event should still wait",
             (unsigned long long)st.scheduled, landed, atomic_load(&r->due_seen));
    t_gate_open(&r->gate);
    if (t != NULL) {
        eb_publish_result res;
        rc = eb_ticket_wait(t, 5 * T_SEC, &res);
        FX_CHECK(&r->err, rc == EB_OK && res.delivered == 1, "the waiter got %s, %u delivered",
                 eb_err_name(rc), res.delivered);
        eb_ticket_release(t);
    }
    T_WAIT_FOR(ok, atomic_load(&r->due_seen) >= 1);
    FX_CHECK(&r->err, ok && atomic_load(&r->due_seen) == 1, "the due event was delivered %u times",
             atomic_load(&r->due_seen));
    eb_bus_destroy(r->bus);
    return NULL;
}

Test(fault_regress, a_delayed_event_due_during_a_spell_without_memory_waits_and_is_delivered)
{
    static due_run r;
    memset(&r, 0, sizeof r);
    t_gate_init(&r.gate);
    fault_track_begin();
    cr_assert_eq(fault_run(due_scenario, &r), 0);
    long live = fault_track_end();
    cr_assert(r.err.msg[0] == '\0', "%s", r.err.msg);
    cr_assert_eq(live, 0, "%ld blocks leaked", live);
}

#include "route.h"

typedef struct route_run {
    bool hit;
    bool has1, has3;
    unsigned n;
} route_run;

static void *route_scenario(void *arg)
{
    route_run *rr = arg;
    static int s1, s2, s3; /* stand-ins for subscriptions */
    eb__route *r = eb__route_new();
    if (r == NULL)
        return NULL;
    eb__route_add(r, "a", 1, &s1);
    eb__route_match(r, "a", 1); /* cached now */
    /* Adding drops the cache; the first allocation on the way is the new
       (empty) map ck_hs_reset makes. */
    fault_arm(1);
    eb__route_add(r, "b", 1, &s2);
    fault_disarm();
    rr->hit = fault_hit();
    eb__route_add(r, "a", 1, &s3);
    eb__match *m = eb__route_match(r, "a", 1);
    for (unsigned i = 0; m != NULL && i < m->n; i++) {
        rr->has1 |= m->subs[i] == &s1;
        rr->has3 |= m->subs[i] == &s3;
    }
    rr->n = m != NULL ? m->n : 0;
    eb__route_free(r);
    return NULL;
}

/* When ck_hs_reset could not allocate the new map, the route cache kept
   its old map with every entry already freed: later matches of a cached
   topic read a freed match set (and missed subscriptions added since),
   and the next drop freed the entries again (found by the durable
   subscribe-with-replay loop under ASan). */
Test(fault_regress, a_route_cache_drop_that_cannot_allocate_keeps_no_freed_entries)
{
    static route_run rr;
    memset(&rr, 0, sizeof rr);
    fault_track_begin();
    cr_assert_eq(fault_run(route_scenario, &rr), 0);
    cr_assert_eq(fault_track_end(), 0);
    cr_assert(rr.hit);
    cr_assert(rr.n == 2 && rr.has1 && rr.has3, "match of a: %u subscriptions", rr.n);
}

/* ---- store bugs whose fixes are pending (fault_common.h) --------------------- */

typedef struct open_run {
    fx_dir d;
    int rc;
    bool hit;
    bool left;
} open_run;

static void *open_scenario(void *arg)
{
    open_run *o = arg;
    fault_arm(1); /* the store object: the first allocation of the open */
    int rc;
    eb_store *s = fx_store_open(o->d.path, &rc);
    fault_disarm();
    o->hit = fault_hit();
    o->rc = rc;
    o->left = fx_exists(o->d.path);
    eb_store_close(s);
    return NULL;
}

/* eb_store_open creates the file, then allocates the store object; when
   that failed it returned EB_ENOMEM and left the empty file behind ("on
   failure the file is left as it was"). */
Test(fault_regress, a_failed_store_open_leaves_no_file_it_created)
{
    if (EB_FAULT_PENDING_OPEN_UNLINK)
        cr_skip_test("pending fix in src/store_sqlite.c (EB_FAULT_PENDING_OPEN_UNLINK)");
    static open_run o;
    memset(&o, 0, sizeof o);
    cr_assert(fx_dir_new(&o.d));
    cr_assert_eq(fault_run(open_scenario, &o), 0);
    bool left = o.left;
    fx_dir_rm(&o.d);
    cr_assert(o.hit);
    cr_assert_eq(o.rc, EB_ENOMEM, "%s", eb_err_name(o.rc));
    cr_assert(!left, "the failed open left the file it created");
}

typedef struct flush_run {
    eb_store *store;
    int rc, rc_after;
    bool hit;
} flush_run;

static void *flush_scenario(void *arg)
{
    flush_run *f = arg;
    fault_arm(1); /* the barrier's job: the flush's only allocation */
    f->rc = eb_store_flush(f->store, t_wait_budget_ns());
    fault_disarm();
    f->hit = fault_hit();
    f->rc_after = eb_store_flush(f->store, t_wait_budget_ns());
    return NULL;
}

/* eb_store_flush without memory for its barrier returns EB_ENOMEM (its
   documented error) and leaves the store as it was: the next flush works. */
Test(fault_regress, a_flush_without_memory_returns_enomem_and_the_store_goes_on)
{
    static flush_run f;
    memset(&f, 0, sizeof f);
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    int rc;
    f.store = fx_store_open(d.path, &rc);
    cr_assert_eq(rc, EB_OK, "%s", eb_err_name(rc));
    cr_assert_eq(fault_run(flush_scenario, &f), 0);
    eb_store_close(f.store);
    fx_dir_rm(&d);
    cr_assert(f.hit);
    cr_assert_eq(f.rc, EB_ENOMEM, "%s", eb_err_name(f.rc));
    cr_assert_eq(f.rc_after, EB_OK, "%s", eb_err_name(f.rc_after));
}

typedef struct scope_run {
    eb_scope *scope;
    int rc;
    size_t published;
    bool hit;
} scope_run;

static void *scope_commit_scenario(void *arg)
{
    scope_run *r = arg;
    fault_arm(1); /* the commit's message array: its first allocation */
    r->rc = eb_scope_commit(r->scope, NULL, &r->published);
    fault_disarm();
    r->hit = fault_hit();
    return NULL;
}

/* eb_scope_commit without memory for its messages returns EB_ENOMEM, says
   none was published, and leaves the scope open: a later commit publishes
   all of it. */
Test(fault_regress, a_scope_commit_without_memory_publishes_nothing_and_can_be_retried)
{
    eb_bus *bus = t_bus_new(2);
    t_counter c;
    t_counter_init(&c);
    t_sub(bus, "uow", t_count_handler, &c, EB_DELIVERY_SERIAL, 0);
    static scope_run r;
    memset(&r, 0, sizeof r);
    r.published = 99;
    cr_assert_eq(eb_scope_begin(bus, &r.scope), EB_OK);
    for (uint32_t i = 0; i < 5; i++)
        cr_assert_eq(eb_scope_publish(r.scope, "uow", &i, sizeof i, NULL, 0), EB_OK);
    cr_assert_eq(fault_run(scope_commit_scenario, &r), 0);
    cr_assert(r.hit);
    cr_assert_eq(r.rc, EB_ENOMEM, "%s", eb_err_name(r.rc));
    cr_assert_eq(r.published, 0);
    size_t published = 0;
    cr_assert_eq(eb_scope_commit(r.scope, NULL, &published), EB_OK);
    cr_assert_eq(published, 5);
    cr_assert(t_wait_ge(&c.calls, 5));
    eb_bus_destroy(bus);
    cr_assert_eq(atomic_load(&c.calls), 5);
}

/* Every realloc of a durable subscribe failing in turn (the queue growth
   of its start job among them): whenever eb_subscribe returns EB_OK,
   durable events are delivered to the subscription. */
Test(fault_regress, a_durable_subscription_that_returned_ok_goes_live)
{
    if (EB_FAULT_PENDING_DSUB_START)
        cr_skip_test("pending fix in src/store_sqlite.c (EB_FAULT_PENDING_DSUB_START)");
    fx_loop_kind(&op_subscribe_durable, FAULT_REALLOC, true);
}

/* Every calloc of a durable subscribe with events to replay failing in
   turn (the writer's replay cursor among them): the logged events reach
   the subscription, now or on its next subscribe — never lost. */
Test(fault_regress, a_replay_that_could_not_start_is_not_skipped_for_good)
{
    if (EB_FAULT_PENDING_REPLAY_FREEZE || EB_FAULT_PENDING_DSUB_START)
        cr_skip_test("pending fix in src/store_sqlite.c (EB_FAULT_PENDING_REPLAY_FREEZE)");
    fx_loop_kind(&op_subscribe_durable_with_a_replay, FAULT_CALLOC, true);
}
