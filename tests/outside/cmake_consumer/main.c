/* A downstream program built with find_package(eventbus) and
   target_link_libraries(... eventbus::eventbus). Exits non-zero on failure. */
#include <eventbus/eventbus.h>

#include <stdio.h>
#include <string.h>

static int greet(const eb_event *ev, void *ctx)
{
    size_t len = 0;
    const char *p = eb_event_payload(ev, &len);
    int *ok = ctx;
    *ok = len == 5 && memcmp(p, "hello", 5) == 0 && strcmp(eb_event_topic(ev), "greet.world") == 0;
    return 0;
}

int main(void)
{
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", EB_VERSION_MAJOR, EB_VERSION_MINOR, EB_VERSION_PATCH);
    if (strcmp(eb_version(), want) != 0) {
        printf("consumer: library %s, header %s\n", eb_version(), want);
        return 1;
    }

    eb_bus *bus = NULL;
    int rc = eb_bus_create(NULL, &bus);
    if (rc != EB_OK) {
        printf("consumer: eb_bus_create: %s\n", eb_strerror(rc));
        return 1;
    }
    int payload_ok = 0;
    rc = eb_subscribe(bus, "greet.*", greet, &payload_ok, NULL, NULL);
    if (rc != EB_OK) {
        printf("consumer: eb_subscribe: %s\n", eb_strerror(rc));
        eb_bus_destroy(bus);
        return 1;
    }
    eb_publish_options opts;
    eb_publish_options_init(&opts);
    opts.timeout_ns = 10 * 1000000000LL;
    eb_publish_result res;
    memset(&res, 0, sizeof res);
    rc = eb_publish_wait(bus, "greet.world", "hello", 5, &opts, &res);
    eb_bus_destroy(bus);

    int ok = rc == EB_OK && res.matched == 1 && res.delivered == 1 && payload_ok;
    printf("consumer: eventbus %s, publish_wait %s, matched=%u delivered=%u payload %s: %s\n",
           eb_version(), eb_err_name(rc), res.matched, res.delivered, payload_ok ? "ok" : "wrong",
           ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
