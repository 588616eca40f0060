/*
 * fuzz_store — libFuzzer target: opening store files with corrupted bytes.
 *
 * At start-up the harness makes one valid store through the public API (a
 * bus with the store: durable events, two durable subscriptions, one of
 * them idempotent, a dead letter, scheduled events, outbox rows in every
 * state, saga rows). SQLite's page size is set to 512 bytes before the
 * schema exists, so the file is a few KB and every byte of it is reachable
 * by a 16-bit offset; a payload larger than a page adds overflow pages.
 *
 * Each input describes how to damage a copy of that seed:
 *   byte 0        flags: bit 0 truncate, bit 1 open read-write with no_create
 *   bytes 1-2     truncation length (little endian), modulo the seed size + 1
 *   then 3 bytes  per change: offset (little endian, modulo the seed size)
 *                 and the byte written there
 * An input shorter than 3 bytes leaves the seed as it is.
 *
 * The damaged file is then opened read-only and read-write. What must hold
 * (store.h): eb_store_open returns EB_OK or a clean code (EB_ECORRUPT,
 * EB_EIO, EB_ENOTSUP, EB_ENOENT, EB_ENOMEM) and leaves a file it refused
 * untouched; a read-only handle never changes the file and refuses writes
 * with EB_ENOTSUP; on an open store every read (stats, events,
 * subscriptions, outbox, dead letters, sagas, saga loads) and every write
 * (outbox add/claim/ack/abandon/fail/reap, dead-letter requeue, saga saves,
 * a bus attached with durable subscriptions that replay the log and a
 * durable publish) ends in EB_OK or one of the codes its comment names,
 * with callbacks that see valid pointers and lengths (ASan checks every
 * byte is touched). Never a crash, a hang (libFuzzer's -timeout), a leak
 * (LSan) or undefined behaviour (UBSan).
 *
 * Files live in a per-process directory under $TMPDIR (seed.db, and f.db
 * for the input being run), removed at exit. After a crash the directory
 * stays: f.db is then the damaged file that crashed, and seed.db the seed.
 * EB_FUZZ_STORE_SEED=path uses that file as the seed instead of making one
 * (to rerun an input against the exact seed of an earlier run), or makes
 * the seed there and keeps it if the file does not exist.
 *
 * Threads: libFuzzer calls LLVMFuzzerTestOneInput from one thread; the
 * store's writer and the bus's worker are the library's own threads.
 */
#include <eventbus/eventbus.h>
#include <eventbus/store.h>

#include <fcntl.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WAIT_NS 10000000000LL /* any wait longer than this is a hang */
#define SAGA_STATE 8          /* state size of the seed's saga rows */
#define SAGA_NAME "fuzz-saga"

static char dir[4096];
static char seed_path[4200], file_path[4200];
static uint8_t *seed;
static size_t seed_n;

/* ---- helpers -------------------------------------------------------------- */

static _Noreturn void fail(const char *what, int rc)
{
    fprintf(stderr, "fuzz_store: FAILED: %s (%s)\n  damaged file: %s\n  seed: %s\n", what,
            eb_err_name(rc), file_path, seed_path);
    fflush(stderr);
    __builtin_trap();
}

/* Allowed error codes, as a bit mask of -code. */
#define OK (1u << 0)
#define C(code) (1u << (unsigned)-(code))
#define SQL_ERRORS (C(EB_EIO) | C(EB_ECORRUPT) | C(EB_EBUSY) | C(EB_ENOMEM))

static int expect(const char *call, int rc, unsigned allowed)
{
    if (rc > 0 || rc < -31 || !(allowed & (1u << (unsigned)-rc))) {
        char what[160];
        snprintf(what, sizeof(what), "%s returned a code its documentation does not allow here",
                 call);
        fail(what, rc);
    }
    return rc;
}

static void remove_files(const char *path)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    char p[4300];
    for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
        unlink(p);
    }
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *b = realloc(buf, cap);
            if (b == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0)
            break;
    }
    fclose(f);
    *n = len;
    return buf;
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (n > 0 && write(fd, p, n) != (ssize_t)n) || close(fd) != 0)
        fail("cannot write the damaged file", EB_EIO);
}

/* The file must still hold exactly what the input wrote. */
static void expect_untouched(const char *when, const uint8_t *p, size_t n)
{
    size_t got_n = 0;
    uint8_t *got = read_file(file_path, &got_n);
    bool same = got != NULL && got_n == n && memcmp(got, p, n) == 0;
    free(got);
    if (!same) {
        char what[160];
        snprintf(what, sizeof(what), "the store file changed %s", when);
        fail(what, EB_OK);
    }
}

/* Reads every byte a callback was given, so ASan sees a bad pointer or length. */
static volatile unsigned sink;

static void touch(const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    unsigned s = 0;
    for (size_t i = 0; i < n; i++)
        s += b[i];
    sink += s;
}

static void touch_str(const char *what, const char *s)
{
    if (s == NULL) {
        char msg[160];
        snprintf(msg, sizeof(msg), "a callback got a NULL %s", what);
        fail(msg, EB_OK);
    }
    touch(s, strlen(s) + 1);
}

/* may_be_null: the header says NULL means "none" (then the length is 0). */
static void touch_blob(const char *what, const void *p, size_t n, bool may_be_null)
{
    if (p == NULL && (!may_be_null || n != 0)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "a callback got a NULL %s (length %zu)", what, n);
        fail(msg, EB_OK);
    }
    if (p != NULL)
        touch(p, n);
}

/* ---- read paths ------------------------------------------------------------ */

static int on_stored_event(const eb_stored_event *e, void *ctx)
{
    (void)ctx;
    touch_str("event topic", e->topic);
    touch_blob("event key", e->key, e->key_len, true);
    touch_blob("event payload", e->payload, e->payload_len, false); /* never NULL */
    return 0;
}

static int stop_at_first(const eb_stored_event *e, void *ctx)
{
    on_stored_event(e, ctx);
    return 7;
}

static int on_sub_info(const eb_store_subscription_info *i, void *ctx)
{
    (void)ctx;
    touch_str("subscription name", i->name);
    touch_str("subscription pattern", i->pattern);
    return 0;
}

static void touch_outbox(const eb_outbox_message *m)
{
    touch_str("outbox topic", m->topic);
    touch_blob("outbox key", m->key, m->key_len, true);
    touch_blob("outbox payload", m->payload, m->payload_len, false);
    touch_str("outbox last_error", m->last_error); /* "" if none */
}

static int on_outbox(const eb_outbox_message *m, void *ctx)
{
    (void)ctx;
    touch_outbox(m);
    return 0;
}

static int on_deadletter(const eb_store_deadletter *d, void *ctx)
{
    (void)ctx;
    touch_str("dead letter subscription", d->subscription);
    touch_str("dead letter topic", d->topic);
    touch_blob("dead letter key", d->key, d->key_len, true);
    touch_blob("dead letter payload", d->payload, d->payload_len, true);
    return 0;
}

static int on_saga_info(const eb_store_saga_info *i, void *ctx)
{
    (void)ctx;
    touch_str("saga name", i->saga);
    touch_blob("saga key", i->key, i->key_len, true);
    return 0;
}

/* Every read of store.h, each allowed its documented failures only. */
static void read_everything(eb_store *s)
{
    const unsigned rd = OK | SQL_ERRORS;
    eb_store_stats st;
    expect("eb_store_stats_get", eb_store_stats_get(s, &st), rd);
    expect("eb_store_events", eb_store_events(s, NULL, on_stored_event, NULL), rd);
    eb_store_query q = {.topic = "orders.#", .after_seq = 1, .limit = 2};
    expect("eb_store_events (pattern)", eb_store_events(s, &q, on_stored_event, NULL), rd);
    /* A callback's non-zero return stops the walk and is returned. */
    int rc = eb_store_events(s, NULL, stop_at_first, NULL);
    if (rc != 7)
        expect("eb_store_events (stopped by the callback)", rc, rd);
    expect("eb_store_subscriptions", eb_store_subscriptions(s, on_sub_info, NULL), rd);
    expect("eb_outbox_list", eb_outbox_list(s, -1, 0, on_outbox, NULL), rd);
    expect("eb_outbox_list (ready)", eb_outbox_list(s, EB_OUTBOX_READY, 1, on_outbox, NULL), rd);
    expect("eb_store_deadletters", eb_store_deadletters(s, 0, on_deadletter, NULL), rd);
    expect("eb_store_sagas", eb_store_sagas(s, NULL, 0, on_saga_info, NULL), rd);
    expect("eb_store_sagas (one)", eb_store_sagas(s, SAGA_NAME, 1, on_saga_info, NULL), rd);
    /* Bad arguments are refused before the file is looked at. */
    char longp[EB_TOPIC_MAX + 2];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = '\0';
    eb_store_query bad = {.topic = longp};
    expect("eb_store_events (long pattern)", eb_store_events(s, &bad, on_stored_event, NULL),
           C(EB_EINVAL));
    char msg[64];
    eb_store_last_error(s, msg, sizeof(msg));
}

/* ---- read-only ------------------------------------------------------------ */

/* One worker and small rings: the default intake (4095 entries) makes a bus
   cost more than everything else an input does. */
static void small_bus_config(eb_bus_config *cfg, eb_store *s)
{
    eb_bus_config_init(cfg);
    cfg->workers = 1;
    cfg->intake_capacity = 63;
    cfg->mailbox_capacity = 15;
    cfg->store = s;
}

static void read_only_session(const uint8_t *file, size_t n)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.read_only = true;
    o.busy_timeout_ms = 200;
    eb_store *s = (eb_store *)&sink;
    int rc = eb_store_open(file_path, &o, &s);
    /* An empty file is no store: as if missing. */
    expect("eb_store_open (read-only)", rc,
           OK | C(EB_ECORRUPT) | C(EB_EIO) | C(EB_ENOTSUP) | C(EB_ENOMEM) |
               (n == 0 ? C(EB_ENOENT) : 0));
    if (rc != EB_OK) {
        if (s != (eb_store *)&sink)
            fail("eb_store_open wrote *out on failure", rc);
        expect_untouched("after a refused read-only open", file, n);
        return;
    }
    read_everything(s);
    /* Every write is refused on a read-only handle. */
    const unsigned ro = C(EB_ENOTSUP);
    expect("eb_outbox_add (read-only)", eb_outbox_add(s, "t", "p", 1, NULL, 0, NULL), ro);
    eb_outbox_batch *b = NULL;
    expect("eb_outbox_claim (read-only)", eb_outbox_claim(s, 4, 1000000000, &b), ro);
    expect("eb_outbox_reap (read-only)", eb_outbox_reap(s, NULL), ro);
    expect("eb_store_flush (read-only)", eb_store_flush(s, WAIT_NS), ro);
    expect("eb_store_deadletter_requeue (read-only)", eb_store_deadletter_requeue(s, 0, NULL), ro);
    eb_saga_store *ss = NULL;
    expect("eb_saga_sqlite_store_create (read-only)", eb_saga_sqlite_store_create(s, &ss), ro);
    eb_bus_config cfg;
    small_bus_config(&cfg, s);
    eb_bus *bus = NULL;
    expect("eb_bus_create (read-only store)", eb_bus_create(&cfg, &bus), ro);
    eb_store_close(s);
    expect_untouched("after a read-only session", file, n);
}

/* ---- read-write ------------------------------------------------------------ */

static int on_event(const eb_event *ev, void *ctx)
{
    (void)ctx;
    size_t pl, kl;
    const void *p = eb_event_payload(ev, &pl);
    const void *k = eb_event_key(ev, &kl);
    touch_str("event topic", eb_event_topic(ev));
    touch_blob("event payload", p, pl, false);
    touch_blob("event key", k, kl, true);
    /* Payloads starting with 'F' fail: dead-lettered (max_attempts 1). */
    return pl > 0 && ((const char *)p)[0] == 'F' ? -1 : 0;
}

static void outbox_session(eb_store *s)
{
    const unsigned wr = OK | SQL_ERRORS;
    int64_t id = 0;
    /* Two more claimable rows: with the seed's ready one, ack, fail and
       abandon each get one. */
    expect("eb_outbox_add", eb_outbox_add(s, "out.fuzz", "x", 1, "k", 1, &id), wr);
    expect("eb_outbox_add", eb_outbox_add(s, "out.fuzz.2", NULL, 0, NULL, 0, NULL), wr);
    eb_outbox_batch *b = NULL;
    int rc = expect("eb_outbox_claim", eb_outbox_claim(s, 4, 1000000000, &b), wr);
    if (rc == EB_OK) {
        if (b == NULL || b->n > 4)
            fail("eb_outbox_claim returned a bad batch", rc);
        const unsigned ack = OK | SQL_ERRORS | C(EB_ECONFLICT) | C(EB_ENOENT);
        for (size_t i = 0; i < b->n; i++) {
            touch_outbox(&b->msgs[i]);
            if (i == 0)
                expect("eb_outbox_ack", eb_outbox_ack(s, b->msgs[i].id), ack);
            else if (i == 1)
                expect("eb_outbox_fail", eb_outbox_fail(s, b->msgs[i].id, "gave up"), ack);
            else
                expect("eb_outbox_abandon", eb_outbox_abandon(s, b->msgs[i].id, "again", 0), ack);
        }
        eb_outbox_batch_free(b);
    }
    size_t reaped;
    expect("eb_outbox_reap", eb_outbox_reap(s, &reaped), wr);
}

static void saga_session(eb_store *s)
{
    eb_saga_store *ss = NULL;
    int rc = expect("eb_saga_sqlite_store_create", eb_saga_sqlite_store_create(s, &ss),
                    OK | C(EB_ENOMEM));
    if (rc != EB_OK)
        return;
    uint8_t state[SAGA_STATE];
    eb_saga_record rec = {.state = state, .state_size = sizeof(state)};
    rc = ss->load(ss, SAGA_NAME, "k1", 2, &rec);
    /* EB_EINVAL: the stored state has another size (a damaged length). */
    expect("saga store load", rc, OK | SQL_ERRORS | C(EB_ENOENT) | C(EB_EINVAL));
    if (rc == EB_OK) {
        free(rec.outbox);
        rec.outbox = NULL;
        rec.outbox_len = 0;
        uint64_t v = rec.version;
        rec.version = v + 1;
        state[0]++;
        rc = ss->save(ss, SAGA_NAME, "k1", 2, v, &rec);
        expect("saga store save", rc,
               OK | SQL_ERRORS | C(EB_ECONFLICT) | C(EB_ENOENT) | C(EB_EINVAL));
        /* Optional in the interface; its errors are ignored by the helper. */
        if (rc == EB_OK && ss->dispatched != NULL)
            ss->dispatched(ss, SAGA_NAME, "k1", 2, v + 1);
    }
    memset(&rec, 0, sizeof(rec));
    rec.state = state;
    rec.state_size = sizeof(state);
    rec.version = 1;
    expect("saga store create", ss->create(ss, SAGA_NAME, "k3", 2, &rec),
           OK | SQL_ERRORS | C(EB_EEXIST));
    expect("saga store remove", ss->remove(ss, SAGA_NAME, "k2", 2, 1),
           OK | SQL_ERRORS | C(EB_ECONFLICT) | C(EB_ENOENT));
    eb_saga_store_destroy(ss);
}

/* A bus on the damaged store: durable subscriptions resume from their
   checkpoints (replaying the log), scheduled events fire, a durable
   publish commits or fails cleanly. */
static void bus_session(eb_store *s)
{
    eb_bus_config cfg;
    small_bus_config(&cfg, s);
    eb_bus *bus = NULL;
    int rc = expect("eb_bus_create", eb_bus_create(&cfg, &bus), OK | C(EB_ENOMEM) | C(EB_EIO));
    if (rc != EB_OK)
        return;
    eb_bus *other = NULL;
    expect("eb_bus_create (second bus on the store)", eb_bus_create(&cfg, &other), C(EB_EBUSY));

    static const struct {
        const char *name, *pattern;
        bool idempotent;
    } durable[] = {{"audit", "orders.#", false}, {"billing", "orders.*", true}};
    eb_subscription *subs[2] = {NULL, NULL};
    for (size_t i = 0; i < 2; i++) {
        eb_subscribe_options so;
        eb_subscribe_options_init(&so);
        so.durable = true;
        so.idempotent = durable[i].idempotent;
        so.name = durable[i].name;
        so.max_attempts = 1;
        expect("eb_subscribe (durable)",
               eb_subscribe(bus, durable[i].pattern, on_event, NULL, &so, &subs[i]),
               OK | SQL_ERRORS);
    }
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.flags = EB_PUBLISH_DURABLE;
    po.timeout_ns = WAIT_NS;
    expect("eb_publish (durable)", eb_publish(bus, "orders.fuzz", "F", 1, &po), OK | SQL_ERRORS);
    po.delay_ns = 1000000; /* a durable scheduled event: a row that fires */
    expect("eb_publish (durable, delayed)", eb_publish(bus, "orders.soon", "s", 1, &po),
           OK | SQL_ERRORS);
    rc = eb_store_flush(s, WAIT_NS);
    expect("eb_store_flush", rc, OK | C(EB_EIO) | C(EB_ECORRUPT) | C(EB_EBUSY));
    for (size_t i = 0; i < 2; i++)
        if (subs[i] != NULL)
            expect("eb_unsubscribe", eb_unsubscribe(subs[i]), OK);
    eb_bus_destroy(bus);
}

static void read_write_session(const uint8_t *file, size_t n, bool no_create)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_OFF;
    o.busy_timeout_ms = 200;
    o.no_create = no_create;
    o.max_page_count = 4096; /* 2 MB at 512-byte pages: writes cannot run away */
    eb_store *s = (eb_store *)&sink;
    int rc = eb_store_open(file_path, &o, &s);
    /* no_create refuses an empty file: no bytes, or an SQLite file with
       nothing in it (what a fuzzed header may turn out to be). */
    expect("eb_store_open (read-write)", rc,
           OK | C(EB_ECORRUPT) | C(EB_EIO) | C(EB_ENOTSUP) | C(EB_ENOMEM) |
               (no_create ? C(EB_ENOENT) : 0));
    if (rc != EB_OK) {
        if (s != (eb_store *)&sink)
            fail("eb_store_open wrote *out on failure", rc);
        expect_untouched("after a refused read-write open", file, n);
        return;
    }
    read_everything(s);
    outbox_session(s);
    /* Requeued dead letters become scheduled events the bus fires. */
    const unsigned dl = OK | SQL_ERRORS | C(EB_ENOENT);
    expect("eb_store_deadletter_requeue", eb_store_deadletter_requeue(s, 0, NULL), dl);
    expect("eb_store_deadletter_purge", eb_store_deadletter_purge(s, 999, NULL), dl);
    saga_session(s);
    bus_session(s);
    read_everything(s);
    eb_store_close(s);
}

/* ---- the seed ------------------------------------------------------------- */

static _Noreturn void seed_fail(const char *what, int rc)
{
    fprintf(stderr, "fuzz_store: making the seed store: %s: %s\n", what, eb_err_name(rc));
    abort();
}

static void seed_check(const char *what, int rc)
{
    if (rc != EB_OK)
        seed_fail(what, rc);
}

static int seed_handler(const eb_event *ev, void *ctx)
{
    _Atomic unsigned *handled = ctx;
    size_t pl;
    const char *p = eb_event_payload(ev, &pl);
    atomic_fetch_add_explicit(handled, 1, memory_order_relaxed); /* a counter, orders nothing */
    return pl > 0 && p[0] == 'F' ? -1 : 0;
}

/* Makes the seed store at seed_path; deterministic apart from timestamps
   and ids (each step waits for its commit, so the page layout repeats). */
static void make_seed(void)
{
    /* The page size can only be set before the first table exists; the
       store then finds an empty SQLite file and creates its schema in it. */
    sqlite3 *db = NULL;
    if (sqlite3_open(seed_path, &db) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA page_size = 512; PRAGMA user_version = 0;", NULL, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(db, "CREATE TABLE t(x); DROP TABLE t; VACUUM;", NULL, NULL, NULL) != SQLITE_OK)
        seed_fail("sqlite3 page size", EB_EIO);
    sqlite3_close(db);

    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_OFF;
    eb_store *s;
    seed_check("eb_store_open", eb_store_open(seed_path, &o, &s));
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 1;
    cfg.store = s;
    eb_bus *bus;
    seed_check("eb_bus_create", eb_bus_create(&cfg, &bus));

    _Atomic unsigned handled = 0;
    eb_subscription *audit, *billing;
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.durable = true;
    so.name = "audit";
    so.max_attempts = 1; /* a failure is dead-lettered at once */
    seed_check("subscribe audit",
               eb_subscribe(bus, "orders.#", seed_handler, &handled, &so, &audit));
    so.name = "billing";
    so.idempotent = true; /* processed ids: the eb_processed table */
    seed_check("subscribe billing",
               eb_subscribe(bus, "orders.*", seed_handler, &handled, &so, &billing));

    /* Durable events: keys, correlation ids, an empty payload, a 255-byte
       key and a payload that spills over several 512-byte pages. */
    static const uint8_t corr[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    char bigkey[255], big[1400];
    memset(bigkey, 'k', sizeof(bigkey));
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)('a' + i % 26);
    struct {
        const char *topic;
        const void *payload;
        size_t len;
        const void *key;
        size_t key_len;
    } evs[] = {
        {"orders.created", "{\"id\":1}", 8, "o-1", 3},
        {"orders.paid", "", 0, NULL, 0},
        {"orders.bad", "F-fails", 7, "o-2", 3}, /* dead-lettered by both */
        {"orders.big.one", big, sizeof(big), bigkey, sizeof(bigkey)},
        {"stock.moved", "s", 1, NULL, 0},
    };
    unsigned expected = 0;
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
        eb_publish_options po;
        eb_publish_options_init(&po);
        po.flags = EB_PUBLISH_DURABLE;
        po.key = evs[i].key;
        po.key_len = evs[i].key_len;
        po.correlation_id = i % 2 ? corr : NULL;
        po.causation_id = i == 0 ? corr : NULL;
        seed_check("durable publish",
                   eb_publish(bus, evs[i].topic, evs[i].payload, evs[i].len, &po));
        /* audit sees orders.#, billing orders.* */
        expected += (strncmp(evs[i].topic, "orders.", 7) == 0) +
                    (strncmp(evs[i].topic, "orders.", 7) == 0 && !strchr(evs[i].topic + 7, '.'));
        for (int w = 0; atomic_load_explicit(&handled, memory_order_relaxed) < expected; w++) {
            if (w > 10000)
                seed_fail("handlers did not run", EB_ETIMEDOUT);
            usleep(1000);
        }
        seed_check("flush", eb_store_flush(s, WAIT_NS));
    }

    /* Scheduled durable events: one far ahead, one due before the fuzzer
       attaches a bus again (it fires then). */
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.flags = EB_PUBLISH_DURABLE;
    po.delay_ns = 3600LL * 1000000000;
    seed_check("scheduled publish", eb_publish(bus, "orders.later", "L", 1, &po));
    po.delay_ns = 20000000;
    po.key = "due";
    po.key_len = 3;
    seed_check("scheduled publish", eb_publish(bus, "orders.due", "D", 1, &po));
    seed_check("flush", eb_store_flush(s, WAIT_NS));
    seed_check("unsubscribe", eb_unsubscribe(audit));
    seed_check("unsubscribe", eb_unsubscribe(billing));
    eb_bus_destroy(bus); /* before orders.due is due: it stays in the file */

    /* Outbox rows in every state: done, failed, in progress, ready. */
    int64_t id;
    for (int i = 0; i < 4; i++) {
        char t[32];
        snprintf(t, sizeof(t), "mail.send.%d", i);
        seed_check("eb_outbox_add", eb_outbox_add(s, t, "body", 4, i ? "r" : NULL, i ? 1 : 0, &id));
    }
    eb_outbox_batch *b;
    seed_check("claim", eb_outbox_claim(s, 1, 1000000000, &b));
    seed_check("ack", eb_outbox_ack(s, b->msgs[0].id));
    eb_outbox_batch_free(b);
    seed_check("claim", eb_outbox_claim(s, 1, 1000000000, &b));
    seed_check("fail", eb_outbox_fail(s, b->msgs[0].id, "smtp down"));
    eb_outbox_batch_free(b);
    seed_check("claim", eb_outbox_claim(s, 1, 3600LL * 1000000000, &b));
    eb_outbox_batch_free(b);

    /* Saga rows: one with queued commands, one completed. */
    eb_saga_store *ss;
    seed_check("eb_saga_sqlite_store_create", eb_saga_sqlite_store_create(s, &ss));
    uint8_t state[SAGA_STATE] = {42};
    eb_saga_record rec = {.state = state,
                          .state_size = sizeof(state),
                          .version = 1,
                          .outbox = "cmds",
                          .outbox_len = 4};
    seed_check("saga create", ss->create(ss, SAGA_NAME, "k1", 2, &rec));
    rec = (eb_saga_record){
        .state = state, .state_size = sizeof(state), .version = 3, .completed = true};
    seed_check("saga create", ss->create(ss, SAGA_NAME, "k2", 2, &rec));
    eb_saga_store_destroy(ss);
    eb_store_close(s);
}

static void cleanup(void)
{
    remove_files(file_path);
    if (getenv("EB_FUZZ_STORE_SEED") == NULL)
        remove_files(seed_path);
    rmdir(dir);
    free(seed);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/eb-fuzz-store.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("fuzz_store: mkdtemp");
        abort();
    }
    snprintf(file_path, sizeof(file_path), "%s/f.db", dir);
    const char *given = getenv("EB_FUZZ_STORE_SEED");
    if (given != NULL)
        snprintf(seed_path, sizeof(seed_path), "%s", given);
    else
        snprintf(seed_path, sizeof(seed_path), "%s/seed.db", dir);
    if (access(seed_path, F_OK) != 0)
        make_seed();
    seed = read_file(seed_path, &seed_n);
    if (seed == NULL || seed_n < 512 || seed_n > 65536) {
        fprintf(stderr, "fuzz_store: the seed %s is missing or not 512 B..64 KB (%zu bytes)\n",
                seed_path, seed_n);
        abort();
    }
    /* The pristine seed must open and read cleanly, or every input tests
       nothing but the refusal path. */
    eb_store_options o;
    eb_store_options_init(&o);
    o.read_only = true;
    eb_store *s;
    seed_check("opening the seed", eb_store_open(seed_path, &o, &s));
    eb_store_stats st;
    seed_check("seed stats", eb_store_stats_get(s, &st));
    eb_store_close(s);
    if (st.events < 5 || st.subscriptions != 2 || st.deadletters < 1 || st.scheduled != 2 ||
        st.sagas != 2 ||
        st.outbox_ready + st.outbox_done + st.outbox_failed + st.outbox_in_progress != 4)
        seed_fail("the seed lacks rows", EB_OK);
    fprintf(stderr, "fuzz_store: seed %s, %zu bytes\n", seed_path, seed_n);
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *file = malloc(seed_n);
    if (file == NULL)
        return 0;
    memcpy(file, seed, seed_n);
    size_t n = seed_n;
    bool no_create = false;
    if (size >= 3) {
        uint8_t flags = data[0];
        no_create = flags & 2;
        size_t cut = (size_t)(data[1] | data[2] << 8) % (seed_n + 1);
        for (size_t i = 3; i + 3 <= size; i += 3) {
            size_t off = (size_t)(data[i] | data[i + 1] << 8) % seed_n;
            file[off] = data[i + 2];
        }
        if (flags & 1)
            n = cut;
    }
    remove_files(file_path);
    write_file(file_path, file, n);
    read_only_session(file, n);

    remove_files(file_path);
    write_file(file_path, file, n);
    read_write_session(file, n, no_create);
    remove_files(file_path);
    free(file);
    return 0;
}
