/*
 * eventbus durable store — an SQLite file that holds the event log, durable
 * subscriptions (checkpoints, processed ids), the outbox work queue,
 * scheduled events, dead letters and saga state.
 *
 * Guarantees
 *  - Durability: a publish with EB_PUBLISH_DURABLE returns EB_OK only after
 *    the transaction holding its event committed (synchronous=FULL by
 *    default: the event survives kill -9 and power loss). Durable events are
 *    dispatched after they are committed, in log order, each carrying its
 *    log sequence (eb_event_log_seq).
 *  - Group commit: one writer thread per store appends whatever is queued in
 *    one transaction, so many publishers share one fsync.
 *  - Durable subscriptions (eb_subscribe_options.durable) keep a checkpoint:
 *    every durable event at or below it succeeded or was dead-lettered. A
 *    durable subscription with the same name resumes after its checkpoint
 *    when it subscribes again (also in another process): events after it
 *    are delivered again — at least once, in log order for SERIAL lanes.
 *    With idempotent set, the ids a handler succeeded on are recorded, and
 *    an event whose id is recorded is not delivered to it again. Events
 *    other processes append to the file's log reach it too, in log order:
 *    its store's writer looks for them before each of its transactions and
 *    once a second while idle.
 *  - Outbox: claim, acknowledge, abandon, fail and reap are each one
 *    transaction, so processes sharing the file never hold the same row at
 *    once while its lease holds; rows of a crashed owner are claimable once
 *    their lease expired.
 *  - Files: WAL mode, schema versioned with PRAGMA user_version and marked
 *    with PRAGMA application_id; a new file is created with mode 0600. A
 *    file that is not ours, is corrupt or has a newer schema is refused and
 *    left untouched.
 *
 * Threads: every function is thread-safe. Writes are executed by the
 * store's writer thread (its own SQLite connection); reads use a second
 * connection behind a mutex. Neither connection is used by another thread.
 * Several processes may share one file; each opens its own eb_store.
 *
 * SQLite failures are returned as EB_EIO (EB_ECORRUPT for a damaged file,
 * EB_EBUSY when another connection held the lock past busy_timeout_ms); the
 * raw SQLite code and message are logged and kept for eb_store_last_error.
 */
#ifndef EVENTBUS_STORE_H
#define EVENTBUS_STORE_H

#include <eventbus/eventbus.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The schema version this library writes (PRAGMA user_version). 1: the
   first; 2: saga records keep their start id (eb_saga_record). */
#define EB_STORE_SCHEMA_VERSION 2

typedef enum eb_store_sync {
    EB_STORE_SYNC_FULL = 0, /* fsync at every commit: survives power loss (default) */
    EB_STORE_SYNC_NORMAL,   /* WAL NORMAL: survives a process crash, not power loss */
    EB_STORE_SYNC_OFF       /* no fsync: for tests and benchmarks */
} eb_store_sync;

typedef struct eb_store_options {
    eb_store_sync synchronous;
    unsigned busy_timeout_ms; /* wait for another process's lock; 0: 5000 */
    bool read_only;           /* open an existing file for reading only: no writer
                                 thread; write calls return EB_ENOTSUP. A file
                                 of an older schema is read as it is (the
                                 next writable open migrates it). WAL
                                 mode: SQLite may have to create the file's
                                 -shm beside it, so in a directory the process
                                 cannot write the open can fail (EB_EIO) */
    bool no_create;           /* refuse a missing or empty file (no bytes, or an
                                 SQLite file with nothing in it) with EB_ENOENT,
                                 leaving it as it is */
    unsigned max_pending;     /* durable events and writes queued for the writer
                                 before callers outside handlers wait; 0: 65536 */
    uint32_t max_page_count;  /* > 0: cap the file at this many pages (PRAGMA
                                 max_page_count); writes past it fail with EB_EIO */
    eb_log_fn log;            /* NULL: no logging */
    void *log_ctx;
    eb_log_level log_level; /* default WARN */
    unsigned lazy_share;    /* percent, 1-100; 0: 5. While memory-only events
                               flow through the attached bus, work no caller
                               waits for (EB_PUBLISH_DURABLE_LAZY events,
                               checkpoints, dead letters) takes about this
                               share of the writer's time: it pauses after
                               each such commit (of at most 2048 items) for
                               (100 - share) / share times its length, at
                               most 100 ms, so that the memory path keeps
                               the CPUs. A waiting caller (EB_PUBLISH_DURABLE,
                               eb_store_flush, outbox and saga calls) or a
                               scheduled event falling due ends a pause.
                               100: never pause. Above 100: EB_EINVAL */
} eb_store_options;

/* Fills opts with the defaults. Thread-safe: yes. */
EB_API void eb_store_options_init(eb_store_options *opts);

/*
 * Opens (or creates, mode 0600) the store file at path, migrates an older
 * schema (in one transaction; a library older than the file then refuses
 * it with EB_ENOTSUP), and starts the writer thread (named "eb-store"). On
 * EB_OK *out owns the store.
 * Errors: EB_EINVAL (NULL path or out, an option out of range), EB_ENOENT
 * (missing or empty file with read_only or no_create), EB_ECORRUPT (not an SQLite
 * file, not an eventbus store, or damaged), EB_ENOTSUP (a newer schema
 * version, or the library was built without SQLite), EB_EBUSY (locked by
 * another process past busy_timeout_ms), EB_EIO (cannot open or create,
 * e.g. permissions, a read-only file without read_only, or path is a
 * directory), EB_ENOMEM. On failure the file is left as it was (a file the
 * call created is removed if nothing was written to it). Several processes
 * may open (and create) one file at the same time: the schema is checked
 * and created under SQLite's write lock.
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_store_open(const char *path, const eb_store_options *opts, eb_store **out);

/*
 * Commits everything queued, stops the writer and closes the file. Call
 * after every bus using the store was destroyed and every saga store made
 * on it was destroyed. NULL is a no-op. While a bus still uses the store
 * (e.g. after eb_bus_shutdown returned EB_ETIMEDOUT) it closes nothing and
 * logs an error instead: the store stays valid.
 * Thread-safe: once per store, with no other call on it running.
 */
EB_API void eb_store_close(eb_store *store);

/*
 * Waits until everything queued for the writer before this call (lazy
 * durable publishes, dead letters) is committed, and with it the checkpoint
 * of every event a durable subscription had finished before the call
 * (checkpoints are otherwise written every 20 ms at most).
 * timeout_ns: < 0 forever. Errors: EB_EINVAL, EB_ETIMEDOUT, EB_ENOTSUP
 * (read-only), EB_ENOMEM, EB_EIO (a commit failed since the store was
 * opened).
 * Thread-safe: yes. May be called from a handler: yes.
 */
EB_API int eb_store_flush(eb_store *store, int64_t timeout_ns);

/* The last SQLite error seen by this store: returns its result code (0 if
   none) and copies its message into msg (cap bytes, NUL-terminated; msg
   may be NULL). Thread-safe: yes. */
EB_API int eb_store_last_error(eb_store *store, char *msg, size_t cap);

typedef struct eb_store_stats {
    uint64_t events;    /* events in the log: last_seq - first_seq + 1,
                           read from the two ends of its key, not counted
                           (the library writes the log append-only and
                           without gaps; rows deleted by hand from its
                           middle are not subtracted) */
    uint64_t first_seq; /* lowest log sequence, 0 if the log is empty */
    uint64_t last_seq;  /* highest log sequence, 0 if the log is empty */
    uint64_t subscriptions;
    uint64_t outbox_ready, outbox_in_progress, outbox_done, outbox_failed;
    uint64_t scheduled;   /* durable scheduled events not yet fired */
    uint64_t deadletters; /* rows in the dead-letter table */
    uint64_t sagas;       /* saga instances stored */
    uint64_t file_bytes;  /* page_count * page_size of the main file */
    /* This handle since it was opened: */
    uint64_t commits;      /* transactions the writer committed */
    uint64_t appended;     /* events it appended to the log */
    uint64_t write_errors; /* transactions that failed */
    uint64_t pending;      /* items queued for the writer now */
    uint64_t lazy_pauses;  /* pauses of lazy work for memory traffic (lazy_share) */
} eb_store_stats;

/* Counts rows and reports this handle's counters.
   Errors: EB_EINVAL, EB_EIO. Thread-safe: yes. */
EB_API int eb_store_stats_get(eb_store *store, eb_store_stats *out);

/* ---- the event log ----------------------------------------------------- */

/* One logged event, as read back. Pointers are valid during the callback. */
typedef struct eb_stored_event {
    uint64_t seq; /* log sequence, from 1 */
    uint8_t id[16];
    int64_t timestamp_ns; /* Unix time it was logged */
    const char *topic;
    const void *key; /* NULL if none */
    size_t key_len;
    const void *payload; /* never NULL */
    size_t payload_len;
    bool has_correlation, has_causation;
    uint8_t correlation_id[16], causation_id[16];
} eb_stored_event;

/* Return 0 to go on, anything else to stop (eb_store_events returns it). */
typedef int (*eb_stored_event_fn)(const eb_stored_event *ev, void *ctx);

typedef struct eb_store_query {
    uint64_t after_seq; /* events with seq > after_seq */
    const char *topic;  /* NULL: every topic; else an AMQP pattern */
    int64_t since_ns;   /* timestamp >= since_ns (0: no bound) */
    int64_t until_ns;   /* timestamp < until_ns (0: no bound) */
    size_t limit;       /* at most this many (0: no limit) */
} eb_store_query;

/*
 * Calls fn for each logged event matching q (NULL: all), in log order.
 * Returns EB_OK, fn's non-zero value, or EB_EINVAL (NULL store or fn, bad
 * pattern), EB_EIO. Thread-safe: yes; fn must not call into this store.
 */
EB_API int eb_store_events(eb_store *store, const eb_store_query *q, eb_stored_event_fn fn,
                           void *ctx);

/* ---- durable subscriptions --------------------------------------------- */

typedef struct eb_store_subscription_info {
    const char *name;
    const char *pattern;
    uint64_t checkpoint; /* every matching event at or below it is done */
    uint64_t lag;        /* logged events after the checkpoint (any topic) */
    int64_t updated_ns;  /* Unix time the checkpoint last moved */
} eb_store_subscription_info;

/* Calls fn for each durable subscription known to the file, by name; a
   non-zero return stops, and is returned. info and its strings are valid
   during the call only. Errors: EB_EINVAL, EB_EIO. Thread-safe: yes; fn
   must not call into this store. */
EB_API int eb_store_subscriptions(eb_store *store,
                                  int (*fn)(const eb_store_subscription_info *info, void *ctx),
                                  void *ctx);

/* ---- outbox: a work queue shared by processes ---------------------------- */

typedef enum eb_outbox_status {
    EB_OUTBOX_READY = 0,   /* waiting to be claimed (at next_attempt_ns) */
    EB_OUTBOX_IN_PROGRESS, /* claimed; held until lease_until_ns */
    EB_OUTBOX_DONE,        /* acknowledged */
    EB_OUTBOX_FAILED       /* given up (eb_outbox_fail) */
} eb_outbox_status;

typedef struct eb_outbox_message {
    int64_t id;
    const char *topic;
    const void *key; /* NULL if none */
    size_t key_len;
    const void *payload;
    size_t payload_len;
    eb_outbox_status status;
    unsigned attempts;       /* claims so far, this one included */
    int64_t created_ns;      /* Unix times */
    int64_t next_attempt_ns; /* READY: not claimable before (a new row: its
                                creation time) */
    int64_t lease_until_ns;  /* IN_PROGRESS: the lease ends */
    const char *last_error;  /* "" if none */
} eb_outbox_message;

/* Claimed rows; freed with eb_outbox_batch_free. */
typedef struct eb_outbox_batch {
    size_t n;
    eb_outbox_message *msgs;
} eb_outbox_batch;

/*
 * Adds a READY row (topic, payload and key copied); *id (may be NULL) gets
 * its id. Returns after the row committed.
 * Errors: EB_EINVAL (NULL store or topic, topic too long, payload NULL with
 * len > 0, key NULL with key_len > 0 or longer than 255), EB_ENOTSUP
 * (read-only), EB_EIO, EB_EBUSY, EB_ENOMEM. Thread-safe: yes. From a
 * handler: yes (it waits for a commit).
 */
EB_API int eb_outbox_add(eb_store *store, const char *topic, const void *payload, size_t len,
                         const void *key, size_t key_len, int64_t *id);

/*
 * Claims up to max READY rows that are due (and IN_PROGRESS rows whose lease
 * expired: their owner is presumed dead), for lease_ns, those claimable the
 * longest first (a new row from its creation, an abandoned one from its
 * retry time, an expired one from the end of its lease): they
 * become IN_PROGRESS, owned by this store handle, attempts + 1. On EB_OK
 * *out holds the claimed rows (n may be 0); free it with
 * eb_outbox_batch_free. Errors: EB_EINVAL (NULL argument, max 0 or above
 * 512, lease_ns <= 0), EB_ENOTSUP, EB_EIO, EB_EBUSY, EB_ENOMEM.
 * Thread-safe: yes.
 */
EB_API int eb_outbox_claim(eb_store *store, size_t max, int64_t lease_ns, eb_outbox_batch **out);

/* Frees a claimed batch; NULL is a no-op. Thread-safe: yes (each batch
   once). */
EB_API void eb_outbox_batch_free(eb_outbox_batch *batch);

/*
 * Marks a claimed row DONE. Errors: EB_ECONFLICT (this handle does not hold
 * the row: not claimed by it, not in progress any more, or taken over by
 * another handle after its lease expired; a row whose lease expired but
 * that nobody took over is still this handle's), EB_ENOENT (no such row),
 * EB_EINVAL, EB_ENOTSUP, EB_EIO.
 * Thread-safe: yes.
 */
EB_API int eb_outbox_ack(eb_store *store, int64_t id);

/*
 * Gives a claimed row back: READY again, claimable after retry_after_ns (<
 * 0: an exponential backoff from 100 ms by attempts, capped at 60 s), with
 * error (may be NULL) as last_error. Errors: as eb_outbox_ack.
 * Thread-safe: yes.
 */
EB_API int eb_outbox_abandon(eb_store *store, int64_t id, const char *error,
                             int64_t retry_after_ns);

/* Marks a claimed row FAILED for good, with error (may be NULL).
   Errors: as eb_outbox_ack. Thread-safe: yes. */
EB_API int eb_outbox_fail(eb_store *store, int64_t id, const char *error);

/*
 * Puts IN_PROGRESS rows whose lease expired back to READY (claim takes them
 * anyway; reaping makes them visible as READY). A reaped row is still its
 * holder's (eb_outbox_ack, _abandon and _fail work) until a claim takes it
 * over. *reaped (may be NULL) gets
 * how many. Errors: EB_EINVAL, EB_ENOTSUP, EB_EIO. Thread-safe: yes.
 */
EB_API int eb_outbox_reap(eb_store *store, size_t *reaped);

/*
 * Calls fn for rows with the given status (< 0: every row), by id, at most
 * limit (0: all); a non-zero return stops, and is returned. msg and what it
 * points to are valid during the call only. Errors: EB_EINVAL, EB_EIO.
 * Thread-safe: yes; fn must not call into this store.
 */
EB_API int eb_outbox_list(eb_store *store, int status, size_t limit,
                          int (*fn)(const eb_outbox_message *msg, void *ctx), void *ctx);

/* ---- dead letters -------------------------------------------------------- */

/* A dead-lettered delivery as stored. Pointers valid during the callback. */
typedef struct eb_store_deadletter {
    int64_t id;
    uint64_t seq; /* the event's log sequence; 0 if it was not durable */
    uint8_t event_id[16];
    const char *subscription;
    const char *topic;
    const void *key; /* NULL if none */
    size_t key_len;
    const void *payload;
    size_t payload_len;
    int error; /* the handler's last return value */
    unsigned attempts;
    int64_t failed_ns; /* Unix time */
} eb_store_deadletter;

/*
 * Lists stored dead letters by id, at most limit (0: all); a non-zero
 * return from fn stops, and is returned. Errors: EB_EINVAL, EB_EIO. Thread-safe: yes; fn
 * must not call into this store.
 */
EB_API int eb_store_deadletters(eb_store *store, size_t limit,
                                int (*fn)(const eb_store_deadletter *dl, void *ctx), void *ctx);

/*
 * Requeues dead letter id (0: all of them): removes it and schedules its
 * event (topic, key, payload) to be published again at once as a new
 * durable event, by whichever process has a bus attached to the file (this
 * one or the next to attach). *count (may be NULL) gets how many. New:
 * a new id and log sequence, delivered to every subscription it matches
 * then, not only to the one that dead-lettered it (an idempotent one sees
 * a new id too): handlers that must not run twice should not rely on
 * requeue reaching only the failed subscription.
 * Errors: EB_ENOENT (no such id), EB_EINVAL, EB_ENOTSUP, EB_EIO.
 * Thread-safe: yes.
 */
EB_API int eb_store_deadletter_requeue(eb_store *store, int64_t id, size_t *count);

/* Deletes dead letter id (0: all). Errors: as eb_store_deadletter_requeue.
   Thread-safe: yes. */
EB_API int eb_store_deadletter_purge(eb_store *store, int64_t id, size_t *count);

/* ---- sagas --------------------------------------------------------------- */

/*
 * A saga store (see eb_saga_store in eventbus.h) backed by this file: saga
 * state and the commands of each transition are saved in one transaction
 * (the row's outbox, cleared once they were published), and commands a
 * crash left unsent are listed to eb_saga_register, which sends them before
 * the saga subscribes (eb_saga_store.pending). Shareable by several
 * sagas. On EB_OK *out owns it; free it with eb_saga_store_destroy before
 * eb_store_close. Errors: EB_EINVAL, EB_ENOTSUP (read-only), EB_ENOMEM.
 * Thread-safe: yes.
 */
EB_API int eb_saga_sqlite_store_create(eb_store *store, eb_saga_store **out);

typedef struct eb_store_saga_info {
    const char *saga;
    const void *key;
    size_t key_len;
    uint64_t version;
    bool completed;
    size_t state_size;
    bool commands_pending; /* its last transition's commands are not yet sent */
    int64_t updated_ns;
} eb_store_saga_info;

/* Calls fn for each stored saga instance (saga NULL: of every saga), at
   most limit (0: all); a non-zero return stops, and is returned. info and
   what it points to are valid during the call only. Errors: EB_EINVAL,
   EB_EIO. Thread-safe: yes; fn must not call into this store. */
EB_API int eb_store_sagas(eb_store *store, const char *saga, size_t limit,
                          int (*fn)(const eb_store_saga_info *info, void *ctx), void *ctx);

#ifdef __cplusplus
}
#endif

#endif /* EVENTBUS_STORE_H */
