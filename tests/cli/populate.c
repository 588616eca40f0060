/*
 * populate.c — writes a store file for tests/cli/run.sh through the public
 * API only, the way an application would.
 *
 *   cli_populate fill FILE
 *       Creates FILE and logs 11 durable events (text, long text, binary,
 *       control characters, malformed and well-formed UTF-8), lets the
 *       durable subscription "audit" (orders.#) handle the first three
 *       orders before it unsubscribes (so it lags), dead-letters the two
 *       payments.charge events in "payments-fail" (always fails,
 *       max_attempts 1), leaves the outbox with one row in each status, and,
 *       if eb_saga_sqlite_store_create works, stores two instances of the
 *       saga "checkout" (cart-7 open, cart-9 completed and archived).
 *       Prints key=value lines: what it wrote, as eb_store_stats_get sees it.
 *   cli_populate append FILE N DELAY_MS
 *       Opens the existing FILE and publishes N durable events, DELAY_MS
 *       apart, alternating live.tick (even i) and other.tick (odd i).
 *   cli_populate attach FILE EVENTS
 *       Attaches a bus to FILE (which publishes requeued dead letters) and
 *       waits up to 10 s until the log holds at least EVENTS events.
 *       Prints events=<n>.
 *
 * Exit status 0 on success; any failed call prints what failed and exits 1.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <eventbus/eventbus.h>
#include <eventbus/store.h>

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECOND INT64_C(1000000000)

static void check(int rc, const char *what)
{
    if (rc != EB_OK) {
        fprintf(stderr, "populate: %s: %s (%s)\n", what, eb_strerror(rc), eb_err_name(rc));
        exit(1);
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static eb_store *open_store(const char *path, bool create)
{
    eb_store_options so;
    eb_store_options_init(&so);
    so.synchronous = EB_STORE_SYNC_OFF; /* a test file: no fsync */
    so.no_create = !create;
    eb_store *store;
    check(eb_store_open(path, &so, &store), "eb_store_open");
    return store;
}

static eb_bus *attach_bus(eb_store *store)
{
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.workers = 2;
    cfg.store = store;
    eb_bus *bus;
    check(eb_bus_create(&cfg, &bus), "eb_bus_create");
    return bus;
}

/* Publishes one durable event and waits until every delivery finished. */
static void publish(eb_bus *bus, const char *topic, const void *payload, size_t len,
                    const char *key)
{
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.flags = EB_PUBLISH_DURABLE;
    po.timeout_ns = 10 * SECOND;
    if (key != NULL) {
        po.key = key;
        po.key_len = strlen(key);
    }
    eb_publish_result res;
    check(eb_publish_wait(bus, topic, payload, len, &po, &res), topic);
}

static void publish_str(eb_bus *bus, const char *topic, const char *payload, const char *key)
{
    publish(bus, topic, payload, strlen(payload), key);
}

static int on_audit(const eb_event *ev, void *ctx)
{
    (void)ev;
    atomic_fetch_add_explicit((atomic_int *)ctx, 1, memory_order_relaxed);
    return 0;
}

static int on_payment(const eb_event *ev, void *ctx)
{
    (void)ev;
    (void)ctx;
    return EB_EIO; /* the gateway is down: every delivery fails */
}

/* The checkout saga: counts its events and completes on checkout.paid. */
static int checkout_transition(eb_saga_ctx *sc, const eb_event *ev, void *state, void *ctx)
{
    (void)ctx;
    uint64_t *seen = state;
    (*seen)++;
    if (strcmp(eb_event_topic(ev), "checkout.paid") == 0)
        eb_saga_complete(sc);
    return 0;
}

static void publish_plain(eb_bus *bus, const char *topic, const char *key)
{
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.timeout_ns = 10 * SECOND;
    po.key = key;
    po.key_len = strlen(key);
    eb_publish_result res;
    check(eb_publish_wait(bus, topic, "{}", 2, &po, &res), topic);
    if (res.delivered != 1) {
        fprintf(stderr, "populate: %s %s: delivered %u, first_error %s\n", topic, key,
                res.delivered, eb_err_name(res.first_error));
        exit(1);
    }
}

/* Returns true if the saga instances were stored. */
static bool add_sagas(eb_bus *bus, eb_store *store, eb_saga_store **out)
{
    eb_saga_store *ss;
    int rc = eb_saga_sqlite_store_create(store, &ss);
    if (rc != EB_OK) {
        fprintf(stderr, "populate: eb_saga_sqlite_store_create: %s (%s): no sagas\n",
                eb_strerror(rc), eb_err_name(rc));
        return false;
    }
    static const char *const topics[] = {"checkout.#"};
    static const char *const starts[] = {"checkout.started"};
    eb_saga_def def = {
        .name = "checkout",
        .topics = topics,
        .n_topics = 1,
        .start_topics = starts,
        .n_start_topics = 1,
        .state_size = 16,
        .transition = checkout_transition,
    };
    eb_saga_options so;
    eb_saga_options_init(&so);
    so.store = ss;
    so.on_complete = EB_SAGA_ARCHIVE;
    so.max_attempts = 3;
    eb_saga *saga;
    check(eb_saga_register(bus, &def, &so, &saga), "eb_saga_register");
    publish_plain(bus, "checkout.started", "cart-7");
    publish_plain(bus, "checkout.started", "cart-9");
    publish_plain(bus, "checkout.paid", "cart-9");
    check(eb_saga_unregister(saga), "eb_saga_unregister");
    *out = ss;
    return true;
}

static int fill(const char *path)
{
    eb_store *store = open_store(path, true);
    eb_bus *bus = attach_bus(store);
    atomic_int audited = 0;

    eb_subscribe_options o;
    eb_subscribe_options_init(&o);
    o.name = "audit";
    o.durable = true;
    o.idempotent = true;
    eb_subscription *audit;
    check(eb_subscribe(bus, "orders.#", on_audit, &audited, &o, &audit), "subscribe audit");

    eb_subscribe_options_init(&o);
    o.name = "payments-fail";
    o.durable = true;
    o.max_attempts = 1;
    check(eb_subscribe(bus, "payments.#", on_payment, NULL, &o, NULL), "subscribe payments");

    static const unsigned char blob[] = {0x00, 0x01, 0x02, 0xff, 0xfe};
    publish_str(bus, "orders.created", "{\"order\":1,\"item\":\"book\"}", "cust-1");
    publish_str(bus, "orders.created", "{\"order\":2,\"item\":\"lamp\"}", "cust-2");
    publish_str(bus, "orders.shipped",
                "order 1 shipped via parcel service, tracking number ZX-0042-9981", "cust-1");
    publish(bus, "blobs.raw", blob, sizeof blob, NULL);
    publish_str(bus, "misc.text", "line1\nline2\t\"quoted\" back\\slash", NULL);
    publish_str(bus, "misc.latin1", "caf\xe9", NULL);
    publish_str(bus, "misc.utf8", "caf\xc3\xa9 \xe2\x9c\x93", NULL);
    publish_str(bus, "payments.charge", "charge 1", "cust-1");
    publish_str(bus, "payments.charge", "charge 2", "cust-2");
    check(eb_store_flush(store, 10 * SECOND), "eb_store_flush");

    /* audit stops here: the two orders below stay after its checkpoint. */
    check(eb_unsubscribe(audit), "unsubscribe audit");
    publish_str(bus, "orders.created", "{\"order\":3,\"item\":\"pen\"}", "cust-3");
    publish_str(bus, "orders.cancelled", "{\"order\":2}", "cust-2");

    int64_t ids[4];
    static const char *const mails[] = {"mail 1", "mail 2", "mail 3", "mail 4"};
    for (int i = 0; i < 4; i++)
        check(eb_outbox_add(store, "mail.send", mails[i], strlen(mails[i]), "user-1", 6, &ids[i]),
              "eb_outbox_add");
    eb_outbox_batch *batch;
    check(eb_outbox_claim(store, 3, 60 * SECOND, &batch), "eb_outbox_claim");
    if (batch->n != 3) {
        fprintf(stderr, "populate: eb_outbox_claim(max 3) claimed %zu rows\n", batch->n);
        return 1;
    }
    check(eb_outbox_ack(store, batch->msgs[0].id), "eb_outbox_ack");
    check(eb_outbox_fail(store, batch->msgs[1].id, "smtp 550: mailbox unavailable"),
          "eb_outbox_fail");
    eb_outbox_batch_free(batch); /* the third stays in progress */

    eb_saga_store *ss = NULL;
    bool sagas = add_sagas(bus, store, &ss);

    check(eb_store_flush(store, 10 * SECOND), "eb_store_flush");
    eb_store_stats st;
    check(eb_store_stats_get(store, &st), "eb_store_stats_get");
    eb_bus_destroy(bus);
    eb_saga_store_destroy(ss);
    eb_store_close(store);

    printf("audited=%d\n", atomic_load(&audited));
    printf("events=%" PRIu64 "\nlast_seq=%" PRIu64 "\n", st.events, st.last_seq);
    printf("subscriptions=%" PRIu64 "\ndeadletters=%" PRIu64 "\n", st.subscriptions,
           st.deadletters);
    printf("outbox=%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n", st.outbox_ready,
           st.outbox_in_progress, st.outbox_done, st.outbox_failed);
    printf("sagas=%s\nsaga_rows=%" PRIu64 "\n", sagas ? "yes" : "no", st.sagas);
    return 0;
}

static int append(const char *path, int n, long delay_ms)
{
    eb_store *store = open_store(path, false);
    eb_bus *bus = attach_bus(store);
    for (int i = 0; i < n; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "tick %d", i);
        eb_publish_options po;
        eb_publish_options_init(&po);
        po.flags = EB_PUBLISH_DURABLE;
        check(
            eb_publish(bus, i % 2 == 0 ? "live.tick" : "other.tick", payload, strlen(payload), &po),
            "append publish");
        sleep_ms(delay_ms);
    }
    eb_bus_destroy(bus);
    eb_store_close(store);
    return 0;
}

static int attach(const char *path, uint64_t want)
{
    eb_store *store = open_store(path, false);
    eb_bus *bus = attach_bus(store);
    eb_store_stats st = {0};
    for (int i = 0; i < 500; i++) {
        check(eb_store_stats_get(store, &st), "eb_store_stats_get");
        if (st.events >= want)
            break;
        sleep_ms(20);
    }
    check(eb_store_flush(store, 10 * SECOND), "eb_store_flush");
    check(eb_store_stats_get(store, &st), "eb_store_stats_get");
    eb_bus_destroy(bus);
    eb_store_close(store);
    printf("events=%" PRIu64 "\n", st.events);
    return st.events >= want ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "fill") == 0)
        return fill(argv[2]);
    if (argc == 5 && strcmp(argv[1], "append") == 0)
        return append(argv[2], atoi(argv[3]), atol(argv[4]));
    if (argc == 4 && strcmp(argv[1], "attach") == 0)
        return attach(argv[2], strtoull(argv[3], NULL, 10));
    fprintf(stderr, "usage: cli_populate fill FILE | append FILE N DELAY_MS | "
                    "attach FILE EVENTS\n");
    return 2;
}
