/*
 * The other process of the multi-process store tests, started with exec.
 *   store_child create PATH AT     waits until CLOCK_MONOTONIC reaches AT (ns),
 *                                  then opens (and so perhaps creates) the
 *                                  store, adds an outbox row and writes the
 *                                  two results (int, int) to stdout
 *   store_child outbox PATH        waits for a byte on stdin, then claims and
 *                                  acknowledges outbox rows until none come,
 *                                  writing each claimed id (int64) to stdout
 *   store_child crash PATH BASE    publishes durable events BASE, BASE+1, ...
 *                                  from two threads and runs the durable
 *                                  subscription "child", writing a record per
 *                                  acknowledged publish and per handled event
 *                                  to stdout, until it is killed
 *   store_child saga PATH BASE     runs the saga "order" (SQLite saga store,
 *                                  commands published durably) on events
 *                                  order.placed BASE, BASE+1, ... published and
 *                                  waited for from two threads; each starts an
 *                                  instance that sends cmd.ship with its value,
 *                                  received by the durable subscription "ship";
 *                                  writes a record per acknowledged publish and
 *                                  per handled command, until it is killed
 */
#include <eventbus/eventbus.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAXV (1u << 20)
#define ROUND_MAX 16384 /* values one crash round may use */

typedef struct rec {
    uint8_t kind; /* 1 acknowledged publish, 2 handled delivery */
    uint32_t v;
} __attribute__((packed)) rec;

static void put(const void *p, size_t n)
{
    if (write(1, p, n) != (ssize_t)n)
        _exit(5);
}

static int create(const char *path, long long at)
{
    /* Every process starts at the same moment (a pipe's wake-ups, one by
       one, spread them too far apart to collide). */
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if ((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec >= at)
            break;
    }
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_OFF;
    eb_store *s = NULL;
    int rc[2] = {eb_store_open(path, &o, &s), -1};
    if (rc[0] == EB_OK) {
        rc[1] = eb_outbox_add(s, "t", "x", 1, NULL, 0, NULL);
        usleep(20000); /* open while the others finish */
        eb_store_close(s);
    }
    put(rc, sizeof rc);
    return 0;
}

static int outbox(const char *path)
{
    eb_store_options o;
    eb_store_options_init(&o);
    o.synchronous = EB_STORE_SYNC_NORMAL;
    eb_store *s = NULL;
    if (eb_store_open(path, &o, &s) != EB_OK)
        return 2;
    char c;
    if (read(0, &c, 1) != 1) /* both processes start together */
        return 5;
    for (int idle = 0; idle < 20;) {
        eb_outbox_batch *b = NULL;
        if (eb_outbox_claim(s, 4, 5000000000LL, &b) != EB_OK)
            return 3;
        idle = b->n == 0 ? idle + 1 : 0;
        for (size_t i = 0; i < b->n; i++) {
            int64_t id = b->msgs[i].id;
            put(&id, sizeof id);
            if (eb_outbox_ack(s, id) != EB_OK)
                return 4;
        }
        eb_outbox_batch_free(b);
        usleep(2000); /* let the other process in between batches */
    }
    eb_store_close(s);
    return 0;
}

static int handled(const eb_event *ev, void *ctx)
{
    (void)ctx;
    rec r = {2, 0};
    memcpy(&r.v, eb_event_payload(ev, NULL), 4);
    put(&r, sizeof r);
    return 0;
}

typedef struct pub_arg {
    eb_bus *bus;
    uint32_t first;
} pub_arg;

static void *publisher(void *arg)
{
    pub_arg *a = arg;
    eb_publish_options o;
    eb_publish_options_init(&o);
    o.flags = EB_PUBLISH_DURABLE;
    for (uint32_t v = a->first; v < a->first + ROUND_MAX && v < MAXV; v += 2) {
        if (eb_publish(a->bus, "crash.event", &v, sizeof v, &o) != EB_OK)
            _exit(6);
        rec r = {1, v};
        put(&r, sizeof r);
    }
    return NULL;
}

/* The store at path (synchronous FULL), a bus of 2 workers on it, and the
   durable subscription name on pattern, which reports what it handles.
   Exits with 2-4 on failure. */
static eb_bus *open_bus(const char *path, const char *name, const char *pattern, eb_store **out)
{
    eb_store *s = NULL;
    if (eb_store_open(path, NULL, &s) != EB_OK)
        exit(2);
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.store = s;
    eb_bus *bus = NULL;
    if (eb_bus_create(&cfg, &bus) != EB_OK)
        exit(3);
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.name = name;
    so.durable = true;
    if (eb_subscribe(bus, pattern, handled, NULL, &so, NULL) != EB_OK)
        exit(4);
    *out = s;
    return bus;
}

/* Two threads publish the values base, base + 2, ... and base + 1, ...
   until the parent kills the process. */
static int run_until_killed(eb_bus *bus, uint32_t base, void *(*fn)(void *))
{
    pthread_t t[2];
    pub_arg a[2] = {{bus, base}, {bus, base + 1}};
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, fn, &a[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pause(); /* the parent kills it; it never exits by itself */
    return 0;
}

static int crash(const char *path, uint32_t base)
{
    eb_store *s;
    eb_bus *bus = open_bus(path, "child", "crash.*", &s);
    return run_until_killed(bus, base, publisher);
}

/* The saga of "store_child saga": one transition per instance, which sends
   the command and archives the instance. */
static int order_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ctx;
    memcpy(state, eb_event_payload(ev, NULL), 4);
    size_t kl;
    const void *key = eb_saga_key(sc, &kl);
    int rc = eb_saga_send(sc, "cmd.ship", state, 4, key, kl);
    if (rc == EB_OK)
        eb_saga_complete(sc);
    return rc;
}

static void *order_publisher(void *arg)
{
    pub_arg *a = arg;
    eb_publish_options o;
    eb_publish_options_init(&o);
    for (uint32_t v = a->first; v < a->first + ROUND_MAX && v < MAXV; v += 2) {
        o.key = &v;
        o.key_len = sizeof v;
        eb_publish_result res;
        if (eb_publish_wait(a->bus, "order.placed", &v, sizeof v, &o, &res) != EB_OK ||
            res.delivered != 1)
            _exit(6);
        rec r = {1, v};
        put(&r, sizeof r);
    }
    return NULL;
}

static int saga(const char *path, uint32_t base)
{
    eb_store *s;
    eb_bus *bus = open_bus(path, "ship", "cmd.ship", &s);
    eb_saga_store *ss = NULL;
    if (eb_saga_sqlite_store_create(s, &ss) != EB_OK)
        return 7;
    static const char *const topics[] = {"order.placed"};
    eb_saga_def def = {.name = "order",
                       .topics = topics,
                       .n_topics = 1,
                       .start_topics = topics,
                       .n_start_topics = 1,
                       .state_size = 4,
                       .transition = order_transition};
    eb_saga_options sopt;
    eb_saga_options_init(&sopt);
    sopt.store = ss;
    sopt.on_complete = EB_SAGA_ARCHIVE;
    sopt.publish_flags = EB_PUBLISH_DURABLE;
    eb_saga *g = NULL;
    if (eb_saga_register(bus, &def, &sopt, &g) != EB_OK)
        return 8;
    return run_until_killed(bus, base, order_publisher);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "create") == 0)
        return create(argv[2], strtoll(argv[3], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "outbox") == 0)
        return outbox(argv[2]);
    if (argc == 4 && strcmp(argv[1], "crash") == 0)
        return crash(argv[2], (uint32_t)strtoul(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "saga") == 0)
        return saga(argv[2], (uint32_t)strtoul(argv[3], NULL, 10));
    fprintf(stderr,
            "usage: store_child create PATH AT | outbox PATH | crash PATH BASE | saga PATH BASE\n");
    return 2;
}
