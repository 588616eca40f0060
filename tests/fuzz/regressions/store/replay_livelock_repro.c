/*
 * Repro (found while triaging a fuzz_store timeout): a durable
 * subscription's replay spins forever on a log row it cannot turn into an
 * event.
 *
 * store_sqlite.c, cursor_fill(): when event_from_row() returns NULL (a
 * topic the reader cannot use, or a key longer than 255 bytes in a damaged
 * or foreign file) the replay treats it as "no memory", rewinds to read the
 * row again, and returns a non-zero row count with nothing buffered;
 * fifo_inject() then takes "c->bn == 0 && c->next < c->upto" for "a chunk
 * of other topics" and calls cursor_fill() again at once — forever. The same
 * happens when the replay query itself fails every time (SQLITE_CORRUPT on a
 * damaged page): cursor_fill() returns 1 ("try again later") with nothing
 * buffered. The writer thread spins at 100% CPU and never runs another job,
 * so eb_store_flush, eb_unsubscribe and eb_bus_destroy hang.
 *
 * Build (from the repo root):
 *   cc -std=c11 -Iinclude tests/fuzz/regressions/store/replay_livelock_repro.c \
 *      -Lbuild -leventbus -lsqlite3 -o /tmp/repro && LD_LIBRARY_PATH=build /tmp/repro
 * Exits 1 after 10 s ("hang") while the bug is there, 0 when the replay
 * skips or stops at the row.
 */
#define _GNU_SOURCE /* mkstemps */
#include <eventbus/eventbus.h>

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char path[] = "/tmp/eb-repro-XXXXXX.db";

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "hang: the durable subscription's replay never ends\n";
    write(1, msg, sizeof(msg) - 1);
    _exit(1);
}

static int handler(const eb_event *ev, void *ctx)
{
    (void)ev, (void)ctx;
    return 0;
}

int main(void)
{
    int fd = mkstemps(path, 3);
    if (fd < 0)
        return 2;
    close(fd);
    remove(path);
    eb_store *s;
    eb_bus *bus;
    eb_subscription *sub;
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    /* 1. A store with two durable events and a durable subscription that
          has not seen them (checkpoint 0). */
    if (eb_store_open(path, NULL, &s) != EB_OK)
        return 2;
    cfg.store = s;
    if (eb_bus_create(&cfg, &bus) != EB_OK)
        return 2;
    eb_publish_options po;
    eb_publish_options_init(&po);
    po.flags = EB_PUBLISH_DURABLE;
    eb_publish(bus, "a", "1", 1, &po);
    eb_publish(bus, "b", "2", 1, &po);
    eb_bus_destroy(bus);
    eb_store_close(s);

    /* 2. Row 1 gets a 300-byte key: valid SQLite (quick_check says "ok"),
          but more than the bus accepts, as a damaged file may have. Then a
          durable subscription is made, so its checkpoint is 0. */
    sqlite3 *db;
    sqlite3_open(path, &db);
    int rc = sqlite3_exec(db,
                          "UPDATE eb_events SET key = randomblob(300) WHERE seq = 1;"
                          "INSERT INTO eb_subscriptions(name, pattern, checkpoint, updated)"
                          " VALUES('d', '#', 0, 0);",
                          NULL, NULL, NULL);
    sqlite3_close(db);
    if (rc != SQLITE_OK)
        return 2;

    /* 3. Subscribing replays the log; unsubscribing and destroying wait for
          the writer, which never comes back. */
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGALRM, on_alarm);
    alarm(10);
    if (eb_store_open(path, NULL, &s) != EB_OK)
        return 2;
    cfg.store = s;
    if (eb_bus_create(&cfg, &bus) != EB_OK)
        return 2;
    eb_subscribe_options so;
    eb_subscribe_options_init(&so);
    so.durable = true;
    so.name = "d";
    rc = eb_subscribe(bus, "#", handler, NULL, &so, &sub);
    printf("durable subscribe: %s\n", eb_err_name(rc));
    if (rc == EB_OK)
        eb_unsubscribe(sub);
    eb_bus_destroy(bus);
    eb_store_close(s);
    printf("no hang\n");
    remove(path);
    return 0;
}
