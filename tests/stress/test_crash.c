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

Test(crash, acknowledged_durable_events_survive_sigkill, .timeout = 600)
{
    const char *sc = getenv("EB_STRESS_SCALE");
    int scale = sc ? atoi(sc) : 1;
    int rounds = 12 * (scale > 0 ? scale : 1) / 4;
    if (rounds < 6)
        rounds = 6;
    if (rounds > 64)
        rounds = 64; /* 64 x 16384 values fit MAXV */
    char dir[] = "/tmp/eb_crash_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/c.db", dir);
    srand((unsigned)getpid());
    unsigned total_acked = 0, total_dups_child = 0;

    for (int round = 0; round < rounds; round++) {
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        char basestr[16];
        snprintf(basestr, sizeof basestr, "%u", (unsigned)round * 16384u);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            dup2(fds[1], 1);
            close(fds[0]);
            close(fds[1]);
            char *argv[] = {"store_child", "crash", path, basestr, NULL};
            execv(EB_STORE_CHILD, argv);
            _exit(127);
        }
        close(fds[1]);
        /* Let it run 20-120 ms, then kill it mid-flight. */
        t_sleep_ms(20 + rand() % 100);
        kill(pid, SIGKILL);
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFSIGNALED(st), "the child exited by itself: status %d", st);
        rec r;
        unsigned acks = 0;
        while (read(fds[0], &r, sizeof r) == sizeof r) {
            cr_assert_lt(r.v, MAXV);
            if (r.kind == REC_ACK) {
                acked[r.v] = 1;
                acks++;
            } else {
                if (child_seen[r.v])
                    total_dups_child++;
                child_seen[r.v] = 1;
            }
        }
        close(fds[0]);
        total_acked += acks;

        cr_assert(integrity_ok(path), "round %d: integrity_check failed", round);
        eb_store *s = NULL;
        int rc = eb_store_open(path, NULL, &s);
        cr_assert_eq(rc, EB_OK, "round %d: reopen: %s", round, eb_err_name(rc));
        memset(logged, 0, sizeof logged);
        unsigned twice = 0;
        cr_assert_eq(eb_store_events(s, NULL, log_scan, &twice), EB_OK);
        cr_assert_eq(twice, 0, "round %d: %u events logged twice", round, twice);
        for (uint32_t v = 0; v < MAXV; v++)
            cr_assert(!acked[v] || logged[v], "round %d: acknowledged event %u lost", round, v);

        /* Resume the child's subscription and run our idempotent one. */
        eb_bus_config cfg;
        eb_bus_config_init(&cfg);
        cfg.workers = 2;
        cfg.store = s;
        eb_bus *bus = NULL;
        cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
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
