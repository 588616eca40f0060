/*
 * durable — scenario 10: durable publishing through the SQLite store, next
 * to what the disk and SQLite do on their own, measured in the same run.
 *
 * Cases (each implementation's runs interleaved with the others', as
 * everywhere in the harness, so the ratios compare like with like):
 *
 *  lazy    one publisher, fire and forget with EB_PUBLISH_DURABLE_LAZY
 *          (eb_publish, and eb_publish_batch of 64), then eb_store_flush;
 *          the clock stops when the flush returned and the subscriber has
 *          seen every event. Against raw SQLite inserting the same rows,
 *          1000 per transaction. Target: >= 0.5 of the raw rate.
 *  wait8   8 threads each calling eb_publish(EB_PUBLISH_DURABLE), which
 *          returns once its transaction committed: aggregate events/s and
 *          the latency of the call. Against raw SQLite with one row per
 *          transaction (commits/s, commit latency) and a raw
 *          write(4 KiB) + fdatasync in the same directory. Targets:
 *          >= 4x the one-row-per-transaction rate (group commit at work),
 *          p50 <= 2 x the fdatasync p50 + 100 us.
 *  memory  memory-only eb_publish (64 B, as scenario 1) on one bus whose
 *          store is busy with a lazy durable load from another thread,
 *          against the same bus with an idle store. Target: >= 0.9 (not
 *          slower, within the noise of a shared 2-core machine).
 *
 * The raw peers use what the store uses: journal_mode=WAL,
 * synchronous=FULL, the store's eb_events table (same columns; 16-byte
 * time-ordered ids, 200-byte payloads, topic "orders.created", no key,
 * correlation or causation), one prepared INSERT reused, and prepared
 * BEGIN IMMEDIATE / COMMIT. The store runs with EB_STORE_SYNC_FULL.
 *
 * Checks: every delivered durable event carries a log sequence, in
 * increasing order for the SERIAL subscriber; every observer's count and
 * checksum equal what was published (also after the bus is destroyed, so a
 * late duplicate is caught); the store's counters say every event was
 * appended once and no transaction failed; the raw tables hold exactly the
 * rows inserted (read back: count and checksum of the payloads); the raw
 * fsync file holds the blocks written last.
 *
 * Files: a fresh directory under $TMPDIR (else /tmp), one database per run,
 * removed after the run; the directory is removed when the scenario ends.
 */
#include "harness.h"

#include <eventbus/eventbus.h>
#ifdef BN_HAVE_EB_STORE
#include <eventbus/store.h>
#endif
#ifdef BN_HAVE_SQLITE
#include <sqlite3.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define D_PAYLOAD 200 /* bytes: the row shape (a multiple of 8 for bn_fill) */
#define D_TOPIC "orders.created"
#define D_ROWS_PER_TXN 1000
#define D_BATCH 64     /* eb_publish_batch: as scenario 4 */
#define D_THREADS 8    /* wait8 */
#define D_BLOCK 4096   /* raw fsync: bytes per write */
#define D_BLOCKS 256   /* raw fsync: the file cycles over this many blocks */
#define POLL_NS 200000 /* waiting for deliveries */
#define LOST_NS (5ull * 1000000000ull)

/* memory case: what else runs while memory-only events are timed
   (durable_cfg.load): nothing, a lazy durable load on the bus's store, or
   (a control for CPU contention on a small machine) raw SQLite batched
   inserts into another file, the store idle. */
enum { LOAD_NONE = 0, LOAD_LAZY, LOAD_RAW };

#define NOT_BUILT_SQLITE "not built: sqlite3 was not found at configure time"
#define NOT_BUILT_STORE "not built: eventbus was configured without EB_WITH_SQLITE"

/* ---- files -------------------------------------------------------------- */

static char dir[512]; /* the scenario's directory; "" until the first run */
static unsigned file_no;

static int dir_get(char *err, size_t errlen)
{
    if (dir[0] != 0)
        return 0;
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == 0)
        base = "/tmp";
    snprintf(dir, sizeof(dir), "%s/eventbus-bench-durable-XXXXXX", base);
    if (mkdtemp(dir) == NULL) {
        snprintf(err, errlen, "mkdtemp(%.200s): %s", dir, strerror(errno));
        dir[0] = 0;
        return -1;
    }
    return 0;
}

#if defined(BN_HAVE_SQLITE) || defined(BN_HAVE_EB_STORE)
int bn_db_path_new(char *out, size_t n, const char *what, char *err, size_t errlen)
{
    if (dir_get(err, errlen) != 0)
        return -1;
    snprintf(out, n, "%s/%s-%u.db", dir, what, file_no++);
    return 0;
}

void bn_db_remove(const char *path)
{
    char p[620];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}
#endif

void bn_db_dir_remove(void)
{
    if (dir[0] != 0 && rmdir(dir) != 0)
        fprintf(stderr, "eventbus-bench: durable: rmdir %s: %s\n", dir, strerror(errno));
    dir[0] = 0;
}

/* ---- statistics ------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank, as rt.c; v sorted. */
static double pct(const uint64_t *v, size_t n, double q)
{
    size_t i = (size_t)(q * (double)n);
    return (double)v[i < n ? i : n - 1];
}

static void latencies(uint64_t *lat, size_t n, struct bn_sample *out, int p50, int p99)
{
    qsort(lat, n, sizeof(uint64_t), cmp_u64);
    out->v[p50] = pct(lat, n, 0.50);
    out->v[p99] = pct(lat, n, 0.99);
}

/* metric indexes of the wait8 case */
enum { W_RATE = 0, W_P50, W_P99, W_PER_COMMIT };

/* ---- raw write + fdatasync ------------------------------------------------- */

/*
 * write(4 KiB) + fdatasync on a file in the databases' directory. The file
 * is written once and synced before the timed loop, which then overwrites
 * its blocks in turn (as a WAL file is reused in steady state), so each
 * fdatasync flushes one data block and no change of the file size.
 */
static void run_fsync(const struct bn_impl *im, struct bn_sample *out)
{
    const struct durable_cfg *cfg = &im->spec.dcfg;
    char path[600];
    if (dir_get(out->err, sizeof(out->err)) != 0)
        return;
    snprintf(path, sizeof(path), "%s/fsync-%u.dat", dir, file_no++);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(out->err, sizeof(out->err), "open %.200s: %s", path, strerror(errno));
        return;
    }
    uint64_t *lat = malloc(cfg->events * sizeof(uint64_t));
    uint64_t *blk = aligned_alloc(4096, D_BLOCK);
    if (lat == NULL || blk == NULL)
        bn_fatal("out of memory");
    memset(blk, 0, D_BLOCK);
    const char *fail = NULL;
    for (unsigned b = 0; b < D_BLOCKS && fail == NULL; b++)
        if (pwrite(fd, blk, D_BLOCK, (off_t)b * D_BLOCK) != D_BLOCK)
            fail = "pwrite";
    if (fail == NULL && fdatasync(fd) != 0)
        fail = "fdatasync";
    uint64_t total = cfg->warm + cfg->events, i = 0, timed = 0, t0 = 0;
    uint64_t deadline = UINT64_MAX;
    for (; fail == NULL && i < total; i++) {
        if (i == cfg->warm) {
            t0 = bn_now_ns();
            deadline = cfg->max_ns ? t0 + cfg->max_ns : UINT64_MAX;
        }
        for (unsigned w = 0; w < D_BLOCK / 8; w++)
            blk[w] = i * 1000003u + w; /* each block says which write it was */
        uint64_t a = bn_now_ns();
        if (pwrite(fd, blk, D_BLOCK, (off_t)(i % D_BLOCKS) * D_BLOCK) != D_BLOCK) {
            fail = "pwrite";
            break;
        }
        if (fdatasync(fd) != 0) {
            fail = "fdatasync";
            break;
        }
        uint64_t b = bn_now_ns();
        if (i >= cfg->warm) {
            lat[timed++] = b - a;
            if (b > deadline) {
                i++;
                break;
            }
        }
    }
    uint64_t t1 = bn_now_ns();
    if (fail != NULL) {
        snprintf(out->err, sizeof(out->err), "raw fsync: %s: %s", fail, strerror(errno));
    } else if (timed == 0) {
        snprintf(out->err, sizeof(out->err), "raw fsync: nothing timed");
    } else {
        /* Check: the last D_BLOCKS writes are what the file holds. */
        int rfd = open(path, O_RDONLY | O_CLOEXEC);
        uint64_t first = i > D_BLOCKS ? i - D_BLOCKS : 0, bad = 0;
        for (uint64_t k = first; rfd >= 0 && k < i; k++) {
            if (pread(rfd, blk, D_BLOCK, (off_t)(k % D_BLOCKS) * D_BLOCK) != D_BLOCK ||
                blk[0] != k * 1000003u || blk[D_BLOCK / 8 - 1] != k * 1000003u + D_BLOCK / 8 - 1)
                bad++;
        }
        if (rfd < 0 || bad != 0) {
            snprintf(out->err, sizeof(out->err),
                     "raw fsync: read back: %llu of the last %llu "
                     "blocks differ%s",
                     (unsigned long long)bad, (unsigned long long)(i - first),
                     rfd < 0 ? " (cannot reopen)" : "");
        } else {
            out->v[W_RATE] = (double)timed * 1e9 / (double)(t1 - t0);
            latencies(lat, timed, out, W_P50, W_P99);
            out->v[W_PER_COMMIT] = 1;
            out->cut = timed < cfg->events;
            out->ok = 1;
        }
        if (rfd >= 0)
            close(rfd);
    }
    close(fd);
    unlink(path);
    free(lat);
    free(blk);
}

#ifdef BN_HAVE_SQLITE

/* ---- time-ordered ids ---------------------------------------------------------- */

/* UUIDv7 layout: 48-bit Unix milliseconds, then a counter (the store's
   ids are time-ordered too: they insert far faster than random ones). */
static void make_id(uint8_t id[16], uint64_t ctr)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    for (int k = 0; k < 6; k++)
        id[k] = (uint8_t)(ms >> (40 - 8 * k));
    id[6] = 0x70;
    id[7] = 0;
    for (int k = 0; k < 8; k++)
        id[8 + k] = (uint8_t)(ctr >> (56 - 8 * k));
}

static int64_t unix_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- raw SQLite ------------------------------------------------------------------ */

/* The store's event log table, as the issue gives it. */
static const char raw_schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE eb_events(seq INTEGER PRIMARY KEY, id BLOB NOT NULL, ts INTEGER NOT NULL, "
    "topic TEXT NOT NULL, key BLOB, payload BLOB NOT NULL, correlation BLOB, causation BLOB);";

struct rawdb {
    char path[600];
    sqlite3 *db;
    sqlite3_stmt *ins, *begin, *commit;
    uint64_t ctr;                    /* ids */
    uint64_t rows, sum;              /* inserted, and the checksum of their payloads */
    uint64_t payload[D_PAYLOAD / 8]; /* the row being inserted */
    uint8_t id[16];
};

static int raw_fail(struct rawdb *r, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "raw SQLite: %s: %s", what,
             r->db != NULL ? sqlite3_errmsg(r->db) : "cannot open");
    return -1;
}

static int raw_open(struct rawdb *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof(*r));
    if (bn_db_path_new(r->path, sizeof(r->path), "raw", err, errlen) != 0)
        return -1;
    if (sqlite3_open_v2(r->path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK)
        return raw_fail(r, "open", err, errlen);
    if (sqlite3_exec(r->db, raw_schema, NULL, NULL, NULL) != SQLITE_OK)
        return raw_fail(r, "schema", err, errlen);
    /* Confirm WAL (a file system without shared memory would refuse it). */
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(r->db, "PRAGMA journal_mode", -1, &q, NULL) != SQLITE_OK)
        return raw_fail(r, "journal_mode", err, errlen);
    int wal = sqlite3_step(q) == SQLITE_ROW &&
              strcmp((const char *)sqlite3_column_text(q, 0), "wal") == 0;
    sqlite3_finalize(q);
    if (!wal) {
        snprintf(err, errlen, "raw SQLite: journal_mode is not WAL");
        return -1;
    }
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO eb_events(id, ts, topic, key, payload, correlation, "
                           "causation) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                           -1, &r->ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(r->db, "BEGIN IMMEDIATE", -1, &r->begin, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(r->db, "COMMIT", -1, &r->commit, NULL) != SQLITE_OK)
        return raw_fail(r, "prepare", err, errlen);
    return 0;
}

static int raw_step(struct rawdb *r, sqlite3_stmt *st, const char *what, char *err, size_t errlen)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : raw_fail(r, what, err, errlen);
}

/* Inserts the next row (producer 0, sequence r->rows): what the store's
   writer does per event. */
static int raw_insert(struct rawdb *r, char *err, size_t errlen)
{
    r->sum += bn_fill(r->payload, D_PAYLOAD, 0, r->rows, 0);
    make_id(r->id, ++r->ctr);
    sqlite3_stmt *s = r->ins;
    if (sqlite3_bind_blob(s, 1, r->id, 16, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(s, 2, unix_ns()) != SQLITE_OK ||
        sqlite3_bind_text(s, 3, D_TOPIC, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_null(s, 4) != SQLITE_OK ||
        sqlite3_bind_blob(s, 5, r->payload, D_PAYLOAD, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_null(s, 6) != SQLITE_OK || sqlite3_bind_null(s, 7) != SQLITE_OK)
        return raw_fail(r, "bind", err, errlen);
    if (raw_step(r, s, "insert", err, errlen) != 0)
        return -1;
    r->rows++;
    return 0;
}

/* One transaction of n rows. */
static int raw_txn(struct rawdb *r, unsigned n, char *err, size_t errlen)
{
    if (raw_step(r, r->begin, "BEGIN", err, errlen) != 0)
        return -1;
    for (unsigned k = 0; k < n; k++)
        if (raw_insert(r, err, errlen) != 0)
            return -1;
    return raw_step(r, r->commit, "COMMIT", err, errlen);
}

/* Reads the table back: exactly the rows inserted, each payload once. */
static int raw_check(struct rawdb *r, char *err, size_t errlen)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(r->db, "SELECT payload FROM eb_events ORDER BY seq", -1, &q, NULL) !=
        SQLITE_OK)
        return raw_fail(r, "check", err, errlen);
    uint64_t n = 0, sum = 0, bad = 0;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(q, 0) != D_PAYLOAD) {
            bad++;
            continue;
        }
        sum += bn_hash(sqlite3_column_blob(q, 0), D_PAYLOAD);
        n++;
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE)
        return raw_fail(r, "check", err, errlen);
    if (n != r->rows || sum != r->sum || bad != 0) {
        snprintf(err, errlen,
                 "raw SQLite: the table holds %llu rows of %llu inserted, checksum %s, "
                 "%llu malformed",
                 (unsigned long long)n, (unsigned long long)r->rows,
                 sum == r->sum ? "ok" : "MISMATCH", (unsigned long long)bad);
        return -1;
    }
    return 0;
}

static void raw_close(struct rawdb *r)
{
    sqlite3_finalize(r->ins);
    sqlite3_finalize(r->begin);
    sqlite3_finalize(r->commit);
    if (r->db != NULL && sqlite3_close(r->db) != SQLITE_OK)
        fprintf(stderr, "eventbus-bench: raw SQLite: close: %s\n", sqlite3_errmsg(r->db));
    if (r->path[0] != 0)
        bn_db_remove(r->path);
}

/* b) one row per transaction: commits/s and the latency of each
   BEGIN-INSERT-COMMIT (wait8 case metrics). */
static void run_raw_row(const struct bn_impl *im, struct bn_sample *out)
{
    const struct durable_cfg *cfg = &im->spec.dcfg;
    struct rawdb *r = malloc(sizeof(*r));
    uint64_t *lat = malloc(cfg->events * sizeof(uint64_t));
    if (r == NULL || lat == NULL)
        bn_fatal("out of memory");
    if (raw_open(r, out->err, sizeof(out->err)) != 0)
        goto done;
    for (uint64_t i = 0; i < cfg->warm; i++)
        if (raw_txn(r, 1, out->err, sizeof(out->err)) != 0)
            goto done;
    uint64_t t0 = bn_now_ns(), timed = 0, t1 = t0;
    uint64_t deadline = cfg->max_ns ? t0 + cfg->max_ns : UINT64_MAX;
    while (timed < cfg->events && t1 <= deadline) {
        if (raw_txn(r, 1, out->err, sizeof(out->err)) != 0)
            goto done;
        uint64_t now = bn_now_ns();
        lat[timed++] = now - t1;
        t1 = now;
    }
    if (raw_check(r, out->err, sizeof(out->err)) != 0)
        goto done;
    out->v[W_RATE] = (double)timed * 1e9 / (double)(t1 - t0);
    latencies(lat, timed, out, W_P50, W_P99);
    out->v[W_PER_COMMIT] = 1;
    out->cut = timed < cfg->events;
    out->ok = 1;
done:
    raw_close(r);
    free(r);
    free(lat);
}

/* c) 1000 rows per transaction: rows/s (lazy case metrics: rate, rows per
   commit). */
static void run_raw_batch(const struct bn_impl *im, struct bn_sample *out)
{
    const struct durable_cfg *cfg = &im->spec.dcfg;
    struct rawdb *r = malloc(sizeof(*r));
    if (r == NULL)
        bn_fatal("out of memory");
    if (raw_open(r, out->err, sizeof(out->err)) != 0)
        goto done;
    for (uint64_t i = 0; i < cfg->warm; i += D_ROWS_PER_TXN)
        if (raw_txn(r, D_ROWS_PER_TXN, out->err, sizeof(out->err)) != 0)
            goto done;
    uint64_t first = r->rows, t0 = bn_now_ns(), t1 = t0;
    uint64_t deadline = cfg->max_ns ? t0 + cfg->max_ns : UINT64_MAX;
    while (r->rows - first < cfg->events && t1 <= deadline) {
        if (raw_txn(r, D_ROWS_PER_TXN, out->err, sizeof(out->err)) != 0)
            goto done;
        t1 = bn_now_ns();
    }
    if (raw_check(r, out->err, sizeof(out->err)) != 0)
        goto done;
    out->v[0] = (double)(r->rows - first) * 1e9 / (double)(t1 - t0);
    out->v[1] = D_ROWS_PER_TXN;
    out->cut = r->rows - first < cfg->events;
    out->ok = 1;
done:
    raw_close(r);
    free(r);
}

#endif /* BN_HAVE_SQLITE */

/* ---- eventbus with its store ---------------------------------------------------- */

#ifdef BN_HAVE_EB_STORE

/* A run of the store that has not finished after this long is a hang (a
   publish, a flush or a delivery that never comes back): see bn_watchdog. */
#define WATCHDOG_S 120

/* A SERIAL subscriber of durable events: counts and checks each one. */
struct dsub {
    struct bn_sink *sink;
    _Atomic uint64_t last_seq; /* the last log sequence seen */
};

static int on_durable(const eb_event *ev, void *ctx)
{
    struct dsub *d = ctx;
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    uint64_t seq = eb_event_log_seq(ev);
    /* Relaxed: a SERIAL subscription's handler calls do not overlap and the
       lane orders one after the other, so last_seq has one writer at a
       time; atomics only keep the checker honest about that. */
    uint64_t last = atomic_load_explicit(&d->last_seq, memory_order_relaxed);
    if (seq == 0 || seq <= last || len != D_PAYLOAD || strcmp(eb_event_topic(ev), D_TOPIC) != 0)
        bn_sink_bad(d->sink); /* not logged, out of log order, or not ours */
    atomic_store_explicit(&d->last_seq, seq, memory_order_relaxed);
    bn_observe(d->sink, p, len);
    return 0;
}

static int on_memory(const eb_event *ev, void *ctx)
{
    size_t len;
    const void *p = eb_event_payload(ev, &len);
    if (eb_event_log_seq(ev) != 0)
        bn_sink_bad(ctx); /* a memory-only event must not be logged */
    bn_observe(ctx, p, len);
    return 0;
}

/* A fresh store file and a bus attached to it. */
struct ebd {
    char path[600];
    eb_store *st;
    eb_bus *bus;
    eb_subscription *sub;
    struct dsub d;
};

static int eb_fail(struct ebd *e, const char *call, int rc, char *err, size_t errlen)
{
    char msg[160] = "";
    int src = e->st != NULL ? eb_store_last_error(e->st, msg, sizeof(msg)) : 0;
    if (src != 0)
        snprintf(err, errlen, "%s: %s (SQLite %d: %s)", call, eb_err_name(rc), src, msg);
    else
        snprintf(err, errlen, "%s: %s", call, eb_err_name(rc));
    return -1;
}

/* Opens the store (synchronous FULL) and a default bus on it; with sink, a
   SERIAL subscriber of D_TOPIC that checks every durable event. */
static int ebd_open(struct ebd *e, struct bn_sink *sink, char *err, size_t errlen)
{
    memset(e, 0, sizeof(*e));
    if (bn_db_path_new(e->path, sizeof(e->path), "store", err, errlen) != 0)
        return -1;
    eb_store_options so;
    eb_store_options_init(&so);
    so.synchronous = EB_STORE_SYNC_FULL;
    int rc = eb_store_open(e->path, &so, &e->st);
    if (rc != EB_OK)
        return eb_fail(e, "eb_store_open", rc, err, errlen);
    eb_bus_config bc;
    eb_bus_config_init(&bc);
    bc.store = e->st;
    rc = eb_bus_create(&bc, &e->bus);
    if (rc != EB_OK)
        return eb_fail(e, "eb_bus_create(store)", rc, err, errlen);
    if (sink != NULL) {
        e->d.sink = sink;
        eb_subscribe_options o;
        eb_subscribe_options_init(&o);
        o.delivery = EB_DELIVERY_SERIAL;
        rc = eb_subscribe(e->bus, D_TOPIC, on_durable, &e->d, &o, &e->sub);
        if (rc != EB_OK)
            return eb_fail(e, "eb_subscribe", rc, err, errlen);
    }
    return 0;
}

static void ebd_close(struct ebd *e)
{
    if (e->bus != NULL)
        eb_bus_destroy(e->bus);
    if (e->st != NULL)
        eb_store_close(e->st);
    if (e->path[0] != 0)
        bn_db_remove(e->path);
    e->bus = NULL;
    e->st = NULL;
}

static int stats(struct ebd *e, eb_store_stats *s, char *err, size_t errlen)
{
    int rc = eb_store_stats_get(e->st, s);
    return rc == EB_OK ? 0 : eb_fail(e, "eb_store_stats_get", rc, err, errlen);
}

static int flush(struct ebd *e, char *err, size_t errlen)
{
    int rc = eb_store_flush(e->st, (int64_t)WATCHDOG_S * 1000000000);
    return rc == EB_OK ? 0 : eb_fail(e, "eb_store_flush", rc, err, errlen);
}

/* Waits until sink has seen want events; -1 (err filled) if deliveries stop
   for LOST_NS first. */
static int wait_seen(struct bn_sink *sink, uint64_t want, const char *what, char *err,
                     size_t errlen)
{
    uint64_t last = bn_sink_count(sink), since = bn_now_ns();
    while (last < want) {
        bn_sleep_ns(POLL_NS);
        uint64_t c = bn_sink_count(sink), now = bn_now_ns();
        if (c != last) {
            last = c;
            since = now;
        } else if (now - since > LOST_NS) {
            snprintf(err, errlen, "%s: %llu of %llu events delivered, none for %llu s", what,
                     (unsigned long long)c, (unsigned long long)want, LOST_NS / 1000000000ull);
            return -1;
        }
    }
    return 0;
}

/* The observer saw exactly want events with checksum sum, and nothing bad. */
static int check_sink(struct bn_sink *sink, uint64_t want, uint64_t sum, const char *what,
                      char *err, size_t errlen)
{
    uint64_t c = bn_sink_count(sink), s = bn_sink_sum(sink), bad = bn_sink_bad_count(sink);
    if (c == want && s == sum && bad == 0)
        return 0;
    snprintf(err, errlen,
             "%s: observer saw %llu of %llu events, checksum %s, %llu wrong deliveries (no log "
             "sequence, out of log order, or the wrong event)",
             what, (unsigned long long)c, (unsigned long long)want, s == sum ? "ok" : "MISMATCH",
             (unsigned long long)bad);
    return -1;
}

/* The store appended exactly want events since it was opened (a fresh
   file), holds that many, and no transaction failed. */
static int check_store(struct ebd *e, uint64_t want, char *err, size_t errlen)
{
    eb_store_stats s;
    if (stats(e, &s, err, errlen) != 0)
        return -1;
    if (s.appended == want && s.events == want && s.write_errors == 0 && s.pending == 0)
        return 0;
    snprintf(err, errlen,
             "store: %llu events appended and %llu in the log of %llu published, %llu failed "
             "transactions, %llu still pending",
             (unsigned long long)s.appended, (unsigned long long)s.events, (unsigned long long)want,
             (unsigned long long)s.write_errors, (unsigned long long)s.pending);
    return -1;
}

/* A publisher of durable events, producer idx: payloads built in place. */
struct dpub {
    struct ebd *e;
    unsigned idx;
    unsigned flags; /* EB_PUBLISH_DURABLE or _LAZY */
    unsigned batch; /* > 1: eb_publish_batch */
    uint64_t seq, sum;
    uint64_t *bufs; /* batch payloads */
    eb_message *msgs;
};

static int dpub_init(struct dpub *p, struct ebd *e, unsigned idx, unsigned flags, unsigned batch)
{
    memset(p, 0, sizeof(*p));
    p->e = e;
    p->idx = idx;
    p->flags = flags;
    p->batch = batch;
    unsigned n = batch > 1 ? batch : 1;
    p->bufs = malloc((size_t)n * D_PAYLOAD);
    p->msgs = calloc(n, sizeof(eb_message));
    return p->bufs != NULL && p->msgs != NULL ? 0 : -1;
}

static void dpub_fini(struct dpub *p)
{
    free(p->bufs);
    free(p->msgs);
}

/* Publishes n events (a multiple of the batch, or fewer for the last). */
static int dpub_publish(struct dpub *p, unsigned n, char *err, size_t errlen)
{
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.flags = p->flags;
    const char *call = p->flags == EB_PUBLISH_DURABLE ? "eb_publish(DURABLE)"
                       : p->batch > 1                 ? "eb_publish_batch(DURABLE_LAZY)"
                                                      : "eb_publish(DURABLE_LAZY)";
    if (p->batch > 1) {
        for (unsigned k = 0; k < n; k++) {
            uint64_t *b = p->bufs + (size_t)k * (D_PAYLOAD / 8);
            p->sum += bn_fill(b, D_PAYLOAD, p->idx, p->seq++, 0);
            p->msgs[k] = (eb_message){.topic = D_TOPIC, .payload = b, .len = D_PAYLOAD};
        }
        size_t accepted = 0;
        int rc = eb_publish_batch(p->e->bus, p->msgs, n, &o, &accepted);
        if (rc != EB_OK || accepted != n) {
            eb_fail(p->e, call, rc, err, errlen);
            size_t l = strlen(err);
            snprintf(err + l, errlen - l, ", %zu of %u accepted", accepted, n);
            return -1;
        }
        return 0;
    }
    for (unsigned k = 0; k < n; k++) {
        p->sum += bn_fill(p->bufs, D_PAYLOAD, p->idx, p->seq++, 0);
        int rc = eb_publish(p->e->bus, D_TOPIC, p->bufs, D_PAYLOAD, &o);
        if (rc != EB_OK)
            return eb_fail(p->e, call, rc, err, errlen);
    }
    return 0;
}

/* d) one publisher, fire and forget with EB_PUBLISH_DURABLE_LAZY, then
   eb_store_flush; events/s from the first publish to the last delivery
   (lazy case metrics: rate, events per commit). */
static void run_eb_lazy(const struct bn_impl *im, struct bn_sample *out)
{
    const struct durable_cfg *cfg = &im->spec.dcfg;
    char *err = out->err;
    size_t errlen = sizeof(out->err);
    bn_sink_new_run();
    struct bn_sink *sink = bn_sink_new();
    struct ebd *e = malloc(sizeof(*e));
    struct dpub p;
    if (e == NULL || dpub_init(&p, e, 0, EB_PUBLISH_DURABLE_LAZY, cfg->batch) != 0)
        bn_fatal("out of memory");
    unsigned step = cfg->batch > 1 ? cfg->batch : 64;
    struct bn_watchdog wd;
    bn_watchdog_start(&wd, "durable", im->name, WATCHDOG_S);
    if (ebd_open(e, sink, err, errlen) != 0)
        goto done;
    for (uint64_t i = 0; i < cfg->warm; i += step)
        if (dpub_publish(&p, step, err, errlen) != 0)
            goto done;
    if (flush(e, err, errlen) != 0 || wait_seen(sink, p.seq, "warm-up", err, errlen) != 0)
        goto done;
    eb_store_stats s0, s1;
    if (stats(e, &s0, err, errlen) != 0)
        goto done;
    uint64_t first = p.seq, t0 = bn_now_ns();
    uint64_t deadline = cfg->max_ns ? t0 + cfg->max_ns : UINT64_MAX;
    while (p.seq - first < cfg->events && bn_now_ns() <= deadline)
        if (dpub_publish(&p, step, err, errlen) != 0)
            goto done;
    if (flush(e, err, errlen) != 0 || wait_seen(sink, p.seq, "timed", err, errlen) != 0)
        goto done;
    uint64_t t1 = bn_now_ns();
    if (stats(e, &s1, err, errlen) != 0 || check_store(e, p.seq, err, errlen) != 0)
        goto done;
    ebd_close(e); /* then check again: a late duplicate would show */
    if (check_sink(sink, p.seq, p.sum, "eventbus", err, errlen) != 0)
        goto done;
    out->v[0] = (double)(p.seq - first) * 1e9 / (double)(t1 - t0);
    out->v[1] = s1.commits > s0.commits
                    ? (double)(s1.appended - s0.appended) / (double)(s1.commits - s0.commits)
                    : 0;
    out->cut = p.seq - first < cfg->events;
    out->ok = 1;
done:
    ebd_close(e);
    bn_watchdog_stop(&wd);
    dpub_fini(&p);
    free(e);
    bn_sink_free(sink);
}

/* e) threads publishing with EB_PUBLISH_DURABLE, each waiting for its
   commit. */
struct waiter {
    struct ebd *e;
    const struct durable_cfg *cfg;
    pthread_barrier_t *bar;
    unsigned idx;
    pthread_t th;
    uint64_t *lat;   /* cfg->events */
    uint64_t timed;  /* latencies recorded */
    uint64_t end_ns; /* when its last timed publish returned */
    uint64_t deadline;
    struct dpub p;
    int failed;
    char err[BN_ERR_LEN];
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    const struct durable_cfg *cfg = w->cfg;
    pthread_barrier_wait(w->bar);
    for (uint64_t i = 0; i < cfg->warm && !w->failed; i++)
        w->failed = dpub_publish(&w->p, 1, w->err, sizeof(w->err)) != 0;
    /* Every thread has warmed up: the timed phase starts for all at once
       (the deadline is written by the main thread before this barrier). */
    pthread_barrier_wait(w->bar);
    uint64_t t = bn_now_ns();
    while (!w->failed && w->timed < cfg->events && t <= w->deadline) {
        w->failed = dpub_publish(&w->p, 1, w->err, sizeof(w->err)) != 0;
        uint64_t now = bn_now_ns();
        w->lat[w->timed++] = now - t;
        t = now;
    }
    w->end_ns = t;
    return NULL;
}

static void run_eb_wait(const struct bn_impl *im, struct bn_sample *out)
{
    const struct durable_cfg *cfg = &im->spec.dcfg;
    char *err = out->err;
    size_t errlen = sizeof(out->err);
    unsigned nth = cfg->threads;
    bn_sink_new_run();
    struct bn_sink *sink = bn_sink_new();
    struct ebd *e = malloc(sizeof(*e));
    struct waiter *w = calloc(nth, sizeof(*w));
    uint64_t *lat = malloc((size_t)nth * cfg->events * sizeof(uint64_t));
    if (e == NULL || w == NULL || lat == NULL)
        bn_fatal("out of memory");
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, nth + 1);
    int started = 0;
    struct bn_watchdog wd;
    bn_watchdog_start(&wd, "durable", im->name, WATCHDOG_S);
    if (ebd_open(e, sink, err, errlen) != 0)
        goto done;
    for (unsigned i = 0; i < nth; i++) {
        w[i].e = e;
        w[i].cfg = cfg;
        w[i].bar = &bar;
        w[i].idx = i;
        w[i].lat = lat + (size_t)i * cfg->events;
        w[i].deadline = UINT64_MAX;
        if (dpub_init(&w[i].p, e, i, EB_PUBLISH_DURABLE, 0) != 0)
            bn_fatal("out of memory");
    }
    for (unsigned i = 0; i < nth; i++)
        if (pthread_create(&w[i].th, NULL, waiter_main, &w[i]) != 0)
            bn_fatal("could not start a publisher thread");
    started = 1;
    pthread_barrier_wait(&bar); /* warm-up */
    eb_store_stats s0, s1;
    int st0 = eb_store_stats_get(e->st, &s0);
    uint64_t t0 = bn_now_ns();
    for (unsigned i = 0; i < nth; i++)
        w[i].deadline = cfg->max_ns ? t0 + cfg->max_ns : UINT64_MAX;
    /* The barrier orders the deadline writes before the threads read them. */
    pthread_barrier_wait(&bar);
    t0 = bn_now_ns();
    uint64_t t1 = t0, total = 0, sum = 0, n = 0;
    for (unsigned i = 0; i < nth; i++) {
        pthread_join(w[i].th, NULL);
        if (w[i].end_ns > t1)
            t1 = w[i].end_ns;
    }
    started = 0;
    int st1 = eb_store_stats_get(e->st, &s1);
    for (unsigned i = 0; i < nth; i++) {
        if (w[i].failed) {
            snprintf(err, errlen, "publisher %u: %.200s", i, w[i].err);
            goto done;
        }
        total += w[i].p.seq;
        sum += w[i].p.sum;
        memmove(lat + n, w[i].lat, w[i].timed * sizeof(uint64_t));
        n += w[i].timed;
    }
    if (n == 0) {
        snprintf(err, errlen, "no timed publish within the time limit");
        goto done;
    }
    /* Every publish returned after its commit; dispatch follows. */
    if (wait_seen(sink, total, "eventbus", err, errlen) != 0 || check_store(e, total, err, errlen))
        goto done;
    ebd_close(e);
    if (check_sink(sink, total, sum, "eventbus", err, errlen) != 0)
        goto done;
    out->v[W_RATE] = (double)n * 1e9 / (double)(t1 - t0);
    latencies(lat, n, out, W_P50, W_P99);
    out->v[W_PER_COMMIT] =
        st0 == EB_OK && st1 == EB_OK && s1.commits > s0.commits
            ? (double)(s1.appended - s0.appended) / (double)(s1.commits - s0.commits)
            : 0;
    out->cut = n < (uint64_t)nth * cfg->events;
    out->ok = 1;
done:
    if (started) /* a failure after the threads started: they end on their own */
        for (unsigned i = 0; i < nth; i++)
            pthread_join(w[i].th, NULL);
    pthread_barrier_destroy(&bar);
    ebd_close(e);
    bn_watchdog_stop(&wd);
    for (unsigned i = 0; i < nth; i++)
        dpub_fini(&w[i].p);
    free(w);
    free(lat);
    free(e);
    bn_sink_free(sink);
}

/* ---- f) memory-only publishing while the store is busy ---------------------- */

/* The memory case's bus and store, shared by its implementations (the same
   bus, busy or idle) and kept for the whole case. */
static struct ebd mem_bus;

/* The load: a thread publishing lazily, as case d (paced at rate events/s
   if rate > 0), or inserting raw rows 1000 per transaction, until told to
   stop. */
struct load {
    struct dpub p;
    uint64_t rate;
#ifdef BN_HAVE_SQLITE
    struct rawdb *raw; /* LOAD_RAW */
#endif
    _Atomic uint64_t raw_rows; /* LOAD_RAW: committed so far */
    _Atomic int stop;
    int failed;
    char err[BN_ERR_LEN];
    pthread_t th;
};

static void *load_main(void *arg)
{
    struct load *l = arg;
    uint64_t t0 = bn_now_ns();
#ifdef BN_HAVE_SQLITE
    /* Relaxed: raw_rows is a progress figure, stop a flag; neither
       publishes data (the join does). */
    while (l->raw != NULL && !l->failed && !atomic_load_explicit(&l->stop, memory_order_relaxed)) {
        l->failed = raw_txn(l->raw, D_ROWS_PER_TXN, l->err, sizeof(l->err)) != 0;
        atomic_store_explicit(&l->raw_rows, l->raw->rows, memory_order_relaxed);
    }
    if (l->raw != NULL)
        return NULL;
#endif
    /* Relaxed: stop is a flag and nothing is published through it. */
    while (!l->failed && !atomic_load_explicit(&l->stop, memory_order_relaxed)) {
        if (l->rate > 0) {
            uint64_t due = (bn_now_ns() - t0) * l->rate / 1000000000u;
            if (l->p.seq >= due) {
                bn_sleep_ns(500000);
                continue;
            }
        }
        l->failed = dpub_publish(&l->p, 16, l->err, sizeof(l->err)) != 0;
    }
    return NULL;
}

static int mem_setup(struct bn_case *c, char *err, size_t errlen)
{
    (void)c;
    return ebd_open(&mem_bus, NULL, err, errlen);
}

static void mem_close(void)
{
    ebd_close(&mem_bus);
}

/* Metrics: memory-only events/s, and the durable events/s the store (or
   raw rows/s the control) committed meanwhile (for information: shows the
   load was there). */
static void run_memory(const struct bn_impl *im, struct bn_sample *out)
{
    const struct durable_cfg *cfg = &im->spec.dcfg;
    char *err = out->err;
    size_t errlen = sizeof(out->err);
    struct ebd *e = &mem_bus;
    bn_sink_new_run();
    struct bn_sink *msink = bn_sink_new(), *dsink = bn_sink_new();
    eb_subscription *msub = NULL;
    struct load *l = calloc(1, sizeof(*l));
    if (l == NULL || dpub_init(&l->p, e, 1, EB_PUBLISH_DURABLE_LAZY, 0) != 0)
        bn_fatal("out of memory");
    int loading = 0;
    uint64_t msum = 0, mseq = 0;
    struct bn_watchdog wd;
    bn_watchdog_start(&wd, "durable", im->name, WATCHDOG_S);
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = EB_DELIVERY_SERIAL;
    memset(&e->d, 0, sizeof(e->d));
    e->d.sink = dsink;
    int rc = eb_subscribe(e->bus, BN_TOPIC, on_memory, msink, &o, &msub);
    if (rc == EB_OK)
        rc = eb_subscribe(e->bus, D_TOPIC, on_durable, &e->d, &o, &e->sub);
    if (rc != EB_OK) {
        eb_fail(e, "eb_subscribe", rc, err, errlen);
        goto done;
    }
    eb_store_stats s0, s1, s2;
    if (stats(e, &s0, err, errlen) != 0)
        goto done;
    uint64_t buf[BN_PAYLOAD / 8];
    for (; mseq < cfg->warm; mseq++) {
        msum += bn_fill(buf, sizeof(buf), 0, mseq, 0);
        if ((rc = eb_publish(e->bus, BN_TOPIC, buf, sizeof(buf), NULL)) != EB_OK) {
            eb_fail(e, "eb_publish(memory)", rc, err, errlen);
            goto done;
        }
    }
    if (wait_seen(msink, mseq, "memory warm-up", err, errlen) != 0)
        goto done;
#ifdef BN_HAVE_SQLITE
    if (cfg->load == LOAD_RAW) {
        if ((l->raw = malloc(sizeof(*l->raw))) == NULL)
            bn_fatal("out of memory");
        if (raw_open(l->raw, err, errlen) != 0)
            goto done;
    }
#endif
    if (cfg->load != LOAD_NONE) {
        l->rate = cfg->load_rate;
        if (pthread_create(&l->th, NULL, load_main, l) != 0)
            bn_fatal("could not start the load thread");
        loading = 1;
        /* Until the load is under way: the writer committed twice (or two
           raw transactions did). */
        uint64_t until = bn_now_ns() + 1000000000u;
        eb_store_stats s;
        do {
            bn_sleep_ns(1000000);
            if (stats(e, &s, err, errlen) != 0)
                goto done;
        } while (s.commits < s0.commits + 2 &&
                 atomic_load_explicit(&l->raw_rows, memory_order_relaxed) < 2 * D_ROWS_PER_TXN &&
                 bn_now_ns() < until);
    }
    if (stats(e, &s0, err, errlen) != 0)
        goto done;
    uint64_t raw0 = atomic_load_explicit(&l->raw_rows, memory_order_relaxed);
    uint64_t first = mseq, t0 = bn_now_ns();
    uint64_t deadline = cfg->max_ns ? t0 + cfg->max_ns : UINT64_MAX;
    for (; mseq - first < cfg->events; mseq++) {
        if (mseq % 64 == 0 && bn_now_ns() > deadline)
            break;
        msum += bn_fill(buf, sizeof(buf), 0, mseq, 0);
        if ((rc = eb_publish(e->bus, BN_TOPIC, buf, sizeof(buf), NULL)) != EB_OK) {
            eb_fail(e, "eb_publish(memory)", rc, err, errlen);
            goto done;
        }
    }
    if (wait_seen(msink, mseq, "memory", err, errlen) != 0)
        goto done;
    uint64_t t1 = bn_now_ns();
    uint64_t raw1 = atomic_load_explicit(&l->raw_rows, memory_order_relaxed);
    if (stats(e, &s1, err, errlen) != 0)
        goto done;
    if (loading) {
        atomic_store_explicit(&l->stop, 1, memory_order_relaxed);
        pthread_join(l->th, NULL);
        loading = 0;
        if (l->failed) {
            snprintf(err, errlen, "load: %.200s", l->err);
            goto done;
        }
    }
    if (flush(e, err, errlen) != 0 || wait_seen(dsink, l->p.seq, "durable load", err, errlen) ||
        stats(e, &s2, err, errlen) != 0)
        goto done;
    if (s2.write_errors != 0) {
        snprintf(err, errlen, "store: %llu failed transactions",
                 (unsigned long long)s2.write_errors);
        goto done;
    }
    eb_unsubscribe(msub);
    msub = NULL;
    eb_unsubscribe(e->sub);
    e->sub = NULL;
    if (check_sink(msink, mseq, msum, "memory", err, errlen) != 0 ||
        check_sink(dsink, l->p.seq, l->p.sum, "durable load", err, errlen) != 0)
        goto done;
#ifdef BN_HAVE_SQLITE
    if (l->raw != NULL && raw_check(l->raw, err, errlen) != 0)
        goto done;
#endif
    out->v[0] = (double)(mseq - first) * 1e9 / (double)(t1 - t0);
    out->v[1] = (double)(s1.appended - s0.appended + raw1 - raw0) * 1e9 / (double)(t1 - t0);
    out->cut = mseq - first < cfg->events;
    out->ok = 1;
done:
    if (loading) {
        atomic_store_explicit(&l->stop, 1, memory_order_relaxed);
        pthread_join(l->th, NULL);
    }
#ifdef BN_HAVE_SQLITE
    if (l->raw != NULL) {
        raw_close(l->raw);
        free(l->raw);
    }
#endif
    if (msub != NULL)
        eb_unsubscribe(msub);
    if (e->sub != NULL)
        eb_unsubscribe(e->sub);
    e->sub = NULL;
    bn_watchdog_stop(&wd);
    dpub_fini(&l->p);
    free(l);
    bn_sink_free(msink);
    bn_sink_free(dsink);
}

#endif /* BN_HAVE_EB_STORE */

/* ---- cases ----------------------------------------------------------------------- */

static void metric(struct bn_case *c, const char *name, const char *unit, int lower_better,
                   int info)
{
    c->metric[c->nmetrics++] = (struct bn_metric){name, unit, lower_better, info};
}

static struct bn_impl *add(struct bn_case *c, const char *name, enum bn_role role, bn_run_fn run,
                           const char *skip, struct durable_cfg cfg)
{
    struct bn_impl *im = bn_impl_add(c, name, role, skip != NULL ? NULL : run);
    im->skip = skip;
    im->spec.dcfg = cfg;
    return im;
}

#ifdef BN_HAVE_EB_STORE
#define EB_RUN(fn) fn, NULL
#else
#define EB_RUN(fn) NULL, NOT_BUILT_STORE
#endif
#ifdef BN_HAVE_SQLITE
#define RAW_RUN(fn) fn, NULL
#else
#define RAW_RUN(fn) NULL, NOT_BUILT_SQLITE
#endif

/* The implementation names the targets refer to (render.py spells them
   out too). */
#define I_LAZY "eventbus eb_publish DURABLE_LAZY + eb_store_flush"
#define I_LAZY_BATCH "eventbus eb_publish_batch(64) DURABLE_LAZY + eb_store_flush"
#define I_RAW_BATCH "raw SQLite, 1000 rows per transaction"
#define I_WAIT "eventbus, 8 threads eb_publish(DURABLE)"
#define I_RAW_ROW "raw SQLite, 1 row per transaction"
#define I_FSYNC "write 4 KiB + fdatasync"
#define I_MEM_BUSY "eventbus memory-only, store busy (lazy durable load, other thread)"
#define I_MEM_PACED "eventbus memory-only, store busy (lazy durable load paced at 10k events/s)"
#define I_MEM_IDLE "eventbus memory-only, same bus, store idle"
#define I_MEM_RAW                                                                                  \
    "eventbus memory-only, store idle, raw SQLite inserts in another thread (CPU control)"

/* Targets of the issue, computed from this run's medians. */
#define T_LAZY 0.5    /* fire-and-forget durable >= 50% of raw batched inserts */
#define T_WAIT 4.0    /* 8 waiting publishers >= 4x one row per transaction */
#define T_FSYNC_X 2.0 /* p50 <= 2 x fdatasync p50 + 100 us */
#define T_FSYNC_PLUS_NS 100000.0
#define T_MEMORY 0.9 /* memory-only publishing not slower: >= 0.9 of idle */

static const struct bn_impl *impl(const struct bn_case *c, const char *name)
{
    for (int i = 0; i < c->nimpl; i++)
        if (strcmp(c->impl[i].name, name) == 0)
            return &c->impl[i];
    return NULL;
}

static double med(const struct bn_case *c, const char *name, int m)
{
    const struct bn_impl *im = impl(c, name);
    return im != NULL ? bn_median(im, m) : 0;
}

static void target_ge(const char *what, double ratio, double need)
{
    if (ratio <= 0)
        printf("     target: %s: not measured\n", what);
    else
        printf("     target: %s: x%.2f, needs >= x%.2f: %s\n", what, ratio, need,
               ratio >= need ? "met" : "MISSED");
}

/* The last case's teardown: the scenario is over. */
static void teardown(struct bn_case *c)
{
    (void)c;
#ifdef BN_HAVE_EB_STORE
    mem_close();
#endif
    bn_db_dir_remove();
}

static void report_lazy(const struct bn_case *c)
{
    double raw = med(c, I_RAW_BATCH, 0);
    double a = med(c, I_LAZY, 0), b = med(c, I_LAZY_BATCH, 0);
    target_ge("eb_publish DURABLE_LAZY vs raw batched inserts", raw > 0 ? a / raw : 0, T_LAZY);
    target_ge("eb_publish_batch DURABLE_LAZY vs raw batched inserts", raw > 0 ? b / raw : 0,
              T_LAZY);
}

static void report_wait(const struct bn_case *c)
{
    double raw = med(c, I_RAW_ROW, W_RATE), eb = med(c, I_WAIT, W_RATE);
    target_ge("8 waiting durable publishers vs one row per transaction", raw > 0 ? eb / raw : 0,
              T_WAIT);
    double fs = med(c, I_FSYNC, W_P50), p50 = med(c, I_WAIT, W_P50);
    if (fs <= 0 || p50 <= 0) {
        printf("     target: p50 of a waiting durable publish: not measured\n");
        return;
    }
    double bound = T_FSYNC_X * fs + T_FSYNC_PLUS_NS;
    printf("     target: p50 of a waiting durable publish %.1f us <= 2 x fdatasync p50 %.1f us "
           "+ 100 us = %.1f us: %s (x%.2f of the bound)\n",
           p50 / 1e3, fs / 1e3, bound / 1e3, p50 <= bound ? "met" : "MISSED", p50 / bound);
}

static void report_memory(const struct bn_case *c)
{
    double idle = med(c, I_MEM_IDLE, 0), busy = med(c, I_MEM_BUSY, 0);
    double raw = med(c, I_MEM_RAW, 0), paced = med(c, I_MEM_PACED, 0);
    target_ge("memory-only publishing, store busy vs idle (not slower: within 10%)",
              idle > 0 ? busy / idle : 0, T_MEMORY);
    if (idle > 0 && paced > 0)
        printf("     (the load paced at 10k events/s: x%.2f of idle)\n", paced / idle);
    if (idle > 0 && raw > 0)
        printf("     (control: with raw SQLite inserts in another thread instead, x%.2f of idle)\n",
               raw / idle);
}

void bn_build_durable(const struct bn_options *o, struct bn_case **cases, int *n, int *cap)
{
    uint64_t max_ns = o->quick ? 1500000000ull : 10000000000ull;
    struct durable_cfg d;

    /* c, d: fire and forget. */
    struct bn_case *c = bn_case_add(cases, n, cap);
    c->scenario = "durable";
    c->name = "lazy";
    c->title = "1 publisher, 200 B events, fire and forget with EB_PUBLISH_DURABLE_LAZY then "
               "eb_store_flush, 1 subscriber (synchronous=FULL) vs raw SQLite inserting the same "
               "rows, 1000 per transaction (a row counts as an event)";
    c->report = report_lazy;
    metric(c, "events_per_s", "events/s", 0, 0);
    metric(c, "events_per_commit", "events/commit", 0, 1);
    memset(&d, 0, sizeof(d));
    d.threads = 1;
    d.events = o->quick ? 30000 : 300000;
    d.warm = d.events / 10;
    d.max_ns = max_ns;
    add(c, I_LAZY, BN_OURS, EB_RUN(run_eb_lazy), d);
    struct durable_cfg db = d;
    db.batch = D_BATCH;
    add(c, I_LAZY_BATCH, BN_OURS, EB_RUN(run_eb_lazy), db);
    add(c, I_RAW_BATCH, BN_PEER, RAW_RUN(run_raw_batch), d);

    /* a, b, e: waiting for durability. */
    c = bn_case_add(cases, n, cap);
    c->scenario = "durable";
    c->name = "wait8";
    c->title = "8 threads each eb_publish(EB_PUBLISH_DURABLE) of 200 B, returning after the "
               "commit (group commit) vs raw SQLite, 1 row per transaction, and a raw write(4 "
               "KiB) + fdatasync in the same directory";
    c->report = report_wait;
    metric(c, "events_per_s", "events/s", 0, 0);
    metric(c, "p50_ns", "ns", 1, 0);
    metric(c, "p99_ns", "ns", 1, 0);
    metric(c, "events_per_commit", "events/commit", 0, 1);
    memset(&d, 0, sizeof(d));
    d.threads = D_THREADS;
    d.events = o->quick ? 300 : 4000; /* per thread */
    d.warm = d.events / 10;
    d.max_ns = max_ns;
    add(c, I_WAIT, BN_OURS, EB_RUN(run_eb_wait), d);
    d.threads = 1;
    d.events = o->quick ? 1000 : 10000;
    d.warm = d.events / 10;
    add(c, I_RAW_ROW, BN_PEER, RAW_RUN(run_raw_row), d);
    add(c, I_FSYNC, BN_BASELINE, run_fsync, NULL, d);

    /* f: memory-only publishing next to a busy store. */
    c = bn_case_add(cases, n, cap);
    c->scenario = "durable";
    c->name = "memory";
    c->title = "memory-only eb_publish, 1 publisher -> 1 subscriber, 64 B, on a bus whose store "
               "is busy with a lazy durable load from another thread vs the same bus with its "
               "store idle";
    c->report = report_memory;
#ifdef BN_HAVE_EB_STORE
    c->setup = mem_setup;
#endif
    c->teardown = teardown;
    metric(c, "events_per_s", "events/s", 0, 0);
    metric(c, "durable_per_s", "durable events/s", 0, 1);
    memset(&d, 0, sizeof(d));
    d.threads = 1;
    d.events = o->quick ? 100000 : 1000000;
    d.warm = d.events / 10;
    d.max_ns = max_ns;
    d.load = LOAD_LAZY;
    add(c, I_MEM_BUSY, BN_OURS, EB_RUN(run_memory), d);
    /* A store kept committing without taking the CPUs: what the store
       itself does to the memory path (locks, intake, dispatch). */
    d.load_rate = 10000;
    add(c, I_MEM_PACED, BN_OURS, EB_RUN(run_memory), d);
    d.load_rate = 0;
    d.load = LOAD_NONE;
    add(c, I_MEM_IDLE, BN_BASELINE, EB_RUN(run_memory), d);
    /* The same CPU work without the bus's store: if the busy figure drops
       as much, the cause is the shared CPUs, not the store. */
    d.load = LOAD_RAW;
#if defined(BN_HAVE_EB_STORE) && defined(BN_HAVE_SQLITE)
    add(c, I_MEM_RAW, BN_BASELINE, run_memory, NULL, d);
#elif defined(BN_HAVE_EB_STORE)
    add(c, I_MEM_RAW, BN_BASELINE, NULL, NOT_BUILT_SQLITE, d);
#else
    add(c, I_MEM_RAW, BN_BASELINE, NULL, NOT_BUILT_STORE, d);
#endif
}
