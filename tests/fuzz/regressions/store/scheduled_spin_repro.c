/*
 * Repro (found with replay_livelock_repro.c, same root cause): a due
 * scheduled row the writer cannot turn into an event is retried forever.
 *
 * store_sqlite.c, fire_due(): event_from_row() returning NULL (here: a key
 * longer than 255 bytes, as a damaged or foreign file may hold) is taken
 * for "no memory: the rest fire later". The row is never deleted, so
 * next_due stays in the past, fire_wanted() stays true, and the writer runs
 * one empty write transaction after another (an fsync each with
 * EB_STORE_SYNC_FULL) at 100% CPU while a bus is attached; every scheduled
 * event due after that row never fires.
 *
 * Build (from the repo root):
 *   cc -std=c11 -Iinclude tests/fuzz/regressions/store/scheduled_spin_repro.c \
 *      -Lbuild -leventbus -lsqlite3 -o /tmp/repro && LD_LIBRARY_PATH=build /tmp/repro
 * Prints the commits the idle writer made in one second; exits 1 if there
 * were more than 10 or the later event did not fire.
 */
#define _GNU_SOURCE /* mkstemps */
#include <eventbus/eventbus.h>

#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_int fired;

static int handler(const eb_event *ev, void *ctx)
{
    (void)ctx;
    if (strcmp(eb_event_topic(ev), "later") == 0)
        atomic_fetch_add(&fired, 1);
    return 0;
}

int main(void)
{
    char path[] = "/tmp/eb-repro-XXXXXX.db";
    int fd = mkstemps(path, 3);
    if (fd < 0)
        return 2;
    close(fd);
    remove(path);
    eb_store *s;
    eb_bus *bus;
    eb_store_options so;
    eb_store_options_init(&so);
    so.synchronous = EB_STORE_SYNC_OFF;
    if (eb_store_open(path, &so, &s) != EB_OK)
        return 2;
    eb_store_close(s);
    /* Two due scheduled events; the first one's key is out of range. */
    sqlite3 *db;
    sqlite3_open(path, &db);
    int rc = sqlite3_exec(db,
                          "INSERT INTO eb_scheduled(due, topic, key, payload, created)"
                          " VALUES(1, 'first', randomblob(300), x'00', 0),"
                          "       (2, 'later', NULL, x'00', 0);",
                          NULL, NULL, NULL);
    sqlite3_close(db);
    if (rc != SQLITE_OK)
        return 2;

    if (eb_store_open(path, &so, &s) != EB_OK)
        return 2;
    eb_bus_config cfg;
    eb_bus_config_init(&cfg);
    cfg.store = s;
    if (eb_bus_create(&cfg, &bus) != EB_OK)
        return 2;
    eb_subscription *sub;
    eb_subscribe(bus, "#", handler, NULL, NULL, &sub);
    eb_store_stats a, b;
    usleep(200000);
    eb_store_stats_get(s, &a);
    sleep(1);
    eb_store_stats_get(s, &b);
    printf("commits in 1 s: %llu, 'later' fired: %d\n", (unsigned long long)(b.commits - a.commits),
           atomic_load(&fired));
    eb_bus_destroy(bus);
    eb_store_close(s);
    remove(path);
    return b.commits - a.commits > 10 || atomic_load(&fired) != 1 ? 1 : 0;
}
