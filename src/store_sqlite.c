/*
 * store_sqlite — the durable store: one SQLite file in WAL mode.
 *
 * Threads and connections
 *  - One writer thread per store owns the write connection (`wdb`). Every
 *    write — durable events, scheduled events, dead letters, checkpoints,
 *    processed ids, outbox and saga operations — is an item on the store's
 *    queue. The writer takes everything queued at once and executes it in
 *    one BEGIN IMMEDIATE transaction (group commit: one fsync for all),
 *    then completes the items in queue order: committed events go on its
 *    injection FIFO, waiting callers are woken with their results.
 *  - Reads (queries, saga loads, idempotency checks) use a second
 *    connection (`rdb`) under `rlock`. WAL lets it read while the writer
 *    writes. Neither connection is ever used by two threads at once, so
 *    both are opened SQLITE_OPEN_NOMUTEX.
 *  - The FIFO hands committed events to the bus's intake without ever
 *    blocking: when the intake is full the writer keeps committing and
 *    retries the intake a millisecond later. So a handler that publishes
 *    durably and waits for its commit never waits on its own lane.
 *    Publishers outside handlers wait for room when queue + FIFO hold
 *    max_pending items (bounded memory); handlers do not (no deadlock).
 *
 * Durable subscriptions: a subscription starts with live_from = "never":
 * the dispatcher skips live durable events for it. Its start item, when
 * the writer completes it, sets live_from just past the last sequence the
 * writer assigned (H) and puts a replay cursor on the FIFO behind every
 * event at or below H: the cursor reads the log after the checkpoint up to
 * H, matches the pattern and injects copies addressed to that subscription
 * only; events above H follow it live. So the subscription sees the log in
 * order, each event once. Rows another process appends reach it the same
 * way: the writer, when it finds the log above its last sequence (at each
 * transaction's start, and once a second while idle: log_refresh), puts a
 * cursor over them on the FIFO for every started subscription. The
 * dispatcher tracks the sequences it pushes to the subscription
 * (ascending), runners mark them done, and the checkpoint is the low-water
 * mark. The writer snapshots checkpoints before it takes a batch, so the
 * dead letters and processed ids a runner queued before it marked an event
 * done are always in the same or an earlier transaction; when the batch is
 * only a chunk of the queue (lazy work, LAZY_BATCH_MAX), the snapshot waits
 * for the chunk that takes the last item queued before it (ck_wait).
 *
 * Lock order: store lock -> dsub lock (the writer snapshots checkpoints);
 * rlock is a leaf. No bus lock is taken under them; bus calls made by the
 * writer (inject, event builders) take only bus leaf locks.
 */
#include "store_sqlite.h"

#include <eventbus/eventbus.h>

#include "bus.h"
#include "event.h"
#include "lane.h"
#include "route.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef EB_WITH_SQLITE

#include <pthread.h>
#include <sqlite3.h>

#define APP_ID 0x45427573 /* "EBus" in PRAGMA application_id */
#define DEFAULT_PENDING 65536
#define REPLAY_CHUNK 256
#define FIRE_CHUNK 1024
#define CKPT_DELAY_NS 20000000      /* checkpoints move to the file within 20 ms */
#define SCHED_RECHECK_NS 1000000000 /* other processes may schedule too */
#define INTAKE_RETRY_NS 1000000
#define FIRE_RETRY_NS 10000000         /* scheduled events after a failed allocation */
#define FIRE_BACKOFF_MAX_NS 1000000000 /* ... after failed transactions, at most */
/* How long the writer gathers the last round's waiters (see gather_txn),
   its own statements included. With 8 waiting publishers on 2 CPUs
   (alternating rounds): 100 us against 50 us gave 7.9 events per commit
   instead of 7.2, x1.06 events/s (4/6) and a 20% lower p99 (6/6), the p50
   unchanged. (Before the writer inserted while gathering, 50 us had beaten
   150 us: the window then ran after nobody's statements.) */
#define GATHER_NS 100000
#define GATHER_TAKE_MAX                                                                            \
    1024 /* a longer queue is committed without gathering, and gathering stops there */
#define DEFAULT_LAZY_SHARE 5
#define YIELD_MAX_NS 100000000 /* the longest pause of lazy work (lazy_share) */
#define MEMORY_FLOWING 10000   /* memory-only events/s that make lazy work pause */
#define LAZY_BATCH_MAX 2048    /* items per transaction of lazy-only work */
#define EB__O_MAX 24

/* Schema version 1. Events are keyed by their log sequence; outbox rows
   that are not READY stay out of the claim path through partial indexes. */
static const char SCHEMA_V1[] =
    "CREATE TABLE eb_events(seq INTEGER PRIMARY KEY, id BLOB NOT NULL, ts INTEGER NOT NULL,"
    " topic TEXT NOT NULL, key BLOB, payload BLOB NOT NULL, correlation BLOB, causation BLOB);"
    "CREATE TABLE eb_subscriptions(name TEXT PRIMARY KEY, pattern TEXT NOT NULL,"
    " checkpoint INTEGER NOT NULL DEFAULT 0, updated INTEGER NOT NULL);"
    "CREATE TABLE eb_processed(subscription TEXT NOT NULL, event_id BLOB NOT NULL,"
    " seq INTEGER NOT NULL, PRIMARY KEY(subscription, event_id)) WITHOUT ROWID;"
    "CREATE TABLE eb_outbox(id INTEGER PRIMARY KEY, topic TEXT NOT NULL, key BLOB,"
    " payload BLOB NOT NULL, status INTEGER NOT NULL DEFAULT 0, owner BLOB,"
    " lease_until INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',"
    " created INTEGER NOT NULL);"
    "CREATE INDEX eb_outbox_ready ON eb_outbox(next_attempt, id) WHERE status = 0;"
    "CREATE INDEX eb_outbox_leased ON eb_outbox(lease_until) WHERE status = 1;"
    "CREATE TABLE eb_scheduled(id INTEGER PRIMARY KEY, due INTEGER NOT NULL,"
    " topic TEXT NOT NULL, key BLOB, payload BLOB NOT NULL, correlation BLOB,"
    " causation BLOB, created INTEGER NOT NULL);"
    "CREATE INDEX eb_scheduled_due ON eb_scheduled(due);"
    "CREATE TABLE eb_deadletters(id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,"
    " event_id BLOB NOT NULL, subscription TEXT NOT NULL, topic TEXT NOT NULL, key BLOB,"
    " payload BLOB NOT NULL, error INTEGER NOT NULL, attempts INTEGER NOT NULL,"
    " failed INTEGER NOT NULL);"
    "CREATE TABLE eb_sagas(saga TEXT NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL,"
    " completed INTEGER NOT NULL, state BLOB NOT NULL, event_id BLOB NOT NULL, outbox BLOB,"
    " updated INTEGER NOT NULL, PRIMARY KEY(saga, key)) WITHOUT ROWID;";

/* Version 2: a saga record keeps the id of the event that created its
   instance (eb_saga_record.start_id); NULL in the rows of version 1. */
static const char SCHEMA_V2[] = "ALTER TABLE eb_sagas ADD COLUMN start_id BLOB;";

/* Migrations: MIGRATIONS[v] takes a file from version v to v + 1. */
static const char *const MIGRATIONS[EB_STORE_SCHEMA_VERSION] = {SCHEMA_V1, SCHEMA_V2};

/* The writer's statements, prepared once. */
enum {
    W_BEGIN,
    W_COMMIT,
    W_ROLLBACK,
    W_MAXSEQ,
    W_EVENT,
    W_SCHED_ADD,
    W_SCHED_DUE,
    W_SCHED_DEL,
    W_SCHED_NEXT,
    W_DEADLETTER,
    W_CKPT,
    W_PROCESSED,
    W_PRUNE,
    W_SUB_UPSERT,
    W_SUB_GET,
    W_REPLAY,
    W_COUNT
};

static const char *const WSQL[W_COUNT] = {
    [W_BEGIN] = "BEGIN IMMEDIATE",
    [W_COMMIT] = "COMMIT",
    [W_ROLLBACK] = "ROLLBACK",
    [W_MAXSEQ] = "SELECT coalesce(max(seq), 0) FROM eb_events",
    [W_EVENT] = "INSERT INTO eb_events(seq, id, ts, topic, key, payload, correlation, causation)"
                " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_SCHED_ADD] = "INSERT INTO eb_scheduled(due, topic, key, payload, correlation, causation,"
                    " created) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [W_SCHED_DUE] = "SELECT id, topic, key, payload, correlation, causation FROM eb_scheduled"
                    " WHERE due <= ?1 ORDER BY due, id LIMIT ?2",
    [W_SCHED_DEL] = "DELETE FROM eb_scheduled WHERE id = ?1",
    [W_SCHED_NEXT] = "SELECT min(due) FROM eb_scheduled",
    [W_DEADLETTER] = "INSERT INTO eb_deadletters(seq, event_id, subscription, topic, key, payload,"
                     " error, attempts, failed) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [W_CKPT] = "UPDATE eb_subscriptions SET checkpoint = ?2, updated = ?3"
               " WHERE name = ?1 AND checkpoint < ?2",
    [W_PROCESSED] = "INSERT OR IGNORE INTO eb_processed(subscription, event_id, seq)"
                    " VALUES(?1, ?2, ?3)",
    [W_PRUNE] = "DELETE FROM eb_processed WHERE subscription = ?1 AND seq <= ?2",
    [W_SUB_UPSERT] = "INSERT INTO eb_subscriptions(name, pattern, checkpoint, updated)"
                     " VALUES(?1, ?2, 0, ?3) ON CONFLICT(name) DO UPDATE SET pattern = ?2",
    [W_SUB_GET] = "SELECT checkpoint FROM eb_subscriptions WHERE name = ?1",
    [W_REPLAY] = "SELECT seq, id, ts, topic, key, payload, correlation, causation FROM eb_events"
                 " WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
};

/* The reader's statements, prepared on first use and kept (under rlock). */
enum {
    R_PROCESSED,
    R_EVENTS,
    R_SUBS,
    R_MAXSEQ,
    R_OUTBOX,
    R_DEADLETTERS,
    R_SAGAS,
    R_SAGA_LOAD,
    R_SAGA_PENDING,
    R_COUNTS,
    R_COUNT
};

static const char *const RSQL[R_COUNT] = {
    [R_PROCESSED] = "SELECT 1 FROM eb_processed WHERE subscription = ?1 AND event_id = ?2",
    [R_EVENTS] = "SELECT seq, id, ts, topic, key, payload, correlation, causation FROM eb_events"
                 " WHERE seq > ?1 AND ts >= ?2 AND ts < ?3 ORDER BY seq LIMIT ?4",
    [R_SUBS] = "SELECT name, pattern, checkpoint, updated FROM eb_subscriptions ORDER BY name",
    /* Two lookups at the ends of the primary key, not count(*) (a scan of
       the whole log). Each in its own subquery: SQLite looks up the end of
       an index only for a lone min() or max(); both in one SELECT scan the
       table. The event count is the range: the library writes the log
       append-only and without gaps (the writer numbers each event
       max(seq) + 1 inside the transaction that inserts it, and a failed
       transaction takes its numbers back). */
    [R_MAXSEQ] = "SELECT coalesce((SELECT max(seq) FROM eb_events), 0),"
                 " coalesce((SELECT min(seq) FROM eb_events), 0)",
    [R_OUTBOX] = "SELECT id, topic, key, payload, status, attempts, created, next_attempt,"
                 " lease_until, last_error FROM eb_outbox WHERE ?1 < 0 OR status = ?1"
                 " ORDER BY id LIMIT ?2",
    [R_DEADLETTERS] = "SELECT id, seq, event_id, subscription, topic, key, payload, error,"
                      " attempts, failed FROM eb_deadletters ORDER BY id LIMIT ?1",
    [R_SAGAS] = "SELECT saga, key, version, completed, length(state), outbox IS NOT NULL,"
                " updated FROM eb_sagas WHERE ?1 IS NULL OR saga = ?1 ORDER BY saga, key LIMIT ?2",
    [R_SAGA_LOAD] = "SELECT version, completed, state, event_id, outbox, start_id FROM eb_sagas"
                    " WHERE saga = ?1 AND key = ?2",
    [R_SAGA_PENDING] = "SELECT key, version, completed, outbox FROM eb_sagas"
                       " WHERE saga = ?1 AND outbox IS NOT NULL ORDER BY key",
    [R_COUNTS] = "SELECT (SELECT count(*) FROM eb_subscriptions),"
                 " (SELECT count(*) FROM eb_outbox WHERE status = 0),"
                 " (SELECT count(*) FROM eb_outbox WHERE status = 1),"
                 " (SELECT count(*) FROM eb_outbox WHERE status = 2),"
                 " (SELECT count(*) FROM eb_outbox WHERE status = 3),"
                 " (SELECT count(*) FROM eb_scheduled), (SELECT count(*) FROM eb_deadletters),"
                 " (SELECT count(*) FROM eb_sagas),"
                 " (SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size())",
};

/* ---- items ------------------------------------------------------------- */

typedef struct job job;
struct job {
    /* In the writer's transaction: sets j->rc (the caller's result) and
       returns SQLITE_OK, or the SQLite error that aborts the transaction. */
    int (*run)(eb_store *s, job *j);
    /* After the transaction ended (rc final), in queue order; may free j
       unless a caller waits. Optional. */
    void (*after)(eb_store *s, job *j);
    int rc;
    bool waited;      /* a caller sleeps on done (the job is on its stack) */
    atomic_bool done; /* set under the store lock (release), after rc */
    bool abandoned;   /* its waiter timed out: the writer frees it; under
                         the store lock */
};

enum { IT_EVENT, IT_EVENT_OWNED, IT_JOB };
typedef struct item {
    void *p;
    int kind;
} item;

typedef struct cursor cursor;
enum { F_EVENT, F_CURSOR };
typedef struct fentry {
    void *p;
    int kind;
} fentry;

struct eb__dsub {
    eb_store *store;
    char *name;
    char *pattern;
    size_t plen;
    bool idempotent;
    struct eb_subscription *sub;
    /* Live durable events below this go through the replay instead.
       UINT64_MAX until the start item completed. Written by the writer. */
    _Atomic uint64_t live_from;
    /* Tracker: sequences pushed to the subscription, ascending, with a done
       bit in bit 0 (seq << 1 | done); a ring. Protected by lock. */
    pthread_mutex_t lock;
    uint64_t *trk;
    size_t trk_head, trk_n, trk_cap;
    uint64_t checkpoint;   /* protected by lock */
    bool dirty;            /* checkpoint moved since the writer last took it */
    bool frozen;           /* a sequence went untracked (no memory); ditto */
    uint64_t prune_at;     /* writer only: checkpoint of the last prune */
    struct eb__dsub *next; /* protected by the store lock */
};

struct cursor {
    eb__dsub *d; /* NULL once the subscription stopped */
    uint64_t next, upto;
    eb_event *buf[REPLAY_CHUNK];
    size_t bi, bn;
    bool stalled; /* the last fill made no progress (no memory, a failing
                     read): the writer retries later instead of at once */
    bool failed;  /* a read failed (logged once per cursor) */
};

struct eb_store {
    eb_store_options opts;
    char *path;
    sqlite3 *wdb, *rdb;
    sqlite3_stmt *w[W_COUNT];
    sqlite3_stmt *o[EB__O_MAX]; /* outbox, dead letter and saga writes */
    pthread_mutex_t rlock;      /* rdb and r[] */
    sqlite3_stmt *r[R_COUNT];
    uint8_t owner[16]; /* this handle's outbox owner token */
    uint64_t nonce;

    pthread_mutex_t lock;
    pthread_cond_t wake;    /* the writer: work queued */
    eb__ec done_ec;         /* waiters: bumped after completions */
    pthread_cond_t space;   /* publishers: backlog went down */
    item *q;                /* protected by lock; queued: q[qh, qn) */
    size_t qh, qn, qcap;    /* protected by lock; qh = qn = 0 when empty */
    bool stop;              /* protected by lock */
    bool ckpt_dirty;        /* some dsub checkpoint moved; protected by lock */
    bool ckpt_now;          /* eb_store_flush wants them in its transaction;
                               protected by lock */
    bool gathering;         /* the writer waits for more waiters; ditto */
    size_t qwaited;         /* waiting callers' items in the queue; ditto */
    size_t gather_want;     /* the writer gathers until qwaited reaches this */
    bool yielding;          /* lazy work pauses (lazy_share); protected by lock */
    uint64_t queued_events; /* durable events queued so far; ditto */
    eb__dsub *dsubs;        /* protected by lock */
    eb_bus *bus;            /* protected by lock; read freely by the writer */
    pthread_t writer;
    bool has_writer;

    /* Writer only. */
    uint64_t last_seq;
    int64_t next_due;      /* Unix ns of the earliest scheduled event; INT64_MAX none */
    int64_t fire_retry_at; /* monotonic: no firing before (out of memory, or
                              a transaction that fired failed) */
    int64_t fire_backoff;  /* after failed firing transactions: 10 ms, doubling
                              up to 1 s; 0 after one that committed */
    int64_t sched_check;
    bool detaching;
    fentry *fifo;
    size_t f_head, f_n, f_cap;
    atomic_size_t fifo_len; /* f_n, for the room check of publishers */
    item *spare;            /* the other queue array (swapped under lock) */
    size_t spare_cap;
    int64_t ckpt_at;
    /* Checkpoints snapshotted in a round that took only a chunk of the
       queue: written with the chunk that takes the last item queued before
       the snapshot (ck_wait_items more of them), since the dead letters and
       processed ids behind a checkpoint's move must not be committed after
       it. No new snapshot is taken meanwhile. */
    struct ckpt_snap *ck_wait;
    size_t nck_wait, ck_wait_items;
    /* Lazy work's pauses (see yield_next): the bus's accepted count and our
       queued count when last sampled, and when; the end of the pause. */
    uint64_t mem_acc, mem_queued;
    int64_t mem_at, yield_until;
    bool mem_flowing;

    /* Counters (relaxed atomics; stats only). */
    _Atomic uint64_t commits, appended, write_errors, lazy_pauses;
    atomic_bool failed_since_open;

    pthread_mutex_t errlock;
    int err_code;
    char err_msg[256];
};

/* ---- errors and logging ------------------------------------------------ */

static void slog(eb_store *s, eb_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void slog(eb_store *s, eb_log_level lvl, const char *fmt, ...)
{
    if (s->opts.log == NULL || lvl < s->opts.log_level)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    s->opts.log(lvl, buf, s->opts.log_ctx);
}

static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return EB_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return EB_EBUSY;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return EB_ECORRUPT;
    case SQLITE_NOMEM:
        return EB_ENOMEM;
    default:
        return EB_EIO;
    }
}

/* Records (eb_store_last_error) and logs a failure of `what` with SQLite's
   result code rc and its message; returns the EB_ code for rc. */
static int fail_with(eb_store *s, int rc, const char *what, const char *msg)
{
    pthread_mutex_lock(&s->errlock);
    s->err_code = rc;
    snprintf(s->err_msg, sizeof(s->err_msg), "%s: %s", what, msg);
    pthread_mutex_unlock(&s->errlock);
    slog(s, EB_LOG_ERROR, "store %s: %s failed: %s (SQLite %d)", s->path, what, msg, rc);
    return map_rc(rc);
}

/* Records a failed SQLite call on db and returns its EB_ code. */
static int sql_fail(eb_store *s, sqlite3 *db, int rc, const char *what)
{
    return fail_with(s, rc, what, db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

static int64_t now_ns(void)
{
    return eb__now_real_ns();
}

/* Binds NULL for a NULL pointer, else a blob (static: copied by the caller's
   lifetime rules — every bind here is stepped before the data changes). */
static void bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    if (p == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_blob64(st, i, n ? p : "", n, SQLITE_STATIC);
}

static void bind_text(sqlite3_stmt *st, int i, const char *t)
{
    sqlite3_bind_text(st, i, t, -1, SQLITE_STATIC);
}

/* Steps a write statement to completion and resets it. */
static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* A reader statement (caller holds rlock); NULL on failure (recorded). */
static sqlite3_stmt *rstmt(eb_store *s, int i)
{
    if (s->r[i] == NULL) {
        int rc = sqlite3_prepare_v3(s->rdb, RSQL[i], -1, SQLITE_PREPARE_PERSISTENT, &s->r[i], NULL);
        if (rc != SQLITE_OK) {
            sql_fail(s, s->rdb, rc, "prepare");
            s->r[i] = NULL;
        }
    }
    return s->r[i];
}

static void rdone(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* ---- the queue --------------------------------------------------------- */

/* Resizes an item array to n items; false if out of memory (*a unchanged). */
static bool items_resize(item **a, size_t *cap, size_t n)
{
    item *v = realloc(*a, n * sizeof(*v));
    if (v == NULL)
        return false;
    *a = v;
    *cap = n;
    return true;
}

/* Items queued (the writer takes them from the head, qh). */
static size_t q_len_locked(const eb_store *s)
{
    return s->qn - s->qh;
}

/* Makes room for `more` items behind q[qn): moves the queued items to the
   front of the array if the writer has taken some from the head (at most
   once per filling of the array), then grows it. */
static int q_room_locked(eb_store *s, size_t more)
{
    if (s->qn + more <= s->qcap)
        return EB_OK;
    if (s->qh > 0) {
        memmove(s->q, s->q + s->qh, q_len_locked(s) * sizeof(*s->q));
        s->qn -= s->qh;
        s->qh = 0;
        if (s->qn + more <= s->qcap)
            return EB_OK;
    }
    size_t cap = s->qcap ? s->qcap * 2 : 256;
    while (cap < s->qn + more)
        cap *= 2;
    return items_resize(&s->q, &s->qcap, cap) ? EB_OK : EB_ENOMEM;
}

static int q_push_locked(eb_store *s, void *p, int kind)
{
    if (q_room_locked(s, 1) != EB_OK)
        return EB_ENOMEM;
    s->q[s->qn++] = (item){.p = p, .kind = kind};
    if (kind == IT_JOB && ((job *)p)->waited)
        s->qwaited++;
    /* Wake the writer for the first item, or when the callers it gathers
       for are all back: not once per caller (each wake-up is a context
       switch on a machine the woken callers need too). */
    if ((q_len_locked(s) == 1 && !s->gathering) || (s->gathering && s->qwaited >= s->gather_want) ||
        (s->yielding && kind == IT_JOB && ((job *)p)->waited))
        pthread_cond_signal(&s->wake);
    return EB_OK;
}

static struct timespec abs_mono(int64_t deadline)
{
    return (struct timespec){.tv_sec = deadline / 1000000000, .tv_nsec = deadline % 1000000000};
}

/* Waits for room for n items (callers outside handlers). */
static size_t backlog_locked(eb_store *s)
{
    return q_len_locked(s) + atomic_load_explicit(&s->fifo_len, memory_order_relaxed);
}

static int wait_room_locked(eb_store *s, size_t n, int64_t timeout_ns)
{
    size_t max = s->opts.max_pending;
    if (backlog_locked(s) + n <= max || backlog_locked(s) == 0)
        return EB_OK;
    if (timeout_ns == 0)
        return EB_EAGAIN;
    int64_t deadline = eb__deadline_after(timeout_ns);
    while (backlog_locked(s) + n > max && backlog_locked(s) > 0 && !s->stop) {
        if (deadline == INT64_MAX) {
            pthread_cond_wait(&s->space, &s->lock);
        } else {
            if (eb__now_mono_ns() >= deadline)
                return EB_ETIMEDOUT;
            struct timespec ts = abs_mono(deadline);
            pthread_cond_timedwait(&s->space, &s->lock, &ts);
        }
    }
    return EB_OK;
}

/* Queues a job and waits for its completion; returns its rc. */
/* Called with the store lock held; returns with it released: EB_OK once
   the writer completed j, EB_ETIMEDOUT at deadline (monotonic, INT64_MAX:
   none), j then being left to the writer, which frees it. The wait is on
   an eventcount, not a condition variable: a commit wakes all its waiters
   at once, and none of them has to take the store lock again to leave. */
static int wait_done_unlock(eb_store *s, job *j, int64_t deadline)
{
    pthread_mutex_unlock(&s->lock);
    for (;;) {
        uint32_t snap = eb__ec_value(&s->done_ec);
        if (atomic_load_explicit(&j->done, memory_order_acquire))
            return EB_OK;
        if (deadline == INT64_MAX) {
            eb__ec_wait(&s->done_ec, snap, NULL);
            continue;
        }
        if (eb__now_mono_ns() >= deadline) {
            /* done and abandoned are decided under the lock. */
            pthread_mutex_lock(&s->lock);
            bool done = atomic_load_explicit(&j->done, memory_order_relaxed);
            j->abandoned = !done;
            pthread_mutex_unlock(&s->lock);
            return done ? EB_OK : EB_ETIMEDOUT;
        }
        struct timespec ts = abs_mono(deadline);
        eb__ec_wait(&s->done_ec, snap, &ts);
    }
}

static int run_job(eb_store *s, job *j)
{
    if (s->has_writer && pthread_equal(pthread_self(), s->writer)) {
        /* The writer itself (a subscription freed by its last reference
           there): run it directly, in its own transaction-less step. */
        int rc = j->run ? j->run(s, j) : SQLITE_OK;
        if (rc != SQLITE_OK)
            j->rc = sql_fail(s, s->wdb, rc, "write");
        if (j->after)
            j->after(s, j);
        return j->rc;
    }
    j->waited = true;
    atomic_init(&j->done, false);
    pthread_mutex_lock(&s->lock);
    int rc = q_push_locked(s, j, IT_JOB);
    if (rc == EB_OK)
        wait_done_unlock(s, j, INT64_MAX);
    else
        pthread_mutex_unlock(&s->lock);
    return rc == EB_OK ? j->rc : rc;
}

/* As run_job, for the jobs that must run (a durable subscription's start,
   stop and close: the bus cannot take back the routing they follow). Only
   queueing can fail — no memory to grow the queue — and then it retries:
   late rather than lost. */
static int run_job_must(eb_store *s, job *j)
{
    for (;;) {
        int rc = run_job(s, j);
        bool on_writer = s->has_writer && pthread_equal(pthread_self(), s->writer);
        if (rc != EB_ENOMEM || j->done || on_writer)
            return rc;
        usleep(1000);
    }
}

/* Queues a job nobody waits for (its `after` frees it). */
static int post_job(eb_store *s, job *j)
{
    j->waited = false;
    pthread_mutex_lock(&s->lock);
    int rc = q_push_locked(s, j, IT_JOB);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void free_after(eb_store *s, job *j)
{
    (void)s;
    free(j);
}

/* ---- writing events ---------------------------------------------------- */

/* Inserts ev as the next log entry, stamping its id and time. */
static int insert_event(eb_store *s, eb_event *ev)
{
    sqlite3_stmt *st = s->w[W_EVENT];
    uint64_t seq = s->last_seq + 1;
    eb__event_stamp(ev, seq, now_ns(), s->nonce);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    sqlite3_bind_blob(st, 2, ev->id, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, ev->ts_ns);
    sqlite3_bind_text(st, 4, ev->topic, ev->topic_len, SQLITE_STATIC);
    bind_blob(st, 5, eb__event_key(ev), ev->key_len);
    sqlite3_bind_blob64(st, 6, ev->payload_len ? ev->payload : "", ev->payload_len, SQLITE_STATIC);
    bind_blob(st, 7, (ev->flags & EB__EV_CORR) ? ev->ext->corr : NULL, 16);
    bind_blob(st, 8, (ev->flags & EB__EV_CAUS) ? ev->ext->caus : NULL, 16);
    int rc = step_done(st);
    if (rc == SQLITE_OK) {
        s->last_seq = seq;
        ev->ext->log_seq = seq;
    }
    return rc;
}

/* Builds a bus event from a row: topic, key, payload, correlation,
   causation at columns c..c+4. */
/* The event of a log or scheduled row: NULL with *bad set for a row no
   event can be made of (a damaged or foreign file: a NULL topic, one too
   long, a key over 255 bytes), NULL with *bad clear when out of memory.
   The empty topic is valid (see eb_publish). */
static eb_event *event_from_row(eb_bus *bus, sqlite3_stmt *st, int c, bool *bad)
{
    const char *topic = (const char *)sqlite3_column_text(st, c);
    const void *key = sqlite3_column_blob(st, c + 1);
    size_t kl = (size_t)sqlite3_column_bytes(st, c + 1);
    const void *payload = sqlite3_column_blob(st, c + 2);
    size_t pl = (size_t)sqlite3_column_bytes(st, c + 2);
    const void *corr =
        sqlite3_column_bytes(st, c + 3) == 16 ? sqlite3_column_blob(st, c + 3) : NULL;
    const void *caus =
        sqlite3_column_bytes(st, c + 4) == 16 ? sqlite3_column_blob(st, c + 4) : NULL;
    size_t tl = (size_t)sqlite3_column_bytes(st, c);
    *bad = topic == NULL || tl > EB_TOPIC_MAX || strlen(topic) != tl || kl > 255;
    if (*bad)
        return NULL;
    return eb__bus_event_new(bus, topic, kl ? key : NULL, kl, pl ? payload : NULL, pl, corr, caus);
}

/* ---- the FIFO towards the intake (writer only) -------------------------- */

static int fifo_push(eb_store *s, void *p, int kind)
{
    if (s->f_n == s->f_cap) {
        size_t cap = s->f_cap ? s->f_cap * 2 : 1024;
        fentry *v = malloc(cap * sizeof(*v));
        if (v == NULL)
            return -1;
        for (size_t i = 0; i < s->f_n; i++)
            v[i] = s->fifo[(s->f_head + i) % s->f_cap];
        free(s->fifo);
        s->fifo = v;
        s->f_cap = cap;
        s->f_head = 0;
    }
    s->fifo[(s->f_head + s->f_n) % s->f_cap] = (fentry){.p = p, .kind = kind};
    s->f_n++;
    atomic_store_explicit(&s->fifo_len, s->f_n, memory_order_relaxed);
    return 0;
}

static void fifo_pop(eb_store *s)
{
    s->f_head = (s->f_head + 1) % s->f_cap;
    s->f_n--;
    atomic_store_explicit(&s->fifo_len, s->f_n, memory_order_relaxed);
}

/* Drops a cursor's buffered events (their subscription references go). */
static void cursor_drain(eb_store *s, cursor *c)
{
    eb_bus *bus = s->bus;
    while (c->bi < c->bn)
        eb__bus_event_unref(bus, c->buf[c->bi++]);
    c->bi = c->bn = 0;
}

/* Reads the next chunk of the replay into the cursor's buffer. Returns the
   number of rows read (0: the replay is complete). */
static size_t cursor_fill(eb_store *s, cursor *c)
{
    eb__dsub *d = c->d;
    sqlite3_stmt *st = s->w[W_REPLAY];
    size_t rows = 0;
    c->bi = c->bn = 0;
    c->stalled = false;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)c->next);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)c->upto);
    sqlite3_bind_int(st, 3, REPLAY_CHUNK);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        rows++;
        uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0);
        c->next = seq;
        const char *topic = (const char *)sqlite3_column_text(st, 3);
        if (topic == NULL ||
            !eb__topic_matches(d->pattern, d->plen, topic, (size_t)sqlite3_column_bytes(st, 3)))
            continue;
        bool bad;
        eb_event *ev = event_from_row(s->bus, st, 3, &bad);
        if (ev == NULL && bad) {
            slog(s, EB_LOG_WARN,
                 "store %s: log row %llu cannot be an event (damaged?); replay of %s skips it",
                 s->path, (unsigned long long)seq, d->name);
            continue;
        }
        if (ev == NULL) {
            /* No memory: stop here and read this row again later. */
            c->next = seq - 1;
            c->stalled = c->bn == 0;
            break;
        }
        if (sqlite3_column_bytes(st, 1) == 16)
            memcpy(ev->id, sqlite3_column_blob(st, 1), 16);
        ev->ts_ns = sqlite3_column_int64(st, 2);
        ev->ext->log_seq = seq;
        ev->flags |= EB__EV_LOGGED;
        eb__bus_replay_target(s->bus, ev, d->sub);
        c->buf[c->bn++] = ev;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        if (!c->failed) /* once: a damaged page fails every time */
            sql_fail(s, s->wdb, rc, "replay");
        c->failed = true;
        c->stalled = c->bn == 0;
        rows = rows ? rows : 1; /* not complete: try again later */
    }
    sqlite3_reset(st);
    return rows;
}

/* Hands FIFO entries to the intake until it is full. Returns true when the
   intake refused one (retry later). */
static bool fifo_inject(eb_store *s)
{
    eb_bus *bus = s->bus;
    uint64_t settled = 0;
    size_t popped = 0;
    bool blocked = false;
    while (s->f_n > 0 && !blocked) {
        fentry *e = &s->fifo[s->f_head];
        if (e->kind == F_EVENT) {
            if (!eb__bus_inject(bus, e->p)) {
                blocked = true;
                break;
            }
            settled++;
            popped++;
            fifo_pop(s);
            continue;
        }
        cursor *c = e->p;
        for (;;) {
            while (c->d != NULL && c->bi < c->bn) {
                if (!eb__bus_inject(bus, c->buf[c->bi])) {
                    blocked = true;
                    break;
                }
                c->bi++;
            }
            if (blocked || c->d == NULL)
                break;
            if (c->next >= c->upto || cursor_fill(s, c) == 0)
                break; /* complete */
            if (c->stalled) {
                blocked = true; /* the writer comes back after a pause */
                break;
            }
            if (c->bn == 0 && c->next < c->upto)
                continue; /* a chunk of other topics */
        }
        if (blocked)
            break;
        cursor_drain(s, c);
        free(c);
        fifo_pop(s);
        popped++;
        settled++; /* the cursor's own count */
    }
    if (bus != NULL)
        eb__bus_store_done(bus, settled);
    if (popped > 0) {
        pthread_mutex_lock(&s->lock);
        pthread_cond_broadcast(&s->space);
        pthread_mutex_unlock(&s->lock);
    }
    return blocked;
}

/* ---- the writer --------------------------------------------------------- */

/* Puts a committed event on the FIFO (or, with no memory for the FIFO,
   straight on the intake: late rather than lost). */
static void to_bus(eb_store *s, eb_event *ev)
{
    if (fifo_push(s, ev, F_EVENT) == 0)
        return;
    while (!eb__bus_inject(s->bus, ev))
        usleep(100);
    eb__bus_store_done(s->bus, 1);
}

typedef struct ckpt_snap {
    eb__dsub *d;
    uint64_t checkpoint;
} ckpt_snap;

/* Fires due scheduled events in the open transaction: each becomes a new
   log entry. Returns the SQLite error, if any; fired events go to *out. */
static int fire_due(eb_store *s, eb_event **out, size_t *n)
{
    sqlite3_stmt *q = s->w[W_SCHED_DUE];
    sqlite3_bind_int64(q, 1, now_ns());
    sqlite3_bind_int(q, 2, FIRE_CHUNK);
    int rc;
    int64_t ids[FIRE_CHUNK];
    size_t k = 0;
    int64_t bad_ids[FIRE_CHUNK];
    size_t nbad = 0;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        bool bad;
        eb_event *ev = event_from_row(s->bus, q, 1, &bad);
        if (ev == NULL && bad) {
            bad_ids[nbad++] = sqlite3_column_int64(q, 0);
            continue;
        }
        if (ev == NULL) {
            /* No memory: the rest fire later, not at once again. */
            s->fire_retry_at = eb__now_mono_ns() + FIRE_RETRY_NS;
            break;
        }
        ids[k] = sqlite3_column_int64(q, 0);
        out[k++] = ev;
    }
    sqlite3_reset(q);
    *n = k;
    /* On their way to the bus from now on (the bus does not finish
       draining while they are out). */
    eb__bus_store_add(s->bus, k);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
    /* A row no event can be made of would be due for ever: it goes. */
    for (size_t i = 0; i < nbad; i++) {
        slog(s, EB_LOG_WARN, "store %s: scheduled row %lld cannot be an event (damaged?): removed",
             s->path, (long long)bad_ids[i]);
        sqlite3_bind_int64(s->w[W_SCHED_DEL], 1, bad_ids[i]);
        if ((rc = step_done(s->w[W_SCHED_DEL])) != SQLITE_OK)
            return rc;
    }
    for (size_t i = 0; i < k; i++) {
        rc = insert_event(s, out[i]);
        if (rc == SQLITE_OK) {
            sqlite3_bind_int64(s->w[W_SCHED_DEL], 1, ids[i]);
            rc = step_done(s->w[W_SCHED_DEL]);
        }
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static void sched_refresh(eb_store *s)
{
    sqlite3_stmt *st = s->w[W_SCHED_NEXT];
    s->next_due = INT64_MAX;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        s->next_due = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    s->sched_check = eb__now_mono_ns() + SCHED_RECHECK_NS;
}

/* A durable subscription that cannot be given some events (no memory for
   their replay) keeps its checkpoint below them from now on, so that its
   next subscribe replays them (the live events it gets meanwhile are
   delivered again then: at least once). Returns the checkpoint. */
static uint64_t dsub_freeze(eb__dsub *d)
{
    pthread_mutex_lock(&d->lock);
    d->frozen = true;
    uint64_t ck = d->checkpoint;
    pthread_mutex_unlock(&d->lock);
    return ck;
}

/* Puts a replay cursor for d over the log's (after, upto] on the FIFO; the
   bus counts it until it finished. False when out of memory. */
static bool cursor_push(eb_store *s, eb__dsub *d, uint64_t after, uint64_t upto)
{
    cursor *c = calloc(1, sizeof(*c));
    if (c == NULL || fifo_push(s, c, F_CURSOR) != 0) {
        free(c);
        return false;
    }
    c->d = d;
    c->next = after;
    c->upto = upto;
    eb__bus_store_add(s->bus, 1);
    return true;
}

/* Learns the log's highest sequence (writer only, s->lock not held).
   Rows above last_seq were appended by another process: every started
   durable subscription gets a replay cursor over them, on the FIFO behind
   what this writer committed before and ahead of what it commits next, so
   it sees them in log order, and its checkpoint (the low-water mark of
   what it was given) never passes one of them. Returns the SQLite error,
   if any. */
static int log_refresh(eb_store *s)
{
    sqlite3_stmt *m = s->w[W_MAXSEQ];
    int err = sqlite3_step(m);
    uint64_t mx = err == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(m, 0) : 0;
    sqlite3_reset(m);
    if (err != SQLITE_ROW)
        return err;
    if (mx <= s->last_seq)
        return SQLITE_OK;
    unsigned frozen = 0;
    pthread_mutex_lock(&s->lock);
    for (eb__dsub *d = s->dsubs; d != NULL && s->bus != NULL; d = d->next) {
        /* One not started yet replays up to the last sequence when it
           starts (sub_start_after), these rows included. */
        if (atomic_load_explicit(&d->live_from, memory_order_relaxed) == UINT64_MAX)
            continue;
        if (!cursor_push(s, d, s->last_seq, mx)) {
            dsub_freeze(d);
            frozen++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (frozen > 0)
        slog(s, EB_LOG_ERROR,
             "no memory for the replay of log rows %llu-%llu to %u durable subscription(s); "
             "their checkpoints stay where they are",
             (unsigned long long)s->last_seq + 1, (unsigned long long)mx, frozen);
    s->last_seq = mx;
    return SQLITE_OK;
}

/* Runs one group transaction over batch[0..n), fired scheduled events and
   checkpoints, then completes everything in order. */
/* Opens the writer's transaction (BEGIN IMMEDIATE) and learns the log's
   highest sequence: another process may have appended since our last
   transaction. *seq0 is what last_seq returns to if the transaction fails.
   Returns the SQLite error, if any. */
static int txn_begin(eb_store *s, uint64_t *seq0)
{
    *seq0 = s->last_seq;
    int err = step_done(s->w[W_BEGIN]);
    if (err == SQLITE_OK) {
        err = log_refresh(s);
        *seq0 = s->last_seq;
    }
    return err;
}

/* Writes the checkpoints snapshotted before the batch was taken, first in
   the transaction (unless err is set): an item of the batch that writes a
   newer checkpoint (a subscription closing) must come after them, not be
   overwritten by them. Returns the SQLite error, if any. */
static int txn_checkpoints(eb_store *s, ckpt_snap *ck, size_t nck, int err)
{
    for (size_t i = 0; i < nck && err == SQLITE_OK; i++) {
        sqlite3_stmt *st = s->w[W_CKPT];
        bind_text(st, 1, ck[i].d->name);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)ck[i].checkpoint);
        sqlite3_bind_int64(st, 3, now_ns());
        err = step_done(st);
        if (err == SQLITE_OK && ck[i].d->idempotent &&
            ck[i].checkpoint >= ck[i].d->prune_at + 1024) {
            /* Ids below the checkpoint are never replayed: prune them now
               and then (not per checkpoint, to keep commits short). */
            sqlite3_stmt *p = s->w[W_PRUNE];
            bind_text(p, 1, ck[i].d->name);
            sqlite3_bind_int64(p, 2, (sqlite3_int64)ck[i].checkpoint);
            err = step_done(p);
            ck[i].d->prune_at = ck[i].checkpoint;
        }
    }
    return err;
}

/* Runs batch[0, n) in the open transaction, in order, unless err (an
   earlier failure) is set; stops at the first failure and returns it. */
static int txn_items(eb_store *s, item *batch, size_t n, int err)
{
    for (size_t i = 0; i < n && err == SQLITE_OK; i++) {
        if (batch[i].kind == IT_JOB) {
            job *j = batch[i].p;
            if (j->run != NULL)
                err = j->run(s, j);
        } else {
            err = insert_event(s, batch[i].p);
        }
    }
    return err;
}

/* Ends the transaction txn_begin opened, whose items were batch[0, n):
   fires due scheduled events in it, commits it (or, after err or a failed
   commit, rolls it back), then completes every item in queue order. */
static void txn_end(eb_store *s, int err, uint64_t seq0, item *batch, size_t n, bool fire)
{
    eb_event *fired[FIRE_CHUNK];
    size_t nfired = 0;
    if (err == SQLITE_OK && fire)
        err = fire_due(s, fired, &nfired);
    if (err == SQLITE_OK)
        err = step_done(s->w[W_COMMIT]);
    int fail = EB_OK;
    if (err != SQLITE_OK) {
        fail = sql_fail(s, s->wdb, err, "group commit");
        if (!sqlite3_get_autocommit(s->wdb))
            step_done(s->w[W_ROLLBACK]);
        s->last_seq = seq0;
        atomic_fetch_add_explicit(&s->write_errors, 1, memory_order_relaxed);
        atomic_store_explicit(&s->failed_since_open, true, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&s->commits, 1, memory_order_relaxed);
    }
    if (fire) {
        /* Due scheduled rows stay due when their transaction fails (a full
           disk): retry them after a pause that grows, not in a loop that
           takes a whole CPU while the cause lasts. */
        if (fail == EB_OK) {
            s->fire_backoff = 0;
        } else {
            s->fire_backoff = s->fire_backoff == 0                        ? FIRE_RETRY_NS
                              : s->fire_backoff * 2 > FIRE_BACKOFF_MAX_NS ? FIRE_BACKOFF_MAX_NS
                                                                          : s->fire_backoff * 2;
            s->fire_retry_at = eb__now_mono_ns() + s->fire_backoff;
        }
    }

    /* Complete in queue order: events onto the FIFO (committed ones marked
       logged), jobs told their result. */
    uint64_t appended = 0;
    for (size_t i = 0; i < n; i++) {
        if (batch[i].kind == IT_JOB) {
            job *j = batch[i].p;
            if (fail != EB_OK)
                j->rc = fail;
            bool waited = j->waited;
            if (j->after != NULL)
                j->after(s, j); /* frees a job nobody waits for */
            if (!waited)
                batch[i].p = NULL;
            continue;
        }
        eb_event *ev = batch[i].p;
        if (fail == EB_OK) {
            ev->flags |= EB__EV_LOGGED;
            appended++;
        } else if (batch[i].kind == IT_EVENT_OWNED) {
            continue; /* its publisher takes it back (see eb__store_append) */
        } else {
            ev->ext->log_seq = 0; /* lazy: dispatched anyway, not durable */
        }
        to_bus(s, ev);
    }
    for (size_t i = 0; i < nfired; i++) {
        if (fail == EB_OK) {
            fired[i]->flags |= EB__EV_LOGGED;
            appended++;
            to_bus(s, fired[i]);
        } else {
            eb__bus_event_unref(s->bus, fired[i]);
            eb__bus_store_done(s->bus, 1);
        }
    }
    if (nfired > 0 || fire)
        sched_refresh(s);
    atomic_fetch_add_explicit(&s->appended, appended, memory_order_relaxed);
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        job *j = batch[i].p;
        if (batch[i].kind != IT_JOB || j == NULL)
            continue;
        if (j->abandoned)
            free(j);
        else
            atomic_store_explicit(&j->done, true, memory_order_release);
    }
    pthread_cond_broadcast(&s->space);
    pthread_mutex_unlock(&s->lock);
    eb__ec_inc(&s->done_ec); /* touches no job: a waiter may be gone */
}

/* One transaction of batch[0, n). */
static void writer_txn(eb_store *s, item *batch, size_t n, bool fire, ckpt_snap *ck, size_t nck)
{
    uint64_t seq0;
    int err = txn_begin(s, &seq0);
    err = txn_checkpoints(s, ck, nck, err);
    err = txn_items(s, batch, n, err);
    txn_end(s, err, seq0, batch, n, fire);
}

static bool fire_wanted(eb_store *s)
{
    return s->bus != NULL && !s->detaching && s->next_due <= now_ns() &&
           eb__now_mono_ns() >= s->fire_retry_at;
}

/* Under the lock: do memory-only events flow through the bus (at least
   MEMORY_FLOWING a second)? Memory-only = accepted by the bus's publish
   calls minus the durable ones queued here, over at least 1 ms (a durable
   publish is queued before the bus counts it accepted, so short windows
   would mistake that lag for traffic); a shorter interval keeps the last
   answer. */
static bool memory_flowing_locked(eb_store *s)
{
    if (s->opts.lazy_share >= 100 || s->bus == NULL || s->detaching)
        return false;
    int64_t now = eb__now_mono_ns();
    int64_t dt = now - s->mem_at;
    if (s->mem_at != 0 && dt < 1000000)
        return s->mem_flowing;
    uint64_t acc = eb__bus_accepted(s->bus), q = s->queued_events;
    uint64_t mem = (acc - s->mem_acc) - (q - s->mem_queued);
    s->mem_flowing = s->mem_at != 0 && mem < (UINT64_C(1) << 62) &&
                     (double)mem * 1e9 >= (double)MEMORY_FLOWING * (double)dt;
    s->mem_acc = acc;
    s->mem_queued = q;
    s->mem_at = now;
    return s->mem_flowing;
}

/* Makes the spare queue array hold at least n items; false if out of
   memory (the caller then takes the whole queue as usual). */
static bool spare_room(eb_store *s, size_t n)
{
    return s->spare_cap >= n || items_resize(&s->spare, &s->spare_cap, n);
}

/* After a transaction that began at t0: if nobody waited for it and memory
   traffic flows, lazy work pauses so that it takes lazy_share of the
   writer's time (the pause is (100 - share) / share times the transaction,
   at most YIELD_MAX_NS). */
static void yield_next(eb_store *s, int64_t t0, bool lazy_only)
{
    s->yield_until = 0;
    if (!lazy_only)
        return;
    int64_t now = eb__now_mono_ns();
    int64_t pause = (now - t0) * (int64_t)(100 - s->opts.lazy_share) / (int64_t)s->opts.lazy_share;
    s->yield_until = now + (pause < YIELD_MAX_NS ? pause : YIELD_MAX_NS);
    atomic_fetch_add_explicit(&s->lazy_pauses, 1, memory_order_relaxed);
}

/* When (monotonic ns) fire_wanted will next hold for a due scheduled
   event; INT64_MAX if none is due or the bus cannot take them. */
static int64_t fire_at(eb_store *s)
{
    if (s->bus == NULL || s->detaching || s->next_due == INT64_MAX)
        return INT64_MAX;
    /* Saturating: a due time read from the file may be anything (a row
       another process wrote far in the past or future). */
    int64_t now = now_ns(), mono = eb__now_mono_ns();
    int64_t in = s->next_due > now ? s->next_due - now : 0;
    int64_t at = in > INT64_MAX - mono ? INT64_MAX : mono + in;
    return at < s->fire_retry_at ? s->fire_retry_at : at;
}

/* Group commit across rounds. Called with the lock held and waited items
   queued, but `more` fewer of them than the last commit released: those
   callers are about to queue their next write. The writer opens the
   transaction with what is queued (copied into the spare array, which is
   free between transactions and has room for it) and keeps taking what
   comes, until `more` further waited items are in it or GATHER_NS passed,
   then commits. The stragglers share this commit instead of waiting a whole
   extra one, and the statements of the first items run while the others
   are on their way rather than after them. Returns with the lock released:
   the number of waited items taken after the first take. */
static size_t gather_txn(eb_store *s, size_t more, bool fire, ckpt_snap *ck, size_t nck)
{
    int64_t until = eb__now_mono_ns() + GATHER_NS;
    uint64_t seq0 = s->last_seq;
    int err = SQLITE_OK;
    bool open = false;
    size_t n = 0, got = 0;
    for (;;) {
        size_t m = q_len_locked(s);
        if (m > 0 && spare_room(s, n + m)) {
            memcpy(s->spare + n, s->q + s->qh, m * sizeof(*s->spare));
            s->qh = s->qn = 0;
            got += s->qwaited; /* the caller counted those of the first take */
            s->qwaited = 0;
            pthread_mutex_unlock(&s->lock);
            if (!open)
                err = txn_checkpoints(s, ck, nck, txn_begin(s, &seq0));
            open = true;
            err = txn_items(s, s->spare + n, m, err);
            n += m;
            pthread_mutex_lock(&s->lock);
        } else if (m > 0) {
            break; /* no memory to take more: commit what we have */
        }
        if (got >= more || err != SQLITE_OK || s->stop || n >= GATHER_TAKE_MAX ||
            eb__now_mono_ns() >= until)
            break;
        if (q_len_locked(s) > 0)
            continue;
        s->gathering = true;
        s->gather_want = more - got;
        struct timespec ts = abs_mono(until);
        pthread_cond_timedwait(&s->wake, &s->lock, &ts);
        s->gathering = false;
    }
    pthread_mutex_unlock(&s->lock);
    if (!open)
        err = txn_checkpoints(s, ck, nck, txn_begin(s, &seq0));
    txn_end(s, err, seq0, s->spare, n, fire);
    return got;
}

/* Under lock: are the checkpoints to be written now? Every CKPT_DELAY_NS
   at most, and at once for a flush (eb_store_flush). */
static bool ckpt_due(const eb_store *s)
{
    return s->ckpt_dirty && (s->ckpt_now || eb__now_mono_ns() >= s->ckpt_at);
}

/* Under lock, in a writer round that is not gathering: does it take only a
   chunk of the queue (lazy work in short transactions, see writer_main)?
   A snapshot of checkpoints this round took (*ck, *nck) then waits for the
   chunk that holds the last item queued before it (s->ck_wait): moved
   there, and *nck set to 0. No memory to keep it: the whole queue. A flush
   (ckpt_now) takes the whole queue too, so that its checkpoints are in the
   transaction of its barrier. */
static bool chunk_now(eb_store *s, size_t last_waited, ckpt_snap **ck, size_t *nck)
{
    size_t n = q_len_locked(s);
    if (last_waited != 0 || s->stop || s->ckpt_now || n <= LAZY_BATCH_MAX ||
        !spare_room(s, LAZY_BATCH_MAX))
        return false;
    if (*nck > 0) {
        ckpt_snap *w = malloc(*nck * sizeof(*w));
        if (w == NULL)
            return false;
        memcpy(w, *ck, *nck * sizeof(*w));
        s->ck_wait = w;
        s->nck_wait = *nck;
        s->ck_wait_items = n;
        *nck = 0;
    }
    return true;
}

/* The waiting snapshot (s->ck_wait) goes in this round's transaction. */
static void take_waiting_ckpts(eb_store *s, ckpt_snap **ck, size_t *nck)
{
    *ck = s->ck_wait;
    *nck = s->nck_wait;
    s->ck_wait = NULL;
    s->nck_wait = 0;
}

static void *writer_main(void *arg)
{
    eb_store *s = arg;
    bool blocked = false;
    size_t last_waited = 0; /* waiting callers in the last batch */
    for (;;) {
        pthread_mutex_lock(&s->lock);
        for (;;) {
            if (q_len_locked(s) > 0 || (s->f_n > 0 && !blocked) || fire_wanted(s) || ckpt_due(s))
                break;
            if (s->stop && s->f_n == 0)
                break;
            if (eb__now_mono_ns() >= s->sched_check) {
                /* Other processes may schedule events and append to the
                   log: once a second, look (a failed read: next time). */
                pthread_mutex_unlock(&s->lock);
                sched_refresh(s);
                (void)log_refresh(s);
                pthread_mutex_lock(&s->lock);
                continue;
            }
            int64_t deadline = s->sched_check;
            if (fire_at(s) < deadline)
                deadline = fire_at(s);
            if (blocked && eb__now_mono_ns() + INTAKE_RETRY_NS < deadline)
                deadline = eb__now_mono_ns() + INTAKE_RETRY_NS;
            if (s->ckpt_dirty && s->ckpt_at < deadline)
                deadline = s->ckpt_at;
            struct timespec ts = abs_mono(deadline);
            if (pthread_cond_timedwait(&s->wake, &s->lock, &ts) != 0)
                blocked = false; /* timed out: look at the intake again */
        }
        if (s->stop && q_len_locked(s) == 0 && s->f_n == 0) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        /* Work nobody waits for pauses while memory-only traffic flows
           (lazy_share): no transaction until the pause ends, a waiting
           caller's item comes or a scheduled event falls due. Committed
           events and replays keep going to the bus meanwhile. */
        if (s->qwaited == 0 && !s->stop && !fire_wanted(s) && eb__now_mono_ns() < s->yield_until) {
            if (s->f_n > 0 && !blocked) {
                pthread_mutex_unlock(&s->lock);
                blocked = fifo_inject(s);
                continue;
            }
            int64_t until = s->yield_until;
            if (fire_at(s) < until)
                until = fire_at(s);
            if (s->f_n > 0 && eb__now_mono_ns() + INTAKE_RETRY_NS < until)
                until = eb__now_mono_ns() + INTAKE_RETRY_NS;
            s->yielding = true;
            struct timespec ts = abs_mono(until);
            if (pthread_cond_timedwait(&s->wake, &s->lock, &ts) != 0)
                blocked = false; /* timed out: look at the intake again */
            s->yielding = false;
            pthread_mutex_unlock(&s->lock);
            continue;
        }
        /* Group commit across rounds (see gather_txn): fewer waiting
           callers' items queued than the last commit released. */
        size_t want = last_waited;
        bool gather = s->qwaited > 0 && s->qwaited < want && !s->stop &&
                      q_len_locked(s) <= GATHER_TAKE_MAX && spare_room(s, q_len_locked(s));
        last_waited = s->qwaited;
        s->qwaited = 0;
        bool flowing = memory_flowing_locked(s);
        /* Checkpoints first, then the batch (see the design notes). */
        size_t nck = 0, ck_cap = 64;
        ckpt_snap ck_some[64], *ck = ck_some;
        if (s->nck_wait == 0 && ckpt_due(s)) {
            if (s->ckpt_now) {
                /* A flush: every dirty checkpoint goes in this transaction,
                   the one that completes the flush's barrier. */
                size_t all = 0;
                for (eb__dsub *d = s->dsubs; d != NULL; d = d->next)
                    all++;
                ckpt_snap *big = all > ck_cap ? malloc(all * sizeof(*big)) : NULL;
                if (big != NULL) {
                    ck = big;
                    ck_cap = all;
                }
            }
            bool more = false;
            for (eb__dsub *d = s->dsubs; d != NULL; d = d->next) {
                pthread_mutex_lock(&d->lock);
                if (d->dirty) {
                    if (nck < ck_cap) {
                        ck[nck++] = (ckpt_snap){.d = d, .checkpoint = d->checkpoint};
                        d->dirty = false;
                    } else {
                        more = true;
                    }
                }
                pthread_mutex_unlock(&d->lock);
            }
            s->ckpt_dirty = more;
            s->ckpt_now = more && s->ckpt_now; /* no memory: the rest next round */
        }
        bool chunk = !gather && chunk_now(s, last_waited, &ck, &nck);
        if (!chunk && s->nck_wait > 0)
            take_waiting_ckpts(s, &ck, &nck); /* the whole queue: gather takes it first */
        if (gather) {
            bool fire = fire_wanted(s);
            int64_t t0 = eb__now_mono_ns();
            last_waited += gather_txn(s, want - last_waited, fire, ck, nck);
            yield_next(s, t0, false);
        } else {
            /* Take the whole queue: swap arrays, so publishers never wait for
               the transaction. */
            size_t n = q_len_locked(s);
            item *batch;
            if (chunk) {
                /* Lazy work goes in short transactions, the oldest items now
                   and the rest after: while memory traffic flows, so that each
                   pause stays in proportion (lazy_share); and always, so that
                   memory traffic that begins meanwhile is noticed within one
                   short transaction (a whole backlog of lazy events is a
                   transaction of 100 ms or more at full speed). */
                batch = s->spare;
                memcpy(batch, s->q + s->qh, LAZY_BATCH_MAX * sizeof(*batch));
                n = LAZY_BATCH_MAX;
                s->qh += n; /* n < the queue's length: never empties it */
                if (s->nck_wait > 0 && s->ck_wait_items <= n)
                    take_waiting_ckpts(s, &ck, &nck); /* its last item is in this chunk */
                else if (s->nck_wait > 0)
                    s->ck_wait_items -= n;
            } else {
                item *base = s->q;
                size_t bcap = s->qcap;
                batch = base + s->qh;
                s->q = s->spare;
                s->qcap = s->spare_cap;
                s->qh = s->qn = 0;
                s->spare = base;
                s->spare_cap = bcap;
            }
            bool fire = fire_wanted(s);
            pthread_mutex_unlock(&s->lock);

            if (n > 0 || fire || nck > 0) {
                int64_t t0 = eb__now_mono_ns();
                writer_txn(s, batch, n, fire, ck, nck);
                yield_next(s, t0, last_waited == 0 && flowing);
            }
        }
        if (nck > 0)
            s->ckpt_at = eb__now_mono_ns() + CKPT_DELAY_NS;
        if (ck != ck_some)
            free(ck);
        if (s->f_n > 0)
            blocked = fifo_inject(s);
    }
    return NULL;
}

/* ---- the bus's side ------------------------------------------------------ */

int eb__store_attach(eb_store *s, eb_bus *bus)
{
    if (s->opts.read_only)
        return EB_ENOTSUP;
    pthread_mutex_lock(&s->lock);
    int rc = s->bus != NULL ? EB_EBUSY : EB_OK;
    if (rc == EB_OK) {
        s->bus = bus;
        s->sched_check = 0; /* look at the scheduled table at once */
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void detach_after(eb_store *s, job *j)
{
    (void)j;
    s->detaching = true;
}

void eb__store_detach_begin(eb_store *s)
{
    /* Without it the writer could fire scheduled events into a bus that
       already concluded it drained. */
    job j = {.after = detach_after};
    run_job_must(s, &j);
}

void eb__store_detach(eb_store *s)
{
    /* The bus drained: the FIFO is empty and no cursor is left. */
    pthread_mutex_lock(&s->lock);
    s->bus = NULL;
    s->detaching = false; /* written under the lock while the writer looks
                             at it only when a bus is attached */
    pthread_mutex_unlock(&s->lock);
    /* The writer may still be inside its last call into the bus (the
       eb__bus_store_done whose decrement let the bus finish draining); the
       bus is freed after we return. A barrier job completes only once the
       writer is back in its loop, where it sees no bus. */
    job barrier = {0};
    run_job_must(s, &barrier);
}

int eb__store_append(eb_store *s, eb_event **evs, size_t n, bool wait, int64_t timeout_ns,
                     bool in_handler)
{
    int rc = EB_OK;
    job barrier = {.waited = true}; /* completes with their transaction */
    atomic_init(&barrier.done, false);
    pthread_mutex_lock(&s->lock);
    if (!in_handler)
        rc = wait_room_locked(s, n, timeout_ns);
    /* All n items and the barrier go in under one lock hold: one batch, one
       transaction. */
    if (rc == EB_OK)
        rc = q_room_locked(s, n + 1);
    if (rc == EB_OK) {
        s->queued_events += n;
        for (size_t i = 0; i < n; i++)
            q_push_locked(s, evs[i], wait ? IT_EVENT_OWNED : IT_EVENT);
        if (wait) {
            q_push_locked(s, &barrier, IT_JOB);
            wait_done_unlock(s, &barrier, INT64_MAX);
            return barrier.rc;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* A row to insert, with its bytes in the same allocation. */
typedef struct row_job {
    job j;
    int64_t due;
    uint64_t seq;
    int error;
    unsigned attempts;
    bool has_corr, has_caus;
    uint8_t id[16], corr[16], caus[16];
    const char *topic, *sub;
    const void *key, *payload;
    size_t key_len, len;
    char data[];
} row_job;

static row_job *row_new(const eb_event *ev, const char *sub)
{
    size_t sl = sub ? strlen(sub) + 1 : 0, kl = ev->key_len;
    row_job *r = calloc(1, sizeof(*r) + ev->topic_len + 1 + sl + kl + ev->payload_len);
    if (r == NULL)
        return NULL;
    char *p = r->data;
    memcpy(p, ev->topic, ev->topic_len + 1);
    r->topic = p;
    p += ev->topic_len + 1;
    if (sub) {
        memcpy(p, sub, sl);
        r->sub = p;
        p += sl;
    }
    if (kl) {
        memcpy(p, eb__event_key(ev), kl);
        r->key = p;
        r->key_len = kl;
        p += kl;
    }
    if (ev->payload_len)
        memcpy(p, ev->payload, ev->payload_len);
    r->payload = p;
    r->len = ev->payload_len;
    eb__event_id(ev, r->id);
    if (ev->flags & EB__EV_CORR) {
        r->has_corr = true;
        memcpy(r->corr, ev->ext->corr, 16);
    }
    if (ev->flags & EB__EV_CAUS) {
        r->has_caus = true;
        memcpy(r->caus, ev->ext->caus, 16);
    }
    return r;
}

static int sched_run(eb_store *s, job *j)
{
    row_job *r = (row_job *)j;
    sqlite3_stmt *st = s->w[W_SCHED_ADD];
    sqlite3_bind_int64(st, 1, r->due);
    bind_text(st, 2, r->topic);
    bind_blob(st, 3, r->key, r->key_len);
    sqlite3_bind_blob64(st, 4, r->len ? r->payload : "", r->len, SQLITE_STATIC);
    bind_blob(st, 5, r->has_corr ? r->corr : NULL, 16);
    bind_blob(st, 6, r->has_caus ? r->caus : NULL, 16);
    sqlite3_bind_int64(st, 7, now_ns());
    j->rc = EB_OK;
    return step_done(st);
}

static void sched_after(eb_store *s, job *j)
{
    row_job *r = (row_job *)j;
    if (j->rc == EB_OK && r->due < s->next_due)
        s->next_due = r->due;
    if (!j->waited)
        free(r);
}

int eb__store_schedule(eb_store *s, const eb_event *ev, int64_t due_ns, bool wait)
{
    row_job *r = row_new(ev, NULL);
    if (r == NULL)
        return EB_ENOMEM;
    r->due = due_ns;
    r->j.run = sched_run;
    r->j.after = sched_after;
    int rc;
    if (wait) {
        rc = run_job(s, &r->j);
        free(r);
    } else if ((rc = post_job(s, &r->j)) != EB_OK) {
        free(r);
    }
    return rc;
}

static int dl_run(eb_store *s, job *j)
{
    row_job *r = (row_job *)j;
    sqlite3_stmt *st = s->w[W_DEADLETTER];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)r->seq);
    sqlite3_bind_blob(st, 2, r->id, 16, SQLITE_STATIC);
    bind_text(st, 3, r->sub);
    bind_text(st, 4, r->topic);
    bind_blob(st, 5, r->key, r->key_len);
    sqlite3_bind_blob64(st, 6, r->len ? r->payload : "", r->len, SQLITE_STATIC);
    sqlite3_bind_int(st, 7, r->error);
    sqlite3_bind_int(st, 8, (int)r->attempts);
    sqlite3_bind_int64(st, 9, now_ns());
    j->rc = EB_OK;
    return step_done(st);
}

void eb__store_deadletter(eb_store *s, const eb_event *ev, const eb_deadletter_info *info)
{
    row_job *r = row_new(ev, info->subscription);
    if (r != NULL) {
        r->seq = eb_event_log_seq(ev);
        r->error = info->error;
        r->attempts = info->attempts;
        r->j.run = dl_run;
        r->j.after = free_after;
        if (post_job(s, &r->j) == EB_OK)
            return;
        free(r);
    }
    slog(s, EB_LOG_ERROR, "no memory to store the dead letter of %s", ev->topic);
}

/* ---- durable subscriptions ---------------------------------------------- */

typedef struct sub_job {
    job j;
    eb__dsub *d;
} sub_job;

static int sub_open_run(eb_store *s, job *j)
{
    eb__dsub *d = ((sub_job *)j)->d;
    sqlite3_stmt *st = s->w[W_SUB_UPSERT];
    bind_text(st, 1, d->name);
    bind_text(st, 2, d->pattern);
    sqlite3_bind_int64(st, 3, now_ns());
    int rc = step_done(st);
    if (rc != SQLITE_OK)
        return rc;
    st = s->w[W_SUB_GET];
    bind_text(st, 1, d->name);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        d->checkpoint = (uint64_t)sqlite3_column_int64(st, 0);
        d->prune_at = d->checkpoint;
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    j->rc = EB_OK;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void dsub_free(eb__dsub *d)
{
    pthread_mutex_destroy(&d->lock);
    free(d->trk);
    free(d->name);
    free(d->pattern);
    free(d);
}

static void dsub_unlink(eb_store *s, eb__dsub *d)
{
    pthread_mutex_lock(&s->lock);
    for (eb__dsub **pp = &s->dsubs; *pp != NULL; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    pthread_mutex_unlock(&s->lock);
}

int eb__dsub_open(eb_store *s, const char *name, const char *pattern, size_t pattern_len,
                  bool idempotent, void *sub, eb__dsub **out)
{
    eb__dsub *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return EB_ENOMEM;
    d->store = s;
    d->sub = sub;
    d->idempotent = idempotent;
    d->plen = pattern_len;
    d->name = strdup(name);
    d->pattern = strndup(pattern, pattern_len);
    atomic_init(&d->live_from, UINT64_MAX);
    pthread_mutex_init(&d->lock, NULL);
    if (d->name == NULL || d->pattern == NULL) {
        dsub_free(d);
        return EB_ENOMEM;
    }
    pthread_mutex_lock(&s->lock);
    for (eb__dsub *o = s->dsubs; o != NULL; o = o->next)
        if (strcmp(o->name, name) == 0) {
            pthread_mutex_unlock(&s->lock);
            dsub_free(d);
            return EB_EEXIST;
        }
    d->next = s->dsubs;
    s->dsubs = d;
    pthread_mutex_unlock(&s->lock);
    sub_job sj = {.j = {.run = sub_open_run}, .d = d};
    int rc = run_job(s, &sj.j);
    if (rc != EB_OK) {
        dsub_unlink(s, d);
        dsub_free(d);
        return rc;
    }
    *out = d;
    return EB_OK;
}

/* Completed in queue order after everything queued before it: every event
   at or below the last assigned sequence is on the FIFO already. */
static void sub_start_after(eb_store *s, job *j)
{
    eb__dsub *d = ((sub_job *)j)->d;
    uint64_t h = s->last_seq;
    /* Release: the live events above h reach the dispatcher through the
       intake after this store (the ring's release/acquire carries it). */
    atomic_store_explicit(&d->live_from, h + 1, memory_order_release);
    if (d->checkpoint >= h || s->bus == NULL)
        return;
    if (!cursor_push(s, d, d->checkpoint, h)) {
        uint64_t ck = dsub_freeze(d); /* it misses its replay this time */
        slog(s, EB_LOG_ERROR, "no memory for the replay of '%s'; its checkpoint stays at %llu",
             d->name, (unsigned long long)ck);
    }
}

void eb__dsub_start(eb__dsub *d)
{
    /* The subscription is routed already and skips live durable events
       until this job ran: it must run. */
    sub_job sj = {.j = {.after = sub_start_after}, .d = d};
    run_job_must(d->store, &sj.j);
}

static void sub_stop_after(eb_store *s, job *j)
{
    eb__dsub *d = ((sub_job *)j)->d;
    /* A waiting checkpoint snapshot drops it: it is about to be freed, and
       its final checkpoint is written by eb__dsub_close. */
    for (size_t i = 0; i < s->nck_wait;) {
        if (s->ck_wait[i].d == d)
            s->ck_wait[i] = s->ck_wait[--s->nck_wait];
        else
            i++;
    }
    /* Its replay cursors: the FIFO drops each when it reaches it. */
    for (size_t i = 0; i < s->f_n; i++) {
        fentry *e = &s->fifo[(s->f_head + i) % s->f_cap];
        cursor *c = e->p;
        if (e->kind == F_CURSOR && c->d == d) {
            c->d = NULL;
            cursor_drain(s, c);
        }
    }
}

void eb__dsub_stop(eb__dsub *d)
{
    sub_job sj = {.j = {.after = sub_stop_after}, .d = d};
    run_job_must(d->store, &sj.j);
}

static int sub_close_run(eb_store *s, job *j)
{
    eb__dsub *d = ((sub_job *)j)->d;
    pthread_mutex_lock(&d->lock);
    uint64_t ck = d->checkpoint;
    d->dirty = false;
    pthread_mutex_unlock(&d->lock);
    sqlite3_stmt *st = s->w[W_CKPT];
    bind_text(st, 1, d->name);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)ck);
    sqlite3_bind_int64(st, 3, now_ns());
    j->rc = EB_OK;
    return step_done(st);
}

void eb__dsub_close(eb__dsub *d)
{
    eb_store *s = d->store;
    sub_job sj = {.j = {.run = sub_close_run, .after = sub_stop_after}, .d = d};
    /* Its after stops a replay cursor that may still point at d. */
    if (run_job_must(s, &sj.j) != EB_OK)
        slog(s, EB_LOG_ERROR, "final checkpoint of '%s' not saved: it resumes from the last one",
             d->name);
    dsub_unlink(s, d);
    dsub_free(d);
}

bool eb__dsub_route(eb__dsub *d, const eb_event *ev)
{
    /* Acquire: pairs with sub_start_after's release. */
    return ev->ext->log_seq >= atomic_load_explicit(&d->live_from, memory_order_acquire);
}

void eb__dsub_track(eb__dsub *d, const eb_event *ev)
{
    uint64_t seq = ev->ext->log_seq;
    pthread_mutex_lock(&d->lock);
    if (d->trk_n == d->trk_cap) {
        size_t cap = d->trk_cap ? d->trk_cap * 2 : 256;
        uint64_t *v = malloc(cap * sizeof(*v));
        if (v != NULL) {
            for (size_t i = 0; i < d->trk_n; i++)
                v[i] = d->trk[(d->trk_head + i) % d->trk_cap];
            free(d->trk);
            d->trk = v;
            d->trk_cap = cap;
            d->trk_head = 0;
        }
    }
    /* Without memory the sequence cannot be tracked, and the checkpoint
       could pass it before it is done: it stops moving instead (events
       after it are delivered again on the next subscribe: at least once). */
    if (d->trk_n < d->trk_cap) {
        d->trk[(d->trk_head + d->trk_n) % d->trk_cap] = seq << 1;
        d->trk_n++;
    } else {
        d->frozen = true;
    }
    pthread_mutex_unlock(&d->lock);
}

void eb__dsub_untrack(eb__dsub *d)
{
    pthread_mutex_lock(&d->lock);
    if (d->trk_n > 0)
        d->trk_n--;
    pthread_mutex_unlock(&d->lock);
}

static int processed_run(eb_store *s, job *j)
{
    row_job *r = (row_job *)j;
    sqlite3_stmt *st = s->w[W_PROCESSED];
    bind_text(st, 1, r->sub);
    sqlite3_bind_blob(st, 2, r->id, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)r->seq);
    j->rc = EB_OK;
    return step_done(st);
}

bool eb__dsub_fresh(eb__dsub *d, const eb_event *ev)
{
    if (!d->idempotent)
        return true;
    eb_store *s = d->store;
    bool fresh = true;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *st = rstmt(s, R_PROCESSED);
    uint8_t id[16];
    eb__event_id(ev, id);
    if (st != NULL) {
        bind_text(st, 1, d->name);
        sqlite3_bind_blob(st, 2, id, 16, SQLITE_TRANSIENT);
        fresh = sqlite3_step(st) != SQLITE_ROW;
        rdone(st);
    }
    pthread_mutex_unlock(&s->rlock);
    return fresh;
}

void eb__dsub_done(eb__dsub *d, const eb_event *ev, bool succeeded)
{
    eb_store *s = d->store;
    uint64_t seq = ev->ext->log_seq;
    if (succeeded && d->idempotent) {
        /* Queued before the checkpoint can pass seq (see the notes). */
        row_job *r = calloc(1, sizeof(*r) + strlen(d->name) + 1);
        if (r != NULL) {
            strcpy(r->data, d->name);
            r->sub = r->data;
            eb__event_id(ev, r->id);
            r->seq = seq;
            r->j.run = processed_run;
            r->j.after = free_after;
            if (post_job(s, &r->j) != EB_OK)
                free(r);
        }
    }
    bool signal = false;
    pthread_mutex_lock(&d->lock);
    /* Binary search in the ascending ring. */
    size_t lo = 0, hi = d->trk_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((d->trk[(d->trk_head + mid) % d->trk_cap] >> 1) < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < d->trk_n && (d->trk[(d->trk_head + lo) % d->trk_cap] >> 1) == seq)
        d->trk[(d->trk_head + lo) % d->trk_cap] |= 1;
    bool moved = false;
    while (!d->frozen && d->trk_n > 0 && (d->trk[d->trk_head] & 1)) {
        d->checkpoint = d->trk[d->trk_head] >> 1;
        d->trk_head = (d->trk_head + 1) % d->trk_cap;
        d->trk_n--;
        moved = true;
    }
    if (moved && !d->dirty) {
        d->dirty = true;
        signal = true;
    }
    pthread_mutex_unlock(&d->lock);
    if (signal) {
        pthread_mutex_lock(&s->lock);
        if (!s->ckpt_dirty) {
            s->ckpt_dirty = true;
            pthread_cond_signal(&s->wake);
        }
        pthread_mutex_unlock(&s->lock);
    }
}

/* ---- opening and closing ------------------------------------------------- */

EB_API void eb_store_options_init(eb_store_options *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->synchronous = EB_STORE_SYNC_FULL;
    opts->busy_timeout_ms = 5000;
    opts->max_pending = DEFAULT_PENDING;
    opts->log_level = EB_LOG_WARN;
    opts->lazy_share = DEFAULT_LAZY_SHARE;
}

/* Runs one statement that returns one integer. */
static int pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        *out = 0;
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* check_and_migrate's work, inside its transaction; with the write lock
   (locked) it creates or migrates the schema, else it sets *need_lock when
   that is needed. */
static int check_locked(eb_store *s, bool locked, bool *need_lock)
{
    int64_t app = 0, ver = 0, objects = 0;
    int rc = pragma_int(s->wdb, "PRAGMA application_id", &app);
    if (rc == SQLITE_OK)
        rc = pragma_int(s->wdb, "PRAGMA user_version", &ver);
    if (rc == SQLITE_OK)
        rc = pragma_int(s->wdb, "SELECT count(*) FROM sqlite_master", &objects);
    if (rc != SQLITE_OK)
        return sql_fail(s, s->wdb, rc, "reading the schema");
    if (app != APP_ID && (app != 0 || objects != 0 || ver != 0)) {
        slog(s, EB_LOG_ERROR, "store %s: not an eventbus store (application_id %lld)", s->path,
             (long long)app);
        return EB_ECORRUPT;
    }
    if (app == APP_ID && ver < 1) {
        /* Ours, but with no version any build wrote: no migration starts
           there (the migrations are indexed by it). */
        slog(s, EB_LOG_ERROR, "store %s: schema version %lld is not one of ours", s->path,
             (long long)ver);
        return EB_ECORRUPT;
    }
    if (ver > EB_STORE_SCHEMA_VERSION) {
        slog(s, EB_LOG_ERROR, "store %s: schema version %lld is newer than this library's %d",
             s->path, (long long)ver, EB_STORE_SCHEMA_VERSION);
        return EB_ENOTSUP;
    }
    if (app == APP_ID) {
        /* A damaged file is refused before anything is written to it. */
        sqlite3_stmt *st;
        rc = sqlite3_prepare_v2(s->wdb, "PRAGMA quick_check(1)", -1, &st, NULL);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(st);
            const char *r = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
            if (rc == SQLITE_ROW && (r == NULL || strcmp(r, "ok") != 0)) {
                /* The check's own finding is the message, not errmsg's
                   "not an error". */
                char found[200]; /* err_msg holds "integrity check: " and this */
                snprintf(found, sizeof found, "%s", r != NULL ? r : "no result");
                sqlite3_finalize(st);
                return fail_with(s, SQLITE_CORRUPT, "integrity check", found);
            }
            sqlite3_finalize(st);
            if (rc == SQLITE_ROW)
                rc = SQLITE_OK;
        }
        if (rc != SQLITE_OK)
            return sql_fail(s, s->wdb, rc, "integrity check");
    }
    if (ver == EB_STORE_SCHEMA_VERSION)
        return EB_OK;
    if (s->opts.read_only && ver >= 1)
        return EB_OK; /* read as it is: what a reader reads is in every
                         version; the next writable open migrates it */
    if (s->opts.read_only)
        return EB_ECORRUPT; /* an empty file */
    if (s->opts.no_create && app == 0) {
        /* An SQLite file with nothing in it is an empty file: no_create
           leaves it as it is (the schema was written into it). */
        slog(s, EB_LOG_ERROR, "store %s: an empty SQLite file, not an eventbus store", s->path);
        return EB_ENOENT;
    }
    if (!locked) {
        *need_lock = true;
        return EB_OK;
    }
    for (int64_t v = ver; v < EB_STORE_SCHEMA_VERSION && rc == SQLITE_OK; v++)
        rc = sqlite3_exec(s->wdb, MIGRATIONS[v], NULL, NULL, NULL);
    if (rc == SQLITE_OK) {
        char sql[96];
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d", APP_ID,
                 EB_STORE_SCHEMA_VERSION);
        rc = sqlite3_exec(s->wdb, sql, NULL, NULL, NULL);
    }
    return rc == SQLITE_OK ? EB_OK : sql_fail(s, s->wdb, rc, "creating the schema");
}

/* Checks the file is ours (or empty), then migrates it to our version. The
   check reads in one transaction, so that it sees another process's schema
   whole or not at all; a file at our version needs nothing more (and no
   write lock, which another process may hold). Creating or migrating takes
   the write lock first and checks again under it: two processes opening a
   new file at once would otherwise both create the schema, the second
   failing. */
static int check_and_migrate(eb_store *s)
{
    bool locked = false, need_lock = false;
    for (;;) {
        int rc = sqlite3_exec(s->wdb, locked ? "BEGIN IMMEDIATE" : "BEGIN", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            return sql_fail(s, s->wdb, rc, "reading the schema");
        int e = check_locked(s, locked, &need_lock);
        if (e == EB_OK && need_lock && !locked) {
            sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
            locked = true;
            continue;
        }
        if (e == EB_OK && (rc = sqlite3_exec(s->wdb, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK)
            e = sql_fail(s, s->wdb, rc, "creating the schema");
        if (e != EB_OK)
            sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
        return e;
    }
}

static int configure(eb_store *s, sqlite3 *db)
{
    static const char *const sync[] = {"FULL", "NORMAL", "OFF"};
    char sql[160];
    sqlite3_busy_timeout(db, (int)s->opts.busy_timeout_ms);
    sqlite3_extended_result_codes(db, 1);
    if (s->opts.read_only)
        return EB_OK;
    snprintf(sql, sizeof(sql), "PRAGMA synchronous = %s", sync[s->opts.synchronous]);
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK && s->opts.max_page_count > 0) {
        snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %u", s->opts.max_page_count);
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    return rc == SQLITE_OK ? EB_OK : sql_fail(s, db, rc, "configuring");
}

/* Switches the file to WAL. Another process opening it at the same time
   may hold a lock the switch needs, and SQLite then answers SQLITE_BUSY at
   once, without its busy handler: retried for busy_timeout_ms. */
static int set_wal(eb_store *s)
{
    int64_t until = now_ns() + (int64_t)s->opts.busy_timeout_ms * 1000000;
    for (;;) {
        sqlite3_stmt *st;
        int rc = sqlite3_prepare_v2(s->wdb, "PRAGMA journal_mode = WAL", -1, &st, NULL);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) {
                const char *m = (const char *)sqlite3_column_text(st, 0);
                rc = m != NULL && strcmp(m, "wal") == 0 ? SQLITE_OK : SQLITE_CANTOPEN;
            }
            sqlite3_finalize(st);
        }
        if (rc == SQLITE_OK)
            return EB_OK;
        if ((rc & 0xff) != SQLITE_BUSY || now_ns() >= until)
            return sql_fail(s, s->wdb, rc, "WAL mode");
        usleep(1000);
    }
}

/* The file eb_store_open created, on its failure: removed if nothing was
   written to it (another process may have opened it since and written a
   schema: that file is in use, and stays). */
static void unlink_if_empty(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0)
        unlink(path);
}

static void store_free(eb_store *s)
{
    for (int i = 0; i < W_COUNT; i++)
        sqlite3_finalize(s->w[i]);
    for (int i = 0; i < R_COUNT; i++)
        sqlite3_finalize(s->r[i]);
    for (int i = 0; i < EB__O_MAX; i++)
        sqlite3_finalize(s->o[i]);
    sqlite3_close(s->rdb);
    sqlite3_close(s->wdb);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->rlock);
    pthread_mutex_destroy(&s->errlock);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->space);
    free(s->q);
    free(s->spare);
    free(s->fifo);
    free(s->ck_wait);
    free(s->path);
    free(s);
}

EB_API int eb_store_open(const char *path, const eb_store_options *opts, eb_store **out)
{
    eb_store_options o;
    if (opts != NULL)
        o = *opts;
    else
        eb_store_options_init(&o);
    if (path == NULL || out == NULL || path[0] == '\0' ||
        (unsigned)o.synchronous > EB_STORE_SYNC_OFF || (unsigned)o.log_level > EB_LOG_ERROR)
        return EB_EINVAL;
    if (o.busy_timeout_ms == 0)
        o.busy_timeout_ms = 5000;
    if (o.busy_timeout_ms > INT32_MAX)
        return EB_EINVAL;
    if (o.max_pending == 0)
        o.max_pending = DEFAULT_PENDING;
    if (o.lazy_share == 0)
        o.lazy_share = DEFAULT_LAZY_SHARE;
    if (o.lazy_share > 100)
        return EB_EINVAL;

    /* A new file is created here with mode 0600 (SQLite would use 0644),
       and O_EXCL: never someone else's file. */
    struct stat stt;
    bool created = false;
    if (stat(path, &stt) != 0) {
        if (errno != ENOENT)
            return EB_EIO;
        if (o.read_only || o.no_create)
            return EB_ENOENT;
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            return EB_EIO; /* no such directory, no permission */
        if (fd >= 0) {
            close(fd);
            created = true;
        }
    } else if (!S_ISREG(stt.st_mode)) {
        return EB_EIO; /* a directory or a device: cannot be a store file */
    } else if (stt.st_size == 0 && (o.no_create || o.read_only)) {
        return EB_ENOENT; /* an empty file is no store yet: as if missing */
    }

    eb_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        if (created)
            unlink_if_empty(path);
        return EB_ENOMEM;
    }
    s->opts = o;
    s->path = strdup(path);
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->rlock, NULL);
    pthread_mutex_init(&s->errlock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &ca);
    pthread_cond_init(&s->space, &ca);
    pthread_condattr_destroy(&ca);
    eb__ec_init(&s->done_ec);
    s->next_due = INT64_MAX;
    if (getrandom(s->owner, sizeof(s->owner), 0) != sizeof(s->owner) ||
        getrandom(&s->nonce, sizeof(s->nonce), 0) != sizeof(s->nonce)) {
        uint64_t t = (uint64_t)now_ns() ^ (uint64_t)getpid() << 32;
        memcpy(s->owner, &t, sizeof(t));
        memcpy(s->owner + 8, &s, sizeof(void *) < 8 ? sizeof(void *) : 8);
        s->nonce = t;
    }
    int rc = s->path == NULL ? EB_ENOMEM : EB_OK;
    int flags = SQLITE_OPEN_NOMUTEX | (o.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE);
    if (rc == EB_OK) {
        int src = sqlite3_open_v2(path, &s->wdb, flags, NULL);
        if (src != SQLITE_OK) {
            rc = sql_fail(s, s->wdb, src, "open");
        } else if (!o.read_only && sqlite3_db_readonly(s->wdb, "main") == 1) {
            /* SQLite opens a file it may not write read-only, silently:
               refuse it here rather than fail every write later. */
            slog(s, EB_LOG_ERROR, "store %s: the file is read-only (open it with read_only)", path);
            rc = EB_EIO;
        }
    }
    if (rc == EB_OK)
        rc = configure(s, s->wdb);
    if (rc == EB_OK)
        rc = check_and_migrate(s);
    if (rc == EB_OK) {
        int src = sqlite3_open_v2(path, &s->rdb, SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_READONLY, NULL);
        if (src != SQLITE_OK)
            rc = sql_fail(s, s->rdb, src, "open (reader)");
        else
            sqlite3_busy_timeout(s->rdb, (int)o.busy_timeout_ms);
    }
    for (int i = 0; i < W_COUNT && rc == EB_OK && !o.read_only; i++) {
        int src =
            sqlite3_prepare_v3(s->wdb, WSQL[i], -1, SQLITE_PREPARE_PERSISTENT, &s->w[i], NULL);
        if (src != SQLITE_OK)
            rc = sql_fail(s, s->wdb, src, "prepare");
    }
    /* WAL last: switching writes the file header, and a file refused by
       any check above (a schema quick_check cannot see is refused by the
       prepares) must be left as it was. */
    if (rc == EB_OK && !o.read_only)
        rc = set_wal(s);
    if (rc == EB_OK && !o.read_only) {
        int64_t mx = 0;
        int src = pragma_int(s->wdb, "SELECT coalesce(max(seq), 0) FROM eb_events", &mx);
        if (src != SQLITE_OK)
            rc = sql_fail(s, s->wdb, src, "reading the log");
        s->last_seq = (uint64_t)mx;
        sched_refresh(s);
        s->ckpt_at = 0;
        if (rc == EB_OK) {
            if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
                rc = EB_EIO;
            } else {
                s->has_writer = true;
                (void)pthread_setname_np(s->writer, "eb-store");
            }
        }
    }
    if (rc != EB_OK) {
        store_free(s);
        if (created)
            unlink_if_empty(path);
        return rc;
    }
    *out = s;
    return EB_OK;
}

EB_API void eb_store_close(eb_store *s)
{
    if (s == NULL)
        return;
    /* A bus still attached (its eb_bus_shutdown timed out) would use the
       freed store: refuse, and say so. */
    pthread_mutex_lock(&s->lock);
    bool attached = s->bus != NULL;
    pthread_mutex_unlock(&s->lock);
    if (attached) {
        slog(s, EB_LOG_ERROR, "store %s not closed: a bus still uses it (shut it down first)",
             s->path);
        return;
    }
    if (s->has_writer) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->writer, NULL);
        /* Buses are destroyed first, and they close their durable
           subscriptions (final checkpoints); one still open is a misuse. */
        for (eb__dsub *d = s->dsubs; d != NULL; d = d->next)
            slog(s, EB_LOG_WARN, "store closed with durable subscription '%s' still open", d->name);
    }
    store_free(s);
}

EB_API int eb_store_flush(eb_store *s, int64_t timeout_ns)
{
    if (s == NULL)
        return EB_EINVAL;
    if (!s->has_writer)
        return EB_ENOTSUP;
    /* A barrier: completes after everything queued before it. Its job lives
       on the heap so a timed-out caller can leave it behind. */
    job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return EB_ENOMEM;
    j->waited = true;
    pthread_mutex_lock(&s->lock);
    /* Checkpoints that moved before the call go with the barrier (the
       writer takes them when it takes the queue). */
    if (s->ckpt_dirty)
        s->ckpt_now = true;
    int rc = q_push_locked(s, j, IT_JOB);
    if (rc == EB_OK)
        rc = wait_done_unlock(s, j, eb__deadline_after(timeout_ns < 0 ? -1 : timeout_ns));
    else
        pthread_mutex_unlock(&s->lock);
    if (rc == EB_ETIMEDOUT)
        j = NULL; /* abandoned: the writer frees it */
    if (j != NULL) {
        if (rc == EB_OK && j->rc == EB_OK &&
            atomic_load_explicit(&s->failed_since_open, memory_order_relaxed))
            rc = EB_EIO;
        else if (rc == EB_OK)
            rc = j->rc;
        free(j);
    }
    return rc;
}

EB_API int eb_store_last_error(eb_store *s, char *msg, size_t cap)
{
    if (s == NULL)
        return 0;
    pthread_mutex_lock(&s->errlock);
    int code = s->err_code;
    if (msg != NULL && cap > 0)
        snprintf(msg, cap, "%s", s->err_msg);
    pthread_mutex_unlock(&s->errlock);
    return code;
}

/* ---- reading ------------------------------------------------------------- */

static const void *col_blob(sqlite3_stmt *st, int c, size_t *len)
{
    const void *p = sqlite3_column_blob(st, c);
    *len = (size_t)sqlite3_column_bytes(st, c);
    return sqlite3_column_type(st, c) == SQLITE_NULL ? NULL : (p != NULL ? p : "");
}

static const char *col_text(sqlite3_stmt *st, int c)
{
    const char *t = (const char *)sqlite3_column_text(st, c);
    return t != NULL ? t : "";
}

static sqlite3_int64 limit_of(size_t limit)
{
    return limit == 0 || limit > INT64_MAX ? -1 : (sqlite3_int64)limit;
}

/* Finishes a read loop: the step result of the last sqlite3_step. */
static int read_end(eb_store *s, sqlite3_stmt *st, int step, int stopped)
{
    rdone(st);
    if (stopped != 0)
        return stopped;
    return step == SQLITE_DONE ? EB_OK : sql_fail(s, s->rdb, step, "query");
}

EB_API int eb_store_stats_get(eb_store *s, eb_store_stats *out)
{
    if (s == NULL || out == NULL)
        return EB_EINVAL;
    eb_store_stats st = {0};
    int rc = EB_OK;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *q = rstmt(s, R_MAXSEQ);
    if (q == NULL) {
        rc = EB_EIO;
    } else {
        int step = sqlite3_step(q);
        if (step == SQLITE_ROW) {
            st.last_seq = (uint64_t)sqlite3_column_int64(q, 0);
            st.first_seq = (uint64_t)sqlite3_column_int64(q, 1);
            st.events = st.last_seq > 0 ? st.last_seq - st.first_seq + 1 : 0;
        } else {
            rc = sql_fail(s, s->rdb, step, "stats");
        }
        rdone(q);
    }
    q = rc == EB_OK ? rstmt(s, R_COUNTS) : NULL;
    if (q != NULL) {
        int step = sqlite3_step(q);
        if (step == SQLITE_ROW) {
            uint64_t *f[] = {&st.subscriptions, &st.outbox_ready,  &st.outbox_in_progress,
                             &st.outbox_done,   &st.outbox_failed, &st.scheduled,
                             &st.deadletters,   &st.sagas,         &st.file_bytes};
            for (int i = 0; i < 9; i++)
                *f[i] = (uint64_t)sqlite3_column_int64(q, i);
        } else {
            rc = sql_fail(s, s->rdb, step, "stats");
        }
        rdone(q);
    } else if (rc == EB_OK) {
        rc = EB_EIO;
    }
    pthread_mutex_unlock(&s->rlock);
    if (rc != EB_OK)
        return rc;
    st.commits = atomic_load_explicit(&s->commits, memory_order_relaxed);
    st.appended = atomic_load_explicit(&s->appended, memory_order_relaxed);
    st.write_errors = atomic_load_explicit(&s->write_errors, memory_order_relaxed);
    st.lazy_pauses = atomic_load_explicit(&s->lazy_pauses, memory_order_relaxed);
    pthread_mutex_lock(&s->lock);
    st.pending = backlog_locked(s);
    pthread_mutex_unlock(&s->lock);
    *out = st;
    return EB_OK;
}

EB_API int eb_store_events(eb_store *s, const eb_store_query *q, eb_stored_event_fn fn, void *ctx)
{
    eb_store_query all = {0};
    if (q == NULL)
        q = &all;
    size_t pl = q->topic != NULL ? strnlen(q->topic, EB_TOPIC_MAX + 1) : 0;
    if (s == NULL || fn == NULL || pl > EB_TOPIC_MAX || q->after_seq > INT64_MAX)
        return EB_EINVAL;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *st = rstmt(s, R_EVENTS);
    if (st == NULL) {
        pthread_mutex_unlock(&s->rlock);
        return EB_EIO;
    }
    sqlite3_bind_int64(st, 1, (sqlite3_int64)q->after_seq);
    sqlite3_bind_int64(st, 2, q->since_ns > 0 ? q->since_ns : INT64_MIN);
    sqlite3_bind_int64(st, 3, q->until_ns > 0 ? q->until_ns : INT64_MAX);
    /* The topic filter runs here, so the SQL limit cannot apply. */
    sqlite3_bind_int64(st, 4, q->topic != NULL ? -1 : limit_of(q->limit));
    int step, stopped = 0;
    size_t n = 0;
    while (stopped == 0 && (q->limit == 0 || n < q->limit) &&
           (step = sqlite3_step(st)) == SQLITE_ROW) {
        eb_stored_event e = {0};
        e.seq = (uint64_t)sqlite3_column_int64(st, 0);
        size_t idl;
        const void *id = col_blob(st, 1, &idl);
        if (id != NULL && idl == 16)
            memcpy(e.id, id, 16);
        e.timestamp_ns = sqlite3_column_int64(st, 2);
        e.topic = col_text(st, 3);
        if (q->topic != NULL &&
            !eb__topic_matches(q->topic, pl, e.topic, (size_t)sqlite3_column_bytes(st, 3)))
            continue;
        e.key = col_blob(st, 4, &e.key_len);
        e.payload = col_blob(st, 5, &e.payload_len);
        if (e.payload == NULL)
            e.payload = "";
        size_t l;
        const void *c = col_blob(st, 6, &l);
        if ((e.has_correlation = c != NULL && l == 16))
            memcpy(e.correlation_id, c, 16);
        c = col_blob(st, 7, &l);
        if ((e.has_causation = c != NULL && l == 16))
            memcpy(e.causation_id, c, 16);
        n++;
        stopped = fn(&e, ctx);
    }
    if (stopped != 0 || (q->limit != 0 && n >= q->limit))
        step = SQLITE_DONE;
    int rc = read_end(s, st, step, stopped);
    pthread_mutex_unlock(&s->rlock);
    return rc;
}

EB_API int eb_store_subscriptions(eb_store *s,
                                  int (*fn)(const eb_store_subscription_info *info, void *ctx),
                                  void *ctx)
{
    if (s == NULL || fn == NULL)
        return EB_EINVAL;
    eb_store_stats ls;
    int rc = eb_store_stats_get(s, &ls);
    if (rc != EB_OK)
        return rc;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *st = rstmt(s, R_SUBS);
    if (st == NULL) {
        pthread_mutex_unlock(&s->rlock);
        return EB_EIO;
    }
    int step, stopped = 0;
    while (stopped == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        eb_store_subscription_info i = {.name = col_text(st, 0), .pattern = col_text(st, 1)};
        i.checkpoint = (uint64_t)sqlite3_column_int64(st, 2);
        i.updated_ns = sqlite3_column_int64(st, 3);
        i.lag = ls.last_seq > i.checkpoint ? ls.last_seq - i.checkpoint : 0;
        stopped = fn(&i, ctx);
    }
    rc = read_end(s, st, stopped ? SQLITE_DONE : step, stopped);
    pthread_mutex_unlock(&s->rlock);
    return rc;
}

/* ---- outbox -------------------------------------------------------------- */

typedef struct ob_job {
    job j;
    int op;
    int64_t id;
    const char *topic, *error;
    const void *key, *payload;
    size_t key_len, len, max;
    int64_t lease, retry, out_id;
    size_t count;
    eb_outbox_batch *batch;
} ob_job;

enum { OB_ADD, OB_CLAIM, OB_ACK, OB_ABANDON, OB_FAIL, OB_REAP };

/* Outbox and maintenance statements are prepared once per store on the
   writer connection, the first time they are used (writer thread). */
enum {
    O_ADD,
    O_READY,
    O_EXPIRED,
    O_TAKE,
    O_ACK,
    O_ABANDON,
    O_FAIL,
    O_REAP,
    O_EXISTS,
    O_DL_REQUEUE_ONE,
    O_DL_REQUEUE_ALL,
    O_DL_DEL_ONE,
    O_DL_DEL_ALL,
    O_SAGA_CREATE,
    O_SAGA_SAVE,
    O_SAGA_REMOVE,
    O_SAGA_DISPATCHED,
    O_SAGA_EXISTS,
    O_COUNT
};

static const char *const OSQL[O_COUNT] = {
    /* A row is claimable from next_attempt (READY: its creation, then its
       retry time) or lease_until (IN_PROGRESS: the lease ran out); claims
       take the rows claimable longest first (ob_claim). Rows added by
       earlier builds have 0 there: they come first. */
    [O_ADD] = "INSERT INTO eb_outbox(topic, key, payload, created, next_attempt)"
              " VALUES(?1, ?2, ?3, ?4, ?4)",
    [O_READY] = "SELECT id, next_attempt FROM eb_outbox WHERE status = 0 AND next_attempt <= ?1"
                " ORDER BY next_attempt, id LIMIT ?2",
    [O_EXPIRED] = "SELECT id, lease_until FROM eb_outbox WHERE status = 1 AND lease_until < ?1"
                  " ORDER BY lease_until, id LIMIT ?2",
    [O_TAKE] = "UPDATE eb_outbox SET status = 1, owner = ?2, lease_until = ?3,"
               " attempts = attempts + 1 WHERE id = ?1"
               " RETURNING id, topic, key, payload, attempts, created, last_error",
    /* A row its handle claimed is still its own while nobody took it over:
       also once a reap made it READY (the reap keeps the owner). */
    [O_ACK] = "UPDATE eb_outbox SET status = 2, lease_until = 0 WHERE id = ?1 AND status <= 1"
              " AND owner = ?2",
    [O_ABANDON] = "UPDATE eb_outbox SET status = 0, owner = NULL, lease_until = 0,"
                  " next_attempt = ?3 + CASE WHEN ?4 >= 0 THEN ?4 ELSE"
                  " min(60000000000, 100000000 * (1 << min(attempts - 1, 20))) END,"
                  " last_error = ?5 WHERE id = ?1 AND status <= 1 AND owner = ?2",
    [O_FAIL] = "UPDATE eb_outbox SET status = 3, lease_until = 0, last_error = ?3"
               " WHERE id = ?1 AND status <= 1 AND owner = ?2",
    [O_REAP] =
        "UPDATE eb_outbox SET status = 0, lease_until = 0 WHERE status = 1 AND lease_until < ?1",
    [O_EXISTS] = "SELECT 1 FROM eb_outbox WHERE id = ?1",
    [O_DL_REQUEUE_ONE] = "INSERT INTO eb_scheduled(due, topic, key, payload, created)"
                         " SELECT ?2, topic, key, payload, ?2 FROM eb_deadletters WHERE id = ?1",
    [O_DL_REQUEUE_ALL] = "INSERT INTO eb_scheduled(due, topic, key, payload, created)"
                         " SELECT ?2, topic, key, payload, ?2 FROM eb_deadletters ORDER BY id",
    [O_DL_DEL_ONE] = "DELETE FROM eb_deadletters WHERE id = ?1",
    [O_DL_DEL_ALL] = "DELETE FROM eb_deadletters",
    [O_SAGA_CREATE] = "INSERT INTO eb_sagas(saga, key, version, completed, state, event_id,"
                      " outbox, updated, start_id) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [O_SAGA_SAVE] = "UPDATE eb_sagas SET version = ?4, completed = ?5, state = ?6,"
                    " event_id = ?7, outbox = ?8, updated = ?9"
                    " WHERE saga = ?1 AND key = ?2 AND version = ?3 AND length(state) = ?10",
    [O_SAGA_REMOVE] = "DELETE FROM eb_sagas WHERE saga = ?1 AND key = ?2 AND version = ?3",
    [O_SAGA_DISPATCHED] = "UPDATE eb_sagas SET outbox = NULL WHERE saga = ?1 AND key = ?2"
                          " AND version = ?3",
    [O_SAGA_EXISTS] = "SELECT length(state) FROM eb_sagas WHERE saga = ?1 AND key = ?2",
};

_Static_assert(O_COUNT <= EB__O_MAX, "room for the outbox statements");

/* A statement of the second writer set, prepared on first use (writer
   thread only). NULL with *err set on failure. */
static sqlite3_stmt *ostmt(eb_store *s, int i, int *err)
{
    if (s->o[i] == NULL) {
        int rc = sqlite3_prepare_v3(s->wdb, OSQL[i], -1, SQLITE_PREPARE_PERSISTENT, &s->o[i], NULL);
        if (rc != SQLITE_OK) {
            s->o[i] = NULL;
            *err = rc;
        }
    }
    return s->o[i];
}

static int need_writer(eb_store *s)
{
    return s == NULL ? EB_EINVAL : (s->has_writer ? EB_OK : EB_ENOTSUP);
}

/* Claimed rows are copied into one allocation per row. */
static int claim_row(ob_job *o, sqlite3_stmt *st)
{
    eb_outbox_batch *b = o->batch;
    size_t kl, pl;
    const void *key = col_blob(st, 2, &kl);
    const void *payload = col_blob(st, 3, &pl);
    const char *topic = col_text(st, 1), *err = col_text(st, 6);
    size_t tl = strlen(topic), el = strlen(err);
    char *mem = malloc(tl + 1 + kl + pl + el + 1);
    if (mem == NULL)
        return SQLITE_NOMEM;
    eb_outbox_message *m = &b->msgs[b->n++];
    memset(m, 0, sizeof(*m));
    m->id = sqlite3_column_int64(st, 0);
    memcpy(mem, topic, tl + 1);
    m->topic = mem;
    char *p = mem + tl + 1;
    if (key != NULL) {
        memcpy(p, key, kl);
        m->key = p;
        m->key_len = kl;
        p += kl;
    }
    if (pl)
        memcpy(p, payload, pl);
    m->payload = p;
    m->payload_len = pl;
    p += pl;
    memcpy(p, err, el + 1);
    m->last_error = p;
    m->status = EB_OUTBOX_IN_PROGRESS;
    m->attempts = (unsigned)sqlite3_column_int(st, 4);
    m->created_ns = sqlite3_column_int64(st, 5);
    m->lease_until_ns = o->lease;
    return SQLITE_OK;
}

static int ob_claim(eb_store *s, ob_job *o)
{
    int err = SQLITE_OK;
    int64_t now = now_ns();
    /* Up to max of each kind, each in the order they became claimable;
       merged, the first max of both (an expired lease does not wait behind
       a backlog of ready rows, nor a retried row behind newer ones). */
    int64_t cand[2][512][2]; /* [ready, expired][i] = {claimable since, id} */
    size_t cn[2] = {0, 0};
    for (int k = 0; k < 2 && err == SQLITE_OK; k++) {
        sqlite3_stmt *st = ostmt(s, k == 0 ? O_READY : O_EXPIRED, &err);
        if (st == NULL)
            break;
        sqlite3_bind_int64(st, 1, now);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)o->max);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW && cn[k] < o->max) {
            cand[k][cn[k]][0] = sqlite3_column_int64(st, 1);
            cand[k][cn[k]][1] = sqlite3_column_int64(st, 0);
            cn[k]++;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            err = rc;
    }
    if (err != SQLITE_OK)
        return err;
    int64_t ids[512];
    size_t n = 0, r = 0, e = 0;
    while (n < o->max && (r < cn[0] || e < cn[1])) {
        bool ready =
            e == cn[1] ||
            (r < cn[0] && (cand[0][r][0] < cand[1][e][0] ||
                           (cand[0][r][0] == cand[1][e][0] && cand[0][r][1] < cand[1][e][1])));
        ids[n++] = ready ? cand[0][r++][1] : cand[1][e++][1];
    }
    o->batch->msgs = n ? calloc(n, sizeof(eb_outbox_message)) : NULL;
    if (n && o->batch->msgs == NULL)
        return SQLITE_NOMEM;
    o->lease = eb__ns_after(now, o->lease);
    sqlite3_stmt *take = ostmt(s, O_TAKE, &err);
    for (size_t i = 0; i < n && take != NULL && err == SQLITE_OK; i++) {
        sqlite3_bind_int64(take, 1, ids[i]);
        sqlite3_bind_blob(take, 2, s->owner, 16, SQLITE_STATIC);
        sqlite3_bind_int64(take, 3, o->lease);
        int rc = sqlite3_step(take);
        if (rc == SQLITE_ROW)
            err = claim_row(o, take);
        else if (rc != SQLITE_DONE)
            err = rc;
        sqlite3_reset(take);
    }
    return err;
}

/* After an UPDATE that matched nothing: EB_ENOENT or EB_ECONFLICT. */
static int ob_missing(eb_store *s, int64_t id, int *err)
{
    sqlite3_stmt *st = ostmt(s, O_EXISTS, err);
    if (st == NULL)
        return EB_EIO;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        *err = rc;
    return rc == SQLITE_ROW ? EB_ECONFLICT : EB_ENOENT;
}

static int ob_run(eb_store *s, job *j)
{
    ob_job *o = (ob_job *)j;
    int err = SQLITE_OK;
    sqlite3_stmt *st = NULL;
    j->rc = EB_OK;
    switch (o->op) {
    case OB_ADD:
        if ((st = ostmt(s, O_ADD, &err)) == NULL)
            return err;
        bind_text(st, 1, o->topic);
        bind_blob(st, 2, o->key, o->key_len);
        sqlite3_bind_blob64(st, 3, o->len ? o->payload : "", o->len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, now_ns());
        err = step_done(st);
        o->out_id = sqlite3_last_insert_rowid(s->wdb);
        return err;
    case OB_CLAIM:
        return ob_claim(s, o);
    case OB_REAP:
        if ((st = ostmt(s, O_REAP, &err)) == NULL)
            return err;
        sqlite3_bind_int64(st, 1, now_ns());
        err = step_done(st);
        o->count = (size_t)sqlite3_changes(s->wdb);
        return err;
    case OB_ACK:
        st = ostmt(s, O_ACK, &err);
        break;
    case OB_ABANDON:
        st = ostmt(s, O_ABANDON, &err);
        if (st != NULL) {
            sqlite3_bind_int64(st, 3, now_ns());
            sqlite3_bind_int64(st, 4, o->retry);
            bind_text(st, 5, o->error != NULL ? o->error : "");
        }
        break;
    case OB_FAIL:
        st = ostmt(s, O_FAIL, &err);
        if (st != NULL)
            bind_text(st, 3, o->error != NULL ? o->error : "");
        break;
    }
    if (st == NULL)
        return err;
    sqlite3_bind_int64(st, 1, o->id);
    sqlite3_bind_blob(st, 2, s->owner, 16, SQLITE_STATIC);
    err = step_done(st);
    if (err == SQLITE_OK && sqlite3_changes(s->wdb) == 0)
        j->rc = ob_missing(s, o->id, &err);
    return err;
}

static bool message_ok(const char *topic, const void *payload, size_t len, const void *key,
                       size_t key_len)
{
    return topic != NULL && strnlen(topic, EB_TOPIC_MAX + 1) <= EB_TOPIC_MAX &&
           (payload != NULL || len == 0) && (key != NULL || key_len == 0) && key_len <= 255;
}

EB_API int eb_outbox_add(eb_store *s, const char *topic, const void *payload, size_t len,
                         const void *key, size_t key_len, int64_t *id)
{
    int rc = need_writer(s);
    if (rc != EB_OK || !message_ok(topic, payload, len, key, key_len))
        return rc != EB_OK ? rc : EB_EINVAL;
    ob_job o = {.j = {.run = ob_run},
                .op = OB_ADD,
                .topic = topic,
                .payload = payload,
                .len = len,
                .key = key,
                .key_len = key_len};
    rc = run_job(s, &o.j);
    if (rc == EB_OK && id != NULL)
        *id = o.out_id;
    return rc;
}

EB_API void eb_outbox_batch_free(eb_outbox_batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n; i++)
        free((void *)b->msgs[i].topic);
    free(b->msgs);
    free(b);
}

EB_API int eb_outbox_claim(eb_store *s, size_t max, int64_t lease_ns, eb_outbox_batch **out)
{
    int rc = need_writer(s);
    if (rc != EB_OK || out == NULL || max == 0 || max > 512 || lease_ns <= 0)
        return rc != EB_OK ? rc : EB_EINVAL;
    eb_outbox_batch *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return EB_ENOMEM;
    ob_job o = {.j = {.run = ob_run}, .op = OB_CLAIM, .max = max, .lease = lease_ns, .batch = b};
    rc = run_job(s, &o.j);
    if (rc != EB_OK) {
        eb_outbox_batch_free(b);
        return rc;
    }
    *out = b;
    return EB_OK;
}

static int ob_simple(eb_store *s, int op, int64_t id, const char *error, int64_t retry)
{
    int rc = need_writer(s);
    if (rc != EB_OK || id <= 0)
        return rc != EB_OK ? rc : EB_EINVAL;
    ob_job o = {.j = {.run = ob_run}, .op = op, .id = id, .error = error, .retry = retry};
    return run_job(s, &o.j);
}

EB_API int eb_outbox_ack(eb_store *s, int64_t id)
{
    return ob_simple(s, OB_ACK, id, NULL, 0);
}

EB_API int eb_outbox_abandon(eb_store *s, int64_t id, const char *error, int64_t retry_after_ns)
{
    return ob_simple(s, OB_ABANDON, id, error, retry_after_ns < 0 ? -1 : retry_after_ns);
}

EB_API int eb_outbox_fail(eb_store *s, int64_t id, const char *error)
{
    return ob_simple(s, OB_FAIL, id, error, 0);
}

EB_API int eb_outbox_reap(eb_store *s, size_t *reaped)
{
    int rc = need_writer(s);
    if (rc != EB_OK)
        return rc;
    ob_job o = {.j = {.run = ob_run}, .op = OB_REAP};
    rc = run_job(s, &o.j);
    if (rc == EB_OK && reaped != NULL)
        *reaped = o.count;
    return rc;
}

EB_API int eb_outbox_list(eb_store *s, int status, size_t limit,
                          int (*fn)(const eb_outbox_message *msg, void *ctx), void *ctx)
{
    if (s == NULL || fn == NULL || status > EB_OUTBOX_FAILED)
        return EB_EINVAL;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *st = rstmt(s, R_OUTBOX);
    if (st == NULL) {
        pthread_mutex_unlock(&s->rlock);
        return EB_EIO;
    }
    sqlite3_bind_int(st, 1, status < 0 ? -1 : status);
    sqlite3_bind_int64(st, 2, limit_of(limit));
    int step, stopped = 0;
    while (stopped == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        eb_outbox_message m = {0};
        m.id = sqlite3_column_int64(st, 0);
        m.topic = col_text(st, 1);
        m.key = col_blob(st, 2, &m.key_len);
        m.payload = col_blob(st, 3, &m.payload_len);
        if (m.payload == NULL)
            m.payload = "";
        m.status = (eb_outbox_status)sqlite3_column_int(st, 4);
        m.attempts = (unsigned)sqlite3_column_int(st, 5);
        m.created_ns = sqlite3_column_int64(st, 6);
        m.next_attempt_ns = sqlite3_column_int64(st, 7);
        m.lease_until_ns = sqlite3_column_int64(st, 8);
        m.last_error = col_text(st, 9);
        stopped = fn(&m, ctx);
    }
    int rc = read_end(s, st, stopped ? SQLITE_DONE : step, stopped);
    pthread_mutex_unlock(&s->rlock);
    return rc;
}

/* ---- dead letters -------------------------------------------------------- */

EB_API int eb_store_deadletters(eb_store *s, size_t limit,
                                int (*fn)(const eb_store_deadletter *dl, void *ctx), void *ctx)
{
    if (s == NULL || fn == NULL)
        return EB_EINVAL;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *st = rstmt(s, R_DEADLETTERS);
    if (st == NULL) {
        pthread_mutex_unlock(&s->rlock);
        return EB_EIO;
    }
    sqlite3_bind_int64(st, 1, limit_of(limit));
    int step, stopped = 0;
    while (stopped == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        eb_store_deadletter d = {0};
        d.id = sqlite3_column_int64(st, 0);
        d.seq = (uint64_t)sqlite3_column_int64(st, 1);
        size_t l;
        const void *id = col_blob(st, 2, &l);
        if (id != NULL && l == 16)
            memcpy(d.event_id, id, 16);
        d.subscription = col_text(st, 3);
        d.topic = col_text(st, 4);
        d.key = col_blob(st, 5, &d.key_len);
        d.payload = col_blob(st, 6, &d.payload_len);
        if (d.payload == NULL)
            d.payload = "";
        d.error = sqlite3_column_int(st, 7);
        d.attempts = (unsigned)sqlite3_column_int(st, 8);
        d.failed_ns = sqlite3_column_int64(st, 9);
        stopped = fn(&d, ctx);
    }
    int rc = read_end(s, st, stopped ? SQLITE_DONE : step, stopped);
    pthread_mutex_unlock(&s->rlock);
    return rc;
}

typedef struct dl_job {
    job j;
    int64_t id;
    bool requeue;
    size_t count;
} dl_job;

static int dl_admin_run(eb_store *s, job *j)
{
    dl_job *o = (dl_job *)j;
    int err = SQLITE_OK;
    j->rc = EB_OK;
    int64_t now = now_ns();
    if (o->requeue) {
        sqlite3_stmt *st = ostmt(s, o->id ? O_DL_REQUEUE_ONE : O_DL_REQUEUE_ALL, &err);
        if (st == NULL)
            return err;
        if (o->id)
            sqlite3_bind_int64(st, 1, o->id);
        sqlite3_bind_int64(st, 2, now);
        if ((err = step_done(st)) != SQLITE_OK)
            return err;
    }
    sqlite3_stmt *del = ostmt(s, o->id ? O_DL_DEL_ONE : O_DL_DEL_ALL, &err);
    if (del == NULL)
        return err;
    if (o->id)
        sqlite3_bind_int64(del, 1, o->id);
    err = step_done(del);
    o->count = (size_t)sqlite3_changes(s->wdb);
    if (err == SQLITE_OK && o->id && o->count == 0)
        j->rc = EB_ENOENT;
    if (err == SQLITE_OK && o->requeue && o->count > 0 && now < s->next_due)
        s->next_due = now; /* fire them now if a bus is attached */
    return err;
}

static int dl_admin(eb_store *s, int64_t id, bool requeue, size_t *count)
{
    int rc = need_writer(s);
    if (rc != EB_OK || id < 0)
        return rc != EB_OK ? rc : EB_EINVAL;
    dl_job o = {.j = {.run = dl_admin_run}, .id = id, .requeue = requeue};
    rc = run_job(s, &o.j);
    if (rc == EB_OK && count != NULL)
        *count = o.count;
    if (rc == EB_OK && requeue) {
        pthread_mutex_lock(&s->lock);
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
    }
    return rc;
}

EB_API int eb_store_deadletter_requeue(eb_store *s, int64_t id, size_t *count)
{
    return dl_admin(s, id, true, count);
}

EB_API int eb_store_deadletter_purge(eb_store *s, int64_t id, size_t *count)
{
    return dl_admin(s, id, false, count);
}

/* ---- saga store ---------------------------------------------------------- */

typedef struct sql_saga_store {
    eb_saga_store base; /* first: the helper sees only this */
    eb_store *s;
} sql_saga_store;

typedef struct saga_job {
    job j;
    int op; /* 0 create, 1 save, 2 remove, 3 dispatched */
    const char *saga;
    const void *key;
    size_t key_len;
    uint64_t expected;
    const eb_saga_record *rec;
} saga_job;

static int saga_run(eb_store *s, job *j)
{
    saga_job *g = (saga_job *)j;
    static const int which[] = {O_SAGA_CREATE, O_SAGA_SAVE, O_SAGA_REMOVE, O_SAGA_DISPATCHED};
    int err = SQLITE_OK;
    sqlite3_stmt *st = ostmt(s, which[g->op], &err);
    if (st == NULL)
        return err;
    j->rc = EB_OK;
    bind_text(st, 1, g->saga);
    sqlite3_bind_blob(st, 2, g->key_len ? g->key : "", (int)g->key_len, SQLITE_STATIC);
    const eb_saga_record *r = g->rec;
    switch (g->op) {
    case 0:
        sqlite3_bind_int64(st, 3, (sqlite3_int64)r->version);
        sqlite3_bind_int(st, 4, r->completed);
        sqlite3_bind_blob64(st, 5, r->state_size ? r->state : "", r->state_size, SQLITE_STATIC);
        sqlite3_bind_blob(st, 6, r->event_id, 16, SQLITE_STATIC);
        bind_blob(st, 7, r->outbox_len ? r->outbox : NULL, r->outbox_len);
        sqlite3_bind_int64(st, 8, now_ns());
        sqlite3_bind_blob(st, 9, r->start_id, 16, SQLITE_STATIC);
        break;
    case 1:
        sqlite3_bind_int64(st, 3, (sqlite3_int64)g->expected);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)r->version);
        sqlite3_bind_int(st, 5, r->completed);
        sqlite3_bind_blob64(st, 6, r->state_size ? r->state : "", r->state_size, SQLITE_STATIC);
        sqlite3_bind_blob(st, 7, r->event_id, 16, SQLITE_STATIC);
        bind_blob(st, 8, r->outbox_len ? r->outbox : NULL, r->outbox_len);
        sqlite3_bind_int64(st, 9, now_ns());
        sqlite3_bind_int64(st, 10, (sqlite3_int64)r->state_size);
        break;
    default:
        sqlite3_bind_int64(st, 3, (sqlite3_int64)g->expected);
        break;
    }
    err = step_done(st);
    if (g->op == 0 && (err & 0xff) == SQLITE_CONSTRAINT) {
        j->rc = EB_EEXIST; /* the statement was undone; the transaction goes on */
        return SQLITE_OK;
    }
    if (err != SQLITE_OK || g->op == 0 || sqlite3_changes(s->wdb) > 0)
        return err;
    /* Nothing matched: which refusal? */
    sqlite3_stmt *ex = ostmt(s, O_SAGA_EXISTS, &err);
    if (ex == NULL)
        return err;
    bind_text(ex, 1, g->saga);
    sqlite3_bind_blob(ex, 2, g->key_len ? g->key : "", (int)g->key_len, SQLITE_STATIC);
    int rc = sqlite3_step(ex);
    if (rc == SQLITE_ROW)
        j->rc = g->op == 1 && (size_t)sqlite3_column_int64(ex, 0) != r->state_size ? EB_EINVAL
                                                                                   : EB_ECONFLICT;
    else if (rc == SQLITE_DONE)
        j->rc = EB_ENOENT;
    else
        err = rc;
    sqlite3_reset(ex);
    return err;
}

static int saga_op(eb_saga_store *st, int op, const char *saga, const void *key, size_t key_len,
                   uint64_t expected, const eb_saga_record *rec)
{
    eb_store *s = ((sql_saga_store *)st)->s;
    saga_job g = {.j = {.run = saga_run},
                  .op = op,
                  .saga = saga,
                  .key = key,
                  .key_len = key_len,
                  .expected = expected,
                  .rec = rec};
    return run_job(s, &g.j);
}

static int saga_create(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                       const eb_saga_record *rec)
{
    return saga_op(st, 0, saga, key, key_len, 0, rec);
}

static int saga_save(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                     uint64_t expected_version, const eb_saga_record *rec)
{
    return saga_op(st, 1, saga, key, key_len, expected_version, rec);
}

static int saga_remove(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                       uint64_t expected_version)
{
    return saga_op(st, 2, saga, key, key_len, expected_version, NULL);
}

static int saga_dispatched(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                           uint64_t version)
{
    return saga_op(st, 3, saga, key, key_len, version, NULL);
}

static int saga_load(eb_saga_store *st, const char *saga, const void *key, size_t key_len,
                     eb_saga_record *rec)
{
    eb_store *s = ((sql_saga_store *)st)->s;
    int rc;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *q = rstmt(s, R_SAGA_LOAD);
    if (q == NULL) {
        pthread_mutex_unlock(&s->rlock);
        return EB_EIO;
    }
    bind_text(q, 1, saga);
    sqlite3_bind_blob(q, 2, key_len ? key : "", (int)key_len, SQLITE_STATIC);
    int step = sqlite3_step(q);
    if (step == SQLITE_ROW) {
        size_t sl, ol, il;
        const void *state = col_blob(q, 2, &sl);
        const void *outbox = col_blob(q, 4, &ol);
        const void *eid = col_blob(q, 3, &il);
        size_t stl;
        const void *start = col_blob(q, 5, &stl);
        if (sl != rec->state_size) {
            rc = EB_EINVAL;
        } else {
            void *ob = NULL;
            rc = EB_OK;
            if (outbox != NULL && ol > 0 && (ob = malloc(ol)) == NULL)
                rc = EB_ENOMEM;
            if (rc == EB_OK) {
                if (ob != NULL)
                    memcpy(ob, outbox, ol);
                if (sl)
                    memcpy(rec->state, state, sl);
                rec->version = (uint64_t)sqlite3_column_int64(q, 0);
                rec->completed = sqlite3_column_int(q, 1) != 0;
                memset(rec->event_id, 0, 16);
                if (eid != NULL && il == 16)
                    memcpy(rec->event_id, eid, 16);
                memset(rec->start_id, 0, 16); /* NULL in rows of schema 1 */
                if (start != NULL && stl == 16)
                    memcpy(rec->start_id, start, 16);
                rec->outbox = ob;
                rec->outbox_len = ob ? ol : 0;
            }
        }
    } else {
        rc = step == SQLITE_DONE ? EB_ENOENT : sql_fail(s, s->rdb, step, "saga load");
    }
    rdone(q);
    pthread_mutex_unlock(&s->rlock);
    return rc;
}

/* One pending outbox, copied out of the reader so that fn runs unlocked. */
typedef struct pend_rec {
    struct pend_rec *next;
    uint64_t version;
    bool completed;
    size_t key_len, outbox_len;
    unsigned char data[]; /* key, then outbox */
} pend_rec;

static int saga_pending(eb_saga_store *st, const char *saga,
                        int (*fn)(const void *key, size_t key_len, const eb_saga_record *rec,
                                  void *ctx),
                        void *ctx)
{
    eb_store *s = ((sql_saga_store *)st)->s;
    pend_rec *head = NULL, **tail = &head;
    int rc = EB_OK, step;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *q = rstmt(s, R_SAGA_PENDING);
    if (q == NULL) {
        pthread_mutex_unlock(&s->rlock);
        return EB_EIO;
    }
    bind_text(q, 1, saga);
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        size_t kl, ol;
        const void *key = col_blob(q, 0, &kl);
        const void *outbox = col_blob(q, 3, &ol);
        pend_rec *p = malloc(sizeof(*p) + kl + ol);
        if (p == NULL) {
            rc = EB_ENOMEM;
            break;
        }
        p->next = NULL;
        p->version = (uint64_t)sqlite3_column_int64(q, 1);
        p->completed = sqlite3_column_int(q, 2) != 0;
        p->key_len = kl;
        p->outbox_len = ol;
        if (kl > 0)
            memcpy(p->data, key, kl);
        if (ol > 0)
            memcpy(p->data + kl, outbox, ol);
        *tail = p;
        tail = &p->next;
    }
    if (rc == EB_OK && step != SQLITE_DONE)
        rc = sql_fail(s, s->rdb, step, "saga pending");
    rdone(q);
    pthread_mutex_unlock(&s->rlock);
    while (head != NULL) {
        pend_rec *p = head;
        head = p->next;
        if (rc == EB_OK && p->outbox_len > 0) {
            eb_saga_record rec = {.version = p->version,
                                  .completed = p->completed,
                                  .outbox = p->data + p->key_len,
                                  .outbox_len = p->outbox_len};
            rc = fn(p->data, p->key_len, &rec, ctx);
        }
        free(p);
    }
    return rc;
}

static void saga_destroy(eb_saga_store *st)
{
    free(st);
}

EB_API int eb_saga_sqlite_store_create(eb_store *s, eb_saga_store **out)
{
    int rc = need_writer(s);
    if (rc != EB_OK || out == NULL)
        return rc != EB_OK ? rc : EB_EINVAL;
    sql_saga_store *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return EB_ENOMEM;
    st->s = s;
    st->base = (eb_saga_store){.load = saga_load,
                               .create = saga_create,
                               .save = saga_save,
                               .remove = saga_remove,
                               .dispatched = saga_dispatched,
                               .destroy = saga_destroy,
                               .pending = saga_pending};
    *out = &st->base;
    return EB_OK;
}

EB_API int eb_store_sagas(eb_store *s, const char *saga, size_t limit,
                          int (*fn)(const eb_store_saga_info *info, void *ctx), void *ctx)
{
    if (s == NULL || fn == NULL)
        return EB_EINVAL;
    pthread_mutex_lock(&s->rlock);
    sqlite3_stmt *st = rstmt(s, R_SAGAS);
    if (st == NULL) {
        pthread_mutex_unlock(&s->rlock);
        return EB_EIO;
    }
    if (saga != NULL)
        bind_text(st, 1, saga);
    sqlite3_bind_int64(st, 2, limit_of(limit));
    int step, stopped = 0;
    while (stopped == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        eb_store_saga_info i = {.saga = col_text(st, 0)};
        i.key = col_blob(st, 1, &i.key_len);
        i.version = (uint64_t)sqlite3_column_int64(st, 2);
        i.completed = sqlite3_column_int(st, 3) != 0;
        i.state_size = (size_t)sqlite3_column_int64(st, 4);
        i.commands_pending = sqlite3_column_int(st, 5) != 0;
        i.updated_ns = sqlite3_column_int64(st, 6);
        stopped = fn(&i, ctx);
    }
    int rc = read_end(s, st, stopped ? SQLITE_DONE : step, stopped);
    pthread_mutex_unlock(&s->rlock);
    return rc;
}

#else /* !EB_WITH_SQLITE: the library was built without the store. */

EB_API void eb_store_options_init(eb_store_options *opts)
{
    if (opts != NULL) {
        memset(opts, 0, sizeof(*opts));
        opts->log_level = EB_LOG_WARN;
    }
}
EB_API int eb_store_open(const char *path, const eb_store_options *opts, eb_store **out)
{
    (void)opts;
    return path == NULL || out == NULL ? EB_EINVAL : EB_ENOTSUP;
}
EB_API void eb_store_close(eb_store *store)
{
    (void)store;
}
EB_API int eb_store_flush(eb_store *store, int64_t timeout_ns)
{
    (void)store, (void)timeout_ns;
    return EB_ENOTSUP;
}
/* No store can exist: the remaining entry points are unreachable with a
   valid handle and refuse NULL. */
EB_API int eb_store_last_error(eb_store *s, char *msg, size_t cap)
{
    (void)s;
    if (msg != NULL && cap > 0)
        msg[0] = '\0';
    return 0;
}
EB_API int eb_store_stats_get(eb_store *s, eb_store_stats *out)
{
    (void)s, (void)out;
    return EB_ENOTSUP;
}
EB_API int eb_store_events(eb_store *s, const eb_store_query *q, eb_stored_event_fn fn, void *ctx)
{
    (void)s, (void)q, (void)fn, (void)ctx;
    return EB_ENOTSUP;
}
EB_API int eb_store_subscriptions(eb_store *s,
                                  int (*fn)(const eb_store_subscription_info *, void *), void *ctx)
{
    (void)s, (void)fn, (void)ctx;
    return EB_ENOTSUP;
}
EB_API int eb_outbox_add(eb_store *s, const char *t, const void *p, size_t l, const void *k,
                         size_t kl, int64_t *id)
{
    (void)s, (void)t, (void)p, (void)l, (void)k, (void)kl, (void)id;
    return EB_ENOTSUP;
}
EB_API int eb_outbox_claim(eb_store *s, size_t m, int64_t l, eb_outbox_batch **o)
{
    (void)s, (void)m, (void)l, (void)o;
    return EB_ENOTSUP;
}
EB_API void eb_outbox_batch_free(eb_outbox_batch *b)
{
    (void)b;
}
EB_API int eb_outbox_ack(eb_store *s, int64_t id)
{
    (void)s, (void)id;
    return EB_ENOTSUP;
}
EB_API int eb_outbox_abandon(eb_store *s, int64_t id, const char *e, int64_t r)
{
    (void)s, (void)id, (void)e, (void)r;
    return EB_ENOTSUP;
}
EB_API int eb_outbox_fail(eb_store *s, int64_t id, const char *e)
{
    (void)s, (void)id, (void)e;
    return EB_ENOTSUP;
}
EB_API int eb_outbox_reap(eb_store *s, size_t *n)
{
    (void)s, (void)n;
    return EB_ENOTSUP;
}
EB_API int eb_outbox_list(eb_store *s, int st, size_t l,
                          int (*fn)(const eb_outbox_message *, void *), void *c)
{
    (void)s, (void)st, (void)l, (void)fn, (void)c;
    return EB_ENOTSUP;
}
EB_API int eb_store_deadletters(eb_store *s, size_t l,
                                int (*fn)(const eb_store_deadletter *, void *), void *c)
{
    (void)s, (void)l, (void)fn, (void)c;
    return EB_ENOTSUP;
}
EB_API int eb_store_deadletter_requeue(eb_store *s, int64_t id, size_t *n)
{
    (void)s, (void)id, (void)n;
    return EB_ENOTSUP;
}
EB_API int eb_store_deadletter_purge(eb_store *s, int64_t id, size_t *n)
{
    (void)s, (void)id, (void)n;
    return EB_ENOTSUP;
}
EB_API int eb_saga_sqlite_store_create(eb_store *s, eb_saga_store **o)
{
    (void)s, (void)o;
    return EB_ENOTSUP;
}
EB_API int eb_store_sagas(eb_store *s, const char *g, size_t l,
                          int (*fn)(const eb_store_saga_info *, void *), void *c)
{
    (void)s, (void)g, (void)l, (void)fn, (void)c;
    return EB_ENOTSUP;
}
int eb__store_attach(eb_store *store, eb_bus *bus)
{
    (void)store, (void)bus;
    return EB_ENOTSUP;
}
void eb__store_detach_begin(eb_store *store)
{
    (void)store;
}
void eb__store_detach(eb_store *store)
{
    (void)store;
}
int eb__store_append(eb_store *s, eb_event **e, size_t n, bool w, int64_t t, bool h)
{
    (void)s, (void)e, (void)n, (void)w, (void)t, (void)h;
    return EB_ENOTSUP;
}
int eb__store_schedule(eb_store *s, const eb_event *e, int64_t d, bool w)
{
    (void)s, (void)e, (void)d, (void)w;
    return EB_ENOTSUP;
}
void eb__store_deadletter(eb_store *s, const eb_event *e, const eb_deadletter_info *i)
{
    (void)s, (void)e, (void)i;
}
int eb__dsub_open(eb_store *s, const char *n, const char *p, size_t pl, bool i, void *sub,
                  eb__dsub **o)
{
    (void)s, (void)n, (void)p, (void)pl, (void)i, (void)sub, (void)o;
    return EB_ENOTSUP;
}
void eb__dsub_start(eb__dsub *d)
{
    (void)d;
}
void eb__dsub_stop(eb__dsub *d)
{
    (void)d;
}
void eb__dsub_close(eb__dsub *d)
{
    (void)d;
}
bool eb__dsub_route(eb__dsub *d, const eb_event *ev)
{
    (void)d, (void)ev;
    return true;
}
void eb__dsub_track(eb__dsub *d, const eb_event *ev)
{
    (void)d, (void)ev;
}
void eb__dsub_untrack(eb__dsub *d)
{
    (void)d;
}
bool eb__dsub_fresh(eb__dsub *d, const eb_event *ev)
{
    (void)d, (void)ev;
    return true;
}
void eb__dsub_done(eb__dsub *d, const eb_event *ev, bool ok)
{
    (void)d, (void)ev, (void)ok;
}

#endif /* EB_WITH_SQLITE */
