/*
 * soak — runs the bus under a mixed, failing, churning load for a given time
 * and checks at the end that nothing was lost, duplicated or reordered, and
 * that memory stayed flat. A standalone program (no Criterion): ctest runs a
 * short version (soak_short, tests/stress/soak.cmake); docs/SOAK.md records
 * a 10-minute run.
 *
 *   soak --duration SECONDS [--seed N] [--publishers 4] [--subs 32]
 *        [--workers N] [--progress SECONDS] [--rss-slack-mib N] [--verbose]
 *
 * Load
 *  - P publisher threads (default 4) publish "main" events as fast as the
 *    bus takes them, mixing eb_publish, zero-copy eb_publish (payload_free),
 *    eb_publish_batch, eb_publish_wait and eb_publish_async + eb_ticket_wait.
 *    Every main event is (publisher p, sequence pseq): its topic
 *    soak.p<p>.t<pseq%8>[.x], its key, payload length and bytes are pure
 *    functions of (p, pseq), so any handler can rebuild and verify them. A
 *    refused publish reuses its pseq, so publisher p's accepted events are
 *    exactly pseq 0..accepted-1.
 *  - S stable subscriptions (default 32) live for the whole run: SERIAL,
 *    KEYED and CONCURRENT, exact and wildcard patterns, max_attempts 1..5,
 *    some with small mailboxes (backpressure). Nine of them "nest": on
 *    1/16 of their successful deliveries they publish a nested event
 *    (nest.n<a>[.deep]) by eb_publish, eb_publish_wait, eb_publish_async +
 *    eb_ticket_wait or eb_publish_batch, waiting from inside the handler.
 *    Nested events go only to subscriptions that never wait (the nesting
 *    patterns are checked at start not to match nest.*), so the waits form
 *    no cycle; a wait the bus refuses with EB_EDEADLK by design (the
 *    dispatcher is stalled on a full mailbox of a lane the waiter is
 *    running) is counted, not failed.
 *  - Failures: whether a handler fails is a pure function of (seed, event,
 *    subscription, attempt). ~0.4% of (event, subscription) pairs fail every
 *    attempt and must be dead-lettered after max_attempts; ~3% fail 1..max-1
 *    times and then succeed; the rest succeed at once. Dead letters are
 *    counted through the bus's on_deadletter callback (the final outcome of
 *    that pair) and a "$deadletter.#" subscriber (their events).
 *  - Churn: up to 8 short-lived subscriptions (random pattern and delivery
 *    kind) are subscribed and unsubscribed at random by a churn thread and,
 *    now and then, from inside nesting handlers. Handlers only subscribe
 *    unless --unsubscribe-from-handlers is given: an eb_unsubscribe from a
 *    handler whose own full mailbox stalls dispatch hangs (see docs/SOAK.md,
 *    "Findings"); turn it on once that is fixed.
 *
 * Checks (any violation fails the run; the first ones are printed at once)
 *  - Exactly once: every (accepted main event, stable subscription whose
 *    pattern matches it) pair ends exactly once — a success on the predicted
 *    attempt, or a dead letter after max_attempts when every attempt was
 *    predicted to fail. Tracked per (subscription, publisher) in a sliding
 *    window over pseq (2^18 events wide, 2 bits per event) that a monitor
 *    retires from below: memory does not grow with the duration. The
 *    per-subscription success and dead-letter counts, compared with the
 *    failure plan over every retired event, back the window up. Nested events are checked per
 *    subscription with counts and two 64-bit hash sums of their ids
 *    (expected sums are added when a handler's nested publish is accepted).
 *  - Order: SERIAL — no two calls at once, eb_event_seq never goes back,
 *    per-publisher pseq never goes back, and a repeated event is exactly the
 *    next attempt of the previous call; KEYED — the same per key (no two
 *    calls of one key at once). Attempt numbers are checked against the
 *    failure plan. Routing: a handler only sees topics its pattern matches
 *    (an independent AMQP matcher here), never a '$' topic through '#'.
 *  - Payloads, keys, topics and causation ids are rebuilt and compared.
 *  - Waited publishes (publishers and handlers): matched >= the stable
 *    subscriptions that match, at most 8 more (churn), delivered + failed =
 *    matched, delivered/failed at least the predicted successes/dead
 *    letters, first_error consistent.
 *  - Churn subscriptions: no duplicate, no call once eb_unsubscribe
 *    returned (nor one still running then), no event that was dispatched
 *    before eb_subscribe was called (pseq older than the intake can hold),
 *    SERIAL/KEYED order, pattern respected. Completeness is not checkable
 *    for them (unsubscribe cancels queued deliveries).
 *  - At the end, after a bounded quiescence wait: no loss; per-subscription
 *    successes, dead letters and retries equal the failure plan's and the
 *    bus's eb_subscription_stats; bus stats (eb_bus_stats_get) consistent:
 *    published = accepted publishes, dispatched = published + dead letters,
 *    delivered = handler calls that returned 0, retried and failed as
 *    predicted, failed = dead_lettered, nothing dropped or unrouted, lag 0;
 *    zero-copy payloads freed exactly once after eb_bus_destroy.
 *  - RSS (from /proc/self/statm, sampled once a second) stays flat: warm-up
 *    is the first quarter of the run (at least 3 s, at most 60 s); the
 *    largest sample after warm-up must not exceed the sample at the end of
 *    warm-up by more than --rss-slack-mib (default 8 MiB; a run uses
 *    ~16 MiB in all, and the bus's own memory is bounded by its capacities,
 *    so growth past that is a queue or cache growing without bound). The checker's
 *    own memory is allocated and touched before the run. Enforced in
 *    uninstrumented builds only (ASan's quarantine and TSan's shadow grow by
 *    design); reported always.
 *
 * Every wait is bounded (30 s, times EB_TEST_WAIT_SCALE): a wait that runs
 * out is reported as a hang, and a watchdog ends the program (exit 3, with
 * the stage it was in) if the run overstays its duration by two budgets
 * plus a minute. Progress goes to stderr every --progress
 * seconds; the summary goes to stdout; the exit status is 0 only on PASS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <eventbus/eventbus.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SOAK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SOAK_SANITIZED 1
#endif
#endif
#ifndef SOAK_SANITIZED
#define SOAK_SANITIZED 0
#endif

#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL

enum {
    MAX_PUBS = 16,
    MAX_SUBS = 64,
    N_DEFS = 32,
    CHURN_SLOTS = 8,
    CHURN_RECS = 32,
    CHURN_PATTERNS = 8,
    MAIN_KEYS = 32,
    KEY_NONE = 32,
    KEY_NEST0 = 33,
    NEST_KEYS = 8,
    KEY_SLOTS = KEY_NEST0 + NEST_KEYS,
    MAIN_VARIANTS = 16,
    NEST_VARIANTS = 8,
    TICKETS = 16,
    BATCH_MAX = 16,
    PAD_MAX = 192,
    MSG_MAX = 64 + PAD_MAX,
    TOPIC_LEN = 48,
    SOAK_EFAIL = -77, /* what a failing handler returns */
    MAX_RSS_SAMPLES = 4096,
};

#define WIN_LOG 18 /* stable windows: 2^18 events per (subscription, publisher) */
#define WIN ((uint64_t)1 << WIN_LOG)
#define CWIN_LOG 17 /* churn windows */
#define CWIN ((uint64_t)1 << CWIN_LOG)
#define MSG_MAGIC 0x536f616bu /* "Soak" */
#define EID_MAIN ((uint64_t)1 << 62)
#define NID_PAIR ((uint64_t)1 << 63)

/* ---- small helpers ------------------------------------------------------ */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / NS_PER_S), (long)(ns % NS_PER_S)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rng_next(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ull;
    return mix64(*s);
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &res) != 2)
        res = 0;
    fclose(f);
    return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Faults every page in, so the checker's own memory is resident from the
   start and does not show up as growth later. */
static void *alloc_touched(size_t n)
{
    unsigned char *p = calloc(1, n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "soak: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    volatile unsigned char *v = p;
    for (size_t i = 0; i < n; i += 4096)
        v[i] = 0;
    return p;
}

/* ---- AMQP topic matching (independent of the bus's router) -------------- */

static int split_words(const char *s, char words[][32], int max)
{
    int n = 0;
    if (s[0] == '\0')
        return 0; /* the empty topic has zero words */
    const char *p = s;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (n == max || len >= 32)
            return -1;
        memcpy(words[n], p, len);
        words[n][len] = '\0';
        n++;
        if (dot == NULL)
            return n;
        p = dot + 1;
    }
}

static bool match_words(char pw[][32], int np, char tw[][32], int nt)
{
    if (np == 0)
        return nt == 0;
    if (strcmp(pw[0], "#") == 0) {
        for (int i = 0; i <= nt; i++)
            if (match_words(pw + 1, np - 1, tw + i, nt - i))
                return true;
        return false;
    }
    if (nt == 0)
        return false;
    if (strcmp(pw[0], "*") == 0 || strcmp(pw[0], tw[0]) == 0)
        return match_words(pw + 1, np - 1, tw + 1, nt - 1);
    return false;
}

static bool topic_matches(const char *pattern, const char *topic)
{
    char pw[16][32], tw[16][32];
    int np = split_words(pattern, pw, 16), nt = split_words(topic, tw, 16);
    if (np < 0 || nt < 0)
        return false;
    /* Reserved topics ($...) only match a pattern that spells out their
       first word. */
    if (nt > 0 && tw[0][0] == '$' && (np == 0 || strcmp(pw[0], tw[0]) != 0))
        return false;
    return match_words(pw, np, tw, nt);
}

/* ---- configuration tables ---------------------------------------------- */

typedef struct sub_def {
    const char *pattern;
    eb_delivery mode;
    unsigned lanes;
    unsigned attempts;
    bool nests; /* publishes nested events (and waits) from its handler */
    unsigned mailbox;
} sub_def;

#define S_ EB_DELIVERY_SERIAL
#define K_ EB_DELIVERY_KEYED
#define C_ EB_DELIVERY_CONCURRENT
/* pattern, delivery, lanes (0: the default), max_attempts, nests, mailbox
   (0: the bus default of 255). s00 "#" matches every main and nested
   topic, so nothing is unrouted; nesting patterns never match nest.*. */
/* clang-format off */
static const sub_def g_defs[N_DEFS] = {
    {"#",             S_, 0,  3, false,  0}, /* s00 */
    {"soak.#",        K_, 16, 4, true,   0}, /* s01 */
    {"soak.*.*",      C_, 0,  3, true,  15}, /* s02 */
    {"soak.p0.#",     S_, 0,  2, true,   0}, /* s03 */
    {"*.p1.*",        K_, 4,  5, false, 15}, /* s04 */
    {"soak.p2.t3",    C_, 4,  3, false,  0}, /* s05 */
    {"soak.p3.t0",    S_, 0,  1, false,  0}, /* s06 */
    {"#.x",           K_, 8,  3, false,  0}, /* s07 */
    {"soak.*.t5.#",   C_, 0,  4, true,   0}, /* s08 */
    {"nest.#",        S_, 0,  3, false, 15}, /* s09 */
    {"nest.*",        K_, 16, 2, false,  0}, /* s10 */
    {"nest.n1.deep",  C_, 2,  3, false,  0}, /* s11 */
    {"*.*.*.x",       S_, 0,  3, true,   0}, /* s12 */
    {"soak.p1.t7.x",  K_, 1,  3, false,  0}, /* s13 */
    {"#.t2",          C_, 0,  2, false,  0}, /* s14 */
    {"soak.#.x",      S_, 0,  4, false,  0}, /* s15 */
    {"#",             K_, 32, 3, false,  0}, /* s16 */
    {"soak.*.t4",     C_, 8,  1, false,  0}, /* s17 */
    {"soak.p1.#",     S_, 0,  3, true,  15}, /* s18 */
    {"*.*.t6",        K_, 16, 3, true,   0}, /* s19 */
    {"#",             C_, 0,  5, false,  0}, /* s20 */
    {"soak.p2.*.x",   S_, 0,  3, false,  0}, /* s21 */
    {"#.p3.#",        K_, 16, 3, true,   0}, /* s22 */
    {"*.#",           C_, 64, 3, false,  0}, /* s23 */
    {"soak.*.t1.*",   S_, 0,  2, false,  0}, /* s24 */
    {"nest.*.deep",   K_, 4,  3, false, 15}, /* s25 */
    {"soak.p0.t0",    C_, 0,  3, false,  0}, /* s26 */
    {"soak.#.t3.#",   S_, 0,  3, false,  0}, /* s27 */
    {"nest.n2",       K_, 16, 4, false,  0}, /* s28 */
    {"soak.*.*.#",    C_, 16, 3, true,   0}, /* s29 */
    {"*.p2.#",        S_, 0,  3, false,  0}, /* s30 */
    {"soak.p3.*",     K_, 2,  3, false,  0}, /* s31 */
};
/* clang-format on */

static const char *const g_churn_patterns[CHURN_PATTERNS] = {
    "#", "soak.#", "soak.p0.*", "*.p1.#", "soak.*.t3", "nest.#", "soak.p2.t5.x", "#.x"};

/* ---- state --------------------------------------------------------------- */

enum vkind {
    V_CORRUPT,
    V_MISROUTE,
    V_ORDER,
    V_OVERLAP,
    V_ATTEMPT,
    V_DUP,
    V_LOSS,
    V_WINDOW,
    V_LATE,
    V_EARLY,
    V_RESULT,
    V_PUBLISH,
    V_HANG,
    V_DEADLETTER,
    V_CAUSE,
    V_UNSUB,
    V_COUNTS,
    V_STATS,
    V_LOG,
    V_RSS,
    V_N
};
static const char *const g_vname[V_N] = {"corrupt payload/topic/key",
                                         "misrouted delivery",
                                         "order violation",
                                         "concurrent calls",
                                         "wrong attempt number",
                                         "duplicate",
                                         "loss",
                                         "tracking window overflow",
                                         "call after unsubscribe",
                                         "delivered before subscribe",
                                         "publish result mismatch",
                                         "publish failed",
                                         "wait ran out (hang)",
                                         "dead letter mismatch",
                                         "causation id mismatch",
                                         "unsubscribe failed",
                                         "count mismatch",
                                         "bus stats mismatch",
                                         "bus logged an error",
                                         "RSS grew"};

/*
 * A sliding window over pseq: 2 bits per event, (marked, parity of
 * pseq >> WIN_LOG). Handlers mark events in [base, base + WIN); the monitor
 * clears the slots it retires and only then publishes the new base, so a
 * slot holds nothing older when the event one window later may be marked.
 * The parity keeps a duplicate that lands between a retirement's clear and
 * its base store from passing for that later event.
 */
typedef struct win {
    atomic_uint_fast64_t base;   /* lowest pseq not retired; written by the monitor */
    atomic_uint_fast64_t *slots; /* WIN / 32 words of 32 slots */
} win;

struct soak;

typedef struct ssub {
    struct soak *k;
    unsigned idx;
    sub_def def;
    char name[16];
    eb_subscription *sub;
    /* order checks: (seq or pseq) << 10 | attempt of the previous call */
    atomic_uint in_flight;
    atomic_uint_fast64_t last_seq;
    atomic_uint_fast64_t last_pseq[MAX_PUBS];
    atomic_uint key_in_flight[KEY_SLOTS];
    atomic_uint_fast64_t key_last_seq[KEY_SLOTS];
    atomic_uint_fast64_t *key_last_pseq; /* [KEY_SLOTS][npub] */
    win win[MAX_PUBS];
    /* outcomes seen by handlers and the dead-letter callback */
    atomic_uint_fast64_t calls, ok_calls, fail_calls;
    atomic_uint_fast64_t ok_main, dl_main;
    atomic_uint_fast64_t n_cnt, n_sum_a, n_sum_b, n_dl;
    /* expected, from the failure plan: nested ones added by the publishing
       handler once its publish was accepted; main ones by the monitor when
       it retires an event (monitor only, plain) */
    atomic_uint_fast64_t x_n_cnt, x_n_sum_a, x_n_sum_b, x_n_dl, x_n_retries;
    uint64_t x_main_ok, x_main_dl, x_main_retries;
} ssub;

typedef struct churn_rec {
    struct soak *k;
    atomic_int inuse;
    atomic_int phase; /* 0 subscribing, 1 live, 2 unsubscribe returned */
    unsigned pattern;
    eb_delivery mode;
    uint64_t base[MAX_PUBS];
    atomic_uint_fast64_t *bits; /* [npub][CWIN/64] */
    atomic_uint in_flight;
    atomic_uint_fast64_t last_seq;
    atomic_uint_fast64_t last_pseq[MAX_PUBS];
    atomic_uint key_in_flight[KEY_SLOTS];
    atomic_uint_fast64_t key_last_seq[KEY_SLOTS];
    atomic_uint_fast64_t calls, main_calls, untracked;
} churn_rec;

typedef struct churn_slot {
    atomic_int state; /* CS_* */
    eb_subscription *sub;
    churn_rec *rec;
} churn_slot;
enum { CS_FREE = 0, CS_BUSY, CS_LIVE };

typedef struct pub {
    struct soak *k;
    unsigned idx;
    pthread_t th;
    atomic_uint_fast64_t accepted; /* pseq 0..accepted-1 were accepted */
} pub;

typedef struct soak {
    /* options */
    double duration_s;
    uint64_t seed;
    unsigned npub, nsubs, workers, progress_s;
    double rss_slack_mib;
    bool verbose;
    bool handler_unsub; /* --unsubscribe-from-handlers */
    int64_t budget_ns;
    /* derived tables */
    uint64_t main_mask[MAX_PUBS][MAIN_VARIANTS]; /* stable subs matching */
    uint64_t nest_mask[NEST_VARIANTS];
    uint8_t churn_main[CHURN_PATTERNS][MAX_PUBS][MAIN_VARIANTS];
    uint8_t churn_nest[CHURN_PATTERNS][NEST_VARIANTS];

    eb_bus *bus;
    eb_subscription *dl_sub;
    ssub subs[MAX_SUBS];
    pub pubs[MAX_PUBS];
    churn_slot slots[CHURN_SLOTS];
    churn_rec recs[CHURN_RECS];
    atomic_uint rec_next;
    atomic_int stop;             /* publishers and churner stop */
    _Atomic(const char *) stage; /* what the main thread is doing (watchdog) */
    atomic_int done;
    _Atomic(eb_bus *) wd_bus; /* the bus, for the watchdog's last words */
    atomic_int churn_on;      /* new churn subscriptions allowed */
    uint64_t churn_margin;

    /* violations */
    atomic_uint_fast64_t v[V_N];
    atomic_uint printed;

    /* counters */
    atomic_uint_fast64_t ok_calls; /* every handler call that returned 0 */
    atomic_uint_fast64_t fail_calls;
    atomic_uint_fast64_t dl_callbacks, dl_events;
    atomic_uint_fast64_t pub_single, pub_zc, pub_batch_calls, pub_batch_events, pub_wait, pub_async;
    atomic_uint_fast64_t zc_accepted;
    atomic_uint_fast64_t nested_pub, nested_fire, nested_wait, nested_async, nested_batch;
    atomic_uint_fast64_t handler_waits, edeadlk;
    atomic_uint_fast64_t results_checked;
    atomic_uint_fast64_t churn_subs, churn_unsubs, churn_from_handlers, churn_calls,
        churn_main_calls, churn_untracked;
    atomic_uint_fast64_t log_errors;
    uint64_t retired_main; /* monitor only */

    /* RSS */
    uint64_t rss[MAX_RSS_SAMPLES];
    double rss_t[MAX_RSS_SAMPLES];
    unsigned n_rss;
} soak;

static atomic_uint_fast64_t g_zc_freed; /* payload_free has no context */

static void violation(soak *k, enum vkind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void violation(soak *k, enum vkind kind, const char *fmt, ...)
{
    atomic_fetch_add_explicit(&k->v[kind], 1, memory_order_relaxed);
    unsigned n = atomic_fetch_add_explicit(&k->printed, 1, memory_order_relaxed);
    if (n < (k->verbose ? 500u : 20u)) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fprintf(stderr, "soak: VIOLATION (%s): %s\n", g_vname[kind], msg);
    }
}

static void count(atomic_uint_fast64_t *c, uint64_t n)
{
    /* Relaxed: plain statistics, read after the threads were joined or the
       bus quiesced. */
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint64_t get(atomic_uint_fast64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ---- events -------------------------------------------------------------- */

typedef struct msg_hdr {
    uint32_t magic;
    uint16_t kind; /* 1 main, 2 nested */
    uint16_t pub;
    uint64_t id; /* main: pseq; nested: nid */
    uint32_t pad_len;
    uint32_t check;
    uint8_t cause[16]; /* nested: the id of the event whose handler published it */
} msg_hdr;
enum { KIND_MAIN = 1, KIND_NESTED = 2 };

typedef struct msg {
    unsigned kind, pub;
    uint64_t id;  /* pseq or nid */
    uint64_t eid; /* the failure plan's key */
    unsigned variant, key_slot;
    uint8_t cause[16];
} msg;

static unsigned main_variant(uint64_t pseq)
{
    return (unsigned)(pseq % 8) * 2 + (pseq % 5 == 0);
}

static unsigned nest_variant(uint64_t nid)
{
    return (unsigned)(mix64(nid ^ 0x6e657374ull) % NEST_VARIANTS);
}

static void main_topic(unsigned p, uint64_t pseq, char *out)
{
    snprintf(out, TOPIC_LEN, "soak.p%u.t%u%s", p, (unsigned)(pseq % 8), pseq % 5 == 0 ? ".x" : "");
}

static void nest_topic(uint64_t nid, char *out)
{
    unsigned v = nest_variant(nid);
    snprintf(out, TOPIC_LEN, "nest.n%u%s", v & 3, v >= 4 ? ".deep" : "");
}

static unsigned main_key_slot(unsigned p, uint64_t pseq)
{
    return (unsigned)((pseq * 7 + p * 3) % (MAIN_KEYS + 1)); /* MAIN_KEYS = no key */
}

static unsigned nest_key_slot(uint64_t nid)
{
    unsigned r = (unsigned)((mix64(nid ^ 0x6b6579ull) >> 8) % (NEST_KEYS + 1));
    return r == NEST_KEYS ? KEY_NONE : KEY_NEST0 + r;
}

/* Key text of a slot; returns its length (0: no key). */
static size_t key_text(unsigned slot, char *out)
{
    if (slot == KEY_NONE)
        return 0;
    if (slot < MAIN_KEYS)
        return (size_t)snprintf(out, 8, "k%u", slot);
    return (size_t)snprintf(out, 8, "n%u", slot - KEY_NEST0);
}

static uint32_t hdr_check(const msg_hdr *h)
{
    return (uint32_t)mix64(h->id ^ ((uint64_t)h->kind << 48) ^ ((uint64_t)h->pub << 32) ^
                           h->pad_len ^ MSG_MAGIC);
}

static size_t msg_build(unsigned kind, unsigned p, uint64_t id, const uint8_t cause[16],
                        unsigned char *buf)
{
    msg_hdr h;
    memset(&h, 0, sizeof h);
    h.magic = MSG_MAGIC;
    h.kind = (uint16_t)kind;
    h.pub = (uint16_t)p;
    h.id = id;
    h.pad_len = (uint32_t)(mix64(id * 31 + kind) % (PAD_MAX + 1));
    h.check = hdr_check(&h);
    if (cause != NULL)
        memcpy(h.cause, cause, 16);
    memcpy(buf, &h, sizeof h);
    for (uint32_t i = 0; i < h.pad_len; i++)
        buf[sizeof h + i] = (unsigned char)(id * 131 + i * 7 + kind);
    return sizeof h + h.pad_len;
}

/* Parses and verifies an event against what its (kind, pub, id) implies. */
static bool msg_parse(soak *k, const eb_event *ev, msg *m, const char *who)
{
    size_t len = 0;
    const unsigned char *p = eb_event_payload(ev, &len);
    msg_hdr h;
    const char *topic = eb_event_topic(ev);
    if (len < sizeof h) {
        violation(k, V_CORRUPT, "%s: %s: payload of %zu bytes", who, topic, len);
        return false;
    }
    memcpy(&h, p, sizeof h);
    if (h.magic != MSG_MAGIC || h.check != hdr_check(&h) || len != sizeof h + h.pad_len ||
        (h.kind != KIND_MAIN && h.kind != KIND_NESTED) ||
        (h.kind == KIND_MAIN && h.pub >= k->npub)) {
        violation(k, V_CORRUPT, "%s: %s: bad header", who, topic);
        return false;
    }
    for (uint32_t i = 0; i < h.pad_len; i++) {
        if (p[sizeof h + i] != (unsigned char)(h.id * 131 + i * 7 + h.kind)) {
            violation(k, V_CORRUPT, "%s: %s: payload byte %u differs", who, topic, i);
            return false;
        }
    }
    m->kind = h.kind;
    m->pub = h.pub;
    m->id = h.id;
    memcpy(m->cause, h.cause, 16);
    char want[TOPIC_LEN];
    if (h.kind == KIND_MAIN) {
        m->eid = EID_MAIN | ((uint64_t)h.pub << 40) | h.id;
        m->variant = main_variant(h.id);
        m->key_slot = main_key_slot(h.pub, h.id);
        main_topic(h.pub, h.id, want);
    } else {
        m->eid = h.id;
        m->variant = nest_variant(h.id);
        m->key_slot = nest_key_slot(h.id);
        nest_topic(h.id, want);
    }
    /* A dead letter carries the original payload and key on its own topic. */
    const char *t = topic;
    if (strncmp(t, "$deadletter.", 12) == 0)
        t += 12;
    if (strcmp(t, want) != 0) {
        violation(k, V_CORRUPT, "%s: topic %s, payload says %s", who, topic, want);
        return false;
    }
    char kw[8];
    size_t kl = key_text(m->key_slot, kw), gl = 0;
    const void *key = eb_event_key(ev, &gl);
    if (gl != kl || (kl > 0 && (key == NULL || memcmp(key, kw, kl) != 0))) {
        violation(k, V_CORRUPT, "%s: %s: wrong key", who, topic);
        return false;
    }
    return true;
}

/* ---- the failure plan ---------------------------------------------------- */

/* How many attempts of (event, subscription) fail: >= attempts means every
   attempt fails (dead letter). */
static unsigned fail_plan(const soak *k, uint64_t eid, unsigned sub, unsigned attempts)
{
    uint64_t h = mix64(k->seed ^ mix64(eid + 0x51ed27ull * (sub + 1)));
    unsigned r = (unsigned)(h % 10000);
    if (r < 40)
        return attempts; /* poison: 0.4% */
    if (r < 340 && attempts > 1)
        return 1 + (unsigned)((h >> 32) % (attempts - 1)); /* recovers: 3% */
    return 0;
}

static bool expected_main(const soak *k, unsigned s, unsigned p, uint64_t pseq)
{
    return (k->main_mask[p][main_variant(pseq)] >> s) & 1;
}

/* ---- sliding windows ----------------------------------------------------- */

/* The 2-bit value of a marked slot for pseq. */
static uint64_t win_tag(uint64_t pseq)
{
    return 2 | ((pseq >> WIN_LOG) & 1);
}

static bool win_marked(win *w, uint64_t pseq, memory_order mo)
{
    uint64_t i = pseq & (WIN - 1);
    uint64_t word = atomic_load_explicit(&w->slots[i >> 5], mo);
    return ((word >> ((i & 31) * 2)) & 3) == win_tag(pseq);
}

static void win_mark(soak *k, win *w, unsigned p, uint64_t pseq, const char *who)
{
    /* Acquire: pairs with retire_all's release; the slots it retired are
       clear. */
    uint64_t b = atomic_load_explicit(&w->base, memory_order_acquire);
    if (pseq < b) {
        violation(k, V_DUP, "%s: publisher %u's event %" PRIu64 " ended again after it was retired",
                  who, p, pseq);
        return;
    }
    if (pseq >= b + WIN) {
        violation(k, V_WINDOW,
                  "%s: publisher %u's event %" PRIu64 " is %" PRIu64 " past the oldest open one",
                  who, p, pseq, pseq - b);
        return;
    }
    uint64_t i = pseq & (WIN - 1), shift = (i & 31) * 2, tag = win_tag(pseq);
    atomic_uint_fast64_t *word = &w->slots[i >> 5];
    uint64_t old = atomic_load_explicit(word, memory_order_relaxed), nw;
    do {
        if (((old >> shift) & 3) == tag) {
            violation(k, V_DUP, "%s: publisher %u's event %" PRIu64 " ended twice", who, p, pseq);
            return;
        }
        nw = (old & ~((uint64_t)3 << shift)) | tag << shift;
        /* Release: the monitor's acquire load of the word sees every outcome
           counted before this mark. */
    } while (!atomic_compare_exchange_weak_explicit(word, &old, nw, memory_order_release,
                                                    memory_order_relaxed));
}

/* Monitor: retires the marked prefix of every window and accounts for what
   the failure plan expected of each retired event. */
static void retire_all(soak *k)
{
    for (unsigned s = 0; s < k->nsubs; s++) {
        ssub *ss = &k->subs[s];
        for (unsigned p = 0; p < k->npub; p++) {
            win *w = &ss->win[p];
            uint64_t b = atomic_load_explicit(&w->base, memory_order_relaxed);
            /* Up to what the publisher has had accepted: beyond it, nothing
               is expected yet (and the scan would only skip ahead). */
            uint64_t limit = atomic_load_explicit(&k->pubs[p].accepted, memory_order_acquire);
            if (limit > b + WIN)
                limit = b + WIN;
            while (b < limit) {
                uint64_t i = b & (WIN - 1);
                uint64_t clear = ~((uint64_t)3 << ((i & 31) * 2));
                if (!expected_main(k, s, p, b)) {
                    atomic_fetch_and_explicit(&w->slots[i >> 5], clear, memory_order_relaxed);
                    b++;
                    continue;
                }
                if (!win_marked(w, b, memory_order_acquire))
                    break;
                atomic_fetch_and_explicit(&w->slots[i >> 5], clear, memory_order_relaxed);
                uint64_t eid = EID_MAIN | ((uint64_t)p << 40) | b;
                unsigned f = fail_plan(k, eid, s, ss->def.attempts);
                if (f >= ss->def.attempts) {
                    ss->x_main_dl++;
                    ss->x_main_retries += ss->def.attempts - 1;
                } else {
                    ss->x_main_ok++;
                    ss->x_main_retries += f;
                }
                k->retired_main++;
                b++;
            }
            /* Release: a handler that sees the new base sees the cleared
               slots (see win). */
            atomic_store_explicit(&w->base, b, memory_order_release);
        }
    }
}

/* ---- outcomes ------------------------------------------------------------ */

static uint64_t sum_a(uint64_t nid)
{
    return mix64(nid ^ 0xa11ce5ull);
}

static uint64_t sum_b(uint64_t nid)
{
    return mix64(nid * 0x2545f4914f6cdd1dull + 7);
}

/* The final outcome of (event, stable subscription): success or dead letter. */
static void outcome(ssub *ss, const msg *m, bool dead)
{
    soak *k = ss->k;
    if (m->kind == KIND_MAIN) {
        win_mark(k, &ss->win[m->pub], m->pub, m->id, ss->name);
        count(dead ? &ss->dl_main : &ss->ok_main, 1);
    } else {
        count(&ss->n_cnt, 1);
        count(&ss->n_sum_a, sum_a(m->id));
        count(&ss->n_sum_b, sum_b(m->id));
        if (dead)
            count(&ss->n_dl, 1);
    }
}

/* ---- publish results ----------------------------------------------------- */

static void check_result(soak *k, const char *who, uint64_t eid, uint64_t mask,
                         const eb_publish_result *r)
{
    unsigned m = 0, poison = 0;
    for (unsigned s = 0; s < k->nsubs; s++) {
        if (!((mask >> s) & 1))
            continue;
        m++;
        if (fail_plan(k, eid, s, k->subs[s].def.attempts) >= k->subs[s].def.attempts)
            poison++;
    }
    count(&k->results_checked, 1);
    bool ok = r->matched >= m && r->matched <= m + CHURN_SLOTS &&
              r->delivered + r->failed == r->matched && r->failed >= poison &&
              r->delivered >= m - poison && r->failed - poison <= r->matched - m;
    if (ok && r->failed == 0)
        ok = r->first_error == EB_OK;
    else if (ok)
        ok = r->first_error == SOAK_EFAIL || r->first_error == EB_ECANCELED;
    if (!ok)
        violation(k, V_RESULT,
                  "%s: event %#" PRIx64 ": matched %u delivered %u failed %u first_error %s; "
                  "stable subscriptions %u of which %u dead-letter",
                  who, eid, r->matched, r->delivered, r->failed, eb_err_name(r->first_error), m,
                  poison);
}

/* ---- order checks -------------------------------------------------------- */

/* last holds (position << 10 | attempt) of the previous call of this
   sequence: a new call must be a later position on attempt 1, or the same
   position on the next attempt. Relaxed: the bus orders the calls of one
   lane; if it did not, the check itself reports it. */
static bool order_step(atomic_uint_fast64_t *last, uint64_t pos, unsigned attempt)
{
    uint64_t prev = atomic_load_explicit(last, memory_order_relaxed);
    uint64_t ppos = prev >> 10;
    unsigned patt = (unsigned)(prev & 1023);
    atomic_store_explicit(last, pos << 10 | (attempt & 1023), memory_order_relaxed);
    if (pos > ppos || (prev == 0 && pos == 0))
        return attempt == 1;
    return pos == ppos && attempt == patt + 1;
}

/* ---- churn --------------------------------------------------------------- */

static int churn_handler(const eb_event *ev, void *ctx);

static churn_rec *rec_take(soak *k)
{
    for (unsigned tries = 0; tries < CHURN_RECS; tries++) {
        unsigned i = atomic_fetch_add_explicit(&k->rec_next, 1, memory_order_relaxed) % CHURN_RECS;
        churn_rec *r = &k->recs[i];
        int z = 0;
        if (atomic_compare_exchange_strong(&r->inuse, &z, 1))
            return r;
    }
    return NULL;
}

/* Folds a record's counters into the totals and clears it for reuse. */
static void rec_fold(soak *k, churn_rec *r, bool reset)
{
    count(&k->churn_calls, get(&r->calls));
    count(&k->churn_main_calls, get(&r->main_calls));
    count(&k->churn_untracked, get(&r->untracked));
    atomic_store(&r->calls, 0);
    atomic_store(&r->main_calls, 0);
    atomic_store(&r->untracked, 0);
    if (!reset)
        return;
    atomic_store(&r->in_flight, 0);
    atomic_store(&r->last_seq, 0);
    for (unsigned p = 0; p < MAX_PUBS; p++)
        atomic_store(&r->last_pseq[p], 0);
    for (unsigned i = 0; i < KEY_SLOTS; i++) {
        atomic_store(&r->key_in_flight[i], 0);
        atomic_store(&r->key_last_seq[i], 0);
    }
    for (uint64_t i = 0; i < k->npub * (CWIN / 64); i++)
        atomic_store_explicit(&r->bits[i], 0, memory_order_relaxed);
}

/* Subscribes the slot if it is free, unsubscribes it if it is live; does
   nothing if another thread is at it. Never holds a lock across a bus call. */
static void churn_toggle(soak *k, unsigned slot, uint64_t r, bool from_handler)
{
    churn_slot *cs = &k->slots[slot];
    int st = CS_FREE;
    if (atomic_compare_exchange_strong(&cs->state, &st, CS_BUSY)) {
        churn_rec *rec = atomic_load(&k->churn_on) ? rec_take(k) : NULL;
        if (rec == NULL) {
            atomic_store(&cs->state, CS_FREE);
            return;
        }
        rec_fold(k, rec, true);
        rec->pattern = (unsigned)(r % CHURN_PATTERNS);
        rec->mode = (eb_delivery)((r >> 8) % 3);
        for (unsigned p = 0; p < k->npub; p++) {
            uint64_t a = atomic_load_explicit(&k->pubs[p].accepted, memory_order_acquire);
            rec->base[p] = a > k->churn_margin ? a - k->churn_margin : 0;
        }
        atomic_store(&rec->phase, 0);
        eb_subscribe_options o;
        eb_subscribe_options_init(&o);
        o.delivery = rec->mode;
        o.lanes = rec->mode == EB_DELIVERY_SERIAL ? 0 : (unsigned)(1 + (r >> 16) % 8);
        o.max_attempts = 1;
        char name[16];
        snprintf(name, sizeof name, "c%u", (unsigned)(rec - k->recs));
        o.name = name;
        eb_subscription *sub = NULL;
        int rc = eb_subscribe(k->bus, g_churn_patterns[rec->pattern], churn_handler, rec, &o, &sub);
        if (rc != EB_OK) {
            violation(k, V_UNSUB, "eb_subscribe(%s): %s", g_churn_patterns[rec->pattern],
                      eb_err_name(rc));
            atomic_store(&rec->inuse, 0);
            atomic_store(&cs->state, CS_FREE);
            return;
        }
        atomic_store(&rec->phase, 1);
        cs->sub = sub;
        cs->rec = rec;
        count(&k->churn_subs, 1);
        if (from_handler)
            count(&k->churn_from_handlers, 1);
        atomic_store(&cs->state, CS_LIVE); /* seq_cst: publishes sub and rec */
        return;
    }
    if (st != CS_LIVE || (from_handler && !k->handler_unsub) ||
        !atomic_compare_exchange_strong(&cs->state, &st, CS_BUSY))
        return;
    churn_rec *rec = cs->rec;
    int rc = eb_unsubscribe(cs->sub);
    if (rc != EB_OK)
        violation(k, V_UNSUB, "eb_unsubscribe: %s", eb_err_name(rc));
    /* seq_cst with the handler's increment of in_flight then load of phase:
       a call that starts from now on is seen as late, and one still running
       shows in in_flight. */
    atomic_store(&rec->phase, 2);
    unsigned inf = atomic_load(&rec->in_flight);
    if (inf != 0)
        violation(k, V_LATE, "churn %s: %u calls still running when eb_unsubscribe returned",
                  g_churn_patterns[rec->pattern], inf);
    count(&k->churn_unsubs, 1);
    if (from_handler)
        count(&k->churn_from_handlers, 1);
    cs->sub = NULL;
    cs->rec = NULL;
    atomic_store(&rec->inuse, 0);
    atomic_store(&cs->state, CS_FREE);
}

static int churn_handler(const eb_event *ev, void *ctx)
{
    churn_rec *r = ctx;
    soak *k = r->k;
    const char *pat = g_churn_patterns[r->pattern];
    unsigned inf = atomic_fetch_add(&r->in_flight, 1);
    if (atomic_load(&r->phase) == 2)
        violation(k, V_LATE, "churn %s: called after eb_unsubscribe returned", pat);
    if (r->mode == EB_DELIVERY_SERIAL && inf != 0)
        violation(k, V_OVERLAP, "churn %s (SERIAL): %u calls at once", pat, inf + 1);
    count(&r->calls, 1);
    msg m;
    if (!msg_parse(k, ev, &m, pat))
        goto out;
    if (!(m.kind == KIND_MAIN ? r->k->churn_main[r->pattern][m.pub][m.variant]
                              : r->k->churn_nest[r->pattern][m.variant]))
        violation(k, V_MISROUTE, "churn %s got %s", pat, eb_event_topic(ev));
    if (eb_event_attempt(ev) != 1)
        violation(k, V_ATTEMPT, "churn %s: attempt %u of a handler that never fails", pat,
                  eb_event_attempt(ev));
    uint64_t seq = eb_event_seq(ev);
    if (r->mode == EB_DELIVERY_SERIAL && !order_step(&r->last_seq, seq, 1))
        violation(k, V_ORDER, "churn %s (SERIAL): seq %" PRIu64 " after %" PRIu64, pat, seq,
                  atomic_load_explicit(&r->last_seq, memory_order_relaxed) >> 10);
    if (r->mode == EB_DELIVERY_KEYED) {
        unsigned kinf = atomic_fetch_add(&r->key_in_flight[m.key_slot], 1);
        if (kinf != 0)
            violation(k, V_OVERLAP, "churn %s (KEYED): key slot %u ran twice at once", pat,
                      m.key_slot);
        if (!order_step(&r->key_last_seq[m.key_slot], seq, 1))
            violation(k, V_ORDER, "churn %s (KEYED): key slot %u: seq went back", pat, m.key_slot);
        atomic_fetch_sub(&r->key_in_flight[m.key_slot], 1);
    }
    if (m.kind == KIND_MAIN) {
        count(&r->main_calls, 1);
        if (r->mode == EB_DELIVERY_SERIAL && !order_step(&r->last_pseq[m.pub], m.id + 1, 1))
            violation(k, V_ORDER,
                      "churn %s (SERIAL): publisher %u's event %" PRIu64 " out of order", pat,
                      m.pub, m.id);
        if (m.id < r->base[m.pub]) {
            violation(k, V_EARLY,
                      "churn %s: publisher %u's event %" PRIu64 " was accepted more than %" PRIu64
                      " events before eb_subscribe was called",
                      pat, m.pub, m.id, k->churn_margin);
        } else if (m.id - r->base[m.pub] >= CWIN) {
            count(&r->untracked, 1);
        } else {
            uint64_t i = m.pub * CWIN + (m.id - r->base[m.pub]);
            uint64_t bit = (uint64_t)1 << (i & 63);
            if (atomic_fetch_or_explicit(&r->bits[i >> 6], bit, memory_order_relaxed) & bit)
                violation(k, V_DUP, "churn %s: publisher %u's event %" PRIu64 " delivered twice",
                          pat, m.pub, m.id);
        }
    }
out:
    atomic_fetch_sub(&r->in_flight, 1);
    count(&k->ok_calls, 1);
    return 0;
}

/* ---- nested publishes from handlers -------------------------------------- */

static void nested_accepted(soak *k, uint64_t nid)
{
    uint64_t mask = k->nest_mask[nest_variant(nid)];
    for (unsigned s = 0; s < k->nsubs; s++) {
        if (!((mask >> s) & 1))
            continue;
        ssub *t = &k->subs[s];
        unsigned f = fail_plan(k, nid, s, t->def.attempts);
        count(&t->x_n_cnt, 1);
        count(&t->x_n_sum_a, sum_a(nid));
        count(&t->x_n_sum_b, sum_b(nid));
        if (f >= t->def.attempts) {
            count(&t->x_n_dl, 1);
            count(&t->x_n_retries, t->def.attempts - 1);
        } else {
            count(&t->x_n_retries, f);
        }
    }
    count(&k->nested_pub, 1);
}

static void maybe_nest(ssub *ss, const eb_event *parent, const msg *m)
{
    soak *k = ss->k;
    uint64_t h = mix64(k->seed ^ 0xa5a5a5a5ull ^ m->eid ^ ((uint64_t)ss->idx << 56));
    if ((h & 15) == 0) {
        uint64_t nid = ((uint64_t)ss->idx << 48) | ((uint64_t)m->pub << 40) | m->id;
        uint8_t cause[16];
        eb_event_id(parent, cause);
        unsigned char buf[2][MSG_MAX];
        char topic[2][TOPIC_LEN], key[2][8];
        uint64_t ids[2] = {nid, nid | NID_PAIR};
        eb_message msgs[2];
        for (int i = 0; i < 2; i++) {
            size_t len = msg_build(KIND_NESTED, 0, ids[i], cause, buf[i]);
            nest_topic(ids[i], topic[i]);
            size_t kl = key_text(nest_key_slot(ids[i]), key[i]);
            msgs[i] = (eb_message){topic[i], buf[i], len, kl ? key[i] : NULL, kl};
        }
        eb_publish_options o;
        eb_publish_options_init(&o);
        o.key = msgs[0].key;
        o.key_len = msgs[0].key_len;
        o.timeout_ns = k->budget_ns;
        unsigned method = (unsigned)((h >> 8) & 7);
        uint64_t mask = k->nest_mask[nest_variant(nid)];
        eb_publish_result res;
        int rc;
        switch (method) {
        case 3:
        case 7:
            count(&k->nested_wait, 1);
            count(&k->handler_waits, 1);
            rc = eb_publish_wait(k->bus, topic[0], buf[0], msgs[0].len, &o, &res);
            if (rc == EB_OK) {
                nested_accepted(k, nid);
                check_result(k, "nested eb_publish_wait", nid, mask, &res);
            } else if (rc == EB_EDEADLK) {
                nested_accepted(k, nid);
                count(&k->edeadlk, 1);
            } else {
                violation(k, rc == EB_ETIMEDOUT ? V_HANG : V_PUBLISH,
                          "%s: nested eb_publish_wait: %s", ss->name, eb_err_name(rc));
            }
            break;
        case 4:
        case 5: {
            count(&k->nested_async, 1);
            count(&k->handler_waits, 1);
            eb_ticket *t = NULL;
            rc = eb_publish_async(k->bus, topic[0], buf[0], msgs[0].len, &o, &t);
            if (rc != EB_OK) {
                violation(k, rc == EB_ETIMEDOUT ? V_HANG : V_PUBLISH,
                          "%s: nested eb_publish_async: %s", ss->name, eb_err_name(rc));
                break;
            }
            nested_accepted(k, nid);
            if (method == 5) {
                /* A poll first: done or not yet, never an error. */
                rc = eb_ticket_wait(t, 0, &res);
                if (rc != EB_OK && rc != EB_ETIMEDOUT && rc != EB_EDEADLK)
                    violation(k, V_PUBLISH, "%s: eb_ticket_wait(0): %s", ss->name, eb_err_name(rc));
            }
            rc = eb_ticket_wait(t, k->budget_ns, &res);
            if (rc == EB_OK)
                check_result(k, "nested eb_ticket_wait", nid, mask, &res);
            else if (rc == EB_EDEADLK)
                count(&k->edeadlk, 1);
            else
                violation(k, rc == EB_ETIMEDOUT ? V_HANG : V_PUBLISH,
                          "%s: nested eb_ticket_wait: %s", ss->name, eb_err_name(rc));
            eb_ticket_release(t);
            break;
        }
        case 6: {
            count(&k->nested_batch, 1);
            size_t acc = 0;
            rc = eb_publish_batch(k->bus, msgs, 2, &o, &acc);
            for (size_t i = 0; i < acc && i < 2; i++)
                nested_accepted(k, ids[i]);
            if (rc != EB_OK)
                violation(k, rc == EB_ETIMEDOUT ? V_HANG : V_PUBLISH,
                          "%s: nested eb_publish_batch: %s (%zu accepted)", ss->name,
                          eb_err_name(rc), acc);
            break;
        }
        default:
            count(&k->nested_fire, 1);
            rc = eb_publish(k->bus, topic[0], buf[0], msgs[0].len, &o);
            if (rc == EB_OK)
                nested_accepted(k, nid);
            else
                violation(k, rc == EB_ETIMEDOUT ? V_HANG : V_PUBLISH, "%s: nested eb_publish: %s",
                          ss->name, eb_err_name(rc));
            break;
        }
    }
    /* Churn from inside a handler, now and then. */
    if (((h >> 20) & 4095) == 0)
        churn_toggle(k, (unsigned)((h >> 40) % CHURN_SLOTS), h >> 12, true);
}

/* ---- stable subscriptions ------------------------------------------------ */

static int stable_handler(const eb_event *ev, void *ctx)
{
    ssub *ss = ctx;
    soak *k = ss->k;
    unsigned attempt = eb_event_attempt(ev);
    uint64_t seq = eb_event_seq(ev);
    count(&ss->calls, 1);
    unsigned inf = atomic_fetch_add(&ss->in_flight, 1);
    if (ss->def.mode == EB_DELIVERY_SERIAL && inf != 0)
        violation(k, V_OVERLAP, "%s (SERIAL %s): %u calls at once", ss->name, ss->def.pattern,
                  inf + 1);
    int rc = 0;
    msg m;
    const char *topic = eb_event_topic(ev);
    if (topic[0] == '$')
        violation(k, V_MISROUTE, "%s (%s) got reserved topic %s", ss->name, ss->def.pattern, topic);
    if (!msg_parse(k, ev, &m, ss->name))
        goto out;
    uint64_t mask = m.kind == KIND_MAIN ? k->main_mask[m.pub][m.variant] : k->nest_mask[m.variant];
    if (!((mask >> ss->idx) & 1))
        violation(k, V_MISROUTE, "%s (%s) got %s", ss->name, ss->def.pattern, topic);
    if (m.kind == KIND_NESTED) {
        uint8_t caus[16];
        if (!eb_event_causation_id(ev, caus) || memcmp(caus, m.cause, 16) != 0)
            violation(k, V_CAUSE, "%s: nested %s: causation id is not the publishing event's id",
                      ss->name, topic);
    } else {
        uint8_t caus[16];
        if (eb_event_causation_id(ev, caus))
            violation(k, V_CAUSE, "%s: main event %s has a causation id", ss->name, topic);
    }
    /* Order. */
    if (ss->def.mode == EB_DELIVERY_SERIAL) {
        if (!order_step(&ss->last_seq, seq, attempt))
            violation(k, V_ORDER, "%s (SERIAL %s): seq %" PRIu64 " attempt %u out of order",
                      ss->name, ss->def.pattern, seq, attempt);
        if (m.kind == KIND_MAIN && !order_step(&ss->last_pseq[m.pub], m.id + 1, attempt))
            violation(k, V_ORDER,
                      "%s (SERIAL %s): publisher %u's event %" PRIu64 " attempt %u out of order",
                      ss->name, ss->def.pattern, m.pub, m.id, attempt);
    } else if (ss->def.mode == EB_DELIVERY_KEYED) {
        unsigned kinf = atomic_fetch_add(&ss->key_in_flight[m.key_slot], 1);
        if (kinf != 0)
            violation(k, V_OVERLAP, "%s (KEYED %s): key slot %u ran %u calls at once", ss->name,
                      ss->def.pattern, m.key_slot, kinf + 1);
        if (!order_step(&ss->key_last_seq[m.key_slot], seq, attempt))
            violation(k, V_ORDER, "%s (KEYED %s): key slot %u: seq %" PRIu64 " attempt %u",
                      ss->name, ss->def.pattern, m.key_slot, seq, attempt);
        if (m.kind == KIND_MAIN &&
            !order_step(&ss->key_last_pseq[m.key_slot * k->npub + m.pub], m.id + 1, attempt))
            violation(k, V_ORDER,
                      "%s (KEYED %s): key slot %u: publisher %u's event %" PRIu64 " attempt %u",
                      ss->name, ss->def.pattern, m.key_slot, m.pub, m.id, attempt);
    }
    /* The failure plan. */
    unsigned f = fail_plan(k, m.eid, ss->idx, ss->def.attempts);
    if (attempt < 1 || attempt > ss->def.attempts) {
        violation(k, V_ATTEMPT, "%s: attempt %u of at most %u", ss->name, attempt,
                  ss->def.attempts);
    } else if (attempt <= f) {
        rc = SOAK_EFAIL;
    } else {
        if (attempt != f + 1)
            violation(k, V_ATTEMPT, "%s: %s succeeded on attempt %u, planned %u", ss->name, topic,
                      attempt, f + 1);
        outcome(ss, &m, false);
        if (ss->def.nests && m.kind == KIND_MAIN)
            maybe_nest(ss, ev, &m);
    }
    if (ss->def.mode == EB_DELIVERY_KEYED)
        atomic_fetch_sub(&ss->key_in_flight[m.key_slot], 1);
out:
    atomic_fetch_sub(&ss->in_flight, 1);
    if (rc == 0) {
        count(&ss->ok_calls, 1);
        count(&k->ok_calls, 1);
    } else {
        count(&ss->fail_calls, 1);
        count(&k->fail_calls, 1);
    }
    return rc;
}

static void on_deadletter(const eb_event *ev, const eb_deadletter_info *info, void *ctx)
{
    soak *k = ctx;
    count(&k->dl_callbacks, 1);
    unsigned s = 0;
    if (info->subscription == NULL || sscanf(info->subscription, "s%u", &s) != 1 || s >= k->nsubs) {
        violation(k, V_DEADLETTER, "dead letter from subscription '%s'",
                  info->subscription ? info->subscription : "(null)");
        return;
    }
    ssub *ss = &k->subs[s];
    msg m;
    if (!msg_parse(k, ev, &m, "on_deadletter"))
        return;
    unsigned f = fail_plan(k, m.eid, s, ss->def.attempts);
    if (f < ss->def.attempts || info->attempts != ss->def.attempts || info->error != SOAK_EFAIL ||
        info->seq != eb_event_seq(ev) || info->topic == NULL ||
        strcmp(info->topic, eb_event_topic(ev)) != 0)
        violation(k, V_DEADLETTER,
                  "%s: %s dead-lettered after %u attempts (of %u) with %d; planned failures %u",
                  ss->name, eb_event_topic(ev), info->attempts, ss->def.attempts, info->error, f);
    outcome(ss, &m, true);
}

static int dl_handler(const eb_event *ev, void *ctx)
{
    soak *k = ctx;
    eb_deadletter_info info;
    const char *topic = eb_event_topic(ev);
    if (!eb_event_deadletter_info(ev, &info)) {
        violation(k, V_DEADLETTER, "%s without dead-letter info", topic);
    } else {
        msg m;
        unsigned s;
        if (strncmp(topic, "$deadletter.", 12) != 0 || strcmp(topic + 12, info.topic) != 0 ||
            sscanf(info.subscription, "s%u", &s) != 1 || s >= k->nsubs ||
            info.attempts != k->subs[s].def.attempts || info.error != SOAK_EFAIL)
            violation(k, V_DEADLETTER, "dead letter %s: info names %s from '%s'", topic, info.topic,
                      info.subscription);
        msg_parse(k, ev, &m, "$deadletter");
    }
    count(&k->dl_events, 1);
    count(&k->ok_calls, 1);
    return 0;
}

static void log_fn(eb_log_level level, const char *text, void *ctx)
{
    soak *k = ctx;
    if (level >= EB_LOG_ERROR) {
        count(&k->log_errors, 1);
        violation(k, V_LOG, "%s", text);
    }
}

/* ---- publishers ---------------------------------------------------------- */

static void zc_free(void *p)
{
    atomic_fetch_add_explicit(&g_zc_freed, 1, memory_order_relaxed);
    free(p);
}

typedef struct tslot {
    eb_ticket *t;
    uint64_t pseq;
} tslot;

static void ticket_finish(soak *k, unsigned p, tslot *ts)
{
    eb_publish_result res;
    int rc = eb_ticket_wait(ts->t, k->budget_ns, &res);
    if (rc == EB_OK)
        check_result(k, "eb_ticket_wait", EID_MAIN | ((uint64_t)p << 40) | ts->pseq,
                     k->main_mask[p][main_variant(ts->pseq)], &res);
    else
        violation(k, rc == EB_ETIMEDOUT ? V_HANG : V_PUBLISH,
                  "publisher %u: eb_ticket_wait(event %" PRIu64 "): %s", p, ts->pseq,
                  eb_err_name(rc));
    eb_ticket_release(ts->t);
}

static void *publisher_main(void *arg)
{
    pub *P = arg;
    soak *k = P->k;
    unsigned p = P->idx;
    uint64_t rng = mix64(k->seed ^ (0x7075626cull + p));
    uint64_t pseq = 0;
    tslot fifo[TICKETS];
    unsigned head = 0, nt = 0;
    unsigned char buf[BATCH_MAX][MSG_MAX];
    char topic[BATCH_MAX][TOPIC_LEN], key[BATCH_MAX][8];
    eb_message msgs[BATCH_MAX];
    bool failed = false;
    while (!atomic_load_explicit(&k->stop, memory_order_relaxed) && !failed) {
        unsigned op = (unsigned)(rng_next(&rng) % 100);
        size_t len = msg_build(KIND_MAIN, p, pseq, NULL, buf[0]);
        main_topic(p, pseq, topic[0]);
        size_t kl = key_text(main_key_slot(p, pseq), key[0]);
        eb_publish_options o;
        eb_publish_options_init(&o);
        o.key = kl ? key[0] : NULL;
        o.key_len = kl;
        o.timeout_ns = k->budget_ns;
        int rc;
        uint64_t got = 0;
        if (op < 60) {
            rc = eb_publish(k->bus, topic[0], buf[0], len, &o);
            if (rc == EB_OK) {
                got = 1;
                count(&k->pub_single, 1);
            }
        } else if (op < 65) {
            void *zp = malloc(len);
            if (zp == NULL)
                break;
            memcpy(zp, buf[0], len);
            o.payload_free = zc_free;
            rc = eb_publish(k->bus, topic[0], zp, len, &o);
            if (rc == EB_OK) {
                got = 1;
                count(&k->pub_zc, 1);
                count(&k->zc_accepted, 1);
            } else {
                free(zp); /* ownership passes only on EB_OK */
            }
        } else if (op < 75) {
            unsigned n = 2 + (unsigned)(rng_next(&rng) % (BATCH_MAX - 1));
            for (unsigned i = 0; i < n; i++) {
                size_t l = msg_build(KIND_MAIN, p, pseq + i, NULL, buf[i]);
                main_topic(p, pseq + i, topic[i]);
                size_t kli = key_text(main_key_slot(p, pseq + i), key[i]);
                msgs[i] = (eb_message){topic[i], buf[i], l, kli ? key[i] : NULL, kli};
            }
            size_t acc = 0;
            rc = eb_publish_batch(k->bus, msgs, n, &o, &acc);
            got = acc;
            count(&k->pub_batch_calls, 1);
            count(&k->pub_batch_events, acc);
        } else if (op < 80) {
            eb_publish_result res;
            rc = eb_publish_wait(k->bus, topic[0], buf[0], len, &o, &res);
            if (rc == EB_OK) {
                got = 1;
                count(&k->pub_wait, 1);
                check_result(k, "eb_publish_wait", EID_MAIN | ((uint64_t)p << 40) | pseq,
                             k->main_mask[p][main_variant(pseq)], &res);
            }
        } else {
            eb_ticket *t = NULL;
            rc = eb_publish_async(k->bus, topic[0], buf[0], len, &o, &t);
            if (rc == EB_OK) {
                got = 1;
                count(&k->pub_async, 1);
                fifo[(head + nt) % TICKETS] = (tslot){t, pseq};
                nt++;
            }
        }
        if (rc != EB_OK) {
            violation(k, rc == EB_ETIMEDOUT ? V_HANG : V_PUBLISH,
                      "publisher %u: event %" PRIu64 ": %s", p, pseq, eb_err_name(rc));
            failed = true;
        }
        pseq += got;
        /* Release: a churn subscriber that reads this knows these events'
           publish calls returned. */
        atomic_store_explicit(&P->accepted, pseq, memory_order_release);
        /* Keep a few tickets in flight; wait for the oldest now and then. */
        while (nt > 0 && (nt == TICKETS || rng_next(&rng) % 4 == 0)) {
            ticket_finish(k, p, &fifo[head]);
            head = (head + 1) % TICKETS;
            nt--;
        }
    }
    while (nt > 0) {
        ticket_finish(k, p, &fifo[head]);
        head = (head + 1) % TICKETS;
        nt--;
    }
    return NULL;
}

/* ---- churn thread -------------------------------------------------------- */

static void *churner_main(void *arg)
{
    soak *k = arg;
    uint64_t rng = mix64(k->seed ^ 0x636875726eull);
    while (!atomic_load_explicit(&k->stop, memory_order_relaxed)) {
        uint64_t r = rng_next(&rng);
        churn_toggle(k, (unsigned)(r % CHURN_SLOTS), r >> 8, false);
        sleep_ns((int64_t)(rng_next(&rng) % 10000) * 1000); /* 0-10 ms */
    }
    /* No new ones; unsubscribe what is left (handlers may still be at a
       slot for a moment). */
    atomic_store(&k->churn_on, 0);
    int64_t deadline = now_ns() + k->budget_ns;
    for (;;) {
        bool busy = false;
        for (unsigned i = 0; i < CHURN_SLOTS; i++) {
            int st = atomic_load(&k->slots[i].state);
            if (st == CS_LIVE)
                churn_toggle(k, i, 0, false);
            busy |= atomic_load(&k->slots[i].state) != CS_FREE;
        }
        if (!busy)
            break;
        if (now_ns() > deadline) {
            violation(k, V_HANG, "churn slots still busy after the wait budget");
            break;
        }
        sleep_ns(NS_PER_MS);
    }
    return NULL;
}

/* ---- setup --------------------------------------------------------------- */

static void build_tables(soak *k)
{
    char t[TOPIC_LEN];
    for (unsigned p = 0; p < k->npub; p++) {
        for (unsigned v = 0; v < MAIN_VARIANTS; v++) {
            /* pseq with (pseq % 8, pseq % 5 == 0) giving variant v */
            uint64_t pseq = 0;
            while (main_variant(pseq) != v)
                pseq++;
            main_topic(p, pseq, t);
            for (unsigned s = 0; s < k->nsubs; s++)
                if (topic_matches(k->subs[s].def.pattern, t))
                    k->main_mask[p][v] |= (uint64_t)1 << s;
            for (unsigned c = 0; c < CHURN_PATTERNS; c++)
                k->churn_main[c][p][v] = topic_matches(g_churn_patterns[c], t);
        }
    }
    for (unsigned v = 0; v < NEST_VARIANTS; v++) {
        snprintf(t, sizeof t, "nest.n%u%s", v & 3, v >= 4 ? ".deep" : "");
        for (unsigned s = 0; s < k->nsubs; s++) {
            if (!topic_matches(k->subs[s].def.pattern, t))
                continue;
            k->nest_mask[v] |= (uint64_t)1 << s;
            if (k->subs[s].def.nests) {
                /* A nesting handler that received nested events could wait
                   on one whose lane waits on it: a cycle no bus can see. */
                fprintf(stderr, "soak: config error: nesting pattern %s matches %s\n",
                        k->subs[s].def.pattern, t);
                exit(2);
            }
        }
        for (unsigned c = 0; c < CHURN_PATTERNS; c++)
            k->churn_nest[c][v] = topic_matches(g_churn_patterns[c], t);
    }
}

static void setup_subs(soak *k)
{
    for (unsigned s = 0; s < k->nsubs; s++) {
        ssub *ss = &k->subs[s];
        ss->k = k;
        ss->idx = s;
        ss->def = g_defs[s % N_DEFS];
        if (s >= N_DEFS && ss->def.mode != EB_DELIVERY_SERIAL)
            ss->def.lanes = ss->def.lanes ? ss->def.lanes * 2 : 3; /* a variation */
        snprintf(ss->name, sizeof ss->name, "s%02u", s);
        ss->key_last_pseq = alloc_touched(sizeof(atomic_uint_fast64_t) * KEY_SLOTS * k->npub);
        for (unsigned p = 0; p < k->npub; p++)
            ss->win[p].slots = alloc_touched(WIN / 4);
    }
    for (unsigned i = 0; i < CHURN_RECS; i++) {
        k->recs[i].k = k;
        k->recs[i].bits = alloc_touched(k->npub * CWIN / 8);
    }
}

static void subscribe_all(soak *k)
{
    for (unsigned s = 0; s < k->nsubs; s++) {
        ssub *ss = &k->subs[s];
        eb_subscribe_options o;
        eb_subscribe_options_init(&o);
        o.delivery = ss->def.mode;
        o.lanes = ss->def.mode == EB_DELIVERY_SERIAL ? 0 : ss->def.lanes;
        o.max_attempts = ss->def.attempts;
        o.backoff_initial_ns = (uint64_t)(20 + 40 * (s % 5)) * 1000; /* 20-180 us */
        o.backoff_max_ns = 2 * NS_PER_MS;
        o.mailbox_capacity = ss->def.mailbox;
        o.name = ss->name;
        int rc = eb_subscribe(k->bus, ss->def.pattern, stable_handler, ss, &o, &ss->sub);
        if (rc != EB_OK) {
            fprintf(stderr, "soak: eb_subscribe(%s): %s\n", ss->def.pattern, eb_err_name(rc));
            exit(2);
        }
    }
    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.delivery = EB_DELIVERY_CONCURRENT;
    o.name = "dl";
    int rc = eb_subscribe(k->bus, "$deadletter.#", dl_handler, k, &o, &k->dl_sub);
    if (rc != EB_OK) {
        fprintf(stderr, "soak: eb_subscribe($deadletter.#): %s\n", eb_err_name(rc));
        exit(2);
    }
}

/* ---- the end ------------------------------------------------------------- */

static bool stats_equal(const eb_bus_stats *a, const eb_bus_stats *b)
{
    return a->published == b->published && a->dispatched == b->dispatched &&
           a->delivered == b->delivered && a->failed == b->failed && a->retried == b->retried &&
           a->dead_lettered == b->dead_lettered;
}

/* Waits (bounded) until everything accepted was dispatched and finished:
   two snapshots 50 ms apart that agree and show nothing in flight. */
static bool quiesce(soak *k, eb_bus_stats *out)
{
    int64_t deadline = now_ns() + k->budget_ns;
    eb_bus_stats prev;
    memset(&prev, 0xff, sizeof prev);
    uint64_t prev_ok = UINT64_MAX;
    while (now_ns() < deadline) {
        eb_bus_stats st;
        eb_bus_stats_get(k->bus, &st);
        uint64_t ok = get(&k->ok_calls);
        bool idle = st.dispatched == st.published + st.dead_lettered && st.intake_depth == 0 &&
                    st.max_lag == 0 && st.scheduled == 0;
        if (idle && stats_equal(&st, &prev) && ok == prev_ok) {
            *out = st;
            return true;
        }
        prev = st;
        prev_ok = ok;
        sleep_ns(50 * NS_PER_MS);
    }
    eb_bus_stats_get(k->bus, out);
    return false;
}

static void expect_eq(soak *k, enum vkind kind, const char *what, uint64_t got, uint64_t want)
{
    if (got != want)
        violation(k, kind, "%s: %" PRIu64 ", expected %" PRIu64, what, got, want);
}

/* Losses: expected events below accepted that no outcome marked. Marks at
   or above accepted would be events nobody published. */
static void final_windows(soak *k)
{
    for (unsigned s = 0; s < k->nsubs; s++) {
        ssub *ss = &k->subs[s];
        for (unsigned p = 0; p < k->npub; p++) {
            win *w = &ss->win[p];
            uint64_t acc = atomic_load(&k->pubs[p].accepted);
            uint64_t b = atomic_load(&w->base);
            for (uint64_t q = b; q < b + WIN; q++) {
                bool marked = win_marked(w, q, memory_order_acquire);
                if (q < acc && expected_main(k, s, p, q) && !marked) {
                    char t[TOPIC_LEN];
                    main_topic(p, q, t);
                    violation(k, V_LOSS,
                              "%s (%s): publisher %u's event %" PRIu64 " (%s) never ended",
                              ss->name, ss->def.pattern, p, q, t);
                } else if (q >= acc && marked) {
                    violation(k, V_CORRUPT,
                              "%s: publisher %u's event %" PRIu64
                              " ended but was never accepted (%" PRIu64 " were)",
                              ss->name, p, q, acc);
                }
            }
        }
    }
}

static void final_counts(soak *k, const eb_bus_stats *st)
{
    uint64_t retries = 0, dl = 0;
    char what[96];
    for (unsigned s = 0; s < k->nsubs; s++) {
        ssub *ss = &k->subs[s];
        uint64_t x_retries = ss->x_main_retries + get(&ss->x_n_retries);
        uint64_t x_dl = ss->x_main_dl + get(&ss->x_n_dl);
        snprintf(what, sizeof what, "%s (%s) main successes", ss->name, ss->def.pattern);
        expect_eq(k, V_COUNTS, what, get(&ss->ok_main), ss->x_main_ok);
        snprintf(what, sizeof what, "%s (%s) main dead letters", ss->name, ss->def.pattern);
        expect_eq(k, V_COUNTS, what, get(&ss->dl_main), ss->x_main_dl);
        snprintf(what, sizeof what, "%s (%s) nested outcomes", ss->name, ss->def.pattern);
        expect_eq(k, V_COUNTS, what, get(&ss->n_cnt), get(&ss->x_n_cnt));
        if (get(&ss->n_sum_a) != get(&ss->x_n_sum_a) || get(&ss->n_sum_b) != get(&ss->x_n_sum_b))
            violation(k, V_COUNTS,
                      "%s (%s): the nested events that ended are not the ones "
                      "published (hash sums differ)",
                      ss->name, ss->def.pattern);
        snprintf(what, sizeof what, "%s (%s) nested dead letters", ss->name, ss->def.pattern);
        expect_eq(k, V_COUNTS, what, get(&ss->n_dl), get(&ss->x_n_dl));
        snprintf(what, sizeof what, "%s (%s) failing calls", ss->name, ss->def.pattern);
        expect_eq(k, V_COUNTS, what, get(&ss->fail_calls), x_retries + x_dl);
        eb_subscription_stats ss_st;
        if (eb_subscription_stats_get(ss->sub, &ss_st) == EB_OK) {
            snprintf(what, sizeof what, "%s eb_subscription_stats.delivered", ss->name);
            expect_eq(k, V_STATS, what, ss_st.delivered, get(&ss->ok_calls));
            snprintf(what, sizeof what, "%s eb_subscription_stats.failed", ss->name);
            expect_eq(k, V_STATS, what, ss_st.failed, x_dl);
            snprintf(what, sizeof what, "%s eb_subscription_stats.retried", ss->name);
            expect_eq(k, V_STATS, what, ss_st.retried, x_retries);
            snprintf(what, sizeof what, "%s eb_subscription_stats.dropped", ss->name);
            expect_eq(k, V_STATS, what, ss_st.dropped, 0);
            snprintf(what, sizeof what, "%s eb_subscription_stats.lag", ss->name);
            expect_eq(k, V_STATS, what, ss_st.lag, 0);
        }
        retries += x_retries;
        dl += x_dl;
    }
    uint64_t main_acc = 0;
    for (unsigned p = 0; p < k->npub; p++)
        main_acc += atomic_load(&k->pubs[p].accepted);
    expect_eq(k, V_COUNTS, "dead-letter callbacks", get(&k->dl_callbacks), dl);
    expect_eq(k, V_COUNTS, "$deadletter events", get(&k->dl_events), dl);
    expect_eq(k, V_STATS, "bus published", st->published, main_acc + get(&k->nested_pub));
    expect_eq(k, V_STATS, "bus dispatched", st->dispatched, st->published + dl);
    expect_eq(k, V_STATS, "bus delivered", st->delivered, get(&k->ok_calls));
    expect_eq(k, V_STATS, "bus retried", st->retried, retries);
    expect_eq(k, V_STATS, "bus failed", st->failed, dl);
    expect_eq(k, V_STATS, "bus dead_lettered", st->dead_lettered, dl);
    expect_eq(k, V_STATS, "bus failed calls", st->retried + st->failed, get(&k->fail_calls));
    expect_eq(k, V_STATS, "bus dropped", st->dropped, 0);
    expect_eq(k, V_STATS, "bus unrouted", st->unrouted, 0);
    expect_eq(k, V_STATS, "bus subscriptions", st->subscriptions, k->nsubs + 1);
    expect_eq(k, V_STATS, "bus max_lag", st->max_lag, 0);
    expect_eq(k, V_STATS, "bus intake_depth", st->intake_depth, 0);
}

/* ---- watchdog ------------------------------------------------------------ */

/* A hang inside the bus (a wait with no timeout, such as eb_unsubscribe)
   would otherwise hang the program: end it, saying where. */
static void *watchdog_main(void *arg)
{
    soak *k = arg;
    int64_t limit =
        now_ns() + (int64_t)(k->duration_s * NS_PER_S) + 2 * k->budget_ns + 60 * NS_PER_S;
    while (!atomic_load(&k->done)) {
        if (now_ns() > limit) {
            eb_bus_stats st;
            memset(&st, 0, sizeof st);
            /* The main thread is stuck, so a bus it was destroying is not
               freed yet. */
            eb_bus *bus = atomic_load(&k->wd_bus);
            if (bus != NULL)
                eb_bus_stats_get(bus, &st);
            fprintf(stderr,
                    "soak: HANG: still '%s' %.0f s after the end of the run (published %" PRIu64
                    " dispatched %" PRIu64 " intake %u max_lag %" PRIu64 ")\nsoak: FAIL\n",
                    atomic_load(&k->stage),
                    (double)(now_ns() - limit) / NS_PER_S + 60 +
                        2.0 * (double)k->budget_ns / NS_PER_S,
                    st.published, st.dispatched, st.intake_depth, st.max_lag);
            fflush(stderr);
            _exit(3);
        }
        sleep_ns(200 * NS_PER_MS);
    }
    return NULL;
}

/* ---- main ---------------------------------------------------------------- */

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --duration SECONDS [--seed N] [--publishers N] [--subs N]\n"
            "          [--workers N] [--progress SECONDS] [--rss-slack-mib N] [--verbose]\n"
            "          [--unsubscribe-from-handlers]\n"
            "  --duration S       how long to publish (required; > 0)\n"
            "  --seed N           failure plan and load mix (default: from the clock)\n"
            "  --publishers N     publisher threads, 1..%d (default 4)\n"
            "  --subs N           stable subscriptions, 1..%d (default 32)\n"
            "  --workers N        bus workers (default: one per CPU)\n"
            "  --progress S       progress line every S seconds on stderr (default 10)\n"
            "  --rss-slack-mib N  allowed RSS growth after warm-up (default 8)\n"
            "  --verbose          more violations printed, a table per subscription\n"
            "  --unsubscribe-from-handlers  churn handlers unsubscribe too (off: see\n"
            "                     docs/SOAK.md, Findings)\n",
            argv0, MAX_PUBS, MAX_SUBS);
    return 2;
}

static void progress_line(soak *k, double t, double *last_t, uint64_t *last_pub)
{
    uint64_t pubd = 0;
    for (unsigned p = 0; p < k->npub; p++)
        pubd += atomic_load_explicit(&k->pubs[p].accepted, memory_order_relaxed);
    uint64_t vio = 0;
    for (int i = 0; i < V_N; i++)
        vio += get(&k->v[i]);
    double rate = t > *last_t ? (double)(pubd - *last_pub) / (t - *last_t) : 0;
    fprintf(stderr,
            "soak: [%5.0fs] events %" PRIu64 " (%.0f/s) deliveries %" PRIu64 " retries %" PRIu64
            " dead %" PRIu64 " nested %" PRIu64 " edeadlk %" PRIu64 " churn %" PRIu64
            " rss %.1f MiB violations %" PRIu64 "\n",
            t, pubd, rate, get(&k->ok_calls), get(&k->fail_calls) - get(&k->dl_callbacks),
            get(&k->dl_callbacks), get(&k->nested_pub), get(&k->edeadlk), get(&k->churn_subs),
            mib(k->n_rss ? k->rss[k->n_rss - 1] : rss_bytes()), vio);
    *last_t = t;
    *last_pub = pubd;
}

int main(int argc, char **argv)
{
    soak *k = alloc_touched(sizeof *k);
    k->duration_s = 0;
    k->seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    k->npub = 4;
    k->nsubs = 32;
    k->progress_s = 10;
    k->rss_slack_mib = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--verbose") == 0) {
            k->verbose = true;
            continue;
        }
        if (strcmp(a, "--unsubscribe-from-handlers") == 0) {
            k->handler_unsub = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(argv[0]);
            return 0;
        }
        if (i + 1 >= argc)
            return usage(argv[0]);
        const char *v = argv[++i];
        char *end = NULL;
        if (strcmp(a, "--duration") == 0)
            k->duration_s = strtod(v, &end);
        else if (strcmp(a, "--seed") == 0)
            k->seed = strtoull(v, &end, 0);
        else if (strcmp(a, "--publishers") == 0)
            k->npub = (unsigned)strtoul(v, &end, 10);
        else if (strcmp(a, "--subs") == 0)
            k->nsubs = (unsigned)strtoul(v, &end, 10);
        else if (strcmp(a, "--workers") == 0)
            k->workers = (unsigned)strtoul(v, &end, 10);
        else if (strcmp(a, "--progress") == 0)
            k->progress_s = (unsigned)strtoul(v, &end, 10);
        else if (strcmp(a, "--rss-slack-mib") == 0)
            k->rss_slack_mib = strtod(v, &end);
        else
            return usage(argv[0]);
        if (end == v || *end != '\0')
            return usage(argv[0]);
    }
    if (!(k->duration_s > 0) || k->npub < 1 || k->npub > MAX_PUBS || k->nsubs < 1 ||
        k->nsubs > MAX_SUBS || k->workers > 256 || k->progress_s < 1 || k->rss_slack_mib < 0 ||
        k->duration_s > (MAX_RSS_SAMPLES - 64))
        return usage(argv[0]);
    const char *ws = getenv("EB_TEST_WAIT_SCALE");
    long scale = ws ? strtol(ws, NULL, 10) : 1;
    k->budget_ns = 30 * NS_PER_S * (scale < 1 ? 1 : scale);
    atomic_store(&k->churn_on, 1);
    atomic_store(&k->stage, "setting up");

    setup_subs(k);
    build_tables(k);

    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = k->workers;
    cfg.on_deadletter = on_deadletter;
    cfg.deadletter_ctx = k;
    cfg.log = log_fn;
    cfg.log_ctx = k;
    cfg.log_level = EB_LOG_ERROR;
    int rc = eb_bus_create(&cfg, &k->bus);
    if (rc != EB_OK) {
        fprintf(stderr, "soak: eb_bus_create: %s\n", eb_err_name(rc));
        return 2;
    }
    atomic_store(&k->wd_bus, k->bus);
    eb_bus_stats st0;
    eb_bus_stats_get(k->bus, &st0);
    /* Events of one publisher that can be accepted but not yet dispatched:
       the intake's entries, the events carried in batches (a budget of the
       same size), one held dispatch batch; plus slack. */
    k->churn_margin = 2 * (uint64_t)st0.intake_capacity + 1024;
    subscribe_all(k);

    unsigned nser = 0, nkey = 0, ncon = 0, nnest = 0;
    for (unsigned s = 0; s < k->nsubs; s++) {
        nser += k->subs[s].def.mode == EB_DELIVERY_SERIAL;
        nkey += k->subs[s].def.mode == EB_DELIVERY_KEYED;
        ncon += k->subs[s].def.mode == EB_DELIVERY_CONCURRENT;
        nnest += k->subs[s].def.nests;
    }
    double warm_s = k->duration_s / 4;
    if (warm_s < 3)
        warm_s = 3;
    if (warm_s > 60)
        warm_s = 60;
    fprintf(stderr,
            "soak: seed %" PRIu64 ", %.0f s, %u publishers, %u stable subscriptions (%u serial, "
            "%u keyed, %u concurrent; %u nesting), %u workers%s\n",
            k->seed, k->duration_s, k->npub, k->nsubs, nser, nkey, ncon, nnest, st0.workers,
            SOAK_SANITIZED ? ", sanitizer build" : "");

    /* Run. */
    pthread_t watchdog;
    if (pthread_create(&watchdog, NULL, watchdog_main, k) != 0) {
        fprintf(stderr, "soak: pthread_create failed\n");
        return 2;
    }
    atomic_store(&k->stage, "running");
    int64_t t0 = now_ns();
    k->rss[k->n_rss] = rss_bytes();
    k->rss_t[k->n_rss++] = 0;
    for (unsigned p = 0; p < k->npub; p++) {
        k->pubs[p].k = k;
        k->pubs[p].idx = p;
        if (pthread_create(&k->pubs[p].th, NULL, publisher_main, &k->pubs[p]) != 0) {
            fprintf(stderr, "soak: pthread_create failed\n");
            return 2;
        }
    }
    pthread_t churner;
    if (pthread_create(&churner, NULL, churner_main, k) != 0) {
        fprintf(stderr, "soak: pthread_create failed\n");
        return 2;
    }
    int64_t end = t0 + (int64_t)(k->duration_s * NS_PER_S);
    int64_t next_sample = t0 + NS_PER_S;
    int64_t next_progress = t0 + (int64_t)k->progress_s * NS_PER_S;
    double last_t = 0;
    uint64_t last_pub = 0;
    for (;;) {
        int64_t now = now_ns();
        if (now >= end)
            break;
        retire_all(k);
        if (now >= next_sample && k->n_rss < MAX_RSS_SAMPLES) {
            k->rss[k->n_rss] = rss_bytes();
            k->rss_t[k->n_rss++] = (double)(now - t0) / NS_PER_S;
            next_sample += NS_PER_S;
        }
        if (now >= next_progress) {
            progress_line(k, (double)(now - t0) / NS_PER_S, &last_t, &last_pub);
            next_progress += (int64_t)k->progress_s * NS_PER_S;
        }
        sleep_ns(50 * NS_PER_MS);
    }

    /* Stop publishing and churning, then let everything settle. */
    atomic_store(&k->stop, 1);
    atomic_store(&k->stage, "joining the publishers");
    for (unsigned p = 0; p < k->npub; p++)
        pthread_join(k->pubs[p].th, NULL);
    atomic_store(&k->stage, "joining the churn thread (unsubscribing)");
    pthread_join(churner, NULL);
    atomic_store(&k->stage, "waiting for the bus to settle");
    double run_s = (double)(now_ns() - t0) / NS_PER_S;
    eb_bus_stats st;
    bool settled = quiesce(k, &st);
    if (!settled)
        violation(k, V_HANG,
                  "the bus did not settle: published %" PRIu64 " dispatched %" PRIu64
                  " dead-lettered %" PRIu64 " intake %u lag %" PRIu64,
                  st.published, st.dispatched, st.dead_lettered, st.intake_depth, st.max_lag);
    k->rss[k->n_rss] = rss_bytes();
    k->rss_t[k->n_rss++] = (double)(now_ns() - t0) / NS_PER_S;
    retire_all(k);
    final_windows(k);
    final_counts(k, &st);
    for (unsigned i = 0; i < CHURN_RECS; i++)
        rec_fold(k, &k->recs[i], false);
    if (k->verbose) {
        fprintf(stderr, "soak: %-4s %-14s %-10s %3s %12s %8s %8s %8s\n", "sub", "pattern", "kind",
                "att", "ok calls", "retries", "dead", "nested");
        static const char *const kinds[] = {"serial", "keyed", "concurrent"};
        for (unsigned s = 0; s < k->nsubs; s++) {
            ssub *ss = &k->subs[s];
            fprintf(stderr,
                    "soak: %-4s %-14s %-10s %3u %12" PRIu64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64
                    "%s\n",
                    ss->name, ss->def.pattern, kinds[ss->def.mode], ss->def.attempts,
                    get(&ss->ok_calls), get(&ss->fail_calls) - get(&ss->dl_main) - get(&ss->n_dl),
                    get(&ss->dl_main) + get(&ss->n_dl), get(&ss->n_cnt),
                    ss->def.nests ? " nests" : "");
        }
    }

    /* Destroy: everything accepted was delivered already; the zero-copy
       payloads must all be freed once. */
    uint64_t ok_before = get(&k->ok_calls);
    atomic_store(&k->stage, "eb_bus_destroy");
    eb_bus_destroy(k->bus);
    atomic_store(&k->wd_bus, NULL);
    k->bus = NULL;
    atomic_store(&k->done, 1);
    pthread_join(watchdog, NULL);
    expect_eq(k, V_STATS, "handler calls during eb_bus_destroy", get(&k->ok_calls), ok_before);
    expect_eq(k, V_COUNTS, "zero-copy payloads freed", get(&g_zc_freed), get(&k->zc_accepted));

    /* RSS rule. */
    uint64_t rss_first = k->rss[0], rss_warm = 0, rss_max = 0, rss_end = k->rss[k->n_rss - 1];
    double warm_at = 0;
    unsigned after = 0;
    for (unsigned i = 0; i < k->n_rss; i++) {
        if (rss_warm == 0 && k->rss_t[i] >= warm_s) {
            rss_warm = k->rss[i];
            warm_at = k->rss_t[i];
            continue;
        }
        if (rss_warm != 0) {
            after++;
            if (k->rss[i] > rss_max)
                rss_max = k->rss[i];
        }
    }
    if (rss_warm == 0) {
        rss_warm = rss_end;
        warm_at = k->rss_t[k->n_rss - 1];
    }
    bool rss_ok = after == 0 || (double)rss_max <= (double)rss_warm + k->rss_slack_mib * 1048576.0;
    if (!rss_ok && !SOAK_SANITIZED)
        violation(k, V_RSS, "max RSS after warm-up %.1f MiB > %.1f MiB at warm-up + %.0f MiB",
                  mib(rss_max), mib(rss_warm), k->rss_slack_mib);

    /* Summary. */
    uint64_t main_acc = 0;
    for (unsigned p = 0; p < k->npub; p++)
        main_acc += atomic_load(&k->pubs[p].accepted);
    uint64_t vio = 0;
    for (int i = 0; i < V_N; i++)
        vio += get(&k->v[i]);
    uint64_t dl = get(&k->dl_callbacks);
    printf("soak: seed %" PRIu64 ", duration %.1f s (publishing %.1f s), %u publishers, %u stable "
           "subscriptions (%u serial, %u keyed, %u concurrent; %u nesting), %u workers%s\n",
           k->seed, k->duration_s, run_s, k->npub, k->nsubs, nser, nkey, ncon, nnest, st0.workers,
           SOAK_SANITIZED ? ", sanitizer build" : "");
    printf("  events published   %" PRIu64 " (%.0f/s): main %" PRIu64 " [publish %" PRIu64
           ", zero-copy %" PRIu64 ", batch %" PRIu64 " in %" PRIu64 " calls, wait %" PRIu64
           ", async %" PRIu64 "], nested %" PRIu64 "\n",
           st.published, (double)st.published / run_s, main_acc, get(&k->pub_single),
           get(&k->pub_zc), get(&k->pub_batch_events), get(&k->pub_batch_calls), get(&k->pub_wait),
           get(&k->pub_async), get(&k->nested_pub));
    printf("  deliveries         %" PRIu64 " handler calls returned 0 (bus: %" PRIu64 ")\n",
           get(&k->ok_calls), st.delivered);
    printf("  retries            %" PRIu64 " (bus: %" PRIu64 ")\n", get(&k->fail_calls) - dl,
           st.retried);
    printf("  dead letters       %" PRIu64 " callbacks, %" PRIu64
           " $deadletter events (bus: %" PRIu64 ")\n",
           dl, get(&k->dl_events), st.dead_lettered);
    printf("  nested publishes   %" PRIu64 " [fire %" PRIu64 ", wait %" PRIu64
           ", async+ticket %" PRIu64 ", batch %" PRIu64 "]; handler waits %" PRIu64
           ", EB_EDEADLK %" PRIu64 "\n",
           get(&k->nested_pub), get(&k->nested_fire), get(&k->nested_wait), get(&k->nested_async),
           get(&k->nested_batch), get(&k->handler_waits), get(&k->edeadlk));
    printf("  churn              %" PRIu64 " subscriptions, %" PRIu64 " unsubscribed (%" PRIu64
           " of these calls made from handlers%s), %" PRIu64 " deliveries (%" PRIu64
           " main, %" PRIu64 " past the tracking window)\n",
           get(&k->churn_subs), get(&k->churn_unsubs), get(&k->churn_from_handlers),
           k->handler_unsub ? "" : ", which only subscribe", get(&k->churn_calls),
           get(&k->churn_main_calls), get(&k->churn_untracked));
    printf("  results checked    %" PRIu64 " waited publishes; %" PRIu64 " main "
           "(event, stable subscription) pairs retired exactly once\n",
           get(&k->results_checked), k->retired_main);
    printf("  rss                %u samples: first %.1f MiB, after warm-up (%.0f s) %.1f MiB, "
           "max after warm-up %.1f MiB, end %.1f MiB; rule: max <= warm-up + %.0f MiB: %s\n",
           k->n_rss, mib(rss_first), warm_at, mib(rss_warm), mib(rss_max), mib(rss_end),
           k->rss_slack_mib,
           rss_ok ? "ok"
                  : (SOAK_SANITIZED ? "exceeded (not enforced: sanitizer build)" : "FAILED"));
    printf("  violations         %" PRIu64 "%s\n", vio, vio ? ":" : " (losses 0, duplicates 0)");
    for (int i = 0; i < V_N; i++)
        if (get(&k->v[i]))
            printf("    %-28s %" PRIu64 "\n", g_vname[i], get(&k->v[i]));
    printf("soak: %s\n", vio == 0 ? "PASS" : "FAIL");

    for (unsigned s = 0; s < k->nsubs; s++) {
        for (unsigned p = 0; p < k->npub; p++)
            free(k->subs[s].win[p].slots);
        free(k->subs[s].key_last_pseq);
    }
    for (unsigned i = 0; i < CHURN_RECS; i++)
        free(k->recs[i].bits);
    free(k);
    return vio == 0 ? 0 : 1;
}
