/*
 * demo.c — a tour of eventbus in one small program.
 *
 * A toy shop wires three parts of itself together through a bus:
 *   1. fan-out:     one "order created" event reaches three subscribers;
 *   2. wait-for-all: the publisher waits until every subscriber is done and
 *                    reads the outcome (matched / delivered / failed);
 *   3. retries:     a payment handler fails once and succeeds when retried;
 *   4. dead letters: a shipping handler keeps failing, is given up on, and
 *                    the event is dead-lettered (a callback plus a
 *                    "$deadletter.#" subscriber see it).
 * It ends with the bus's own counters. Build: the `eventbus-demo` target.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <eventbus/eventbus.h>

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Handlers run on the bus's worker threads, so shared state is atomic. */
static atomic_int dead_letters_seen;

/* --- 1. three subscribers of one event ---------------------------------- */

/* Every handler gets the event and the ctx pointer given to eb_subscribe. */
static int on_order(const eb_event *ev, void *ctx)
{
    const char *who = ctx;
    size_t len;
    const char *order = eb_event_payload(ev, &len); /* valid until we return */
    printf("   [%-9s] %s #%llu: %.*s\n", who, eb_event_topic(ev),
           (unsigned long long)eb_event_seq(ev), (int)len, order);
    return 0; /* 0 = success */
}

/* --- 2. a handler that fails once --------------------------------------- */

static int on_payment(const eb_event *ev, void *ctx)
{
    (void)ctx;
    unsigned attempt = eb_event_attempt(ev); /* 1 on the first call */
    if (attempt == 1) {
        printf("   [payments ] attempt 1: card gateway timed out -> failing, "
               "the bus will retry\n");
        return EB_EIO; /* any negative value means "failed" */
    }
    printf("   [payments ] attempt %u: card charged\n", attempt);
    return 0;
}

/* --- 3. a handler that always fails ------------------------------------- */

static int on_shipping(const eb_event *ev, void *ctx)
{
    (void)ctx;
    printf("   [shipping ] attempt %u: label printer offline -> failing\n", eb_event_attempt(ev));
    return EB_EIO;
}

/* Called by the bus (eb_bus_config.on_deadletter) when a delivery failed its
   last attempt, before the $deadletter.<topic> event is published. */
static void on_deadletter(const eb_event *ev, const eb_deadletter_info *info, void *ctx)
{
    (void)ev;
    (void)ctx;
    printf("   [callback ] gave up: subscription \"%s\", topic %s, %u attempts, "
           "last error %s\n",
           info->subscription, info->topic, info->attempts, eb_err_name(info->error));
}

/* A plain subscriber of the reserved "$deadletter.#" topics. A pattern only
   matches "$..." topics when it spells the first word out, so "#" alone
   would not see them. */
static int on_dead_letter_event(const eb_event *ev, void *ctx)
{
    (void)ctx;
    eb_deadletter_info info;
    if (eb_event_deadletter_info(ev, &info))
        printf("   [dead box ] %s (from \"%s\", error %s)\n", eb_event_topic(ev), info.subscription,
               eb_err_name(info.error));
    atomic_fetch_add(&dead_letters_seen, 1);
    return 0;
}

static void print_result(const char *topic, const eb_publish_result *r)
{
    printf("   => %s: matched %u, delivered %u, failed %u, first error %s\n\n", topic, r->matched,
           r->delivered, r->failed, eb_err_name(r->first_error));
}

/* Publishes and waits until every matching handler has finished. */
static int publish_and_wait(eb_bus *bus, const char *topic, const char *payload,
                            eb_publish_result *result)
{
    eb_publish_options opts;
    eb_publish_options_init(&opts);
    opts.timeout_ns = 10 * 1000000000LL; /* never wait longer than 10 s */
    int rc = eb_publish_wait(bus, topic, payload, strlen(payload), &opts, result);
    if (rc != EB_OK)
        fprintf(stderr, "eb_publish_wait(%s): %s\n", topic, eb_strerror(rc));
    return rc;
}

int main(void)
{
    /* The bus: two workers, and a callback for dead letters. */
    eb_bus_config cfg;
    eb_bus_config_init(&cfg); /* always start from the defaults */
    cfg.workers = 2;
    cfg.on_deadletter = on_deadletter;
    eb_bus *bus;
    int rc = eb_bus_create(&cfg, &bus);
    if (rc != EB_OK) {
        fprintf(stderr, "eb_bus_create: %s\n", eb_strerror(rc));
        return 1;
    }
    printf("eventbus %s demo\n\n", eb_version());

    /* Patterns: '*' is exactly one word, '#' is zero or more words.
       NULL options mean the defaults: SERIAL delivery, 3 attempts. */
    int bad = 0;
    bad |= eb_subscribe(bus, "orders.#", on_order, "audit", NULL, NULL);
    bad |= eb_subscribe(bus, "orders.order.created", on_order, "inventory", NULL, NULL);
    bad |= eb_subscribe(bus, "orders.*.created", on_order, "email", NULL, NULL);

    /* Failing handlers are retried with exponential backoff. */
    eb_subscribe_options retry;
    eb_subscribe_options_init(&retry);
    retry.max_attempts = 3;                  /* first call + 2 retries */
    retry.backoff_initial_ns = 10 * 1000000; /* 10 ms, then 20 ms, ... */
    retry.name = "payments";                 /* shows up in dead letters */
    bad |= eb_subscribe(bus, "payments.card.*", on_payment, NULL, &retry, NULL);
    retry.name = "shipping-labels";
    bad |= eb_subscribe(bus, "shipping.#", on_shipping, NULL, &retry, NULL);
    bad |= eb_subscribe(bus, "$deadletter.#", on_dead_letter_event, NULL, NULL, NULL);
    if (bad) { /* codes are negative, so OR-ing them is non-zero on any failure */
        fprintf(stderr, "eb_subscribe failed\n");
        eb_bus_destroy(bus);
        return 1;
    }

    eb_publish_result r;
    printf("1. Fan-out: one event, three subscribers (they run concurrently)\n");
    if (publish_and_wait(bus, "orders.order.created", "order 1001: 2 x teapot", &r) == EB_OK)
        print_result("orders.order.created", &r);

    printf("2. Retry: the payment handler fails once, then succeeds\n");
    if (publish_and_wait(bus, "payments.card.charge", "order 1001: 42.00 EUR", &r) == EB_OK)
        print_result("payments.card.charge", &r);

    printf("3. Dead letter: the shipping handler fails all 3 attempts\n");
    rc = publish_and_wait(bus, "shipping.label.print", "order 1001: 1 parcel", &r);
    /* The $deadletter event is a new event of its own, delivered on its own
       time; give it a moment (at most 2 s) so the story prints in order. */
    for (int i = 0; i < 200 && atomic_load(&dead_letters_seen) == 0; i++)
        nanosleep(&(struct timespec){0, 10 * 1000000}, NULL);
    if (rc == EB_OK)
        print_result("shipping.label.print", &r);

    /* The bus counts everything it does. */
    eb_bus_stats st;
    if (eb_bus_stats_get(bus, &st) == EB_OK) {
        printf("Summary (eb_bus_stats_get)\n");
        printf("   published     %llu events\n", (unsigned long long)st.published);
        printf("   delivered     %llu handler calls succeeded\n", (unsigned long long)st.delivered);
        printf("   retried       %llu failed calls were tried again\n",
               (unsigned long long)st.retried);
        printf("   failed        %llu deliveries failed for good\n", (unsigned long long)st.failed);
        printf("   dead-lettered %llu\n", (unsigned long long)st.dead_lettered);
        printf("   unrouted      %llu events matched no subscriber\n",
               (unsigned long long)st.unrouted);
        printf("   workers %u, subscriptions %u\n", st.workers, st.subscriptions);
    }

    /* Delivers anything still queued, joins the workers, frees everything. */
    eb_bus_destroy(bus);
    return 0;
}
