/*
 * pool.h — preallocated messages for the peers that pass pointers
 * (ck_ring, GAsyncQueue, GThreadPool): what a careful user of those queues
 * does instead of a malloc per message.
 *
 * Each producer owns a ring of slots. The producer takes the next slot once
 * its consumer has released it (`busy`, acquire/release), builds the
 * message in place and passes the pointer; the consumer releases the slot
 * after the observers ran. The ring is larger than any queue it feeds, so
 * a producer only waits on a slot when the queue itself is full.
 */
#ifndef EB_BENCH_POOL_H
#define EB_BENCH_POOL_H

#include "bench.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define POOL_SLOTS 16384

struct pool_msg {
    alignas(64) _Atomic int busy;
    const char *topic;
    size_t len;
    alignas(64) unsigned char data[]; /* payload */
};

struct pool {
    unsigned char *mem;
    size_t slot_size;
    uint64_t next; /* producer only */
};

static inline int pool_init(struct pool *p, size_t len)
{
    p->slot_size = sizeof(struct pool_msg) + ((len + 63) / 64) * 64;
    p->next = 0;
    p->mem = aligned_alloc(64, p->slot_size * POOL_SLOTS);
    if (p->mem == NULL)
        return -1;
    memset(p->mem, 0, p->slot_size * POOL_SLOTS);
    return 0;
}

static inline void pool_fini(struct pool *p)
{
    free(p->mem);
}

/* Producer: the next free slot, marked busy. */
static inline struct pool_msg *pool_take(struct pool *p)
{
    struct pool_msg *m = (struct pool_msg *)(p->mem + (p->next++ % POOL_SLOTS) * p->slot_size);
    unsigned spins = 0;
    /* Acquire pairs with pool_release: the consumer is done with it. */
    while (atomic_load_explicit(&m->busy, memory_order_acquire))
        bn_backoff(&spins);
    atomic_store_explicit(&m->busy, 1, memory_order_relaxed);
    return m;
}

static inline struct pool_msg *pool_of(void *data)
{
    return (struct pool_msg *)((unsigned char *)data - offsetof(struct pool_msg, data));
}

/* Consumer: done with the message. */
static inline void pool_release(struct pool_msg *m)
{
    atomic_store_explicit(&m->busy, 0, memory_order_release);
}

#endif /* EB_BENCH_POOL_H */
