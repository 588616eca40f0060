/*
 * SQLite errors surface as clear codes while the bus keeps running:
 *  - a full file (PRAGMA max_page_count): durable publishes and outbox
 *    writes fail with EB_EIO, nothing refused is delivered, memory-only
 *    delivery goes on, and writes succeed again once space is freed;
 *  - a read-only file or directory: eb_store_open refuses it with EB_EIO
 *    (or EB_ENOENT for a missing file), or opens it read-only when asked;
 *  - a database locked by another process (fault_lock_holder, a separately
 *    exec'd program holding BEGIN EXCLUSIVE): after busy_timeout_ms durable
 *    publishes and outbox operations fail with EB_EBUSY, memory-only
 *    delivery is unaffected, and work resumes once the lock is released;
 *  - the same lock held while durable publishes fill the writer's queue
 *    (max_pending): each publish call then reports the full queue with its
 *    documented code and publishes nothing, and every accepted event is
 *    logged and delivered once the lock is gone.
 */
#include "fault_common.h"

#include <sqlite3.h>

TestSuite(sqlite, .timeout = EB_CRITERION_TIMEOUT);

/* Records what a handler saw: ids (first 4 payload bytes) and log seqs. */
typedef struct seen {
    pthread_mutex_t lock;
    unsigned n;
    uint32_t id[4096];
    uint64_t seq[4096];
} seen;

static void seen_init(seen *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
}

static int seen_handler(const eb_event *ev, void *ctx)
{
    seen *s = ctx;
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    pthread_mutex_lock(&s->lock);
    if (s->n < 4096 && len >= 4) {
        memcpy(&s->id[s->n], p, 4);
        s->seq[s->n] = eb_event_log_seq(ev);
        s->n++;
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* How many times id was seen, and the log seq of the last sighting. */
static unsigned seen_count(seen *s, uint32_t id, uint64_t *seq)
{
    unsigned n = 0;
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++)
        if (s->id[i] == id) {
            n++;
            if (seq != NULL)
                *seq = s->seq[i];
        }
    pthread_mutex_unlock(&s->lock);
    return n;
}

static bool seen_wait(seen *s, uint32_t id)
{
    bool ok;
    T_WAIT_FOR(ok, seen_count(s, id, NULL) >= 1);
    return ok;
}

static eb_store *store_open(const char *path, unsigned busy_ms, uint32_t max_pages)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_OFF;
    o.busy_timeout_ms = busy_ms;
    o.max_page_count = max_pages;
    eb_store *s = NULL;
    int rc = eb_store_open(path, &o, &s);
    cr_assert_eq(rc, EB_OK, "eb_store_open: %s", eb_err_name(rc));
    return s;
}

/* A bus on s with two subscriptions: dur records topic "d" (the durable
   events), mem topic "m" (the memory-only ones). */
static eb_bus *bus_recording(eb_store *s, seen *dur, seen *mem)
{
    eb_bus *bus = t_bus_store(s, 2);
    seen_init(dur);
    seen_init(mem);
    cr_assert_eq(eb_subscribe(bus, "d", seen_handler, dur, NULL, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(bus, "m", seen_handler, mem, NULL, NULL), EB_OK);
    return bus;
}

static int pub(eb_bus *bus, const char *topic, uint32_t id, size_t len, unsigned flags)
{
    static char buf[4096];
    memset(buf, 'x', sizeof buf);
    memcpy(buf, &id, 4);
    eb_publish_options o = t_bounded_opts();
    o.flags = flags;
    return eb_publish(bus, topic, buf, len < 4 ? 4 : len, &o);
}

static uint64_t log_events(eb_store *s)
{
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    return st.events;
}

static void raw_sql(const char *path, const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    cr_assert_eq(rc, SQLITE_OK, "%s: %s", sql, err ? err : "?");
    sqlite3_close(db);
}

/* ---- the helper process ---------------------------------------------------- */

static void helper_wait(pid_t pid)
{
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "helper status %d", st);
}

typedef struct lock {
    pid_t pid;
    int to, from;
} lock;

/* Another process takes the write lock on path; returns once it holds it. */
static lock lock_take(const char *path)
{
    lock l;
    char *argv[] = {"fault_lock_holder", "lock", (char *)path, NULL};
    l.pid = t_spawn(EB_LOCK_HOLDER, argv, &l.to, &l.from);
    char c = 0;
    cr_assert_eq(read(l.from, &c, 1), 1, "the lock holder did not start");
    cr_assert_eq(c, 'R');
    return l;
}

static void lock_release(lock *l)
{
    cr_assert_eq(write(l->to, "x", 1), 1);
    close(l->to);
    close(l->from);
    helper_wait(l->pid);
}

/* Runs "fault_lock_holder open PATH rw|ro" (as nobody when we are root) and
   returns its line: "<open code> <outbox add code>". */
static void helper_open(const char *path, const char *mode, char *line, size_t cap)
{
    int to, from;
    char *argv[] = {"fault_lock_holder", "open", (char *)path, (char *)mode, NULL};
    pid_t pid = t_spawn(EB_LOCK_HOLDER, argv, &to, &from);
    close(to);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(from, line + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    line[n] = '\0';
    if (n > 0 && line[n - 1] == '\n')
        line[n - 1] = '\0';
    close(from);
    helper_wait(pid);
}

/* Runs helper_open and asserts its line is want ("<open code> <outbox add
   code>"); what says which open it was. */
static void expect_open(const char *path, const char *mode, const char *want, const char *what)
{
    char line[128];
    helper_open(path, mode, line, sizeof line);
    cr_assert_str_eq(line, want, "%s: %s", what, line);
}

/* ---- a full file ------------------------------------------------------------- */

Test(sqlite, a_full_file_fails_durable_writes_while_memory_delivery_goes_on_and_then_recovers)
{
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    eb_store *s = store_open(d.path, 0, 40); /* 160 KiB */
    seen dur, mem;
    eb_bus *bus = bus_recording(s, &dur, &mem);

    uint32_t id = 0;
    int rc = EB_OK;
    while (rc == EB_OK && id < 200)
        rc = pub(bus, "d", ++id, 4000, EB_PUBLISH_DURABLE);
    uint32_t refused = id, accepted = id - 1;
    cr_assert_eq(rc, EB_EIO, "a full file: %s", eb_err_name(rc));
    cr_assert_gt(accepted, 0);
    char msg[256];
    cr_assert_eq(eb_store_last_error(s, msg, sizeof msg) & 0xff, SQLITE_FULL, "%s", msg);

    /* Memory-only delivery is unaffected. */
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(pub(bus, "m", 1000 + i, 4, 0), EB_OK);
    /* A lazy durable publish is accepted; its commit fails and it is
       dispatched anyway, without a log sequence. */
    eb_store_stats st0;
    cr_assert_eq(eb_store_stats_get(s, &st0), EB_OK);
    cr_assert_eq(pub(bus, "d", 500, 4000, EB_PUBLISH_DURABLE_LAZY), EB_OK);
    cr_assert(seen_wait(&dur, 500));
    uint64_t seq = 99;
    cr_assert_eq(seen_count(&dur, 500, &seq), 1);
    cr_assert_eq(seq, 0, "logged at %llu on a full file", (unsigned long long)seq);
    /* The outbox and the flush report it too. */
    static char big[8000];
    cr_assert_eq(eb_outbox_add(s, "cmd", big, sizeof big, NULL, 0, NULL), EB_EIO);
    cr_assert_eq(eb_store_flush(s, t_wait_budget_ns()), EB_EIO);
    cr_assert(t_quiesce(bus));
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(seen_count(&mem, 1000 + i, NULL), 1);
    for (uint32_t i = 1; i <= accepted; i++)
        cr_assert_eq(seen_count(&dur, i, NULL), 1, "accepted event %u", i);
    cr_assert_eq(seen_count(&dur, refused, NULL), 0, "the refused event was delivered");
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    cr_assert_eq(st.events, accepted, "only the committed events are in the log");
    cr_assert_gt(st.write_errors, st0.write_errors);

    /* Space is freed (by another connection, as an operator would): the
       store writes again. */
    char sql[96];
    snprintf(sql, sizeof sql, "DELETE FROM eb_events WHERE seq <= %u", accepted);
    raw_sql(d.path, sql);
    cr_assert_eq(pub(bus, "d", 600, 4000, EB_PUBLISH_DURABLE), EB_OK);
    cr_assert(seen_wait(&dur, 600));
    seq = 0;
    seen_count(&dur, 600, &seq);
    cr_assert_gt(seq, accepted, "logged at %llu", (unsigned long long)seq);
    cr_assert_eq(eb_outbox_add(s, "cmd", "p", 1, NULL, 0, NULL), EB_OK);
    cr_assert_eq(log_events(s), 1);
    eb_bus_destroy(bus);
    eb_store_close(s);
    fx_dir_rm(&d);
}

/* ---- read-only files and directories --------------------------------------------- */

static bool has_file(const char *path, const char *suffix)
{
    char p[160];
    snprintf(p, sizeof p, "%s%s", path, suffix);
    return fx_exists(p);
}

Test(sqlite, a_read_only_file_is_refused_read_write_and_opened_read_only_when_asked)
{
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    eb_store_close(store_open(d.path, 0, 0));
    /* The directory stays writable (for SQLite's -wal and -shm); the file
       is not. fault_lock_holder opens it as nobody when we are root. */
    cr_assert_eq(chmod(d.dir, 0777), 0);
    cr_assert_eq(chmod(d.path, 0444), 0);
    char line[128];
    helper_open(d.path, "rw", line, sizeof line);
    if (strcmp(line, "EB_OK EB_EIO") == 0 && EB_FAULT_PENDING_READONLY_FILE) {
        /* Pending store fix: SQLite fell back to read-only silently, and
           every write fails later instead. */
        fx_report("sqlite read-only file: rw open returned EB_OK, writes EB_EIO "
                  "(TOLERATED pending store fix)");
    } else {
        cr_assert_str_eq(line, "EB_EIO -", "read-write open of a read-only file");
        cr_assert(!has_file(d.path, "-wal") && !has_file(d.path, "-shm"),
                  "the refused open left -wal/-shm files");
    }
    expect_open(d.path, "ro", "EB_OK EB_ENOTSUP", "read-only open: reads work, writes refused");
    cr_assert_eq(chmod(d.dir, 0700), 0);
    fx_dir_rm(&d);
}

Test(sqlite, a_read_only_directory_refuses_new_and_existing_stores_with_clear_codes)
{
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    eb_store_close(store_open(d.path, 0, 0));
    /* The helper may write the file (as nobody when we are root), but not
       the directory. */
    if (geteuid() == 0)
        cr_assert_eq(chown(d.path, 65534, 65534), 0);
    cr_assert_eq(chmod(d.dir, 0555), 0);
    char fresh[128];
    snprintf(fresh, sizeof fresh, "%s/new.db", d.dir);
    expect_open(fresh, "rw", "EB_EIO -", "creating a store in a read-only directory");
    cr_assert(!fx_exists(fresh));
    expect_open(fresh, "ro", "EB_ENOENT -", "a missing file, read-only");
    /* A WAL file needs its -shm next to it: neither mode can open it here. */
    expect_open(d.path, "rw", "EB_EIO -", "read-write open in a read-only directory");
    expect_open(d.path, "ro", "EB_EIO -", "read-only open in a read-only directory");
    cr_assert_eq(chmod(d.dir, 0700), 0);
    fx_dir_rm(&d);
}

/* ---- a database locked by another process ---------------------------------------- */

Test(sqlite, a_database_locked_by_another_process_is_busy_and_work_resumes_after)
{
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    eb_store *s = store_open(d.path, 200, 0);
    seen dur, mem;
    eb_bus *bus = bus_recording(s, &dur, &mem);
    cr_assert_eq(pub(bus, "d", 1, 4, EB_PUBLISH_DURABLE), EB_OK);
    int64_t id1 = 0;
    cr_assert_eq(eb_outbox_add(s, "cmd", "p", 1, NULL, 0, &id1), EB_OK);

    lock l = lock_take(d.path);
    int64_t t0 = t_now_ns();
    int rc = pub(bus, "d", 2, 4, EB_PUBLISH_DURABLE);
    int64_t took = t_now_ns() - t0;
    cr_assert_eq(rc, EB_EBUSY, "durable publish under another process's lock: %s", eb_err_name(rc));
    cr_assert_geq(took, 200 * T_MS, "gave up after %lld ns, before busy_timeout_ms",
                  (long long)took);
    char msg[256];
    cr_assert_eq(eb_store_last_error(s, msg, sizeof msg) & 0xff, SQLITE_BUSY, "%s", msg);
    /* Memory-only delivery is unaffected meanwhile. */
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(pub(bus, "m", 1000 + i, 4, 0), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, seen_count(&mem, 1099, NULL) == 1);
    cr_assert(ok, "memory-only delivery stopped");
    cr_assert_eq(pub(bus, "d", 3, 4, EB_PUBLISH_DURABLE_LAZY), EB_OK);
    cr_assert_eq(eb_outbox_add(s, "cmd", "p", 1, NULL, 0, NULL), EB_EBUSY);
    eb_outbox_batch *b = NULL;
    cr_assert_eq(eb_outbox_claim(s, 4, T_SEC, &b), EB_EBUSY);
    cr_assert_null(b);
    cr_assert_eq(eb_outbox_ack(s, id1), EB_EBUSY);
    /* Readers are not blocked (WAL): another handle opens and reads. */
    eb_store *reader = store_open(d.path, 200, 0);
    cr_assert_eq(log_events(reader), 1);
    eb_store_close(reader);
    /* The lazy one was dispatched anyway, unlogged. */
    cr_assert(seen_wait(&dur, 3));
    uint64_t seq = 99;
    seen_count(&dur, 3, &seq);
    cr_assert_eq(seq, 0);

    lock_release(&l);
    cr_assert_eq(pub(bus, "d", 4, 4, EB_PUBLISH_DURABLE), EB_OK);
    cr_assert(seen_wait(&dur, 4));
    seen_count(&dur, 4, &seq);
    cr_assert_gt(seq, 1, "logged at %llu", (unsigned long long)seq);
    cr_assert_eq(eb_outbox_add(s, "cmd", "p", 1, NULL, 0, NULL), EB_OK);
    cr_assert_eq(eb_outbox_claim(s, 4, T_SEC, &b), EB_OK);
    cr_assert_eq(b->n, 2);
    eb_outbox_batch_free(b);
    cr_assert(t_quiesce(bus));
    eb_bus_destroy(bus);
    cr_assert_eq(seen_count(&dur, 1, NULL), 1);
    cr_assert_eq(seen_count(&dur, 2, NULL), 0, "the refused durable event was delivered");
    cr_assert_eq(seen_count(&dur, 3, NULL), 1);
    cr_assert_eq(seen_count(&dur, 4, NULL), 1);
    cr_assert_eq(log_events(s), 2);
    eb_store_close(s);
    fx_dir_rm(&d);
}

/* One durable event with id as its payload, on topic "d", through call
   (0: eb_publish, 1: eb_publish_wait, 2: eb_publish_async). */
static int pub_durable(eb_bus *bus, uint32_t id, unsigned flags, int64_t timeout_ns, int call)
{
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.flags = flags;
    o.timeout_ns = timeout_ns;
    if (call == 0)
        return eb_publish(bus, "d", &id, 4, &o);
    if (call == 1)
        return eb_publish_wait(bus, "d", &id, 4, &o, NULL);
    eb_ticket *t = NULL;
    int rc = eb_publish_async(bus, "d", &id, 4, &o, &t);
    if (rc == EB_OK)
        eb_ticket_release(t);
    return rc;
}

/* max_pending bounds the writer's queue. While another process holds the
   lock the writer cannot commit, durable publishes fill the queue, and then
   each publish call reports the full queue with its documented code, having
   published nothing; once the lock is gone every accepted event is logged
   and delivered once. */
Test(sqlite, a_full_store_queue_refuses_durable_publishes_with_their_codes_and_keeps_what_it_took)
{
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    eb_store_options so;
    eb_store_options_init(&so);
    so.synchronous = EB_STORE_SYNC_OFF;
    so.busy_timeout_ms = 60000;
    so.max_pending = 4;
    eb_store *s = NULL;
    cr_assert_eq(eb_store_open(d.path, &so, &s), EB_OK);
    seen dur, mem;
    eb_bus *bus = bus_recording(s, &dur, &mem);

    lock l = lock_take(d.path);
    /* The writer takes the first event and waits for the lock in its
       commit; what follows stays queued. */
    uint32_t id = 1;
    cr_assert_eq(pub_durable(bus, id, EB_PUBLISH_DURABLE_LAZY, 0, 0), EB_OK);
    bool ok;
    eb_store_stats st;
    T_WAIT_FOR(ok, eb_store_stats_get(s, &st) == EB_OK && st.pending == 0);
    cr_assert(ok, "the writer did not take the first event");
    int rc = EB_OK;
    while (rc == EB_OK && id < 64)
        rc = pub_durable(bus, ++id, EB_PUBLISH_DURABLE_LAZY, 0, 0);
    uint32_t accepted = id - 1;
    cr_assert_eq(rc, EB_EAGAIN, "publish %u with timeout 0: %s", id, eb_err_name(rc));
    cr_assert_eq(accepted, 1u + 4u, "max_pending 4 held %u", accepted - 1);
    const int64_t t = 50 * T_MS;
    rc = pub_durable(bus, 1001, EB_PUBLISH_DURABLE_LAZY, t, 0);
    cr_assert_eq(rc, EB_ETIMEDOUT, "%s", eb_err_name(rc));
    cr_assert_eq(pub_durable(bus, 1002, EB_PUBLISH_DURABLE_LAZY, t, 2), EB_ETIMEDOUT);
    /* eb_publish_wait keeps EB_ETIMEDOUT for "published, not finished". */
    cr_assert_eq(pub_durable(bus, 1003, EB_PUBLISH_DURABLE_LAZY, t, 1), EB_EAGAIN);
    cr_assert_eq(pub_durable(bus, 1004, EB_PUBLISH_DURABLE, t, 1), EB_EAGAIN);
    cr_assert_eq(pub_durable(bus, 1005, EB_PUBLISH_DURABLE, 0, 1), EB_EAGAIN);
    /* Memory-only publishing is not held up by the full store queue. */
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(pub(bus, "m", 2000 + i, 4, 0), EB_OK);
    T_WAIT_FOR(ok, seen_count(&mem, 2099, NULL) == 1);
    cr_assert(ok, "memory-only delivery stopped");

    lock_release(&l);
    cr_assert_eq(eb_store_flush(s, t_wait_budget_ns()), EB_OK);
    for (uint32_t i = 1; i <= accepted; i++)
        cr_assert(seen_wait(&dur, i), "accepted event %u never arrived", i);
    cr_assert(t_quiesce(bus));
    eb_bus_destroy(bus);
    for (uint32_t i = 1; i <= accepted; i++)
        cr_assert_eq(seen_count(&dur, i, NULL), 1, "event %u", i);
    for (uint32_t i = 1001; i <= 1005; i++)
        cr_assert_eq(seen_count(&dur, i, NULL), 0, "refused event %u was delivered", i);
    cr_assert_eq(seen_count(&dur, accepted + 1, NULL), 0, "the refused event was delivered");
    cr_assert_eq(log_events(s), accepted);
    eb_store_close(s);
    fx_dir_rm(&d);
}

/* A waited durable batch (and so a scope committed with EB_PUBLISH_DURABLE)
   is one transaction however long: committed whole, or on a full file not
   at all. It went to the store in chunks of 1024, each its own commit, so a
   failure left the first chunks committed and delivered. */
static uint64_t store_commits(eb_store *s)
{
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    return st.commits;
}

static void durable_scope_of(eb_bus *bus, uint32_t first, uint32_t n, int want_rc)
{
    static char buf[1000];
    eb_scope *sc = NULL;
    cr_assert_eq(eb_scope_begin(bus, &sc), EB_OK);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = first + i;
        memcpy(buf, &id, 4);
        cr_assert_eq(eb_scope_publish(sc, "d", buf, sizeof buf, NULL, 0), EB_OK);
    }
    eb_publish_options o = t_bounded_opts();
    o.flags = EB_PUBLISH_DURABLE;
    size_t published = 99;
    int rc = eb_scope_commit(sc, &o, &published);
    cr_assert_eq(rc, want_rc, "commit: %s", eb_err_name(rc));
    if (rc == EB_OK) {
        cr_assert_eq(published, n);
    } else {
        cr_assert_eq(published, 0, "%zu of the scope's events were committed", published);
        eb_scope_abort(sc);
    }
}

Test(sqlite, a_durable_batch_is_one_transaction_committed_whole_or_not_at_all)
{
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    eb_store *s = store_open(d.path, 0, 0);
    seen dur, mem;
    eb_bus *bus = bus_recording(s, &dur, &mem);
    uint64_t c0 = store_commits(s);
    durable_scope_of(bus, 1, 2000, EB_OK);
    cr_assert_eq(store_commits(s) - c0, 1, "2000 events took %llu commits",
                 (unsigned long long)(store_commits(s) - c0));
    cr_assert_eq(log_events(s), 2000);
    cr_assert(seen_wait(&dur, 2000));
    cr_assert(t_quiesce(bus));
    eb_bus_destroy(bus);
    eb_store_close(s);
    fx_dir_rm(&d);

    /* A file capped below the batch's size: none of it. */
    cr_assert(fx_dir_new(&d));
    s = store_open(d.path, 0, 450); /* 1.8 MiB; the batch is about 2 MB */
    bus = bus_recording(s, &dur, &mem);
    durable_scope_of(bus, 1, 2000, EB_EIO);
    cr_assert_eq(log_events(s), 0);
    cr_assert_eq(pub(bus, "d", 5000, 4, EB_PUBLISH_DURABLE), EB_OK, "the store goes on");
    cr_assert(seen_wait(&dur, 5000));
    cr_assert(t_quiesce(bus));
    eb_bus_destroy(bus);
    for (uint32_t i = 1; i <= 2000; i++)
        cr_assert_eq(seen_count(&dur, i, NULL), 0, "event %u of the failed batch was delivered", i);
    cr_assert_eq(log_events(s), 1);
    eb_store_close(s);
    fx_dir_rm(&d);
}

Test(sqlite, opening_a_new_file_locked_by_another_process_is_busy_and_leaves_it_alone)
{
    fx_dir d;
    cr_assert(fx_dir_new(&d));
    lock l = lock_take(d.path); /* creates the (empty) file and locks it */
    eb_store_options o;
    eb_store_options_init(&o);
    o.busy_timeout_ms = 200;
    eb_store *s = NULL;
    int64_t t0 = t_now_ns();
    int rc = eb_store_open(d.path, &o, &s);
    cr_assert_eq(rc, EB_EBUSY, "%s", eb_err_name(rc));
    cr_assert_geq(t_now_ns() - t0, 200 * T_MS);
    cr_assert_null(s);
    struct stat st;
    cr_assert_eq(stat(d.path, &st), 0);
    cr_assert_eq(st.st_size, 0, "the file was written");
    lock_release(&l);
    cr_assert_eq(eb_store_open(d.path, &o, &s), EB_OK);
    cr_assert_eq(eb_outbox_add(s, "cmd", "p", 1, NULL, 0, NULL), EB_OK);
    eb_store_close(s);
    fx_dir_rm(&d);
}
