/*
 * saga — the saga helper, aggregates with point-to-point commands, units of
 * work, and the in-memory saga store. Built on the public bus API only: a
 * saga or an aggregate type is one KEYED subscription, a scope is one
 * eb_publish_batch.
 *
 * Why one subscription each: lanes belong to a subscription, so two
 * subscriptions of one saga would put one instance's events on two lanes
 * that run concurrently. A saga therefore subscribes to the narrowest
 * pattern covering all its topics and filters the rest out itself.
 *
 * A saga delivery (on_saga_event, on a worker, one per instance at a time):
 *   load → (create via init) → transition on a private copy of the state →
 *   save state + outbox (the queued commands) with the expected version →
 *   publish the outbox → tell the store it was dispatched → remove if
 *   complete. Any failure before the publish returns the error and the bus
 *   retries the event; a failure of the publish leaves the saved outbox in
 *   the store and the retried event (recognised by its event id, stored
 *   with the record) publishes it again instead of running the transition
 *   twice.
 *
 * Threads: saga and aggregate handlers run on bus workers, concurrently for
 * different keys. The in-memory store and the aggregate tables are
 * Concurrency Kit hash sets (ck_hs) striped over 64 mutexes; a stripe lock is
 * a leaf lock (nothing is
 * called and no other lock is taken under it). The command registry has a
 * reader-writer lock, also a leaf. Lock order: none is ever nested. No user
 * callback and no bus call runs under a lock of ours.
 *
 * Hot path: a transition uses stack buffers for the state copy (up to
 * 512 bytes) and the outbox (up to 1 KiB) and allocates only beyond that;
 * the memory store copies into the record's existing buffers and grows its
 * outbox buffer only when a larger outbox comes. Counters are relaxed
 * atomics: they are statistics and publish nothing.
 */
#include "saga.h"

#include <ck_hs.h>

#include "bus.h" /* only to see whether the bus has a store (publish_flags) */
#include "route.h"
#include "sync.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EB__STATE_MAX ((size_t)1 << 20)
#define EB__STRIPES 64u
#define EB__INLINE_STATE 512
#define EB__INLINE_QUEUE 1024

/* ---------------------------------------------------------------------- */
/* Ids and hashing                                                         */
/* ---------------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Two FNV-1a lanes with different offsets, each length-prefixed per part
   so ("ab","c") and ("a","bc") differ, finalised with splitmix64. */
typedef struct hash2 {
    uint64_t a, b;
} hash2;

static void hash2_bytes(hash2 *h, const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t a = h->a ^ (uint64_t)n, b = h->b + (uint64_t)n;
    for (size_t i = 0; i < n; i++) {
        a = (a ^ s[i]) * 0x100000001b3ULL;
        b = (b ^ s[i]) * 0x100000001b3ULL + 0x9e3779b97f4a7c15ULL;
    }
    h->a = mix64(a);
    h->b = mix64(b ^ h->a);
}

static uint64_t hash64(const char *name, size_t name_len, const void *key, size_t key_len)
{
    hash2 h = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
    hash2_bytes(&h, name, name_len);
    hash2_bytes(&h, key, key_len);
    return h.a;
}

void eb__saga_id(const char *name, const void *key, size_t key_len, bool with_seq,
                 uint64_t transition, uint32_t position, uint8_t id[16])
{
    hash2 h = {0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL};
    hash2_bytes(&h, name, strlen(name));
    hash2_bytes(&h, key, key_len);
    if (with_seq) {
        unsigned char seq[12];
        memcpy(seq, &transition, 8);
        memcpy(seq + 8, &position, 4);
        hash2_bytes(&h, seq, sizeof(seq));
    }
    memcpy(id, &h.a, 8);
    memcpy(id + 8, &h.b, 8);
    /* RFC 9562 version 8 (custom) and variant 10: the ids are UUID-shaped
       like the bus's own v7 event ids, and cannot collide with them. */
    id[6] = (uint8_t)((id[6] & 0x0f) | 0x80);
    id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
}

void eb__saga_tag_init(eb__saga_tag *t, const char *name, const void *key, size_t key_len,
                       const uint8_t start[16])
{
    hash2 h = {0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL};
    hash2_bytes(&h, name, strlen(name));
    hash2_bytes(&h, key, key_len);
    uint64_t s0, s1;
    memcpy(&s0, start, 8);
    memcpy(&s1, start + 8, 8);
    t->a = h.a;
    t->b = h.b;
    t->tag = mix64(s0 ^ mix64(s1 ^ h.a)) & 0xffffffffffffULL;
    t->check = (uint16_t)mix64(t->tag ^ h.b);
}

void eb__saga_command_id(const eb__saga_tag *t, uint64_t transition, uint32_t position,
                         uint8_t id[16])
{
    uint64_t x = mix64(t->a ^ mix64(t->tag ^ mix64(transition ^ ((uint64_t)position << 40) ^
                                                   0x243f6a8885a308d3ULL)));
    uint64_t tag = t->tag; /* little-endian bytes 0-5, like the check's 14-15 */
    for (int i = 0; i < 6; i++)
        id[i] = (uint8_t)(tag >> (8 * i));
    memcpy(id + 6, &x, 8);
    id[14] = (uint8_t)t->check;
    id[15] = (uint8_t)(t->check >> 8);
    id[6] = (uint8_t)((id[6] & 0x0f) | 0x80);
    id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
}

bool eb__saga_tag_of(const eb__saga_tag *t, const uint8_t id[16], uint64_t *tag)
{
    if ((id[6] & 0xf0) != 0x80 || (id[8] & 0xc0) != 0x80)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < 6; i++)
        v |= (uint64_t)id[i] << (8 * i);
    uint16_t check = (uint16_t)mix64(v ^ t->b);
    if (id[14] != (uint8_t)check || id[15] != (uint8_t)(check >> 8))
        return false;
    *tag = v;
    return true;
}

/* ---------------------------------------------------------------------- */
/* Topic patterns                                                          */
/* ---------------------------------------------------------------------- */

typedef struct word {
    const char *p;
    size_t n;
} word;

/* A topic of EB_TOPIC_MAX bytes has up to EB_TOPIC_MAX + 1 words (all
   dots: every word empty). */
#define EB__WORDS_MAX (EB_TOPIC_MAX + 1)

/* Splits s into words; "" has zero words. Returns the count, or -1 if s
   is longer than EB_TOPIC_MAX (then it has at most 128 words). */
static int split_words(const char *s, word w[EB__WORDS_MAX])
{
    size_t len = strlen(s);
    if (len > EB_TOPIC_MAX)
        return -1;
    if (len == 0)
        return 0;
    int n = 0;
    const char *start = s;
    for (const char *c = s;; c++) {
        if (*c == '.' || *c == '\0') {
            w[n].p = start;
            w[n].n = (size_t)(c - start);
            n++;
            if (*c == '\0')
                break;
            start = c + 1;
        }
    }
    return n;
}

static bool word_is(const word *w, char c)
{
    return w->n == 1 && w->p[0] == c;
}

bool eb__topic_match(const char *pattern, const char *topic)
{
    /* The routing table's own matcher (fuzzed against a reference one),
       with its length limits (saga.h). */
    return eb_topic_matches(pattern, topic) == 1;
}

int eb__cover_pattern(const char *const *patterns, size_t n, char *out)
{
    if (patterns == NULL || n == 0)
        return EB_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (patterns[i] == NULL || strlen(patterns[i]) > EB_TOPIC_MAX)
            return EB_EINVAL;
    bool same = true;
    for (size_t i = 1; i < n && same; i++)
        same = strcmp(patterns[i], patterns[0]) == 0;
    if (same) {
        strcpy(out, patterns[0]);
        return EB_OK;
    }
    word w0[EB__WORDS_MAX];
    int common = split_words(patterns[0], w0);
    for (size_t i = 1; i < n; i++) {
        word wi[EB__WORDS_MAX];
        int ni = split_words(patterns[i], wi), k = 0;
        while (k < common && k < ni && w0[k].n == wi[k].n && memcmp(w0[k].p, wi[k].p, wi[k].n) == 0)
            k++;
        common = k;
    }
    /* Only literal words may lead: a wildcard ends the prefix. */
    int k = 0;
    while (k < common && !word_is(&w0[k], '*') && !word_is(&w0[k], '#'))
        k++;
    /* A bare "#" never reaches a reserved topic (first word "$..."): such a
       pattern is covered only if all of them share that first word. */
    for (size_t i = 0; i < n && k == 0; i++)
        if (patterns[i][0] == '$')
            return EB_EINVAL;
    size_t len = 0;
    for (int i = 0; i < k; i++) {
        memcpy(out + len, w0[i].p, w0[i].n);
        len += w0[i].n;
        out[len++] = '.';
    }
    /* prefix + "#" is at most as long as the longest pattern + 1 word. */
    if (len + 2 > EB_TOPIC_MAX + 1)
        return EB_EINVAL;
    out[len++] = '#';
    out[len] = '\0';
    return EB_OK;
}

static bool match_any(char *const *patterns, size_t n, const char *topic)
{
    for (size_t i = 0; i < n; i++)
        if (eb__topic_match(patterns[i], topic))
            return true;
    return false;
}

/* Copies n C strings into one allocation: an array of pointers followed by
   the bytes. NULL if out of memory. */
static char **copy_strings(const char *const *s, size_t n)
{
    size_t bytes = n * sizeof(char *);
    for (size_t i = 0; i < n; i++)
        bytes += strlen(s[i]) + 1;
    char **v = malloc(bytes);
    if (v == NULL)
        return NULL;
    char *p = (char *)(v + n);
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(s[i]) + 1;
        memcpy(p, s[i], l);
        v[i] = p;
        p += l;
    }
    return v;
}

static bool topic_ok(const char *topic)
{
    return topic != NULL && strlen(topic) <= EB_TOPIC_MAX;
}

/* A topic a caller may publish (send, emit, schedule): outside $deadletter,
   which eb_publish refuses; checked before anything is saved. */
static bool publish_topic_ok(const char *topic)
{
    return topic_ok(topic) && !eb__topic_is_deadletter(topic, strlen(topic));
}

static bool name_ok(const char *name)
{
    return name != NULL && name[0] != '\0' && strlen(name) <= EB_NAME_MAX;
}

/* ---------------------------------------------------------------------- */
/* Message queue: the outbox and the emit/scope buffers                    */
/* ---------------------------------------------------------------------- */

/*
 * A queue is one byte string of entries: a header, then the topic with its
 * NUL, the key, the payload, padded to 8 bytes. The same bytes are the
 * saga's outbox as the store keeps it, so the SQLite store can save them in
 * the state's transaction without knowing their layout.
 */
typedef struct qhdr {
    uint8_t id[16];
    int64_t delay_ns;
    uint64_t payload_len;
    uint32_t topic_len;
    uint32_t key_len;
} qhdr;

typedef struct qbuf {
    unsigned char *p;
    size_t len, cap;
    unsigned char *inl; /* caller's inline storage (not freed), or NULL */
    size_t n;           /* entries */
} qbuf;

static void qbuf_init(qbuf *q, void *inl, size_t cap)
{
    q->p = inl;
    q->inl = inl;
    q->len = 0;
    q->cap = inl != NULL ? cap : 0;
    q->n = 0;
}

static void qbuf_fini(qbuf *q)
{
    if (q->p != q->inl)
        free(q->p);
    qbuf_init(q, q->inl, 0);
}

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* States are handed to user code as structs: keep them max-aligned. */
static size_t pad_max(size_t n)
{
    return (n + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
}

static int qbuf_push(qbuf *q, const uint8_t id[16], int64_t delay_ns, const char *topic,
                     const void *payload, size_t len, const void *key, size_t key_len)
{
    size_t tl = strlen(topic);
    size_t need = sizeof(qhdr) + pad8(tl + 1 + key_len + len);
    if (q->len + need > q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        while (cap < q->len + need)
            cap *= 2;
        unsigned char *p = malloc(cap);
        if (p == NULL)
            return EB_ENOMEM;
        if (q->len > 0)
            memcpy(p, q->p, q->len);
        if (q->p != q->inl)
            free(q->p);
        q->p = p;
        q->cap = cap;
    }
    qhdr h;
    memset(&h, 0, sizeof(h));
    if (id != NULL)
        memcpy(h.id, id, 16);
    h.delay_ns = delay_ns;
    h.payload_len = len;
    h.topic_len = (uint32_t)tl;
    h.key_len = (uint32_t)key_len;
    unsigned char *e = q->p + q->len;
    memcpy(e, &h, sizeof(h));
    e += sizeof(h);
    memcpy(e, topic, tl + 1);
    e += tl + 1;
    if (key_len > 0)
        memcpy(e, key, key_len);
    e += key_len;
    if (len > 0)
        memcpy(e, payload, len);
    e += len;
    /* Zero the padding: these bytes are stored (the SQLite store writes the
       outbox to its file) and must not carry stale stack or heap bytes. */
    memset(e, 0, (size_t)(q->p + q->len + need - e));
    q->len += need;
    q->n++;
    return EB_OK;
}

/* One decoded entry; the pointers point into the queue bytes. */
typedef struct qent {
    qhdr h;
    const char *topic;
    const void *key;
    const void *payload;
} qent;

/* Decodes the entry at *off and advances it; false at the end or on bytes
   that are not a well-formed queue (a store returning foreign data). */
static bool qbuf_next(const unsigned char *p, size_t len, size_t *off, qent *e)
{
    if (*off + sizeof(qhdr) > len)
        return false;
    memcpy(&e->h, p + *off, sizeof(qhdr));
    size_t body = (size_t)e->h.topic_len + 1 + e->h.key_len + e->h.payload_len;
    if (e->h.topic_len > EB_TOPIC_MAX || e->h.key_len > 255 || body > len - *off - sizeof(qhdr))
        return false;
    const unsigned char *b = p + *off + sizeof(qhdr);
    if (b[e->h.topic_len] != '\0')
        return false;
    e->topic = (const char *)b;
    e->key = e->h.key_len ? b + e->h.topic_len + 1 : NULL;
    e->payload = b + e->h.topic_len + 1 + e->h.key_len;
    *off += sizeof(qhdr) + pad8(body);
    return true;
}

/* ---------------------------------------------------------------------- */
/* Striped tables                                                          */
/* ---------------------------------------------------------------------- */

/*
 * The store and the aggregates keep their nodes in EB__STRIPES stripes, each
 * a Concurrency Kit hash set (ck_hs) under the stripe's mutex: one thread at
 * a time per stripe, so ck_hs's single-writer mode is enough and memory is
 * freed at once. Every node starts with an hkey whose bytes (a, then b) live
 * in the node; a lookup passes an hkey that points at the caller's bytes.
 */
typedef struct hkey {
    unsigned long hash;
    const unsigned char *a;
    size_t a_len;
    const unsigned char *b;
    size_t b_len;
} hkey;

typedef struct stripe {
    pthread_mutex_t lock;
    ck_hs_t hs; /* protected by lock */
} stripe;

static unsigned long hkey_hash(const void *k, unsigned long seed)
{
    (void)seed;
    return ((const hkey *)k)->hash;
}

static bool hkey_eq(const void *x, const void *y)
{
    const hkey *p = x, *q = y;
    return p->hash == q->hash && p->a_len == q->a_len && p->b_len == q->b_len &&
           (p->a_len == 0 || memcmp(p->a, q->a, p->a_len) == 0) &&
           (p->b_len == 0 || memcmp(p->b, q->b, p->b_len) == 0);
}

static int stripes_init(stripe *st, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (pthread_mutex_init(&st[i].lock, NULL) != 0)
            goto fail;
        if (!ck_hs_init(&st[i].hs, CK_HS_MODE_SPMC | CK_HS_MODE_OBJECT, hkey_hash, hkey_eq,
                        &eb__ck_malloc, 16, 0)) {
            pthread_mutex_destroy(&st[i].lock);
            goto fail;
        }
        continue;
    fail:
        while (i-- > 0) {
            ck_hs_destroy(&st[i].hs);
            pthread_mutex_destroy(&st[i].lock);
        }
        return EB_ENOMEM;
    }
    return EB_OK;
}

/* Frees every node with free_node, then the stripes. */
static void stripes_fini(stripe *st, unsigned n, void (*free_node)(void *))
{
    for (unsigned i = 0; i < n; i++) {
        ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
        void *node;
        while (ck_hs_next(&st[i].hs, &it, &node))
            free_node(node);
        ck_hs_destroy(&st[i].hs);
        pthread_mutex_destroy(&st[i].lock);
    }
}

/* The caller holds the stripe lock for these three. */
static void *stripe_get(stripe *st, const hkey *k)
{
    return ck_hs_get(&st->hs, k->hash, k);
}

static int stripe_put(stripe *st, void *node)
{
    const hkey *k = node;
    return ck_hs_put(&st->hs, k->hash, node) ? EB_OK : EB_ENOMEM;
}

static void stripe_del(stripe *st, const hkey *k)
{
    ck_hs_remove(&st->hs, k->hash, k);
}

/* ---------------------------------------------------------------------- */
/* In-memory saga store                                                    */
/* ---------------------------------------------------------------------- */

typedef struct ms_node {
    hkey k; /* first: a = saga name, b = key, both in data */
    uint64_t version;
    bool completed;
    uint8_t event_id[16], start_id[16];
    unsigned char *outbox; /* malloc'ed; outbox_cap bytes, outbox_len used */
    size_t outbox_len, outbox_cap;
    size_t name_len, key_len, state_size;
    unsigned char *state; /* points into data, after name and key (max-aligned) */
    max_align_t data[];   /* bytes: name, key, padding, state */
} ms_node;

typedef struct memstore {
    eb_saga_store base; /* first: the vtable pointer is the store pointer */
    stripe stripes[EB__STRIPES];
} memstore;

/* The caller holds st's lock. */
static ms_node *ms_find(stripe *st, uint64_t hash, const char *name, size_t name_len,
                        const void *key, size_t key_len)
{
    hkey k = {.hash = (unsigned long)hash,
              .a = (const unsigned char *)name,
              .a_len = name_len,
              .b = key,
              .b_len = key_len};
    return stripe_get(st, &k);
}

static int ms_set_outbox(ms_node *n, const eb_saga_record *rec)
{
    if (rec->outbox_len > n->outbox_cap) {
        unsigned char *p = malloc(rec->outbox_len);
        if (p == NULL)
            return EB_ENOMEM;
        free(n->outbox);
        n->outbox = p;
        n->outbox_cap = rec->outbox_len;
    }
    if (rec->outbox_len > 0)
        memcpy(n->outbox, rec->outbox, rec->outbox_len);
    n->outbox_len = rec->outbox_len;
    return EB_OK;
}

static stripe *ms_stripe_of(eb_saga_store *s, uint64_t hash)
{
    return &((memstore *)s)->stripes[hash & (EB__STRIPES - 1)];
}

/* Locks the stripe of (saga, key) and finds its node (NULL if none). The
   caller unlocks the returned stripe. */
static stripe *ms_lock_find(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                            ms_node **node)
{
    size_t nl = strlen(saga);
    uint64_t h = hash64(saga, nl, key, key_len);
    stripe *st = ms_stripe_of(s, h);
    pthread_mutex_lock(&st->lock);
    *node = ms_find(st, h, saga, nl, key, key_len);
    return st;
}

static int ms_load(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                   eb_saga_record *rec)
{
    int rc = EB_OK;
    void *outbox = NULL;
    ms_node *n;
    stripe *st = ms_lock_find(s, saga, key, key_len, &n);
    if (n == NULL) {
        rc = EB_ENOENT;
    } else if (n->state_size != rec->state_size) {
        rc = EB_EINVAL;
    } else {
        if (n->outbox_len > 0 && (outbox = malloc(n->outbox_len)) == NULL) {
            rc = EB_ENOMEM;
        } else {
            if (outbox != NULL)
                memcpy(outbox, n->outbox, n->outbox_len);
            memcpy(rec->state, n->state, n->state_size);
            rec->version = n->version;
            rec->completed = n->completed;
            memcpy(rec->event_id, n->event_id, 16);
            memcpy(rec->start_id, n->start_id, 16);
            rec->outbox = outbox;
            rec->outbox_len = outbox != NULL ? n->outbox_len : 0;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

static int ms_create(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                     const eb_saga_record *rec)
{
    size_t nl = strlen(saga);
    uint64_t h = hash64(saga, nl, key, key_len);
    stripe *st = ms_stripe_of(s, h);
    /* Allocated before the lock: the stripe is held only to look and link. */
    ms_node *n = calloc(1, sizeof(*n) + pad_max(nl + key_len) + rec->state_size);
    if (n == NULL)
        return EB_ENOMEM;
    n->k = (hkey){.hash = (unsigned long)h,
                  .a = (const unsigned char *)n->data,
                  .a_len = nl,
                  .b = (const unsigned char *)n->data + nl,
                  .b_len = key_len};
    n->name_len = nl;
    n->key_len = key_len;
    n->state_size = rec->state_size;
    memcpy(n->data, saga, nl);
    if (key_len > 0)
        memcpy((unsigned char *)n->data + nl, key, key_len);
    n->state = (unsigned char *)n->data + pad_max(nl + key_len);
    if (rec->state_size > 0)
        memcpy(n->state, rec->state, rec->state_size);
    n->version = rec->version;
    n->completed = rec->completed;
    memcpy(n->event_id, rec->event_id, 16);
    memcpy(n->start_id, rec->start_id, 16);
    if (ms_set_outbox(n, rec) != EB_OK) {
        free(n);
        return EB_ENOMEM;
    }
    pthread_mutex_lock(&st->lock);
    if (ms_find(st, h, saga, nl, key, key_len) != NULL) {
        pthread_mutex_unlock(&st->lock);
        free(n->outbox);
        free(n);
        return EB_EEXIST;
    }
    int rc = stripe_put(st, n);
    pthread_mutex_unlock(&st->lock);
    if (rc != EB_OK) {
        free(n->outbox);
        free(n);
    }
    return rc;
}

static int ms_save(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                   uint64_t expected_version, const eb_saga_record *rec)
{
    int rc = EB_OK;
    ms_node *n;
    stripe *st = ms_lock_find(s, saga, key, key_len, &n);
    if (n == NULL) {
        rc = EB_ENOENT;
    } else if (n->version != expected_version) {
        rc = EB_ECONFLICT;
    } else if (n->state_size != rec->state_size) {
        rc = EB_EINVAL;
    } else if ((rc = ms_set_outbox(n, rec)) == EB_OK) {
        if (n->state_size > 0)
            memcpy(n->state, rec->state, n->state_size);
        n->version = rec->version;
        n->completed = rec->completed;
        memcpy(n->event_id, rec->event_id, 16);
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

static int ms_remove(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                     uint64_t expected_version)
{
    ms_node *gone = NULL;
    int rc = EB_OK;
    ms_node *n;
    stripe *st = ms_lock_find(s, saga, key, key_len, &n);
    if (n == NULL) {
        rc = EB_ENOENT;
    } else if (n->version != expected_version) {
        rc = EB_ECONFLICT;
    } else {
        stripe_del(st, &n->k);
        gone = n;
    }
    pthread_mutex_unlock(&st->lock);
    if (gone != NULL) {
        free(gone->outbox);
        free(gone);
    }
    return rc;
}

static int ms_dispatched(eb_saga_store *s, const char *saga, const void *key, size_t key_len,
                         uint64_t version)
{
    int rc = EB_OK;
    ms_node *n;
    stripe *st = ms_lock_find(s, saga, key, key_len, &n);
    if (n == NULL)
        rc = EB_ENOENT;
    else if (n->version != version)
        rc = EB_ECONFLICT;
    else
        n->outbox_len = 0; /* the buffer stays for the next outbox */
    pthread_mutex_unlock(&st->lock);
    return rc;
}

static void ms_node_free(void *p)
{
    ms_node *n = p;
    free(n->outbox);
    free(n);
}

static void ms_destroy(eb_saga_store *s)
{
    memstore *m = (memstore *)s;
    stripes_fini(m->stripes, EB__STRIPES, ms_node_free);
    free(m);
}

EB_API int eb_saga_memory_store_create(eb_saga_store **out)
{
    if (out == NULL)
        return EB_EINVAL;
    memstore *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return EB_ENOMEM;
    if (stripes_init(m->stripes, EB__STRIPES) != EB_OK) {
        free(m);
        return EB_ENOMEM;
    }
    m->base.load = ms_load;
    m->base.create = ms_create;
    m->base.save = ms_save;
    m->base.remove = ms_remove;
    m->base.dispatched = ms_dispatched;
    m->base.destroy = ms_destroy;
    *out = &m->base;
    return EB_OK;
}

EB_API void eb_saga_store_destroy(eb_saga_store *store)
{
    if (store != NULL && store->destroy != NULL)
        store->destroy(store);
}

/* ---------------------------------------------------------------------- */
/* Command bus (registry)                                                  */
/* ---------------------------------------------------------------------- */

typedef struct cmd_route {
    char *topic;       /* owned */
    eb_aggregate *agg; /* owner */
    bool ready;        /* false while the owner is still subscribing */
} cmd_route;

struct eb_command_bus {
    eb_bus *bus;
    pthread_rwlock_t lock;
    cmd_route *routes;  /* protected by lock; few topics, scanned linearly */
    size_t n, cap;      /* protected by lock */
    eb_aggregate *aggs; /* protected by lock: registered aggregate types */
    /* Fresh command ids: a per-command-bus counter, mixed with the address
       and creation time so two command buses (or runs) differ. Relaxed:
       only uniqueness matters, fetch_add gives it. */
    _Atomic uint64_t next_cmd;
    uint64_t seed;
};

/* True if an aggregate is ready for topic. */
static bool cmd_routed(eb_command_bus *cb, const char *topic)
{
    bool found = false;
    pthread_rwlock_rdlock(&cb->lock);
    for (size_t i = 0; i < cb->n && !found; i++)
        found = cb->routes[i].ready && strcmp(cb->routes[i].topic, topic) == 0;
    pthread_rwlock_unlock(&cb->lock);
    return found;
}

EB_API int eb_command_bus_create(eb_bus *bus, eb_command_bus **out)
{
    if (bus == NULL || out == NULL)
        return EB_EINVAL;
    eb_command_bus *cb = calloc(1, sizeof(*cb));
    if (cb == NULL)
        return EB_ENOMEM;
    if (pthread_rwlock_init(&cb->lock, NULL) != 0) {
        free(cb);
        return EB_ENOMEM;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    cb->bus = bus;
    cb->seed = mix64((uint64_t)(uintptr_t)cb ^
                     mix64((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec));
    atomic_init(&cb->next_cmd, 0);
    *out = cb;
    return EB_OK;
}

EB_API int eb_command_send(eb_command_bus *cb, const char *topic, const void *payload, size_t len,
                           const eb_publish_options *opts)
{
    if (cb == NULL || !publish_topic_ok(topic) || opts == NULL || opts->key == NULL ||
        opts->key_len == 0)
        return EB_EINVAL;
    if (!cmd_routed(cb, topic))
        return EB_ENOENT;
    eb_publish_options o = *opts;
    uint8_t id[16];
    if (o.causation_id == NULL) {
        uint64_t n = atomic_fetch_add_explicit(&cb->next_cmd, 1, memory_order_relaxed);
        uint64_t a = mix64(cb->seed ^ n), b = mix64(a ^ cb->seed ^ 0x5851f42d4c957f2dULL);
        memcpy(id, &a, 8);
        memcpy(id + 8, &b, 8);
        id[6] = (uint8_t)((id[6] & 0x0f) | 0x80);
        id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
        o.causation_id = id;
    }
    return eb_publish(cb->bus, topic, payload, len, &o);
}

EB_API bool eb_command_id(const eb_event *ev, uint8_t id[16])
{
    return eb_event_causation_id(ev, id);
}

/* ---------------------------------------------------------------------- */
/* Sagas                                                                   */
/* ---------------------------------------------------------------------- */

struct eb_saga {
    eb_bus *bus;
    eb_subscription *sub;
    eb_saga_store *store;
    bool own_store;
    eb_command_bus *commands;
    eb_saga_on_complete on_complete;
    eb_saga_key_fn key_fn;
    eb_saga_init_fn init;
    eb_saga_transition_fn transition;
    void *ctx;
    size_t state_size;
    char *name;
    char **topics;
    size_t n_topics;
    char **starts;
    size_t n_starts;
    unsigned publish_flags;
    /* Statistics, relaxed: nothing is published through them. */
    _Atomic uint64_t transitions, started, completed, ignored, conflicts, failures, sent,
        redispatched;
};

struct eb_saga_ctx {
    eb_saga *saga;
    const void *key;
    size_t key_len;
    uint64_t number; /* the transition number once saved */
    bool is_new;
    bool complete;
    const uint8_t *start; /* the record's start id; NULL if it has none */
    bool tagged;          /* tag was computed from start (on the first command) */
    eb__saga_tag tag;
    qbuf q;
};

static void count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

EB_API void eb_saga_options_init(eb_saga_options *opts)
{
    if (opts != NULL)
        memset(opts, 0, sizeof(*opts));
}

static int saga_queue(eb_saga_ctx *sc, int64_t delay_ns, const char *topic, const void *payload,
                      size_t len, const void *key, size_t key_len)
{
    uint8_t id[16];
    if (sc->start != NULL && !sc->tagged) {
        eb__saga_tag_init(&sc->tag, sc->saga->name, sc->key, sc->key_len, sc->start);
        sc->tagged = true;
    }
    if (sc->start != NULL)
        eb__saga_command_id(&sc->tag, sc->number, (uint32_t)sc->q.n, id);
    else
        eb__saga_id(sc->saga->name, sc->key, sc->key_len, true, sc->number, (uint32_t)sc->q.n, id);
    return qbuf_push(&sc->q, id, delay_ns, topic, payload, len, key, key_len);
}

EB_API int eb_saga_send(eb_saga_ctx *sc, const char *topic, const void *payload, size_t len,
                        const void *key, size_t key_len)
{
    if (sc == NULL || !publish_topic_ok(topic) || (payload == NULL && len > 0) || key == NULL ||
        key_len == 0 || key_len > 255)
        return EB_EINVAL;
    if (sc->saga->commands != NULL && !cmd_routed(sc->saga->commands, topic))
        return EB_ENOENT;
    return saga_queue(sc, 0, topic, payload, len, key, key_len);
}

EB_API int eb_saga_publish(eb_saga_ctx *sc, const char *topic, const void *payload, size_t len,
                           const void *key, size_t key_len)
{
    if (sc == NULL || !publish_topic_ok(topic) || (payload == NULL && len > 0) || key_len > 255 ||
        (key == NULL && key_len > 0))
        return EB_EINVAL;
    return saga_queue(sc, 0, topic, payload, len, key, key_len);
}

EB_API int eb_saga_schedule_timeout(eb_saga_ctx *sc, int64_t delay_ns, const char *topic,
                                    const void *payload, size_t len)
{
    if (sc == NULL || delay_ns <= 0 || !publish_topic_ok(topic) || (payload == NULL && len > 0))
        return EB_EINVAL;
    return saga_queue(sc, delay_ns, topic, payload, len, sc->key, sc->key_len);
}

EB_API void eb_saga_complete(eb_saga_ctx *sc)
{
    if (sc != NULL)
        sc->complete = true;
}

EB_API const void *eb_saga_key(const eb_saga_ctx *sc, size_t *len)
{
    if (len != NULL)
        *len = sc != NULL ? sc->key_len : 0;
    return sc != NULL ? sc->key : NULL;
}

EB_API uint64_t eb_saga_transition_number(const eb_saga_ctx *sc)
{
    return sc != NULL ? sc->number : 0;
}

EB_API bool eb_saga_is_new(const eb_saga_ctx *sc)
{
    return sc != NULL && sc->is_new;
}

/* Whether ev was sent by (or in reply to) an instance of s: its event key
   is an instance key and its correlation id that instance's id. */
static bool is_own_event(const eb_saga *s, const eb_event *ev)
{
    size_t kl;
    const void *k = eb_event_key(ev, &kl);
    uint8_t corr[16], inst[16];
    if (k == NULL || kl == 0 || !eb_event_correlation_id(ev, corr))
        return false;
    eb__saga_id(s->name, k, kl, false, 0, 0, inst);
    return memcmp(corr, inst, 16) == 0;
}

static bool is_zero16(const uint8_t b[16])
{
    static const uint8_t zero[16];
    return memcmp(b, zero, 16) == 0;
}

/* Whether an event of the saga's own (is_own_event) was sent by an earlier
   instance of its key than the one whose start id is start: a timeout or
   an event its removed predecessor queued. Its causation id is then a
   command id of this key with another tag. A record without a start id
   (written before start ids) cannot tell, nor can ids of such records: those
   events reach the instance, as they always did. */
static bool from_predecessor(const eb_saga *s, const eb_event *ev, const void *key, size_t key_len,
                             const uint8_t start[16])
{
    uint8_t cause[16];
    /* Most own events are replies, caused by a bus event id (version 7). */
    if (!eb_event_causation_id(ev, cause) || (cause[6] & 0xf0) != 0x80 || is_zero16(start))
        return false;
    eb__saga_tag now;
    eb__saga_tag_init(&now, s->name, key, key_len, start);
    uint64_t tag;
    return eb__saga_tag_of(&now, cause, &tag) && tag != now.tag;
}

EB_API void eb_saga_instance_id(const eb_saga_ctx *sc, uint8_t id[16])
{
    if (sc != NULL && id != NULL)
        eb__saga_id(sc->saga->name, sc->key, sc->key_len, false, 0, 0, id);
}

/*
 * Publishes an outbox in order: each entry on its own, because its
 * causation id (its command id) is its own and eb_publish_batch applies one
 * set of ids to the whole batch. Blocking publishes: from a handler the bus
 * returns EB_EDEADLK rather than hang, and the retry comes back here.
 */
static int saga_dispatch(eb_saga *s, const void *key, size_t key_len, const unsigned char *q,
                         size_t qlen)
{
    uint8_t inst[16];
    eb__saga_id(s->name, key, key_len, false, 0, 0, inst);
    size_t off = 0;
    qent e;
    while (qbuf_next(q, qlen, &off, &e)) {
        eb_publish_options o;
        eb_publish_options_init(&o);
        o.key = e.key;
        o.key_len = e.h.key_len;
        o.correlation_id = inst;
        o.causation_id = e.h.id;
        o.delay_ns = e.h.delay_ns;
        o.flags = s->publish_flags;
        int rc = eb_publish(s->bus, e.topic, e.payload, (size_t)e.h.payload_len, &o);
        if (rc != EB_OK)
            return rc;
        count(&s->sent, 1);
    }
    return off == qlen ? EB_OK : EB_ECORRUPT;
}

/* After a successful dispatch of version v: the store may drop the
   outbox; a completed instance in REMOVE mode goes. Failures here only
   cost a repeat (at least once), so they are not the delivery's failure. */
static void saga_settle(eb_saga *s, const void *key, size_t key_len, uint64_t v, bool completed)
{
    if (s->store->dispatched != NULL)
        (void)s->store->dispatched(s->store, s->name, key, key_len, v);
    if (completed && s->on_complete == EB_SAGA_REMOVE)
        (void)s->store->remove(s->store, s->name, key, key_len, v);
}

static int saga_fail(eb_saga *s, int rc)
{
    count(&s->failures, 1);
    if (rc == EB_ECONFLICT || rc == EB_EEXIST)
        count(&s->conflicts, 1);
    return rc;
}

static int on_saga_event(const eb_event *ev, void *arg)
{
    eb_saga *s = arg;
    const char *topic = eb_event_topic(ev);
    /* The registration's recovery of one instance (see recover_one): sent
       to this subscription only, on the instance's lane. */
    bool recovery = eb__event_is_only(ev);
    if (!recovery && !match_any(s->topics, s->n_topics, topic)) {
        count(&s->ignored, 1); /* caught by the covering pattern only */
        return EB_OK;
    }
    const void *key;
    size_t key_len;
    /* The saga's own timeouts (and replies that inherit their correlation)
       carry the instance key as their event key and the instance id as
       their correlation id: they go to that instance whatever the key
       function would read from them, and never start one. */
    bool own = recovery || is_own_event(s, ev);
    if (own) {
        key = eb_event_key(ev, &key_len);
    } else if (s->key_fn != NULL) {
        int krc = s->key_fn(ev, &key, &key_len, s->ctx);
        if (krc == EB_ENOENT || (krc == EB_OK && (key == NULL || key_len == 0 || key_len > 255))) {
            count(&s->ignored, 1);
            return EB_OK;
        }
        if (krc != EB_OK)
            return saga_fail(s, krc);
    } else {
        key = eb_event_key(ev, &key_len);
        if (key == NULL || key_len == 0) {
            count(&s->ignored, 1);
            return EB_OK;
        }
    }

    max_align_t state_inl[EB__INLINE_STATE / sizeof(max_align_t)];
    max_align_t q_inl[EB__INLINE_QUEUE / sizeof(max_align_t)];
    void *state = s->state_size <= sizeof(state_inl) ? (void *)state_inl : malloc(s->state_size);
    if (state == NULL)
        return saga_fail(s, EB_ENOMEM);
    uint8_t evid[16];
    eb_event_id(ev, evid);
    eb_saga_record rec;
    memset(&rec, 0, sizeof(rec));
    rec.state = state;
    rec.state_size = s->state_size;
    eb_saga_ctx sc;
    memset(&sc, 0, sizeof(sc));
    sc.saga = s;
    sc.key = key;
    sc.key_len = key_len;
    qbuf_init(&sc.q, q_inl, sizeof(q_inl));
    int rc = s->store->load(s->store, s->name, key, key_len, &rec);
    if (rc == EB_ENOENT && recovery) {
        rc = EB_OK; /* removed since the walk found it */
        goto out;
    } else if (rc != EB_OK && rc != EB_ENOENT) {
        rc = saga_fail(s, rc);
        goto out;
    } else if (rc == EB_OK) {
        if (own && !recovery && from_predecessor(s, ev, key, key_len, rec.start_id)) {
            count(&s->ignored, 1);
            rc = EB_OK;
            goto out;
        }
        bool redelivered = memcmp(rec.event_id, evid, 16) == 0;
        /* An outbox still in the store was saved but not (known to be)
           published. The same event again means our publish failed: send
           that outbox instead of running the transition twice. Another
           event finds it only if the dispatch of an earlier one failed for
           good; a store that tracks dispatch then gets it sent first. A
           recovery sends it (unless an event of the instance did first). */
        if (rec.outbox_len > 0 && (redelivered || recovery || s->store->dispatched != NULL)) {
            rc = saga_dispatch(s, key, key_len, rec.outbox, rec.outbox_len);
            if (rc != EB_OK) {
                rc = saga_fail(s, rc);
                goto out;
            }
            count(&s->redispatched, 1);
            saga_settle(s, key, key_len, rec.version, rec.completed);
            if (redelivered || recovery)
                goto out;
        } else if (recovery) {
            goto out;
        } else if (redelivered) {
            /* Saved and dispatched already; only the settle may be left. */
            saga_settle(s, key, key_len, rec.version, rec.completed);
            goto out;
        }
        if (rec.completed) {
            /* Kept (archived), or left by a remove that failed when it
               completed: removed now, it is as if it had been then. */
            int rm = s->on_complete == EB_SAGA_REMOVE
                         ? s->store->remove(s->store, s->name, key, key_len, rec.version)
                         : EB_ECONFLICT;
            bool removed = rm == EB_OK || rm == EB_ENOENT; /* ENOENT: the settle above */
            if (!removed) {
                count(&s->ignored, 1);
                goto out;
            }
            rc = EB_ENOENT;
        }
    }
    if (rc == EB_ENOENT) {
        /* An instance that was removed ignores what it sent; a start event
           creates the next one. */
        if (own || !match_any(s->starts, s->n_starts, topic)) {
            count(&s->ignored, 1);
            rc = EB_OK;
            goto out;
        }
        memset(state, 0, s->state_size);
        if (s->init != NULL)
            s->init(state, ev, s->ctx);
        rec.version = 0;
        memcpy(rec.start_id, evid, 16);
        sc.is_new = true;
    }
    free(rec.outbox);
    rec.outbox = NULL;
    rec.outbox_len = 0;
    sc.start = is_zero16(rec.start_id) ? NULL : rec.start_id;

    uint64_t loaded = rec.version;
    sc.number = loaded + 1;
    rc = s->transition(&sc, ev, state, s->ctx);
    if (rc != EB_OK) {
        rc = saga_fail(s, rc < 0 ? rc : EB_EHANDLER);
        goto out;
    }
    if (sc.complete && s->on_complete == EB_SAGA_REMOVE && sc.q.n == 0) {
        /* Nothing to send and nothing to keep: removing is the save. */
        if (!sc.is_new && (rc = s->store->remove(s->store, s->name, key, key_len, loaded)) != 0) {
            rc = saga_fail(s, rc);
            goto out;
        }
    } else {
        rec.version = sc.number;
        rec.completed = sc.complete;
        memcpy(rec.event_id, evid, 16);
        rec.outbox = sc.q.n > 0 ? sc.q.p : NULL;
        rec.outbox_len = sc.q.n > 0 ? sc.q.len : 0;
        rc = sc.is_new ? s->store->create(s->store, s->name, key, key_len, &rec)
                       : s->store->save(s->store, s->name, key, key_len, loaded, &rec);
        rec.outbox = NULL; /* it is sc.q's, not a loaded copy */
        if (rc != EB_OK) {
            rc = saga_fail(s, rc);
            goto out;
        }
    }
    count(&s->transitions, 1);
    if (sc.is_new)
        count(&s->started, 1);
    if (sc.complete)
        count(&s->completed, 1);
    if (sc.q.n > 0) {
        /* Persisted: now, and only now, the commands may leave. */
        rc = saga_dispatch(s, key, key_len, sc.q.p, sc.q.len);
        if (rc != EB_OK) {
            rc = saga_fail(s, rc);
            goto out;
        }
        saga_settle(s, key, key_len, sc.number, sc.complete);
    }
out:
    free(rec.outbox);
    qbuf_fini(&sc.q);
    if (state != (void *)state_inl)
        free(state);
    return rc;
}

/* A saga's topics and start topics, an aggregate's commands: at least one,
   each present, not empty and not too long. */
static bool patterns_ok(const char *const *p, size_t n)
{
    if (p == NULL || n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!topic_ok(p[i]) || p[i][0] == '\0')
            return false;
    return true;
}

static void saga_free(eb_saga *s)
{
    if (s->own_store)
        eb_saga_store_destroy(s->store);
    free(s->name);
    free(s->topics);
    free(s->starts);
    free(s);
}

/* The registration's recovery, once the saga is subscribed: for each
   outbox a crash left saved but unsent, an event to the saga's
   subscription only, keyed by the instance (so on the instance's lane:
   the outbox is sent before any later event of the instance is handled,
   and a reply to what it sends finds the saga subscribed), whose handler
   sends what is still pending then. The tickets are waited for at the
   end. */
typedef struct recovery {
    eb_saga *saga;
    eb_ticket **t;
    size_t n, cap;
} recovery;

static int recover_one(const void *key, size_t key_len, const eb_saga_record *rec, void *ctx)
{
    (void)rec;
    recovery *r = ctx;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        eb_ticket **t = realloc(r->t, cap * sizeof(*t));
        if (t == NULL)
            return EB_ENOMEM;
        r->t = t;
        r->cap = cap;
    }
    uint8_t inst[16];
    eb__saga_id(r->saga->name, key, key_len, false, 0, 0, inst);
    eb_ticket *t;
    int rc = eb__publish_only(r->saga->bus, r->saga->sub, "$saga.recover", key, key_len, inst, &t);
    if (rc == EB_OK)
        r->t[r->n++] = t;
    return rc;
}

/* Recovers s's pending outboxes (see recover_one): EB_OK once every one was
   sent, else the first error. */
static int recover(eb_saga *s)
{
    recovery r = {.saga = s};
    int rc = s->store->pending(s->store, s->name, recover_one, &r);
    for (size_t i = 0; i < r.n; i++) {
        eb_publish_result res;
        int wrc = eb_ticket_wait(r.t[i], -1, &res);
        if (wrc == EB_OK && res.first_error != EB_OK)
            wrc = res.first_error;
        else if (wrc == EB_OK && res.delivered != 1)
            wrc = EB_ECANCELED;
        if (rc == EB_OK)
            rc = wrc;
        eb_ticket_release(r.t[i]);
    }
    free(r.t);
    return rc;
}

EB_API int eb_saga_register(eb_bus *bus, const eb_saga_def *def, const eb_saga_options *opts,
                            eb_saga **out)
{
    eb_saga_options defaults;
    if (opts == NULL) {
        eb_saga_options_init(&defaults);
        opts = &defaults;
    }
    if (bus == NULL || def == NULL || out == NULL || def->transition == NULL ||
        !name_ok(def->name) || !patterns_ok(def->topics, def->n_topics) ||
        !patterns_ok(def->start_topics, def->n_start_topics) || def->state_size > EB__STATE_MAX ||
        opts->lanes > 1024 || opts->max_attempts > 1000 ||
        (opts->on_complete != EB_SAGA_REMOVE && opts->on_complete != EB_SAGA_ARCHIVE) ||
        (opts->publish_flags != 0 && opts->publish_flags != EB_PUBLISH_DURABLE &&
         opts->publish_flags != EB_PUBLISH_DURABLE_LAZY))
        return EB_EINVAL;
    if (opts->publish_flags != 0 && bus->store == NULL)
        return EB_ENOTSUP; /* durable commands need a bus with a store */
    if (opts->store != NULL && (opts->store->load == NULL || opts->store->create == NULL ||
                                opts->store->save == NULL || opts->store->remove == NULL))
        return EB_EINVAL;
    char cover[EB_TOPIC_MAX + 1];
    if (eb__cover_pattern(def->topics, def->n_topics, cover) != EB_OK)
        return EB_EINVAL;
    eb_saga *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return EB_ENOMEM;
    s->bus = bus;
    s->name = malloc(strlen(def->name) + 1);
    s->topics = copy_strings(def->topics, def->n_topics);
    s->starts = copy_strings(def->start_topics, def->n_start_topics);
    s->store = opts->store;
    if (s->store == NULL && eb_saga_memory_store_create(&s->store) == EB_OK)
        s->own_store = true;
    if (s->name == NULL || s->topics == NULL || s->starts == NULL || s->store == NULL) {
        saga_free(s);
        return EB_ENOMEM;
    }
    strcpy(s->name, def->name);
    s->n_topics = def->n_topics;
    s->n_starts = def->n_start_topics;
    s->commands = opts->commands;
    s->on_complete = opts->on_complete;
    s->key_fn = def->key;
    s->init = def->init;
    s->transition = def->transition;
    s->ctx = def->ctx;
    s->state_size = def->state_size;
    s->publish_flags = opts->publish_flags;
    char subname[EB_NAME_MAX + 16];
    snprintf(subname, sizeof(subname), "saga:%s", def->name);
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.delivery = EB_DELIVERY_KEYED;
    so.lanes = opts->lanes;
    /* Saga deliveries fail for transient reasons (a full intake seen from a
       handler is EB_EDEADLK, a version conflict): retry them many times. */
    so.max_attempts = opts->max_attempts ? opts->max_attempts : 100;
    so.backoff_initial_ns = opts->backoff_initial_ns;
    so.backoff_max_ns = opts->backoff_max_ns;
    so.mailbox_capacity = opts->mailbox_capacity;
    so.name = subname;
    int rc = eb_subscribe(bus, cover, on_saga_event, s, &so, &s->sub);
    if (rc != EB_OK) {
        saga_free(s);
        return rc;
    }
    if (s->store->pending != NULL && (rc = recover(s)) != EB_OK) {
        (void)eb_unsubscribe(s->sub);
        saga_free(s);
        return rc;
    }
    *out = s;
    return EB_OK;
}

EB_API int eb_saga_unregister(eb_saga *saga)
{
    if (saga == NULL)
        return EB_OK;
    /* From one of its transitions, or a handler nested in one while it
       waits: eb_unsubscribe would not wait for the saga's transitions (it
       cannot wait for its caller), and the free below would pull the saga
       from under them. */
    if (eb__sub_on_stack(saga->sub))
        return EB_EDEADLK;
    int rc = eb_unsubscribe(saga->sub);
    saga_free(saga);
    return rc;
}

EB_API int eb_saga_stats_get(eb_saga *saga, eb_saga_stats *out)
{
    if (saga == NULL || out == NULL)
        return EB_EINVAL;
    out->transitions = atomic_load_explicit(&saga->transitions, memory_order_relaxed);
    out->started = atomic_load_explicit(&saga->started, memory_order_relaxed);
    out->completed = atomic_load_explicit(&saga->completed, memory_order_relaxed);
    out->ignored = atomic_load_explicit(&saga->ignored, memory_order_relaxed);
    out->conflicts = atomic_load_explicit(&saga->conflicts, memory_order_relaxed);
    out->failures = atomic_load_explicit(&saga->failures, memory_order_relaxed);
    out->commands = atomic_load_explicit(&saga->sent, memory_order_relaxed);
    out->redispatched = atomic_load_explicit(&saga->redispatched, memory_order_relaxed);
    return EB_OK;
}

/* ---------------------------------------------------------------------- */
/* Aggregates                                                              */
/* ---------------------------------------------------------------------- */

typedef struct ag_node {
    hkey k; /* first: a = id, in data; protected by the stripe lock */
    size_t id_len;
    /* The state is written by the aggregate's lane (under the stripe lock,
       for eb_aggregate_read) and read by that lane without it: one lane
       owns an id, and the bus orders one lane's deliveries. */
    unsigned char *state;
    max_align_t data[]; /* bytes: id, padding, state (max-aligned) */
} ag_node;

struct eb_aggregate {
    eb_command_bus *cb;
    eb_aggregate *next, *prev; /* protected by cb->lock */
    eb_subscription *sub;
    char *name;
    char **topics;
    size_t n_topics;
    size_t state_size;
    eb_aggregate_init_fn init;
    eb_aggregate_fn handle;
    void *ctx;
    stripe stripes[EB__STRIPES];
};

struct eb_aggregate_ctx {
    eb_aggregate *agg;
    const void *id;
    size_t id_len;
    qbuf q;
};

EB_API void eb_aggregate_options_init(eb_aggregate_options *opts)
{
    if (opts != NULL)
        memset(opts, 0, sizeof(*opts));
}

/* The caller holds st's lock. */
static ag_node *ag_find(stripe *st, uint64_t h, const void *id, size_t id_len)
{
    hkey k = {.hash = (unsigned long)h, .a = id, .a_len = id_len};
    return stripe_get(st, &k);
}

/* The node of id, created (init outside the lock) on its first command.
   Only the lane that owns id creates it, so no two threads race to. */
static ag_node *ag_get(eb_aggregate *a, const void *id, size_t id_len)
{
    uint64_t h = hash64("", 0, id, id_len);
    stripe *st = &a->stripes[h & (EB__STRIPES - 1)];
    pthread_mutex_lock(&st->lock);
    ag_node *n = ag_find(st, h, id, id_len);
    pthread_mutex_unlock(&st->lock);
    if (n != NULL)
        return n;
    n = calloc(1, sizeof(*n) + pad_max(id_len) + a->state_size);
    if (n == NULL)
        return NULL;
    n->k = (hkey){.hash = (unsigned long)h, .a = (const unsigned char *)n->data, .a_len = id_len};
    n->id_len = id_len;
    memcpy(n->data, id, id_len);
    n->state = (unsigned char *)n->data + pad_max(id_len);
    if (a->init != NULL)
        a->init(n->state, id, id_len, a->ctx);
    pthread_mutex_lock(&st->lock);
    int rc = stripe_put(st, n);
    pthread_mutex_unlock(&st->lock);
    if (rc != EB_OK) {
        free(n);
        return NULL;
    }
    return n;
}

static int on_command(const eb_event *ev, void *arg)
{
    eb_aggregate *a = arg;
    const char *topic = eb_event_topic(ev);
    bool mine = false;
    for (size_t i = 0; i < a->n_topics && !mine; i++)
        mine = strcmp(a->topics[i], topic) == 0;
    if (!mine)
        return EB_OK; /* another aggregate's command under our covering pattern */
    size_t id_len;
    const void *id = eb_event_key(ev, &id_len);
    if (id == NULL || id_len == 0) {
        /* Not sent with eb_command_send: dead-lettered at once, rather than
           retried ahead of every command of this lane (max_attempts with
           backoff: about 90 s with the defaults). */
        eb__delivery_give_up();
        return EB_EINVAL;
    }
    ag_node *n = ag_get(a, id, id_len);
    if (n == NULL)
        return EB_ENOMEM;
    /* Two copies: the one the handler mutates, and the state before, to
       roll back to if the emitted events cannot be published. */
    max_align_t state_inl[2 * EB__INLINE_STATE / sizeof(max_align_t)];
    max_align_t q_inl[EB__INLINE_QUEUE / sizeof(max_align_t)];
    size_t sz = a->state_size;
    unsigned char *copy =
        2 * pad_max(sz) <= sizeof(state_inl) ? (unsigned char *)state_inl : malloc(2 * pad_max(sz));
    if (copy == NULL)
        return EB_ENOMEM;
    unsigned char *old = copy + pad_max(sz);
    if (sz > 0) {
        memcpy(copy, n->state, sz);
        memcpy(old, n->state, sz);
    }
    eb_aggregate_ctx ac = {a, n->data, id_len, {0}};
    qbuf_init(&ac.q, q_inl, sizeof(q_inl));
    int rc = a->handle(&ac, ev, copy, a->ctx);
    if (rc > 0)
        rc = EB_EHANDLER;
    stripe *st = &a->stripes[n->k.hash & (EB__STRIPES - 1)];
    if (rc == EB_OK && sz > 0) {
        /* Stored before the events leave, so whoever handles an event we
           emit (and whatever it causes) finds the state that emitted it;
           the lock is for eb_aggregate_read. */
        pthread_mutex_lock(&st->lock);
        memcpy(n->state, copy, sz);
        pthread_mutex_unlock(&st->lock);
    }
    if (rc == EB_OK && ac.q.n > 0) {
        eb_message msgs_inl[16];
        eb_message *msgs = ac.q.n <= 16 ? msgs_inl : malloc(ac.q.n * sizeof(*msgs));
        if (msgs == NULL) {
            rc = EB_ENOMEM;
        } else {
            size_t off = 0, k = 0;
            qent e;
            while (qbuf_next(ac.q.p, ac.q.len, &off, &e)) {
                msgs[k].topic = e.topic;
                msgs[k].payload = e.payload;
                msgs[k].len = (size_t)e.h.payload_len;
                msgs[k].key = e.key;
                msgs[k].key_len = e.h.key_len;
                k++;
            }
            rc = eb_publish_batch(a->cb->bus, msgs, k, NULL, NULL);
            if (msgs != msgs_inl)
                free(msgs);
        }
        if (rc != EB_OK && sz > 0) {
            /* Not all events left: undo, the retried command redoes it and
               emits them again (at least once). */
            pthread_mutex_lock(&st->lock);
            memcpy(n->state, old, sz);
            pthread_mutex_unlock(&st->lock);
        }
    }
    qbuf_fini(&ac.q);
    if (copy != (unsigned char *)state_inl)
        free(copy);
    return rc;
}

EB_API int eb_aggregate_emit(eb_aggregate_ctx *ac, const char *topic, const void *payload,
                             size_t len, const void *key, size_t key_len)
{
    if (ac == NULL || !publish_topic_ok(topic) || (payload == NULL && len > 0) || key_len > 255 ||
        (key == NULL && key_len > 0))
        return EB_EINVAL;
    return qbuf_push(&ac->q, NULL, 0, topic, payload, len, key, key_len);
}

EB_API const void *eb_aggregate_id(const eb_aggregate_ctx *ac, size_t *len)
{
    if (len != NULL)
        *len = ac != NULL ? ac->id_len : 0;
    return ac != NULL ? ac->id : NULL;
}

EB_API int eb_aggregate_read(eb_aggregate *agg, const void *id, size_t id_len, void *out,
                             size_t size)
{
    if (agg == NULL || id == NULL || id_len == 0 || (out == NULL && size > 0) ||
        size != agg->state_size)
        return EB_EINVAL;
    uint64_t h = hash64("", 0, id, id_len);
    stripe *st = &agg->stripes[h & (EB__STRIPES - 1)];
    int rc = EB_OK;
    pthread_mutex_lock(&st->lock);
    ag_node *n = ag_find(st, h, id, id_len);
    if (n == NULL)
        rc = EB_ENOENT;
    else if (size > 0)
        memcpy(out, n->state, size);
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* Frees a, and its stripes when stripes_ok (they were initialised). */
static void agg_free(eb_aggregate *a, bool stripes_ok)
{
    if (stripes_ok)
        stripes_fini(a->stripes, EB__STRIPES, free);
    free(a->name);
    free(a->topics);
    free(a);
}

/* Drops every route of a; called with cb->lock held for writing. */
static void routes_drop(eb_command_bus *cb, eb_aggregate *a)
{
    size_t k = 0;
    for (size_t i = 0; i < cb->n; i++) {
        if (cb->routes[i].agg == a)
            free(cb->routes[i].topic);
        else
            cb->routes[k++] = cb->routes[i];
    }
    cb->n = k;
}

EB_API int eb_aggregate_register(eb_command_bus *cb, const eb_aggregate_def *def,
                                 const eb_aggregate_options *opts, eb_aggregate **out)
{
    eb_aggregate_options defaults;
    if (opts == NULL) {
        eb_aggregate_options_init(&defaults);
        opts = &defaults;
    }
    if (cb == NULL || def == NULL || out == NULL || def->handle == NULL || !name_ok(def->name) ||
        !patterns_ok(def->commands, def->n_commands) || def->state_size > EB__STATE_MAX ||
        opts->lanes > 1024 || opts->max_attempts > 1000)
        return EB_EINVAL;
    for (size_t i = 0; i < def->n_commands; i++) {
        word w[EB__WORDS_MAX];
        int nw = split_words(def->commands[i], w);
        if (nw <= 0)
            return EB_EINVAL;
        for (int j = 0; j < nw; j++)
            if (word_is(&w[j], '*') || word_is(&w[j], '#'))
                return EB_EINVAL;
    }
    char cover[EB_TOPIC_MAX + 1];
    if (eb__cover_pattern(def->commands, def->n_commands, cover) != EB_OK)
        return EB_EINVAL;
    eb_aggregate *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return EB_ENOMEM;
    bool stripes_ok = stripes_init(a->stripes, EB__STRIPES) == EB_OK;
    a->name = malloc(strlen(def->name) + 1);
    a->topics = copy_strings(def->commands, def->n_commands);
    if (!stripes_ok || a->name == NULL || a->topics == NULL) {
        agg_free(a, stripes_ok);
        return EB_ENOMEM;
    }
    strcpy(a->name, def->name);
    a->cb = cb;
    a->n_topics = def->n_commands;
    a->state_size = def->state_size;
    a->init = def->init;
    a->handle = def->handle;
    a->ctx = def->ctx;

    /* Reserve the topics first (not yet ready: sends see EB_ENOENT until the
       subscription exists, so no command is published unrouted). */
    int rc = EB_OK;
    pthread_rwlock_wrlock(&cb->lock);
    for (size_t i = 0; i < def->n_commands && rc == EB_OK; i++) {
        for (size_t j = 0; j < cb->n; j++)
            if (strcmp(cb->routes[j].topic, def->commands[i]) == 0)
                rc = EB_EEXIST;
        for (size_t j = 0; j < i; j++)
            if (strcmp(def->commands[j], def->commands[i]) == 0)
                rc = EB_EINVAL;
    }
    if (rc == EB_OK && cb->n + def->n_commands > cb->cap) {
        size_t cap = cb->cap ? cb->cap : 8;
        while (cap < cb->n + def->n_commands)
            cap *= 2;
        cmd_route *r = realloc(cb->routes, cap * sizeof(*r));
        if (r == NULL) {
            rc = EB_ENOMEM;
        } else {
            cb->routes = r;
            cb->cap = cap;
        }
    }
    for (size_t i = 0; i < def->n_commands && rc == EB_OK; i++) {
        cmd_route r = {a->topics[i], a, false};
        r.topic = malloc(strlen(a->topics[i]) + 1);
        if (r.topic == NULL) {
            rc = EB_ENOMEM;
            break;
        }
        strcpy(r.topic, a->topics[i]);
        cb->routes[cb->n++] = r;
    }
    if (rc != EB_OK)
        routes_drop(cb, a);
    pthread_rwlock_unlock(&cb->lock);
    if (rc != EB_OK) {
        agg_free(a, true);
        return rc;
    }

    char subname[EB_NAME_MAX + 16];
    snprintf(subname, sizeof(subname), "aggregate:%s", def->name);
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.delivery = EB_DELIVERY_KEYED;
    so.lanes = opts->lanes;
    so.max_attempts = opts->max_attempts ? opts->max_attempts : 100;
    so.backoff_initial_ns = opts->backoff_initial_ns;
    so.backoff_max_ns = opts->backoff_max_ns;
    so.mailbox_capacity = opts->mailbox_capacity;
    so.name = subname;
    rc = eb_subscribe(cb->bus, cover, on_command, a, &so, &a->sub);
    pthread_rwlock_wrlock(&cb->lock);
    if (rc != EB_OK) {
        routes_drop(cb, a);
    } else {
        for (size_t i = 0; i < cb->n; i++)
            if (cb->routes[i].agg == a)
                cb->routes[i].ready = true;
        a->next = cb->aggs;
        if (cb->aggs != NULL)
            cb->aggs->prev = a;
        cb->aggs = a;
    }
    pthread_rwlock_unlock(&cb->lock);
    if (rc != EB_OK) {
        agg_free(a, true);
        return rc;
    }
    *out = a;
    return EB_OK;
}

EB_API int eb_aggregate_unregister(eb_aggregate *agg)
{
    if (agg == NULL)
        return EB_OK;
    if (eb__sub_on_stack(agg->sub))
        return EB_EDEADLK; /* as eb_saga_unregister */
    eb_command_bus *cb = agg->cb;
    /* Routes first, so new sends get EB_ENOENT instead of going nowhere. */
    pthread_rwlock_wrlock(&cb->lock);
    routes_drop(cb, agg);
    if (agg->prev != NULL)
        agg->prev->next = agg->next;
    else
        cb->aggs = agg->next;
    if (agg->next != NULL)
        agg->next->prev = agg->prev;
    pthread_rwlock_unlock(&cb->lock);
    int rc = eb_unsubscribe(agg->sub);
    agg_free(agg, true);
    return rc;
}

EB_API void eb_command_bus_destroy(eb_command_bus *cb)
{
    if (cb == NULL)
        return;
    /* From one of its aggregates' handlers (or nested in one): nothing, as
       eb_aggregate_unregister would refuse (EB_EDEADLK). */
    bool mine = false;
    pthread_rwlock_rdlock(&cb->lock);
    for (eb_aggregate *a = cb->aggs; a != NULL && !mine; a = a->next)
        mine = eb__sub_on_stack(a->sub);
    pthread_rwlock_unlock(&cb->lock);
    if (mine)
        return;
    for (;;) {
        pthread_rwlock_rdlock(&cb->lock);
        eb_aggregate *a = cb->aggs;
        pthread_rwlock_unlock(&cb->lock);
        if (a == NULL)
            break;
        (void)eb_aggregate_unregister(a);
    }
    free(cb->routes);
    pthread_rwlock_destroy(&cb->lock);
    free(cb);
}

/* ---------------------------------------------------------------------- */
/* Unit of work                                                            */
/* ---------------------------------------------------------------------- */

struct eb_scope {
    eb_bus *bus;
    qbuf q;       /* heap only */
    size_t start; /* byte offset of the first event not yet published */
    size_t left;  /* events not yet published */
};

EB_API int eb_scope_begin(eb_bus *bus, eb_scope **out)
{
    if (bus == NULL || out == NULL)
        return EB_EINVAL;
    eb_scope *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return EB_ENOMEM;
    s->bus = bus;
    qbuf_init(&s->q, NULL, 0);
    *out = s;
    return EB_OK;
}

EB_API int eb_scope_publish(eb_scope *scope, const char *topic, const void *payload, size_t len,
                            const void *key, size_t key_len)
{
    if (scope == NULL || !publish_topic_ok(topic) || (payload == NULL && len > 0) ||
        key_len > 255 || (key == NULL && key_len > 0))
        return EB_EINVAL;
    int rc = qbuf_push(&scope->q, NULL, 0, topic, payload, len, key, key_len);
    if (rc == EB_OK)
        scope->left++;
    return rc;
}

EB_API int eb_scope_commit(eb_scope *scope, const eb_publish_options *opts, size_t *published)
{
    /* The payloads are the scope's copies, freed with it: never zero-copy
       (a payload_free here was called on pointers into the scope's buffer). */
    if (scope == NULL || (opts != NULL && opts->payload_free != NULL))
        return EB_EINVAL;
    eb_message *msgs = NULL;
    if (scope->left > 0 && (msgs = malloc(scope->left * sizeof(*msgs))) == NULL) {
        if (published != NULL)
            *published = 0; /* valid input: says none, as eb_publish_batch would */
        return EB_ENOMEM;
    }
    size_t off = scope->start, k = 0;
    qent e;
    while (k < scope->left && qbuf_next(scope->q.p, scope->q.len, &off, &e)) {
        msgs[k].topic = e.topic;
        msgs[k].payload = e.payload;
        msgs[k].len = (size_t)e.h.payload_len;
        msgs[k].key = e.key;
        msgs[k].key_len = e.h.key_len;
        k++;
    }
    size_t accepted = 0;
    int rc = eb_publish_batch(scope->bus, msgs, k, opts, &accepted);
    if (rc != EB_OK && rc != EB_EINVAL) {
        /* Skip the accepted prefix: a later commit publishes only the rest. */
        for (size_t i = 0; i < accepted; i++)
            (void)qbuf_next(scope->q.p, scope->q.len, &scope->start, &e);
        scope->left -= accepted;
    }
    free(msgs);
    if (published != NULL && rc != EB_EINVAL) /* EB_EINVAL: untouched, as on any bad input */
        *published = accepted;
    if (rc == EB_OK)
        eb_scope_abort(scope); /* everything left; only the memory remains */
    return rc;
}

EB_API void eb_scope_abort(eb_scope *scope)
{
    if (scope == NULL)
        return;
    qbuf_fini(&scope->q);
    free(scope);
}
