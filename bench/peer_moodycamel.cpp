/*
 * peer_moodycamel — moodycamel::ConcurrentQueue (libconcurrentqueue-dev),
 * the fastest-queue reference. The only C++ in the harness.
 *
 * Messages are stored by value (topic pointer + 64-byte payload). Each
 * producer has a ProducerToken and the consumer a ConsumerToken (the
 * library's fast path). The queue is preallocated and filled with
 * try_enqueue, which never allocates. It is bounded like the other queues:
 * a producer keeps at most kInFlight messages in the queue, counting what
 * the consumer has taken of its messages (a per-producer counter the
 * consumer stores, read by the producer only when its local count says it
 * may be at the bound). Without the bound, one producer running ahead keeps
 * every preallocated block (an explicit producer reuses its own blocks and
 * never returns them), and another producer's try_enqueue then fails for
 * ever. One consumer thread calls every observer.
 *
 * Single: try_enqueue / try_dequeue, one message per operation.
 * Bulk: the producer stages cfg.batch messages and hands them over with
 * try_enqueue_bulk; the consumer takes up to cfg.batch with
 * try_dequeue_bulk.
 */
#include "bench.h"

#include <concurrentqueue.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

namespace
{

constexpr size_t kPerProducer = 8192;
constexpr uint64_t kInFlight = 4096; /* per producer, like eventbus's intake */

struct Msg {
    const char *topic;
    unsigned producer;
    alignas(64) unsigned char payload[BN_PAYLOAD];
};

/* Messages of one producer that the consumer has taken; written by the
   consumer only (release), read by that producer (acquire). */
struct alignas(64) Taken {
    std::atomic<uint64_t> n{0};
};

using Queue = moodycamel::ConcurrentQueue<Msg>;

struct Peer;

struct Producer {
    explicit Producer(Queue &q, unsigned index, unsigned batch)
        : tok(q), staged(batch > 1 ? batch : 1), idx(index)
    {
    }
    moodycamel::ProducerToken tok;
    std::vector<Msg> staged;
    unsigned n = 0;
    unsigned idx;
    uint64_t sent = 0;  /* messages enqueued */
    uint64_t taken = 0; /* last value read from Peer::taken[idx] */
};

struct Peer {
    Peer(tp_ctx *c, bool b)
        : ctx(c), bulk(b), q(kPerProducer * c->cfg->producers, c->cfg->producers, 0)
    {
    }
    tp_ctx *ctx;
    bool bulk;
    Queue q;
    std::atomic<bool> stop{false};
    std::vector<std::thread> workers;
    std::vector<Producer *> producers;
    Taken taken[BN_MAX_PRODUCERS];
};

/* Waits until the producer may put `more` messages in the queue. Once at
   the bound it waits for room for kSlack messages, so that it reads the
   consumer's counter about once per kSlack messages, not once per message. */
constexpr uint64_t kSlack = 256;

void wait_room(Peer *p, Producer *pr, uint64_t more)
{
    if (pr->sent + more - pr->taken <= kInFlight)
        return;
    uint64_t want = more > kSlack ? more : kSlack;
    unsigned spins = 0;
    for (;;) {
        pr->taken = p->taken[pr->idx].n.load(std::memory_order_acquire);
        if (pr->sent + want - pr->taken <= kInFlight)
            return;
        bn_backoff(&spins);
    }
}

void consume(Peer *p)
{
    const tp_cfg *cfg = p->ctx->cfg;
    moodycamel::ConsumerToken tok(p->q);
    std::vector<Msg> got(p->bulk ? cfg->batch : 1);
    unsigned spins = 0;
    for (;;) {
        size_t n = p->bulk ? p->q.try_dequeue_bulk(tok, got.begin(), got.size())
                           : (p->q.try_dequeue(tok, got[0]) ? 1 : 0);
        if (n > 0) {
            for (size_t i = 0; i < n; i++) {
                for (unsigned k = 0; k < cfg->observers; k++)
                    bn_observe(p->ctx->sinks[k], got[i].payload, BN_PAYLOAD);
                /* Single writer (one consumer): load + store, no RMW. */
                std::atomic<uint64_t> &t = p->taken[got[i].producer].n;
                t.store(t.load(std::memory_order_relaxed) + 1, std::memory_order_release);
            }
            spins = 0;
        } else if (p->stop.load(std::memory_order_acquire)) {
            break;
        } else {
            bn_backoff(&spins);
        }
    }
}

int create(tp_ctx *ctx, void **out, char *err, size_t errlen, bool bulk)
{
    if (ctx->cfg->payload_len != BN_PAYLOAD || (bulk && ctx->cfg->batch < 2) ||
        ctx->cfg->workers > 1) {
        std::snprintf(err, errlen,
                      "this peer carries %d-byte payloads to one consumer (and needs "
                      "batch > 1 in bulk mode)",
                      BN_PAYLOAD);
        return -1;
    }
    Peer *p = new (std::nothrow) Peer(ctx, bulk);
    if (p == nullptr)
        return -1;
    p->producers.assign(ctx->cfg->producers, nullptr);
    p->workers.emplace_back(consume, p);
    *out = p;
    return 0;
}

int create_single(tp_ctx *ctx, void **out, char *err, size_t errlen)
{
    return create(ctx, out, err, errlen, false);
}

int create_bulk(tp_ctx *ctx, void **out, char *err, size_t errlen)
{
    return create(ctx, out, err, errlen, true);
}

int producer_init(void *peer, unsigned idx, void **pstate)
{
    Peer *p = static_cast<Peer *>(peer);
    Producer *pr = new (std::nothrow) Producer(p->q, idx, p->bulk ? p->ctx->cfg->batch : 1);
    if (pr == nullptr)
        return -1;
    p->producers[idx] = pr;
    *pstate = pr;
    return 0;
}

void *buffer(void *peer, void *pstate, size_t len)
{
    (void)peer;
    (void)len;
    Producer *pr = static_cast<Producer *>(pstate);
    return pr->staged[pr->n].payload;
}

int flush_staged(Peer *p, Producer *pr)
{
    wait_room(p, pr, pr->n);
    unsigned spins = 0;
    while (!p->q.try_enqueue_bulk(pr->tok, pr->staged.begin(), pr->n))
        bn_backoff(&spins);
    pr->sent += pr->n;
    pr->n = 0;
    return 0;
}

int publish(void *peer, void *pstate, const char *topic, void *buf, size_t len, char *err,
            size_t errlen)
{
    (void)buf;
    (void)len;
    (void)err;
    (void)errlen;
    Peer *p = static_cast<Peer *>(peer);
    Producer *pr = static_cast<Producer *>(pstate);
    pr->staged[pr->n].topic = topic;
    pr->staged[pr->n].producer = pr->idx;
    if (p->bulk) {
        if (++pr->n == pr->staged.size())
            return flush_staged(p, pr);
        return 0;
    }
    wait_room(p, pr, 1);
    unsigned spins = 0;
    while (!p->q.try_enqueue(pr->tok, pr->staged[0]))
        bn_backoff(&spins);
    pr->sent++;
    return 0;
}

int flush(void *peer, void *pstate, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    Peer *p = static_cast<Peer *>(peer);
    Producer *pr = static_cast<Producer *>(pstate);
    return p->bulk && pr->n > 0 ? flush_staged(p, pr) : 0;
}

void destroy(void *peer)
{
    Peer *p = static_cast<Peer *>(peer);
    p->stop.store(true, std::memory_order_release);
    for (auto &t : p->workers)
        t.join();
    for (Producer *pr : p->producers)
        delete pr;
    delete p;
}

} // namespace

extern "C" {

const tp_peer tp_moodycamel = {
    "moodycamel", create_single, producer_init, buffer, publish, flush, nullptr, destroy,
};

const tp_peer tp_moodycamel_bulk = {
    "moodycamel bulk", create_bulk, producer_init, buffer, publish, flush, nullptr, destroy,
};
}
