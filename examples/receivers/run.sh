#!/usr/bin/env bash
# CI check: real receivers written outside Rust verify the connector's signed deliveries.
#
# Builds the service, starts the Node and Python example receivers and the service's `demo` (SQLite +
# amoCRM sandbox, its own temp data dir, free ports), subscribes each receiver through /api/v1/webhooks with
# a known secret, connects the demo seller through the sandbox's consent page and posts orders, then waits
# (bounded, polling) until each receiver has accepted every real delivery (connection.connected and one
# order.synced per order). Finally each receiver gets a replay of a real delivery (must be accepted), a
# tampered copy (body changed, signature kept) and an unsigned copy (both must be rejected with 401).
# Exits non-zero on any failure; everything it started is stopped on exit.
#
#   bash examples/receivers/run.sh
#   RECEIVERS_ORDERS=3 (orders to post)  RECEIVERS_DEADLINE=90 (seconds for everything after the build)
#   KEEP_WORK=1 keeps the temp dir (logs, receiver JSON lines) even when green.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/examples/receivers"
ORDERS=${RECEIVERS_ORDERS:-3}
DEADLINE_SECS=${RECEIVERS_DEADLINE:-90}
SELLER=demo-seller          # the seller `demo` creates connect links for
ACCOUNT=sellerone.amocrm.ru # a seeded sandbox account

log() { printf '[receivers %6.1fs] %s\n' "$(elapsed)" "$*"; }
fail() {
  printf '[receivers] FAIL: %s\n' "$*" >&2
  exit 1
}
elapsed() { python3 -c "import time,sys; print(round(time.time()-float(sys.argv[1]),1))" "$T0"; }

for cmd in cargo node npm python3 curl; do
  command -v "$cmd" >/dev/null || fail "$cmd is required"
done
T0=$(python3 -c 'import time; print(time.time())')

# ---- build and installs ------------------------------------------------------------------------------------
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
log "cargo build --bin amocrm-connector (target dir $TARGET)"
cargo build -q --bin amocrm-connector
BIN="$TARGET/debug/amocrm-connector"
[ -x "$BIN" ] || fail "no binary at $BIN"
log "npm ci in examples/receivers/node"
(cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

T_BUILT=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/receivers-check.XXXXXX")
DEADLINE_AT=$((T_BUILT + DEADLINE_SECS))
CHECK_NAME=receivers
PROC_LOG_EXT=out
# shellcheck source=ci/lib.sh
source "$ROOT/ci/lib.sh"

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  finish "$rc" "$WORK"/*.out "$WORK"/*.jsonl
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# api METHOD PATH [JSON]: the answer's body goes to $WORK/resp.json, its status to $STATUS.
api() {
  local args=(-sS --max-time 10 -o "$WORK/resp.json" -w '%{http_code}' -X "$1" "$BASE$2"
    -H "Authorization: Bearer $API_KEY" -H 'X-API-Version: v1')
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  STATUS=$(curl "${args[@]}") || STATUS=000
}

# ---- receivers -------------------------------------------------------------------------------------------
rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
declare -A SECRET URL SUB
SECRET[node]="node-$(rand)"
SECRET[python]="python-$(rand)"
: >"$WORK/node.jsonl"
: >"$WORK/python.jsonl"

CONNECTOR_WEBHOOK_SECRET="${SECRET[node]}" HOST=127.0.0.1 PORT=0 RECEIVER_LOG="$WORK/node.jsonl" \
  node "$HERE/node/receiver.js" >"$WORK/node.out" 2>&1 &
started node $!
CONNECTOR_WEBHOOK_SECRET="${SECRET[python]}" HOST=127.0.0.1 PORT=0 RECEIVER_LOG="$WORK/python.jsonl" \
  python3 "$HERE/python/receiver.py" >"$WORK/python.out" 2>&1 &
started python $!

# ---- the service: `demo` on SQLite with the bundled sandbox, in its own temp dir, on free ports ---------
# `demo` sets WEBHOOK_ALLOWED_HOSTS=127.0.0.1 itself, so loopback receivers may be subscribed.

for r in node python; do
  wait_for 15 "the $r receiver to listen" file_has "$WORK/$r.out" '^listening on http://'
  URL[$r]=$(sed -n 's#^listening on \(http://[0-9.:]*\).*#\1#p' "$WORK/$r.out" | head -n1)
  curl -fsS --max-time 5 "${URL[$r]}/health" >/dev/null || fail "$r receiver does not answer /health"
  log "$r receiver at ${URL[$r]}"
done
start_demo
log "demo at $BASE"

# ---- one subscription per receiver, each with its own known secret ---------------------------------------
for r in node python; do
  api POST /api/v1/webhooks "$(python3 -c 'import json,sys; print(json.dumps({"url": sys.argv[1], "events": ["*"], "secret": sys.argv[2], "active": True}))' \
    "${URL[$r]}/hooks/amocrm" "${SECRET[$r]}")"
  expect 201 200
  SUB[$r]=$(pyj "$WORK/resp.json" 'd["data"]["id"]')
  log "subscribed $r: ${SUB[$r]} -> ${URL[$r]}/hooks/amocrm"
done

# ---- real events 1: connect the demo seller through the sandbox's consent page (connection.connected) ---
api POST /api/v1/connect-sessions "{\"seller_id\":\"$SELLER\",\"lang\":\"en\"}"
expect 201
CONNECT_URL=$(pyj "$WORK/resp.json" 'd["data"]["connect_url"]')
curl -fsS --max-time 10 -c "$WORK/cookies" -b "$WORK/cookies" -o "$WORK/connect.html" "$CONNECT_URL" ||
  fail "the connect page did not load"
# The page's button leads to the sandbox's consent page: {sandbox}/oauth?client_id&state&mode.
AUTHORIZE=$(authorize_link "$WORK/connect.html")
[ -n "$AUTHORIZE" ] || fail "no authorize link on the connect page"
SANDBOX=${AUTHORIZE%%/oauth\?*}
# Press "Allow" for one seeded account: the consent form posts client_id, state, mode, account, decision.
FORM=$(consent_form "$AUTHORIZE" "$ACCOUNT")
CALLBACK=$(curl -sS --max-time 10 -o /dev/null -w '%{redirect_url}' -X POST "$SANDBOX/oauth" --data "$FORM")
case "$CALLBACK" in "$BASE"/oauth/amocrm/callback\?*code=*) ;; *) fail "consent did not redirect to the callback: '$CALLBACK'" ;; esac
CB_STATUS=$(curl -sSL --max-time 20 -c "$WORK/cookies" -b "$WORK/cookies" -o "$WORK/callback.html" -w '%{http_code}' "$CALLBACK")
[ "$CB_STATUS" = 200 ] || fail "the OAuth callback answered $CB_STATUS"
connected() {
  api GET "/api/v1/connections/$SELLER"
  [ "$STATUS" = 200 ] && [ "$(pyj "$WORK/resp.json" 'd["data"]["status"]')" = active ]
}
wait_for 20 "$SELLER to be connected" connected
log "$SELLER connected to $ACCOUNT"

# ---- real events 2: orders pushed to the sandbox by the demo's workers (order.synced each) --------------
RUN_ID=$(date +%s)-$$
for i in $(seq 1 "$ORDERS"); do
  api POST /api/v1/sales/orders "{\"seller_id\":\"$SELLER\",\"order_number\":\"RCV-$RUN_ID-$i\",\"total_amount\":150000,\"currency\":\"UZS\",\"items\":[{\"product_id\":\"sku-$i\",\"name\":\"Receiver check item $i\",\"quantity\":1,\"price\":150000}],\"customer\":{\"name\":\"Receiver Check $i\",\"phone\":\"+99890555000$i\"}}"
  expect 202
done
log "posted $ORDERS orders"

# ---- wait until every receiver has accepted every real delivery; any rejected real delivery fails -------
# tally FILE: prints "accepted_connected accepted_synced rejected" over first (non-duplicate) deliveries.
tally() {
  python3 - "$1" <<'PY'
import json, sys
conn = synced = rejected = 0
for line in open(sys.argv[1], encoding="utf-8"):
    e = json.loads(line)
    if e["result"] == "rejected":
        rejected += 1
    elif not e["duplicate"]:
        conn += e["event"] == "connection.connected"
        synced += e["event"] == "order.synced"
print(conn, synced, rejected)
PY
}
received_all() {
  local r c s x
  for r in node python; do
    read -r c s x < <(tally "$WORK/$r.jsonl")
    [ "$x" -eq 0 ] || fail "the $r receiver rejected $x real deliveries: the signature did not verify ($(grep -m1 rejected "$WORK/$r.jsonl"))"
    [ "$c" -ge 1 ] && [ "$s" -ge "$ORDERS" ] || return 1
  done
}
wait_for 60 "each receiver to accept connection.connected and $ORDERS order.synced" received_all
for r in node python; do
  read -r c s x < <(tally "$WORK/$r.jsonl")
  log "$r receiver accepted $c connection.connected + $s order.synced, rejected $x"
done

# Every accepted delivery is an event of the log, with X-Webhook-Id = the body's id; both receivers got the same.
api GET "/api/v1/events?seller_id=$SELLER&limit=100"
expect 200
python3 - "$WORK/resp.json" "$WORK/node.jsonl" "$WORK/python.jsonl" <<'PY' || fail "accepted deliveries do not match the event log"
import json, sys
log_ids = {e["id"] for e in json.load(open(sys.argv[1]))["data"]}
got = {}
for path in sys.argv[2:]:
    ids = set()
    for line in open(path, encoding="utf-8"):
        e = json.loads(line)
        if e["result"] != "accepted":
            continue
        assert e["webhook_id"] == e["id"], f"{path}: X-Webhook-Id {e['webhook_id']} != body id {e['id']}"
        assert e["id"] in log_ids, f"{path}: {e['id']} is not in GET /api/v1/events"
        ids.add(e["id"])
    got[path] = ids
a, b = got.values()
assert a == b, f"receivers got different events: {sorted(a ^ b)}"
PY
for r in node python; do
  api GET "/api/v1/webhooks/${SUB[$r]}/deliveries"
  expect 200
done

# ---- replay, tamper, strip: the same receivers must accept the genuine bytes only -----------------------
send() { # URL BODY_FILE [SIGNATURE] [WEBHOOK_ID] -> prints the status
  local args=(-sS --max-time 10 -o /dev/null -w '%{http_code}' -X POST "$1" -H 'Content-Type: application/json' --data-binary "@$2")
  [ -n "${3:-}" ] && args+=(-H "X-Signature: $3")
  [ -n "${4:-}" ] && args+=(-H "X-Webhook-Id: $4")
  curl "${args[@]}" || echo 000
}
for r in node python; do
  # The last real order.synced delivery: its exact signed body and signature.
  python3 - "$WORK/$r.jsonl" "$WORK/$r.genuine" "$WORK/$r.tampered" "$WORK/$r.sig" <<'PY'
import json, sys
last = [e for e in map(json.loads, open(sys.argv[1], encoding="utf-8"))
        if e["result"] == "accepted" and e["event"] == "order.synced"][-1]
raw = last["body"].encode("utf-8")
ev = json.loads(raw)
ev["data"]["order_number"] = str(ev["data"].get("order_number")) + "-forged"  # body changed, signature kept
forged = json.dumps(ev, separators=(",", ":")).encode("utf-8")
assert forged != raw
open(sys.argv[2], "wb").write(raw)
open(sys.argv[3], "wb").write(forged)
open(sys.argv[4], "w").write(last["signature"] + "\n" + last["id"] + "\n")
PY
  { read -r SIG; read -r EID; } <"$WORK/$r.sig"
  before=$(grep -c '"rejected"' "$WORK/$r.jsonl" || true)

  got=$(send "${URL[$r]}/hooks/amocrm" "$WORK/$r.genuine" "$SIG" "$EID")
  [ "$got" = 200 ] || fail "$r: a replay of a genuine delivery answered $got, expected 200"
  got=$(send "${URL[$r]}/hooks/amocrm" "$WORK/$r.tampered" "$SIG" "$EID")
  [ "$got" = 401 ] || fail "$r: a tampered delivery (body changed, signature kept) answered $got, expected 401"
  got=$(send "${URL[$r]}/hooks/amocrm" "$WORK/$r.genuine" "" "$EID")
  [ "$got" = 401 ] || fail "$r: an unsigned delivery answered $got, expected 401"

  after=$(grep -c '"rejected"' "$WORK/$r.jsonl" || true)
  [ "$((after - before))" -eq 2 ] || fail "$r: expected 2 new rejections in its log, found $((after - before))"
  tail -n 3 "$WORK/$r.jsonl" | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
assert rows[0]["result"] == "accepted" and rows[0]["duplicate"] is True, rows[0]
assert rows[1]["result"] == "rejected" and rows[1]["reason"] == "signature mismatch", rows[1]
assert rows[2]["result"] == "rejected" and rows[2]["reason"] == "missing X-Signature", rows[2]
' || fail "$r: its log does not show replay accepted (duplicate), tampered and unsigned rejected"
  log "$r receiver: replay 200 (duplicate), tampered 401, unsigned 401"
done

log "OK: both receivers verified every real delivery and refused forged ones ($((SECONDS - T_BUILT))s after the build)"
