/*
 * eventbus-cli — inspects and maintains an eventbus store file from the shell.
 *
 *   eventbus-cli [--json] STORE_FILE COMMAND [ARGS]     (--help for the list)
 *
 * One run parses its arguments (bad usage exits 2 before the file is
 * touched), opens the store, runs one command and closes the store. The
 * reading commands (stats, events, tail, subscriptions, outbox, deadletters
 * list, sagas) open it with read_only set, so they run beside a process that
 * writes the file and never create or migrate it; deadletters requeue and
 * purge open it for writing with no_create set.
 *
 * Only the public API is used. The list functions of the store hand each
 * row to a callback whose pointers are valid during the call only, so the
 * text output copies what it shows into a table whose column widths come
 * from the data, and the JSON output is written from the callback directly
 * (nothing to measure, nothing to copy).
 *
 * Threads: everything runs on the main thread, except the store's log
 * callback, which the writer thread of a writable store may also call, so
 * the captured message is behind a mutex. tail's SIGINT/SIGTERM handler only
 * sets a flag that its poll loop reads between polls.
 *
 * Exit status: 0 success, 1 an error (stderr: "eventbus-cli: <what>:
 * <eb_strerror> (<eb_err_name>)", then the SQLite message if there is one),
 * 2 bad usage.
 */
#define _POSIX_C_SOURCE 200809L /* sigaction, nanosleep, gmtime_r, strdup */

#include <eventbus/eventbus.h>
#include <eventbus/store.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <time.h>

#define PROG "eventbus-cli"

enum { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_USAGE = 2 };

#define PAYLOAD_SHOWN 40 /* characters of a payload shown in a text cell */
#define KEY_SHOWN 24     /* characters of a key shown in a text cell */
#define NS_PER_S INT64_C(1000000000)
#define NS_PER_MS INT64_C(1000000)
#define TAIL_BATCH 1000 /* events read per poll when following without --count */

static const char usage_text[] =
    "Usage: " PROG " [--json] STORE_FILE COMMAND [ARGS]\n"
    "\n"
    "Inspects and maintains an eventbus store file (the SQLite file of a bus\n"
    "with a durable store). Reading commands open the file read-only and work\n"
    "while another process writes it.\n"
    "\n"
    "Commands:\n"
    "  stats                          row counts and file size\n"
    "  events [--topic PATTERN] [--after SEQ] [--since UNIX_S] [--until UNIX_S]\n"
    "         [--limit N]             logged events in log order (--after: seq > SEQ;\n"
    "                                 --since: at or after; --until: before)\n"
    "  tail [--from SEQ] [--topic PATTERN] [--count N] [--interval-ms MS]\n"
    "                                 follow the log: print events as they are\n"
    "                                 appended, from seq SEQ on (default: only new\n"
    "                                 ones), until N were printed or SIGINT/SIGTERM;\n"
    "                                 polls every MS milliseconds (default 200)\n"
    "  subscriptions                  durable subscriptions: checkpoint and lag\n"
    "  outbox [--status ready|in_progress|done|failed] [--limit N]\n"
    "                                 outbox rows by id\n"
    "  deadletters [list] [--limit N] dead letters by id\n"
    "  deadletters requeue ID|all     remove dead letters and publish their events\n"
    "                                 again (done by the bus attached to the file,\n"
    "                                 or the next one to attach), as new events:\n"
    "                                 new ids, to every subscription they match,\n"
    "                                 not only the one that failed\n"
    "  deadletters purge ID|all       delete dead letters\n"
    "  sagas [--saga NAME] [--limit N]\n"
    "                                 stored saga instances\n"
    "\n"
    "Options:\n"
    "  --json       JSON output: an array of objects for lists, one object for\n"
    "               stats, requeue and purge, one object per line for tail\n"
    "  -h, --help   print this help and exit\n"
    "  --version    print the library version and exit\n"
    "\n"
    "PATTERN is an AMQP topic pattern: words separated by '.', '*' matches one\n"
    "word, '#' zero or more. Times are ISO-8601 UTC; UNIX_S may have a fraction.\n"
    "Exit status: 0 success, 1 error, 2 bad usage.\n";

/* ---- errors and the store ----------------------------------------------- */

/* The last warning or error the store logged: the only way to see the
   SQLite message of a failed eb_store_open, which leaves no handle to ask. */
typedef struct log_capture {
    pthread_mutex_t lock;
    char last[512]; /* protected by lock */
} log_capture;

typedef struct cli {
    bool json;
    const char *path;
    eb_store *store;
    log_capture log;
} cli;

static void capture_log(eb_log_level level, const char *msg, void *ctx)
{
    log_capture *lc = ctx;
    if (level < EB_LOG_WARN)
        return;
    pthread_mutex_lock(&lc->lock);
    snprintf(lc->last, sizeof lc->last, "%s", msg);
    pthread_mutex_unlock(&lc->lock);
}

static int usage_error(const char *what, const char *arg)
{
    if (arg != NULL)
        fprintf(stderr, PROG ": %s: '%s'\n", what, arg);
    else
        fprintf(stderr, PROG ": %s\n", what);
    fprintf(stderr, "Try '" PROG " --help'.\n");
    return EXIT_USAGE;
}

/* Prints "eventbus-cli: <what>: <message> (<name>)" and, for a failure the
   store traced to SQLite, the SQLite message. Returns EXIT_ERROR. */
static int report(cli *c, const char *what, int code)
{
    fprintf(stderr, PROG ": %s: %s (%s)\n", what, eb_strerror(code), eb_err_name(code));
    if (code != EB_EIO && code != EB_ECORRUPT && code != EB_EBUSY)
        return EXIT_ERROR;
    char msg[512] = "";
    int rc = 0;
    if (c->store != NULL) {
        rc = eb_store_last_error(c->store, msg, sizeof msg);
    } else {
        pthread_mutex_lock(&c->log.lock);
        snprintf(msg, sizeof msg, "%s", c->log.last);
        pthread_mutex_unlock(&c->log.lock);
    }
    if (msg[0] != '\0' && rc != 0)
        fprintf(stderr, PROG ": sqlite: %s (code %d)\n", msg, rc);
    else if (msg[0] != '\0')
        fprintf(stderr, PROG ": store: %s\n", msg);
    return EXIT_ERROR;
}

static int open_store(cli *c, bool writable)
{
    eb_store_options opts;
    eb_store_options_init(&opts);
    opts.read_only = !writable;
    opts.no_create = true;
    opts.log = capture_log;
    opts.log_ctx = &c->log;
    opts.log_level = EB_LOG_WARN;
    int rc = eb_store_open(c->path, &opts, &c->store);
    if (rc == EB_OK)
        return EXIT_OK;
    c->store = NULL;
    char what[600];
    struct stat sb;
    if (rc == EB_ENOENT && stat(c->path, &sb) == 0) /* no_create refuses empty files too */
        snprintf(what, sizeof what, "store file '%s' is empty (no store in it)", c->path);
    else if (rc == EB_ENOENT)
        snprintf(what, sizeof what, "store file '%s' does not exist", c->path);
    else
        snprintf(what, sizeof what, "cannot open store '%s'", c->path);
    return report(c, what, rc);
}

/* Output errors (a full disk, a closed pipe) fail the run too. */
static int finish_output(int status)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, PROG ": writing output: %s\n", strerror(errno));
        return EXIT_ERROR;
    }
    return status;
}

/* ---- argument parsing ---------------------------------------------------- */

/* Matches argv[*i] against "--name VALUE" or "--name=VALUE": returns true
   and sets *value (NULL if the value is missing) and advances *i past it. */
static bool opt_match(int argc, char **argv, int *i, const char *name, const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return false;
    if (a[n] == '=') {
        *value = a + n + 1;
        return true;
    }
    if (a[n] != '\0')
        return false;
    *value = *i + 1 < argc ? argv[++*i] : NULL;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return false;
    uint64_t v = 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_size(const char *s, size_t *out)
{
    uint64_t v;
    if (!parse_u64(s, &v) || v > SIZE_MAX)
        return false;
    *out = (size_t)v;
    return true;
}

/* Unix seconds with an optional fraction ("1700000000.25") to nanoseconds. */
static bool parse_unix_s(const char *s, int64_t *out_ns)
{
    if (s == NULL)
        return false;
    const char *dot = strchr(s, '.');
    size_t ilen = dot != NULL ? (size_t)(dot - s) : strlen(s);
    char whole[24];
    if (ilen == 0 || ilen >= sizeof whole)
        return false;
    memcpy(whole, s, ilen);
    whole[ilen] = '\0';
    uint64_t secs;
    if (!parse_u64(whole, &secs) || secs > (uint64_t)(INT64_MAX / NS_PER_S) - 1)
        return false;
    int64_t frac = 0;
    if (dot != NULL) {
        const char *f = dot + 1;
        int64_t scale = NS_PER_S / 10;
        if (*f == '\0')
            return false;
        for (; *f != '\0'; f++) {
            if (*f < '0' || *f > '9')
                return false;
            frac += (*f - '0') * scale; /* digits past the 9th add 0 */
            scale /= 10;
        }
    }
    *out_ns = (int64_t)secs * NS_PER_S + frac;
    return true;
}

/* ---- rendering ------------------------------------------------------------ */

/* Length of the well-formed UTF-8 sequence at p (1 to 4), or 0 if the bytes
   there are not one (overlong forms, surrogates and code points past
   U+10FFFF are refused, as RFC 3629 says). */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/* A growable string; oom sticks once an allocation failed. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_mem(sbuf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (np == NULL) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_mem(b, s, strlen(s));
}

/* Returns the string (the caller frees it), or NULL if out of memory. */
static char *sb_take(sbuf *b)
{
    if (b->oom || b->p == NULL) {
        free(b->p);
        return b->oom ? NULL : strdup("");
    }
    return b->p;
}

static bool is_text(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len(p + i, n - i);
        if (l == 0)
            return false;
        if (l == 1 && (p[i] < 0x20 || p[i] == 0x7F) && p[i] != '\n' && p[i] != '\t' && p[i] != '\r')
            return false;
        i += l;
    }
    return true;
}

/*
 * Renders bytes for a text cell, as a malloc'ed string (NULL: out of memory).
 * Text stays as it is, with \n, \t, \r and other control characters or
 * malformed UTF-8 escaped (\xNN) so a cell stays on its line; with
 * hex_if_binary, bytes that are not text (malformed UTF-8, NUL, control
 * characters other than \n, \t, \r) are shown as 0x<hex> instead. At most
 * max characters are kept (0: all), then "...".
 */
static char *render(const void *data, size_t n, size_t max, bool hex_if_binary)
{
    const unsigned char *p = data;
    sbuf b = {0};
    size_t shown = 0;
    if (hex_if_binary && !is_text(p, n)) {
        static const char digits[] = "0123456789abcdef";
        sb_puts(&b, "0x");
        size_t i;
        for (i = 0; i < n && (max == 0 || 2 + 2 * (i + 1) <= max); i++) {
            char h[2] = {digits[p[i] >> 4], digits[p[i] & 0xF]};
            sb_mem(&b, h, 2);
        }
        if (i < n)
            sb_puts(&b, "...");
        return sb_take(&b);
    }
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len(p + i, n - i);
        char esc[8];
        const char *piece = (const char *)p + i;
        size_t plen = l, width = 1;
        if (l == 0 || (l == 1 && (p[i] < 0x20 || p[i] == 0x7F))) {
            if (p[i] == '\n')
                memcpy(esc, "\\n", 3);
            else if (p[i] == '\t')
                memcpy(esc, "\\t", 3);
            else if (p[i] == '\r')
                memcpy(esc, "\\r", 3);
            else
                snprintf(esc, sizeof esc, "\\x%02x", p[i]);
            piece = esc;
            plen = strlen(esc);
            width = plen;
            l = 1;
        }
        if (max != 0 && shown + width > max) {
            sb_puts(&b, "...");
            break;
        }
        sb_mem(&b, piece, plen);
        shown += width;
        i += l;
    }
    return sb_take(&b);
}

static char *render_str(const char *s)
{
    return render(s, strlen(s), 0, false);
}

/* Display width of UTF-8 text: one column per code point (the cells are
   rendered text; East Asian wide characters would count one too few). */
static size_t display_width(const char *s)
{
    size_t w = 0;
    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ", or "-" for 0 (not set). */
static void fmt_time(char out[40], int64_t ns)
{
    if (ns == 0) {
        strcpy(out, "-");
        return;
    }
    int64_t secs = ns / NS_PER_S, rem = ns % NS_PER_S;
    if (rem < 0) {
        secs--;
        rem += NS_PER_S;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL) {
        snprintf(out, 40, "%" PRId64 "ns", ns);
        return;
    }
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%03dZ", (int)(rem / NS_PER_MS));
}

static void fmt_uuid(char out[37], const uint8_t id[16])
{
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = digits[id[i] >> 4];
        out[o++] = digits[id[i] & 0xF];
    }
    out[o] = '\0';
}

/* "EB_EIO", or the number for a code outside the table. */
static void fmt_error(char out[24], int code)
{
    const char *name = eb_err_name(code);
    if (strcmp(name, "EB_UNKNOWN") == 0)
        snprintf(out, 24, "%d", code);
    else
        snprintf(out, 24, "%s", name);
}

static const char *status_name(int status)
{
    switch (status) {
    case EB_OUTBOX_READY:
        return "ready";
    case EB_OUTBOX_IN_PROGRESS:
        return "in_progress";
    case EB_OUTBOX_DONE:
        return "done";
    case EB_OUTBOX_FAILED:
        return "failed";
    default:
        return "unknown";
    }
}

/* ---- text tables ---------------------------------------------------------- */

typedef struct table {
    size_t ncols;
    const char *const *heads;
    const char *align; /* one 'l' or 'r' per column */
    char **cells;      /* row-major, each malloc'ed */
    size_t ncells, cap;
} table;

/* Appends a cell, taking s (NULL: out of memory, reported here). */
static int table_take(table *t, char *s)
{
    if (s == NULL)
        return EB_ENOMEM;
    if (t->ncells == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        char **nc = realloc(t->cells, cap * sizeof *nc);
        if (nc == NULL) {
            free(s);
            return EB_ENOMEM;
        }
        t->cells = nc;
        t->cap = cap;
    }
    t->cells[t->ncells++] = s;
    return EB_OK;
}

static int table_add(table *t, const char *s)
{
    return table_take(t, strdup(s));
}

static int table_u64(table *t, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return table_add(t, buf);
}

static int table_time(table *t, int64_t ns)
{
    char buf[40];
    fmt_time(buf, ns);
    return table_add(t, buf);
}

static void put_padded(FILE *f, const char *s, size_t width, bool right, bool last)
{
    size_t w = display_width(s), pad = w < width ? width - w : 0;
    if (right)
        for (size_t i = 0; i < pad; i++)
            fputc(' ', f);
    fputs(s, f);
    if (!right && !last)
        for (size_t i = 0; i < pad; i++)
            fputc(' ', f);
}

/* Prints the header and the rows, each column as wide as its widest cell,
   two spaces apart, with no trailing blanks. */
static int table_print(const table *t, FILE *f)
{
    size_t *width = calloc(t->ncols, sizeof *width);
    if (width == NULL)
        return EB_ENOMEM;
    for (size_t c = 0; c < t->ncols; c++)
        width[c] = display_width(t->heads[c]);
    for (size_t i = 0; i < t->ncells; i++) {
        size_t w = display_width(t->cells[i]);
        if (w > width[i % t->ncols])
            width[i % t->ncols] = w;
    }
    size_t nrows = t->ncells / t->ncols;
    for (size_t r = 0; r <= nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = r == 0 ? t->heads[c] : t->cells[(r - 1) * t->ncols + c];
            if (c > 0)
                fputs("  ", f);
            put_padded(f, s, width[c], t->align[c] == 'r', c + 1 == t->ncols);
        }
        fputc('\n', f);
    }
    free(width);
    return EB_OK;
}

static void table_free(table *t)
{
    for (size_t i = 0; i < t->ncells; i++)
        free(t->cells[i]);
    free(t->cells);
}

/* ---- JSON ------------------------------------------------------------------ */

/* Writes n bytes as a JSON string: well-formed UTF-8 as it is, quotes,
   backslashes and control characters escaped, and each byte that is not
   part of well-formed UTF-8 as \u00XX (the code point of the same value). */
static void json_str(FILE *f, const void *data, size_t n)
{
    const unsigned char *p = data;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t l = utf8_len(p + i, n - i);
        if (l > 1) {
            fwrite(p + i, 1, l, f);
            i += l;
            continue;
        }
        i++;
        if (l == 1 && c >= 0x20 && c != '"' && c != '\\') {
            fputc(c, f);
            continue;
        }
        switch (c) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        case '\b':
            fputs("\\b", f);
            break;
        case '\f':
            fputs("\\f", f);
            break;
        default:
            fprintf(f, "\\u%04x", c);
        }
    }
    fputc('"', f);
}

/* One JSON object being written: {"k":v,...}. */
typedef struct jobj {
    FILE *f;
    bool first;
} jobj;

static void jo_begin(jobj *o, FILE *f)
{
    o->f = f;
    o->first = true;
    fputc('{', f);
}

static void jo_key(jobj *o, const char *k)
{
    if (!o->first)
        fputc(',', o->f);
    o->first = false;
    json_str(o->f, k, strlen(k));
    fputc(':', o->f);
}

static void jo_u64(jobj *o, const char *k, uint64_t v)
{
    jo_key(o, k);
    fprintf(o->f, "%" PRIu64, v);
}

static void jo_i64(jobj *o, const char *k, int64_t v)
{
    jo_key(o, k);
    fprintf(o->f, "%" PRId64, v);
}

static void jo_bool(jobj *o, const char *k, bool v)
{
    jo_key(o, k);
    fputs(v ? "true" : "false", o->f);
}

/* A byte string, or null when p is NULL. */
static void jo_bytes(jobj *o, const char *k, const void *p, size_t n)
{
    jo_key(o, k);
    if (p == NULL)
        fputs("null", o->f);
    else
        json_str(o->f, p, n);
}

static void jo_str(jobj *o, const char *k, const char *s)
{
    jo_bytes(o, k, s, s != NULL ? strlen(s) : 0);
}

static void jo_uuid(jobj *o, const char *k, const uint8_t id[16], bool present)
{
    jo_key(o, k);
    if (!present) {
        fputs("null", o->f);
        return;
    }
    char buf[37];
    fmt_uuid(buf, id);
    fprintf(o->f, "\"%s\"", buf);
}

/* "k": ISO time or null, and "k_ns": the nanoseconds. */
static void jo_time(jobj *o, const char *k, int64_t ns)
{
    jo_key(o, k);
    if (ns == 0) {
        fputs("null", o->f);
    } else {
        char buf[40];
        fmt_time(buf, ns);
        fprintf(o->f, "\"%s\"", buf);
    }
    char kns[64];
    snprintf(kns, sizeof kns, "%s_ns", k);
    jo_i64(o, kns, ns);
}

static void jo_end(jobj *o)
{
    fputc('}', o->f);
}

/* A JSON array of objects, one per line. */
static void json_list_item(FILE *f, size_t index)
{
    fputs(index == 0 ? "[\n" : ",\n", f);
}

static void json_list_end(FILE *f, size_t count)
{
    fputs(count == 0 ? "[]\n" : "\n]\n", f);
}

/* ---- listing: what each list callback gets ---------------------------------- */

typedef struct lister {
    cli *c;
    table t;
    size_t n;          /* rows seen */
    size_t limit;      /* tail: stop after this many (0: no limit) */
    const char *topic; /* tail: the pattern to print (NULL: every event) */
    size_t read;       /* tail: rows read, printed or not */
    uint64_t last_seq; /* tail: the last row read */
} lister;

/* Ends a list: prints the table, or closes the JSON array. */
static int lister_finish(lister *l, int rc, const char *what)
{
    int status = EXIT_OK;
    if (rc != EB_OK) {
        status = report(l->c, what, rc);
    } else if (l->c->json) {
        json_list_end(stdout, l->n);
    } else if (table_print(&l->t, stdout) != EB_OK) {
        status = report(l->c, "printing", EB_ENOMEM);
    }
    table_free(&l->t);
    return status;
}

/* ---- stats ------------------------------------------------------------------- */

static int cmd_stats(cli *c, int argc, char **argv)
{
    if (argc > 0)
        return usage_error("stats takes no arguments, got", argv[0]);
    int status = open_store(c, false);
    if (status != EXIT_OK)
        return status;
    eb_store_stats st;
    int rc = eb_store_stats_get(c->store, &st);
    if (rc != EB_OK)
        return report(c, "reading stats", rc);
    /* commits, appended, write_errors and pending count what this handle
       did since it was opened: always 0 for a read-only handle, so they are
       left out. */
    const struct {
        const char *name;
        uint64_t v;
    } rows[] = {
        {"events", st.events},
        {"first_seq", st.first_seq},
        {"last_seq", st.last_seq},
        {"subscriptions", st.subscriptions},
        {"outbox_ready", st.outbox_ready},
        {"outbox_in_progress", st.outbox_in_progress},
        {"outbox_done", st.outbox_done},
        {"outbox_failed", st.outbox_failed},
        {"scheduled", st.scheduled},
        {"deadletters", st.deadletters},
        {"sagas", st.sagas},
        {"file_bytes", st.file_bytes},
    };
    size_t nrows = sizeof rows / sizeof rows[0];
    if (c->json) {
        jobj o;
        jo_begin(&o, stdout);
        jo_str(&o, "file", c->path);
        for (size_t i = 0; i < nrows; i++)
            jo_u64(&o, rows[i].name, rows[i].v);
        jo_end(&o);
        fputc('\n', stdout);
        return EXIT_OK;
    }
    char *file = render_str(c->path);
    if (file == NULL)
        return report(c, "printing", EB_ENOMEM);
    printf("%-18s  %s\n", "file", file);
    free(file);
    for (size_t i = 0; i < nrows; i++)
        printf("%-18s  %" PRIu64 "\n", rows[i].name, rows[i].v);
    return EXIT_OK;
}

/* ---- events and tail ------------------------------------------------------- */

static const char *const event_heads[] = {"SEQ", "TIME", "ID", "TOPIC", "KEY", "SIZE", "PAYLOAD"};

static void event_json(FILE *f, const eb_stored_event *ev)
{
    jobj o;
    jo_begin(&o, f);
    jo_u64(&o, "seq", ev->seq);
    jo_uuid(&o, "id", ev->id, true);
    jo_time(&o, "timestamp", ev->timestamp_ns);
    jo_str(&o, "topic", ev->topic);
    jo_bytes(&o, "key", ev->key, ev->key_len);
    jo_u64(&o, "payload_len", ev->payload_len);
    jo_bytes(&o, "payload", ev->payload != NULL ? ev->payload : "", ev->payload_len);
    jo_uuid(&o, "correlation_id", ev->correlation_id, ev->has_correlation);
    jo_uuid(&o, "causation_id", ev->causation_id, ev->has_causation);
    jo_end(&o);
}

/* The text cells of an event, in event_heads order; the caller frees them.
   Returns EB_ENOMEM if any is missing. */
static int event_cells(const eb_stored_event *ev, char *cells[7])
{
    char buf[40];
    snprintf(buf, sizeof buf, "%" PRIu64, ev->seq);
    cells[0] = strdup(buf);
    fmt_time(buf, ev->timestamp_ns);
    cells[1] = strdup(buf);
    fmt_uuid(buf, ev->id);
    cells[2] = strdup(buf);
    cells[3] = render_str(ev->topic);
    cells[4] = ev->key != NULL ? render(ev->key, ev->key_len, KEY_SHOWN, true) : strdup("-");
    snprintf(buf, sizeof buf, "%zu", ev->payload_len);
    cells[5] = strdup(buf);
    cells[6] = render(ev->payload != NULL ? ev->payload : "", ev->payload_len, PAYLOAD_SHOWN, true);
    for (int i = 0; i < 7; i++)
        if (cells[i] == NULL)
            return EB_ENOMEM;
    return EB_OK;
}

static int on_event(const eb_stored_event *ev, void *ctx)
{
    lister *l = ctx;
    if (l->c->json) {
        json_list_item(stdout, l->n);
        event_json(stdout, ev);
    } else {
        char *cells[7];
        int rc = event_cells(ev, cells);
        for (int i = 0; i < 7; i++) {
            if (rc == EB_OK)
                rc = table_take(&l->t, cells[i]);
            else
                free(cells[i]);
        }
        if (rc != EB_OK)
            return rc;
    }
    l->n++;
    return 0;
}

static int cmd_events(cli *c, int argc, char **argv)
{
    eb_store_query q = {0};
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (opt_match(argc, argv, &i, "--topic", &v)) {
            if (v == NULL)
                return usage_error("--topic needs a pattern", NULL);
            q.topic = v;
        } else if (opt_match(argc, argv, &i, "--after", &v)) {
            if (!parse_u64(v, &q.after_seq) || q.after_seq > INT64_MAX)
                return usage_error("--after needs a sequence number", v);
        } else if (opt_match(argc, argv, &i, "--since", &v)) {
            if (!parse_unix_s(v, &q.since_ns))
                return usage_error("--since needs Unix seconds", v);
        } else if (opt_match(argc, argv, &i, "--until", &v)) {
            /* 0 would be the store's "no bound", not "before 1970". */
            if (!parse_unix_s(v, &q.until_ns) || q.until_ns == 0)
                return usage_error("--until needs Unix seconds after 0", v);
        } else if (opt_match(argc, argv, &i, "--limit", &v)) {
            if (!parse_size(v, &q.limit))
                return usage_error("--limit needs a count", v);
        } else {
            return usage_error("unknown argument to events", argv[i]);
        }
    }
    int status = open_store(c, false);
    if (status != EXIT_OK)
        return status;
    lister l = {.c = c, .t = {.ncols = 7, .heads = event_heads, .align = "rllllrl"}};
    int rc = eb_store_events(c->store, &q, on_event, &l);
    return lister_finish(&l, rc, "reading events");
}

/* Set by SIGINT/SIGTERM; the only state a signal handler may touch. */
static volatile sig_atomic_t tail_stop;

static void on_stop_signal(int sig)
{
    (void)sig;
    tail_stop = 1;
}

/* tail cannot size its columns from data it has not seen: the widths are
   fixed and a longer cell pushes the rest of its line right. */
static const unsigned tail_widths[7] = {8, 24, 36, 24, 12, 6, 0};

static int on_tail_event(const eb_stored_event *ev, void *ctx)
{
    lister *l = ctx;
    l->read++;
    l->last_seq = ev->seq;
    if (l->topic != NULL && eb_topic_matches(l->topic, ev->topic) != 1)
        return 0;
    if (l->c->json) {
        event_json(stdout, ev);
        fputc('\n', stdout);
    } else {
        char *cells[7];
        int rc = event_cells(ev, cells);
        for (int i = 0; i < 7 && rc == EB_OK; i++) {
            if (i > 0)
                fputs("  ", stdout);
            put_padded(stdout, cells[i], tail_widths[i], i == 0 || i == 5, i == 6);
        }
        if (rc == EB_OK)
            fputc('\n', stdout);
        for (int i = 0; i < 7; i++)
            free(cells[i]);
        if (rc != EB_OK)
            return rc;
    }
    l->n++;
    return l->limit != 0 && l->n >= l->limit ? 1 : 0;
}

static int cmd_tail(cli *c, int argc, char **argv)
{
    bool has_from = false;
    uint64_t from = 0, interval_ms = 200;
    size_t count = 0;
    const char *topic = NULL;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (opt_match(argc, argv, &i, "--from", &v)) {
            if (!parse_u64(v, &from) || from > INT64_MAX)
                return usage_error("--from needs a sequence number", v);
            has_from = true;
        } else if (opt_match(argc, argv, &i, "--topic", &v)) {
            if (v == NULL)
                return usage_error("--topic needs a pattern", NULL);
            topic = v;
        } else if (opt_match(argc, argv, &i, "--count", &v)) {
            if (!parse_size(v, &count) || count == 0)
                return usage_error("--count needs a positive count", v);
        } else if (opt_match(argc, argv, &i, "--interval-ms", &v)) {
            if (!parse_u64(v, &interval_ms) || interval_ms == 0 || interval_ms > 3600000)
                return usage_error("--interval-ms needs 1 to 3600000", v);
        } else {
            return usage_error("unknown argument to tail", argv[i]);
        }
    }
    int status = open_store(c, false);
    if (status != EXIT_OK)
        return status;
    if (topic != NULL && eb_topic_matches(topic, "") < 0)
        return report(c, "reading events", EB_EINVAL); /* as events says it */

    lister l = {.c = c, .limit = count, .topic = topic};
    if (has_from) {
        l.last_seq = from > 0 ? from - 1 : 0;
    } else {
        eb_store_stats st;
        int rc = eb_store_stats_get(c->store, &st);
        if (rc != EB_OK)
            return report(c, "reading stats", rc);
        l.last_seq = st.last_seq;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* The signals stay blocked except inside pselect, which unblocks them
       atomically: one that arrives while the log is read ends the next
       sleep at once instead of being missed until the interval is over. */
    sigset_t stops, open_mask;
    sigemptyset(&stops);
    sigaddset(&stops, SIGINT);
    sigaddset(&stops, SIGTERM);
    sigprocmask(SIG_BLOCK, &stops, &open_mask);
    sigdelset(&open_mask, SIGINT);
    sigdelset(&open_mask, SIGTERM);

    if (!c->json) {
        for (int i = 0; i < 7; i++) {
            if (i > 0)
                fputs("  ", stdout);
            put_padded(stdout, event_heads[i], tail_widths[i], i == 0 || i == 5, i == 6);
        }
        fputc('\n', stdout);
        fflush(stdout);
    }
    while (!tail_stop) {
        size_t before = l.read;
        /* The cursor is the last row read, printed or not: each poll asks
           for what the log gained after it, and the pattern is matched
           here, so rows that do not match are read once, not every poll. */
        eb_store_query q = {.after_seq = l.last_seq, .limit = TAIL_BATCH};
        int rc = eb_store_events(c->store, &q, on_tail_event, &l);
        if (rc < 0)
            return report(c, "reading events", rc);
        if (fflush(stdout) != 0)
            return finish_output(EXIT_ERROR);
        if (count != 0 && l.n >= count)
            break;
        if (l.read - before == TAIL_BATCH)
            continue; /* more may be waiting: read on without sleeping */
        /* In slices of at most 100 ms: a handler run late (TSan defers
           them past the call that took the signal) still ends the sleep. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t left_ms = (int64_t)interval_ms;
        int64_t until = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + left_ms;
        while (!tail_stop && left_ms > 0) {
            int64_t slice = left_ms < 100 ? left_ms : 100;
            struct timespec ts = {(time_t)(slice / 1000), (long)(slice % 1000) * 1000000L};
            pselect(0, NULL, NULL, NULL, &ts, &open_mask); /* EINTR on a signal */
            clock_gettime(CLOCK_MONOTONIC, &now);
            left_ms = until - ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000);
        }
    }
    return EXIT_OK;
}

/* ---- subscriptions -------------------------------------------------------------- */

static const char *const sub_heads[] = {"NAME", "PATTERN", "CHECKPOINT", "LAG", "UPDATED"};

static int on_subscription(const eb_store_subscription_info *info, void *ctx)
{
    lister *l = ctx;
    if (l->c->json) {
        json_list_item(stdout, l->n);
        jobj o;
        jo_begin(&o, stdout);
        jo_str(&o, "name", info->name);
        jo_str(&o, "pattern", info->pattern);
        jo_u64(&o, "checkpoint", info->checkpoint);
        jo_u64(&o, "lag", info->lag);
        jo_time(&o, "updated", info->updated_ns);
        jo_end(&o);
    } else {
        int rc = table_take(&l->t, render_str(info->name));
        if (rc == EB_OK)
            rc = table_take(&l->t, render_str(info->pattern));
        if (rc == EB_OK)
            rc = table_u64(&l->t, info->checkpoint);
        if (rc == EB_OK)
            rc = table_u64(&l->t, info->lag);
        if (rc == EB_OK)
            rc = table_time(&l->t, info->updated_ns);
        if (rc != EB_OK)
            return rc;
    }
    l->n++;
    return 0;
}

static int cmd_subscriptions(cli *c, int argc, char **argv)
{
    if (argc > 0)
        return usage_error("subscriptions takes no arguments, got", argv[0]);
    int status = open_store(c, false);
    if (status != EXIT_OK)
        return status;
    lister l = {.c = c, .t = {.ncols = 5, .heads = sub_heads, .align = "llrrl"}};
    int rc = eb_store_subscriptions(c->store, on_subscription, &l);
    return lister_finish(&l, rc, "reading subscriptions");
}

/* ---- outbox ---------------------------------------------------------------------- */

static const char *const outbox_heads[] = {"ID",   "STATUS",  "ATTEMPTS",     "TOPIC",
                                           "KEY",  "CREATED", "NEXT_ATTEMPT", "LEASE_UNTIL",
                                           "SIZE", "PAYLOAD", "LAST_ERROR"};

static int on_outbox(const eb_outbox_message *m, void *ctx)
{
    lister *l = ctx;
    const char *err = m->last_error != NULL ? m->last_error : "";
    if (l->c->json) {
        json_list_item(stdout, l->n);
        jobj o;
        jo_begin(&o, stdout);
        jo_i64(&o, "id", m->id);
        jo_str(&o, "status", status_name((int)m->status));
        jo_u64(&o, "attempts", m->attempts);
        jo_str(&o, "topic", m->topic);
        jo_bytes(&o, "key", m->key, m->key_len);
        jo_u64(&o, "payload_len", m->payload_len);
        jo_bytes(&o, "payload", m->payload != NULL ? m->payload : "", m->payload_len);
        jo_time(&o, "created", m->created_ns);
        jo_time(&o, "next_attempt", m->next_attempt_ns);
        jo_time(&o, "lease_until", m->lease_until_ns);
        jo_str(&o, "last_error", err);
        jo_end(&o);
        l->n++;
        return 0;
    }
    /* Each time means something in one status only: the others show "-". */
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, m->id);
    int rc = table_add(&l->t, buf);
    if (rc == EB_OK)
        rc = table_add(&l->t, status_name((int)m->status));
    if (rc == EB_OK)
        rc = table_u64(&l->t, m->attempts);
    if (rc == EB_OK)
        rc = table_take(&l->t, render_str(m->topic));
    if (rc == EB_OK)
        rc = table_take(&l->t,
                        m->key != NULL ? render(m->key, m->key_len, KEY_SHOWN, true) : strdup("-"));
    if (rc == EB_OK)
        rc = table_time(&l->t, m->created_ns);
    if (rc == EB_OK)
        rc = table_time(&l->t, m->status == EB_OUTBOX_READY ? m->next_attempt_ns : 0);
    if (rc == EB_OK)
        rc = table_time(&l->t, m->status == EB_OUTBOX_IN_PROGRESS ? m->lease_until_ns : 0);
    if (rc == EB_OK)
        rc = table_u64(&l->t, m->payload_len);
    if (rc == EB_OK)
        rc = table_take(&l->t, render(m->payload != NULL ? m->payload : "", m->payload_len,
                                      PAYLOAD_SHOWN, true));
    if (rc == EB_OK)
        rc = table_take(&l->t, *err != '\0' ? render(err, strlen(err), PAYLOAD_SHOWN, false)
                                            : strdup("-"));
    if (rc != EB_OK)
        return rc;
    l->n++;
    return 0;
}

static int cmd_outbox(cli *c, int argc, char **argv)
{
    int st = -1;
    size_t limit = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (opt_match(argc, argv, &i, "--status", &v)) {
            if (v == NULL)
                st = -2;
            else if (strcmp(v, "ready") == 0)
                st = EB_OUTBOX_READY;
            else if (strcmp(v, "in_progress") == 0 || strcmp(v, "in-progress") == 0)
                st = EB_OUTBOX_IN_PROGRESS;
            else if (strcmp(v, "done") == 0)
                st = EB_OUTBOX_DONE;
            else if (strcmp(v, "failed") == 0)
                st = EB_OUTBOX_FAILED;
            else
                st = -2;
            if (st == -2)
                return usage_error("--status needs ready, in_progress, done or failed", v);
        } else if (opt_match(argc, argv, &i, "--limit", &v)) {
            if (!parse_size(v, &limit))
                return usage_error("--limit needs a count", v);
        } else {
            return usage_error("unknown argument to outbox", argv[i]);
        }
    }
    int status = open_store(c, false);
    if (status != EXIT_OK)
        return status;
    lister l = {.c = c, .t = {.ncols = 11, .heads = outbox_heads, .align = "rlrlllllrll"}};
    int rc = eb_outbox_list(c->store, st, limit, on_outbox, &l);
    return lister_finish(&l, rc, "reading the outbox");
}

/* ---- dead letters ------------------------------------------------------------------ */

static const char *const dl_heads[] = {"ID",    "SEQ",   "FAILED",   "SUBSCRIPTION",
                                       "TOPIC", "ERROR", "ATTEMPTS", "EVENT_ID",
                                       "KEY",   "SIZE",  "PAYLOAD"};

static int on_deadletter(const eb_store_deadletter *dl, void *ctx)
{
    lister *l = ctx;
    char err[24];
    fmt_error(err, dl->error);
    if (l->c->json) {
        json_list_item(stdout, l->n);
        jobj o;
        jo_begin(&o, stdout);
        jo_i64(&o, "id", dl->id);
        jo_u64(&o, "seq", dl->seq);
        jo_uuid(&o, "event_id", dl->event_id, true);
        jo_str(&o, "subscription", dl->subscription);
        jo_str(&o, "topic", dl->topic);
        jo_bytes(&o, "key", dl->key, dl->key_len);
        jo_u64(&o, "payload_len", dl->payload_len);
        jo_bytes(&o, "payload", dl->payload != NULL ? dl->payload : "", dl->payload_len);
        jo_i64(&o, "error", dl->error);
        jo_str(&o, "error_name", eb_err_name(dl->error));
        jo_u64(&o, "attempts", dl->attempts);
        jo_time(&o, "failed", dl->failed_ns);
        jo_end(&o);
        l->n++;
        return 0;
    }
    char buf[40];
    snprintf(buf, sizeof buf, "%" PRId64, dl->id);
    int rc = table_add(&l->t, buf);
    if (rc == EB_OK)
        rc = dl->seq != 0 ? table_u64(&l->t, dl->seq) : table_add(&l->t, "-");
    if (rc == EB_OK)
        rc = table_time(&l->t, dl->failed_ns);
    if (rc == EB_OK)
        rc = table_take(&l->t, render_str(dl->subscription));
    if (rc == EB_OK)
        rc = table_take(&l->t, render_str(dl->topic));
    if (rc == EB_OK)
        rc = table_add(&l->t, err);
    if (rc == EB_OK)
        rc = table_u64(&l->t, dl->attempts);
    if (rc == EB_OK) {
        fmt_uuid(buf, dl->event_id);
        rc = table_add(&l->t, buf);
    }
    if (rc == EB_OK)
        rc = table_take(&l->t, dl->key != NULL ? render(dl->key, dl->key_len, KEY_SHOWN, true)
                                               : strdup("-"));
    if (rc == EB_OK)
        rc = table_u64(&l->t, dl->payload_len);
    if (rc == EB_OK)
        rc = table_take(&l->t, render(dl->payload != NULL ? dl->payload : "", dl->payload_len,
                                      PAYLOAD_SHOWN, true));
    if (rc != EB_OK)
        return rc;
    l->n++;
    return 0;
}

/* "all" is 0 for the store calls; an id is positive. */
static bool parse_dl_id(const char *s, int64_t *id)
{
    uint64_t v;
    if (s != NULL && strcmp(s, "all") == 0) {
        *id = 0;
        return true;
    }
    if (!parse_u64(s, &v) || v == 0 || v > INT64_MAX)
        return false;
    *id = (int64_t)v;
    return true;
}

static int cmd_deadletters(cli *c, int argc, char **argv)
{
    const char *sub = argc > 0 && argv[0][0] != '-' ? argv[0] : "list";
    if (argc > 0 && argv[0][0] != '-') {
        argc--;
        argv++;
    }
    if (strcmp(sub, "list") == 0) {
        size_t limit = 0;
        for (int i = 0; i < argc; i++) {
            const char *v;
            if (opt_match(argc, argv, &i, "--limit", &v)) {
                if (!parse_size(v, &limit))
                    return usage_error("--limit needs a count", v);
            } else {
                return usage_error("unknown argument to deadletters list", argv[i]);
            }
        }
        int status = open_store(c, false);
        if (status != EXIT_OK)
            return status;
        lister l = {.c = c, .t = {.ncols = 11, .heads = dl_heads, .align = "rrllllrllrl"}};
        int rc = eb_store_deadletters(c->store, limit, on_deadletter, &l);
        return lister_finish(&l, rc, "reading dead letters");
    }
    bool requeue = strcmp(sub, "requeue") == 0;
    if (!requeue && strcmp(sub, "purge") != 0)
        return usage_error("deadletters needs list, requeue or purge, got", sub);
    int64_t id;
    if (argc != 1)
        return usage_error(requeue ? "deadletters requeue needs one ID or 'all'"
                                   : "deadletters purge needs one ID or 'all'",
                           NULL);
    if (!parse_dl_id(argv[0], &id))
        return usage_error("not a dead-letter id or 'all'", argv[0]);
    int status = open_store(c, true);
    if (status != EXIT_OK)
        return status;
    size_t n = 0;
    int rc = requeue ? eb_store_deadletter_requeue(c->store, id, &n)
                     : eb_store_deadletter_purge(c->store, id, &n);
    if (rc != EB_OK) {
        char what[64];
        if (id != 0)
            snprintf(what, sizeof what, "%s dead letter %" PRId64, requeue ? "requeue" : "purge",
                     id);
        else
            snprintf(what, sizeof what, "%s dead letters", requeue ? "requeue" : "purge");
        return report(c, what, rc);
    }
    if (c->json) {
        jobj o;
        jo_begin(&o, stdout);
        jo_u64(&o, requeue ? "requeued" : "purged", n);
        jo_end(&o);
        fputc('\n', stdout);
    } else if (requeue) {
        printf("requeued %zu dead letter%s: the bus attached to the store publishes %s again\n", n,
               n == 1 ? "" : "s", n == 1 ? "its event" : "their events");
    } else {
        printf("purged %zu dead letter%s\n", n, n == 1 ? "" : "s");
    }
    return EXIT_OK;
}

/* ---- sagas ----------------------------------------------------------------------------- */

static const char *const saga_heads[] = {"SAGA",        "KEY",     "VERSION", "COMPLETED",
                                         "STATE_BYTES", "PENDING", "UPDATED"};

static int on_saga(const eb_store_saga_info *s, void *ctx)
{
    lister *l = ctx;
    if (l->c->json) {
        json_list_item(stdout, l->n);
        jobj o;
        jo_begin(&o, stdout);
        jo_str(&o, "saga", s->saga);
        jo_bytes(&o, "key", s->key != NULL ? s->key : "", s->key_len);
        jo_u64(&o, "version", s->version);
        jo_bool(&o, "completed", s->completed);
        jo_u64(&o, "state_size", s->state_size);
        jo_bool(&o, "commands_pending", s->commands_pending);
        jo_time(&o, "updated", s->updated_ns);
        jo_end(&o);
        l->n++;
        return 0;
    }
    int rc = table_take(&l->t, render_str(s->saga));
    if (rc == EB_OK)
        rc = table_take(&l->t, render(s->key != NULL ? s->key : "", s->key_len, KEY_SHOWN, true));
    if (rc == EB_OK)
        rc = table_u64(&l->t, s->version);
    if (rc == EB_OK)
        rc = table_add(&l->t, s->completed ? "yes" : "no");
    if (rc == EB_OK)
        rc = table_u64(&l->t, s->state_size);
    if (rc == EB_OK)
        rc = table_add(&l->t, s->commands_pending ? "yes" : "no");
    if (rc == EB_OK)
        rc = table_time(&l->t, s->updated_ns);
    if (rc != EB_OK)
        return rc;
    l->n++;
    return 0;
}

static int cmd_sagas(cli *c, int argc, char **argv)
{
    const char *saga = NULL;
    size_t limit = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (opt_match(argc, argv, &i, "--saga", &v)) {
            if (v == NULL || *v == '\0')
                return usage_error("--saga needs a name", NULL);
            saga = v;
        } else if (opt_match(argc, argv, &i, "--limit", &v)) {
            if (!parse_size(v, &limit))
                return usage_error("--limit needs a count", v);
        } else {
            return usage_error("unknown argument to sagas", argv[i]);
        }
    }
    int status = open_store(c, false);
    if (status != EXIT_OK)
        return status;
    lister l = {.c = c, .t = {.ncols = 7, .heads = saga_heads, .align = "llrlrll"}};
    int rc = eb_store_sagas(c->store, saga, limit, on_saga, &l);
    return lister_finish(&l, rc, "reading sagas");
}

/* ---- main ------------------------------------------------------------------------------- */

typedef struct command {
    const char *name;
    int (*run)(cli *c, int argc, char **argv);
} command;

static const command commands[] = {
    {"stats", cmd_stats},   {"events", cmd_events},
    {"tail", cmd_tail},     {"subscriptions", cmd_subscriptions},
    {"outbox", cmd_outbox}, {"deadletters", cmd_deadletters},
    {"sagas", cmd_sagas},
};

int main(int argc, char **argv)
{
    cli c = {0};
    pthread_mutex_init(&c.log.lock, NULL);
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            c.json = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return finish_output(EXIT_OK);
        } else if (strcmp(argv[i], "--version") == 0) {
            printf(PROG " %s\n", eb_version());
            return finish_output(EXIT_OK);
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            return usage_error("unknown option", argv[i]);
        }
    }
    if (i >= argc)
        return usage_error("missing STORE_FILE and COMMAND", NULL);
    c.path = argv[i++];
    if (i >= argc)
        return usage_error("missing COMMAND", NULL);
    const char *name = argv[i++];

    /* --json and --help are also taken after the command. */
    int nargs = 0;
    char **args = argv + i;
    for (int j = i; j < argc; j++) {
        if (strcmp(argv[j], "--json") == 0) {
            c.json = true;
        } else if (strcmp(argv[j], "--help") == 0 || strcmp(argv[j], "-h") == 0) {
            fputs(usage_text, stdout);
            return finish_output(EXIT_OK);
        } else {
            args[nargs++] = argv[j];
        }
    }

    const command *cmd = NULL;
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
        if (strcmp(commands[k].name, name) == 0)
            cmd = &commands[k];
    if (cmd == NULL)
        return usage_error("unknown command", name);

    int status = cmd->run(&c, nargs, args);
    eb_store_close(c.store);
    pthread_mutex_destroy(&c.log.lock);
    return finish_output(status);
}
