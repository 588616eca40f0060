/*
 * event — event blocks, reference counts, tickets and the magazine cache.
 *
 * Allocation without malloc per publish: each thread keeps one magazine (up
 * to EB__MAG_SIZE free blocks) per size class in thread-local storage.
 * Publishers pop blocks from theirs; the thread that drops the last reference
 * (usually a worker) pushes the block onto its own. A publisher whose
 * magazine is empty trades it at the bus's depot for a full one, a worker
 * whose magazine is full trades it for an empty one: one mutex acquisition per
 * 64 events. Blocks and magazines are plain heap memory of fixed sizes, so a
 * thread may cache blocks that came from any bus; a thread's cache is freed
 * when the thread exits (pthread key destructor), the depot's when its bus is
 * destroyed. The pthread key is the library's only process-wide state.
 *
 * Threads: the cache is thread-local; the depot is under its mutex (a leaf).
 */
#include "event.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Under AddressSanitizer a cached block is poisoned from its free until it is
   handed out again, so a use after the last reference is caught even though
   the memory never goes back to malloc. */
#if defined(__SANITIZE_ADDRESS__)
#define EB__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EB__ASAN 1
#endif
#endif
#ifdef EB__ASAN
#include <sanitizer/asan_interface.h>
#define BLOCK_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define BLOCK_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define BLOCK_POISON(p, n) ((void)(p), (void)(n))
#define BLOCK_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* Block sizes: header + topic + payload; class 0 fits a 64-byte payload with
   a long topic, class 2 a 4 KiB payload; the last class is the carriers'. */
static const size_t class_size[EB__CLASSES] = {448, 1536, 4096 + 640, EB__CARRIER_BLOCK};
/* Blocks a thread's magazine collects before it trades them in: fewer of the
   big carrier blocks, so that fewer of them sit idle in partly filled
   magazines (and a steady load needs fewer in all before it stops
   allocating). */
static const unsigned class_mag[EB__CLASSES] = {EB__MAG_SIZE, EB__MAG_SIZE, EB__MAG_SIZE,
                                                EB__BIG_MAG};

struct eb__mag {
    eb__mag *next;
    unsigned n;
    void *items[EB__MAG_SIZE];
};

typedef struct tcache {
    eb__mag *cur[EB__CLASSES];
    bool registered;
} tcache;

static __thread tcache tc __attribute__((tls_model("initial-exec")));
static pthread_key_t tc_key;
static pthread_once_t tc_once = PTHREAD_ONCE_INIT;

static void mag_free_all(eb__mag *m)
{
    while (m != NULL) {
        eb__mag *next = m->next;
        for (unsigned i = 0; i < m->n; i++)
            free(m->items[i]);
        free(m);
        m = next;
    }
}

static void tc_destroy(void *arg)
{
    tcache *c = arg;
    for (int i = 0; i < EB__CLASSES; i++) {
        mag_free_all(c->cur[i]);
        c->cur[i] = NULL;
    }
}

static void tc_key_init(void)
{
    pthread_key_create(&tc_key, tc_destroy);
}

static tcache *tc_get(void)
{
    if (!tc.registered) {
        pthread_once(&tc_once, tc_key_init);
        pthread_setspecific(tc_key, &tc);
        tc.registered = true;
    }
    return &tc;
}

void eb__depot_prefill(eb__depot *d, int cls, unsigned blocks)
{
    unsigned cap = class_mag[cls];
    for (unsigned made = 0; made < blocks; made += cap) {
        eb__mag *m = malloc(sizeof(*m));
        if (m == NULL)
            return; /* a cold cache only costs a few mallocs later */
        for (m->n = 0; m->n < cap; m->n++) {
            if ((m->items[m->n] = malloc(class_size[cls])) == NULL)
                break;
            BLOCK_POISON(m->items[m->n], class_size[cls]);
        }
        /* Only a magazine with blocks goes on the full list: block_take
           pops a block from whatever it finds there. Out of memory: stop
           prefilling. (Read before the depot has it: another thread may
           take it at once.) */
        bool short_of_memory = m->n < cap;
        pthread_mutex_lock(&d->lock);
        if (m->n == 0) {
            m->next = d->empty;
            d->empty = m;
        } else {
            m->next = d->full[cls];
            d->full[cls] = m;
        }
        pthread_mutex_unlock(&d->lock);
        if (short_of_memory)
            return;
    }
}

int eb__depot_init(eb__depot *d, unsigned prefill, unsigned spare_mags)
{
    memset(d, 0, sizeof(*d));
    if (pthread_mutex_init(&d->lock, NULL) != 0)
        return -1;
    /* Full magazines of class-0 blocks up front, so that publishing does not
       malloc while the number of events in flight is still growing towards
       its peak (it is bounded by the intake and mailbox capacities). */
    eb__depot_prefill(d, 0, prefill);
    /* Empty magazines for threads that free before they ever took a full
       one (workers) and for trading full ones in: otherwise each such
       thread's first free, and each new peak of magazines in use, is a
       malloc in the middle of a steady load. */
    for (unsigned i = 0; i < spare_mags; i++) {
        eb__mag *m = malloc(sizeof(*m));
        if (m == NULL)
            break; /* a cold cache only costs a few mallocs later */
        m->n = 0;
        m->next = d->empty;
        d->empty = m;
    }
    return 0;
}

void eb__depot_fini(eb__depot *d)
{
    for (int i = 0; i < EB__CLASSES; i++)
        mag_free_all(d->full[i]);
    mag_free_all(d->empty);
    pthread_mutex_destroy(&d->lock);
}

void eb__tcache_flush(eb__depot *d)
{
    tcache *c = tc_get();
    pthread_mutex_lock(&d->lock);
    for (int i = 0; i < EB__CLASSES; i++) {
        eb__mag *m = c->cur[i];
        c->cur[i] = NULL;
        if (m == NULL)
            continue;
        if (m->n == 0) {
            m->next = d->empty;
            d->empty = m;
        } else {
            m->next = d->full[i];
            d->full[i] = m;
        }
    }
    pthread_mutex_unlock(&d->lock);
}

static void *block_take(eb__depot *d, int cls)
{
    tcache *c = tc_get();
    eb__mag *m = c->cur[cls];
    if (m != NULL && m->n > 0)
        return m->items[--m->n];
    /* Trade the empty magazine for a full one. */
    pthread_mutex_lock(&d->lock);
    eb__mag *full = d->full[cls];
    if (full != NULL) {
        d->full[cls] = full->next;
        full->next = NULL; /* it is ours now, not a link into the depot */
        if (m != NULL) {
            m->next = d->empty;
            d->empty = m;
        }
        c->cur[cls] = full;
    }
    pthread_mutex_unlock(&d->lock);
    if (full != NULL)
        return full->items[--full->n];
    return malloc(class_size[cls]);
}

static void *block_alloc(eb__depot *d, int cls)
{
    void *p = block_take(d, cls);
    if (p != NULL)
        BLOCK_UNPOISON(p, class_size[cls]);
    return p;
}

/* d may be NULL (an event released after its bus was destroyed): then a
   full magazine is not traded but its newcomer freed. */
static void block_free(eb__depot *d, int cls, void *p)
{
    BLOCK_POISON(p, class_size[cls]);
    tcache *c = tc_get();
    eb__mag *m = c->cur[cls];
    if (m != NULL && m->n < class_mag[cls]) {
        m->items[m->n++] = p;
        return;
    }
    if (d == NULL) {
        if (m == NULL && (m = c->cur[cls] = calloc(1, sizeof(*m))) != NULL) {
            m->items[m->n++] = p;
            return;
        }
        free(p);
        return;
    }
    /* Trade the full magazine (if any) for an empty one. The depot keeps
       every full magazine: the blocks in it were all live events at once, so
       its size is bounded by the most events the bus ever held (intake and
       mailbox capacities), and dropping them would only make the publishers
       malloc them again. */
    pthread_mutex_lock(&d->lock);
    if (m != NULL) {
        m->next = d->full[cls];
        d->full[cls] = m;
    }
    eb__mag *e = d->empty;
    if (e != NULL)
        d->empty = e->next;
    pthread_mutex_unlock(&d->lock);
    if (e == NULL)
        e = malloc(sizeof(*e));
    if (e == NULL) {
        c->cur[cls] = NULL;
        free(p);
        return;
    }
    e->next = NULL;
    e->n = 0;
    e->items[e->n++] = p;
    c->cur[cls] = e;
}

/* How far ahead in a carrier eb__event_new prefetches for writing: about
   three events of 64 B (each takes three lines). */
#define PF_DIST 512
static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* The next events of a carrier go right behind b: have their lines on their
   way (the workers last read them, on another core). */
static void carrier_prefetch(const char *b)
{
    __builtin_prefetch(b + PF_DIST, 1);
    __builtin_prefetch(b + PF_DIST + 64, 1);
    __builtin_prefetch(b + PF_DIST + 128, 1);
}

size_t eb__event_size(size_t topic_len, size_t key_len, size_t len, bool with_ext)
{
    size_t off_ext = align16(sizeof(eb_event) + topic_len + 1 + key_len);
    return align16(off_ext + (with_ext ? align16(sizeof(eb__event_ext)) : 0) + len + 1);
}

eb__carrier *eb__carrier_new(eb__depot *d, size_t want)
{
    int cls = EB__CLASSES - 1;
    for (int i = 0; i < EB__CLASSES; i++) {
        if (want <= class_size[i]) {
            cls = i;
            break;
        }
    }
    eb__carrier *c = block_alloc(d, cls);
    if (c == NULL)
        return NULL;
    _Static_assert(EB__CARRIER_MAX <= 64, "eb__carrier.same has a bit per event");
    c->n = c->inl = 0;
    c->cls = (uint8_t)cls;
    c->keyed = false;
    c->same = 0;
    /* Inline events start on a cache line of their own. */
    c->used = EB__CARRIER_HEAD;
    atomic_init(&c->refs, 1);
    return c;
}

void eb__carrier_seal(eb__carrier *c)
{
    /* Nobody else has it yet: no read-modify-write needed. */
    atomic_store_explicit(&c->refs, 1 + c->inl, memory_order_relaxed);
}

void eb__carrier_unref(eb__depot *d, eb__carrier *c, unsigned n)
{
    /* acq_rel as in eb__event_unref: every holder's use of its inline
       events happens before the block is reused. */
    if (atomic_fetch_sub_explicit(&c->refs, n, memory_order_acq_rel) == n)
        block_free(d, c->cls, c);
}

eb_event *eb__event_new(eb_bus *bus, eb__depot *d, eb__carrier *in, const char *topic,
                        size_t topic_len, const void *key, size_t key_len, const void *payload,
                        size_t len, bool copy, bool with_ext, size_t extra)
{
    _Static_assert(offsetof(eb_event, topic) == 80, "the header keeps its 80 bytes");
    if (key == NULL)
        key_len = 0;
    size_t off_ext = align16(sizeof(eb_event) + topic_len + 1 + key_len);
    size_t off_extra = off_ext + (with_ext ? align16(sizeof(eb__event_ext)) : 0);
    size_t off_payload = align16(off_extra + extra);
    size_t total = off_payload + (copy ? len : 0) + 1;
    _Static_assert(EB__CARRIER_HEAD >= sizeof(eb__carrier), "EB__CARRIER_HEAD holds the header");
    char *b;
    int cls = -1;
    uint16_t flags = 0;
    if (in != NULL && copy && in->used + total <= class_size[in->cls]) {
        b = (char *)in + in->used;
        in->used += align16(total);
        carrier_prefetch(b);
        flags = EB__EV_INLINE | EB__EV_PACKED;
    } else {
        for (int i = 0; i < EB__EV_CLASSES; i++) {
            if (total <= class_size[i]) {
                cls = i;
                break;
            }
        }
        b = cls >= 0 ? block_alloc(d, cls) : malloc(total);
        if (b == NULL)
            return NULL;
        flags = cls >= 0 ? 0 : EB__EV_HEAP;
    }
    eb_event *ev = (eb_event *)b;
    /* Only what every event uses is written here; the dispatcher stamps
       seq, ts and id. */
    if (flags & EB__EV_INLINE) {
        ev->idx = (uint8_t)in->n;
        ev->off = (uint32_t)(b - (char *)in);
        in->inl++;
    } else {
        atomic_init(&ev->refs, 1);
    }
    ev->flags = flags;
    ev->cls = (uint8_t)(cls >= 0 ? cls : 0);
    ev->topic_len = (uint16_t)topic_len;
    ev->key_len = (uint16_t)key_len;
    ev->payload_len = len;
    ev->bus = bus;
    memcpy(ev->topic, topic, topic_len);
    ev->topic[topic_len] = '\0';
    if (key_len > 0)
        memcpy(ev->topic + topic_len + 1, key, key_len);
    ev->ext = NULL;
    if (with_ext) {
        ev->ext = (eb__event_ext *)(b + off_ext);
        memset(ev->ext, 0, sizeof(*ev->ext));
    }
    if (copy) {
        if (len > 0)
            memcpy(b + off_payload, payload, len);
        b[off_payload + len] = '\0';
        ev->payload = b + off_payload;
    } else {
        ev->payload = payload;
        ev->flags |= EB__EV_ZERO_COPY;
    }
    return ev;
}

eb_event *eb__event_repeat(eb__carrier *in, const eb_event *tmpl, const char *topic,
                           const void *payload, size_t len)
{
    size_t head = align16(sizeof(eb_event) + tmpl->topic_len + 1);
    size_t total = head + len + 1;
    if (in->used + total > class_size[in->cls])
        return NULL;
    char *b = (char *)in + in->used;
    in->used += align16(total);
    carrier_prefetch(b);
    eb_event *ev = (eb_event *)b;
    *ev = *tmpl;
    memcpy(ev->topic, topic, tmpl->topic_len + 1u);
    ev->idx = (uint8_t)in->n;
    ev->off = (uint32_t)(b - (char *)in);
    ev->payload_len = len;
    ev->payload = b + head;
    if (len > 0)
        memcpy(b + head, payload, len);
    b[head + len] = '\0';
    in->inl++;
    return ev;
}

void *eb__event_extra(eb_event *ev)
{
    size_t off_ext = align16(sizeof(eb_event) + ev->topic_len + 1 + ev->key_len);
    return (char *)ev + off_ext + (ev->ext != NULL ? align16(sizeof(eb__event_ext)) : 0);
}

void eb__event_unref(eb_event *ev, eb__depot *d)
{
    /* acq_rel: our writes to the event happen before its free (release), and
       the last holder sees every other holder's writes (acquire). The same
       single locked instruction on x86 as release + acquire fence, and
       ThreadSanitizer understands it (it does not model fences). */
    if (ev->flags & EB__EV_INLINE) {
        eb__carrier_put(d, eb__event_carrier(ev)); /* copied payload: nothing to free */
        return;
    }
    if (atomic_fetch_sub_explicit(&ev->refs, 1, memory_order_acq_rel) != 1)
        return;
    if ((ev->flags & EB__EV_ZERO_COPY) && ev->ext != NULL && ev->ext->payload_free != NULL)
        ev->ext->payload_free((void *)ev->payload);
    if (ev->flags & EB__EV_HEAP)
        free(ev);
    else
        block_free(d, ev->cls, ev);
}

static void make_id(uint8_t id[16], uint64_t seq, int64_t now_ns, uint64_t nonce)
{
    uint64_t ms = (uint64_t)(now_ns / 1000000);
    for (int i = 0; i < 6; i++)
        id[i] = (uint8_t)(ms >> (40 - 8 * i));
    /* 74 bits after the version/variant: 26 bits of nonce, 48 of seq. */
    uint32_t n26 = (uint32_t)(nonce & 0x3ffffff);
    id[6] = (uint8_t)(0x70 | ((n26 >> 22) & 0x0f));
    id[7] = (uint8_t)(n26 >> 14);
    id[8] = (uint8_t)(0x80 | ((n26 >> 8) & 0x3f));
    id[9] = (uint8_t)n26;
    for (int i = 0; i < 6; i++)
        id[10 + i] = (uint8_t)(seq >> (40 - 8 * i));
}

void eb__event_stamp(eb_event *ev, uint64_t seq, int64_t now_ns, uint64_t nonce)
{
    ev->seq = seq;
    if (ev->flags & EB__EV_LOGGED)
        return; /* keeps the id and time it was logged with */
    ev->ts_ns = now_ns;
    make_id(ev->id, seq, now_ns, nonce);
}

void eb__event_id(const eb_event *ev, uint8_t id[16])
{
    if (ev->flags & EB__EV_PACKED) {
        const eb__carrier *c = eb__event_carrier(ev);
        make_id(id, c->seq0 + ev->idx, c->ts_ns, c->nonce);
    } else {
        memcpy(id, ev->id, 16);
    }
}

void eb__event_track_init(eb_event *ev)
{
    eb__event_ext *x = ev->ext; /* the publisher allocated it with the event */
    ev->flags |= EB__EV_TRACKED;
    atomic_init(&x->counts, 1); /* the guard; see eb__event_ext */
    atomic_init(&x->failed, 0);
    atomic_init(&x->first_error, EB_OK);
    atomic_init(&x->deadlock, false);
    atomic_init(&x->waiter_worker, false);
    x->matched = 1; /* the usual case: see eb__event_ext */
    eb__ec_init(&x->done);
}

bool eb__event_finish(eb_event *ev, int rc, bool count)
{
    eb__event_ext *x = ev->ext;
    uint64_t delta = (uint64_t)-1; /* one delivery less (the guard: no delivery) */
    if (count && rc == EB_OK) {
        delta += UINT64_C(1) << 32; /* and one more delivered, in the same update */
    } else if (count) {
        int expected = EB_OK;
        atomic_fetch_add_explicit(&x->failed, 1, memory_order_relaxed);
        atomic_compare_exchange_strong_explicit(&x->first_error, &expected, rc,
                                                memory_order_relaxed, memory_order_relaxed);
    }
    /* Release: the counters above are visible to whoever sees no delivery
       remaining (eb__event_done's acquire). seq_cst: a worker waiter stores
       waiter_worker and then loads the counts; we update them and then the
       caller loads waiter_worker — one of the two sees the other (Dekker). */
    uint64_t old = atomic_fetch_add_explicit(&x->counts, delta, memory_order_seq_cst);
    if ((uint32_t)old != 1)
        return false;
    eb__ec_inc(&x->done);
    return true;
}

bool eb__event_done(const eb_event *ev)
{
    return (uint32_t)atomic_load_explicit(&ev->ext->counts, memory_order_acquire) == 0;
}

void eb__event_result(const eb_event *ev, eb_publish_result *out)
{
    const eb__event_ext *x = ev->ext;
    out->matched = x->matched;
    out->delivered = (uint32_t)(atomic_load_explicit(&x->counts, memory_order_relaxed) >> 32);
    out->failed = atomic_load_explicit(&x->failed, memory_order_relaxed);
    out->first_error = atomic_load_explicit(&x->first_error, memory_order_relaxed);
}

/* ---- public accessors ------------------------------------------------- */

EB_API const char *eb_event_topic(const eb_event *ev)
{
    return ev ? ev->topic : NULL;
}

EB_API const void *eb_event_payload(const eb_event *ev, size_t *len)
{
    if (len != NULL)
        *len = ev ? ev->payload_len : 0;
    if (ev == NULL)
        return NULL;
    return ev->payload != NULL ? ev->payload : "";
}

EB_API const void *eb_event_key(const eb_event *ev, size_t *len)
{
    if (len != NULL)
        *len = ev != NULL ? ev->key_len : 0;
    return ev != NULL ? eb__event_key(ev) : NULL;
}

EB_API uint64_t eb_event_log_seq(const eb_event *ev)
{
    return ev != NULL && (ev->flags & EB__EV_LOGGED) ? ev->ext->log_seq : 0;
}

EB_API uint64_t eb_event_seq(const eb_event *ev)
{
    return ev ? eb__event_seq(ev) : 0;
}

EB_API void eb_event_id(const eb_event *ev, uint8_t id[16])
{
    if (ev != NULL && id != NULL)
        eb__event_id(ev, id);
}

static bool copy_opt_id(const eb_event *ev, unsigned flag, const uint8_t *src, uint8_t id[16])
{
    if (id == NULL)
        return ev != NULL && (ev->flags & flag);
    if (ev == NULL || !(ev->flags & flag)) {
        memset(id, 0, 16);
        return false;
    }
    memcpy(id, src, 16);
    return true;
}

EB_API bool eb_event_correlation_id(const eb_event *ev, uint8_t id[16])
{
    return copy_opt_id(ev, EB__EV_CORR, ev && ev->ext ? ev->ext->corr : NULL, id);
}

EB_API bool eb_event_causation_id(const eb_event *ev, uint8_t id[16])
{
    return copy_opt_id(ev, EB__EV_CAUS, ev && ev->ext ? ev->ext->caus : NULL, id);
}

EB_API int64_t eb_event_timestamp(const eb_event *ev)
{
    return ev ? eb__event_ts(ev) : 0;
}

EB_API bool eb_event_deadletter_info(const eb_event *ev, eb_deadletter_info *info)
{
    if (ev == NULL || !(ev->flags & EB__EV_DEADLETTER))
        return false;
    if (info != NULL)
        *info = ev->ext->dl->info;
    return true;
}

EB_API const eb_event *eb_event_retain(const eb_event *ev)
{
    if (ev != NULL)
        eb__event_ref((eb_event *)ev, 1);
    return ev;
}
