#!/usr/bin/env bash
# CI check for deploy/monitoring/: the alerting rules are valid and pass their unit tests (promtool), and every
# metric and label that alerts.yml and dashboard.json use is really exported by the service (a `demo` is
# started, given a little traffic — an API call, a seller connected through the sandbox, an order pushed —
# and scraped; see check_names.py).
#
#   bash ci/monitoring/run.sh
#
# Needs: promtool (Debian package `prometheus`; installed here with apt-get when missing and running as root),
# python3 (standard library only), curl. The binary: $AMOCRM_CONNECTOR_BIN, else target/debug/amocrm-connector,
# built with cargo unless MONITORING_SKIP_BUILD=1. MONITORING_KEEP=1 keeps the temp dir (demo log, scrape).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MON="$ROOT/deploy/monitoring"
cd "$ROOT"
started=$EPOCHREALTIME
step() { awk -v a="$started" -v b="$EPOCHREALTIME" -v s="$1" 'BEGIN { printf "\n== %s (+%.1fs)\n", s, b - a }'; }

# ---- tools ------------------------------------------------------------------------------------------------
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "promtool missing: installing the Debian package 'prometheus'"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  command -v promtool >/dev/null || { echo "FAIL: promtool not found (Debian package: prometheus)" >&2; exit 1; }
fi
for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool not found" >&2; exit 1; }
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN=${AMOCRM_CONNECTOR_BIN:-$TARGET/debug/amocrm-connector}
if [ -z "${AMOCRM_CONNECTOR_BIN:-}" ] && [ -z "${MONITORING_SKIP_BUILD:-}" ]; then
  cargo build -q --bin amocrm-connector
fi
[ -x "$BIN" ] || { echo "FAIL: no binary at $BIN" >&2; exit 1; }
started=$EPOCHREALTIME

# ---- 1. the rules -----------------------------------------------------------------------------------------
step "promtool check rules"
promtool check rules "$MON/alerts.yml"
step "promtool test rules"
promtool test rules "$MON/alerts_test.yml"

# ---- 2. a running demo ------------------------------------------------------------------------------------
WORK=$(mktemp -d)
CHECK_NAME=monitoring
PROC_LOG_EXT=out
DEADLINE_AT=$((SECONDS + 90))
fail() { echo "FAIL: $*" >&2; exit 1; }
# shellcheck source=ci/lib.sh
source "$ROOT/ci/lib.sh"
KEEP_WORK=${MONITORING_KEEP:-}
finish_on_exit "$WORK/demo.out"
trap 'exit 130' INT TERM

step "starting demo"
start_demo
KEY=$API_KEY
echo "demo at $BASE"

# The demo sets no METRICS_TOKEN; a service that does gets it from the environment.
TOKEN_ARGS=()
[ -n "${METRICS_TOKEN:-}" ] && TOKEN_ARGS=(--token "$METRICS_TOKEN")

# ---- 3. a little traffic, so that counters created on first use exist ---------------------------------------
step "traffic"
c() { curl -sS --max-time 10 "$@"; }
api() { c -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }

# http_requests_total / http_request_duration_seconds
api -o /dev/null -w 'GET /api/v1/connections -> %{http_code}\n' "$BASE/api/v1/connections"

# amocrm_requests_total: connect a seller through the sandbox's scripted consent (what a seller's click on
# Allow does): connect page (cookie) -> sandbox approve -> our OAuth callback.
CONNECT=$(api -X POST "$BASE/api/v1/connect-sessions" -d '{"seller_id":"monitoring-seller","lang":"en"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["connect_url"])') || fail "no connect session"
AUTHORIZE=$(c -c "$WORK/jar" -b "$WORK/jar" "$CONNECT" |
  sed -n 's#.*href="\(http[^"]*/oauth?[^"]*\)".*#\1#p' | head -n1 | sed 's/&#38;/\&/g; s/&amp;/\&/g')
[ -n "$AUTHORIZE" ] || fail "the connect page has no authorize link"
SANDBOX=$(echo "$AUTHORIZE" | sed 's#^\(http://[^/]*\)/.*#\1#')
QUERY=${AUTHORIZE#*\?}
HOST=$(c "$SANDBOX/_sandbox/accounts" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["host"])')
CALLBACK=$(c -o /dev/null -w '%{redirect_url}' "$SANDBOX/_sandbox/approve?$QUERY&account=$HOST&decision=allow")
[ -n "$CALLBACK" ] || fail "the sandbox did not redirect to the callback"
code=$(c -L -c "$WORK/jar" -b "$WORK/jar" -o "$WORK/callback.html" -w '%{http_code}' "$CALLBACK")
echo "OAuth callback ($HOST) -> $code"
[ "$code" = 200 ] || fail "the OAuth callback answered $code"

# order_push_batch_size, more amoCRM calls
api -o /dev/null -w 'POST /api/v1/sales/orders -> %{http_code}\n' -X POST "$BASE/api/v1/sales/orders" -d '{
  "seller_id": "monitoring-seller", "order_number": "MON-1", "total_amount": 1000, "currency": "UZS",
  "status": "pending", "customer": {"name": "Monitoring Check", "phone": "+998901112233"},
  "items": [{"product_id": "sku-1", "name": "Check", "quantity": 1, "price": 1000}]}'

# job_last_finished_timestamp_seconds{job="refresh_sweep"}: one sweep (`amocrm-connector refresh`) on the
# demo's database, the way a second instance would run it; amoCRM is the sandbox. Nothing is due yet, so it
# only records the sweep.
SECRETS="$WORK/demo/demo-secrets.json"
sec() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$SECRETS" "$1"; }
(cd "$WORK" && env DATABASE_URL="sqlite://$WORK/demo/demo.db" TOKEN_ENCRYPTION_KEYS="$(sec encryption_keys)" \
  AMOCRM_CLIENT_ID=demo-integration AMOCRM_CLIENT_SECRET="$(sec client_secret)" \
  AMOCRM_ACCOUNT_URL_TEMPLATE="$SANDBOX/{host}" AMOCRM_AUTHORIZE_URL="$SANDBOX/oauth" \
  PUBLIC_BASE_URL="$BASE" INSTANCE_ID=monitoring-ci LOG_FORMAT=json \
  timeout 30 "$BIN" refresh) >"$WORK/refresh.out" 2>"$WORK/refresh.err" ||
  { cat "$WORK/refresh.out" "$WORK/refresh.err"; fail "amocrm-connector refresh failed"; }
tail -n1 "$WORK/refresh.out"

# ---- 4. names and labels ----------------------------------------------------------------------------------
step "metric names and labels used by alerts.yml and dashboard.json"
python3 "$ROOT/ci/monitoring/check_names.py" --url "$BASE/metrics" "${TOKEN_ARGS[@]}" --deadline 20 \
  --save "$WORK/scrape.txt"

# The checker must still catch a wrong name and a wrong label (against the same scrape, no new wait).
step "checker self-test"
python3 - "$MON/dashboard.json" "$WORK/broken-dashboard.json" <<'EOF'
import json, sys
dash = json.load(open(sys.argv[1]))
targets = [t for p in dash["panels"] for t in p.get("targets", [])]
a = next(t for t in targets if "max(orders_oldest_queued_age_seconds{" in t["expr"])
a["expr"] = a["expr"].replace("orders_oldest_queued_age_seconds", "orders_oldest_queued_age_secs")
b = next(t for t in targets if "amocrm_requests_total{" in t["expr"])
b["expr"] = b["expr"].replace("amocrm_requests_total{", 'amocrm_requests_total{stauts="x", ', 1)
json.dump(dash, open(sys.argv[2], "w"))
EOF
if python3 "$ROOT/ci/monitoring/check_names.py" --metrics-file "$WORK/scrape.txt" \
  --dashboard "$WORK/broken-dashboard.json" >"$WORK/selftest.out" 2>&1; then
  cat "$WORK/selftest.out"; echo "FAIL: the checker accepted a dashboard with a wrong metric name and label" >&2; exit 1
fi
grep -q "orders_oldest_queued_age_secs" "$WORK/selftest.out" && grep -q "stauts" "$WORK/selftest.out" ||
  { cat "$WORK/selftest.out"; echo "FAIL: the checker did not name the wrong metric and label" >&2; exit 1; }
echo "ok: a wrong metric name and a wrong label are reported"

step "done"
echo "monitoring: 4 passed, 0 failed"
