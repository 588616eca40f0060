/*
 * Crash test of the durable store: a child process (store_child crash, a
 * separate program: see ../store_child.c) publishes durable events
 * from two threads and tells the parent (through a pipe) about each publish
 * that returned EB_OK and each delivery its durable subscriber handled; the
 * parent kills it with SIGKILL at a random moment, many times. After every
 * kill the parent reopens the store and checks:
 *  - PRAGMA integrity_check is ok;
 *  - every acknowledged event is in the log exactly once (no event twice);
 *  - the child's durable subscription, resumed in the parent, receives
 *    every acknowledged event it had not finished before the kill (at least
 *    once overall: duplicates only for events the child handled but had
 *    not checkpointed);
 *  - the parent's own idempotent durable subscription receives every
 *    logged event exactly once over all rounds.
 * Rounds: 12 x EB_STRESS_SCALE / 4 (at least 6).
 */
#include "../common.h"

#include <eventbus/store.h>

#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXV (1u << 20)

enum { REC_ACK = 1, REC_HANDLED = 2 };
typedef struct rec {
    uint8_t kind;
    uint32_t v;
} __attribute__((packed)) rec;

/* What the parent knows over all rounds. */
static uint8_t acked[MAXV];
static uint8_t child_seen[MAXV];
static uint8_t logged[MAXV];
static uint8_t idem_seen[MAXV];

typedef struct parent_rec {
    pthread_mutex_t lock;
    unsigned got, dups;
    uint8_t *seen;
} parent_rec;

static int parent_handler(const eb_event *ev, void *ctx)
{
    parent_rec *p = ctx;
    const uint32_t *v = eb_event_payload(ev, NULL);
    pthread_mutex_lock(&p->lock);
    if (*v < MAXV) {
        if (p->seen[*v])
            p->dups++;
        p->seen[*v] = 1;
    }
    p->got++;
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static int log_scan(const eb_stored_event *ev, void *ctx)
{
    unsigned *twice = ctx;
    uint32_t v;
    cr_assert_eq(ev->payload_len, 4);
    memcpy(&v, ev->payload, 4);
    cr_assert_lt(v, MAXV);
    if (logged[v]++)
        (*twice)++;
    return 0;
}

static bool integrity_ok(const char *path)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q;
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
    bool ok =
        sqlite3_step(q) == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(q, 0), "ok") == 0;
    sqlite3_finalize(q);
    sqlite3_close(db);
    return ok;
}

static uint64_t checkpoint_of(eb_store *s, const char *name);

static int stress_rounds(void)
{
    const char *sc = getenv("EB_STRESS_SCALE");
    int scale = sc ? atoi(sc) : 1;
    int rounds = 12 * (scale > 0 ? scale : 1) / 4;
    if (rounds < 6)
        rounds = 6;
    return rounds > 64 ? 64 : rounds; /* 64 x 16384 values fit MAXV */
}

/* Runs "store_child MODE PATH BASE" until its first record and then 20-120
   ms more (so that a slow start, e.g. under TSan, still leaves a round with
   work in flight), kills it with SIGKILL and passes every record it wrote
   to fn. */
static void child_round(const char *mode, const char *path, unsigned base,
                        void (*fn)(const rec *r, void *ctx), void *ctx)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    char basestr[16];
    snprintf(basestr, sizeof basestr, "%u", base);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        char *argv[] = {"store_child", (char *)mode, (char *)path, basestr, NULL};
        execv(EB_STORE_CHILD, argv);
        _exit(127);
    }
    close(fds[1]);
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    int ready = poll(&pfd, 1, (int)(t_wait_budget_ns() / T_MS));
    t_sleep_ms(20 + rand() % 100);
    kill(pid, SIGKILL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert_eq(ready, 1, "the child wrote nothing within the wait budget");
    cr_assert(WIFSIGNALED(st), "the child exited by itself: status %d", st);
    rec r;
    while (read(fds[0], &r, sizeof r) == sizeof r) {
        cr_assert_lt(r.v, MAXV);
        fn(&r, ctx);
    }
    close(fds[0]);
}

/* After a kill: PRAGMA integrity_check is ok and the store reopens. */
static eb_store *reopen_checked(const char *path, int round)
{
    cr_assert(integrity_ok(path), "round %d: integrity_check failed", round);
    eb_store *s = NULL;
    int rc = eb_store_open(path, NULL, &s);
    cr_assert_eq(rc, EB_OK, "round %d: reopen: %s", round, eb_err_name(rc));
    return s;
}

/* A bus of 2 workers on s. */
static eb_bus *bus_on(eb_store *s)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.store = s;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    return bus;
}

typedef struct round_tally {
    uint8_t *acked, *seen;
    unsigned acks, dups;
} round_tally;

static void tally(const rec *r, void *ctx)
{
    round_tally *t = ctx;
    if (r->kind == REC_ACK) {
        t->acked[r->v] = 1;
        t->acks++;
    } else {
        if (t->seen[r->v])
            t->dups++;
        t->seen[r->v] = 1;
    }
}

Test(crash, acknowledged_durable_events_survive_sigkill, .timeout = 600)
{
    int rounds = stress_rounds();
    char dir[] = "/tmp/eb_crash_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/c.db", dir);
    srand((unsigned)getpid());
    unsigned total_acked = 0, total_dups_child = 0;

    for (int round = 0; round < rounds; round++) {
        round_tally t = {.acked = acked, .seen = child_seen};
        child_round("crash", path, (unsigned)round * 16384u, tally, &t);
        total_dups_child += t.dups;
        total_acked += t.acks;

        eb_store *s = reopen_checked(path, round);
        memset(logged, 0, sizeof logged);
        unsigned twice = 0;
        cr_assert_eq(eb_store_events(s, NULL, log_scan, &twice), EB_OK);
        cr_assert_eq(twice, 0, "round %d: %u events logged twice", round, twice);
        for (uint32_t v = 0; v < MAXV; v++)
            cr_assert(!acked[v] || logged[v], "round %d: acknowledged event %u lost", round, v);

        /* Resume the child's subscription and run our idempotent one. */
        eb_bus *bus = bus_on(s);
        parent_rec resumed = {.seen = child_seen}, idem = {.seen = idem_seen};
        pthread_mutex_init(&resumed.lock, NULL);
        pthread_mutex_init(&idem.lock, NULL);
        eb_subscribe_options so;
        eb_subscribe_options_init(&so);
        so.durable = true;
        so.name = "child";
        cr_assert_eq(eb_subscribe(bus, "crash.*", parent_handler, &resumed, &so, NULL), EB_OK);
        so.name = "parent-idempotent";
        so.idempotent = true;
        so.delivery = EB_DELIVERY_CONCURRENT;
        cr_assert_eq(eb_subscribe(bus, "crash.*", parent_handler, &idem, &so, NULL), EB_OK);
        eb_store_stats ss;
        cr_assert_eq(eb_store_stats_get(s, &ss), EB_OK);
        bool ok;
        T_WAIT_FOR(ok, checkpoint_of(s, "child") == ss.last_seq &&
                           checkpoint_of(s, "parent-idempotent") == ss.last_seq);
        cr_assert(ok, "round %d: subscriptions did not catch up to %llu", round,
                  (unsigned long long)ss.last_seq);
        eb_bus_destroy(bus);
        eb_store_close(s);
        cr_assert_eq(idem.dups, 0, "round %d: the idempotent subscription saw %u twice", round,
                     idem.dups);
        total_dups_child += resumed.dups;
    }
    /* Over all rounds: every logged event reached both subscriptions. */
    unsigned n_logged = 0;
    for (uint32_t v = 0; v < MAXV; v++) {
        if (!logged[v])
            continue;
        n_logged++;
        cr_assert(child_seen[v], "event %u never reached the resumed subscription", v);
        cr_assert(idem_seen[v], "event %u never reached the idempotent subscription", v);
    }
    cr_assert_gt(total_acked, 0);
    cr_log_info("crash: %d kills, %u acknowledged, %u logged, %u redeliveries to the plain "
                "subscription (at least once), 0 lost, 0 duplicated in the log",
                rounds, total_acked, n_logged, total_dups_child);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static int find_ck(const eb_store_subscription_info *i, void *ctx)
{
    struct {
        const char *name;
        uint64_t ck;
    } *f = ctx;
    if (strcmp(i->name, f->name) == 0)
        f->ck = i->checkpoint;
    return 0;
}

static uint64_t checkpoint_of(eb_store *s, const char *name)
{
    struct {
        const char *name;
        uint64_t ck;
    } f = {name, 0};
    eb_store_subscriptions(s, find_ck, &f);
    return f.ck;
}

/*
 * Saga commands across crashes: the child (store_child saga) runs a saga on
 * the SQLite saga store whose one transition per instance sends cmd.ship,
 * published durably (publish_flags), to the durable subscription "ship".
 * A kill lands anywhere, also between a transition's save and the
 * publishing of its command. After every kill the parent checks that every
 * acknowledged transition is saved, then registers the saga again (its
 * recovery sends what was saved but unsent) and resumes "ship": every saved
 * instance's command reaches "ship" (in the child or here; at least once)
 * and nothing stays pending.
 */
static uint8_t saga_acked[MAXV];
static uint8_t saga_saved[MAXV];
static uint8_t ship_seen[MAXV];

static int saga_scan(const eb_store_saga_info *i, void *ctx)
{
    unsigned *pending = ctx;
    uint32_t v;
    cr_assert_eq(i->key_len, 4);
    memcpy(&v, i->key, 4);
    cr_assert_lt(v, MAXV);
    saga_saved[v] = 1;
    if (i->commands_pending)
        (*pending)++;
    return 0;
}

static int no_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)sc, (void)ev, (void)state, (void)ctx;
    return EB_OK; /* the parent only recovers; no order event comes */
}

Test(crash, saga_commands_survive_sigkill_between_save_and_dispatch, .timeout = 600)
{
    int rounds = stress_rounds();
    char dir[] = "/tmp/eb_sagacrash_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/s.db", dir);
    srand((unsigned)getpid() ^ 0x5a5a);
    unsigned total_acked = 0, total_dups = 0, total_pending = 0;
    uint64_t total_recovered = 0;
    static const char *const topics[] = {"order.placed"};
    eb_saga_def def = {.name = "order",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .state_size = 4,
                       .transition = no_transition};

    for (int round = 0; round < rounds; round++) {
        round_tally t = {.acked = saga_acked, .seen = ship_seen};
        child_round("saga", path, (unsigned)round * 16384u, tally, &t);
        total_dups += t.dups;
        total_acked += t.acks;

        eb_store *s = reopen_checked(path, round);
        unsigned pending = 0;
        cr_assert_eq(eb_store_sagas(s, "order", 0, saga_scan, &pending), EB_OK);
        total_pending += pending;
        for (uint32_t v = 0; v < MAXV; v++)
            cr_assert(!saga_acked[v] || saga_saved[v],
                      "round %d: acknowledged transition %u not saved", round, v);

        eb_bus *bus = bus_on(s);
        parent_rec ship = {.seen = ship_seen};
        pthread_mutex_init(&ship.lock, NULL);
        eb_subscribe_options so;
        eb_subscribe_options_init(&so);
        so.durable = true;
        so.name = "ship";
        cr_assert_eq(eb_subscribe(bus, "cmd.ship", parent_handler, &ship, &so, NULL), EB_OK);
        eb_saga_store *ss = NULL;
        cr_assert_eq(eb_saga_sqlite_store_create(s, &ss), EB_OK);
        eb_saga_options sopt;
        eb_saga_options_init(&sopt);
        sopt.store = ss;
        sopt.on_complete = EB_SAGA_ARCHIVE;
        sopt.publish_flags = EB_PUBLISH_DURABLE;
        eb_saga *g = NULL;
        int rc = eb_saga_register(bus, &def, &sopt, &g);
        cr_assert_eq(rc, EB_OK, "round %d: register: %s", round, eb_err_name(rc));
        eb_saga_stats gs;
        cr_assert_eq(eb_saga_stats_get(g, &gs), EB_OK);
        cr_assert_eq(gs.redispatched, pending, "round %d: %u pending, %llu recovered", round,
                     pending, (unsigned long long)gs.redispatched);
        total_recovered += gs.redispatched;
        unsigned still = 0;
        cr_assert_eq(eb_store_sagas(s, "order", 0, saga_scan, &still), EB_OK);
        cr_assert_eq(still, 0, "round %d: %u outboxes still pending after recovery", round, still);
        eb_store_stats st;
        cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
        bool ok;
        T_WAIT_FOR(ok, checkpoint_of(s, "ship") == st.last_seq);
        cr_assert(ok, "round %d: ship did not catch up to %llu", round,
                  (unsigned long long)st.last_seq);
        cr_assert_eq(eb_saga_unregister(g), EB_OK);
        eb_bus_destroy(bus);
        eb_saga_store_destroy(ss);
        eb_store_close(s);
        total_dups += ship.dups;
        for (uint32_t v = 0; v < MAXV; v++)
            cr_assert(!saga_saved[v] || ship_seen[v],
                      "round %d: instance %u was saved but its command never arrived", round, v);
    }
    unsigned n_saved = 0;
    for (uint32_t v = 0; v < MAXV; v++)
        n_saved += saga_saved[v];
    cr_assert_gt(total_acked, 0);
    cr_log_info("saga crash: %d kills, %u transitions acknowledged, %u saved, %u outboxes "
                "pending after a kill (%llu recovered at registration), %u repeated commands "
                "(at least once), 0 lost",
                rounds, total_acked, n_saved, total_pending, (unsigned long long)total_recovered,
                total_dups);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
