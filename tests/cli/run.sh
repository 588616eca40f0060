#!/usr/bin/env bash
# tests/cli/run.sh — checks eventbus-cli against a store file written by
# tests/cli/populate.c (cli_populate) through the public API.
#
# It builds nothing: build the targets eventbus-cli and cli_populate first
# (`cmake --build BUILD_DIR --target eventbus-cli cli_populate`; ctest runs
# this script as the test "cli").
#
# Usage:   tests/cli/run.sh BUILD_DIR
# Env:     EB_CLI            the tool (default BUILD_DIR/tools/eventbus-cli)
#          EB_CLI_POPULATE   the populate program (default BUILD_DIR/tests/cli_populate)
#          KEEP=1            keep the temporary directory (kept anyway on failure)
# Checks every command's text and JSON output, requeue and purge and what
# they change, tail following a file another process writes, and the exit
# status of errors (1) and bad usage (2). The last line is
# "cli: N passed, M failed"; the exit status is 0 only if nothing failed.
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 BUILD_DIR" >&2
    exit 2
fi
build=$1
cli=${EB_CLI:-$build/tools/eventbus-cli}
pop=${EB_CLI_POPULATE:-$build/tests/cli_populate}
for exe in "$cli" "$pop"; do
    if [ ! -x "$exe" ]; then
        echo "cli: $exe is not built (cmake --build $build --target eventbus-cli cli_populate)" >&2
        echo "cli: 0 passed, 1 failed"
        exit 1
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/eventbus-cli-test.XXXXXX")
store=$work/store.db
passed=0
failed=0
bg_pids=()

pass() { passed=$((passed + 1)); echo "cli: PASS $*"; }
fail() {
    failed=$((failed + 1))
    echo "cli: FAIL $*"
    if [ -s "$work/err" ]; then sed 's/^/    stderr: /' "$work/err" | head -5; fi
}
finish() {
    for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
    if [ "$failed" -gt 0 ] || [ "${KEEP:-0}" = 1 ]; then
        echo "cli: kept $work"
    else
        rm -rf "$work"
    fi
    echo "cli: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}
trap finish EXIT
trap 'fail "interrupted by SIGINT"; exit 130' INT
trap 'fail "interrupted by SIGTERM"; exit 143' TERM

# run ARGS...: runs the tool with a time limit; stdout in $work/out, stderr in
# $work/err, exit status in $rc.
run() {
    timeout 30 "$cli" "$@" >"$work/out" 2>"$work/err"
    rc=$?
}

# check NAME STATUS [GREP_PATTERN...]: the last run exited STATUS and its
# stdout matches every extended regular expression given.
check() {
    local name=$1 want=$2
    shift 2
    if [ "$rc" -ne "$want" ]; then
        fail "$name: exit status $rc, expected $want"
        return
    fi
    for pat in "$@"; do
        if ! grep -Eq -- "$pat" "$work/out"; then
            fail "$name: output does not match /$pat/"
            sed 's/^/    out: /' "$work/out" | head -20
            return
        fi
    done
    pass "$name"
}

# check_err NAME STATUS PATTERN: the last run exited STATUS and its stderr
# matches PATTERN.
check_err() {
    local name=$1 want=$2 pat=$3
    if [ "$rc" -ne "$want" ]; then
        fail "$name: exit status $rc, expected $want"
    elif ! grep -Eq -- "$pat" "$work/err"; then
        fail "$name: stderr does not match /$pat/"
    else
        pass "$name"
    fi
}

# check_json NAME EXPR: the last run exited 0, its stdout is one JSON
# document (python3 json.load), and the Python expression EXPR holds for it
# (d: the document, raw: the text).
check_json() {
    local name=$1 expr=$2
    if [ "$rc" -ne 0 ]; then
        fail "$name: exit status $rc"
        return
    fi
    local msg
    if msg=$(python3 -c '
import json, re, sys
raw = open(sys.argv[1], encoding="utf-8").read()
try:
    d = json.loads(raw)
except ValueError as e:
    print("not JSON: %s" % e); sys.exit(1)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ok = eval("(" + sys.argv[2] + ")")
if not ok:
    print("expression false for: %s" % raw[:600]); sys.exit(1)
' "$work/out" "$expr" 2>&1); then
        pass "$name"
    else
        fail "$name: $msg"
    fi
}

# check_lines NAME N EXPR FILE: FILE holds N lines, each one JSON object,
# and EXPR holds for them (d: the list of objects).
check_lines() {
    local name=$1 n=$2 expr=$3 file=$4 msg
    if msg=$(python3 -c '
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
try:
    d = [json.loads(l) for l in lines]
except ValueError as e:
    print("a line is not JSON: %s" % e); sys.exit(1)
if len(d) != int(sys.argv[2]):
    print("%d lines, expected %s: %s" % (len(d), sys.argv[2], lines)); sys.exit(1)
if not eval("(" + sys.argv[3] + ")"):
    print("expression false for: %s" % lines); sys.exit(1)
' "$file" "$n" "$expr" 2>&1); then
        pass "$name"
    else
        fail "$name: $msg"
    fi
}

json_field() { # FILE EXPR: prints a value taken from a JSON document
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# ---- the store -------------------------------------------------------------

if ! timeout 60 "$pop" fill "$store" >"$work/fill" 2>"$work/err"; then
    fail "populate fill"
    exit 1
fi
pass "populate fill"
sagas=$(sed -n 's/^sagas=//p' "$work/fill")

# ---- usage and errors ------------------------------------------------------

run --help
check "--help prints the usage" 0 "^Usage: eventbus-cli \[--json\] STORE_FILE COMMAND" "deadletters requeue"
run "$store" events --help
check "--help after a command prints the usage" 0 "^Usage: eventbus-cli"
run
check_err "no arguments is bad usage" 2 "missing STORE_FILE"
run "$store"
check_err "no command is bad usage" 2 "missing COMMAND"
run "$store" frobnicate
check_err "an unknown command is bad usage" 2 "unknown command: 'frobnicate'"
run --bogus "$store" stats
check_err "an unknown option is bad usage" 2 "unknown option"
run "$store" events --limit abc
check_err "events --limit abc is bad usage" 2 "--limit needs a count"
run "$store" events --after
check_err "events --after without a value is bad usage" 2 "--after needs"
run "$store" events --since yesterday
check_err "events --since yesterday is bad usage" 2 "--since needs Unix seconds"
run "$store" outbox --status sleeping
check_err "outbox --status sleeping is bad usage" 2 "--status needs ready, in_progress, done or failed"
run "$store" deadletters requeue
check_err "deadletters requeue without an id is bad usage" 2 "needs one ID"
run "$store" deadletters purge -3
check_err "deadletters purge -3 is bad usage" 2 "needs one ID|not a dead-letter id"
run "$store" deadletters bury all
check_err "deadletters bury is bad usage" 2 "list, requeue or purge"
run "$store" tail --count 0
check_err "tail --count 0 is bad usage" 2 "--count needs a positive count"
run "$store" stats extra
check_err "stats with an argument is bad usage" 2 "takes no arguments"
run "$work/missing.db" events --limit abc
check_err "bad usage is found before the file is opened" 2 "--limit needs a count"

for cmd in stats events subscriptions "deadletters purge all" "deadletters requeue 1" "tail --count 1"; do
    # shellcheck disable=SC2086
    run "$work/missing.db" $cmd
    check_err "$cmd on a missing file fails with EB_ENOENT" 1 \
        "^eventbus-cli: store file '.*missing.db' does not exist: no such entry \(EB_ENOENT\)$"
    if [ -e "$work/missing.db" ]; then
        fail "$cmd created the missing file"
        rm -f "$work/missing.db"
    fi
done

printf 'this is not a database, just some text\n%.0s' $(seq 200) >"$work/junk.db"
cp "$work/junk.db" "$work/junk.orig"
run "$work/junk.db" stats
check_err "a file that is not a store fails with EB_ECORRUPT" 1 "cannot open store .*\(EB_ECORRUPT\)"
run "$work/junk.db" deadletters purge all
check_err "purge on a file that is not a store fails with EB_ECORRUPT" 1 "\(EB_ECORRUPT\)"
if cmp -s "$work/junk.db" "$work/junk.orig"; then
    pass "a file that is not a store is left untouched"
else
    fail "a file that is not a store was changed"
fi

: >"$work/empty.db"
run "$work/empty.db" stats
check_err "an empty file is called empty, not missing" 1 \
    "^eventbus-cli: store file '.*empty.db' is empty \(no store in it\): no such entry \(EB_ENOENT\)$"

# A store whose fourth page is overwritten: the refusal quotes SQLite's
# integrity check.
cp "$store" "$work/damaged.db"
python3 - "$work/damaged.db" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    page = int.from_bytes(f.read(18)[16:18], "big") or 65536
    f.seek(3 * page)
    f.write(b"\xff" * 64)
PY
run "$work/damaged.db" stats
check_err "a damaged store is refused with the integrity check's finding" 1 \
    "^eventbus-cli: store: store .*damaged.db: integrity check failed: \*\*\* in database main \*\*\*"

# ---- stats -------------------------------------------------------------------

cp "$store" "$work/store.before"
run "$store" stats
check "stats prints the counts" 0 "^file +.*store\.db$" "^events +11$" "^first_seq +1$" \
    "^last_seq +11$" "^subscriptions +2$" "^deadletters +2$" "^outbox_ready +1$" \
    "^outbox_in_progress +1$" "^outbox_done +1$" "^outbox_failed +1$" "^file_bytes +[1-9][0-9]*$"
run --json "$store" stats
check_json "stats --json is one object with the counts" \
    'd["events"] == 11 and d["first_seq"] == 1 and d["last_seq"] == 11 and d["subscriptions"] == 2
     and d["deadletters"] == 2 and d["outbox_ready"] == 1 and d["outbox_in_progress"] == 1
     and d["outbox_done"] == 1 and d["outbox_failed"] == 1 and d["scheduled"] == 0
     and d["file_bytes"] > 0 and d["file"].endswith("store.db")'
run "$store" stats --json
check_json "--json after the command works too" 'd["events"] == 11'

# ---- events ------------------------------------------------------------------

run "$store" events
check "events prints a table of the log" 0 \
    "^SEQ +TIME +ID +TOPIC +KEY +SIZE +PAYLOAD$" \
    "^ +1  20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z  [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}  orders\.created +cust-1 +25  \{\"order\":1,\"item\":\"book\"\}$" \
    "blobs\.raw +- +5  0x000102fffe$" \
    'misc\.text .* line1\\nline2\\t"quoted" back\\slash$' \
    "misc\.latin1 .*0x636166e9$" \
    "misc\.utf8 .*café ✓$" \
    "orders\.shipped .* 64  order 1 shipped via parcel service, trac\.\.\.$"
if [ "$(wc -l <"$work/out")" -eq 12 ]; then pass "events prints a header and 11 rows"; else fail "events printed $(wc -l <"$work/out") lines"; fi
if python3 - "$work/out" <<'EOF'; then pass "events columns are aligned"; else fail "events columns are not aligned"; fi
import sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
head = lines[0]
for col in ("TIME", "ID", "TOPIC", "KEY", "PAYLOAD"):
    at = head.index(col)
    for l in lines[1:]:
        if l[at - 2:at] != "  " or l[at] == " ":
            print("column %s misaligned in: %r" % (col, l)); sys.exit(1)
EOF

run --json "$store" events
check_json "events --json is an array of the 11 events" \
    '[e["seq"] for e in d] == list(range(1, 12)) and all(UUID.match(e["id"]) for e in d)
     and all(ISO.match(e["timestamp"]) and e["timestamp_ns"] > 0 for e in d)
     and d[0]["topic"] == "orders.created" and d[0]["key"] == "cust-1"
     and d[0]["payload"] == "{\"order\":1,\"item\":\"book\"}" and d[0]["payload_len"] == 25
     and d[0]["correlation_id"] is None and d[0]["causation_id"] is None
     and d[2]["payload"] == "order 1 shipped via parcel service, tracking number ZX-0042-9981"
     and len(set(e["id"] for e in d)) == 11'
check_json "events --json escapes binary payloads byte by byte" \
    'd[3]["topic"] == "blobs.raw" and d[3]["key"] is None and d[3]["payload_len"] == 5
     and d[3]["payload"] == "\x00\x01\x02\xff\xfe"
     and "\"\\u0000\\u0001\\u0002\\u00ff\\u00fe\"" in raw'
check_json "events --json escapes control characters, quotes and backslashes" \
    'd[4]["payload"] == "line1\nline2\t\"quoted\" back\\slash"
     and "\"line1\\nline2\\t\\\"quoted\\\" back\\\\slash\"" in raw'
check_json "events --json writes malformed UTF-8 as \\u00XX and keeps well-formed UTF-8" \
    'd[5]["payload"] == "caf\u00e9" and "\"caf\\u00e9\"" in raw
     and d[6]["payload"] == "caf\u00e9 \u2713" and "caf\u00e9 \u2713" in raw'

run --json "$store" events --topic 'orders.*'
check_json "events --topic orders.* selects the 5 orders" \
    'len(d) == 5 and all(e["topic"].startswith("orders.") for e in d)'
run --json "$store" events --topic 'payments.#'
check_json "events --topic payments.# selects the 2 charges" \
    '[e["seq"] for e in d] == [8, 9]'
run --json "$store" events --after 9
check_json "events --after 9 selects seq 10 and 11" '[e["seq"] for e in d] == [10, 11]'
run --json "$store" events --limit=3
check_json "events --limit=3 selects the first 3" '[e["seq"] for e in d] == [1, 2, 3]'
run --json "$store" events --topic 'orders.#' --after 2 --limit 2
check_json "events filters combine" '[e["seq"] for e in d] == [3, 10]'
future=$(($(date +%s) + 3600))
run --json "$store" events --since "$future"
check_json "events --since an hour ahead is an empty array" 'd == [] and raw == "[]\n"'
run --json "$store" events --until 1.5
check_json "events --until 1.5 is an empty array" 'd == []'
run "$store" events --until 0
check_err "events --until 0 is bad usage (0 would mean no bound)" 2 "--until needs"
run "$store" events --after 9223372036854775808
check_err "events --after beyond INT64_MAX is bad usage" 2 "--after needs"
run "$store" tail --from 18446744073709551615
check_err "tail --from beyond INT64_MAX is bad usage" 2 "--from needs"
run --json "$store" events --since 1 --until "$future.25"
check_json "events --since 1 --until an hour ahead selects all" 'len(d) == 11'
run "$store" events --topic nothing.here
check "events with no match prints only the header" 0 "^SEQ +TIME"
if [ "$(wc -l <"$work/out")" -eq 1 ]; then pass "an empty table is its header"; else fail "an empty table has $(wc -l <"$work/out") lines"; fi
long=$(printf 'x%.0s' $(seq 300))
run "$store" events --topic "$long"
check_err "events with a pattern over 255 bytes fails with EB_EINVAL" 1 \
    "^eventbus-cli: reading events: invalid argument \(EB_EINVAL\)$"
run "$store" tail --topic "$long" --count 1
check_err "tail with a pattern over 255 bytes fails with EB_EINVAL" 1 \
    "^eventbus-cli: reading events: invalid argument \(EB_EINVAL\)$"

# ---- subscriptions ------------------------------------------------------------

run "$store" subscriptions
check "subscriptions prints a table" 0 "^NAME +PATTERN +CHECKPOINT +LAG +UPDATED$" \
    "^audit +orders\.# +[0-9]+ +[0-9]+  20[0-9-]+T" "^payments-fail +payments\.# +[0-9]+ +[0-9]+  "
run --json "$store" subscriptions
check_json "subscriptions --json: audit lags behind the last two orders" \
    '[s["name"] for s in d] == ["audit", "payments-fail"]
     and d[0]["pattern"] == "orders.#" and 3 <= d[0]["checkpoint"] < 10
     and d[0]["checkpoint"] + d[0]["lag"] == 11 and ISO.match(d[0]["updated"])'
check_json "subscriptions --json: payments-fail is past its dead letters" \
    'd[1]["pattern"] == "payments.#" and d[1]["checkpoint"] >= 9
     and d[1]["checkpoint"] + d[1]["lag"] == 11'

# ---- outbox --------------------------------------------------------------------

run "$store" outbox
check "outbox prints a table" 0 \
    "^ID +STATUS +ATTEMPTS +TOPIC +KEY +CREATED +NEXT_ATTEMPT +LEASE_UNTIL +SIZE +PAYLOAD +LAST_ERROR$" \
    "^ *1  done +1  mail\.send  user-1" "^ *2  failed .* mail 2 +smtp 550: mailbox unavailable$" \
    "^ *3  in_progress +1 .*  -  +20[0-9-]+T[0-9:.]+Z +6  mail 3 +-$" \
    "^ *4  ready +0 .* +- +6  mail 4 +-$"
run --json "$store" outbox
check_json "outbox --json lists every row by id" \
    '[m["status"] for m in d] == ["done", "failed", "in_progress", "ready"]
     and [m["attempts"] for m in d] == [1, 1, 1, 0] and [m["id"] for m in d] == [1, 2, 3, 4]
     and d[1]["last_error"] == "smtp 550: mailbox unavailable" and d[0]["last_error"] == ""
     and all(m["topic"] == "mail.send" and m["key"] == "user-1" for m in d)
     and d[3]["payload"] == "mail 4" and ISO.match(d[0]["created"])
     and d[2]["lease_until_ns"] > d[2]["created_ns"]'
run --json "$store" outbox --status failed
check_json "outbox --status failed selects the failed row" '[m["id"] for m in d] == [2]'
run --json "$store" outbox --status=in_progress
check_json "outbox --status=in_progress selects the claimed row" '[m["id"] for m in d] == [3]'
run --json "$store" outbox --status ready --limit 1
check_json "outbox --status ready --limit 1" '[m["id"] for m in d] == [4]'
run --json "$store" outbox --limit 2
check_json "outbox --limit 2" '[m["id"] for m in d] == [1, 2]'

# ---- dead letters ----------------------------------------------------------------

run "$store" deadletters
check "deadletters prints a table" 0 \
    "^ID +SEQ +FAILED +SUBSCRIPTION +TOPIC +ERROR +ATTEMPTS +EVENT_ID +KEY +SIZE +PAYLOAD$" \
    "^ *[0-9]+ +8  20[0-9-]+T[0-9:.]+Z  payments-fail +payments\.charge +EB_EIO +1  [0-9a-f-]{36}  cust-1 +8  charge 1$"
if [ "$(wc -l <"$work/out")" -eq 3 ]; then pass "deadletters lists 2 rows"; else fail "deadletters printed $(wc -l <"$work/out") lines"; fi
run --json "$store" deadletters list
check_json "deadletters list --json" \
    'len(d) == 2 and [x["seq"] for x in d] == [8, 9]
     and all(x["subscription"] == "payments-fail" and x["topic"] == "payments.charge"
             and x["error"] == -8 and x["error_name"] == "EB_EIO" and x["attempts"] == 1
             and UUID.match(x["event_id"]) and ISO.match(x["failed"]) for x in d)
     and [x["payload"] for x in d] == ["charge 1", "charge 2"]
     and [x["key"] for x in d] == ["cust-1", "cust-2"] and d[0]["id"] < d[1]["id"]'
cp "$work/out" "$work/dl.json"
run --json "$store" events --topic 'payments.#'
cp "$work/out" "$work/pay.json"
if [ "$(json_field "$work/dl.json" '[x["event_id"] for x in d]')" = "$(json_field "$work/pay.json" '[e["id"] for e in d]')" ]; then
    pass "dead letters name the ids of their logged events"
else
    fail "dead-letter event ids differ from the logged ids"
fi
run --json "$store" deadletters list --limit 1
check_json "deadletters list --limit 1" 'len(d) == 1 and d[0]["seq"] == 8'

if cmp -s "$store" "$work/store.before"; then
    pass "the reading commands left the store file as it was"
else
    fail "a reading command changed the store file"
fi

dl1=$(json_field "$work/dl.json" 'd[0]["id"]')
dl2=$(json_field "$work/dl.json" 'd[1]["id"]')
run "$store" deadletters purge "$dl1"
check "deadletters purge ID deletes one" 0 "^purged 1 dead letter$"
run --json "$store" deadletters
check_json "the purged dead letter is gone" "[x['id'] for x in d] == [$dl2]"
run "$store" deadletters purge "$dl1"
check_err "purging it again fails with EB_ENOENT" 1 \
    "^eventbus-cli: purge dead letter $dl1: no such entry \(EB_ENOENT\)$"
run "$store" deadletters requeue 999999
check_err "requeue of an unknown id fails with EB_ENOENT" 1 "\(EB_ENOENT\)$"
run --json "$store" deadletters requeue all
check_json "deadletters requeue all --json reports the count" 'd == {"requeued": 1}'
run --json "$store" deadletters
check_json "requeued dead letters leave the table" 'd == []'
run --json "$store" stats
check_json "stats counts no dead letters after the requeue" 'd["deadletters"] == 0 and d["events"] == 11'
run "$store" deadletters requeue all
check "requeue all with none left requeues 0" 0 "^requeued 0 dead letters"
run "$store" deadletters purge all
check "purge all with none left purges 0" 0 "^purged 0 dead letters$"

# A bus attached to the file publishes the requeued event again, as a new
# durable event at the end of the log.
if timeout 60 "$pop" attach "$store" 12 >"$work/out" 2>"$work/err"; then
    pass "a bus attached after the requeue logs the event again"
else
    fail "after requeue, attaching a bus did not log the event again ($(cat "$work/out"))"
fi
run --json "$store" events --topic 'payments.#'
check_json "the requeued charge is event 12 with the same payload and key" \
    '[e["seq"] for e in d] == [8, 9, 12] and d[2]["payload"] == "charge 2"
     and d[2]["key"] == "cust-2" and d[2]["id"] != d[1]["id"]'

# ---- sagas -------------------------------------------------------------------------

if [ "$sagas" = yes ]; then
    run "$store" sagas
    check "sagas prints a table" 0 "^SAGA +KEY +VERSION +COMPLETED +STATE_BYTES +PENDING +UPDATED$" \
        "^checkout +cart-7 +1  no +16  no +20[0-9-]+T" "^checkout +cart-9 +2  yes +16  no +20"
    run --json "$store" sagas
    check_json "sagas --json lists both instances" \
        'sorted((s["key"], s["version"], s["completed"]) for s in d)
           == [("cart-7", 1, False), ("cart-9", 2, True)]
         and all(s["saga"] == "checkout" and s["state_size"] == 16
                 and s["commands_pending"] is False and ISO.match(s["updated"]) for s in d)'
    run --json "$store" sagas --saga checkout --limit 1
    check_json "sagas --saga checkout --limit 1" 'len(d) == 1 and d[0]["saga"] == "checkout"'
    run --json "$store" sagas --saga nothing
    check_json "sagas --saga of no saga is empty" 'd == []'
else
    echo "cli: SKIP sagas: cli_populate stored none (see its stderr)"
    run --json "$store" sagas
    check_json "sagas --json with no saga is an empty array" 'd == []'
fi

# ---- tail ----------------------------------------------------------------------------

run --json "$store" tail --from 1 --count 3
if [ "$rc" -eq 0 ]; then
    check_lines "tail --json --from 1 --count 3 prints 3 JSON lines" 3 \
        '[e["seq"] for e in d] == [1, 2, 3] and d[0]["topic"] == "orders.created"' "$work/out"
else
    fail "tail --from 1 --count 3: exit status $rc"
fi
run --json "$store" tail --from 3 --topic 'misc.*' --count 2
if [ "$rc" -eq 0 ]; then
    check_lines "tail --topic misc.* --count 2 from 3" 2 '[e["seq"] for e in d] == [5, 6]' "$work/out"
else
    fail "tail --topic: exit status $rc"
fi
run "$store" tail --from 11 --count 2
check "tail prints a header and events as text" 0 "^ +SEQ  TIME +ID +TOPIC +KEY +SIZE  PAYLOAD$" \
    "^ +11  20[0-9-]+T.*orders\.cancelled" "^ +12  .*payments\.charge +cust-2 +8  charge 2$"

# Follow the file while another process appends to it: tail starts after the
# current end and must print the three live.tick events of the six appended.
last=$(sed -En 's/^last_seq +//p' <(timeout 30 "$cli" "$store" stats))
timeout 30 "$cli" --json "$store" tail --from $((last + 1)) --topic 'live.#' --count 3 \
    --interval-ms 20 >"$work/tail.out" 2>"$work/tail.err" &
tail_pid=$!
bg_pids+=("$tail_pid")
timeout 60 "$pop" append "$store" 6 150 >"$work/append.out" 2>"$work/append.err" &
append_pid=$!
bg_pids+=("$append_pid")
sleep 0.4
run --json "$store" stats
check_json "stats reads the file while another process writes it" "d['events'] >= $last"
wait "$append_pid"
arc=$?
wait "$tail_pid"
trc=$?
if [ "$arc" -ne 0 ]; then
    fail "populate append: exit status $arc: $(cat "$work/append.err")"
elif [ "$trc" -ne 0 ]; then
    fail "tail following a writer: exit status $trc: $(cat "$work/tail.err")"
else
    check_lines "tail follows another process's appends" 3 \
        "[e['topic'] for e in d] == ['live.tick'] * 3
         and [e['payload'] for e in d] == ['tick 0', 'tick 2', 'tick 4']
         and [e['seq'] for e in d] == [$((last + 1)), $((last + 3)), $((last + 5))]" "$work/tail.out"
fi

for sig in TERM INT INT:3600000; do
    ms=20
    case $sig in *:*) ms=${sig#*:} sig=${sig%%:*} ;; esac
    "$cli" "$store" tail --interval-ms "$ms" >"$work/tail.out" 2>"$work/err" &
    tail_pid=$!
    bg_pids+=("$tail_pid")
    sleep 0.4
    kill -s "$sig" "$tail_pid"
    for _ in $(seq 50); do
        kill -0 "$tail_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$tail_pid" 2>/dev/null; then
        kill -9 "$tail_pid"
        fail "tail did not stop within 5 s of SIG$sig"
        continue
    fi
    wait "$tail_pid"
    rc=$?
    cp "$work/tail.out" "$work/out"
    check "tail without --count stops on SIG$sig with status 0 (polling every $ms ms)" 0 "^ +SEQ  TIME"
done
