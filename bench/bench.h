/*
 * bench.h — what the parts of eventbus-bench share.
 *
 * The harness measures eventbus and its peers through two small interfaces:
 *
 *  - a throughput peer (struct tp_peer): producer threads publish events,
 *    the peer's own consumer threads hand every event to every observer.
 *    tp_run() owns the producer threads, the warm-up and timed phases, the
 *    clock and the correctness check; the peer owns its queue and consumers.
 *  - a round-trip peer (struct rt_peer): a requester publishes one event and
 *    returns once it has been handled. rt_run() records each latency.
 *
 * Correctness: every event carries a payload built by bn_fill() from
 * (producer, sequence, topic index) and its checksum is added on the
 * producer side. Observers (bn_observe) count deliveries and add the same
 * checksum of what they received. A run passes only if every observer saw
 * exactly the published count and checksum; otherwise it is FAILED and no
 * number is reported for it.
 *
 * This header is included by the C++ moodycamel peer too, so it keeps C11
 * atomics out of sight: sinks are opaque and the helpers are functions.
 */
#ifndef EB_BENCH_H
#define EB_BENCH_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BN_MAX_OBSERVERS 64
#define BN_MAX_PRODUCERS 16
#define BN_ERR_LEN 256

/* The message shape every peer carries: a 64-byte payload and, where the
   peer routes, this topic. */
#define BN_PAYLOAD 64
#define BN_TOPIC "bench.orders.created"

/* ---- clocks, spinning ------------------------------------------------ */

uint64_t bn_now_ns(void);      /* CLOCK_MONOTONIC */
void bn_sleep_ns(uint64_t ns); /* nanosleep, restarted on EINTR */
/* The round trip of a value between two threads spinning on two cache
   lines, ns (the median of 32 chunks of 256; ~5-20 ms). A shared VM moves
   its vCPUs: this shows how far apart they were for a measurement. */
double bn_xcore_rtt_ns(void);
void bn_cpu_relax(void);
/* A spin loop's pause: cpu_relax for a while, then sched_yield so that an
   oversubscribed machine (2 cores, more threads) still makes progress. */
void bn_backoff(unsigned *spins);

/* ---- payloads and observers ------------------------------------------ */

/* Fills buf (len: a multiple of 8, at least 16) for this event and returns
   its checksum. */
uint64_t bn_fill(void *buf, size_t len, unsigned producer, uint64_t seq, unsigned topic_index);
/* The checksum of a payload: every word up to 256 bytes, beyond that one
   word of every 64-byte line and the last word. */
uint64_t bn_hash(const void *buf, size_t len);
/* The topic index bn_fill stored in a payload. */
unsigned bn_topic_index(const void *buf);

/* An observer's tally: per-thread slots (no shared counter on the hot
   path), read by the measuring thread. */
struct bn_sink;
struct bn_sink *bn_sink_new(void);
void bn_sink_free(struct bn_sink *s);
/* Records one delivery: count + checksum of the payload. Any thread. */
void bn_observe(struct bn_sink *s, const void *payload, size_t len);
/* Marks s as an ordered observer (SERIAL delivery, one consumer): each
   producer's events must reach it in the order sent (bn_fill's sequence),
   or bn_sink_disorder counts them. */
void bn_sink_set_ordered(struct bn_sink *s);
uint64_t bn_sink_disorder(const struct bn_sink *s);
/* Records a delivery that was wrong (e.g. a topic that does not match). */
void bn_sink_bad(struct bn_sink *s);
uint64_t bn_sink_count(const struct bn_sink *s);
uint64_t bn_sink_sum(const struct bn_sink *s);
uint64_t bn_sink_bad_count(const struct bn_sink *s);
/* Starts a new run: threads take fresh slots. Call with no observer active. */
void bn_sink_new_run(void);

/* ---- allocation counting (interposed malloc family, alloc_count.c) ---- */

struct bn_alloc_counts {
    uint64_t malloc_calls, calloc_calls, realloc_calls, memalign_calls, free_calls;
};
void bn_alloc_count_start(void);
void bn_alloc_count_stop(struct bn_alloc_counts *out);

/* ---- fatal -------------------------------------------------------------- */

/* A run that cannot be torn down (a hang): report, write what we have, exit 2. */
void bn_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* A watchdog over one run: if bn_watchdog_stop is not called within
   `seconds`, the run is a hang (a call that never comes back) and
   bn_fatal reports "<scenario>: <what>: hang". */
struct bn_watchdog {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done; /* protected by lock */
    const char *scenario, *what;
    int seconds;
    pthread_t th;
};
void bn_watchdog_start(struct bn_watchdog *w, const char *scenario, const char *what, int seconds);
void bn_watchdog_stop(struct bn_watchdog *w);

/* ---- throughput peers ------------------------------------------------- */

struct tp_cfg {
    unsigned producers;        /* publisher threads */
    unsigned observers;        /* subscribers; each must see every event */
    unsigned workers;          /* consumer threads of peers that take a count (0: their default) */
    int concurrent;            /* observers may run concurrently (CONCURRENT delivery) */
    size_t payload_len;        /* bytes, multiple of 8, >= 16 */
    unsigned batch;            /* batching peers: events per batch */
    const char *const *topics; /* NULL: every event on BN_TOPIC; else cycle */
    unsigned ntopics;          /* through topics[0..ntopics) */
    uint64_t warm_events;      /* per producer, untimed */
    uint64_t events;           /* per producer, timed */
    uint64_t max_ns;           /* 0, or: stop publishing a phase after this long
                                  (a pathologically slow peer ends early; its rate
                                  is still events delivered / time) */
    int count_allocs;          /* count malloc calls during the timed phase */
    int zero_copy;             /* eventbus: publish with payload_free */
    int wait;                  /* eventbus: publish with eb_publish_wait */
    void *setup;               /* peer-specific prepared state (routing scenario) */
};

struct tp_ctx {
    const struct tp_cfg *cfg;
    struct bn_sink *sinks[BN_MAX_OBSERVERS]; /* one per observer */
};

struct tp_peer {
    const char *name;
    /* Builds the queue and starts the consumers. 0 or -1 with err filled. */
    int (*create)(struct tp_ctx *ctx, void **peer, char *err, size_t errlen);
    /* On the producer thread, before the first event. May be NULL. */
    int (*producer_init)(void *peer, unsigned idx, void **pstate);
    /* Where the producer builds its next payload (len bytes). */
    void *(*buffer)(void *peer, void *pstate, size_t len);
    /* Publishes the payload just built in buffer(). 0, or an error (err filled). */
    int (*publish)(void *peer, void *pstate, const char *topic, void *buf, size_t len, char *err,
                   size_t errlen);
    /* End of a phase (batching peers); may be NULL. */
    int (*flush)(void *peer, void *pstate, char *err, size_t errlen);
    /* On the producer thread, after the last event. May be NULL. */
    void (*producer_fini)(void *peer, void *pstate);
    /* Called once every event was observed: stops consumers, frees. */
    void (*destroy)(void *peer);
};

struct tp_out {
    int ok;
    char err[BN_ERR_LEN];
    double seconds;      /* timed phase */
    double events_per_s; /* events published / s */
    double deliveries_per_s;
    struct bn_alloc_counts allocs; /* timed phase, when cfg.count_allocs */
    uint64_t events;               /* timed phase, all producers */
    int cut;                       /* the time limit stopped the producers early */
};

void tp_run(const struct tp_peer *peer, const struct tp_cfg *cfg, struct tp_out *out);

/* ---- round-trip peers ------------------------------------------------- */

struct rt_cfg {
    unsigned requesters;
    uint64_t warm;     /* per requester, untimed */
    uint64_t requests; /* per requester, timed */
    uint64_t max_ns;   /* 0, or: a requester stops after this long */
};

struct rt_ctx {
    const struct rt_cfg *cfg;
    struct bn_sink *sink;
};

struct rt_peer {
    const char *name;
    unsigned max_requesters;
    int (*create)(struct rt_ctx *ctx, void **peer, char *err, size_t errlen);
    int (*requester_init)(void *peer, unsigned idx, void **rstate); /* may be NULL */
    /* Publishes buf and returns once the observer has handled it. */
    int (*request)(void *peer, void *rstate, const void *buf, size_t len, char *err, size_t errlen);
    void (*requester_fini)(void *peer, void *rstate); /* may be NULL */
    void (*destroy)(void *peer);
};

struct rt_out {
    int ok;
    char err[BN_ERR_LEN];
    double p50_ns, p99_ns, p999_ns, mean_ns, max_ns;
    uint64_t samples; /* timed round trips */
    int cut;          /* the time limit stopped a requester early */
};

void rt_run(const struct rt_peer *peer, const struct rt_cfg *cfg, struct rt_out *out);

/* ---- the peers (the optional ones exist when their library was found) - */

extern const struct tp_peer tp_eventbus;
extern const struct tp_peer tp_mutex;
extern const struct tp_peer tp_ck_ring;
#ifdef BN_HAVE_GLIB
extern const struct tp_peer tp_glib_pool;
extern const struct tp_peer tp_glib_queue;
#endif
#ifdef BN_HAVE_ZMQ
extern const struct tp_peer tp_zmq_pushpull;
extern const struct tp_peer tp_zmq_pubsub;
#endif
#ifdef BN_HAVE_MOODYCAMEL
extern const struct tp_peer tp_moodycamel;      /* one event per operation */
extern const struct tp_peer tp_moodycamel_bulk; /* enqueue_bulk / try_dequeue_bulk */
#endif

extern const struct rt_peer rt_eventbus;
extern const struct rt_peer rt_spin;  /* two threads spinning: the floor */
extern const struct rt_peer rt_mutex; /* mutex + condvar both ways */

/* ---- saga workload (saga.c, scenario 9) -------------------------------- */

/* Where the saga keeps its instances. */
enum bn_saga_store {
    BN_SAGA_STORE_MEMORY = 0, /* the saga's private in-memory store */
    BN_SAGA_STORE_SQLITE,     /* eb_saga_sqlite_store_create on a fresh file per
                                 run (default pragmas: synchronous FULL) */
};

/* Database files of the durable scenarios (durable.c): a fresh path in the
   bench's directory under $TMPDIR (else /tmp), created on first use; the
   removal of a database with its -wal/-shm files; the removal of the
   (then empty) directory. bn_db_path_new returns 0, or -1 with err set. */
int bn_db_path_new(char *out, size_t n, const char *what, char *err, size_t errlen);
void bn_db_remove(const char *path);
void bn_db_dir_remove(void);

struct saga_cfg {
    int store;            /* enum bn_saga_store */
    uint32_t warm_orders; /* untimed, placed first */
    uint32_t orders;      /* timed */
    uint32_t window;      /* orders open at once, at most */
    double fail_rate;     /* share of payments declined (compensated) */
    uint64_t max_ns;      /* 0, or: stop placing timed orders after this long */
};

struct saga_out {
    int ok;
    char err[BN_ERR_LEN];
    double seconds;                            /* timed phase */
    uint64_t orders;                           /* timed orders, all final */
    uint64_t transitions;                      /* saga transitions saved in the timed phase */
    uint64_t completed, compensated, rejected; /* timed orders by outcome */
    uint64_t retries;                          /* failed or conflicting deliveries (retried) */
    double transitions_per_s, orders_per_s;
    int cut; /* the time limit stopped placing orders early */
};

/* One run on a fresh bus; see saga.c. */
void saga_run(const struct saga_cfg *cfg, struct saga_out *out);

/* eventbus routing scenario: a bus prepared with non-matching subscriptions
   (tp_cfg.setup). kind: 0 exact patterns, 1 wildcard patterns. */
struct eb_bus;
struct eb_bus *bn_eventbus_routing_bus(unsigned noise, int kind, char *err, size_t errlen);
void bn_eventbus_routing_bus_free(struct eb_bus *bus);
/* Calls of the non-matching subscriptions' handler so far (must stay 0). */
uint64_t bn_eventbus_noise_calls(void);

/* Idle scenario: a bus with one subscription that has handled a burst of
   events and is now idle (blocked: and one handler that runs until stop);
   stop destroys it and checks the deliveries. */
void *bn_eventbus_idle_start(int blocked, char *err, size_t errlen);
int bn_eventbus_idle_stop(void *idle, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* EB_BENCH_H */
