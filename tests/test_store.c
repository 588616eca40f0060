/*
 * The durable store: opening and refusing files, durable publishing with
 * group commit, durable subscriptions (checkpoints, replay, idempotency),
 * scheduled events, dead letters, the outbox (also shared by two
 * processes) and the SQLite saga store.
 */
#include "common.h"

#include <eventbus/store.h>

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A fresh store path in a fresh directory (removed by t_dir_rm). */
typedef struct t_dir {
    char dir[64];
    char path[96];
} t_dir;

static void t_dir_new(t_dir *d)
{
    snprintf(d->dir, sizeof d->dir, "/tmp/eb_store_XXXXXX");
    cr_assert_not_null(mkdtemp(d->dir));
    snprintf(d->path, sizeof d->path, "%s/s.db", d->dir);
}

static void t_dir_rm(t_dir *d)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    cr_assert_eq(system(cmd), 0);
}

static eb_store *t_store_open(const char *path)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_NORMAL; /* tests need no power-loss safety */
    eb_store *s = NULL;
    int rc = eb_store_open(path, &o, &s);
    cr_assert_eq(rc, EB_OK, "eb_store_open: %s", eb_err_name(rc));
    return s;
}

/* A store in the fresh directory d (t_store_done closes and removes it). */
static eb_store *t_store_new(t_dir *d)
{
    t_dir_new(d);
    return t_store_open(d->path);
}

/* A store in a fresh directory whose file cannot grow past `pages` pages
   of 4 KiB: a disk that fills up. */
static eb_store *t_store_small(t_dir *d, unsigned pages)
{
    t_dir_new(d);
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_NORMAL;
    o.max_page_count = pages;
    eb_store *s = NULL;
    int rc = eb_store_open(d->path, &o, &s);
    cr_assert_eq(rc, EB_OK, "eb_store_open: %s", eb_err_name(rc));
    return s;
}

static void t_store_done(t_dir *d, eb_store *s)
{
    eb_store_close(s);
    t_dir_rm(d);
}

static eb_publish_options t_durable(unsigned flags)
{
    eb_publish_options o = t_bounded_opts();
    o.flags = flags;
    return o;
}

static uint64_t t_log_count(eb_store *s)
{
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    return st.events;
}

/* Records the u32 payloads and log sequences a handler saw, in order. */
typedef struct t_log_rec {
    pthread_mutex_t lock;
    unsigned n;
    uint32_t v[4096];
    uint64_t seq[4096];
    int fail_first; /* fail this many calls */
} t_log_rec;

static void t_log_rec_init(t_log_rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
}

static int t_log_handler(const eb_event *ev, void *ctx)
{
    t_log_rec *r = ctx;
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    pthread_mutex_lock(&r->lock);
    if (r->fail_first > 0) {
        r->fail_first--;
        pthread_mutex_unlock(&r->lock);
        return -100;
    }
    if (r->n < 4096 && len >= 4) {
        memcpy(&r->v[r->n], p, 4);
        r->seq[r->n] = eb_event_log_seq(ev);
        r->n++;
    }
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static unsigned t_log_n(t_log_rec *r)
{
    pthread_mutex_lock(&r->lock);
    unsigned n = r->n;
    pthread_mutex_unlock(&r->lock);
    return n;
}

static eb_subscription *t_durable_sub(eb_bus *bus, const char *pattern, const char *name,
                                      bool idempotent, t_log_rec *r)
{
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = name;
    o.durable = true;
    o.idempotent = idempotent;
    eb_subscription *sub = NULL;
    int rc = eb_subscribe(bus, pattern, t_log_handler, r, &o, &sub);
    cr_assert_eq(rc, EB_OK, "durable eb_subscribe: %s", eb_err_name(rc));
    return sub;
}

static void t_pub_durable(eb_bus *bus, const char *topic, uint32_t v, unsigned flags)
{
    eb_publish_options o = t_durable(flags);
    int rc = eb_publish(bus, topic, &v, sizeof v, &o);
    cr_assert_eq(rc, EB_OK, "durable publish: %s", eb_err_name(rc));
}

/* Logs n events (payloads 0 .. n-1) on topic through a bus of its own on s,
   destroyed before it returns (every event committed and delivered). */
static void t_log_events(eb_store *s, const char *topic, uint32_t n, unsigned flags)
{
    eb_bus *bus = t_bus_store(s, 2);
    for (uint32_t i = 0; i < n; i++)
        t_pub_durable(bus, topic, i, flags);
    eb_bus_destroy(bus);
}

static int never_fails(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    return 0;
}

/* ---- files ------------------------------------------------------------- */

Test(store, open_creates_the_file_0600_in_wal_mode_with_our_schema)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    struct stat st;
    cr_assert_eq(stat(d.path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
    cr_assert_eq(t_threads_named("eb-store"), 1, "the writer thread is named");
    eb_store_close(s);
    cr_assert_eq(t_threads_named("eb-store"), 0);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(d.path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q;
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int(q, 0), EB_STORE_SCHEMA_VERSION);
    sqlite3_finalize(q);
    sqlite3_close(db);
    t_dir_rm(&d);
}

static void t_write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, p, n), (ssize_t)n);
    close(fd);
}

static size_t t_read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    ssize_t n = read(fd, buf, cap);
    close(fd);
    cr_assert_geq(n, 0);
    return (size_t)n;
}

Test(store, open_refuses_a_file_that_is_not_sqlite_and_leaves_it_untouched)
{
    t_dir d;
    t_dir_new(&d);
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 7 + 3);
    t_write_file(d.path, junk, sizeof junk);
    eb_store *s = NULL;
    int rc = eb_store_open(d.path, NULL, &s);
    cr_assert_eq(rc, EB_ECORRUPT, "%s", eb_err_name(rc));
    cr_assert_null(s);
    char back[9000];
    cr_assert_eq(t_read_file(d.path, back, sizeof back), sizeof junk);
    cr_assert_eq(memcmp(back, junk, sizeof junk), 0, "the file was changed");
    t_dir_rm(&d);
}

static void t_sql(const char *path, const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, &err), SQLITE_OK, "%s", err ? err : "");
    sqlite3_close(db);
}

Test(store, open_refuses_another_applications_database)
{
    t_dir d;
    t_dir_new(&d);
    t_sql(d.path, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);"
                  "INSERT INTO customers(name) VALUES('ada')");
    struct stat before;
    cr_assert_eq(stat(d.path, &before), 0);
    eb_store *s = NULL;
    cr_assert_eq(eb_store_open(d.path, NULL, &s), EB_ECORRUPT);
    struct stat after;
    cr_assert_eq(stat(d.path, &after), 0);
    cr_assert_eq(before.st_size, after.st_size);
    cr_assert_eq(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec, "the file was written");
    t_dir_rm(&d);
}

Test(store, open_refuses_a_newer_schema_version)
{
    t_dir d;
    eb_store_close(t_store_new(&d)); /* a new, empty store file */
    t_sql(d.path, "PRAGMA user_version = 99");
    eb_store *s = NULL;
    cr_assert_eq(eb_store_open(d.path, NULL, &s), EB_ENOTSUP);
    t_dir_rm(&d);
}

/* Ours (application_id), with a version no build wrote: refused, where a
   migration from it used to index its table out of bounds (fuzz_store,
   regressions/store/negative-schema-version). */
Test(store, open_refuses_a_schema_version_below_one)
{
    t_dir d;
    eb_store_close(t_store_new(&d));
    for (int i = 0; i < 2; i++) {
        t_sql(d.path, i == 0 ? "PRAGMA user_version = -5" : "PRAGMA user_version = 0");
        struct stat before, after;
        cr_assert_eq(stat(d.path, &before), 0);
        eb_store *s = NULL;
        cr_assert_eq(eb_store_open(d.path, NULL, &s), EB_ECORRUPT);
        cr_assert_null(s);
        cr_assert_eq(stat(d.path, &after), 0);
        cr_assert_eq(before.st_size, after.st_size, "the file was written");
    }
    t_dir_rm(&d);
}

Test(store, open_refuses_a_damaged_file)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    t_log_events(s, "orders.created", 2000, EB_PUBLISH_DURABLE_LAZY);
    eb_store_close(s);
    t_sql(d.path, "PRAGMA wal_checkpoint(TRUNCATE)");
    /* Scribble over a page in the middle of the log table. */
    int fd = open(d.path, O_RDWR);
    cr_assert_geq(fd, 0);
    struct stat st;
    fstat(fd, &st);
    char junk[4096];
    memset(junk, 0xA5, sizeof junk);
    cr_assert_eq(pwrite(fd, junk, sizeof junk, (st.st_size / 4096 / 2) * 4096),
                 (ssize_t)sizeof junk);
    close(fd);
    int rc = eb_store_open(d.path, NULL, &s);
    cr_assert_eq(rc, EB_ECORRUPT, "%s", eb_err_name(rc));
    t_dir_rm(&d);
}

Test(store, open_without_create_refuses_a_missing_file)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.no_create = true;
    eb_store *s = NULL;
    cr_assert_eq(eb_store_open("/tmp/eb_store_no_such_file.db", &o, &s), EB_ENOENT);
    eb_store_options_init(&o);
    o.read_only = true;
    cr_assert_eq(eb_store_open("/tmp/eb_store_no_such_file.db", &o, &s), EB_ENOENT);
    cr_assert_eq(access("/tmp/eb_store_no_such_file.db", F_OK), -1);
    /* An empty file is no store: refused without writing to it. */
    t_dir d;
    t_dir_new(&d);
    t_write_file(d.path, "", 0);
    o.read_only = false;
    o.no_create = true;
    cr_assert_eq(eb_store_open(d.path, &o, &s), EB_ENOENT);
    struct stat st;
    cr_assert_eq(stat(d.path, &st), 0);
    cr_assert_eq(st.st_size, 0);
    cr_assert_eq(eb_store_open(d.dir, NULL, &s), EB_EIO, "a directory");
    /* Nor an SQLite file with nothing in it (the CLI's purge wrote the
       schema into one and said it purged 0 rows). */
    unlink(d.path);
    t_sql(d.path, "PRAGMA journal_mode=WAL");
    cr_assert_eq(eb_store_open(d.path, &o, &s), EB_ENOENT);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(d.path, &db), SQLITE_OK);
    sqlite3_stmt *q;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &q, NULL),
                 SQLITE_OK);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int(q, 0), 0, "the schema was written");
    sqlite3_finalize(q);
    sqlite3_close(db);
    t_dir_rm(&d);
    cr_assert_eq(eb_store_open(NULL, NULL, &s), EB_EINVAL);
    cr_assert_eq(eb_store_open("/tmp/x.db", NULL, NULL), EB_EINVAL);
    cr_assert_null(s);
}

Test(store, durable_features_need_a_store)
{
    eb_bus *bus = t_bus_new(2);
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    cr_assert_eq(eb_publish(bus, "a", "x", 1, &o), EB_ENOTSUP);
    o.flags = EB_PUBLISH_DURABLE_LAZY;
    cr_assert_eq(eb_publish(bus, "a", "x", 1, &o), EB_ENOTSUP);
    eb_message m = {.topic = "a", .payload = "x", .len = 1};
    cr_assert_eq(eb_publish_batch(bus, &m, 1, &o, NULL), EB_ENOTSUP);
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.durable = true;
    so.name = "n";
    cr_assert_eq(eb_subscribe(bus, "a", never_fails, NULL, &so, NULL), EB_ENOTSUP);
    so.name = NULL;
    cr_assert_eq(eb_subscribe(bus, "a", never_fails, NULL, &so, NULL), EB_EINVAL);
    so.name = "n";
    so.durable = false;
    so.idempotent = true;
    cr_assert_eq(eb_subscribe(bus, "a", never_fails, NULL, &so, NULL), EB_EINVAL);
    eb_bus_destroy(bus);
}

/* ---- durable publishing ------------------------------------------------- */

Test(store, a_durable_publish_is_in_the_log_when_it_returns)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    eb_store_options ro;
    eb_store_options_init(&ro);
    ro.read_only = true;
    eb_store *reader = NULL;
    cr_assert_eq(eb_store_open(d.path, &ro, &reader), EB_OK);
    for (uint32_t i = 1; i <= 20; i++) {
        t_pub_durable(bus, "orders.created", i, EB_PUBLISH_DURABLE);
        /* Another connection sees it at once: it was committed. */
        cr_assert_eq(t_log_count(reader), i);
    }
    eb_store_close(reader);
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

Test(store, durable_events_are_delivered_with_their_log_sequence_in_order)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    cr_assert_eq(eb_subscribe(bus, "orders.#", t_log_handler, &r, &o, NULL), EB_OK);
    for (uint32_t i = 0; i < 300; i++)
        t_pub_durable(bus, "orders.created", i,
                      i % 3 ? EB_PUBLISH_DURABLE_LAZY : EB_PUBLISH_DURABLE);
    uint32_t mem = 7777;
    cr_assert_eq(eb_publish(bus, "orders.memory", &mem, 4, NULL), EB_OK);
    cr_assert_eq(eb_store_flush(s, -1), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r) == 301);
    cr_assert(ok, "delivered %u of 301", t_log_n(&r));
    eb_bus_destroy(bus);
    /* Durable events: in publish order with increasing log sequences;
       the memory-only one has none. */
    uint32_t next = 0;
    uint64_t last = 0;
    for (unsigned i = 0; i < r.n; i++) {
        if (r.v[i] == 7777) {
            cr_assert_eq(r.seq[i], 0);
            continue;
        }
        cr_assert_eq(r.v[i], next++, "out of order at %u", i);
        cr_assert_gt(r.seq[i], last);
        last = r.seq[i];
    }
    cr_assert_eq(t_log_count(s), 300);
    t_store_done(&d, s);
}

static int count_events(const eb_stored_event *ev, void *ctx)
{
    (void)ev;
    (*(unsigned *)ctx)++;
    return 0;
}

Test(store, batch_publishes_and_the_log_query)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    eb_message m[100];
    uint32_t v[100];
    for (int i = 0; i < 100; i++) {
        v[i] = (uint32_t)i;
        m[i] = (eb_message){.topic = i % 2 ? "a.odd" : "a.even", .payload = &v[i], .len = 4};
    }
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    size_t acc = 0;
    cr_assert_eq(eb_publish_batch(bus, m, 100, &o, &acc), EB_OK);
    cr_assert_eq(acc, 100);
    cr_assert_eq(t_log_count(s), 100);
    unsigned n = 0;
    eb_store_query q = {.topic = "a.odd"};
    cr_assert_eq(eb_store_events(s, &q, count_events, &n), EB_OK);
    cr_assert_eq(n, 50);
    n = 0;
    q = (eb_store_query){.after_seq = 90};
    cr_assert_eq(eb_store_events(s, &q, count_events, &n), EB_OK);
    cr_assert_eq(n, 10);
    n = 0;
    q = (eb_store_query){.topic = "#", .limit = 7};
    cr_assert_eq(eb_store_events(s, &q, count_events, &n), EB_OK);
    cr_assert_eq(n, 7);
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

/* ---- group commit: several threads publishing durably and waiting ------ */

#define GC_THREADS 8
#define GC_EACH 60
#define GC_FAILS 4 /* a publisher stops after this many failed publishes */

typedef struct gc_pub {
    eb_bus *bus;
    uint32_t thread;
    const char *payload_pad; /* bytes after the (thread, i) pair */
    size_t pad;
    bool accepted[GC_EACH]; /* which publishes returned EB_OK */
    unsigned ok, failed;
    int last_rc; /* of the last failed publish, else EB_OK */
} gc_pub;

static void *gc_pub_main(void *arg)
{
    gc_pub *p = arg;
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    uint8_t buf[8 + 4000];
    p->last_rc = EB_OK;
    for (uint32_t i = 0; i < GC_EACH && p->failed < GC_FAILS; i++) {
        uint32_t v[2] = {p->thread, i};
        memcpy(buf, v, sizeof v);
        memcpy(buf + 8, p->payload_pad, p->pad);
        int rc = eb_publish(p->bus, "gc.ev", buf, 8 + p->pad, &o);
        p->accepted[i] = rc == EB_OK;
        p->ok += rc == EB_OK;
        if (rc != EB_OK) {
            p->failed++;
            p->last_rc = rc;
        }
    }
    return NULL;
}

/* Reads the log back: each thread's rows must be its accepted publishes,
   each once, in the order it made them. */
typedef struct gc_log {
    const gc_pub *p;
    unsigned n[GC_THREADS];
    int64_t last[GC_THREADS]; /* the index of each thread's last row */
    unsigned bad;
} gc_log;

static int gc_log_row(const eb_stored_event *ev, void *ctx)
{
    gc_log *l = ctx;
    uint32_t v[2];
    if (ev->payload_len < sizeof v) {
        l->bad++;
        return 0;
    }
    memcpy(v, ev->payload, sizeof v);
    if (v[0] >= GC_THREADS || v[1] >= GC_EACH || (int64_t)v[1] <= l->last[v[0]] ||
        !l->p[v[0]].accepted[v[1]]) {
        l->bad++; /* a duplicate, a row out of its thread's order, or a refused publish */
        return 0;
    }
    l->last[v[0]] = v[1];
    l->n[v[0]]++;
    return 0;
}

/* Starts GC_THREADS publishers of up to GC_EACH waited durable events
   (payload (thread, i) and pad bytes), joins them and checks the log. */
static void gc_run(eb_bus *bus, eb_store *s, size_t pad, gc_pub *p)
{
    static char pad_bytes[4000];
    memset(pad_bytes, 'p', sizeof pad_bytes);
    pthread_t th[GC_THREADS];
    for (uint32_t t = 0; t < GC_THREADS; t++) {
        p[t] = (gc_pub){.bus = bus, .thread = t, .payload_pad = pad_bytes, .pad = pad};
        cr_assert_eq(pthread_create(&th[t], NULL, gc_pub_main, &p[t]), 0);
    }
    for (unsigned t = 0; t < GC_THREADS; t++)
        pthread_join(th[t], NULL);
    gc_log l = {.p = p};
    for (unsigned t = 0; t < GC_THREADS; t++)
        l.last[t] = -1;
    eb_store_query q = {.topic = "gc.ev"};
    cr_assert_eq(eb_store_events(s, &q, gc_log_row, &l), EB_OK);
    cr_assert_eq(l.bad, 0, "%u rows duplicated, refused or out of their thread's order", l.bad);
    for (unsigned t = 0; t < GC_THREADS; t++)
        cr_assert_eq(l.n[t], p[t].ok, "thread %u: %u accepted, %u in the log", t, p[t].ok, l.n[t]);
}

Test(store, waiting_durable_publishers_on_several_threads_share_commits_each_event_once_in_order)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_counter c;
    t_counter_init(&c);
    cr_assert_eq(eb_subscribe(bus, "gc.#", t_count_handler, &c, NULL, NULL), EB_OK);
    eb_store_stats st0, st1;
    cr_assert_eq(eb_store_stats_get(s, &st0), EB_OK);
    gc_pub p[GC_THREADS];
    gc_run(bus, s, 0, p);
    for (unsigned t = 0; t < GC_THREADS; t++)
        cr_assert_eq(p[t].failed, 0, "thread %u: %s", t, eb_err_name(p[t].last_rc));
    cr_assert_eq(eb_store_stats_get(s, &st1), EB_OK);
    uint64_t events = st1.appended - st0.appended, commits = st1.commits - st0.commits;
    cr_assert_eq(events, GC_THREADS * GC_EACH);
    /* Group commit: callers that wait at the same time share transactions
       (a commit per event would be GC_THREADS * GC_EACH). */
    cr_assert_lt(commits, events, "%llu commits for %llu events", (unsigned long long)commits,
                 (unsigned long long)events);
    cr_assert(t_wait_ge(&c.calls, GC_THREADS * GC_EACH), "every committed event is delivered");
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

Test(store, waiting_durable_publishers_on_several_threads_meet_a_full_disk_without_loss_or_hang)
{
    t_dir d;
    eb_store *s = t_store_small(&d, 60);
    eb_bus *bus = t_bus_store(s, 2);
    gc_pub p[GC_THREADS];
    gc_run(bus, s, 4000, p);
    unsigned ok = 0, failed = 0;
    for (unsigned t = 0; t < GC_THREADS; t++) {
        ok += p[t].ok;
        failed += p[t].failed;
        if (p[t].failed > 0)
            cr_assert_eq(p[t].last_rc, EB_EIO, "thread %u: %s", t, eb_err_name(p[t].last_rc));
    }
    cr_assert_gt(failed, 0, "the file fills up");
    cr_assert_gt(ok, 0);
    cr_assert_eq(t_log_count(s), ok, "the log holds exactly the accepted events");
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

static int durable_from_handler(const eb_event *ev, void *ctx)
{
    eb_bus *bus = ctx;
    size_t len;
    const uint32_t *p = eb_event_payload(ev, &len);
    uint32_t v = *p + 1000;
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.flags = EB_PUBLISH_DURABLE;
    return eb_publish(bus, "echo.out", &v, 4, &o);
}

Test(store, handlers_publish_durably_without_deadlock_on_a_full_intake)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.store = s;
    cfg.intake_capacity = 7;
    cfg.mailbox_capacity = 3;
    eb_bus *bus = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &bus), EB_OK);
    t_log_rec r;
    t_log_rec_init(&r);
    cr_assert_eq(eb_subscribe(bus, "echo.in", durable_from_handler, bus, NULL, NULL), EB_OK);
    cr_assert_eq(eb_subscribe(bus, "echo.out", t_log_handler, &r, NULL, NULL), EB_OK);
    for (uint32_t i = 0; i < 500; i++)
        cr_assert_eq(t_pub_u32(bus, "echo.in", i), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r) == 500);
    cr_assert(ok, "echoed %u of 500", t_log_n(&r));
    eb_bus_destroy(bus);
    cr_assert_eq(t_log_count(s), 500);
    t_store_done(&d, s);
}

Test(store, a_full_disk_fails_durable_publishes_and_memory_delivery_goes_on)
{
    t_dir d;
    eb_store *s = t_store_small(&d, 40);
    eb_bus *bus = t_bus_store(s, 2);
    t_counter c;
    t_counter_init(&c);
    cr_assert_eq(eb_subscribe(bus, "m", t_count_handler, &c, NULL, NULL), EB_OK);
    char big[4000];
    memset(big, 'x', sizeof big);
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    int rc = EB_OK;
    int accepted = 0;
    for (int i = 0; i < 200 && rc == EB_OK; i++) {
        rc = eb_publish(bus, "d", big, sizeof big, &o);
        accepted += rc == EB_OK;
    }
    cr_assert_eq(rc, EB_EIO, "a full file: %s", eb_err_name(rc));
    cr_assert_gt(accepted, 0);
    char msg[256];
    cr_assert_eq(eb_store_last_error(s, msg, sizeof msg) & 0xff, SQLITE_FULL, "%s", msg);
    for (uint32_t i = 0; i < 100; i++)
        cr_assert_eq(t_pub_u32(bus, "m", i), EB_OK);
    cr_assert(t_wait_ge(&c.calls, 100));
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    cr_assert_eq(st.events, (uint64_t)accepted, "only the committed events are in the log");
    cr_assert_geq(st.write_errors, 1);
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

/* ---- durable subscriptions --------------------------------------------- */

Test(store, a_durable_subscription_resumes_after_its_checkpoint)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    t_log_rec r;
    t_log_rec_init(&r);
    eb_bus *bus = t_bus_store(s, 2);
    t_durable_sub(bus, "orders.*", "billing", false, &r);
    for (uint32_t i = 0; i < 10; i++)
        t_pub_durable(bus, "orders.created", i, EB_PUBLISH_DURABLE);
    eb_bus_destroy(bus); /* delivers all 10 and saves the checkpoint */
    cr_assert_eq(r.n, 10);

    /* While it is away: 10 more that match, and some that do not. */
    bus = t_bus_store(s, 2);
    for (uint32_t i = 10; i < 20; i++) {
        t_pub_durable(bus, "orders.created", i, EB_PUBLISH_DURABLE_LAZY);
        t_pub_durable(bus, "users.created", 999, EB_PUBLISH_DURABLE_LAZY);
    }
    eb_bus_destroy(bus);

    t_log_rec r2;
    t_log_rec_init(&r2);
    bus = t_bus_store(s, 2);
    t_durable_sub(bus, "orders.*", "billing", false, &r2);
    for (uint32_t i = 20; i < 25; i++)
        t_pub_durable(bus, "orders.created", i, EB_PUBLISH_DURABLE);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r2) == 15);
    cr_assert(ok, "got %u of 15", t_log_n(&r2));
    eb_bus_destroy(bus);
    cr_assert_eq(r2.n, 15, "replayed twice?");
    for (unsigned i = 0; i < 15; i++)
        cr_assert_eq(r2.v[i], 10 + i, "at %u: %u", i, r2.v[i]);
    t_store_done(&d, s);
}

static int show_sub(const eb_store_subscription_info *i, void *ctx)
{
    if (strcmp(i->name, "billing") == 0)
        *(uint64_t *)ctx = i->checkpoint;
    return 0;
}

Test(store, a_replay_overlapping_live_publishing_delivers_each_event_once_in_order)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    for (uint32_t i = 0; i < 1000; i++)
        t_pub_durable(bus, "orders.created", i, EB_PUBLISH_DURABLE_LAZY);
    /* Subscribe while the lazy events are still being committed and
       dispatched, and keep publishing. */
    t_log_rec r;
    t_log_rec_init(&r);
    t_durable_sub(bus, "orders.*", "billing", false, &r);
    for (uint32_t i = 1000; i < 2000; i++)
        t_pub_durable(bus, "orders.created", i, EB_PUBLISH_DURABLE_LAZY);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r) == 2000);
    cr_assert(ok, "got %u of 2000", t_log_n(&r));
    eb_bus_destroy(bus);
    cr_assert_eq(r.n, 2000);
    for (unsigned i = 0; i < 2000; i++)
        cr_assert_eq(r.v[i], i, "at %u: %u", i, r.v[i]);
    uint64_t ck = 0;
    cr_assert_eq(eb_store_subscriptions(s, show_sub, &ck), EB_OK);
    cr_assert_eq(ck, 2000, "checkpoint %llu", (unsigned long long)ck);
    t_store_done(&d, s);
}

/* eb_store_flush promises the checkpoints that moved before the call; the
   writer otherwise writes them CKPT_DELAY_NS after the last ones. */
Test(store, a_flush_writes_the_checkpoint_of_every_event_already_handled)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    t_durable_sub(bus, "orders.*", "billing", false, &r);
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    for (uint32_t i = 1; i <= 20; i++) {
        eb_publish_result res;
        cr_assert_eq(eb_publish_wait(bus, "orders.created", &i, 4, &o, &res), EB_OK);
        cr_assert_eq(res.delivered, 1);
        cr_assert_eq(eb_store_flush(s, -1), EB_OK);
        uint64_t ck = 0;
        cr_assert_eq(eb_store_subscriptions(s, show_sub, &ck), EB_OK);
        cr_assert_eq(ck, i, "after event %u and a flush the file's checkpoint is %llu", i,
                     (unsigned long long)ck);
    }
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

/* Another process (here another handle on the file) appends to the log:
   a live durable subscription gets those events too, in log order, and its
   checkpoint never passes one it did not get (it once jumped over them, and
   they were lost for good). Both ways of noticing them: the writer looks
   at the log once a second, and at the start of each of its transactions. */
Test(store, a_durable_subscription_gets_the_events_another_process_logs_in_log_order)
{
    t_dir d;
    eb_store *a = t_store_new(&d);
    eb_bus *ba = t_bus_store(a, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    t_durable_sub(ba, "orders.*", "billing", false, &r);
    t_pub_durable(ba, "orders.created", 0, EB_PUBLISH_DURABLE);
    eb_store *b = t_store_open(d.path);
    eb_bus *bb = t_bus_store(b, 2);
    for (uint32_t i = 1; i <= 3; i++)
        t_pub_durable(bb, "orders.created", i, EB_PUBLISH_DURABLE);
    t_pub_durable(bb, "other.created", 99, EB_PUBLISH_DURABLE);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r) == 4); /* a writes nothing: its look at the log */
    cr_assert(ok, "got %u of 4 events", t_log_n(&r));
    for (uint32_t i = 4; i <= 6; i++)
        t_pub_durable(bb, "orders.created", i, EB_PUBLISH_DURABLE);
    t_pub_durable(ba, "orders.created", 7, EB_PUBLISH_DURABLE); /* its transaction's look */
    T_WAIT_FOR(ok, t_log_n(&r) == 8);
    cr_assert(ok, "got %u of 8 events", t_log_n(&r));
    eb_bus_destroy(bb);
    eb_store_close(b);
    cr_assert_eq(eb_store_flush(a, -1), EB_OK);
    uint64_t ck = 0;
    cr_assert_eq(eb_store_subscriptions(a, show_sub, &ck), EB_OK);
    cr_assert_eq(ck, 9, "checkpoint %llu", (unsigned long long)ck);
    eb_bus_destroy(ba);
    cr_assert_eq(r.n, 8);
    for (unsigned i = 0; i < 8; i++)
        cr_assert_eq(r.v[i], i, "at %u: %u (log order)", i, r.v[i]);
    eb_store_close(a);

    /* Nothing is left behind the checkpoint. */
    a = t_store_open(d.path);
    ba = t_bus_store(a, 2);
    t_log_rec_init(&r);
    t_durable_sub(ba, "orders.*", "billing", false, &r);
    t_sleep_ms(100);
    eb_bus_destroy(ba);
    cr_assert_eq(r.n, 0, "%u events delivered again", r.n);
    t_store_done(&d, a);
}

Test(store, a_durable_subscription_name_is_used_once_at_a_time)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    eb_subscription *a = t_durable_sub(bus, "x", "one", false, &r);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = "one";
    o.durable = true;
    cr_assert_eq(eb_subscribe(bus, "x", t_log_handler, &r, &o, NULL), EB_EEXIST);
    o.overflow = EB_OVERFLOW_DROP_NEWEST;
    o.name = "two";
    cr_assert_eq(eb_subscribe(bus, "x", t_log_handler, &r, &o, NULL), EB_EINVAL);
    cr_assert_eq(eb_unsubscribe(a), EB_OK);
    t_durable_sub(bus, "x", "one", false, &r); /* free again */
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

Test(store, an_idempotent_subscription_never_sees_a_processed_id_again)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec a, b;
    t_log_rec_init(&a);
    t_log_rec_init(&b);
    t_durable_sub(bus, "e", "idem", true, &a);
    t_durable_sub(bus, "e", "plain", false, &b);
    for (uint32_t i = 0; i < 50; i++)
        t_pub_durable(bus, "e", i, EB_PUBLISH_DURABLE);
    eb_bus_destroy(bus);
    eb_store_close(s);
    cr_assert_eq(a.n, 50);
    cr_assert_eq(b.n, 50);
    /* As after a crash that lost the checkpoints but not the processed
       ids: both start over from 0. */
    t_sql(d.path, "UPDATE eb_subscriptions SET checkpoint = 0");
    s = t_store_open(d.path);
    bus = t_bus_store(s, 2);
    t_log_rec a2, b2;
    t_log_rec_init(&a2);
    t_log_rec_init(&b2);
    t_durable_sub(bus, "e", "idem", true, &a2);
    t_durable_sub(bus, "e", "plain", false, &b2);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&b2) == 50);
    cr_assert(ok);
    eb_bus_destroy(bus);
    cr_assert_eq(b2.n, 50, "at least once: the plain one sees them again");
    cr_assert_eq(a2.n, 0, "the idempotent one saw %u again", a2.n);
    t_store_done(&d, s);
}

/* ---- dead letters -------------------------------------------------------- */

typedef struct dl_seen {
    unsigned n;
    int64_t id;
    int error;
    unsigned attempts;
    char sub[32];
    char topic[32];
    uint64_t seq;
} dl_seen;

static int see_dl(const eb_store_deadletter *dl, void *ctx)
{
    dl_seen *d = ctx;
    d->n++;
    d->id = dl->id;
    d->error = dl->error;
    d->attempts = dl->attempts;
    d->seq = dl->seq;
    snprintf(d->sub, sizeof d->sub, "%s", dl->subscription);
    snprintf(d->topic, sizeof d->topic, "%s", dl->topic);
    return 0;
}

Test(store, dead_letters_are_stored_listed_requeued_and_purged)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    r.fail_first = 2;
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = "payments";
    o.max_attempts = 2;
    o.backoff_initial_ns = 1000000;
    cr_assert_eq(eb_subscribe(bus, "pay.*", t_log_handler, &r, &o, NULL), EB_OK);
    t_pub_durable(bus, "pay.card", 42, EB_PUBLISH_DURABLE);
    eb_bus_stats bs;
    bool ok;
    T_WAIT_STATS(ok, bus, bs, bs.dead_lettered == 1);
    cr_assert(ok);
    cr_assert_eq(eb_store_flush(s, -1), EB_OK);
    dl_seen seen = {0};
    cr_assert_eq(eb_store_deadletters(s, 0, see_dl, &seen), EB_OK);
    cr_assert_eq(seen.n, 1);
    cr_assert_eq(seen.error, -100);
    cr_assert_eq(seen.attempts, 2);
    cr_assert_eq(seen.seq, 1);
    cr_assert_str_eq(seen.sub, "payments");
    cr_assert_str_eq(seen.topic, "pay.card");

    /* Requeued: published again (now the handler succeeds). */
    size_t n = 0;
    cr_assert_eq(eb_store_deadletter_requeue(s, seen.id, &n), EB_OK);
    cr_assert_eq(n, 1);
    T_WAIT_FOR(ok, t_log_n(&r) == 1);
    cr_assert(ok, "the requeued event was not delivered");
    cr_assert_eq(r.v[0], 42);
    cr_assert_gt(r.seq[0], 1, "requeued as a new log entry");
    cr_assert_eq(eb_store_deadletter_requeue(s, seen.id, &n), EB_ENOENT);

    /* Two more failures, purged. */
    r.fail_first = 4;
    t_pub_durable(bus, "pay.card", 1, EB_PUBLISH_DURABLE);
    t_pub_durable(bus, "pay.card", 2, EB_PUBLISH_DURABLE);
    T_WAIT_STATS(ok, bus, bs, bs.dead_lettered == 3);
    cr_assert(ok);
    cr_assert_eq(eb_store_flush(s, -1), EB_OK);
    cr_assert_eq(eb_store_deadletter_purge(s, 0, &n), EB_OK);
    cr_assert_eq(n, 2);
    seen = (dl_seen){0};
    cr_assert_eq(eb_store_deadletters(s, 0, see_dl, &seen), EB_OK);
    cr_assert_eq(seen.n, 0);
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

/* ---- scheduled events ---------------------------------------------------- */

Test(store, a_durable_scheduled_event_survives_a_restart_and_fires_once)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    o.delay_ns = 300 * T_MS;
    uint32_t v = 5;
    cr_assert_eq(eb_publish(bus, "reminder", &v, 4, &o), EB_OK);
    eb_bus_destroy(bus); /* before it is due */
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    cr_assert_eq(st.scheduled, 1);
    eb_store_close(s);

    s = t_store_open(d.path);
    bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    cr_assert_eq(eb_subscribe(bus, "reminder", t_log_handler, &r, NULL, NULL), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r) == 1);
    cr_assert(ok, "the scheduled event did not fire");
    cr_assert_eq(r.v[0], 5);
    t_sleep_ms(50);
    eb_bus_destroy(bus);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    cr_assert_eq(st.scheduled, 0);
    cr_assert_eq(st.events, 1, "fired into the log");
    eb_store_close(s);

    /* And never again. */
    s = t_store_open(d.path);
    bus = t_bus_store(s, 2);
    t_log_rec_init(&r);
    cr_assert_eq(eb_subscribe(bus, "reminder", t_log_handler, &r, NULL, NULL), EB_OK);
    t_sleep_ms(100);
    eb_bus_destroy(bus);
    cr_assert_eq(r.n, 0);
    t_store_done(&d, s);
}

Test(store, a_scheduled_event_due_on_a_full_disk_is_retried_at_a_pace_and_fires_once_room_returns)
{
    t_dir d;
    eb_store *s = t_store_small(&d, 60);
    eb_bus *bus = t_bus_store(s, 2);
    t_counter c;
    t_counter_init(&c);
    cr_assert_eq(eb_subscribe(bus, "reminder", t_count_handler, &c, NULL, NULL), EB_OK);
    /* As big as the events that fill the file: once they no longer fit,
       neither does it. */
    char big[4000];
    memset(big, 'x', sizeof big);
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    o.delay_ns = 1500 * T_MS;
    int64_t due = t_now_ns() + o.delay_ns;
    cr_assert_eq(eb_publish(bus, "reminder", big, sizeof big, &o), EB_OK);
    /* Fill the file before it is due. */
    eb_publish_options f = t_durable(EB_PUBLISH_DURABLE);
    int rc = EB_OK;
    for (int i = 0; i < 200 && rc == EB_OK; i++)
        rc = eb_publish(bus, "filler", big, sizeof big, &f);
    cr_assert_eq(rc, EB_EIO, "the file fills up: %s", eb_err_name(rc));
    cr_assert_lt(t_now_ns(), due, "the file must be full before the event is due");
    /* Due, and its firing fails for lack of room: the writer retries, but
       at a pace, not in a loop that takes a whole CPU. */
    t_sleep_ms((due - t_now_ns()) / T_MS + 300);
    eb_store_stats a, b;
    cr_assert_eq(eb_store_stats_get(s, &a), EB_OK);
    t_sleep_ms(200);
    cr_assert_eq(eb_store_stats_get(s, &b), EB_OK);
    cr_assert_eq(b.scheduled, 1, "still scheduled");
    cr_assert_geq(b.write_errors, 2, "the filler's failure, then the firing's");
    cr_assert_leq(b.write_errors - a.write_errors, 40, "%llu failed transactions in 200 ms",
                  (unsigned long long)(b.write_errors - a.write_errors));
    cr_assert_eq(atomic_load(&c.calls), 0, "it cannot fire without room in the log");
    eb_bus_destroy(bus);
    eb_store_close(s);
    /* Room again: it fires, once, into the log (it may fire before anyone
       subscribes to the new bus, so the log is what is checked). */
    s = t_store_open(d.path);
    bus = t_bus_store(s, 2);
    bool ok;
    eb_store_stats st;
    T_WAIT_FOR(ok, eb_store_stats_get(s, &st) == EB_OK && st.scheduled == 0);
    cr_assert(ok, "the scheduled event did not fire once the file had room");
    eb_bus_destroy(bus);
    unsigned n = 0;
    eb_store_query q = {.topic = "reminder"};
    cr_assert_eq(eb_store_events(s, &q, count_events, &n), EB_OK);
    cr_assert_eq(n, 1, "fired %u times", n);
    t_store_done(&d, s);
}

Test(store, publish_at_a_unix_time)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    cr_assert_eq(eb_subscribe(bus, "at", t_log_handler, &r, NULL, NULL), EB_OK);
    int64_t t0 = t_realtime_ns();
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE_LAZY);
    o.at_ns = t0 + 150 * T_MS;
    uint32_t v = 1;
    cr_assert_eq(eb_publish(bus, "at", &v, 4, &o), EB_OK);
    o.flags = 0; /* memory-only too */
    v = 2;
    cr_assert_eq(eb_publish(bus, "at", &v, 4, &o), EB_OK);
    o.delay_ns = 5;
    cr_assert_eq(eb_publish(bus, "at", &v, 4, &o), EB_EINVAL, "at_ns with delay_ns");
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r) == 2);
    cr_assert(ok);
    cr_assert_geq(t_realtime_ns() - t0, 150 * T_MS);
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

/* ---- outbox -------------------------------------------------------------- */

static eb_store *t_store_open_again(const char *path)
{
    return t_store_open(path); /* a second handle: another owner token */
}

static int64_t t_claim_one(eb_store *s, int64_t lease_ns)
{
    eb_outbox_batch *b = NULL;
    cr_assert_eq(eb_outbox_claim(s, 1, lease_ns, &b), EB_OK);
    cr_assert_eq(b->n, 1);
    int64_t id = b->msgs[0].id;
    eb_outbox_batch_free(b);
    return id;
}

/* A claim takes the rows claimable the longest first: a crashed owner's
   row (lease expired) does not wait behind a backlog of newer ready rows,
   and a row abandoned for an immediate retry goes behind the rows that
   were ready before, not behind those added after. */
Test(store, outbox_claims_take_the_rows_claimable_longest_first)
{
    t_dir d;
    eb_store *a = t_store_new(&d);
    eb_store *b = t_store_open_again(d.path);
    int64_t ids[6];
    cr_assert_eq(eb_outbox_add(a, "cmd.ship", "p", 1, NULL, 0, &ids[0]), EB_OK);
    cr_assert_eq(t_claim_one(a, 20 * T_MS), ids[0]); /* a "crashes" holding it */
    t_sleep_ms(40);
    for (int i = 1; i < 4; i++)
        cr_assert_eq(eb_outbox_add(a, "cmd.ship", "p", 1, NULL, 0, &ids[i]), EB_OK);
    cr_assert_eq(t_claim_one(b, 10 * T_SEC), ids[0], "the expired lease first");
    cr_assert_eq(t_claim_one(b, 10 * T_SEC), ids[1]);
    cr_assert_eq(eb_outbox_abandon(b, ids[1], "again", 0), EB_OK);
    t_sleep_ms(2);
    cr_assert_eq(eb_outbox_add(a, "cmd.ship", "p", 1, NULL, 0, &ids[4]), EB_OK);
    cr_assert_eq(t_claim_one(b, 10 * T_SEC), ids[2]);
    cr_assert_eq(t_claim_one(b, 10 * T_SEC), ids[3]);
    cr_assert_eq(t_claim_one(b, 10 * T_SEC), ids[1], "retried before the rows added since");
    cr_assert_eq(t_claim_one(b, 10 * T_SEC), ids[4]);
    eb_store_close(b);
    t_store_done(&d, a);
}

/* Spans too large to add to the clock mean "never", not a time in the past
   (they wrapped: a lease that had already expired, a delayed event fired at
   once; UBSan saw the overflow). */
Test(store, the_largest_lease_and_delay_mean_never)
{
    t_dir d;
    eb_store *a = t_store_new(&d);
    eb_store *b = t_store_open_again(d.path);
    int64_t id;
    cr_assert_eq(eb_outbox_add(a, "cmd.ship", "p", 1, NULL, 0, &id), EB_OK);
    cr_assert_eq(t_claim_one(a, INT64_MAX), id);
    eb_outbox_batch *bb = NULL;
    cr_assert_eq(eb_outbox_claim(b, 10, 10 * T_SEC, &bb), EB_OK);
    cr_assert_eq(bb->n, 0, "a's lease holds");
    eb_outbox_batch_free(bb);
    cr_assert_eq(eb_outbox_ack(a, id), EB_OK);
    eb_store_close(b);

    eb_bus *bus = t_bus_store(a, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    cr_assert_eq(eb_subscribe(bus, "later", t_log_handler, &r, NULL, NULL), EB_OK);
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    o.delay_ns = INT64_MAX;
    uint32_t v = 1;
    cr_assert_eq(eb_publish(bus, "later", &v, 4, &o), EB_OK);
    eb_message m = {.topic = "later", .payload = &v, .len = 4};
    cr_assert_eq(eb_publish_batch(bus, &m, 1, &o, NULL), EB_OK);
    t_sleep_ms(100);
    eb_bus_destroy(bus);
    cr_assert_eq(r.n, 0, "fired");
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(a, &st), EB_OK);
    cr_assert_eq(st.scheduled, 2);
    t_store_done(&d, a);
}

Test(store, outbox_claim_ack_abandon_fail_and_lease_takeover)
{
    t_dir d;
    eb_store *a = t_store_new(&d);
    eb_store *b = t_store_open_again(d.path);
    int64_t ids[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(eb_outbox_add(a, "cmd.ship", "p", 1, "k", 1, &ids[i]), EB_OK);
    eb_outbox_batch *ba = NULL, *bb = NULL;
    cr_assert_eq(eb_outbox_claim(a, 2, 200 * T_MS, &ba), EB_OK);
    cr_assert_eq(ba->n, 2);
    cr_assert_eq(ba->msgs[0].id, ids[0]);
    cr_assert_str_eq(ba->msgs[0].topic, "cmd.ship");
    cr_assert_eq(ba->msgs[0].attempts, 1);
    cr_assert_eq(ba->msgs[0].key_len, 1);
    /* b gets the other two, never a's while a's lease holds. */
    cr_assert_eq(eb_outbox_claim(b, 10, 200 * T_MS, &bb), EB_OK);
    cr_assert_eq(bb->n, 2);
    cr_assert_eq(bb->msgs[0].id, ids[2]);
    cr_assert_eq(eb_outbox_ack(b, ids[0]), EB_ECONFLICT, "b does not hold a's row");
    cr_assert_eq(eb_outbox_ack(a, ids[0]), EB_OK);
    cr_assert_eq(eb_outbox_ack(a, ids[0]), EB_ECONFLICT, "already done");
    cr_assert_eq(eb_outbox_ack(a, 999), EB_ENOENT);
    cr_assert_eq(eb_outbox_fail(b, ids[2], "bad address"), EB_OK);
    cr_assert_eq(eb_outbox_abandon(b, ids[3], "try later", 0), EB_OK);
    eb_outbox_batch_free(bb);
    cr_assert_eq(eb_outbox_claim(b, 10, 200 * T_MS, &bb), EB_OK);
    cr_assert_eq(bb->n, 1, "the abandoned row is ready again");
    cr_assert_eq(bb->msgs[0].id, ids[3]);
    cr_assert_eq(bb->msgs[0].attempts, 2);
    cr_assert_str_eq(bb->msgs[0].last_error, "try later");
    eb_outbox_batch_free(bb);
    /* a "crashes" holding ids[1]: once the lease expires b takes it over,
       and a can no longer acknowledge it. */
    t_sleep_ms(250);
    cr_assert_eq(eb_outbox_claim(b, 10, 10 * T_SEC, &bb), EB_OK);
    cr_assert_eq(bb->n, 2, "expired leases are claimable");
    cr_assert_eq(eb_outbox_ack(a, ids[1]), EB_ECONFLICT);
    for (size_t i = 0; i < bb->n; i++)
        cr_assert_eq(eb_outbox_ack(b, bb->msgs[i].id), EB_OK);
    eb_outbox_batch_free(bb);
    eb_outbox_batch_free(ba);
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(a, &st), EB_OK);
    cr_assert_eq(st.outbox_done, 3);
    cr_assert_eq(st.outbox_failed, 1);
    cr_assert_eq(st.outbox_ready + st.outbox_in_progress, 0);
    eb_store_close(b);
    t_store_done(&d, a);
}

Test(store, outbox_reap_returns_expired_leases_and_abandon_backs_off)
{
    t_dir d;
    eb_store *a = t_store_new(&d);
    int64_t id;
    cr_assert_eq(eb_outbox_add(a, "x", NULL, 0, NULL, 0, &id), EB_OK);
    eb_outbox_batch *b = NULL;
    cr_assert_eq(eb_outbox_claim(a, 1, 50 * T_MS, &b), EB_OK);
    eb_outbox_batch_free(b);
    size_t n = 9;
    cr_assert_eq(eb_outbox_reap(a, &n), EB_OK);
    cr_assert_eq(n, 0, "the lease still holds");
    t_sleep_ms(80);
    cr_assert_eq(eb_outbox_reap(a, &n), EB_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(eb_outbox_claim(a, 1, T_SEC, &b), EB_OK);
    cr_assert_eq(b->n, 1);
    eb_outbox_batch_free(b);
    cr_assert_eq(eb_outbox_abandon(a, id, NULL, -1), EB_OK); /* backoff: >= 100 ms */
    cr_assert_eq(eb_outbox_claim(a, 1, T_SEC, &b), EB_OK);
    cr_assert_eq(b->n, 0, "not before its next attempt");
    eb_outbox_batch_free(b);
    cr_assert_eq(eb_outbox_claim(a, 0, T_SEC, &b), EB_EINVAL);
    cr_assert_eq(eb_outbox_claim(a, 1, 0, &b), EB_EINVAL);
    cr_assert_eq(eb_outbox_add(a, NULL, NULL, 0, NULL, 0, NULL), EB_EINVAL);
    t_store_done(&d, a);
}

/* A reap by another handle only makes an expired lease visible as READY:
   the row stays its holder's until another handle claims it (before, the
   reap cleared the owner, and the holder's ack failed with the row READY
   again: processed twice). */
Test(store, a_reaped_row_is_still_its_holders_until_another_handle_claims_it)
{
    t_dir d;
    eb_store *a = t_store_new(&d);
    eb_store *b = t_store_open(d.path);
    int64_t id1, id2;
    cr_assert_eq(eb_outbox_add(a, "x", NULL, 0, NULL, 0, &id1), EB_OK);
    eb_outbox_batch *ba = NULL, *bb = NULL;
    cr_assert_eq(eb_outbox_claim(a, 1, T_MS, &ba), EB_OK);
    cr_assert_eq(ba->n, 1);
    eb_outbox_batch_free(ba);
    t_sleep_ms(5);
    size_t n = 0;
    cr_assert_eq(eb_outbox_reap(b, &n), EB_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(eb_outbox_ack(a, id1), EB_OK, "nobody took it over");
    cr_assert_eq(eb_outbox_claim(b, 1, T_SEC, &bb), EB_OK);
    cr_assert_eq(bb->n, 0, "done, not claimable");
    eb_outbox_batch_free(bb);
    /* Reaped, then claimed by b: now b's, and a cannot touch it. */
    cr_assert_eq(eb_outbox_add(a, "x", NULL, 0, NULL, 0, &id2), EB_OK);
    cr_assert_eq(eb_outbox_claim(a, 1, T_MS, &ba), EB_OK);
    eb_outbox_batch_free(ba);
    t_sleep_ms(5);
    cr_assert_eq(eb_outbox_reap(b, &n), EB_OK);
    cr_assert_eq(eb_outbox_claim(b, 1, T_SEC, &bb), EB_OK);
    cr_assert_eq(bb->n, 1);
    eb_outbox_batch_free(bb);
    cr_assert_eq(eb_outbox_ack(a, id2), EB_ECONFLICT);
    cr_assert_eq(eb_outbox_fail(a, id2, "no"), EB_ECONFLICT);
    cr_assert_eq(eb_outbox_abandon(a, id2, "no", 0), EB_ECONFLICT);
    cr_assert_eq(eb_outbox_ack(b, id2), EB_OK);
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(a, &st), EB_OK);
    cr_assert_eq(st.outbox_done, 2);
    eb_store_close(b);
    t_store_done(&d, a);
}

/* Two processes claim from one file at once; every row is processed
   exactly once and no row is ever held by both. */
Test(store, two_processes_never_claim_the_same_row)
{
    t_dir d;
    t_dir_new(&d);
    enum { ROWS = 600 };
    eb_store *s = t_store_open(d.path);
    for (int i = 0; i < ROWS; i++)
        cr_assert_eq(eb_outbox_add(s, "job", &i, sizeof i, NULL, 0, NULL), EB_OK);
    eb_store_close(s);
    int to[2], fds[2][2];
    pid_t pid[2];
    for (int p = 0; p < 2; p++) {
        char *argv[] = {"store_child", "outbox", d.path, NULL};
        pid[p] = t_spawn(EB_STORE_CHILD, argv, &to[p], &fds[p][0]); /* store_child.c */
    }
    for (int p = 0; p < 2; p++) {
        cr_assert_eq(write(to[p], "g", 1), 1); /* go, both at once */
        close(to[p]);
    }
    static unsigned seen[ROWS + 1];
    memset(seen, 0, sizeof seen);
    unsigned per[2] = {0, 0};
    for (int p = 0; p < 2; p++) {
        int64_t id;
        while (read(fds[p][0], &id, sizeof id) == sizeof id) {
            cr_assert(id >= 1 && id <= ROWS);
            seen[id]++;
            per[p]++;
        }
        close(fds[p][0]);
    }
    for (int p = 0; p < 2; p++) {
        int st;
        cr_assert_eq(waitpid(pid[p], &st, 0), pid[p]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d: status %d", p, st);
    }
    for (int i = 1; i <= ROWS; i++)
        cr_assert_eq(seen[i], 1, "row %d claimed %u times", i, seen[i]);
    cr_assert_gt(per[0], 0, "both processes took part");
    cr_assert_gt(per[1], 0, "both processes took part");
    t_dir_rm(&d);
}

/* Processes that open (and so create) one new file at the same moment:
   each opens it and its row is in it. Before, they read the schema without
   a lock: the later ones failed ("table eb_events already exists",
   EB_EIO; or "not an eventbus store"), and a failing creator removed the
   file under the others (235 failed opens and 32 files gone in 200 rounds
   of 4 in the audit's probe). */
static int oc_count(const eb_outbox_message *msg, void *ctx)
{
    (void)msg;
    (*(int *)ctx)++;
    return 0;
}

Test(store, processes_creating_one_new_file_at_once_all_open_it)
{
    enum { ROUNDS = 25, PROCS = 4 };
    t_dir d;
    t_dir_new(&d);
    for (int r = 0; r < ROUNDS; r++) {
        char p[128];
        unlink(d.path);
        snprintf(p, sizeof p, "%s-wal", d.path);
        unlink(p);
        snprintf(p, sizeof p, "%s-shm", d.path);
        unlink(p);
        int to[PROCS], from[PROCS];
        pid_t pid[PROCS];
        char at[32]; /* all start at this moment */
        snprintf(at, sizeof at, "%lld", (long long)(t_now_ns() + 100 * T_MS));
        for (int c = 0; c < PROCS; c++) {
            char *argv[] = {"store_child", "create", d.path, at, NULL};
            pid[c] = t_spawn(EB_STORE_CHILD, argv, &to[c], &from[c]); /* store_child.c */
            close(to[c]);
        }
        for (int c = 0; c < PROCS; c++) {
            int rc[2] = {1, 1};
            cr_assert_eq(read(from[c], rc, sizeof rc), (ssize_t)sizeof rc, "round %d: no result",
                         r);
            close(from[c]);
            cr_assert_eq(rc[0], EB_OK, "round %d: eb_store_open: %s", r, eb_err_name(rc[0]));
            cr_assert_eq(rc[1], EB_OK, "round %d: eb_outbox_add: %s", r, eb_err_name(rc[1]));
        }
        for (int c = 0; c < PROCS; c++) {
            int st;
            cr_assert_eq(waitpid(pid[c], &st, 0), pid[c]);
            cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d: status %d", r, st);
        }
        eb_store *s = t_store_open(d.path);
        int n = 0;
        cr_assert_eq(eb_outbox_list(s, -1, 0, oc_count, &n), EB_OK);
        cr_assert_eq(n, PROCS, "round %d: %d of %d rows in the file", r, n, PROCS);
        eb_store_close(s);
    }
    t_dir_rm(&d);
}

/* A durable subscription's checkpoint never passes an event whose dead
   letter is not committed yet: the dead letter is queued before the
   checkpoint moves, and must be in the same or an earlier transaction.
   With more than one chunk of lazy work queued (LAZY_BATCH_MAX) the
   checkpoint used to go in the first chunk and the dead letter in a later
   one: a SIGKILL between them lost the event (neither replayed nor
   dead-lettered). A reader on its own connection checks every committed
   state while lazy events pile up. */
static int dlc_fail(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    return 1;
}

typedef struct dlc_pub {
    eb_bus *bus;
    unsigned rounds;
    int rc;
    atomic_bool done;
} dlc_pub;

static void *dlc_publisher(void *arg)
{
    dlc_pub *p = arg;
    eb_publish_options po;
    eb_publish_options_init(&po); /* blocking: the store's backlog paces it */
    po.flags = EB_PUBLISH_DURABLE_LAZY;
    char payload[64] = {0};
    for (unsigned i = 0; i < p->rounds && p->rc == EB_OK; i++) {
        for (int k = 0; k < 50 && p->rc == EB_OK; k++)
            p->rc = eb_publish(p->bus, "noise", payload, sizeof payload, &po);
        char t[32];
        snprintf(t, sizeof t, "fail.%u", i);
        if (p->rc == EB_OK)
            p->rc = eb_publish(p->bus, t, payload, sizeof payload, &po);
    }
    atomic_store(&p->done, true);
    return NULL;
}

Test(store, a_checkpoint_is_never_committed_before_the_dead_letters_behind_it)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.durable = true;
    o.name = "dl";
    o.max_attempts = 1;
    cr_assert_eq(eb_subscribe(bus, "fail.*", dlc_fail, NULL, &o, NULL), EB_OK);
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(d.path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    static const char *q =
        "SELECT count(*) FROM eb_events e WHERE e.topic GLOB 'fail.*'"
        " AND e.seq <= (SELECT checkpoint FROM eb_subscriptions WHERE name = 'dl')"
        " AND NOT EXISTS (SELECT 1 FROM eb_deadletters x WHERE x.event_id = e.id)";
    dlc_pub p = {.bus = bus, .rounds = 3000};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, dlc_publisher, &p), 0);
    long worst = 0, polls = 0;
    while (!atomic_load(&p.done) || polls < 3) {
        sqlite3_stmt *st = NULL;
        cr_assert_eq(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > worst)
            worst = (long)sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        polls++;
        t_sleep_ms(2);
    }
    pthread_join(th, NULL);
    cr_assert_eq(p.rc, EB_OK, "eb_publish: %s", eb_err_name(p.rc));
    eb_bus_destroy(bus);
    sqlite3_close(db);
    cr_assert_eq(t_log_count(s), 51 * 3000);
    cr_assert_eq(worst, 0, "%ld failed events at or below the checkpoint without their dead letter",
                 worst);
    t_store_done(&d, s);
}

/* ---- saga store ---------------------------------------------------------- */

Test(store, the_sqlite_saga_store_keeps_versions_and_refusals)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_saga_store *ss = NULL;
    cr_assert_eq(eb_saga_sqlite_store_create(s, &ss), EB_OK);
    uint64_t state = 7;
    char outbox[] = "commands";
    eb_saga_record rec = {.state = &state,
                          .state_size = 8,
                          .version = 1,
                          .outbox = outbox,
                          .outbox_len = sizeof outbox};
    memset(rec.event_id, 1, 16);
    cr_assert_eq(ss->create(ss, "order", "o1", 2, &rec), EB_OK);
    cr_assert_eq(ss->create(ss, "order", "o1", 2, &rec), EB_EEXIST);
    uint64_t got = 0;
    eb_saga_record out = {.state = &got, .state_size = 8};
    cr_assert_eq(ss->load(ss, "order", "o1", 2, &out), EB_OK);
    cr_assert_eq(got, 7);
    cr_assert_eq(out.version, 1);
    cr_assert_eq(out.outbox_len, sizeof outbox);
    cr_assert_str_eq(out.outbox, "commands");
    free(out.outbox);
    state = 8;
    rec.version = 2;
    rec.outbox = NULL;
    rec.outbox_len = 0;
    cr_assert_eq(ss->save(ss, "order", "o1", 2, 5, &rec), EB_ECONFLICT);
    cr_assert_eq(ss->save(ss, "order", "o1", 2, 1, &rec), EB_OK);
    cr_assert_eq(ss->save(ss, "order", "o9", 2, 1, &rec), EB_ENOENT);
    cr_assert_eq(ss->dispatched(ss, "order", "o1", 2, 2), EB_OK);
    eb_saga_record small = {.state = &got, .state_size = 4};
    cr_assert_eq(ss->load(ss, "order", "o1", 2, &small), EB_EINVAL);
    cr_assert_eq(ss->load(ss, "order", "o1", 2, &out), EB_OK);
    cr_assert_eq(got, 8);
    cr_assert_null(out.outbox);
    cr_assert_eq(ss->remove(ss, "order", "o1", 2, 1), EB_ECONFLICT);
    cr_assert_eq(ss->remove(ss, "order", "o1", 2, 2), EB_OK);
    cr_assert_eq(ss->load(ss, "order", "o1", 2, &out), EB_ENOENT);
    eb_saga_store_destroy(ss);
    t_store_done(&d, s);
}

/* A crash between a saga's save and its dispatch, then a restart that
   registers the aggregate first (as eb_saga_register asks): the recovered
   commands reach the aggregate, and its replies reach the saga (before,
   the recovery ran before the saga subscribed and every reply was lost). */
/* The order saga: placed -> charge (a command), charged -> complete. */
static int rr_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ctx;
    uint32_t *stage = state;
    size_t len;
    const void *o = eb_event_payload(ev, &len);
    if (strcmp(eb_event_topic(ev), "order.placed") == 0 && eb_saga_is_new(sc)) {
        *stage = 1;
        return eb_saga_send(sc, "payment.charge", o, len, o, len);
    }
    if (strcmp(eb_event_topic(ev), "order.charged") == 0 && *stage == 1) {
        *stage = 2;
        eb_saga_complete(sc);
    }
    return EB_OK;
}

static int rr_pay(eb_aggregate_ctx *ac, const eb_event *cmd, void *state, void *ctx)
{
    (void)state;
    size_t len;
    const void *o = eb_event_payload(cmd, &len);
    atomic_fetch_add((atomic_uint *)ctx, 1);
    return eb_aggregate_emit(ac, "order.charged", o, len, o, len);
}

static int rr_count(const eb_store_saga_info *i, void *ctx)
{
    (void)i;
    (*(unsigned *)ctx)++;
    return 0;
}

Test(store, replies_to_commands_a_saga_recovers_at_registration_reach_it)
{
    enum { ORDERS = 64 };
    t_dir d;
    eb_store *s = t_store_new(&d);
    const char *topics[] = {"order.placed", "order.charged"}, *starts[] = {"order.placed"};
    eb_saga_def def = {.name = "order",
                       .topics = topics,
                       .n_topics = 2,
                       .start_topics = starts,
                       .n_start_topics = 1,
                       .state_size = sizeof(uint32_t),
                       .transition = rr_transition};
    /* Before the crash: saved, never marked dispatched (a store without
       `dispatched`), and no aggregate to receive the commands. */
    eb_bus *bus = t_bus_store(s, 2);
    eb_saga_store *real = NULL;
    cr_assert_eq(eb_saga_sqlite_store_create(s, &real), EB_OK);
    t_saga_fwd crashing;
    t_saga_fwd_init(&crashing, real);
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = &crashing.store;
    eb_saga *g = NULL;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &g), EB_OK);
    for (uint32_t i = 0; i < ORDERS; i++) {
        eb_publish_options po = t_bounded_opts();
        po.key = &i;
        po.key_len = sizeof i;
        cr_assert_eq(eb_publish_wait(bus, "order.placed", &i, sizeof i, &po, NULL), EB_OK);
    }
    cr_assert_eq(eb_saga_unregister(g), EB_OK);
    eb_bus_destroy(bus);
    unsigned rows = 0;
    cr_assert_eq(eb_store_sagas(s, "order", 0, rr_count, &rows), EB_OK);
    cr_assert_eq(rows, ORDERS);
    eb_saga_store_destroy(real);

    /* The restart: the aggregate, then the saga on the SQLite saga store. */
    bus = t_bus_store(s, 2);
    eb_saga_store *ss = NULL;
    cr_assert_eq(eb_saga_sqlite_store_create(s, &ss), EB_OK);
    eb_command_bus *cb = NULL;
    cr_assert_eq(eb_command_bus_create(bus, &cb), EB_OK);
    atomic_uint charged = 0;
    const char *cmds[] = {"payment.charge"};
    eb_aggregate_def ad = {.name = "payment",
                           .commands = cmds,
                           .n_commands = 1,
                           .state_size = sizeof(uint32_t),
                           .handle = rr_pay,
                           .ctx = &charged};
    eb_aggregate *agg = NULL;
    cr_assert_eq(eb_aggregate_register(cb, &ad, NULL, &agg), EB_OK);
    so.store = ss;
    so.commands = cb;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &g), EB_OK);
    eb_saga_stats gs;
    cr_assert_eq(eb_saga_stats_get(g, &gs), EB_OK);
    cr_assert_eq(gs.redispatched, ORDERS, "every pending outbox was sent before register returned");
    bool ok;
    T_WAIT_FOR(ok,
               (rows = 0, eb_store_sagas(s, "order", 0, rr_count, &rows) == EB_OK && rows == 0));
    cr_assert(ok, "%u of %d orders still wait for the reply to their recovered command", rows,
              ORDERS);
    cr_assert_eq(atomic_load(&charged), ORDERS, "each recovered command was handled once");
    /* The counter follows the remove that ends an instance. */
    T_WAIT_FOR(ok, eb_saga_stats_get(g, &gs) == EB_OK && gs.completed == ORDERS);
    cr_assert(ok, "%llu of %d completed", (unsigned long long)gs.completed, ORDERS);
    cr_assert_eq(eb_saga_unregister(g), EB_OK);
    cr_assert_eq(eb_aggregate_unregister(agg), EB_OK);
    eb_command_bus_destroy(cb);
    eb_bus_destroy(bus);
    eb_saga_store_destroy(ss);
    t_store_done(&d, s);
}

/* ---- saga instances of one key, and schema migrations ----------------------- */

/* As saga::a_new_instance_of_a_key_ignores_the_timeouts_of_the_one_before,
   on the SQLite saga store with durable publishes: the start id is kept in
   the file, and the removed instance's timeout waits in eb_scheduled. */
Test(store, a_new_saga_instance_ignores_the_durable_timeouts_of_the_one_before)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    eb_saga_store *ss = NULL;
    cr_assert_eq(eb_saga_sqlite_store_create(s, &ss), EB_OK);
    t_inc t = {.delay_ns = 300 * T_MS};
    eb_saga_stats st;
    t_inc_run(bus, ss, EB_PUBLISH_DURABLE, &t, &st);
    cr_expect_eq(atomic_load(&t.foreign), 0, "B got A's timeout");
    cr_expect_eq(atomic_load(&t.timeouts), 1);
    cr_expect_eq(st.ignored, 1, "A's timeout was not ignored");
    cr_expect(memcmp(t.ids[0], t.ids[1], 16) != 0, "A and B sent the same command id");
    eb_bus_destroy(bus);
    eb_saga_store_destroy(ss);
    t_store_done(&d, s);
}

/* The saga of tests/fixtures/store-v1.sql: o-1 sends payment.charge, the
   others schedule order.timeout; a timeout completes its instance. */
typedef struct mv_saga {
    atomic_uint timeouts, cmds;
    uint8_t last_cmd[16]; /* SERIAL observer */
    char timed_out[8];    /* the key of the last timeout */
} mv_saga;

static int mv_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)state;
    mv_saga *m = ctx;
    size_t kl;
    const void *k = eb_saga_key(sc, &kl);
    if (strcmp(eb_event_topic(ev), "order.timeout") == 0) {
        snprintf(m->timed_out, sizeof m->timed_out, "%.*s", (int)kl, (const char *)k);
        atomic_fetch_add(&m->timeouts, 1);
        eb_saga_complete(sc);
        return EB_OK;
    }
    if (kl == 3 && memcmp(k, "o-1", 3) == 0)
        return eb_saga_send(sc, "payment.charge", "o-1", 3, "p-1", 3);
    return eb_saga_schedule_timeout(sc, 2 * T_SEC, "order.timeout", k, kl);
}

static int mv_on_cmd(const eb_event *ev, void *ctx)
{
    mv_saga *m = ctx;
    eb_command_id(ev, m->last_cmd);
    atomic_fetch_add(&m->cmds, 1);
    return EB_OK;
}

static int mv_user_version(const char *path)
{
    sqlite3 *db;
    sqlite3_stmt *q;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(q), SQLITE_ROW);
    int v = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

/* A file written by the library at schema version 1 (tests/fixtures):
   read as it is by a read-only open, migrated by a writable one, and its
   sagas go on: the pending outbox is recovered with the command id it was
   saved with, and the timeout the old instance scheduled reaches it (a
   record without a start id takes its own events, as before). A new
   instance gets a start id. */
Test(store, a_version_1_file_is_migrated_and_its_sagas_go_on)
{
    t_dir d;
    t_dir_new(&d);
    char sql[8192];
    size_t n = t_read_file(EB_TEST_FIXTURES "/store-v1.sql", sql, sizeof sql - 1);
    cr_assert_lt(n, sizeof sql - 1);
    sql[n] = '\0';
    t_sql(d.path, sql);
    /* The timeout falls due shortly after the saga is registered. */
    char due[96];
    snprintf(due, sizeof due, "UPDATE eb_scheduled SET due = %lld",
             (long long)(t_realtime_ns() + 1 * T_SEC));
    t_sql(d.path, due);

    eb_store_options o;
    eb_store_options_init(&o);
    o.read_only = true;
    eb_store *s = NULL;
    cr_assert_eq(eb_store_open(d.path, &o, &s), EB_OK);
    eb_store_stats ss;
    cr_assert_eq(eb_store_stats_get(s, &ss), EB_OK);
    cr_expect_eq(ss.events, 4);
    cr_expect_eq(ss.sagas, 2);
    cr_expect_eq(ss.scheduled, 1);
    eb_store_close(s);
    cr_assert_eq(mv_user_version(d.path), 1, "a read-only open migrated the file");

    s = t_store_open(d.path);
    cr_assert_eq(mv_user_version(d.path), EB_STORE_SCHEMA_VERSION);
    eb_bus *bus = t_bus_store(s, 2);
    mv_saga m = {0};
    eb_subscription *cmd = t_sub(bus, "payment.charge", mv_on_cmd, &m, EB_DELIVERY_SERIAL, 0);
    eb_saga_store *sstore = NULL;
    cr_assert_eq(eb_saga_sqlite_store_create(s, &sstore), EB_OK);
    const char *topics[] = {"order.#"}, *starts[] = {"order.placed"};
    eb_saga_def def = {.name = "order",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = starts,
                       .n_start_topics = 1,
                       .state_size = 8,
                       .transition = mv_transition,
                       .ctx = &m};
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = sstore;
    so.publish_flags = EB_PUBLISH_DURABLE;
    eb_saga *g = NULL;
    cr_assert_eq(eb_saga_register(bus, &def, &so, &g), EB_OK);
    eb_saga_stats gs;
    cr_assert_eq(eb_saga_stats_get(g, &gs), EB_OK);
    cr_expect_eq(gs.redispatched, 1, "o-1's pending outbox was not recovered");
    cr_assert(t_wait_ge(&m.cmds, 1));
    static const uint8_t saved_id[16] = {0x30, 0x69, 0xc9, 0x1c, 0x57, 0x60, 0x8d, 0x1d,
                                         0xb2, 0x13, 0x6f, 0xbd, 0xa2, 0x61, 0xc9, 0x28};
    cr_expect(memcmp(m.last_cmd, saved_id, 16) == 0, "the recovered command has another id");
    cr_assert(t_wait_ge(&m.timeouts, 1), "o-2's timeout did not reach it");
    cr_expect_str_eq(m.timed_out, "o-2");

    /* A new instance: its record gets a start id; the old ones have none. */
    eb_publish_options po = t_bounded_opts();
    po.key = "o-3";
    po.key_len = 3;
    cr_assert_eq(eb_publish_wait(bus, "order.placed", NULL, 0, &po, NULL), EB_OK);
    static const uint8_t zero[16];
    uint8_t state[8];
    eb_saga_record rec = {.state = state, .state_size = sizeof state};
    cr_assert_eq(sstore->load(sstore, "order", "o-3", 3, &rec), EB_OK);
    free(rec.outbox);
    cr_expect(memcmp(rec.start_id, zero, 16) != 0, "a new instance has no start id");
    cr_assert_eq(sstore->load(sstore, "order", "o-1", 3, &rec), EB_OK);
    free(rec.outbox);
    cr_expect(memcmp(rec.start_id, zero, 16) == 0);

    cr_assert_eq(eb_saga_unregister(g), EB_OK);
    cr_assert_eq(eb_unsubscribe(cmd), EB_OK);
    eb_bus_destroy(bus);
    eb_saga_store_destroy(sstore);
    t_store_done(&d, s);
}

Test(store, refusals_of_attaching_and_of_untrackable_durable_calls)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    /* One bus per store at a time. */
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.store = s;
    eb_bus *other = NULL;
    cr_assert_eq(eb_bus_create(&cfg, &other), EB_EBUSY);
    cr_assert_null(other);
    /* A durable delayed event has no ticket to wait on. */
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    o.delay_ns = T_SEC;
    eb_publish_result r;
    cr_assert_eq(eb_publish_wait(bus, "t", "x", 1, &o, &r), EB_ENOTSUP);
    eb_ticket *tk = NULL;
    cr_assert_eq(eb_publish_async(bus, "t", "x", 1, &o, &tk), EB_ENOTSUP);
    cr_assert_null(tk);
    eb_bus_destroy(bus);
    cr_assert_eq(t_log_count(s), 0, "nothing refused was logged");
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    cr_assert_eq(st.scheduled, 0);
    eb_store_close(s);
    /* A read-only handle writes nothing and attaches to no bus. */
    eb_store_options ro;
    eb_store_options_init(&ro);
    ro.read_only = true;
    cr_assert_eq(eb_store_open(d.path, &ro, &s), EB_OK);
    cfg.store = s;
    cr_assert_eq(eb_bus_create(&cfg, &other), EB_ENOTSUP);
    cr_assert_eq(eb_outbox_add(s, "t", NULL, 0, NULL, 0, NULL), EB_ENOTSUP);
    cr_assert_eq(eb_store_flush(s, -1), EB_ENOTSUP);
    cr_assert_eq(eb_store_deadletter_purge(s, 0, NULL), EB_ENOTSUP);
    eb_saga_store *ss = NULL;
    cr_assert_eq(eb_saga_sqlite_store_create(s, &ss), EB_ENOTSUP);
    t_store_done(&d, s);
}

/* ---- damaged files (regressions found by tests/fuzz/fuzz_store) ---------- */

Test(store, a_schema_damage_quick_check_misses_is_refused_and_the_file_left_as_it_was)
{
    t_dir d;
    eb_store_close(t_store_new(&d)); /* a new, empty store file */
    /* Back to a rollback journal, then rename a column in the schema text:
       quick_check passes, our statements cannot be prepared. */
    t_sql(d.path, "PRAGMA journal_mode = DELETE; PRAGMA writable_schema = ON;"
                  "UPDATE sqlite_master SET sql = replace(sql, ' ts ', ' tz ')"
                  " WHERE name = 'eb_events'");
    static char before[1 << 16], after[1 << 16];
    size_t n = t_read_file(d.path, before, sizeof before);
    eb_store *s = NULL;
    int rc = eb_store_open(d.path, NULL, &s);
    cr_assert_eq(rc, EB_EIO, "%s", eb_err_name(rc));
    cr_assert_eq(t_read_file(d.path, after, sizeof after), n);
    cr_assert_eq(memcmp(before, after, n), 0, "a refused file was changed (WAL switch)");
    t_dir_rm(&d);
}

/* The empty topic is a valid topic (eventbus.h): its rows are events like
   any other (they were once taken for damaged rows and dropped). */
Test(store, events_on_the_empty_topic_fire_when_scheduled_and_are_replayed)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec live;
    t_log_rec_init(&live);
    cr_assert_eq(eb_subscribe(bus, "", t_log_handler, &live, NULL, NULL), EB_OK);
    eb_publish_options o = t_durable(EB_PUBLISH_DURABLE);
    o.delay_ns = 50 * T_MS;
    uint32_t v = 7;
    cr_assert_eq(eb_publish(bus, "", &v, 4, &o), EB_OK);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&live) == 1);
    cr_assert(ok, "the scheduled event on the empty topic did not fire");
    eb_bus_destroy(bus);
    cr_assert_eq(live.v[0], 7);
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    cr_assert_eq(st.scheduled, 0);
    cr_assert_eq(st.events, 1, "fired into the log");
    eb_store_close(s);

    s = t_store_open(d.path);
    bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    t_durable_sub(bus, "", "empty", false, &r);
    T_WAIT_FOR(ok, t_log_n(&r) == 1);
    cr_assert(ok, "the replay did not deliver the event on the empty topic");
    eb_bus_destroy(bus);
    cr_assert_eq(r.v[0], 7);
    t_store_done(&d, s);
}

Test(store, a_log_row_no_event_can_be_made_of_is_skipped_by_the_replay)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    t_log_events(s, "orders.created", 3, EB_PUBLISH_DURABLE);
    eb_store_close(s);
    /* The middle row gets a key no event may carry. */
    t_sql(d.path, "UPDATE eb_events SET key = randomblob(300) WHERE seq = 2");
    s = t_store_open(d.path);
    eb_bus *bus = t_bus_store(s, 2);
    t_log_rec r;
    t_log_rec_init(&r);
    t_durable_sub(bus, "orders.#", "replayer", false, &r);
    bool ok;
    T_WAIT_FOR(ok, t_log_n(&r) == 2);
    cr_assert(ok, "the replay delivered %u of the 2 good rows", t_log_n(&r));
    cr_assert_eq(eb_store_flush(s, -1), EB_OK, "the writer must stay responsive");
    eb_bus_destroy(bus);
    eb_store_close(s);
    cr_assert_eq(r.v[0], 0);
    cr_assert_eq(r.v[1], 2);
    t_dir_rm(&d);
}

static int t_count_topic(const eb_stored_event *ev, void *ctx)
{
    if (strcmp(ev->topic, "later") == 0)
        (*(unsigned *)ctx)++;
    return 0;
}

Test(store, a_due_scheduled_row_no_event_can_be_made_of_is_removed_and_the_rest_fire)
{
    t_dir d;
    eb_store_close(t_store_new(&d)); /* a new, empty store file */
    t_sql(d.path, "INSERT INTO eb_scheduled(due, topic, key, payload, created)"
                  " VALUES(1, 'first', randomblob(300), x'00', 0),"
                  "       (2, 'later', NULL, x'00', 0)");
    eb_store *s = t_store_open(d.path);
    eb_bus *bus = t_bus_store(s, 2);
    unsigned later = 0;
    bool ok;
    T_WAIT_FOR(ok,
               (later = 0, eb_store_events(s, NULL, t_count_topic, &later) == EB_OK && later == 1));
    cr_assert(ok, "the later scheduled event did not fire");
    eb_store_stats a, b;
    cr_assert_eq(eb_store_stats_get(s, &a), EB_OK);
    t_sleep_ms(100);
    cr_assert_eq(eb_store_stats_get(s, &b), EB_OK);
    cr_assert_leq(b.commits - a.commits, 2, "the idle writer keeps committing (%llu in 100 ms)",
                  (unsigned long long)(b.commits - a.commits));
    cr_assert_eq(b.scheduled, 0, "the damaged row is still scheduled");
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

/* Due times at the ends of the range (rows another process wrote, or a
   damaged file): the one far in the past fires at once, the one far in the
   future waits. The writer's wait computed from such a time overflowed
   (UBSan) in fuzz_store: regressions/store/scheduled-due-far-in-the-past
   replays that case. */
Test(store, scheduled_rows_due_at_the_ends_of_the_range_fire_or_wait)
{
    t_dir d;
    eb_store_close(t_store_new(&d));
    t_sql(d.path, "INSERT INTO eb_scheduled(due, topic, key, payload, created)"
                  " VALUES(-9223372036854775807, 'later', NULL, x'00', 0),"
                  "       (9223372036854775806, 'never', NULL, x'00', 0)");
    eb_store *s = t_store_open(d.path);
    eb_bus *bus = t_bus_store(s, 2);
    unsigned later = 0;
    bool ok;
    T_WAIT_FOR(ok,
               (later = 0, eb_store_events(s, NULL, t_count_topic, &later) == EB_OK && later == 1));
    cr_assert(ok, "the row due long ago did not fire");
    t_sleep_ms(50);
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    cr_assert_eq(st.scheduled, 1, "the row due far ahead fired or went");
    eb_bus_destroy(bus);
    t_store_done(&d, s);
}

/* The writer's last call into a draining bus must be over before the bus is
   freed (ASan found the writer in eb__bus_store_done after the free). */
Test(store, destroying_a_bus_right_after_durable_publishes_is_safe)
{
    t_dir d;
    eb_store *s = t_store_new(&d);
    for (int i = 0; i < 300; i++) {
        eb_bus *bus = t_bus_store(s, 1);
        t_pub_durable(bus, "orders.created", (uint32_t)i, EB_PUBLISH_DURABLE_LAZY);
        eb_bus_destroy(bus);
    }
    cr_assert_eq(t_log_count(s), 300);
    t_store_done(&d, s);
}

/* A store whose writer waits up to 5 s for another connection's lock, on a
   bus with one worker. */
static eb_bus *t_patient_store(t_dir *d, eb_store **s)
{
    t_dir_new(d);
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_NORMAL;
    o.busy_timeout_ms = 5000;
    *s = NULL;
    cr_assert_eq(eb_store_open(d->path, &o, s), EB_OK);
    return t_bus_store(*s, 1);
}

/* Another connection takes the write lock (until t_write_unlock): the
   writer's next transaction waits for it (busy_timeout_ms). */
static sqlite3 *t_write_lock(const t_dir *d)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(d->path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return db;
}

static void t_write_unlock(sqlite3 *db)
{
    cr_assert_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

Test(store, flush_times_out_while_the_writer_waits_for_a_lock_and_completes_after)
{
    t_dir d;
    eb_store *s;
    eb_bus *bus = t_patient_store(&d, &s);
    sqlite3 *db = t_write_lock(&d);
    t_pub_durable(bus, "orders.created", 1, EB_PUBLISH_DURABLE_LAZY);
    cr_assert_eq(eb_store_flush(s, 50 * T_MS), EB_ETIMEDOUT);
    t_write_unlock(db);
    cr_assert_eq(eb_store_flush(s, t_wait_budget_ns()), EB_OK);
    cr_assert_eq(t_log_count(s), 1);
    eb_bus_destroy(bus);
    eb_store_close(s);
    t_dir_rm(&d);
}

/* ---- lazy work and memory traffic (lazy_share) -------------------------- */

typedef struct t_flood {
    eb_bus *bus;
    atomic_int stop;
    atomic_uint published;
    pthread_t th;
} t_flood;

/* Publishes memory-only events on "m" as fast as it can until told to stop. */
static void *t_flood_main(void *arg)
{
    t_flood *f = arg;
    uint32_t v = 0;
    while (!atomic_load(&f->stop)) {
        if (eb_publish(f->bus, "m", &v, sizeof v, NULL) == EB_OK)
            atomic_fetch_add(&f->published, 1);
        v++;
    }
    return NULL;
}

static int t_tally(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add((atomic_uint *)ctx, 1);
    return 0;
}

/*
 * Publishes 2000 lazy durable events in 20 rounds (so the writer commits
 * many times), with memory-only traffic flowing meanwhile if `memory`, then
 * one waiting durable publish; checks that every event was committed and
 * delivered once. Returns how often lazy work paused.
 */
static uint64_t t_lazy_run(unsigned lazy_share, bool memory)
{
    enum { ROUNDS = 20, PER = 100, N = ROUNDS * PER };
    t_dir d;
    t_dir_new(&d);
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_NORMAL;
    o.lazy_share = lazy_share;
    eb_store *s = NULL;
    cr_assert_eq(eb_store_open(d.path, &o, &s), EB_OK);
    eb_bus *bus = t_bus_store(s, 2);
    atomic_uint mem_seen, dur_seen;
    atomic_init(&mem_seen, 0);
    atomic_init(&dur_seen, 0);
    t_sub(bus, "m", t_tally, &mem_seen, EB_DELIVERY_SERIAL, 0);
    t_sub(bus, "d", t_tally, &dur_seen, EB_DELIVERY_SERIAL, 0);
    t_flood f = {.bus = bus};
    atomic_init(&f.stop, 0);
    atomic_init(&f.published, 0);
    if (memory)
        cr_assert_eq(pthread_create(&f.th, NULL, t_flood_main, &f), 0);
    for (uint32_t r = 0; r < ROUNDS; r++) {
        for (uint32_t i = 0; i < PER; i++)
            t_pub_durable(bus, "d", r * PER + i, EB_PUBLISH_DURABLE_LAZY);
        t_sleep_ms(2);
    }
    /* A waiting publish ends any pause: it returns committed. */
    t_pub_durable(bus, "d", N, EB_PUBLISH_DURABLE);
    if (memory) {
        atomic_store(&f.stop, 1);
        pthread_join(f.th, NULL);
    }
    cr_assert_eq(eb_store_flush(s, t_wait_budget_ns()), EB_OK);
    cr_assert(t_wait_ge(&dur_seen, N + 1));
    cr_assert(t_wait_ge(&mem_seen, atomic_load(&f.published)));
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(st.events, N + 1);
    cr_assert_eq(atomic_load(&dur_seen), N + 1, "every lazy event delivered once");
    cr_assert_eq(atomic_load(&mem_seen), atomic_load(&f.published));
    t_store_done(&d, s);
    return st.lazy_pauses;
}

Test(store, lazy_work_pauses_while_memory_traffic_flows_and_all_of_it_still_commits)
{
    cr_assert_gt(t_lazy_run(0, true), 0, "the default lazy_share pauses lazy work");
}

Test(store, lazy_work_never_pauses_without_memory_traffic_or_with_a_share_of_100)
{
    cr_assert_eq(t_lazy_run(0, false), 0);
    cr_assert_eq(t_lazy_run(100, true), 0);
}

/* A backlog of lazy events is committed in transactions of at most 2048
   (LAZY_BATCH_MAX) even with no memory traffic, so that traffic beginning
   meanwhile is noticed within one short transaction. */
Test(store, a_lazy_backlog_is_committed_in_short_transactions)
{
    enum { N = 9000, MAX_PER_TXN = 2048 };
    t_dir d;
    eb_store *s;
    eb_bus *bus = t_patient_store(&d, &s);
    atomic_uint seen;
    atomic_init(&seen, 0);
    t_sub(bus, "d", t_tally, &seen, EB_DELIVERY_SERIAL, 0);
    eb_store_stats st0, st1;
    cr_assert_eq(eb_store_stats_get(s, &st0), EB_OK);
    /* Another connection holds the write lock while the events are
       published: the writer's first transaction waits for it, and the rest
       queue up behind it. */
    sqlite3 *db = t_write_lock(&d);
    for (uint32_t i = 0; i < N; i++)
        t_pub_durable(bus, "d", i, EB_PUBLISH_DURABLE_LAZY);
    t_write_unlock(db);
    /* Not eb_store_flush: a caller waiting in the queue makes the writer
       take all of it at once (see the waiting caller's batch). */
    cr_assert(t_wait_ge(&seen, N));
    cr_assert_eq(eb_store_stats_get(s, &st1), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(st1.events, N);
    cr_assert_eq(atomic_load(&seen), N, "every lazy event delivered once");
    /* The first transaction (blocked by the lock) took at most MAX_PER_TXN;
       the backlog behind it went at most MAX_PER_TXN at a time: 1 + 4
       transactions at least, where one for the whole backlog makes 2. */
    uint64_t commits = st1.commits - st0.commits;
    cr_assert_geq(commits, 1 + (N - 1) / MAX_PER_TXN, "%llu commits", (unsigned long long)commits);
    t_store_done(&d, s);
}

/* Checks that durable events arrive numbered 0, 1, 2, ... */
struct in_order {
    atomic_uint n;
    atomic_uint out_of_order;
};

static int t_in_order(const eb_event *ev, void *ctx)
{
    struct in_order *o = ctx;
    uint32_t v = t_u32(ev);
    if (v != atomic_load(&o->n))
        atomic_fetch_add(&o->out_of_order, 1);
    atomic_fetch_add(&o->n, 1);
    return 0;
}

/* The writer takes a lazy backlog from the head of its queue while
   publishers append behind it (the queue array fills up with taken items
   at its front and is compacted or grown): nothing is lost, duplicated or
   reordered. */
Test(store, a_queue_taken_from_the_head_while_appended_to_keeps_every_event_in_order)
{
    enum { N1 = 5000, N2 = 30000 };
    t_dir d;
    eb_store *s;
    eb_bus *bus = t_patient_store(&d, &s);
    struct in_order o;
    atomic_init(&o.n, 0);
    atomic_init(&o.out_of_order, 0);
    t_sub(bus, "d", t_in_order, &o, EB_DELIVERY_SERIAL, 0);
    sqlite3 *db = t_write_lock(&d);
    uint32_t i = 0;
    for (; i < N1; i++)
        t_pub_durable(bus, "d", i, EB_PUBLISH_DURABLE_LAZY);
    t_write_unlock(db);
    /* The writer now works through the backlog 2048 items at a time. */
    for (; i < N1 + N2; i++)
        t_pub_durable(bus, "d", i, EB_PUBLISH_DURABLE_LAZY);
    cr_assert(t_wait_ge(&o.n, N1 + N2));
    eb_store_stats st;
    cr_assert_eq(eb_store_stats_get(s, &st), EB_OK);
    eb_bus_destroy(bus);
    cr_assert_eq(st.events, N1 + N2);
    cr_assert_eq(atomic_load(&o.n), N1 + N2, "every lazy event delivered once");
    cr_assert_eq(atomic_load(&o.out_of_order), 0, "in publish order");
    t_store_done(&d, s);
}

Test(store, lazy_share_above_100_is_refused)
{
    t_dir d;
    t_dir_new(&d);
    eb_store_options o;
    eb_store_options_init(&o);
    cr_assert_eq(o.lazy_share, 5);
    o.lazy_share = 101;
    eb_store *s = NULL;
    cr_assert_eq(eb_store_open(d.path, &o, &s), EB_EINVAL);
    cr_assert_null(s);
    t_dir_rm(&d);
}
